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
