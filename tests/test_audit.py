"""`engram audit`: clean tables pass; tables broken in each way users of quantised copies meet
(NaN scales and values, zero rows, rows never dequantised, a wrong bit width, a scale tensor cut
short, a wrong row count, a truncated shard) are each found, in this project's, DeepSeek-V4.1's and
Qwen's storage formats; a reference copy's error per row, weighted by a corpus; a killed pass resumes."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engram_core.compression import build_compression
from engram_core.hashing import HashSpec
from engram_core.layout import load_layout
from engram_core.tables import quantize_fp8, write_sparse_shards
from engram_inspect.corpus.audit import audit

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "assets" / "default-model"
TOKENIZER = MODEL / "tokenizer.json"


def v41_style(folder: Path) -> Path:
    """A small layout in DeepSeek-V4.1's format (engram_* config, FP8 tables with E8M0 scales)."""
    from tokenizers import Tokenizer

    folder.mkdir(parents=True)
    shutil.copy(TOKENIZER, folder / "tokenizer.json")
    comp = build_compression(Tokenizer.from_file(str(TOKENIZER)))
    spec = HashSpec(vocab_size=comp.size, table_sizes=(3000, 3000), max_ngram=3, heads_per_ngram=2, layer_ids=(1,))
    config = {
        "engram_layer_ids": [1],
        "engram_max_ngram_size": 3,
        "engram_n_heads": 2,
        "engram_head_dim": 64,
        "engram_vocab_size": [3000, 3000],
        "engram_num_embeddings": [sum(spec.primes[1])],
        "engram_compressed_vocab_size": comp.size,
        "engram_pad_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def trained_like(n: int, d: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, d)) * 0.05).astype(np.float32)


def save_fp8(path: Path, x: np.ndarray, layer: int = 1, scale_rows: int | None = None, width: int | None = None):
    q, s = quantize_fp8(x)
    if width is not None:  # a copy written at another bit width: 2 values a byte
        q = q[:, :width]
        s = s[:, : max(width // 32, 1)]
    if scale_rows is not None:
        s = s[:scale_rows]
    save_file(
        {
            f"layers.{layer}.engram.embed.weight": torch.from_numpy(np.ascontiguousarray(q)).view(torch.float8_e4m3fn),
            f"layers.{layer}.engram.embed.scale": torch.from_numpy(np.ascontiguousarray(s)).view(torch.float8_e8m0fnu),
        },
        str(path),
    )
    return q, s


@pytest.fixture(scope="module")
def v41(tmp_path_factory):
    folder = v41_style(tmp_path_factory.mktemp("v41") / "model")
    return folder, load_layout(folder)


def kinds(report) -> set[str]:
    return {f.kind for f in report.findings}


def test_the_shipped_model_is_clean(engram_cli):
    r = engram_cli("audit", "--model", str(MODEL), "--tables", str(MODEL), "--no-resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "865,500 rows audited, no findings" in r.stdout


def test_a_clean_v41_style_table_passes(tmp_path, v41):
    folder, layout = v41
    n = layout.num_embeddings(1)
    save_fp8(tmp_path / "t.safetensors", trained_like(n, 64))
    report = audit(layout, tmp_path, block_rows=4096)
    assert report.findings == [] and report.rows == n


def test_nan_scales_and_values_and_zero_rows_are_found(tmp_path, v41):
    _, layout = v41
    n = layout.num_embeddings(1)
    x = trained_like(n, 64)
    x[[10, 4000]] = 0.0  # two rows zeroed
    q, s = quantize_fp8(x)
    s[77, 1] = 0xFF  # an impossible E8M0 scale: NaN
    save_file(
        {
            "layers.1.engram.embed.weight": torch.from_numpy(q).view(torch.float8_e4m3fn),
            "layers.1.engram.embed.scale": torch.from_numpy(s).view(torch.float8_e8m0fnu),
        },
        str(tmp_path / "t.safetensors"),
    )
    report = audit(layout, tmp_path, block_rows=4096)
    lines = [f.line() for f in report.findings]
    assert kinds(report) == {"nan_scale", "non_finite", "zero_rows"}, lines
    assert "1 rows have E8M0 scales 0xFF (NaN) (first rows: [77])" in " ".join(lines)
    assert "2 all-zero rows" in " ".join(lines) and "[10, 4000]" in " ".join(lines)


@pytest.mark.parametrize(
    "how,kind,text",
    [
        ({"scale_rows": 100}, "unreadable", "expected F8_E8M0"),
        ({"width": 32}, "width", "rows are 32 values wide, the layout says 64"),
        ({"extra_rows": 5}, "count", "but the layout gives layer 1"),
    ],
)
def test_a_wrong_bit_width_a_short_scale_tensor_and_a_wrong_count_are_found(tmp_path, v41, how, kind, text):
    _, layout = v41
    n = layout.num_embeddings(1) + how.pop("extra_rows", 0)
    save_fp8(tmp_path / "t.safetensors", trained_like(n, 64), **how)
    report = audit(layout, tmp_path)
    assert kinds(report) == {kind} and text in report.findings[0].line()


def test_a_truncated_shard_is_found_and_the_command_exits_1(tmp_path, v41, engram_cli):
    folder, layout = v41
    path = tmp_path / "t.safetensors"
    save_fp8(path, trained_like(layout.num_embeddings(1), 64))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 1000)
    r = engram_cli("audit", "--model", str(folder), "--tables", str(tmp_path), "--no-resume")
    assert r.returncode == 1 and "is truncated" in r.stdout and "1 findings" in r.stdout


def qwen_small(folder: Path) -> Path:
    """A small layout in Qwen's format: PLE config, bf16 table in row shards."""
    folder.mkdir(parents=True)
    text = {
        "vocab_size": 4096,
        "ple_layer_ids": [1],
        "ple_embed_dim": 64,
        "ngram_size": 3,
        "heads_per_ngram": 2,
        "ngram_vocab_size_base": 3000,
        "make_ngram_vocab_size_divisible_by": 128,
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen4_exp", "text_config": text}))
    shutil.copy(TOKENIZER, folder / "tokenizer.json")
    return folder


def save_bf16_shards(path: Path, x: np.ndarray, parts: int = 4) -> None:
    bf = torch.from_numpy(x).to(torch.bfloat16)
    per = x.shape[0] // parts
    save_file(
        {
            f"model.layers.0.ple.ple_embedding.ngram_embedding.shard_{i}.weight": bf[i * per : (i + 1) * per].clone()
            for i in range(parts)
        },
        str(path),
    )


def test_qwen_rows_never_dequantised_are_norm_outliers(tmp_path):
    layout = load_layout(qwen_small(tmp_path / "q"))
    n = layout.stored_rows(0)
    x = trained_like(n, 16)
    x[layout.num_embeddings(0) :] = 0.0  # padding rows are zero, and that is no finding
    clean = tmp_path / "clean"
    clean.mkdir()
    save_bf16_shards(clean / "t.safetensors", x)
    assert audit(layout, clean).findings == []
    q, _ = quantize_fp8(np.repeat(x[500:540], 2, axis=1)[:, :32])
    x[500:540] = q[:, :16].astype(np.float32)  # 40 rows copied as raw E4M3 codes, never scaled
    broken = tmp_path / "broken"
    broken.mkdir()
    save_bf16_shards(broken / "t.safetensors", x)
    report = audit(layout, broken)
    assert kinds(report) == {"norm_outliers"}, [f.line() for f in report.findings]
    assert "more than 64x off the median norm" in report.findings[0].line()


def test_a_full_size_sparse_qwen_table_is_streamed_in_seconds(tmp_path):
    """102 GB of table (320,001,536 rows x 160 bf16, 128 shards) written as a sparse file: the pass
    covers every row, finds the NaN row and the unwritten rows, and holds one block at a time."""
    layout = load_layout("qwen3.8-flash-next")
    per = layout.stored_rows(1) // 128
    names = [f"model.language_model.layers.1.ple.ple_embedding.ngram_embedding.shard_{i}.weight" for i in range(128)]
    rows = {r: np.full(160, 0x3C00) for r in range(1000, 1100)}  # 100 rows of 0.0078
    rows[5_000_000] = np.full(160, 0x7FC0)  # NaN
    write_sparse_shards(tmp_path / "model.safetensors", names, (per, 160), "BF16", rows)
    report = audit(layout, tmp_path)
    assert report.rows == layout.stored_rows(1)
    got = {f.kind: f.line() for f in report.findings}
    assert set(got) == {"non_finite", "zero_rows"}
    assert "1 rows hold NaN or inf (first rows: [5000000])" in got["non_finite"]
    assert f"{layout.num_embeddings(1) - 101:,} all-zero rows" in got["zero_rows"]


def test_a_reference_copy_gives_errors_per_row_weighted_by_a_corpus(tmp_path, v41, engram_cli):
    from engram_inspect.corpus.scan import scan

    folder, layout = v41
    n = layout.num_embeddings(1)
    x = trained_like(n, 64, seed=3)
    orig, req = tmp_path / "bf16", tmp_path / "fp8"
    orig.mkdir()
    req.mkdir()
    save_file({"layers.1.engram.embed.weight": torch.from_numpy(x).to(torch.bfloat16)}, str(orig / "t.safetensors"))
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.py").write_text((ROOT / "engram_core" / "hashing.py").read_text())
    scan(layout, [str(corpus)], tmp_path / "scan")
    import pyarrow.parquet as pq

    hot = pq.read_table(tmp_path / "scan" / "rows.parquet").to_pandas().sort_values("hits").iloc[-1]
    y = x.copy()
    y[int(hot["row"])] *= 3.0  # one often-read row badly requantised
    save_fp8(req / "t.safetensors", y)
    args = ["audit", "--model", str(folder), "--tables", str(req), "--reference", str(orig)]
    r = engram_cli(*args, "--scan", str(tmp_path / "scan"), "--no-resume", "--json", str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads((tmp_path / "a.json").read_text())["layers"]["1"]
    errors = [h["mean_error"] for h in out["heads"]]
    assert all(0.005 < e < 0.1 for e in errors), errors  # FP8 E4M3: a few percent per row
    assert all(h["read_weighted_error"] is not None for h in out["heads"])
    assert out["worst"][0]["row"] == int(hot["row"]) and out["worst"][0]["error"] > 1.5
    assert f"worst row {int(hot['row'])}" in r.stdout and "N-gram" in r.stdout


def test_a_killed_pass_resumes_where_it_stopped(tmp_path, v41):
    _, layout = v41
    n = layout.num_embeddings(1)
    x = trained_like(n, 64)
    x[[100, 11000]] = 0.0
    save_fp8(tmp_path / "t.safetensors", x)
    import engram_inspect.corpus.audit as audit_mod

    old = audit_mod.SAVE_EVERY
    audit_mod.SAVE_EVERY = 2048
    try:

        def kill(done, total):
            if done >= 8192:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            audit(layout, tmp_path, state_dir=tmp_path / "state", progress=kill, block_rows=2048)
        again = audit(layout, tmp_path, state_dir=tmp_path / "state", block_rows=2048)
    finally:
        audit_mod.SAVE_EVERY = old
    whole = audit(layout, tmp_path, block_rows=2048)
    assert 0 < again.resumed_from < 8192 and again.resumed_from % 2048 == 0  # the last state saved before the kill
    assert [f.line() for f in again.findings] == [f.line() for f in whole.findings]
    assert again.layers == whole.layers


def test_bad_input_exits_2(engram_cli, tmp_path):
    r = engram_cli("audit", "--model", "deepseek-v4.1-flash", "--tables", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no such folder" in r.stderr
