"""What the app shares between all users: the model and its indexes, loaded once, read-only.

Captures go through one lock: hooks are registered on the shared model for the
length of a forward pass, so two concurrent captures would read each other's
activations. Everything else a user sees lives in that user's own Gradio state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from engram_core import Checkpoint, KnockOut, load_checkpoint
from engram_inspect.text.capture import MAX_TOKENS, Trace, capture

MAX_CHARS = 20_000  # longest text the app takes; longer pastes get a message, not a capture
# every request's work is bounded (docs/api.md, Limits): k = 10,000 neighbours already takes ~10 s
MAX_NEIGHBOURS = 100  # k of /neighbours (the page's slider stops at 50)
MAX_SAMPLES = 16  # resampled runs of one knock-out (samples=K): each is a whole forward pass


class InputError(ValueError):
    """Input the user can fix; shown as a message, never a traceback."""


def clean_input(text: object) -> str:
    """Reject what cannot be traced, with a reason; keep everything else exactly."""
    if not isinstance(text, str):
        raise InputError("the text must be a string")
    if not text.strip():
        raise InputError("the text is empty: type or paste something to trace")
    if len(text) > MAX_CHARS:
        raise InputError(f"the text has {len(text):,} characters; the app takes at most {MAX_CHARS:,}")
    return text


@dataclass
class Session:
    ck: Checkpoint
    path: Path
    _model_lock: threading.Lock = field(default_factory=threading.Lock)
    _load_lock: threading.RLock = field(default_factory=threading.RLock)  # re-entrant: health() loads collisions()
    _cache: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Session:
        return cls(ck=load_checkpoint(path), path=Path(path))

    @property
    def layers(self) -> tuple[int, ...]:
        return self.ck.model.engram_layers

    @property
    def n_branches(self) -> int:
        return self.ck.model.cfg.backbone.n_branches

    def capture(self, text: object, mask: KnockOut | None = None, top_k: int = 5) -> Trace:
        text = clean_input(text)
        if mask is not None and mask.samples > MAX_SAMPLES:
            raise InputError(f"samples={mask.samples}: the app averages at most {MAX_SAMPLES} resampled runs")
        with self._model_lock:
            try:
                return capture(self.ck, text, mask=mask, top_k=top_k)
            except ValueError as e:
                raise InputError(str(e)) from e

    def run_model(self, fn):
        """Run fn(model) under the model lock (for generation and other direct use)."""
        with self._model_lock:
            return fn(self.ck.model)

    def _lazy(self, key: str, build):
        with self._load_lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def collisions(self):
        from engram_inspect.memory.collisions import load_or_build

        return self._lazy("collisions", lambda: load_or_build(self.ck))

    def value_index(self):
        """Exact value-space kNN over every row (engram_inspect.memory.valuespace.ValueIndex), built once (~1 s)."""
        from engram_inspect.memory.valuespace import ValueIndex

        return self._lazy("value-index", lambda: ValueIndex(self.ck))

    def projection(self, method: str):
        """A cached map of memory rows; UMAP only when precomputed (no JIT wait in the app)."""
        from engram_inspect.memory.projection import compute_projection

        def build():
            if method == "umap":
                from engram_inspect.base.cache import find_file

                if not find_file(self.ck, "projection-umap-pooled", ".npz").is_file():
                    return None
            return compute_projection(self.ck, method, "pooled")

        return self._lazy(f"projection-{method}", build)

    def mean_gate(self):
        """Per flat row id, the mean alpha of held-out tokens that read it (NaN: none did)."""
        from engram_inspect.memory.mean_gate import load_or_compute

        return self._lazy("mean-gate", lambda: load_or_compute(self.ck, self._model_lock))

    def health(self) -> list[dict]:
        from engram_inspect.memory.health import health_table

        return self._lazy("health", lambda: health_table(self.collisions()))


__all__ = ["MAX_CHARS", "MAX_NEIGHBOURS", "MAX_SAMPLES", "MAX_TOKENS", "InputError", "Session", "clean_input"]
