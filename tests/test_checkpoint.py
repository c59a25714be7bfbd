"""Checkpoints: bit-exact round trip, and a clear error for every broken folder."""

import json
import shutil

import pytest
import torch

from engram_core import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture()
def saved(tmp_path, tiny_model, tiny_tokenizer):
    return save_checkpoint(tmp_path / "ck", tiny_model, tiny_tokenizer, meta={"note": "tiny"})


def test_round_trip_bit_exact(saved, tiny_model):
    ck = load_checkpoint(saved)
    a, b = tiny_model.state_dict(), ck.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = torch.randint(0, tiny_model.cfg.backbone.vocab_size, (2, 30), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), ck.model(ids))
    assert ck.model.cfg == tiny_model.cfg
    assert ck.meta == {"note": "tiny"}
    assert torch.equal(ck.model.compression, tiny_model.compression)


def test_bf16_weights_load_as_float32(tmp_path, tiny_model, tiny_tokenizer):
    path = save_checkpoint(tmp_path / "bf", tiny_model, tiny_tokenizer, dtype=torch.bfloat16)
    ck = load_checkpoint(path)
    w = ck.model.blocks[0].engram.table.weight
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, tiny_model.blocks[0].engram.table.weight.to(torch.bfloat16).float(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json"])
def test_missing_file(saved, name):
    (saved / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing {name}"):
        load_checkpoint(saved)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")


def test_corrupted_weights(saved):
    data = bytearray((saved / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (saved / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(saved)


def test_truncated_weights_without_checksum(saved):
    (saved / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(saved, verify=False)


def test_broken_config_json(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(saved)


def edit_config(saved, fn):
    cfg = json.loads((saved / "config.json").read_text())
    fn(cfg)
    (saved / "config.json").write_text(json.dumps(cfg))


def test_shape_mismatch(saved):
    edit_config(saved, lambda c: c["model"]["memory"].update(d_head=16))
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(saved)


def test_config_mismatch_missing_tensor(saved):
    edit_config(saved, lambda c: c["model"]["memory"].update(layer_ids=[0, 1, 2]))
    with pytest.raises(CheckpointError, match="missing tensor blocks.2.engram"):
        load_checkpoint(saved)


def test_unknown_config_field(saved):
    edit_config(saved, lambda c: c["model"]["backbone"].update(n_experts=8))
    with pytest.raises(CheckpointError, match="n_experts"):
        load_checkpoint(saved)


def test_compression_must_match_tokenizer(saved):
    def swap(c):
        t = c["compression"]["table"]
        t[10], t[11] = t[11], t[10]

    edit_config(saved, swap)
    with pytest.raises(CheckpointError, match="compression map"):
        load_checkpoint(saved)


def test_foreign_tokenizer(saved, tmp_path):
    from engram_core.tokenizer import train_bpe

    train_bpe(["something else entirely"] * 10, vocab_size=280).save(str(saved / "tokenizer.json"))
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


def test_no_pickle_in_folder(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    shutil.rmtree(saved)


def test_changed_seed_is_refused(saved):
    edit_config(saved, lambda c: c["model"]["memory"].update(seed=1))
    with pytest.raises(CheckpointError, match="multipliers of layer 0") as e:
        load_checkpoint(saved)
    assert "\n" not in str(e.value)


def test_edited_multiplier_is_refused(saved):
    def bump(c):
        c["hash_spec"]["multipliers"]["1"][2] += 2  # still odd, so only the comparison can tell

    edit_config(saved, bump)
    with pytest.raises(CheckpointError, match="multipliers of layer 1"):
        load_checkpoint(saved)


def test_edited_prime_is_refused(saved):
    edit_config(saved, lambda c: c["hash_spec"]["primes"]["0"].__setitem__(0, 29))
    with pytest.raises(CheckpointError, match="primes of layer 0"):
        load_checkpoint(saved)


@pytest.mark.parametrize("delta", [1, -1])
def test_vocab_size_off_by_one_is_refused(saved, delta):
    edit_config(saved, lambda c: c["model"]["memory"].update(vocab_size=c["model"]["memory"]["vocab_size"] + delta))
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_checkpoint(saved)


def test_vocab_size_checked_without_saved_hash_spec(saved):
    """An older checkpoint without primes and multipliers: recomputed and accepted, vocab_size still checked."""
    edit_config(saved, lambda c: c.update(hash_spec=None))
    load_checkpoint(saved)
    edit_config(saved, lambda c: c["model"]["memory"].update(vocab_size=c["model"]["memory"]["vocab_size"] + 1))
    with pytest.raises(CheckpointError, match="vocab_size"):
        load_checkpoint(saved)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda c: c.pop("compression"), "compression"),
        (lambda c: c["compression"].pop("table"), "compression"),
        (lambda c: c["compression"].update(table="abc"), "compression"),
        (lambda c: c.pop("model"), "model"),
        (lambda c: c["model"]["memory"].update(table_sizes=[31]), "table_sizes"),
        (lambda c: c["model"]["memory"].update(table_sizes=["x", 3]), "table_sizes"),
        (lambda c: c["model"]["memory"].update(max_ngram=1), "max_ngram"),
        (lambda c: c["model"]["memory"].update(pad_id=10**6), "pad_id"),
        (lambda c: c["hash_spec"].update(primes=[1, 2]), "hash_spec"),
        (lambda c: c["hash_spec"]["primes"].pop("1"), "primes of layer 1"),
    ],
)
def test_every_bad_config_is_a_checkpoint_error(saved, edit, match):
    edit_config(saved, edit)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(saved)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "name, data",
    [
        ("tokenizer.json", '{"version": "1.0",\n "model": {"type": "Nope"}}'),
        ("tokenizer.json", "not json\nat all"),
    ],
)
def test_unreadable_tokenizer_is_one_line(saved, name, data):
    (saved / name).write_text(data)
    with pytest.raises(CheckpointError, match="tokenizer.json") as e:
        load_checkpoint(saved)
    assert "\n" not in str(e.value)


def test_checkpoint_error_is_always_one_line():
    assert str(CheckpointError("a\n  b\tc")) == "a b c"


def _reseal(saved, edit):
    """Edit the weights and update the checksum, so only the value and dtype checks can object."""
    from safetensors.torch import load_file, save_file

    from engram_core.checkpoint import sha256_file

    state = load_file(str(saved / "model.safetensors"))
    edit(state)
    save_file(state, str(saved / "model.safetensors"))
    edit_config(saved, lambda c: c.update(weights_sha256=sha256_file(saved / "model.safetensors")))


EMBED = "wte.weight"


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda s: s["blocks.1.mlp.sublayer.up.weight"].__setitem__((0, 0), float("nan")),
            "mlp.sublayer.up.weight holds 1 NaN",
        ),
        (lambda s: s["blocks.0.engram.table.weight"].__setitem__((2, 1), float("inf")), "table.weight holds 1 NaN"),
        (lambda s: s.update({EMBED: s[EMBED].to(torch.int32)}), "wte.weight is stored as int32, expected float32"),
        (lambda s: s.update({EMBED: s[EMBED].double()}), "wte.weight is stored as float64, expected float32"),
        (lambda s: s.update({EMBED: s[EMBED].bfloat16()}), "wte.weight is stored as bfloat16, expected float32"),
    ],
)
def test_corrupt_values_and_dtypes_are_refused(saved, edit, match):
    _reseal(saved, edit)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(saved)
    assert "\n" not in str(e.value)
