"""Dependencies point one way: engram_core <- engram_inspect <- app.

Each check imports a package and every one of its submodules in a fresh
interpreter and lists the forbidden modules that ended up in `sys.modules`. The
heavy packages are shadowed by empty stand-ins, so a stray import shows up even
where the real package is not installed; the planted-import tests show that the
checker does flag one.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("gradio", "umap", "faiss", "plotly")

PROBE = """
import importlib, pkgutil, sys
for top in {packages!r}:
    pkg = importlib.import_module(top)
    for info in pkgutil.walk_packages(getattr(pkg, "__path__", []), top + "."):
        if not info.name.endswith("__main__"):  # running it would start a program
            importlib.import_module(info.name)
print(",".join(sorted(m for m in {forbidden!r} if m in sys.modules)))
"""


def loaded(
    packages: list[str], forbidden: tuple[str, ...], tmp_path: Path, stand_ins: tuple[str, ...] = ()
) -> list[str]:
    """The modules of `forbidden` that importing `packages` (and all their submodules) loads."""
    for name in stand_ins:
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    code = PROBE.format(packages=packages, forbidden=forbidden)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return [m for m in r.stdout.strip().split(",") if m]


def test_core_imports_no_layer_above_and_no_ui_stack(tmp_path):
    assert loaded(["engram_core"], ("engram_inspect", "app", *HEAVY), tmp_path, stand_ins=HEAVY) == []


def test_inspect_imports_neither_gradio_nor_plotly(tmp_path):
    # faiss and umap are engram_inspect's own dependencies: only the UI stack is shadowed
    assert loaded(["engram_inspect"], ("app", "gradio", "plotly"), tmp_path, stand_ins=("gradio", "plotly")) == []


def test_checker_flags_a_planted_import(tmp_path):
    """A module that imports a forbidden one, two levels down, is caught; the stand-ins are importable."""
    pkg = tmp_path / "planted"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("import plotly\nimport engram_inspect\n")
    got = loaded(["planted"], ("engram_inspect", "app", *HEAVY), tmp_path, stand_ins=HEAVY)
    assert got == ["engram_inspect", "plotly"]


def test_checker_flags_a_lazy_import_run_at_import_time(tmp_path):
    pkg = tmp_path / "planted_lazy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def f():\n    import gradio\n\nf()\n")
    assert loaded(["planted_lazy"], HEAVY, tmp_path, stand_ins=HEAVY) == ["gradio"]


# -- the rooms inside engram_inspect ---------------------------------------------------------------

# what each room may import (engram_inspect/__init__.py says why); a room never imports one not listed
ROOMS = {
    "base": set(),
    "memory": {"base"},
    "text": {"base", "memory"},
    "corpus": {"base"},
    "serving": {"base", "corpus"},
    "commands": {"base", "memory", "text", "corpus", "serving"},
}


def room_imports(package: Path, top: str) -> list[tuple[str, str, int, str]]:
    """(module, room it imports, line, how it was written) for every import of another room that
    the room's rule forbids, lazy imports inside functions included: read from the source, so an
    import that runs only when a command runs is caught too."""
    import ast

    bad = []
    rooms = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if len(rel.parts) < 2:
            continue  # the package's own __init__
        room = rel.parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom | ast.Import):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                    target = [*base, *name.split(".")] if name else base
                    if not name and node.level == 2:  # `from .. import x`
                        target = [a.name for a in node.names][:1]
                elif name.startswith(top + "."):
                    target = name.split(".")[1:]
                else:
                    continue
                other = target[0] if target else ""
                if other in rooms and other != room and other not in ROOMS.get(room, set()):
                    bad.append((str(rel), other, node.lineno, ast.unparse(node)))
    return bad


def test_every_room_imports_only_the_rooms_below_it():
    assert room_imports(ROOT / "engram_inspect", "engram_inspect") == []


def test_the_rooms_are_the_folders():
    found = {p.name for p in (ROOT / "engram_inspect").iterdir() if (p / "__init__.py").is_file()}
    assert found == set(ROOMS)
    assert [p.name for p in (ROOT / "engram_inspect").glob("*.py")] == ["__init__.py"]  # nothing left flat


def test_no_room_loads_a_room_it_may_not_import(tmp_path):
    """In fresh interpreters: importing every module of a room loads no forbidden room."""
    for room, allowed in ROOMS.items():
        forbidden = tuple(f"engram_inspect.{r}" for r in ROOMS if r != room and r not in allowed)
        assert loaded([f"engram_inspect.{room}"], forbidden, tmp_path) == [], room


def test_room_checker_flags_a_planted_lazy_import(tmp_path):
    pkg = tmp_path / "planted_rooms"
    for room in ("base", "memory", "text"):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "memory" / "ok.py").write_text("from ..base import lazy\n")
    (pkg / "base" / "lazy.py").write_text("def f():\n    from ..memory.ok import g\n")  # base imports nothing
    (pkg / "text" / "absolute.py").write_text("import planted_rooms.memory.ok\n")  # allowed
    (pkg / "memory" / "up.py").write_text("def f():\n    from planted_rooms.text import absolute\n")
    got = room_imports(pkg, "planted_rooms")
    assert [(m, r) for m, r, _, _ in got] == [("base/lazy.py", "memory"), ("memory/up.py", "text")]
    # and in a fresh interpreter, an import that runs at import time
    (pkg / "base" / "eager.py").write_text("from ..memory import ok\n")
    assert loaded(["planted_rooms.base"], ("planted_rooms.memory",), tmp_path) == ["planted_rooms.memory"]
