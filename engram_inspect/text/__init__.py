"""One text: its capture (`capture`: a `Trace` of every read, gate and prediction, memory on and
under a mask), the trace's schema and files (`trace_schema`, `long_table`, `export`), JSON
summaries for the HTTP API (`summary`), knock-out diffs (`diff`) and the attribution of a
prediction to memory reads (`attribution`).

Imports `engram_core`, `base` and `memory` (a knock-out's replacement rows); never `corpus`
or `commands`.
"""
