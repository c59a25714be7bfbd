"""The models the app can pick besides its own checkpoint: layouts addressed without a backbone.

`Layouts` is shared by all users like `Session`: the DeepSeek-V4.1-Flash layout (built
once, ~5 s), the scan its Lookups and Health read (`--scan OUT_DIR`, or a small
default corpus sample scanned once in the background and cached under ENGRAM_CACHE),
and its tables when the app was started with `--tables DIR`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

SHIPPED = "shipped model"
V41 = "deepseek-v4.1-flash"
MODELS = (SHIPPED, V41)
NO_BACKBONE = {"card"}  # tabs with nothing that needs the backbone
BACKBONE_VIEWS = {  # tab id -> what it needs the backbone for (tabs not named: "this tab's views")
    "gates": "the gates",
    "memory-map": "the memory map and its gate colours",
    "knockout": "knock-outs",
    "attribution": "attribution",
    "row-page": "the row page (the shipped model's rows, gates and knock-outs)",
    "lookups": "the gate colours, the shipped model's tables and the attribution bars",
    "health": "the gate distribution and the logit lens",
    "paper": "the paper checks",
    "export": "trace exports",
}
SAMPLE_PLAYS = 3  # plays of the default corpus sample (plus a few standard-library modules)
SAMPLE_MODULES = ("argparse.py", "json/decoder.py", "json/encoder.py", "collections/__init__.py")


def check_model(model: object) -> str:
    """The picked model, or one line naming the choices."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: choose {' or '.join(repr(m) for m in MODELS)}")
    return str(model)


def unavailable(model: str, what: str) -> str:
    """The one line a backbone view shows for an addressing-only model."""
    return f"Not for {model}: {what} need the backbone, and the app reads only this model's memory addressing."


def sample_paths() -> list[str]:
    """The default corpus sample: the first plays and a few standard-library modules."""
    from engram_core.data import plays_dir, stdlib_dir

    plays = sorted(plays_dir().rglob("*.md"))[:SAMPLE_PLAYS]
    mods = [stdlib_dir() / m for m in SAMPLE_MODULES if (stdlib_dir() / m).is_file()]
    return [str(p) for p in plays + mods]


@dataclass
class Layouts:
    scan_dir: Path | None = None  # a finished `engram scan` OUT_DIR (--scan)
    tables_dir: Path | None = None  # safetensors table shards (--tables)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cache: dict = field(default_factory=dict)
    _job: threading.Thread | None = None
    progress: dict = field(default_factory=lambda: {"state": "not started"})

    def layout(self):
        from engram_core.layout import load_layout

        with self._lock:
            if "layout" not in self._cache:
                self._cache["layout"] = load_layout(V41)
            return self._cache["layout"]

    def default_scan_dir(self) -> Path:
        """Keyed by the sample's files and sizes, so a changed sample is scanned afresh."""
        import hashlib
        import os

        from engram_core.data import cache_dir

        files = "\n".join(f"{p} {os.path.getsize(p)}" for p in sample_paths())
        key = hashlib.sha256(f"parts keep token streams\n{files}".encode()).hexdigest()[:12]
        return cache_dir() / V41 / f"scan-sample-{key}"

    def stats(self, start: bool = False):
        """The scan's statistics, or None while the default sample is being scanned (started if `start`)."""
        from engram_inspect.corpus.layout_summary import ScanStats

        with self._lock:
            if "stats" in self._cache:
                return self._cache["stats"]
            folder = self.scan_dir or self.default_scan_dir()
            scanning = self._job is not None and self._job.is_alive()  # summary.json is written last
            if (folder / "summary.json").is_file() and not scanning:
                self._cache["stats"] = ScanStats.open(folder)
                return self._cache["stats"]
            if self.scan_dir is not None:
                raise ValueError(f"--scan {self.scan_dir}: no summary.json (run `engram scan` to the end first)")
            if start and self._job is None:
                self.progress = {"state": "starting"}
                self._job = threading.Thread(target=self._scan_sample, args=(folder,), daemon=True)
                self._job.start()
            return None

    def _scan_sample(self, folder: Path) -> None:
        from engram_inspect.corpus.scan import scan

        def tick(p: dict) -> None:
            self.progress = {
                "state": "scanning",
                "done": p["shards"],
                "total": p["total_shards"],
                "tokens": p["tokens"],
            }

        try:
            self.progress = {"state": "building the layout"}
            scan(self.layout(), sample_paths(), folder, progress=tick)
            self.progress = {"state": "done"}
        except Exception as e:  # shown in the app; the next request may retry
            self.progress = {"state": f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}
            with self._lock:
                self._job = None

    def shipped(self, session):
        """The shipped checkpoint's layout (read from its folder: config and tokenizer)."""
        from engram_core.layout import from_checkpoint_folder

        with self._lock:
            if "shipped" not in self._cache:
                self._cache["shipped"] = from_checkpoint_folder(session.path)
            return self._cache["shipped"]

    def tables(self) -> dict:
        """Layer -> memory-mapped table (empty without --tables)."""
        from engram_core.tables import open_tables

        if self.tables_dir is None:
            return {}
        with self._lock:
            if "tables" not in self._cache:
                self._cache["tables"] = open_tables(self.tables_dir, self.layout())
            return self._cache["tables"]


def address_json(layouts: Layouts, session, text: object, model: object) -> dict:
    """/address: the JSON form of `engram address` for a text under the picked model."""
    from engram_core.addressing import address_text

    from .session import clean_input

    model = check_model(model)
    text = clean_input(text)
    layout = layouts.layout() if model == V41 else layouts.shipped(session)
    # the model as picked, never the layout's name: a checkpoint's layout is named by its folder's
    # path, which is the server's and no business of the caller's
    return {**address_text(layout, text).to_dict(), "model": model}
