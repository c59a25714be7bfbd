"""Released model families with a hashed N-gram memory, one small module each.

A family turns its released `config.json` (and tokenizer) into a `MemoryLayout`: its
tokenizer-side preprocessing, its hash, its head sizes and row offsets, its padding and
separator rules and the format its tables are stored in. DeepSeek-V4.1-Flash's preset
and the Hugging Face-style `engram_*` configs live in `layout.py`; the others here:

- `qwen`: Qwen3.8-Flash-Next's per-layer N-gram embedding (`qwen3.8-flash-next`);
- `longcat`: LongCat-Flash-Lite's N-gram embeddings at the input layer (`longcat-flash-lite`).

Each is checked bit for bit against vectors computed by its public reference
implementation (tests/data, with their source).
"""

from __future__ import annotations

from collections.abc import Callable

from ..layout import LayoutError, MemoryLayout
from . import longcat, qwen

PRESETS: dict[str, Callable[[], MemoryLayout]] = {qwen.NAME: qwen.preset, longcat.NAME: longcat.preset}


def from_config(config: dict, tokenizer, name: str) -> MemoryLayout | None:
    """The layout of a released config of a known family, or None when no family claims it."""
    model_type = str(config.get("model_type", ""))
    if model_type in qwen.MODEL_TYPES:
        if not qwen.text_config(config).get("ple_layer_ids"):
            raise LayoutError(f"{name}: a {model_type} config without ple_layer_ids has no N-gram memory")
        return qwen.layout(config, tokenizer, name)
    if model_type in longcat.MODEL_TYPES or (model_type.startswith("longcat") and "ngram_vocab_size_ratio" in config):
        if config.get("ngram_vocab_size_ratio") is None:
            raise LayoutError(f"{name}: a {model_type} config without ngram_vocab_size_ratio has no N-gram memory")
        return longcat.layout(config, tokenizer, name)
    return None
