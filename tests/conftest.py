"""Shared fixtures. Build expensive things once per session and share them read-only.

- `tiny_tokenizer`, `tiny_parts` (tokenizer, compression, pad id): session-scoped.
- `tiny_model`: a fresh tiny EngramLM per test (tests may modify it); `make_tiny_model(parts)` builds one.
- `tiny_ckdir`: a saved tiny checkpoint folder, built once per session: do not write into it
  (copy it with `shutil.copytree` first if a test must).
- `tiny_session`: an `app.session.Session` on `tiny_ckdir` (imports gradio only when used).
- `served_app`: the app on the shipped default model, launched once per session on a free
  loopback port: `(session, demo, url)`. Use it for HTTP and browser tests; never close it.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# one intra-op thread: the suite's models are tiny (or one text at a time), and the app server's
# request threads and the subprocess tests share the same 2 cores; two spinning OpenMP threads per
# process oversubscribe them (a tiny training test ran 9x slower on a busy 2-core machine).
# Set before torch is imported, so subprocesses inherit it; export OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # numba (UMAP) shares torch's OpenMP runtime

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from engram_core import BackboneConfig, EngramLM, MemoryConfig, ModelConfig, build_compression  # noqa: E402
from engram_core.tokenizer import EOS, train_bpe  # noqa: E402

TINY_TEXT = (
    "To be, or not to be, that is the question. Apple apple APPLE. "
    "def __init__(self, value):\n    self.value = value\n    return isinstance(value, int)\n"
    "I pray you, my lord, let me know not. "
) * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_bpe([TINY_TEXT], vocab_size=300)


def tiny_config(vocab_size: int, comp_size: int, pad: int, **mem) -> ModelConfig:
    backbone = BackboneConfig(vocab_size=vocab_size, n_layer=3, d_model=32, n_head=2, block_size=64, n_branches=2)
    memory = MemoryConfig(
        layer_ids=(0, 1),
        heads_per_ngram=2,
        d_head=8,
        table_sizes=(31, 37),
        vocab_size=comp_size,
        pad_id=pad,
        **mem,
    )
    return ModelConfig(backbone=backbone, memory=memory)


@pytest.fixture(scope="session")
def tiny_parts(tiny_tokenizer):
    comp = build_compression(tiny_tokenizer)
    pad = int(comp.table[tiny_tokenizer.token_to_id(EOS)])
    return tiny_tokenizer, comp, pad


def make_tiny_model(parts) -> EngramLM:
    tok, comp, pad = parts
    torch.manual_seed(0)
    model = EngramLM(tiny_config(tok.get_vocab_size(), comp.size, pad), comp.table)
    # give the zero-initialised conv and the tables some signal, as training would
    with torch.no_grad():
        for block in model.blocks:
            if block.engram is not None:
                block.engram.readout.conv.normal_(0, 0.3)
                block.engram.table.weight.normal_(0, 1.0)
    return model.eval()


@pytest.fixture()
def tiny_model(tiny_parts):
    return make_tiny_model(tiny_parts)


@pytest.fixture()
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_ckdir(tmp_path_factory, tiny_parts):
    from engram_core import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("tiny-ck"), make_tiny_model(tiny_parts), tiny_parts[0])


@pytest.fixture(scope="session")
def tiny_session(tiny_ckdir):
    from app.session import Session

    return Session.load(tiny_ckdir)


@pytest.fixture(scope="session")
def served_app():
    from app.main import CLICK_JS
    from tests.serving import serve

    session, demo, url = serve(js=CLICK_JS)
    yield session, demo, url
    demo.close()


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture()
def engram_cli(capsys):
    """Run `engram ARGS...` in this process (exit status, stdout, stderr): for the bad-input tests,
    which end before any model loads; a subprocess would spend ~1.5 s importing for each."""
    from engram_inspect.commands import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own errors
            code = e.code
        out = capsys.readouterr()
        return CliResult(int(code or 0), out.out, out.err)

    return run


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session (the scan and cache-sim executors find it initialised)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
