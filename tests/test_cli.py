"""The `engram` command: hash-vectors reproduces the fixtures; bad input is one line and exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_entry_points_add_the_layers_subcommands(tmp_path, tiny_model, tiny_tokenizer, monkeypatch, capsys):
    """The core finds `trace` and `app` only through entry points (no reinstall needed: they are built here)."""
    from importlib.metadata import EntryPoint

    import engram_core.cli as cli
    from engram_core import save_checkpoint

    eps = [
        EntryPoint(name="inspect", value="engram_inspect.cli:add_commands", group=cli.COMMAND_GROUP),
        EntryPoint(name="app", value="app.cli:add_commands", group=cli.COMMAND_GROUP),
    ]
    parser = cli.build_parser(*cli.command_adders(eps))
    from app.cli import cmd_app
    from engram_inspect.cli import cmd_trace

    assert parser.parse_args(["trace", "hi"]).fn is cmd_trace
    assert parser.parse_args(["app", "--port", "8080"]).fn is cmd_app
    assert parser.parse_args(["demo"]).fn is cli.cmd_demo
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["trace", "hi"])  # without them the core has no `trace`
    # the same adder named twice (explicitly and by an entry point) adds once
    cli.build_parser(*cli.command_adders(eps), *cli.command_adders(eps))
    # main() reads the installed group: stand ours in for it and run an entry-point command
    monkeypatch.setattr(cli, "entry_points", lambda group: eps if group == cli.COMMAND_GROUP else [])
    ck = save_checkpoint(tmp_path / "ck", tiny_model, tiny_tokenizer)
    assert main(["trace", "", "--checkpoint", str(ck)]) == 2
    assert "empty" in capsys.readouterr().err


def test_broken_entry_point_is_one_line_and_skipped(capsys):
    from importlib.metadata import EntryPoint

    import engram_core.cli as cli

    bad = EntryPoint(name="gone", value="no_such_module_here:add_commands", group=cli.COMMAND_GROUP)
    assert cli.command_adders([bad]) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gone'" in err


def test_pyproject_declares_the_command_and_its_entry_points():
    import tomllib
    from importlib.metadata import EntryPoint

    from engram_core.cli import COMMAND_GROUP

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["engram"] == "engram_core.cli:main"
    declared = project["entry-points"][COMMAND_GROUP]
    assert set(declared) == {"inspect", "app"}
    for name, value in declared.items():
        assert callable(EntryPoint(name=name, value=value, group=COMMAND_GROUP).load())
