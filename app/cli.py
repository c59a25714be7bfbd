"""`engram app` and `python -m app`: start the app on 127.0.0.1 with the shipped model."""

from __future__ import annotations

import argparse
import sys

from engram_core.cli import DEFAULT_CHECKPOINT
from engram_core.cli import main as core_main
from engram_inspect.cli import add_commands as inspect_commands


def cmd_app(args: argparse.Namespace) -> None:
    from .main import launch

    launch(args.checkpoint, host=args.host, port=args.port)


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("app", help="start the Engram Inspector app (127.0.0.1 unless --host says otherwise)")
    s.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    s.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the app to the network")
    s.add_argument("--port", type=int, default=7860)
    s.set_defaults(fn=cmd_app)


def main(argv: list[str] | None = None) -> int:
    return core_main(argv, adders=(inspect_commands, add_commands))


if __name__ == "__main__":
    sys.exit(main())
