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
        EntryPoint(name="inspect", value="engram_inspect.commands:add_commands", group=cli.COMMAND_GROUP),
        EntryPoint(name="app", value="app.cli:add_commands", group=cli.COMMAND_GROUP),
    ]
    parser = cli.build_parser(*cli.command_adders(eps))
    from app.cli import cmd_app
    from engram_inspect.commands.text import cmd_trace

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


def _as_run_with_m(add, monkeypatch, spec_name):
    """`add` as `python -m` defines it: a second function object in `__main__`, whose spec is `spec_name`."""
    import importlib.util
    import types

    again = types.FunctionType(add.__code__, add.__globals__, add.__name__, add.__defaults__, add.__closure__)
    again.__module__, again.__qualname__ = "__main__", add.__qualname__
    main_module = types.ModuleType("__main__")
    main_module.__spec__ = importlib.util.find_spec(spec_name) if spec_name else None
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    return again


def _subcommands(parser) -> list[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return [a.dest for a in sub._choices_actions]


def test_adder_reached_by_python_m_and_by_entry_point_adds_once(monkeypatch):
    """`python -m engram_inspect.commands` passes its adder from `__main__`; the entry point loads it by name."""
    from importlib.metadata import EntryPoint

    import engram_core.cli as cli
    import engram_inspect.commands as inspect_cli

    ep = EntryPoint(name="inspect", value="engram_inspect.commands:add_commands", group=cli.COMMAND_GROUP)
    again = _as_run_with_m(inspect_cli.add_commands, monkeypatch, "engram_inspect.commands")
    assert again is not inspect_cli.add_commands
    assert cli._adder_key(again) == cli._adder_key(inspect_cli.add_commands) == "engram_inspect.commands.add_commands"
    names = _subcommands(cli.build_parser(again, *cli.command_adders([ep])))
    assert names.count("trace") == 1 and len(names) == len(set(names))
    assert {"trace", "stats", "neighbours", "project", "demo"} <= set(names)


def test_adder_key_without_a_main_spec_differs(monkeypatch):
    """The key reads `__main__.__spec__`: without one (`python file.py`) the two adders count as two."""
    import engram_core.cli as cli
    import engram_inspect.commands as inspect_cli

    again = _as_run_with_m(inspect_cli.add_commands, monkeypatch, None)
    assert cli._adder_key(again) == "__main__.add_commands" != cli._adder_key(inspect_cli.add_commands)


def test_python_m_core_cli_reports_user_errors_in_one_line():
    # run as __main__, the module must still catch the UserError that other modules raise
    r = subprocess.run(
        [sys.executable, "-m", "engram_core.cli", "row", "9:9:9:9"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "layer 9" in r.stderr
