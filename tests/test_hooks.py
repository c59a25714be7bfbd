"""The hook-name helper spells exactly the names the model's hook points have."""

import pytest

from engram_core.hooks import COMPRESSED_IDS, all_hooks, block_hook, engram_hook


def test_helper_names_are_the_models_hooks(tiny_model):
    n_layer = tiny_model.cfg.backbone.n_layer
    assert sorted(all_hooks(n_layer, tiny_model.engram_layers)) == sorted(tiny_model.hook_names())


def test_hand_written_names():
    assert engram_hook(1, "gate") == "blocks.1.engram.readout.hook_gate"
    assert engram_hook(2, "hook_hash_ids") == "blocks.2.engram.hook_hash_ids"
    assert engram_hook(0, "out") == "blocks.0.engram.readout.hook_out"
    assert block_hook(3, "resid_post") == "blocks.3.hook_resid_post"
    assert COMPRESSED_IDS == "hook_compressed_ids"


def test_unknown_names_refused():
    with pytest.raises(ValueError, match="no Engram hook 'gates'"):
        engram_hook(1, "gates")
    with pytest.raises(ValueError, match="no block hook"):
        block_hook(1, "gate")


def test_capture_by_helper_names(tiny_model):
    import torch

    names = [engram_hook(1, "gate"), block_hook(2, "resid_post")]
    _, cache = tiny_model.run_with_cache(torch.zeros((1, 6), dtype=torch.long), names=names)
    assert sorted(cache) == sorted(names)
    assert cache[engram_hook(1, "gate")].shape == (1, 6, 2)
