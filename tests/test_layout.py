"""Memory layouts and addressing: DeepSeek-V4.1-Flash bit for bit, our checkpoint, every refusal."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engram_core.addressing import address, local_rows, look_back, reference_rows
from engram_core.hashing import hash_ids
from engram_core.layout import V41_CONFIG, LayoutError, from_engram_config, load_layout
from engram_core.tables import E4M3, E8M0, open_tables, quantize_fp8, write_mini_shard

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent
V41 = json.loads((DATA / "deepseek_v41_hash_vectors.json").read_text())


@pytest.fixture(scope="module")
def v41():
    return load_layout("deepseek-v4.1-flash")


def cli(*args, spawn: bool = False):
    """`engram ARGS` as a shell sees it (exit status, stdout, stderr).

    In this process by default: a fresh interpreter per call cost ~5 s of imports on
    2 cores, a dozen times. `spawn=True` runs the real `python -m engram_inspect.commands`.
    """
    if spawn:
        return subprocess.run(
            [sys.executable, "-m", "engram_inspect.commands", *args], capture_output=True, text=True, cwd=ROOT
        )
    import contextlib
    import io

    from engram_inspect.commands import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return subprocess.CompletedProcess(["engram", *args], code, out.getvalue(), err.getvalue())


def test_compression_gives_99092_classes(v41):
    assert v41.vocab_size == 129_280
    assert v41.compression.size == 99_092
    assert round(v41.compression.reduction * 100, 1) == 23.4
    assert v41.spec.pad_id == 2


def test_prime_sums_and_offsets(v41):
    primes = [p for layer in v41.layers for p in v41.spec.primes[layer]]
    assert len(set(primes)) == 48 and min(primes) >= 16_000_000
    assert [v41.num_embeddings(layer) for layer in v41.layers] == [384_006_168, 384_016_682]
    assert v41.offsets[14][3] == sum(v41.spec.primes[14][:3])
    assert v41.row_bytes == 264


def test_shared_cases_through_the_cli_bit_for_bit(v41):
    # first raw id of each compressed class: compressed ids are numbered in first-seen order
    first_raw = np.unique(v41.compression.table, return_index=True)[1]
    for i, case in enumerate(V41["cases"]):
        cids = np.asarray(case["input_ids"][0])
        raw = first_raw[cids]
        # the first case through a real `python -m` process, the others in this one
        out = cli("address", "--model", "deepseek-v4.1-flash", "--ids", ",".join(map(str, raw)), spawn=i == 0)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["layers"] == [1, 14]
        assert [t["compressed"] for t in got["tokens"]] == cids.tolist()
        for layer in ("1", "14"):
            local = [t["local_rows"][layer] for t in got["tokens"]]
            assert local == case["expected"][layer][0]
            offs = np.concatenate([[0], np.cumsum(case["primes"][layer])[:-1]])
            assert [t["rows"][layer] for t in got["tokens"]] == (np.asarray(local) + offs).tolist()


def test_shared_cases_through_hash_vectors(tmp_path):
    stripped = {
        "format": V41["format"],
        "cases": [{k: c[k] for k in ("name", "config", "input_ids")} for c in V41["cases"]],
    }
    (tmp_path / "in.json").write_text(json.dumps(stripped))
    out = subprocess.run(
        [sys.executable, "-m", "engram_core.cli", "hash-vectors", str(tmp_path / "in.json")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    for got, ref in zip(json.loads(out.stdout)["cases"], V41["cases"], strict=True):
        assert got["expected"] == ref["expected"] and got["primes"] == ref["primes"]
        assert got["multipliers"] == ref["multipliers"]


def test_look_back_hand_worked():
    # dead at 2, a document starting at 4
    assert look_back(6, np.array([0, 0, 1, 0, 0, 0], bool), np.array([4])).tolist() == [1, 2, 0, 1, 1, 2]
    assert look_back(0).tolist() == []


def test_dead_token_blocking_hand_worked(v41):
    """ids a b D c d with D dead: at c (t=3) the order-2 N-gram is (pad, c), at d (t=4) (c, d),
    order 3 at d is (pad, c, d); at D every slot is the pad."""
    a, b, c, d = 10, 20, 30, 40
    D = 128_815  # an added token, used here as a placeholder
    pad = v41.spec.pad_id
    out = address(v41, [a, b, D, c, d], dead_ids=[D])
    assert out.dead.tolist() == [False, False, True, False, False]
    ca, cb, cc, cd = v41.compress([a, b, c, d]).tolist()

    def rows_of(seq):  # last position of an undisturbed sequence of compressed ids
        return hash_ids(np.asarray([seq]), v41.spec, 1)[0, -1].numpy()

    # the expected N-grams, written with explicit pads: the plain hash pads before the start only
    assert (out.local[0, 3] == rows_of([pad, pad, pad, cc])).all()
    assert (out.local[0, 4] == rows_of([pad, pad, cc, cd])).all()
    assert (out.local[0, 2] == rows_of([pad, pad, pad, pad])).all()
    assert (out.local[0, 1] == rows_of([ca, cb])).all()
    # without the dead mark the same ids read different rows at c
    plain = address(v41, [a, b, D, c, d])
    assert not (plain.local[0, 3] == out.local[0, 3]).all()


def test_fast_rows_equal_the_reference(v41):
    rng = np.random.default_rng(0)
    x = rng.integers(0, v41.spec.vocab_size, 3000)
    x[:50] = v41.spec.vocab_size - 1  # the largest mixes
    run = look_back(len(x), rng.random(3000) < 0.05, np.array([0, 700, 701]))
    assert np.array_equal(local_rows(x, run, v41), reference_rows(x, run, v41))


def test_shipped_model_rows_match_its_hash():
    layout = load_layout(ROOT / "assets" / "default-model")
    ids = layout.encode("To be, or not to be, that is the question.")
    out = address(layout, ids)
    for i, layer in enumerate(layout.layers):
        ref = hash_ids(layout.compress(ids)[None], layout.spec, layer)[0].numpy()
        assert np.array_equal(out.local[i], ref)
    assert layout.has_backbone and not layout.block_dead


def _config(**changes):
    cfg = {**V41_CONFIG, **changes}
    return {k: v for k, v in cfg.items() if v is not None}


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"engram_compressed_vocab_size": 99_091},
            "compresses to 99,092 ids but engram_compressed_vocab_size is 99,091",
        ),
        ({"engram_num_embeddings": [384_006_168, 384_016_681]}, "primes sum to 384,016,682 but engram_num_embeddings"),
        ({"engram_head_dim": None}, "config.json is missing engram_head_dim"),
        ({"engram_pad_id": None}, "config.json is missing engram_pad_id or engram_pad_token_id"),
        ({"engram_pad_id": -1}, "pad id -1 is outside"),
    ],
)
def test_bad_configs_are_refused(v41, changes, message):
    with pytest.raises(LayoutError, match=message):
        from_engram_config(_config(**changes), v41.tokenizer, "x")


def test_pad_token_id_spelling_is_accepted(v41):
    layout = from_engram_config(_config(engram_pad_id=None, engram_pad_token_id=2), v41.tokenizer, "port")
    assert layout.spec.pad_id == 2


def test_bad_ids_are_refused(v41):
    with pytest.raises(LayoutError, match="token id -1 is outside 0..129279"):
        address(v41, [5, -1])
    with pytest.raises(LayoutError, match="token id 129280 is outside"):
        address(v41, [129_280])
    with pytest.raises(LayoutError, match="dead token id -3 is outside"):
        address(v41, [5], dead_ids=[-3])


def test_hf_folder_with_wrong_tokenizer(tmp_path, v41):
    (tmp_path / "config.json").write_text(json.dumps(V41_CONFIG))
    (tmp_path / "tokenizer.json").write_text((ROOT / "assets" / "default-model" / "tokenizer.json").read_text())
    out = cli("address", "hello", "--model", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().endswith("wrong tokenizer for this model") and out.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ids", "1,x"], "--ids takes comma-separated integers"),
        (["--ids", "1,-4"], "token id -4 is outside"),
        (["--model", "no-such-model", "hi"], "unknown model 'no-such-model'"),
        (["hi", "--ids", "1"], "give exactly one of TEXT"),
        (["hi", "--format", "csv"], "give -o OUT"),
        (["hi", "--format", "xml", "-o", "x"], "unknown format 'xml'"),
        (["--ids", "1", "--dead-ids", "5"], "does not block N-grams at dead tokens"),
        (["hi", "--neighbours", "3"], "give --tables DIR"),
    ],
)
def test_cli_bad_input_one_line(args, message):
    model = [] if "--model" in args else ["--model", str(ROOT / "assets" / "default-model")]
    out = cli("address", *args, *model)
    assert out.returncode == 2
    assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_csv_and_parquet_export(tmp_path):
    import pyarrow.parquet as pq

    for fmt in ("csv", "parquet"):
        out = cli("address", "To be", "--model", "deepseek-v4.1-flash", "-o", str(tmp_path / f"a.{fmt}"))
        assert out.returncode == 0, out.stderr
    table = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert len(table) == 2 * 2 * 24  # tokens x layers x heads
    lines = (tmp_path / "a.csv").read_text().splitlines()
    assert len(lines) == 1 + len(table) and lines[0].startswith("position,id,text,compressed,dead,layer")


# -- tables --------------------------------------------------------------------------------------


def test_e4m3_and_e8m0_tables_match_torch():
    b = torch.arange(256, dtype=torch.uint8)
    assert np.array_equal(b.view(torch.float8_e4m3fn).float().numpy(), E4M3, equal_nan=True)
    assert np.array_equal(b.view(torch.float8_e8m0fnu).float().numpy(), E8M0, equal_nan=True)


def test_miniature_shard_dequantises_like_torch(tmp_path):
    from safetensors.torch import load_file

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(300, 64)) * rng.uniform(1e-3, 1e3, size=(300, 1))).astype(np.float32)
    path = write_mini_shard(tmp_path / "model-00001.safetensors", {3: x})
    t = open_tables(tmp_path)[3]
    rows = np.array([0, 17, 299, 17])
    got = t.read(rows)
    st = load_file(str(path))
    w = st["layers.3.engram.embed.weight"][rows].float()
    s = st["layers.3.engram.embed.scale"][rows].float()
    ref = (w.reshape(4, 2, 32) * s[:, :, None]).reshape(4, 64).numpy()
    assert np.array_equal(got, ref)
    # and FP8 keeps each value within E4M3's half-ulp of its block maximum's scale
    assert np.allclose(got, x[rows], rtol=0.07, atol=np.abs(x[rows]).max(1, keepdims=True) * 2**-9)


def test_tables_refuse_wrong_geometry(tmp_path, v41):
    write_mini_shard(tmp_path / "t.safetensors", {1: np.ones((64, 256), np.float32)})
    with pytest.raises(LayoutError, match="has 64 rows but the layout gives layer 1 384,006,168"):
        open_tables(tmp_path, v41)
    with pytest.raises(LayoutError, match="no .safetensors files"):
        open_tables(tmp_path / "empty")


def _shard_with_scale(path, scale):
    from safetensors.torch import save_file

    q, _ = quantize_fp8(np.ones((64, 64), np.float32))
    state = {"layers.1.engram.embed.weight": torch.from_numpy(q).view(torch.float8_e4m3fn)}
    save_file({**state, "layers.1.engram.embed.scale": scale}, str(path))
    return path


@pytest.mark.parametrize(
    "scale, message",
    [
        (torch.full((63, 2), 127, dtype=torch.uint8), r"scale is U8 \(63, 2\), expected F8_E8M0 \(64, 2\)"),
        (torch.ones((64, 2), dtype=torch.float32), r"scale is F32 \(64, 2\), expected F8_E8M0 \(64, 2\)"),
        (torch.full((64, 1), 127, dtype=torch.uint8), r"expected F8_E8M0 \(64, 2\)"),
    ],
)
def test_a_scale_tensor_of_the_wrong_shape_or_dtype_names_the_file(tmp_path, scale, message):
    path = _shard_with_scale(tmp_path / "t.safetensors", scale)
    with pytest.raises(LayoutError, match=message) as e:
        open_tables(tmp_path)
    assert str(path) in str(e.value)


def test_a_truncated_shard_names_the_file_and_the_bytes(tmp_path):
    path = write_mini_shard(tmp_path / "t.safetensors", {1: np.ones((64, 256), np.float32)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LayoutError, match="is truncated: layers.1.engram.embed") as e:
        open_tables(tmp_path)
    assert str(path) in str(e.value) and "the file has" in str(e.value)


def test_address_with_tables_norms_cosine_neighbours(tmp_path):
    model = ROOT / "assets" / "default-model"
    layout = load_layout(model)
    rng = np.random.default_rng(2)
    tables = {
        layer: rng.normal(size=(layout.num_embeddings(layer), layout.d_head)).astype(np.float32)
        for layer in layout.layers[:1]
    }  # one layer's shard only: the other is reported missing
    write_mini_shard(tmp_path / "shard-1.safetensors", tables)
    (tmp_path / "sample.txt").write_text("To be, or not to be, that is the question. " * 5)
    out = cli(
        "address",
        "To be, or not",
        "--model",
        str(model),
        "--tables",
        str(tmp_path),
        "--neighbours",
        "3",
        "--corpus",
        str(tmp_path / "sample.txt"),
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    first = str(layout.layers[0])
    views = got["tables"]
    assert views["missing_layers"] == [layout.layers[1]]
    t = open_tables(tmp_path)[layout.layers[0]]
    rows = np.array([tok["rows"][first] for tok in got["tokens"]])
    assert np.allclose(
        views["norms"][first], np.linalg.norm(t.read(rows.reshape(-1)), axis=1).reshape(rows.shape), atol=1e-5
    )
    cos = np.array(views["cosine"][first]["matrix"])
    assert np.allclose(np.diag(cos), 1.0, atol=1e-5) and np.allclose(cos, cos.T)
    # the text is in the sample, so each of its rows' neighbours come from the sample's rows
    pool = set()
    ids = layout.encode((tmp_path / "sample.txt").read_text())
    a = address(layout, ids)
    pool = set(a.rows[0].reshape(-1).tolist())
    for row, nbs in views["neighbours"][first].items():
        assert len(nbs) == 3 and all(r in pool and r != int(row) for r, _ in nbs)
        assert [s for _, s in nbs] == sorted((s for _, s in nbs), reverse=True)
