"""The `engram` command. Bad input gets one clear line on stderr and exit status 2.

The core owns the command and its own subcommands (train, card, demo, hash-vectors).
Higher layers add theirs through the `engram.commands` entry-point group: each entry
point names an `add_commands(subparsers)` function. The core never imports them by name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from .checkpoint import DEFAULT_CHECKPOINT  # also read here by the layers above

# The shipped model's recipe: `engram train --out assets/default-model` rebuilds it.
SHIPPED_TOKENS = 8_100_000  # 1977 steps of 16 x 256; 0.73 epochs of the training corpus
SHIPPED_TABLE_SIZES = (54000, 54000)  # in FP8 the same bytes as 27000 rows in bf16

COMMAND_GROUP = "engram.commands"
Adder = Callable[[argparse._SubParsersAction], None]


class UserError(Exception):
    """An error the user can fix; printed as one line, no traceback."""


def cmd_hash_vectors(args: argparse.Namespace) -> None:
    from .hashing import HashSpec, hash_ids

    try:
        data = json.loads(Path(args.file).read_text())
    except OSError as e:
        raise UserError(f"cannot read {args.file}: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise UserError(f"{args.file} is not JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise UserError(f"{args.file} has no list of cases (expected the engram-hash-vectors/1 layout)")
    for i, case in enumerate(data["cases"]):
        try:
            cfg = case["config"]
            spec = HashSpec(**{k: cfg[k] for k in HashSpec.__dataclass_fields__})
            ids = case["input_ids"]
            import numpy as np

            arr = np.asarray(ids, dtype=np.int64).reshape(len(ids), -1)
            case["primes"] = {str(layer): list(spec.primes[layer]) for layer in spec.layer_ids}
            case["multipliers"] = {str(layer): spec.multipliers[layer].tolist() for layer in spec.layer_ids}
            case["expected"] = {str(layer): hash_ids(arr, spec, layer).tolist() for layer in spec.layer_ids}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"case {i} ({case.get('name', '?') if isinstance(case, dict) else '?'}): {e}") from e
    json.dump(data, sys.stdout)
    sys.stdout.write("\n")


def cmd_train(args: argparse.Namespace) -> None:
    import torch

    from .pipeline import train_model
    from .train import TrainConfig

    tcfg = TrainConfig(
        tokens=args.tokens,
        seed=args.seed,
        compile=not args.no_compile,
        batch_size=args.batch_size,
        precision=args.dtype,
        sampler=args.sampler,
        table_lr_mult=args.table_lr_mult,
    )
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.weights_dtype]
    mem_cfg = train_memory_config(args)
    path = train_model(
        args.out,
        tcfg,
        memory=not args.no_memory,
        dtype=dtype,
        table_format=None if args.no_memory else args.table_format,
        mem_cfg=mem_cfg,
        sinkhorn_tol=args.sinkhorn_tol,
    )
    print(f"saved {path}")


def train_memory_config(args: argparse.Namespace):
    """The memory of `engram train --table-sizes ...`; a UserError for bad sizes."""
    from .config import MemoryConfig

    try:
        return MemoryConfig(table_sizes=tuple(args.table_sizes))
    except ValueError as e:
        raise UserError(f"--table-sizes: {e}") from e


def cmd_card(args: argparse.Namespace) -> None:
    from .pipeline import write_card

    card = write_card(args.checkpoint, args.baseline)
    print(json.dumps(card["val_loss"], indent=1))
    if "baseline" in card:
        print(json.dumps(card["baseline"]["val_loss"], indent=1))


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import demo_lines

    for line in demo_lines(args.checkpoint, args.text):
        print(line)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The core's subcommands; higher layers add theirs to the same parser."""
    s = sub.add_parser("hash-vectors", help="recompute primes, multipliers and expected rows of a hash-vector file")
    s.add_argument("file")
    s.set_defaults(fn=cmd_hash_vectors)
    s = sub.add_parser("train", help="train the default model (or its memory-free twin) from the offline corpus")
    s.add_argument("--out", default="runs/engram", help="checkpoint folder to write")
    s.add_argument("--tokens", type=int, default=SHIPPED_TOKENS, help="training tokens (1977 steps of 16 x 256)")
    s.add_argument(
        "--table-sizes",
        type=int,
        nargs="+",
        metavar="ROWS",
        default=list(SHIPPED_TABLE_SIZES),
        help="base rows per hash head, one per N-gram order (default 54000 54000; 1 1: the smallest prime tables)",
    )
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--sampler",
        choices=["epoch", "random"],
        default="epoch",
        help="epoch: every training window once per pass, in shuffled order; random: windows drawn with replacement",
    )
    s.add_argument(
        "--table-lr-mult",
        type=float,
        default=5.0,
        help="the tables' learning rate as a multiple of the backbone's (the paper's 5)",
    )
    s.add_argument("--no-memory", action="store_true", help="the same backbone and recipe without Engram")
    s.add_argument("--no-compile", action="store_true", help="skip torch.compile (slower steps, no compile wait)")
    s.add_argument(
        "--sinkhorn-tol",
        type=float,
        default=1e-3,
        help="H_res row and column sums within this of 1 (0: 20 fixed Sinkhorn steps, the earlier recipe)",
    )
    s.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="training precision: bf16 autocast, fp32, or auto (bf16 only where the CPU has AMX or AVX512-BF16)",
    )
    s.add_argument("--weights-dtype", choices=["bf16", "fp32"], default="bf16", help="dtype of the saved weights")
    s.add_argument(
        "--table-format",
        choices=["fp8", "bf16", "fp32"],
        default="fp8",
        help="Engram tables as saved (fp8, the default: E4M3 with one E8M0 scale per 32 values, as DeepSeek-V4.1)",
    )
    s.set_defaults(fn=cmd_train)
    s = sub.add_parser("card", help="evaluate a checkpoint on held-out text and write its model card")
    s.add_argument("checkpoint")
    s.add_argument("--baseline", help="checkpoint of the memory-free twin trained on the same tokens")
    s.set_defaults(fn=cmd_card)
    s = sub.add_parser("demo", help="print what the memory does for one sentence")
    s.add_argument("text", nargs="?", default="To be, or not to be, that is the question.")
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.set_defaults(fn=cmd_demo)


