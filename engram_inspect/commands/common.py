"""What every subcommand of this package shares: the checkpoint, the text, the knock-out's
mode flags, a progress bar, reading files; one copy of each, every error a `UserError`
(one line, exit status 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engram_core.cli import UserError


def checkpoint(args: argparse.Namespace):
    from engram_core import load_checkpoint

    return load_checkpoint(args.checkpoint)


def read_text(args: argparse.Namespace) -> str:
    if args.file is not None:
        try:
            return Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from e
    if args.text is None:
        raise UserError("give a TEXT or --file F")
    return args.text


def read_text_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from e


def with_ablation(spec: str, args: argparse.Namespace):
    """The mask `spec` with --ablation/--samples/--seed joined to its items (a flag and an item that
    disagree are refused: ValueError)."""
    from engram_core.knockout import parse_knockout

    return parse_knockout(spec, mode=args.ablation, samples=args.samples, seed=args.seed)


def add_ablation_flags(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--ablation",
        choices=["zero", "mean", "resample"],
        help="what replaces removed rows: zeros (default), the head's mean row, another corpus N-gram's row",
    )
    s.add_argument("--samples", type=int, help="resample: runs averaged (default 1)")
    s.add_argument("--seed", type=int, help="resample: seed of the first run (default 0)")


def progress_bar(desc: str):
    """A progress(done, total, message) callback drawing a tqdm bar on stderr, from its first call."""
    from tqdm import tqdm

    bars: list = []

    def update(done: int, total: int, message: str) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, total=max(total, 1), leave=False, dynamic_ncols=True))
        bar = bars[0]
        bar.total = max(total, 1)
        bar.n = done
        bar.set_postfix_str(message[:60])
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def fmt(x: float) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def model_help() -> str:
    """What --model takes: every preset by name, or a folder."""
    from engram_core.families import PRESETS
    from engram_core.layout import V41_NAME

    return f"a preset ({', '.join([V41_NAME, *PRESETS])}), a checkpoint folder or a released model's folder"
