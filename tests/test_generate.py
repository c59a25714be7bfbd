"""Greedy generation in the core: checked against one causal forward pass over the finished sequence."""

import pytest
import torch

from engram_core import KnockOut


def prompt_for(model, n, seed=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.backbone.vocab_size, (n,), generator=g).tolist()


@pytest.mark.parametrize("ko", [KnockOut(), KnockOut(all=True), KnockOut(rows={(1, 2, 0, 3)})])
def test_each_token_is_the_argmax_of_its_prefix(tiny_model, ko):
    """Causality makes one forward of prompt + continuation an oracle for every greedy step."""
    prompt = prompt_for(tiny_model, 9)
    new = tiny_model.generate(prompt, 10, knockout=ko)
    assert new.shape == (1, 10)
    seq = torch.tensor([prompt + new[0].tolist()])
    with torch.no_grad():
        logits = tiny_model(seq, knockout=ko)
    assert new[0].tolist() == logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()


def test_past_the_context_each_step_reads_the_last_block(tiny_model):
    C = tiny_model.cfg.backbone.block_size
    prompt = prompt_for(tiny_model, C + 7)
    new = tiny_model.generate(torch.tensor([prompt, prompt[::-1]]), 5)
    assert new.shape == (2, 5)
    seq = prompt + new[0].tolist()
    for i in range(5):
        window = torch.tensor([seq[len(prompt) + i - C : len(prompt) + i]])
        with torch.no_grad():
            assert int(tiny_model(window)[0, -1].argmax()) == int(new[0, i])


def test_bad_generation_requests(tiny_model):
    assert tiny_model.generate([1, 2], 0).shape == (1, 0)
    with pytest.raises(ValueError, match="at least one prompt token"):
        tiny_model.generate([], 3)
    with pytest.raises(ValueError, match="n_tokens"):
        tiny_model.generate([1], -1)
    with pytest.raises(ValueError, match="head 5 is outside"):
        tiny_model.generate([1, 2], 3, knockout=KnockOut(heads={(1, 2, 5)}))
