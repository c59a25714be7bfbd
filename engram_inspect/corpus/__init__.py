"""Corpora under any memory layout (this project's checkpoints, DeepSeek-V4.1-Flash, ...): texts
by domain (`texts`), rows read, collisions and cache curves (`traffic`, on the cache arithmetic
of `reuse`), corpus scans in map and reduce steps (`shards`, `scan`, `scan_ray` on Ray Data,
`scan_sample`, `scan_gates`, `scan_tables`), summaries of a layout's traffic (`layout_summary`),
views of tables read from disk (`table_views`) and audits of released tables (`audit`).

Imports `engram_core` and `base`; never `memory`, `text` or `commands`.
"""
