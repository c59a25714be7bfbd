"""Tokenizer compression (ENGRAM.md §1)."""

from engram_core.compression import build_compression, compression_keys, key_normalizer
from engram_core.tokenizer import clean_text, encode, train_bpe


def test_case_and_space_variants_share_an_id():
    tok = train_bpe(["Apple apple", "APPLE apple"] * 50, vocab_size=300)
    comp = build_compression(tok)
    ids = [tok.token_to_id(t) for t in ("Apple", "Ġapple", "APPLE")]
    assert None not in ids, "the tiny BPE should have learned all three as single tokens"
    assert len({int(comp.table[i]) for i in ids}) == 1
    assert comp.size < tok.get_vocab_size()


def test_normaliser_steps():
    norm = key_normalizer()
    assert norm.normalize_str("  Café\t\n") == "cafe"  # NFKC/NFD, accents, lowercase, strip
    assert norm.normalize_str(" ") == " "  # a lone space survives strip (the sentinel rule)
    assert norm.normalize_str("\n\n") == " "
    assert norm.normalize_str("ﬁ") == "fi"  # NFKC ligature


def test_partial_byte_tokens_keep_raw_keys(tiny_tokenizer):
    keys = compression_keys(tiny_tokenizer)
    comp = build_compression(tiny_tokenizer)
    partial = [i for i in range(tiny_tokenizer.get_vocab_size()) if "\ufffd" in tiny_tokenizer.decode([i])]
    assert len(partial) > 64  # byte-level alphabet holds the 128 non-ASCII bytes
    assert len({int(comp.table[i]) for i in partial}) == len(partial)  # none merged into one id
    assert all(keys[i] == tiny_tokenizer.id_to_token(i) for i in partial)


def test_ids_first_seen_order(tiny_tokenizer):
    comp = build_compression(tiny_tokenizer)
    seen = -1
    for c in comp.table:
        assert c <= seen + 1  # every new compressed id is the next one
        seen = max(seen, int(c))
    assert seen + 1 == comp.size
    assert 0.0 < comp.reduction < 0.5


def test_encode_odd_text(tiny_tokenizer):
    for text in ["", "   ", "日本語 😀", "שלום", "\x00\x07", "a\ud800b"]:
        ids, offsets = encode(tiny_tokenizer, text)
        assert len(ids) == len(offsets)
        assert tiny_tokenizer.decode(ids) == clean_text(text)  # byte-level: nothing is lost
    assert encode(tiny_tokenizer, "")[0] == []
