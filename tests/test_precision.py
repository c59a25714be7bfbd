"""Training precision from the CPU's flags: bf16 only where it is native, an override, clear errors."""

import pytest

from engram_core.precision import choose_precision, cpu_class, cpu_flags, describe
from engram_core.train import TrainConfig

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512vl
processor\t: 1
flags\t\t: fpu
"""


def test_flags_of_the_first_cpu():
    assert cpu_flags(CPUINFO) == frozenset({"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "avx512vl"})
    assert cpu_flags("") == frozenset()


@pytest.mark.parametrize(
    "flags, cls, auto",
    [
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "amx", "bf16"),
        ({"avx2", "avx512f", "avx512_bf16"}, "avx512_bf16", "bf16"),
        ({"avx2", "avx512f"}, "avx512", "fp32"),
        ({"avx2", "fma"}, "avx2", "fp32"),
        (set(), "other", "fp32"),
    ],
)
def test_class_and_auto_choice(flags, cls, auto):
    flags = frozenset(flags)
    assert cpu_class(flags) == cls
    assert choose_precision("auto", flags) == auto
    assert choose_precision("fp32", flags) == "fp32" and choose_precision("bf16", flags) == "bf16"
    assert f"({cls}, " in describe(auto, flags)


def test_bad_precision_is_one_clear_error():
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp32"):
        choose_precision("fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="half")
    assert TrainConfig(precision="fp32").bf16 is False and TrainConfig(precision="bf16").bf16 is True
