"""The app through its HTTP API: /trace latency at 256 and 1,024 tokens, and cold start.

    python -m bench.bench_app

Cold start: from launching `python -m app` in a fresh process to the first /trace
answer. Latency: 30 calls per size through gradio_client, after 3 warm-up calls.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time

from tokenizers import Tokenizer

from bench.common import machine
from engram_core.cli import DEFAULT_CHECKPOINT
from engram_core.data import HELD_OUT_PLAYS, plays_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def text_of(tokens: int) -> str:
    from engram_core.tokenizer import encode

    tok = Tokenizer.from_file(str(DEFAULT_CHECKPOINT / "tokenizer.json"))
    play = next(plays_dir().rglob(f"{HELD_OUT_PLAYS[0]}.md")).read_text()[5000:40000]
    _, offsets = encode(tok, play)
    return play[: offsets[tokens - 1][1]]


def main() -> None:
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = None
        while client is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:
                if proc.poll() is not None:
                    raise RuntimeError("the app exited") from None
                time.sleep(0.2)
        client.predict("Cold start.", "all", api_name="/trace")
        cold = time.perf_counter() - t0
        print(f"machine: {machine()}")
        print(f"cold start to first /trace answer: {cold:.1f} s (target < 10 s)")
        for n in (256, 1024):
            text = text_of(n)
            for _ in range(3):
                client.predict(text, "all", api_name="/trace")
            times = []
            for _ in range(30):
                t = time.perf_counter()
                client.predict(text, "all", api_name="/trace")
                times.append(time.perf_counter() - t)
            times.sort()
            p50, p95 = statistics.median(times), times[int(0.95 * len(times)) - 1]
            target = " (target p50 < 300 ms)" if n == 256 else ""
            print(f"/trace {n:>5} tokens: p50 {p50 * 1e3:6.0f} ms, p95 {p95 * 1e3:6.0f} ms{target}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
