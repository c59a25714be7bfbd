"""Sweep records: the runs of a sweep averaged per configuration, as the report and the app read them."""

from __future__ import annotations

import numpy as np

LOSSES = ("val_plays", "val_code", "val_plays_memory_off")


def by_config(runs: list[dict]) -> list[dict]:
    """One record per configuration: losses averaged over its seeds, with their range."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    out = []
    for rs in groups.values():
        rec = {**rs[0], "seeds": sorted(r["seed"] for r in rs)}
        for k in LOSSES:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                rec[k], rec[f"{k}_range"] = float(np.mean(vals)), float(max(vals) - min(vals))
        out.append(rec)
    return out


def with_configs(sweep: dict) -> dict:
    """The sweep document with its `configs` (averaged records) recomputed from its `runs`."""
    return {**sweep, "configs": by_config(sweep["runs"])}
