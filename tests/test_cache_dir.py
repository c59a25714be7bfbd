"""Derived data lives under the cache directory, keyed by the checkpoint, never in the checkpoint's folder."""

from pathlib import Path

import torch

from engram_core import load_checkpoint, save_checkpoint
from engram_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_cache_dir, checkpoint_key
from engram_core.data import cache_dir


def test_cache_dir_honours_engram_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ENGRAM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "engram-inspector"


def test_checkpoint_cache_dir_is_keyed_by_the_model(monkeypatch, tmp_path, tiny_model, tiny_tokenizer):
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    a = load_checkpoint(save_checkpoint(tmp_path / "a", tiny_model, tiny_tokenizer))
    b = load_checkpoint(save_checkpoint(tmp_path / "b", tiny_model, tiny_tokenizer))
    key = checkpoint_key(a)
    assert len(key) == 16 and int(key, 16) >= 0
    assert checkpoint_cache_dir(a) == tmp_path / "cache" / key
    assert checkpoint_cache_dir(b) == checkpoint_cache_dir(a)  # same model, other folder: same cache
    with torch.no_grad():
        tiny_model.blocks[0].engram.table.weight[0, 0] += 1.0
    c = load_checkpoint(save_checkpoint(tmp_path / "c", tiny_model, tiny_tokenizer))
    assert checkpoint_key(c) != key
    # without a folder the key hashes the tensors themselves: equal models, equal keys
    a.path, b.path, c.path = None, None, None
    assert checkpoint_key(a) == checkpoint_key(b) != checkpoint_key(c)
    assert not checkpoint_cache_dir(c).exists()  # naming a folder does not create it


def test_default_checkpoint_is_the_shipped_model():
    assert DEFAULT_CHECKPOINT == Path(__file__).resolve().parent.parent / "assets" / "default-model"
    assert (DEFAULT_CHECKPOINT / "model.safetensors").is_file()


def test_shipped_keys_unchanged():
    """Files shipped precomputed beside the weights are named by the key: moving the function must not change it."""
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    assert any(p.name.endswith(f"-{checkpoint_key(ck)}.npz") for p in DEFAULT_CHECKPOINT.iterdir())


def test_inspect_re_exports_the_core_key():
    from engram_inspect.base import cache

    assert cache.checkpoint_key is checkpoint_key
