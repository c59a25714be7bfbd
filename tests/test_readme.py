"""The README's examples: every Python block runs as written, every `engram` line is a command the
parser takes (its flags and subcommand exist); running those is the CLI tests' job."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def engram_lines() -> list[list[str]]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            words = words[: next((i for i, w in enumerate(words) if w in (">", ">>", "|", "2>")), len(words))]
            if words and words[0].endswith("engram"):
                out.append(words[1:])
    return out


def test_the_readme_has_examples():
    assert len(blocks("python")) >= 3 and len(engram_lines()) >= 15


@pytest.mark.slow
def test_every_python_example_runs(tmp_path, monkeypatch):
    """In order, in one namespace (later blocks use `ck` and `ids` from earlier ones), from a folder
    where `assets/` is the shipped one, so files an example writes land in tmp_path."""
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks("python")):
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block: the traceback alone points into exec
            raise AssertionError(f"README python block {i + 1} fails: {e!r}\n{code}") from e
    assert (tmp_path / "trace.parquet").is_file()


@pytest.mark.parametrize("argv", engram_lines(), ids=lambda a: " ".join(a)[:60])
def test_every_engram_line_parses(argv):
    from engram_core.cli import build_parser, command_adders

    args = build_parser(*command_adders()).parse_args(argv)  # an unknown subcommand or flag exits here
    assert callable(getattr(args, "fn", None)), argv
