"""Paper checks for what the memory holds: knock-out modes, and memorisation controls.

    python -m studies.controls [--windows 32] [--samples 2]

1. Loss increase when all memory, one layer or one order is removed, under each
   knock-out mode (zero, mean, resample), on held-out plays, held-out code and prose
   outside the corpus.
2. Controls on the same texts: the shipped model; its rows shuffled within each head
   at inference; all memory mean-ablated; all memory zeroed; and, where their
   checkpoints exist (`python -m studies.sweep capacity`), models trained with one
   recipe and token budget: the shipped layout, the smallest tables, no memory.

Prose outside the corpus: Genesis 1:1-10 (King James Version, public domain), in
studies/data/. Writes docs/paper-checks/controls.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from engram_core import KnockOut, load_checkpoint
from engram_core.checkpoint import DEFAULT_CHECKPOINT
from engram_core.knockout import NO_KNOCKOUT
from engram_core.pipeline import heldout_streams
from engram_core.tokenizer import encode
from engram_core.train import eval_windows
from engram_inspect.memory.ablation import install

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "paper-checks"
PROSE = Path(__file__).resolve().parent / "data" / "genesis-1-1-10-kjv.txt"
CAPACITY_RUNS = ROOT / "runs" / "sweep" / "capacity"
# trained with the shipped model's recipe and tokens (README: how to train them)
SHIPPED_BUDGET = {
    "smallest tables (capacity one)": ROOT / "runs" / "capacity1",
    "memory-free twin": ROOT / "runs" / "baseline",
}
MODES = ("zero", "mean", "resample")


def loss(model, windows: list[torch.Tensor], ko: KnockOut = NO_KNOCKOUT) -> float:
    """Mean next-token loss (nats/token), fp32; each window is a (1, T) or (B, T) id tensor."""
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model.forward_long(w[:, :-1], knockout=ko) if w.shape[1] > 257 else model(w[:, :-1], ko)
            total += F.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten(), reduction="sum").item()
            count += w[:, 1:].numel()
    return total / count


def domains(ck, n_windows: int) -> dict[str, list[torch.Tensor]]:
    streams = heldout_streams(ck, log=lambda *_: None)
    out = {}
    for d in ("plays", "code"):
        w = eval_windows(streams[f"val/{d}"], 256, n_windows)
        out[d] = list(w.split(16))
    out["prose"] = [torch.tensor([encode(ck.tokenizer, PROSE.read_text().strip())[0]])]
    return out


def shuffled_within_heads(model, seed: int = 0):
    """A copy whose table rows are permuted within each head: same rows, wrong N-grams."""
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for L in twin.engram_layers:
            e = twin.blocks[L].engram
            for start, size in zip(e.offsets.tolist(), e.primes.tolist(), strict=True):
                perm = torch.randperm(size, generator=g) + start
                e.table.weight[start : start + size] = e.table.weight[perm].clone()
    return twin


def knockouts(model) -> dict[str, dict]:
    spec = model.cfg.memory.hash_spec
    kos = {"all": {"all": True}}
    kos |= {f"layer {L}": {"layers": {L}} for L in spec.layer_ids}
    kos |= {f"order {n}": {"orders": {n}} for n in spec.orders}
    return kos


def mode_table(ck, data, samples: int) -> dict:
    """Loss increase of every knock-out under every mode, per domain."""
    on = {d: loss(ck.model, w) for d, w in data.items()}
    rows = {}
    for name, fields in knockouts(ck.model).items():
        for mode in MODES:
            ko = KnockOut(**fields, mode=mode, samples=samples if mode == "resample" else 1)
            rows[f"{name} / {mode}"] = {d: loss(ck.model, w, ko) - on[d] for d, w in data.items()}
            print(name, mode, rows[f"{name} / {mode}"], flush=True)
    return {"memory_on": on, "increase": rows, "resample_samples": samples}


def trained_record(folder: Path, data) -> dict | None:
    """Loss of the checkpoint in `folder` on the control texts, with its tokens and table sizes."""
    try:
        other = load_checkpoint(folder)
    except (ValueError, OSError) as e:
        print(f"skipped {folder}: {e}")
        return None
    mem = other.model.cfg.memory
    return {
        "tokens": other.meta.get("train_tokens"),
        "table_rows_per_head": sorted({p for ps in mem.hash_spec.primes.values() for p in ps}) if mem else [],
        **{d: loss(other.model, w) for d, w in data.items()},
    }


def control_table(ck, data, old: dict | None = None, recorded_500k: dict | None = None) -> dict:
    """Inference-time controls of the shipped model (reused from `old` when given) and trained controls:
    at 500k tokens (`studies.sweep capacity`; recorded results kept when the checkpoints are gone)
    and at the shipped model's own recipe and tokens (runs/capacity1, runs/baseline)."""
    m = ck.model
    rows = old or {
        "shipped model": {d: loss(m, w) for d, w in data.items()},
        "rows shuffled within each head": {d: loss(shuffled_within_heads(m), w) for d, w in data.items()},
        "all memory mean-ablated": {d: loss(m, w, KnockOut(all=True, mode="mean")) for d, w in data.items()},
        "all memory zeroed": {d: loss(m, w, KnockOut(all=True)) for d, w in data.items()},
    }
    for name, v in rows.items():
        print(name, v, flush=True)
    trained = {}
    for folder in sorted(CAPACITY_RUNS.glob("rows*-s*")):
        record = trained_record(folder, data)
        if record is not None:
            trained[folder.name] = record
            print(folder.name, record, flush=True)
    shipped_budget = {}
    for label, folder in SHIPPED_BUDGET.items():
        record = trained_record(folder, data) if folder.is_dir() else None
        if record is not None:
            shipped_budget[label] = record
            print(label, record, flush=True)
    return {
        "inference": rows,
        "trained_500k": trained or (recorded_500k or {}),
        "trained_shipped_budget": shipped_budget,
        "shipped_tokens": ck.meta.get("train_tokens"),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--windows", type=int, default=32, help="held-out windows of 256 tokens per domain")
    p.add_argument("--samples", type=int, default=2, help="resampled runs averaged per resample knock-out")
    p.add_argument("--skip-modes", action="store_true", help="only the controls table")
    p.add_argument("--trained-only", action="store_true", help="keep the recorded inference controls too")
    a = p.parse_args()
    torch.manual_seed(0)
    ck = install(load_checkpoint(a.checkpoint))
    data = domains(ck, a.windows)
    result = {
        "command": "python -m studies.controls",
        "windows_per_domain": a.windows,
        "tokens": {d: sum(w[:, 1:].numel() for w in ws) for d, ws in data.items()},
        "prose_source": "Genesis 1:1-10, King James Version (public domain), studies/data/genesis-1-1-10-kjv.txt",
    }
    path = OUT / "controls.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    result["modes"] = old.get("modes") if a.skip_modes or a.trained_only else mode_table(ck, data, a.samples)
    kept = (old.get("controls") or {}).get("inference") if a.trained_only else None
    result["controls"] = control_table(ck, data, kept, (old.get("controls") or {}).get("trained_500k"))
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
