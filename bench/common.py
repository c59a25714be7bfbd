"""Shared helpers for the benchmark scripts: timing with warm-up, medians, the machine's facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def timeit(fn: Callable[[], object], repeat: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of fn() over `repeat` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    from engram_core.precision import cpu_class, cpu_model

    cpu = cpu_model() or platform.processor() or platform.machine()
    return (
        f"{cpu} ({cpu_class()}), {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
