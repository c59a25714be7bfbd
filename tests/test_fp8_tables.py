"""FP8 tables in checkpoints: E4M3 values with one E8M0 scale per 32 values, dequantised on load."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engram_core import CheckpointError, load_checkpoint, save_checkpoint
from engram_core.checkpoint import sha256_file
from engram_core.model import EngramLM
from engram_core.tables import dequantize_fp8, quantize_fp8
from tests.conftest import tiny_config

TABLES = ("blocks.0.engram.table.weight", "blocks.1.engram.table.weight")


@pytest.fixture()
def wide_model(tiny_parts):
    """The tiny model with 64-wide rows (two scale blocks a row) and tables spread over many magnitudes."""
    tok, comp, pad = tiny_parts
    cfg = tiny_config(tok.get_vocab_size(), comp.size, pad)
    cfg = dataclasses.replace(cfg, memory=dataclasses.replace(cfg.memory, d_head=64))
    torch.manual_seed(0)
    model = EngramLM(cfg, comp.table).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in model.blocks:
            if block.engram is not None:
                w = block.engram.table.weight
                w.copy_(
                    torch.randn(w.shape, generator=g) * torch.exp2(torch.randint(-20, 8, (w.shape[0], 1), generator=g))
                )
                block.engram.readout.conv.normal_(0, 0.3)
    return model


@pytest.fixture()
def fp8_saved(tmp_path, wide_model, tiny_tokenizer):
    return save_checkpoint(tmp_path / "fp8", wide_model, tiny_tokenizer, dtype=torch.bfloat16, table_format="fp8")


def test_dequantize_hand_computed():
    """Block [1, -0.5, 3, 0 ...] has amax 3: scale exponent ceil(log2(3 / 448)) = -7, byte 120.
    E4M3 is S.EEEE.MMM with bias 7: 1 x 2^7 = 128 is exponent 14, 0x70; -0.5 x 2^7 = -64 is
    sign and exponent 13, 0xE8; 3 x 2^7 = 384 = 1.5 x 2^8 is exponent 15, mantissa 4, 0x7C."""
    x = np.zeros((1, 32), np.float32)
    x[0, :3] = [1.0, -0.5, 3.0]
    q, s = quantize_fp8(x)
    assert s.tolist() == [[120]]
    assert q[0, :3].tolist() == [0x70, 0xE8, 0x7C]
    np.testing.assert_array_equal(dequantize_fp8(q, s), x)


def test_fp8_file_layout(fp8_saved, wide_model):
    state = load_file(str(fp8_saved / "model.safetensors"))
    for name in TABLES:
        rows = wide_model.state_dict()[name].shape[0]
        assert state[name].dtype == torch.float8_e4m3fn and state[name].shape == (rows, 64)
        assert state[name + "_scale"].dtype == torch.uint8 and state[name + "_scale"].shape == (rows, 2)
    assert state["wte.weight"].dtype == torch.bfloat16
    config = json.loads((fp8_saved / "config.json").read_text())
    assert config["table_format"] == "fp8" and config["weights_dtype"] == "bfloat16"


def test_fp8_round_trip_equals_quantise_dequantise(fp8_saved, wide_model):
    ck = load_checkpoint(fp8_saved)
    for name in TABLES:
        original = wide_model.state_dict()[name].numpy()
        want = dequantize_fp8(*quantize_fp8(original))
        got = ck.model.state_dict()[name]
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), want)
        # the quantisation itself: E4M3 keeps 3 mantissa bits, a relative error of at most 2^-4 per value
        big = np.abs(original) > np.abs(original).max(axis=1, keepdims=True) * 2.0**-6
        assert np.all(np.abs(want - original)[big] <= np.abs(original)[big] * 2.0**-4)
    dense = ck.model.state_dict()["wte.weight"]
    torch.testing.assert_close(dense, wide_model.state_dict()["wte.weight"].bfloat16().float(), rtol=0, atol=0)


def test_fp8_checkpoint_saved_again_is_unchanged(fp8_saved, tmp_path, tiny_tokenizer):
    """Quantising dequantised FP8 tables gives the same values: re-saving loses nothing more.

    (Not always the same bytes: a block whose largest E4M3 value is at most 224 gets a scale
    one power of two lower the second time, with every value doubled, exactly.)"""
    ck = load_checkpoint(fp8_saved)
    again = save_checkpoint(tmp_path / "again", ck.model, tiny_tokenizer, dtype=torch.bfloat16, table_format="fp8")
    reloaded = load_checkpoint(again)
    for name in TABLES:
        assert torch.equal(ck.model.state_dict()[name], reloaded.model.state_dict()[name])


def test_old_checkpoint_without_table_format_loads(tmp_path, tiny_model, tiny_tokenizer):
    path = save_checkpoint(tmp_path / "old", tiny_model, tiny_tokenizer)
    config = json.loads((path / "config.json").read_text())
    assert config.pop("table_format") == "float32"
    (path / "config.json").write_text(json.dumps(config))
    ck = load_checkpoint(path)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, ck.model.state_dict()[k]), k


def test_bf16_tables_in_an_fp32_checkpoint(tmp_path, tiny_model, tiny_tokenizer):
    path = save_checkpoint(tmp_path / "mixed", tiny_model, tiny_tokenizer, table_format="bf16")
    state = load_file(str(path / "model.safetensors"))
    assert state[TABLES[0]].dtype == torch.bfloat16 and state["wte.weight"].dtype == torch.float32
    ck = load_checkpoint(path)
    want = tiny_model.state_dict()[TABLES[0]].bfloat16().float()
    assert torch.equal(ck.model.state_dict()[TABLES[0]], want)


def test_fp8_needs_rows_a_multiple_of_32(tmp_path, tiny_model, tiny_tokenizer):
    with pytest.raises(ValueError, match="multiple of 32"):
        save_checkpoint(tmp_path / "narrow", tiny_model, tiny_tokenizer, table_format="fp8")
    with pytest.raises(ValueError, match="table_format"):
        save_checkpoint(tmp_path / "bad", tiny_model, tiny_tokenizer, table_format="int4")


def rewrite(folder, edit):
    """Edit the weights and re-seal the checksum, so only the tensor check can object."""
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = sha256_file(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))


SCALE = TABLES[1] + "_scale"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.update({SCALE: s[SCALE].to(torch.int16)}), "must be uint8"),
        (lambda s: s.update({SCALE: s[SCALE].float()}), "must be uint8"),
        (lambda s: s.update({SCALE: s[SCALE][:, :1].contiguous()}), r"_scale: torch.uint8 \(\d+, 1\)"),
        (lambda s: s.update({SCALE: s[SCALE][:-1].contiguous()}), "one E8M0 exponent per 32"),
        (lambda s: s.update({SCALE: torch.full_like(s[SCALE], 255)}), "NaN"),
        (lambda s: s.pop(SCALE), "missing tensor blocks.1.engram.table.weight_scale"),
        (lambda s: s.update({TABLES[1]: s[TABLES[1]].float()}), "must be float8_e4m3fn"),
        # an E4M3 NaN byte (S.1111.111) inside a table: refused, not loaded as NaN rows
        (
            lambda s: s[TABLES[0]].view(torch.uint8).__setitem__((3, 5), 0x7F),
            "blocks.0.engram.table.weight holds 1 NaN",
        ),
    ],
)
def test_corrupt_fp8_tensors_are_one_line_errors(fp8_saved, edit, match):
    rewrite(fp8_saved, edit)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(fp8_saved)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_tables_are_refused_when_saved(bad, tmp_path, wide_model, tiny_tokenizer):
    """A NaN made its block's scale NaN; an inf flushed the other 31 values of its block to zero."""
    x = np.ones((4, 64), np.float32)
    x[2, 40] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite values as FP8 \\(first: row 2\\)"):
        quantize_fp8(x)
    with torch.no_grad():
        wide_model.blocks[1].engram.table.weight[7, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        save_checkpoint(tmp_path / "bad", wide_model, tiny_tokenizer, table_format="fp8")


def test_dequantisation_is_exact_up_to_scale_2_to_119():
    q = np.full((1, 32), 0x7E, np.uint8)  # 448, E4M3's largest finite value
    assert np.isfinite(dequantize_fp8(q, np.full((1, 1), 127 + 119, np.uint8))).all()
    assert dequantize_fp8(q, np.full((1, 1), 127 + 119, np.uint8))[0, 0] == 448 * 2.0**119
    with np.errstate(over="ignore"):
        assert np.isinf(dequantize_fp8(q, np.full((1, 1), 127 + 120, np.uint8))).all()  # the docstring says so
