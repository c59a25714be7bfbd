"""Cost of a full capture against one plain forward of the same 1,024 tokens (target <= 3x).

python bench/bench_capture.py
"""

from __future__ import annotations

import torch

from bench.common import machine, timeit
from engram_core import load_checkpoint
from engram_core.cli import DEFAULT_CHECKPOINT
from engram_core.data import HELD_OUT_PLAYS, plays_dir
from engram_core.tokenizer import encode
from engram_inspect.text.capture import capture


def main() -> None:
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    play = next(plays_dir().rglob(f"{HELD_OUT_PLAYS[0]}.md")).read_text()
    ids, offsets = encode(ck.tokenizer, play[5000:20000])
    text = play[5000 : 5000 + offsets[1023][1]]  # exactly 1,024 tokens
    n = len(encode(ck.tokenizer, text)[0])
    x = torch.tensor([encode(ck.tokenizer, text)[0]])
    with torch.no_grad():
        plain = timeit(lambda: ck.model.forward_long(x), repeat=5, warmup=1)
    full = timeit(lambda: capture(ck, text), repeat=5, warmup=1)
    print(f"machine: {machine()}")
    print(f"{n} tokens of {HELD_OUT_PLAYS[0]} (held out), fp32, sliding windows of 256")
    print(f"  plain forward: {plain * 1e3:8.1f} ms")
    print(f"  full capture:  {full * 1e3:8.1f} ms  ({full / plain:.2f}x a plain forward; target <= 3x)")


if __name__ == "__main__":
    main()
