"""The `engram` command: hash-vectors reproduces the fixtures; bad input is one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

from engram_core.cli import main

VECTORS = Path(__file__).parent / "data" / "engram_hash_vectors.json"


def test_hash_vectors_reproduces_fixture(tmp_path, capsys):
    data = json.loads(VECTORS.read_text())
    stripped = {
        **data,
        "cases": [
            {k: v for k, v in c.items() if k not in ("primes", "multipliers", "expected")} for c in data["cases"]
        ],
    }
    # wrong values already in a file are ignored and recomputed
    stripped["cases"][0]["expected"] = {"1": [[[0]]]}
    f = tmp_path / "in.json"
    f.write_text(json.dumps(stripped))
    assert main(["hash-vectors", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    for got, want in zip(out["cases"], data["cases"]):
        for key in ("primes", "multipliers", "expected"):
            assert got[key] == want[key], (got["name"], key)


def test_hash_vectors_bad_inputs(tmp_path, capsys):
    assert main(["hash-vectors", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    assert main(["hash-vectors", str(bad)]) == 2
    assert "not JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"cases": [{"name": "x", "config": {"vocab_size": 5}}]}))
    assert main(["hash-vectors", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "case 0 (x)" in err


def test_console_script_bad_checkpoint(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "engram_core.cli", "demo", "hello", "--checkpoint", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "missing model.safetensors" in r.stderr
