"""What a checkpoint's memory holds, whatever text is shown: rows and their addresses (`rows`),
which corpus N-grams share a row (`ngram_keys`, `collisions`), what replaces a removed read
(`ablation`), memory health (`health`, `mean_gate`), per-row statistics over a corpus sample and
row pages (`rowstats`, `rowpage`), rows in the model's value space (`valuespace`, `valuemap`),
maps and nearest neighbours of rows (`projection`, `neighbours`).

Imports `engram_core` and `base`; never `text`, `corpus` or `commands`.
"""
