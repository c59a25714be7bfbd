"""The `engram` subcommands of the inspection layer, in one place.

One module per room of `engram_inspect` whose functions they run: `text` (trace,
attribute), `memory` (stats, neighbours, project, row), `corpus` (address, traffic,
scan, and `stats OUT_DIR`) and `serving` (cache-sim); what they share (the checkpoint, the text, the knock-out's
mode flags, a progress bar) is in `common`, once. Bad input (missing file, empty text,
unknown format, a checkpoint that does not load) gets one clear line on stderr and
exit status 2, never a traceback.

May import every room of `engram_inspect` and `engram_core`; nothing imports it but the
`engram` command (the `engram.commands` entry point) and `python -m engram_inspect.commands`.
"""

from __future__ import annotations

import argparse

from engram_core.cli import main as core_main


def add_commands(sub: argparse._SubParsersAction) -> None:
    from .corpus import add_address_command, add_audit_command, add_scan_command, add_traffic_command
    from .memory import add_memory_commands
    from .serving import add_cache_sim_command
    from .text import add_text_commands

    add_address_command(sub)
    add_traffic_command(sub)
    add_scan_command(sub)
    add_audit_command(sub)
    add_text_commands(sub)
    add_memory_commands(sub)
    add_cache_sim_command(sub)


def main(argv: list[str] | None = None) -> int:
    return core_main(argv, adders=(add_commands,))
