"""Addresses of hash heads and memory rows, and knock-outs checked against the model they mask."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from engram_core import KnockOut
from engram_core.addresses import HeadAddress, RowAddress
from engram_core.hashing import HashSpec, head_address
from engram_core.knockout import check_knockout, format_knockout, parse_knockout


def test_head_address_round_trip_and_order():
    a = HeadAddress.parse("1:3:0")
    assert (a.layer, a.order, a.head) == (1, 3, 0)
    assert str(a) == "1:3:0" and HeadAddress.parse(str(a)) == a
    assert sorted([HeadAddress(2, 2, 0), HeadAddress(1, 3, 1), HeadAddress(1, 2, 3)]) == [
        HeadAddress(1, 2, 3),
        HeadAddress(1, 3, 1),
        HeadAddress(2, 2, 0),
    ]
    with pytest.raises(AttributeError):
        a.layer = 2  # frozen


def test_row_address_round_trip_and_head():
    r = RowAddress.parse(" 2:2:1:27010 ")
    assert (r.layer, r.order, r.head, r.row) == (2, 2, 1, 27010)
    assert str(r) == "2:2:1:27010" and RowAddress.parse(str(r)) == r
    assert r.head_address == HeadAddress(2, 2, 1)
    assert RowAddress(1, 2, 0, 5) < RowAddress(1, 2, 0, 6) < RowAddress(1, 2, 1, 0)


@pytest.mark.parametrize(
    "cls,text,match",
    [
        (HeadAddress, "1:2", "L:N:K"),
        (HeadAddress, "1:2:3:4", "L:N:K"),
        (HeadAddress, "1:x:3", "integers"),
        (HeadAddress, "", "L:N:K"),
        (RowAddress, "1:2:3", "L:N:K:R"),
        (RowAddress, "1:2:3:4.5", "integers"),
    ],
)
def test_bad_address_text(cls, text, match):
    with pytest.raises(ValueError, match=match) as e:
        cls.parse(text)
    assert "\n" not in str(e.value)


def test_head_index_is_the_spec_formula(tiny_model):
    """Order-major: (order - 2) * heads_per_ngram + head; the tiny model has 2 heads per order."""
    spec = tiny_model.cfg.memory.hash_spec
    assert [spec.head_index(n, k) for n in (2, 3) for k in (0, 1)] == [0, 1, 2, 3]
    assert HeadAddress(1, 3, 1).index(spec) == 3


# the tiny model: Engram layers 0 and 1, orders 2..3, 2 heads per order, 2 branches
@pytest.mark.parametrize(
    "text,match",
    [
        ("head=1:2:2", "head 2 is outside 0..1"),  # would alias head 1:3:0
        ("head=1:2:-1", "head -1 is outside 0..1"),  # would alias the last head of order 3
        ("layer=99", "layer 99 is not an Engram layer"),
        ("layer=2", "layer 2 is not an Engram layer"),
        ("order=9", "order 9 is outside 2..3"),
        ("order=1", "order 1 is outside 2..3"),
        ("head=1:7:0", "order 7 is outside 2..3"),
        ("head=5:2:0", "layer 5 is not an Engram layer"),
        ("branch=9", "branch 9 is outside 0..1"),
        ("branch=-1", "branch -1 is outside 0..1"),
        ("row=1:2:0:-1", "row -1 is outside 0.."),
        ("row=1:3:7:0", "head 7 is outside 0..1"),
    ],
)
def test_bad_knockouts_refused_in_one_line(tiny_model, text, match):
    ko = parse_knockout(text)
    with pytest.raises(ValueError, match=match) as e:
        ko.validate(tiny_model.cfg)
    assert "\n" not in str(e.value) and text in str(e.value)
    ids = torch.zeros((1, 5), dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        tiny_model(ids, knockout=ko)
    with pytest.raises(ValueError, match=match):
        tiny_model.run_with_cache(ids, knockout=ko)
    with pytest.raises(ValueError, match=match):
        tiny_model.run_with_cache_long(torch.zeros((1, 100), dtype=torch.long), knockout=ko)


def test_row_past_its_heads_prime_is_refused(tiny_model):
    spec = tiny_model.cfg.memory.hash_spec
    p = spec.primes[1][spec.head_index(3, 1)]
    KnockOut(rows={(1, 3, 1, p - 1)}).validate(tiny_model.cfg)  # the last row is fine
    with pytest.raises(ValueError, match=f"row {p} is outside 0..{p - 1}"):
        check_knockout(KnockOut(rows={(1, 3, 1, p)}), tiny_model.cfg)


def test_good_knockouts_pass(tiny_model):
    for text in ("none", "all", "layer=0,layer=1", "order=2,order=3", "head=1:3:1", "branch=0,branch=1", "row=0:2:0:0"):
        parse_knockout(text).validate(tiny_model.cfg)


def test_memory_free_model_takes_no_knockout(tiny_parts):
    import dataclasses

    from engram_core import EngramLM
    from tests.conftest import tiny_config

    tok, comp, pad = tiny_parts
    cfg = dataclasses.replace(tiny_config(tok.get_vocab_size(), comp.size, pad), memory=None)
    model = EngramLM(cfg, comp.table)
    KnockOut().validate(cfg)
    with pytest.raises(ValueError, match="no Engram memory"):
        model(torch.zeros((1, 3), dtype=torch.long), knockout=KnockOut(all=True))


def test_parse_and_format_round_trip():
    text = "all,layer=1,order=3,head=1:2:0,branch=2,row=2:3:1:99"
    ko = parse_knockout(text)
    assert ko.heads == {(1, 2, 0)} and ko.rows == {(2, 3, 1, 99)}
    assert parse_knockout(format_knockout(ko)) == ko
    with pytest.raises(ValueError, match="head=1:2") as e:
        parse_knockout("head=1:2")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("mask", ["head=1:2:2", "head=1:2:-1", "layer=99", "order=9", "branch=9", "row=1:2:0:999999"])
def test_cli_trace_refuses_bad_knockouts(tmp_path, tiny_model, tiny_tokenizer, capsys, mask):
    """`trace` is the one subcommand that takes a mask: exit 2 and one line, no traceback."""
    from engram_core import save_checkpoint
    from engram_inspect.commands import main

    ck = save_checkpoint(tmp_path / "ck", tiny_model, tiny_tokenizer)
    assert main(["trace", "to be or not", "--knockout", mask, "--checkpoint", str(ck)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"knock-out item {mask}" in err


def test_validation_memo_is_per_object(tiny_model):
    """A knock-out is checked once per object, and an invalid one never passes by being equal to a valid one."""
    good = KnockOut(rows={(1, 2, 0, 3)})
    ids = torch.zeros((1, 4), dtype=torch.long)
    tiny_model(ids, knockout=good)
    assert tiny_model._valid_knockout is good
    with pytest.raises(ValueError, match="head 9"):
        tiny_model(ids, knockout=KnockOut(heads={(1, 2, 9)}))
    assert tiny_model._valid_knockout is good  # a refused mask is not remembered


def test_head_address_inverts_head_index():
    """Hand-computed on 3 heads per order: position 5 is order 3's last head, 6 order 4's first."""
    spec = HashSpec(vocab_size=100, table_sizes=(50, 50, 50), max_ngram=4, heads_per_ngram=3, layer_ids=(0,))
    assert spec.head_address(5) == (3, 2) and spec.head_address(6) == (4, 0)
    pairs = [(n, k) for n in spec.orders for k in range(spec.heads_per_ngram)]
    assert [spec.head_address(spec.head_index(n, k)) for n, k in pairs] == pairs
    order, head = head_address(np.arange(spec.heads_per_layer), 3)  # elementwise, as the exporters use it
    assert order.tolist() == [2, 2, 2, 3, 3, 3, 4, 4, 4] and head.tolist() == [0, 1, 2] * 3


# the order-major formula, or its inverse, written out by hand
HAND_FORMULA = re.compile(r"order\s*-\s*2\)\s*\*|(heads_per_ngram|hpn)\s*\+|(//|%)\s*[\w.]*(heads_per_ngram|hpn)\b")


def test_head_index_formula_lives_only_in_the_core():
    """Every package reaches the head axis through `engram_core.hashing` (one copy of the formula)."""
    root = Path(__file__).resolve().parent.parent
    home = root / "engram_core" / "hashing.py"
    found = [
        f"{path.relative_to(root)}:{i}"
        for top in ("engram_core", "engram_inspect", "app", "studies", "bench")
        for path in sorted((root / top).rglob("*.py"))
        if path != home
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_FORMULA.search(line)
    ]
    assert not found, f"head-index formula copied at {found}"
    assert HAND_FORMULA.search(home.read_text())  # the pattern does find the one real copy