def build_parser(*adders: Adder) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engram", description="Engram Inspector: a compact Engram LM and its memory.")
    sub = p.add_subparsers(dest="command", required=True)
    seen: set[str] = set()
    for add in (add_commands, *adders):
        key = _adder_key(add)
        if key not in seen:  # the same adder, named explicitly and by an entry point, adds once
            seen.add(key)
            add(sub)
    return p


def _adder_key(add: Adder) -> str:
    """Where an adder is defined, the same whether it was loaded by name or run as `python -m`."""
    module = getattr(add, "__module__", None) or ""
    if module == "__main__":
        # subtle: a module run as `python -m` defines its adder again in __main__; its spec keeps the real name
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else module
    return f"{module}.{getattr(add, '__qualname__', repr(add))}"


def command_adders(eps: Iterable[EntryPoint] | None = None) -> list[Adder]:
    """The subcommand adders of the installed `engram.commands` entry points (or of `eps`).

    One that cannot be loaded (a layer installed without its dependencies) is named
    on stderr in one line and skipped, so the core's own commands still run.
    """
    adders = []
    for ep in entry_points(group=COMMAND_GROUP) if eps is None else eps:
        try:
            adders.append(ep.load())
        except (ImportError, AttributeError) as e:
            print(f"engram: note: subcommands {ep.name!r} ({ep.value}) not loaded: {e}", file=sys.stderr)
    return adders


def main(argv: list[str] | None = None, adders: tuple = ()) -> int:
    from .checkpoint import CheckpointError

    args = build_parser(*adders, *command_adders()).parse_args(argv)
    if args.command == "train":
        try:
            train_memory_config(args)  # bad sizes answered here, before the re-exec below
            if not 0 <= args.sinkhorn_tol < 1:
                raise UserError(f"--sinkhorn-tol must lie in [0, 1), got {args.sinkhorn_tol}")
            if not 0 <= args.table_lr_mult < float("inf"):
                raise UserError(f"--table-lr-mult must be a finite number >= 0, got {args.table_lr_mult}")
        except UserError as e:
            print(f"engram train: error: {e}", file=sys.stderr)
            return 2
    if args.command == "train" and "MALLOC_MMAP_MAX_" not in os.environ:
        # glibc reads these at start-up: they stop page faults on large fresh
        # logits buffers (CALIBRATION.md), so re-run this process with them set
        env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
        # compiled kernels of this process in a cache of its own: a shared cache may hold
        # kernels built by a process that saw no vector ISA, and mixing them crashed
        # (train.vector_isa)
        from .data import cache_dir

        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
        argv = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, "-m", "engram_core.cli", *argv], env)
    if getattr(args, "checkpoint", None) is not None and not Path(args.checkpoint).exists():
        print(f"engram {args.command}: error: checkpoint folder {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    try:
        args.fn(args)
    except (UserError, CheckpointError) as e:
        print(f"engram {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # training diverged: not the user's input, but still one line
        print(f"engram {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"engram {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `engram demo | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail too
        return 0
    return 0


if __name__ == "__main__":
    # subtle: run the importable module's main, so that UserError raised by other
    # modules (which import engram_core.cli) is the class this main catches
    from engram_core.cli import main as _main

    sys.exit(_main())
