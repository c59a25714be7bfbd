"""Hook names: the one place that spells them, so a capture never builds one by hand.

Every activation worth seeing passes a named `HookPoint` (TransformerLens style);
`EngramLM.run_with_cache` returns a dict keyed by these names. The module paths
behind them (`blocks.{i}.engram.readout...`) are the model's attribute names, so
renaming an attribute renames a hook: a test compares these with `hook_names()`.
"""

from __future__ import annotations

COMPRESSED_IDS = "hook_compressed_ids"  # (B, T) compressed ids (§1)
LOGITS = "hook_logits"  # (B, T, V)

# short name -> path inside `blocks.{layer}.engram`
ENGRAM_HOOKS = {
    "hash_ids": "hook_hash_ids",  # (B, T, H) head-local rows (§3)
    "rows": "hook_rows",  # (B, T, H, Dh) looked-up rows after knock-out masks (eq. 2)
    "gate_score": "readout.hook_gate_score",  # (B, T, M) score before the sigmoid (eq. 4)
    "gate": "readout.hook_gate",  # (B, T, M) alpha
    "value": "readout.hook_value",  # (B, T, D) v = W_V e (eq. 3)
    "out": "readout.hook_out",  # (B, T, M, D) the module's output Y (eq. 5)
}
BLOCK_HOOKS = ("resid_pre", "resid_post")  # (B, T, M, D) residual branches around a block


def _short(name: str) -> str:
    return name.removeprefix("hook_")


def engram_hook(layer: int, name: str) -> str:
    """`engram_hook(1, "gate")` -> "blocks.1.engram.readout.hook_gate"; `name` may carry its `hook_` prefix."""
    short = _short(name)
    if short not in ENGRAM_HOOKS:
        raise ValueError(f"no Engram hook {name!r}: choose one of {', '.join(ENGRAM_HOOKS)}")
    return f"blocks.{int(layer)}.engram.{ENGRAM_HOOKS[short]}"


def block_hook(layer: int, name: str) -> str:
    """`block_hook(3, "resid_post")` -> "blocks.3.hook_resid_post"."""
    short = _short(name)
    if short not in BLOCK_HOOKS:
        raise ValueError(f"no block hook {name!r}: choose one of {', '.join(BLOCK_HOOKS)}")
    return f"blocks.{int(layer)}.hook_{short}"


def all_hooks(n_layer: int, engram_layers: tuple[int, ...]) -> list[str]:
    """Every hook name of a model with these blocks and Engram layers."""
    names = [block_hook(i, n) for i in range(n_layer) for n in BLOCK_HOOKS]
    names += [engram_hook(i, n) for i in engram_layers for n in ENGRAM_HOOKS]
    return [*names, COMPRESSED_IDS, LOGITS]
