"""Which precision training runs in, chosen by what the CPU computes natively.

bf16 autocast pays only where the CPU has bf16 arithmetic (AMX tiles, or the
AVX512-BF16 dot products); elsewhere bf16 is emulated and a training step is
about ten times slower than fp32 (CALIBRATION.md). This module reads the CPU's
flags and names a class; it never times anything.
"""

from __future__ import annotations

import platform
from pathlib import Path

PRECISIONS = ("auto", "bf16", "fp32")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_class(flags: frozenset[str] | None = None) -> str:
    """'amx', 'avx512_bf16', 'avx512', 'avx2' or 'other': the best bf16-relevant feature present."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512_bf16"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "other"


def native_bf16(cls: str) -> bool:
    return cls in ("amx", "avx512_bf16")


def choose_precision(requested: str = "auto", flags: frozenset[str] | None = None) -> str:
    """'bf16' or 'fp32': the requested one, or for 'auto' bf16 only where the CPU computes it natively."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(cpu_class(flags)) else "fp32"


def describe(precision: str, flags: frozenset[str] | None = None) -> str:
    """One line for progress bars, model cards and benchmarks: precision, CPU class and model."""
    cls = cpu_class(flags)
    native = "native bf16" if native_bf16(cls) else "no native bf16"
    return f"{precision} on {cpu_model() or platform.machine()} ({cls}, {native})"


def cpu_model() -> str:
    path = Path("/proc/cpuinfo")
    for line in path.read_text().splitlines() if path.is_file() else ():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor()
