"""FP8 Engram tables: the held-out loss change of quantising a model's tables, the collisions
before and after doubling the rows, and the weights size of a doubled-rows FP8 model.

    python bench/bench_fp8.py [--checkpoint DIR] [--loss-only]

`--loss-only` re-measures just the quantisation loss change (e.g. after a retrain).
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.common import machine
from engram_core import load_checkpoint
from engram_core.checkpoint import Checkpoint, fp8_tables, save_checkpoint
from engram_core.knockout import KnockOut
from engram_core.model import EngramLM
from engram_core.pipeline import card_losses, heldout_streams
from engram_core.tables import dequantize_fp8
from engram_inspect.memory.collisions import build_index, training_streams

BUDGET = 40e6  # bytes: the weights budget of the shipped model (issue 12)
MAX_CHANGE = 0.01  # nats/token allowed for the quantisation


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "?")


def quantise_tables_(model: EngramLM) -> None:
    """Replace every Engram table by its FP8 quantise-dequantise, as an FP8 checkpoint would load."""
    state = model.state_dict()
    with torch.no_grad():
        for name, (q, s) in fp8_tables(model).items():
            state[name].copy_(torch.from_numpy(dequantize_fp8(q, s)))


def quantisation_loss_change(folder: str | Path) -> dict[str, dict[str, float]]:
    """Held-out loss (the model card's windows) as saved and with FP8 tables: domain -> numbers."""
    ck = load_checkpoint(folder)
    streams = heldout_streams(ck, log=lambda *_: None)
    on = {"memory_on": KnockOut()}
    before = card_losses(ck, streams, on)
    quantise_tables_(ck.model)
    after = card_losses(ck, streams, on)
    return {
        d: {"as_saved": before[d]["memory_on"], "fp8": after[d]["memory_on"]}
        | {"change": after[d]["memory_on"] - before[d]["memory_on"]}
        for d in before
    }


def collision_stats(ck: Checkpoint, streams: list[np.ndarray], table_sizes: tuple[int, ...]) -> dict:
    """N-grams per row hit (per layer and order, mean over heads) and collision rate per head."""
    spec = dataclasses.replace(ck.model.cfg.memory, table_sizes=table_sizes).hash_spec
    index = build_index(spec, ck.model.compression.cpu().numpy(), streams)
    per_row, rates = {}, {}
    for layer in spec.layer_ids:
        for order in spec.orders:
            heads = range(spec.heads_per_ngram)
            occ = [index.occupancy(layer, order, h) for h in heads]
            per_row[(layer, order)] = float(np.mean([len(index.keys[order]) / (o > 0).sum() for o in occ]))
            rates[(layer, order)] = [index.collision_rate(layer, order, h) for h in heads]
    return {"per_row": per_row, "rates": rates, "distinct": {o: len(index.keys[o]) for o in spec.orders}}


def doubled_fp8_size(ck: Checkpoint, table_sizes: tuple[int, ...]) -> tuple[int, int, int]:
    """Bytes of a saved doubled-rows model (tables FP8 + scales, the rest bf16): file, tables, scales."""
    cfg = dataclasses.replace(ck.model.cfg, memory=dataclasses.replace(ck.model.cfg.memory, table_sizes=table_sizes))
    model = EngramLM(cfg, ck.model.compression.cpu().numpy())
    q = fp8_tables(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(tmp, model, ck.tokenizer, dtype=torch.bfloat16, table_format="fp8")
        size = (path / "model.safetensors").stat().st_size
    return size, sum(v.nbytes for v, _ in q.values()), sum(s.nbytes for _, s in q.values())


def print_losses(losses: dict) -> None:
    for d, v in losses.items():
        ok = "ok" if abs(v["change"]) <= MAX_CHANGE else "OVER"
        print(
            f"  {d:6s} as saved {v['as_saved']:.4f}, FP8 tables {v['fp8']:.4f}, "
            f"change {v['change']:+.4f} nats/token ({ok}, limit {MAX_CHANGE})"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="assets/default-model")
    p.add_argument("--loss-only", action="store_true", help="only the quantisation loss change")
    args = p.parse_args()
    print(f"machine: {cpu_name()}; {machine()}")
    print(f"held-out loss, model card windows, memory on ({args.checkpoint}):")
    print_losses(quantisation_loss_change(args.checkpoint))
    if args.loss_only:
        return
    ck = load_checkpoint(args.checkpoint)
    sizes = tuple(ck.model.cfg.memory.table_sizes)
    doubled = tuple(2 * s for s in sizes)
    streams = training_streams(ck)
    print(f"collisions over the training corpus ({sum(len(s) for s in streams):,} tokens):")
    for ts in (sizes, doubled):
        st = collision_stats(ck, streams, ts)
        print(f"  table_sizes {ts}: distinct " + ", ".join(f"{n:,} {o}-grams" for o, n in st["distinct"].items()))
        for (layer, order), n in st["per_row"].items():
            r = st["rates"][(layer, order)]
            print(
                f"    layer {layer} order {order}: {n:6.1f} N-grams per row hit; collision rate per head "
                + " ".join(f"{x:.3f}" for x in r)
            )
    size, tables, scales = doubled_fp8_size(ck, doubled)
    print(
        f"doubled-rows FP8 model {doubled}: weights file {size / 1e6:.2f} MB ({size / 2**20:.2f} MiB): "
        f"tables {tables / 1e6:.2f} MB + scales {scales / 1e6:.2f} MB + the rest bf16 "
        f"{(size - tables - scales) / 1e6:.2f} MB; budget {BUDGET / 1e6:.0f} MB: "
        + ("within" if size <= BUDGET else "OVER")
    )
    shipped = (Path(args.checkpoint) / "model.safetensors").stat().st_size
    print(f"as shipped ({sizes}, tables {ck_table_format(args.checkpoint)}): {shipped / 1e6:.2f} MB")


def ck_table_format(folder: str) -> str:
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    return config.get("table_format", config.get("weights_dtype", "?"))


if __name__ == "__main__":
    main()
