"""The models the app can pick besides its own checkpoint: layouts addressed without a backbone.

`Layouts` is shared by all users like `Session`. It holds each released family's layout whose
tokenizer is pinned (DeepSeek-V4.1-Flash, Qwen3.8-Flash-Next; built once each) and each released
model's folder given with `--layout FOLDER` (config.json and tokenizer.json: LongCat-Flash-Lite,
whose tokenizer is on no package registry, is picked this way); the scan its Lookups and Health
read (`--scan OUT_DIR` for the model the scan was made under, or a small default corpus sample
scanned once per model in the background and cached under ENGRAM_CACHE); and its tables when
the app was started with `--tables DIR` (for the model whose layout they fit).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

SHIPPED = "shipped model"
V41 = "deepseek-v4.1-flash"
QWEN = "qwen3.8-flash-next"
ADDRESSING = (V41, QWEN)  # released families whose tokenizer is a pinned package (LongCat's is not)
MODELS = (SHIPPED, *ADDRESSING)
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
    scan_dir: Path | None = None  # a finished `engram scan` OUT_DIR (--scan), for the model it was made under
    tables_dir: Path | None = None  # safetensors table shards (--tables), for the model whose layout they fit
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cache: dict = field(default_factory=dict)
    _jobs: dict = field(default_factory=dict)  # model -> the thread scanning its default sample
    _progress: dict = field(default_factory=dict)  # model -> where its sample scan stands
    folders: dict[str, Path] = field(default_factory=dict)  # picker name -> a released model's folder (--layout)

    @classmethod
    def with_folders(cls, folders, **kw) -> Layouts:
        """Layouts that also offer released models' folders, each named by its folder; every folder is
        read at once, so a bad one stops the app before it serves (one line: LayoutError)."""
        from engram_core.layout import LayoutError, load_layout

        out = cls(**kw)
        for folder in map(Path, folders or ()):
            name = folder.resolve().name
            if name in MODELS or name in out.folders:
                raise LayoutError(f"--layout {folder}: the name {name!r} is taken; rename the folder")
            if not folder.is_dir():
                raise LayoutError(f"--layout {folder}: no such folder")
            try:
                layout = load_layout(folder)
            except LayoutError as e:
                raise LayoutError(f"--layout {folder.name}: {str(e).splitlines()[0]}") from e
            if layout.tokenizer is None:
                raise LayoutError(f"--layout {folder}: no tokenizer.json beside its config.json (the app encodes text)")
            out.folders[name] = folder
            out._cache[("layout", name)] = layout
        return out

    def models(self) -> tuple[str, ...]:
        """What the picker offers: the shipped model, the presets, then the folders given."""
        return (*MODELS, *self.folders)

    def addressing(self) -> tuple[str, ...]:
        return (*ADDRESSING, *self.folders)

    def check(self, model: object) -> str:
        """The picked model, or one line naming the choices."""
        if model not in self.models():
            raise ValueError(f"unknown model {model!r}: choose {', '.join(repr(m) for m in self.models())}")
        return str(model)

    def layout(self, model: str = V41):
        from engram_core.layout import load_layout

        if model not in self.addressing():
            raise ValueError(
                f"not an addressing-only model {model!r}: choose {', '.join(repr(m) for m in self.addressing())}"
            )
        with self._lock:
            if ("layout", model) not in self._cache:
                self._cache[("layout", model)] = load_layout(self.folders.get(model, model))
            return self._cache[("layout", model)]

    def progress(self, model: str = V41) -> dict:
        return self._progress.get(model, {"state": "not started"})

    def scan_model(self) -> str | None:
        """The model `--scan` was made under: the one whose layout digest its summary records."""
        if self.scan_dir is None:
            return None
        with self._lock:
            if "scan-model" not in self._cache:
                meta = json.loads((self.scan_dir / "summary.json").read_text())
                digest, name = meta.get("layout_digest"), meta.get("model")
                found = next(
                    (m for m in self.addressing() if (self.layout(m).digest == digest if digest else m == name)),
                    None,
                )
                self._cache["scan-model"] = found
            return self._cache["scan-model"]

    def scan_for(self, model: str) -> Path | None:
        return self.scan_dir if self.scan_dir is not None and self.scan_model() == model else None

    def default_scan_dir(self, model: str = V41) -> Path:
        """Keyed by the sample's files and sizes, so a changed sample is scanned afresh."""
        import hashlib
        import os

        from engram_core.data import cache_dir

        files = "\n".join(f"{p} {os.path.getsize(p)}" for p in sample_paths())
        key = hashlib.sha256(f"parts keep token streams\n{files}".encode()).hexdigest()[:12]
        if model in self.folders:  # a folder's name says nothing of its layout: key it by the layout too
            return cache_dir() / "layouts" / self.layout(model).digest / f"scan-sample-{key}"
        return cache_dir() / model / f"scan-sample-{key}"

    def stats(self, model: str = V41, start: bool = False):
        """The model's scan statistics, or None while its default sample is being scanned (started if `start`)."""
        from engram_inspect.corpus.layout_summary import ScanStats

        with self._lock:
            if ("stats", model) in self._cache:
                return self._cache[("stats", model)]
            given = self.scan_for(model)
            folder = given or self.default_scan_dir(model)
            job = self._jobs.get(model)
            scanning = job is not None and job.is_alive()  # summary.json is written last
            if (folder / "summary.json").is_file() and not scanning:
                self._cache[("stats", model)] = ScanStats.open(folder)
                return self._cache[("stats", model)]
            if given is not None:
                raise ValueError(f"--scan {given}: no summary.json (run `engram scan` to the end first)")
            if start and job is None:
                self._progress[model] = {"state": "starting"}
                self._jobs[model] = threading.Thread(target=self._scan_sample, args=(model, folder), daemon=True)
                self._jobs[model].start()
            return None

    def _scan_sample(self, model: str, folder: Path) -> None:
        from engram_inspect.corpus.scan import scan

        def tick(p: dict) -> None:
            self._progress[model] = {
                "state": "scanning",
                "done": p["shards"],
                "total": p["total_shards"],
                "tokens": p["tokens"],
            }

        try:
            self._progress[model] = {"state": "building the layout"}
            scan(self.layout(model), sample_paths(), folder, progress=tick)
            self._progress[model] = {"state": "done"}
        except Exception as e:  # shown in the app; the next request may retry
            self._progress[model] = {"state": f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}
            with self._lock:
                self._jobs.pop(model, None)

    def shipped(self, session):
        """The shipped checkpoint's layout (read from its folder: config and tokenizer)."""
        from engram_core.layout import from_checkpoint_folder

        with self._lock:
            if "shipped" not in self._cache:
                self._cache["shipped"] = from_checkpoint_folder(session.path)
            return self._cache["shipped"]

    def of(self, session, model: str):
        """The layout of any pickable model."""
        return self.shipped(session) if self.check(model) == SHIPPED else self.layout(model)

    def tables(self, model: str = V41) -> dict:
        """Layer -> memory-mapped table, for the model whose layout `--tables` fits (empty otherwise)."""
        from engram_core.layout import LayoutError
        from engram_core.tables import open_tables

        if self.tables_dir is None:
            return {}
        with self._lock:
            if "tables" not in self._cache:
                found, why = None, []
                for m in self.addressing():
                    try:
                        found = (m, open_tables(self.tables_dir, self.layout(m)))
                        break
                    except LayoutError as e:
                        why.append(f"{m}: {str(e).splitlines()[0]}")
                if found is None:
                    raise ValueError(f"--tables {self.tables_dir.name} fits no model ({'; '.join(why)})")
                self._cache["tables"] = found
            m, tables = self._cache["tables"]
            return tables if m == model else {}


def address_json(layouts: Layouts, session, text: object, model: object) -> dict:
    """/address: the JSON form of `engram address` for a text under the picked model."""
    from engram_core.addressing import address_text

    from .session import clean_input

    model = layouts.check(model)
    text = clean_input(text)
    layout = layouts.of(session, model)
    # the model as picked, never the layout's name: a checkpoint's layout is named by its folder's
    # path, which is the server's and no business of the caller's
    return {**address_text(layout, text).to_dict(), "model": model}
