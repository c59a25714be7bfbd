"""Paper checks that need no new training: learning curves, knock-out by kind of token,
where the gates fire, and the logit lens (docs/paper-checks.md).

    python -m studies.analysis [--baseline runs/baseline] [--windows 48]

Reads the shipped model and its memory-free twin; writes docs/paper-checks/analysis.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engram_core import KnockOut, load_checkpoint
from engram_core.cli import DEFAULT_CHECKPOINT
from engram_core.pipeline import heldout_streams, prepare_corpus
from engram_core.train import eval_windows
from engram_inspect.base.activations import GATE, activations, lens_kl, memory_names, resid_names
from engram_inspect.memory.collisions import load_or_build, ngram_text
from engram_inspect.memory.ngram_keys import position_keys

OUT = Path(__file__).resolve().parent.parent / "docs" / "paper-checks"
FREQUENT = 200  # a trigram seen this often in training counts as a fixed multi-token pattern


def ngram_counts(index, cids: np.ndarray, order: int, spec) -> np.ndarray:
    """Training count of the suffix N-gram at every position of (B, T) compressed ids."""
    keys = np.stack([position_keys(row, order, spec.vocab_size, spec.pad_id) for row in cids])
    table = index.keys[order]
    at = np.clip(np.searchsorted(table, keys), 0, len(table) - 1)
    counts = np.asarray(index.counts[order])
    return np.where(table[at] == keys, counts[at], 0)


def run_windows(model, windows: torch.Tensor, knockout=None, names=()):
    """Logits and hooked activations of the inputs of windows (W, T+1), 16 windows a pass."""
    return activations(model, windows[:, :-1], names, knockout or KnockOut(), batch=16)


def knockout_by_kind(ck, windows, trigram_counts) -> dict:
    """§6.3: loss increase and top-1 kept, on tokens completing frequent trigrams vs all others."""
    y = windows[:, 1:]
    on, _ = run_windows(ck.model, windows)
    off, _ = run_windows(ck.model, windows, KnockOut(all=True))
    loss_on = F.cross_entropy(on.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    loss_off = F.cross_entropy(off.flatten(0, 1), y.flatten(), reduction="none").view_as(y)
    # the trigram completed by predicting token t+1 is the suffix trigram at t+1
    frequent = torch.as_tensor(trigram_counts[:, 1:] >= FREQUENT)
    out = {}
    for kind, m in (("frequent_ngram_completion", frequent), ("other", ~frequent)):
        acc_on = (on.argmax(-1) == y)[m].float().mean().item()
        acc_off = (off.argmax(-1) == y)[m].float().mean().item()
        out[kind] = {
            "tokens": int(m.sum()),
            "loss_on": loss_on[m].mean().item(),
            "loss_off": loss_off[m].mean().item(),
            "loss_increase": (loss_off - loss_on)[m].mean().item(),
            "top1_on": acc_on,
            "top1_off": acc_off,
            "top1_kept": acc_off / acc_on if acc_on else float("nan"),
        }
    out["ratio_of_loss_increases"] = out["frequent_ngram_completion"]["loss_increase"] / out["other"]["loss_increase"]
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def gate_cache(ck, windows) -> dict:
    """alpha per window, position and branch at every Engram layer: one pass, shared by the gate studies."""
    return run_windows(ck.model, windows, names=memory_names(ck.model.cfg.memory.hash_spec.layer_ids, (GATE,)))[1]


def gates_vs_frequency(ck, index, windows, cids, unigram, cache) -> dict:
    """§6.5: alpha against the bigram's training frequency and PMI, per layer and branch.

    Positions 1..T-1 of each window: alpha at t belongs to the bigram (x_{t-1}, x_t).
    """
    spec = ck.model.cfg.memory.hash_spec
    names = memory_names(spec.layer_ids, (GATE,))
    T = windows.shape[1] - 1
    big = ngram_counts(index, cids, 2, spec)[:, 1:T].ravel()
    prev, cur = cids[:, : T - 1].ravel(), cids[:, 1:T].ravel()
    pmi = np.log((big + 0.5) * unigram.sum() / ((unigram[prev] + 1.0) * (unigram[cur] + 1.0)))
    out: dict = {"per_branch": {}}
    for L, name in zip(spec.layer_ids, names, strict=True):
        g = cache[name].cpu().numpy()[:, 1:T]  # (W, T-1, M)
        for m in range(g.shape[-1]):
            a = g[..., m].ravel()
            out["per_branch"][f"layer{L}_branch{m}"] = {
                "spearman_log_count": spearman(a, np.log1p(big)),
                "spearman_pmi": spearman(a, pmi),
                "mean_alpha": float(a.mean()),
            }
    mean = np.stack([cache[n].cpu().numpy()[:, 1:T].mean(-1) for n in names]).mean(0).ravel()
    out["mean_alpha_unseen_bigram"] = float(mean[big == 0].mean()) if (big == 0).any() else float("nan")
    out["mean_alpha_bigram_seen_1000"] = float(mean[big >= 1000].mean())
    out["spearman_log_count"] = spearman(mean, np.log1p(big))
    out["spearman_pmi"] = spearman(mean, pmi)
    return out


def top_gated(ck, cids, cache, n: int = 30) -> list[dict]:
    """The bigrams of the held-out plays with the highest mean alpha (seen at least 3 times)."""
    spec = ck.model.cfg.memory.hash_spec
    names = memory_names(spec.layer_ids, (GATE,))
    alpha = np.stack([cache[k].cpu().numpy().mean(-1) for k in names]).mean(0)  # (W, T)
    sums: dict[tuple[int, int], list[float]] = {}
    for w in range(len(cids)):
        for t in range(1, cids.shape[1] - 1):
            sums.setdefault((int(cids[w, t - 1]), int(cids[w, t])), []).append(float(alpha[w, t]))
    ranked = sorted(((np.mean(v), k, len(v)) for k, v in sums.items() if len(v) >= 3), reverse=True)[:n]
    return [{"bigram": ngram_text(ck, k), "mean_alpha": round(a, 4), "occurrences": c} for a, k, c in ranked]


def logit_lens(model, windows) -> list[float]:
    """§6.1: mean KL(block's prediction || final) per block."""
    kls = np.zeros(model.cfg.backbone.n_layer)
    for i in range(0, len(windows), 16):
        logits, cache = activations(model, windows[i : i + 16, :-1], resid_names(model))
        per_block = lens_kl(model, cache, F.log_softmax(logits, -1))  # (Y, B, T)
        kls += np.array([kl.mean().item() * len(logits) for kl in per_block])
    return (kls / len(windows)).tolist()


def curves(ck) -> list[dict]:
    return [{k: r[k] for k in ("tokens", "elapsed_s", "val_plays", "val_code")} for r in ck.meta.get("history", [])]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    p.add_argument("--baseline", default="runs/baseline")
    p.add_argument("--windows", type=int, default=48, help="held-out windows of 256 tokens per domain")
    a = p.parse_args()
    torch.manual_seed(0)
    ck, base = load_checkpoint(a.checkpoint), load_checkpoint(a.baseline)
    spec = ck.model.cfg.memory.hash_spec
    index = load_or_build(ck)
    _, streams, _ = prepare_corpus(log=lambda *_: None, tokenizer=ck.tokenizer)
    streams.update(heldout_streams(ck, log=lambda *_: None))  # the held-out text of the card, on any interpreter
    comp = ck.model.compression.cpu().numpy()
    unigram = np.bincount(
        np.concatenate([comp[v.astype(np.int64)] for k, v in streams.items() if k.startswith("train/")]),
        minlength=spec.vocab_size,
    )
    result = {
        "command": "python -m studies.analysis",
        "windows_per_domain": a.windows,
        "frequent_trigram_count": FREQUENT,
    }
    result["curves"] = {"engram": curves(ck), "baseline": curves(base)}
    result["by_domain"] = {}
    for domain in ("plays", "code"):
        w = eval_windows(streams[f"val/{domain}"], 256, a.windows)
        cids = comp[w.numpy()]
        tri = ngram_counts(index, cids, 3, spec)
        result["by_domain"][domain] = {
            "knockout_by_kind": knockout_by_kind(ck, w, tri),
            "gates": gates_vs_frequency(ck, index, w, cids, unigram, gates := gate_cache(ck, w)),
            "logit_lens_engram": logit_lens(ck.model, w),
            "logit_lens_baseline": logit_lens(base.model, w),
        }
        if domain == "plays":
            result["top_gated_bigrams_plays"] = top_gated(ck, cids, gates)
        print(domain, json.dumps(result["by_domain"][domain]["knockout_by_kind"]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "analysis.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT / 'analysis.json'}")


if __name__ == "__main__":
    main()
