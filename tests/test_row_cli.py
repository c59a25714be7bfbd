"""`engram row`: one clear line and exit 2 for bad addresses; on the shipped model, the page in text and JSON."""

import json
from pathlib import Path

import pytest

from engram_core import save_checkpoint
from engram_inspect.commands import main

SHIPPED = str(Path(__file__).resolve().parent.parent / "assets" / "default-model")


@pytest.fixture()
def ckdir(tmp_path, tiny_model, tiny_tokenizer):
    return str(save_checkpoint(tmp_path / "ck", tiny_model, tiny_tokenizer))


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("1:2:0", "L:N:K:R"),
        ("a:b:c:d", "must be integers"),
        ("5:2:0:1", "not an Engram layer"),
        ("0:7:0:1", "order 7"),
        ("0:2:5:1", "head 5"),
        ("0:2:0:100000", "row 100000"),
    ],
)
def test_bad_addresses_are_one_line_and_exit_2(ckdir, capsys, address, message):
    assert main(["row", address, "--checkpoint", ckdir]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"), [(["--samples", "0"], "samples must be an integer >= 1"), (["--seed", "-1"], "seed")]
)
def test_bad_resample_flags_are_one_line_and_exit_2(ckdir, capsys, flags, message):
    assert main(["row", "0:2:0:1", "--exact", "--ablation", "resample", *flags, "--checkpoint", ckdir]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_row_page_of_the_shipped_model(capsys):
    from engram_core import load_checkpoint
    from engram_core.addressing import address_text
    from engram_core.layout import load_layout
    from engram_inspect.memory.collisions import load_or_build

    # the row that layer 1, head 0 of the bigrams reads for " my lord", the plays' commonest bigram
    layout = load_layout(SHIPPED)
    lord = address_text(layout, " my lord")
    assert len(lord.ids) == 2
    row = int(lord.local[0, -1, layout.spec.head_index(2, 0)])
    where = f"1:2:0:{row}"
    assert main(["row", where, "--json", "--checkpoint", SHIPPED]) == 0
    page = json.loads(capsys.readouterr().out)
    want = load_or_build(load_checkpoint(SHIPPED)).ngrams_at(1, 2, 0, row)
    assert [(tuple(n["ngram"]), n["count"]) for n in page["ngrams"]] == want
    assert page["ngrams"][0]["text"] == " my lord" and page["reads"] > 0
    assert main(["row", where, "--checkpoint", SHIPPED]) == 0
    text = capsys.readouterr().out
    assert f"row {where}" in text and "' my lord'" in text and "highest alpha" in text


@pytest.mark.slow
def test_row_exact_cost_resampled_on_the_shipped_model(capsys):
    """`--exact --ablation resample --samples 2 --seed 1` gives the in-process page's numbers, and says so."""
    import numpy as np

    from engram_core import load_checkpoint
    from engram_inspect.memory.ablation import install
    from engram_inspect.memory.rowpage import RowPages, row_page
    from engram_inspect.memory.rows import RowAddress

    ck = load_checkpoint(SHIPPED)
    pages = RowPages.load(ck)
    # a row read at 3 sample positions: three removals per run keep the test short
    row = int(np.flatnonzero(np.bincount(pages.rows[1][pages.layout.spec.head_index(3, 0)]) == 3)[0])
    flags = ["--exact", "--ablation", "resample", "--samples", "2", "--seed", "1", "--checkpoint", SHIPPED]
    assert main(["row", f"1:3:0:{row}", "--json", *flags]) == 0
    got = json.loads(capsys.readouterr().out)
    install(ck)
    want = row_page(ck, RowAddress(1, 3, 0, row), pages, exact=True, mode="resample", samples=2, seed=1)
    assert (got["delta_exact_mode"], got["delta_exact_samples"], got["delta_exact_seed"]) == ("resample", 2, 1)
    assert got["delta_exact"] == pytest.approx(want.delta_exact, abs=1e-9) and got["delta_exact_reads"] == 3
    assert main(["row", f"1:3:0:{row}", *flags]) == 0
    assert "each read resampled, mean of 2 runs from seed 1" in capsys.readouterr().out
