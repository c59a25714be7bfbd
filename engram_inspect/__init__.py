"""engram_inspect: what the Engram memory does, as arrays and dataclasses.

Pure analysis over `engram_core`: no Gradio, no plotly at import, no globals. One
subpackage (room) per concern; dependencies between rooms point one way, and
tests/test_layering.py holds them to it:

- `base`: what every room uses: the one pass that reads a model's activations, and
  where derived data is cached (never beside the weights).
- `memory` (imports base): what a checkpoint's memory holds: row addresses, the
  corpus collision index, replacement rows of knock-outs, memory health, row
  statistics and row pages, value space, maps and neighbours of rows.
- `text` (imports base, memory): one text: its capture (`Trace`), exports, summaries,
  knock-out diffs, attribution of a prediction to memory reads.
- `corpus` (imports base): corpora under any memory layout, released models'
  included: traffic and cache curves, scans (in-process or Ray Data), tables on disk.
- `serving` (imports base, corpus): hot-row caches and prefetch simulated over real
  traffic (`engram cache-sim`), and a checkpoint reading its tables from disk through a cache.
- `commands` (imports every room): the `engram` subcommands of this package.
"""
