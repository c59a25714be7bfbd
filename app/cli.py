"""`engram app` and `python -m app`: start the app on 127.0.0.1 with the shipped model.

`add_commands` reaches the `engram` command (engram_core.cli) through the
`engram.commands` entry point; `main` serves `python -m app`. Heavy imports wait
until a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys


def _passive_omp_env() -> dict[str, str] | None:
    """The environment to restart with, or None when OpenMP already waits passively.

    subtle: OpenMP threads spin after each parallel region by default and starve
    the server's own threads on 2 cores (p50 /trace 329 ms vs 231 ms passive).
    libgomp reads this once at load, so the process restarts before torch runs.
    """
    return None if "OMP_WAIT_POLICY" in os.environ else {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def _check_paths(args: argparse.Namespace) -> None:
    """--scan and --tables are checked before the model loads: one line, exit 2."""
    from pathlib import Path

    from engram_core.cli import UserError

    if args.scan and not (Path(args.scan) / "summary.json").is_file():
        raise UserError(f"--scan {args.scan}: no summary.json (give the OUT_DIR of a finished `engram scan`)")
    if args.tables and not Path(args.tables).exists():
        raise UserError(f"--tables {args.tables}: no such file or folder")
    if getattr(args, "layout", None):
        from engram_core.layout import LayoutError

        from .layouts import Layouts

        try:
            Layouts.with_folders(args.layout)
        except LayoutError as e:
            raise UserError(str(e).splitlines()[0]) from e


def cmd_app(args: argparse.Namespace) -> None:
    _check_paths(args)
    env = _passive_omp_env()
    if env is not None:  # reached through `engram app`: restart as `python -m app` with the same flags
        argv = ["--checkpoint", args.checkpoint, "--host", args.host, "--port", str(args.port)]
        argv += [x for k in ("scan", "tables") if getattr(args, k) for x in (f"--{k}", getattr(args, k))]
        argv += [x for folder in getattr(args, "layout", None) or () for x in ("--layout", folder)]
        os.execve(sys.executable, [sys.executable, "-m", "app", *argv], env)
    from .main import launch

    launch(
        args.checkpoint,
        host=args.host,
        port=args.port,
        scan=args.scan,
        tables=args.tables,
        layouts=getattr(args, "layout", None),
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    from engram_core.checkpoint import DEFAULT_CHECKPOINT

    s = sub.add_parser("app", help="start the Engram Inspector app (127.0.0.1 unless --host says otherwise)")
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the app to the network")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument(
        "--scan",
        metavar="OUT_DIR",
        help="a finished `engram scan` for the Lookups and Health of the picker's model it was made under "
        "(deepseek-v4.1-flash or qwen3.8-flash-next)",
    )
    s.add_argument(
        "--tables",
        metavar="DIR",
        help="safetensors table shards of the picker's model whose layout they fit: row norms, neighbours",
    )
    s.add_argument(
        "--layout",
        metavar="FOLDER",
        action="append",
        help="a released model's folder (config.json and tokenizer.json, e.g. LongCat-Flash-Lite's) added to "
        "the model picker under its folder name; repeatable",
    )
    s.set_defaults(fn=cmd_app)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    env = _passive_omp_env()
    if argv[:1] == ["app"] and env is not None:  # before torch is imported, unlike cmd_app
        os.execve(sys.executable, [sys.executable, "-m", "app", *argv[1:]], env)
    from engram_core.cli import main as core_main
    from engram_inspect.commands import add_commands as inspect_commands

    return core_main(argv, adders=(inspect_commands, add_commands))


if __name__ == "__main__":
    sys.exit(main())
