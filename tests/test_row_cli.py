"""`engram row`: one clear line and exit 2 for bad addresses; on the shipped model, the page in text and JSON."""

import json
from pathlib import Path

import pytest

from engram_core import save_checkpoint
from engram_inspect.cli import main

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
    from engram_inspect.collisions import load_or_build

    assert main(["row", "1:2:0:8615", "--json", "--checkpoint", SHIPPED]) == 0
    page = json.loads(capsys.readouterr().out)
    want = load_or_build(load_checkpoint(SHIPPED)).ngrams_at(1, 2, 0, 8615)
    assert [(tuple(n["ngram"]), n["count"]) for n in page["ngrams"]] == want
    assert page["ngrams"][0]["text"] == " my lord" and page["reads"] > 0
    assert main(["row", "1:2:0:8615", "--checkpoint", SHIPPED]) == 0
    text = capsys.readouterr().out
    assert "row 1:2:0:8615" in text and "' my lord'" in text and "highest alpha" in text
