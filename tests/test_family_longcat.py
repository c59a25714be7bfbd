"""LongCat-Flash-Lite's N-gram embeddings addressed bit for bit as vLLM serves them
(tests/data/longcat_lite_ngram_ids.json: ids computed outside this project by vLLM's own host code
and its CUDA kernel's body, launched on the CPU; the file names its source), from the preset or a
released config.json; its tables read from their per-embedder tensors, audited, scanned."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engram_core.addressing import address, local_rows, reference_rows
from engram_core.families import longcat
from engram_core.layout import LayoutError, load_layout

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "data" / "longcat_lite_ngram_ids.json").read_text())
TABLE = longcat.TABLE  # model.ngram_embeddings.embedders.<e>.weight


@pytest.fixture(scope="module")
def preset():
    return load_layout("longcat-flash-lite")


def test_sizes_offsets_and_weights_equal_the_reference(preset):
    assert preset.layers == (0,)
    assert list(preset.spec.primes[0]) == VECTORS["sizes"]
    assert preset.offsets[0].tolist() + [preset.num_embeddings(0)] == VECTORS["offsets"]
    w = preset.spec.multipliers[0]  # (embedder, slot): the reference's ne_weights, [order][split][slot]
    assert w.tolist() == [row for order in VECTORS["weights"] for row in order]
    assert (preset.d_head, preset.row_bytes, preset.spec.heads_per_layer) == (256, 512, 12)
    assert preset.num_embeddings(0) == 122_683_536 and preset.stored_rows(0) == preset.num_embeddings(0)


@pytest.mark.parametrize("name", list(VECTORS["cases"]))
def test_rows_equal_the_reference_bit_for_bit(preset, name):
    case = VECTORS["cases"][name]
    assert address(preset, case["ids"]).rows[0].tolist() == case["rows"]


def test_the_vectors_cover_what_matters():
    cases = {k: c["ids"] for k, c in VECTORS["cases"].items()}
    v, eos = VECTORS["config"]["vocab_size"], VECTORS["config"]["eos_token_id"]
    assert max(len(s) for s in cases.values()) > 64
    assert {0, v - 1} <= set(cases["vocab_edges"]) and eos in cases["eos_inside"]
    assert any(len(s) != len(set(s)) for s in cases.values())  # repeated tokens
    assert cases["single"] and cases["first_positions"] and cases["eos_first"][0] == eos


def test_eos_reads_row_zero_and_ngrams_restart_after_it(preset):
    eos = preset.dead_token
    a = address(preset, [5, 6, eos, 7, 8])
    assert (a.local[0, 2] == 0).all() and a.dead.tolist() == [False, False, True, False, False]
    b = address(preset, [7, 8])
    assert (a.rows[0, 3:] == b.rows[0]).all()  # after EOS: as at the start
    c = address(preset, [0, 0, 0, 7])  # an unreachable slot adds what a token 0 adds: nothing
    assert (c.rows[0, 3] == b.rows[0, 0]).all()


def test_the_fast_rows_equal_the_plain_per_head_form(preset):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, preset.vocab_size, 3000)
    ids[:20] = preset.vocab_size - 1
    ids[rng.random(3000) < 0.02] = preset.dead_token
    run = preset.look_back(ids)
    assert np.array_equal(local_rows(ids, run, preset), reference_rows(ids, run, preset))
    # the torch-side hash of the model code (no dead tokens there) takes the family's hash too
    from engram_core.hashing import hash_ids

    plain = ids[ids != preset.dead_token][:500]
    got = hash_ids(plain[None], preset.spec, 0)[0].numpy()
    assert np.array_equal(got, local_rows(plain, preset.look_back(plain), preset)[0])


def released_folder(tmp_path, **override) -> Path:
    folder = tmp_path / "longcat"
    folder.mkdir()
    config = {**longcat.CONFIG, "num_layers": 14, "num_attention_heads": 32, **override}
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(ROOT / "assets" / "default-model" / "tokenizer.json", folder / "tokenizer.json")
    return folder


def test_a_released_config_folder_addresses_as_the_preset(tmp_path, preset):
    lay = load_layout(released_folder(tmp_path))
    ids = VECTORS["cases"]["long_96"]["ids"]
    assert (address(lay, ids).rows == address(preset, ids).rows).all()
    assert lay.digest == preset.digest
    assert len(lay.encode("def parse(self, args):")) > 3


@pytest.mark.parametrize(
    "override,message",
    [
        ({"ngram_vocab_size_ratio": None}, "without ngram_vocab_size_ratio has no N-gram memory"),
        ({"hidden_size": 3001}, "does not split over 12 N-gram embedders"),
        ({"eos_token_id": 0}, "eos_token_id 0 is outside the vocabulary 1..131071"),
        ({"emb_neighbor_num": 1}, "gives no N-gram of order 2"),
        ({"ngram_vocab_size_ratio": 4000}, "overflow the reference's int32 ids"),
        ({"vocab_size": 100, "eos_token_id": 5, "ngram_vocab_size_ratio": 7}, "the tokenizer has 4,096 ids"),
    ],
)
def test_bad_released_configs_are_refused_in_one_line(tmp_path, override, message):
    with pytest.raises(LayoutError, match=message):
        load_layout(released_folder(tmp_path, **override))


def test_cli_addresses_the_preset_in_every_format(engram_cli, tmp_path):
    case = VECTORS["cases"]["eos_inside"]
    ids = ",".join(map(str, case["ids"]))
    r = engram_cli("address", "--model", "longcat-flash-lite", "--ids", ids)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [t["rows"]["0"] for t in got["tokens"]] == case["rows"]
    assert [t["dead"] for t in got["tokens"]] == [i == 2 for i in case["ids"]]
    for fmt in ("csv", "parquet"):
        out = tmp_path / f"a.{fmt}"
        r = engram_cli("address", "--model", "longcat-flash-lite", "--ids", ids, "--format", fmt, "-o", str(out))
        assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "a.parquet").to_pydict()
    assert len(t["row"]) == len(case["ids"]) * 12 and t["row"][:12] == case["rows"][0]
    r = engram_cli("address", "hello", "--model", "longcat-flash-lite")
    assert r.returncode == 2 and "has no tokenizer: give ids" in r.stderr


def test_help_lists_the_preset(capsys):
    from engram_inspect.commands import main

    with pytest.raises(SystemExit):
        main(["address", "--help"])
    assert "longcat-flash-lite" in capsys.readouterr().out.replace("\n", " ")


def full_size(tmp_path, preset, rows=None, names=None, sizes=None) -> Path:
    """The released storage as a sparse file: 12 bf16 tensors of m + 2e + 1 rows x 256 (~63 GB)."""
    from engram_core.tables import write_sparse_shards

    sizes = sizes or list(preset.spec.primes[0])
    names = names or [TABLE.format(e) for e in range(len(sizes))]
    path = tmp_path / "model-00001-of-00002.safetensors"
    return write_sparse_shards(path, names, [(s, 256) for s in sizes], "BF16", rows)


def test_tables_are_read_row_by_row_from_the_embedders(tmp_path, preset):
    from engram_core.tables import open_tables

    off = preset.offsets[0]
    rows = {0: np.full(256, 0x3F80), int(off[1]) - 1: np.full(256, 0x4000), int(off[11]) + 7: np.full(256, 0x4040)}
    assert full_size(tmp_path, preset, rows).stat().st_size > 60 * 10**9
    table = open_tables(tmp_path, preset)[0]
    assert table.n_rows == preset.num_embeddings(0) and table.name == "model.ngram_embeddings.embedders.*.weight"
    got = table.read(np.array([int(off[11]) + 7, 0, int(off[1]) - 1, int(off[1])]))
    assert got[0].tolist() == [3.0] * 256 and got[1].tolist() == [1.0] * 256 and got[2].tolist() == [2.0] * 256
    assert not got[3].any()
    # the rows a text reads, through the same table: an EOS reads each embedder's first row
    a = address(preset, [1, 2])
    assert table.read(a.rows[0, 1]).tolist()[0] == [1.0] * 256


@pytest.mark.parametrize(
    "how,message",
    [
        ("swapped", "embedders.1.weight has 10,223,621 rows but the layout gives head 1 10,223,619"),
        ("missing", "lacks shard 4"),
        ("short", "has 122,683,535 rows but the layout gives layer 0 122,683,536"),
    ],
)
def test_embedders_that_do_not_match_the_layout_are_refused(tmp_path, preset, how, message):
    from engram_core.tables import open_tables

    sizes, names = list(preset.spec.primes[0]), [TABLE.format(e) for e in range(12)]
    if how == "swapped":
        sizes[1], sizes[2] = sizes[2], sizes[1]
    elif how == "missing":
        del names[4], sizes[4]
    else:
        sizes[11] -= 1
    full_size(tmp_path, preset, sizes=sizes, names=names)
    with pytest.raises(LayoutError, match=message):
        open_tables(tmp_path, preset)


def test_a_full_size_sparse_table_is_audited(tmp_path, preset, engram_cli):
    """63 GB streamed: every row covered, the NaN row and the never-written rows found, exit 1."""
    rows = {r: np.full(256, 0x3C00) for r in range(1000, 1100)}
    rows[20_000_000] = np.full(256, 0x7FC0)  # NaN, in embedder 1
    full_size(tmp_path, preset, rows)
    r = engram_cli("audit", "--model", "longcat-flash-lite", "--tables", str(tmp_path), "--no-resume")
    assert r.returncode == 1, r.stderr
    assert "1 rows hold NaN or inf (first rows: [20000000])" in r.stdout
    assert f"{preset.num_embeddings(0) - 101:,} all-zero rows" in r.stdout


# -- a small layout in LongCat's format, for the audit's findings and the corpus commands ---------------------


def small(folder: Path) -> Path:
    folder.mkdir(parents=True)
    config = {
        "model_type": "longcat_flash_ngram",
        "vocab_size": 4096,
        "hidden_size": 64,
        "emb_neighbor_num": 3,
        "emb_split_num": 2,
        "ngram_vocab_size_ratio": 1,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(config))
    shutil.copy(ROOT / "assets" / "default-model" / "tokenizer.json", folder / "tokenizer.json")
    return folder


def save_embedders(folder: Path, parts: list[np.ndarray], names=None, dtype=None) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    names = names or [TABLE.format(e) for e in range(len(parts))]
    save_file(
        {n: torch.from_numpy(x).to(dtype or torch.bfloat16) for n, x in zip(names, parts, strict=True)},
        str(folder / "model.safetensors"),
    )


def trained_like(layout, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((s, layout.d_head)) * 0.02).astype(np.float32) for s in layout.spec.primes[0]]


def test_small_layout_sizes(tmp_path):
    lay = load_layout(small(tmp_path / "m"))
    assert lay.spec.primes[0] == (4097, 4099, 4101, 4103) and lay.d_head == 16


@pytest.mark.parametrize(
    "how,kind,text",
    [
        ("nan", "non_finite", "1 rows hold NaN or inf (first rows: [4100])"),
        ("zero", "zero_rows", "2 all-zero rows"),
        ("raw_codes", "norm_outliers", "more than 64x off the median norm"),
        ("swapped", "count", "embedders.1.weight has 4,101 rows but the layout gives head 1 4,099"),
        ("narrow", "unreadable", "differ in dtype or width"),
        ("truncated", "unreadable", "is truncated"),
    ],
)
def test_each_way_a_copy_breaks_is_found(tmp_path, how, kind, text):
    from engram_core.tables import quantize_fp8
    from engram_inspect.corpus.audit import audit

    lay = load_layout(small(tmp_path / "m"))
    parts = trained_like(lay)
    assert audit(lay, _saved(tmp_path / "clean", parts)).findings == []
    if how == "nan":
        parts[1][3, 5] = np.nan  # global row 4097 + 3
    elif how == "zero":
        parts[2][[0, 9]] = 0.0
    elif how == "raw_codes":  # rows gathered without dequantisation: E4M3 codes read as values
        q, _ = quantize_fp8(np.repeat(parts[3][100:140], 2, axis=1))
        parts[3][100:140] = q[:, :16].astype(np.float32)
    elif how == "swapped":
        parts[1], parts[2] = parts[2], parts[1]
    elif how == "narrow":  # a copy written at another bit width: half the bytes a row
        parts[0] = parts[0][:, :8]
    folder = _saved(tmp_path / "broken", parts)
    if how == "truncated":
        path = folder / "model.safetensors"
        path.write_bytes(path.read_bytes()[:-1000])
    report = audit(lay, folder)
    assert {f.kind for f in report.findings} == {kind}, [f.line() for f in report.findings]
    assert text in " ".join(f.line() for f in report.findings)


def _saved(folder: Path, parts) -> Path:
    save_embedders(folder, parts)
    return folder


def test_a_requantised_copy_is_compared_row_by_row(tmp_path):
    from engram_core.tables import dequantize_fp8, quantize_fp8
    from engram_inspect.corpus.audit import audit

    lay = load_layout(small(tmp_path / "m"))
    parts = trained_like(lay)
    fp8 = [dequantize_fp8(*quantize_fp8(np.repeat(x, 2, axis=1)))[:, ::2] for x in parts]
    report = audit(lay, _saved(tmp_path / "fp8", fp8), reference=_saved(tmp_path / "bf16", parts))
    assert report.findings == []
    heads = report.layers[0]["heads"]
    assert len(heads) == 4 and all(0 < h["mean_error"] < 0.1 for h in heads), heads


def corpus(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.py").write_text((ROOT / "engram_core" / "hashing.py").read_text()[:6000])
    (folder / "b.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    return folder


def test_traffic_scan_stats_and_cache_sim_run_on_a_released_folder(tmp_path, engram_cli):
    import pyarrow.parquet as pq

    from engram_inspect.corpus.scan import scan

    folder = released_folder(tmp_path)
    lay = load_layout(folder)
    s = scan(lay, [str(corpus(tmp_path / "c"))], tmp_path / "out")
    assert s["layers"] == [0] and s["tokens"] > 500
    rows = pq.read_table(tmp_path / "out" / "rows.parquet").to_pydict()
    assert max(rows["row"]) < lay.num_embeddings(0) and sorted(set(rows["order"])) == [2, 3, 4]
    assert np.sum(rows["hits"]) == s["tokens"] * 12
    r = engram_cli("stats", str(tmp_path / "out"))
    assert r.returncode == 0 and "rows hit" in r.stdout, r.stderr
    r = engram_cli("cache-sim", "--model", str(folder), "--scan", str(tmp_path / "out"), "--capacity", "1MiB")
    assert r.returncode == 0 and "layer 0, 1 stream, rows" in r.stdout, r.stderr
    r = engram_cli(
        "traffic", "--model", str(folder), "--domains", "", "--corpus", *map(str, (tmp_path / "c").iterdir())
    )
    assert r.returncode == 0 and "collision" in r.stdout.lower(), r.stderr + r.stdout


@pytest.mark.slow
def test_local_and_ray_scans_write_the_same_files(tmp_path, ray_cluster):
    from engram_inspect.corpus.scan import scan

    lay = load_layout(small(tmp_path / "m"))
    folder = corpus(tmp_path / "c")
    local = scan(lay, [str(folder)], tmp_path / "local", shard_bytes=3000)
    ray_run = scan(lay, [str(folder)], tmp_path / "ray", executor="ray", workers=2, shard_bytes=3000)
    assert local["tokens"] == ray_run["tokens"] and local["shards"] == ray_run["shards"] > 1
    import pyarrow.parquet as pq

    for f in ("rows.parquet", "ngrams.parquet"):  # the same lines, in any order
        a, b = (pq.read_table(tmp_path / d / f).to_pylist() for d in ("local", "ray"))
        assert sorted(map(repr, a)) == sorted(map(repr, b)) and len(a) > 0, f
    assert pq.read_table(tmp_path / "local" / "ngrams.parquet").num_rows > 0  # small tables: N-grams share rows


def test_a_table_of_another_layout_is_one_line_and_exit_2(tmp_path, preset, engram_cli):
    sizes = list(preset.spec.primes[0])
    sizes[1], sizes[2] = sizes[2], sizes[1]  # two embedders written in each other's place: the total is right
    full_size(tmp_path, preset, sizes=sizes)
    out = tmp_path / "a.json"
    r = engram_cli(
        "address", "--model", "longcat-flash-lite", "--ids", "5,6,7", "--tables", str(tmp_path), "-o", str(out)
    )
    assert r.returncode == 2 and "embedders.1.weight has 10,223,621 rows" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()  # nothing half-written
