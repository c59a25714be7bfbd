"""engram_core is headless: importing it must not pull in the UI or analysis stack."""

import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("gradio", "umap", "faiss", "plotly")


def test_core_import_leaves_ui_stack_unloaded(tmp_path):
    # importable stand-ins, so an `import gradio` slipped into the core would show up
    # here even on a machine where the real package is not installed
    for name in HEAVY:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    code = (
        "import sys, engram_core, engram_core.cli, engram_core.pipeline, engram_core.demo, engram_core.train\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert r.stdout.strip() == ""
    probe = subprocess.run(
        [sys.executable, "-c", "import gradio, sys; print('gradio' in sys.modules)"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert probe.stdout.strip() == "True"  # the stand-ins are importable, so the check above can fail
