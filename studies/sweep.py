"""Training sweeps for the paper checks: sparsity allocation, memory size, placement.

    python -m studies.sweep allocation [--tokens 500000] [--seed 0]
    python -m studies.sweep size
    python -m studies.sweep placement
    python -m studies.sweep capacity
    python -m studies.sweep size --average-only   # rewrite the averaged records, train nothing

Each run trains the default recipe on the offline corpus for the same number of
tokens, evaluates held-out plays and modules, and appends one record to
docs/paper-checks/sweep-<study>.json, whose `configs` hold the runs averaged per
configuration over their seeds (what the report and the app's Paper checks tab read).
Checkpoints go to runs/sweep/ (not kept).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from engram_core import KnockOut, load_checkpoint
from engram_core.config import BackboneConfig, MemoryConfig
from engram_core.pipeline import prepare_corpus, train_model
from engram_core.train import TrainConfig, eval_windows, evaluate

from .records import with_configs

OUT = Path(__file__).resolve().parent.parent / "docs" / "paper-checks"
EVAL_WINDOWS = 64  # per domain, 256 tokens each

# one MLP ratio unit = 4 layers x 2 matrices x 256 x 256 parameters; a table row is 32 wide,
# and each run has 2 layers x 2 orders x 4 heads = 16 tables
MLP_UNIT = 4 * 2 * 256 * 256
TABLES = 16


def allocation_runs() -> list[dict]:
    """Fixed budget of 8 MLP units (4.19M parameters) split between MLP and tables."""
    runs = []
    for ratio in (8, 6, 4, 2, 1):
        table_params = (8 - ratio) * MLP_UNIT
        rows = table_params // (TABLES * 32)
        runs.append(
            {"name": f"mlp{ratio}", "mlp_ratio": ratio, "rows": rows, "memory_share": table_params / (8 * MLP_UNIT)}
        )
    return runs


def size_runs() -> list[dict]:
    return [{"name": f"rows{r}", "mlp_ratio": 4, "rows": r} for r in (1700, 6800, 27200)]  # a 16x range


def placement_runs() -> list[dict]:
    return [{"name": f"layer{i}", "mlp_ratio": 4, "rows": 27000, "layers": [i]} for i in range(4)]


def capacity_runs() -> list[dict]:
    """Is the memory memorising? The shipped layout, the smallest tables the prime rule allows
    (table_sizes 1: heads of 2 to 53 rows, every row shared by thousands of N-grams), no memory."""
    return [{"name": f"rows{r}", "mlp_ratio": 4, "rows": r} for r in (1, 0, 27000)]


STUDIES = {"allocation": allocation_runs, "size": size_runs, "placement": placement_runs, "capacity": capacity_runs}


def run_one(study: str, spec: dict, tokens: int, seed: int) -> dict:
    backbone = BackboneConfig(mlp_ratio=spec["mlp_ratio"])
    memory = spec["rows"] > 0
    mem = MemoryConfig(layer_ids=tuple(spec.get("layers", (1, 2))), table_sizes=(spec["rows"], spec["rows"]))
    heads = 2 * 4 * len(mem.layer_ids)
    if memory and len(mem.layer_ids) == 1:  # one layer: same table parameters as two
        mem = replace(mem, table_sizes=(2 * spec["rows"], 2 * spec["rows"]))
    out = Path("runs/sweep") / study / f"{spec['name']}-s{seed}"
    t0 = time.perf_counter()
    # the recipe of the recorded sweeps: windows drawn with replacement, 20 fixed Sinkhorn steps
    tcfg = TrainConfig(tokens=tokens, seed=seed, eval_every=10**9, sampler="random")
    train_model(out, tcfg, memory=memory, backbone=backbone, mem_cfg=mem, log=lambda *_: None, sinkhorn_tol=0.0)
    ck = load_checkpoint(out)
    _, streams, _ = prepare_corpus(log=lambda *_: None, tokenizer=ck.tokenizer)
    record = {**spec, "seed": seed, "tokens": tokens, "train_seconds": round(time.perf_counter() - t0, 1)}
    record["parameters"] = ck.model.param_counts()
    record["table_heads"] = heads if memory else 0
    for domain in ("plays", "code"):
        w = eval_windows(streams[f"val/{domain}"], 256, EVAL_WINDOWS)
        record[f"val_{domain}"] = evaluate(ck.model, w)
        if memory:
            record[f"val_{domain}_memory_off"] = evaluate(ck.model, w, knockout=KnockOut(all=True))
    return record


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--tokens", type=int, default=500_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--average-only", action="store_true", help="recompute the averaged records; train nothing")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    path = OUT / f"sweep-{a.study}.json"
    OUT.mkdir(parents=True, exist_ok=True)
    done = json.loads(path.read_text()) if path.is_file() else {"study": a.study, "runs": []}
    if a.average_only:
        path.write_text(json.dumps(with_configs(done), indent=1))
        return
    for spec in STUDIES[a.study]():
        if any(r["name"] == spec["name"] and r["seed"] == a.seed and r["tokens"] == a.tokens for r in done["runs"]):
            continue
        record = run_one(a.study, spec, a.tokens, a.seed)
        done["runs"].append(record)
        done["command"] = f"python -m studies.sweep {a.study} --tokens {a.tokens} --seed {a.seed}"
        path.write_text(json.dumps(with_configs(done), indent=1))
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
