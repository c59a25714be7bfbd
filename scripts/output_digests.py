"""SHA-256 of what the inspection layer writes for fixed inputs: to show that a change moved code
and changed no output.

    python scripts/output_digests.py --save before.json     # on the old code
    python scripts/output_digests.py --check before.json    # on the new code: exit 1 on any difference

Outputs: a trace in every format (JSON, CSV and its sidecar, Parquet, NPZ), the knock-out and
trace summaries, exact and approximate attribution, a row page, the health table, the addresses
of a text under the shipped model and DeepSeek-V4.1-Flash, and an in-process scan of a small
corpus (every Parquet file and the summary without its timings). The shipped model, seed 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "I pray you, my lord, let me know your pleasure. def main(argv=None):\n    return 0\n"
VOLATILE = ("seconds", "map_seconds", "tokens_per_s", "peak_rss_mib", "model")  # timings, and the path given


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def js(obj: object) -> str:
    return sha(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())


def digests(tmp: Path) -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    from engram_core import KnockOut, load_checkpoint
    from engram_core.addresses import RowAddress
    from engram_core.addressing import address_text
    from engram_core.layout import load_layout
    from engram_inspect.corpus.scan import scan
    from engram_inspect.memory.collisions import load_or_build
    from engram_inspect.memory.health import health_table
    from engram_inspect.memory.rowpage import RowPages, row_page
    from engram_inspect.text.attribution import attribute
    from engram_inspect.text.capture import capture
    from engram_inspect.text.export import write
    from engram_inspect.text.summary import knockout_summary, trace_summary

    model = ROOT / "assets" / "default-model"
    ck = load_checkpoint(model)
    out: dict[str, str] = {}
    trace = capture(ck, TEXT, mask=KnockOut(layers={2}))
    for fmt in ("json", "csv", "parquet", "npz"):
        path = tmp / f"trace.{fmt}"
        write(trace, path, fmt)
        out[f"trace.{fmt}"] = sha(path.read_bytes())
    out["trace.csv.json"] = sha((tmp / "trace.csv.json").read_bytes())
    out["trace_summary"] = js(trace_summary(trace))
    out["knockout_summary"] = js(knockout_summary(trace))
    out["attribution.exact"] = js(attribute(ck, TEXT, 8, "exact"))
    out["attribution.approx"] = js(attribute(ck, TEXT, 8, "approx"))
    pages = RowPages.load(ck)
    out["row_page"] = js(row_page(ck, RowAddress(1, 2, 0, 44404), pages).to_dict())
    out["health"] = js(health_table(load_or_build(ck)))
    out["address.shipped"] = js(address_text(load_layout(model), TEXT).to_dict())
    out["address.v41"] = js(address_text(load_layout("deepseek-v4.1-flash"), TEXT).to_dict())
    corpus = tmp / "corpus"
    corpus.mkdir()
    for name in ("hashing.py", "knockout.py"):
        (corpus / name).write_text((ROOT / "engram_core" / name).read_text())
    summary = scan(load_layout(model), [str(corpus)], tmp / "scan", shard_bytes=4000)
    out["scan.summary"] = js({k: v for k, v in summary.items() if k not in VOLATILE})
    for f in sorted((tmp / "scan").glob("*.parquet")):
        out[f"scan.{f.name}"] = sha(f.read_bytes())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", help="write the digests to this JSON file")
    g.add_argument("--check", help="compare with the digests in this JSON file")
    a = p.parse_args()
    # one fixed folder: the scan's contexts name their documents by path
    tmp = Path(tempfile.gettempdir()) / "engram-output-digests"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        now = digests(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.save:
        Path(a.save).write_text(json.dumps(now, indent=1) + "\n")
        print(f"{len(now)} outputs, digests written to {a.save}")
        return 0
    before = json.loads(Path(a.check).read_text())
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for k in differ:
        print(f"differs: {k}")
    print(f"{len(now) - len(differ)} of {len(before.keys() | now.keys())} outputs byte-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
