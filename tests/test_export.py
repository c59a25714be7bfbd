"""Trace exports: every format reads back to an equal Trace, bit for bit, and refuses other schemas."""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engram_core import Checkpoint, KnockOut
from engram_inspect.text.capture import SCHEMA, Trace, capture
from engram_inspect.text.export import (
    ARRAY_FIELDS,
    FORMATS,
    META_FIELDS,
    TEXT_FIELDS,
    SchemaError,
    dims,
    from_json,
    read,
    sidecar_path,
    to_json,
    write,
)
from tests.conftest import TINY_TEXT, make_tiny_model

SUFFIX = {"json": ".json", "csv": ".csv", "parquet": ".parquet", "npz": ".npz"}
ODD = 'To be, "or" not,\r\n🙂 东京 שלום \u202e \x00 \ufffd \u2400 \x07 tab\tend \ud800 #'
TEXTS = {
    "odd": (ODD, None),
    "one-token": ("a", None),
    "masked": (TINY_TEXT[:120], KnockOut(layers={0}, rows={(1, 2, 0, 5)})),
}
# strings a CSV, a JSON or a numpy unicode array could each get wrong
ODD_STRINGS = ["", ",", '"', "\r", "\n", "\r\n", "\x00", "a\x00", "\x00a", "🙂", "东京", "שלום", "\u202e", "\ufffd",
               "\u2400", " ", "  x ", '["x", "y"]', "# engram-trace/1", "\\", "\t", "nan", "-inf", "1 2"]  # fmt: skip


@pytest.fixture(scope="module")
def ck(tiny_parts):
    # the conftest's tiny model, built once for this module so the captures can be shared
    return Checkpoint(model=make_tiny_model(tiny_parts), tokenizer=tiny_parts[0], meta={})


@pytest.fixture(scope="module")
def traces(ck):
    out = {name: capture(ck, text, mask) for name, (text, mask) in TEXTS.items()}
    assert out["one-token"].n_tokens == 1
    assert any("\x00" in t for t in out["odd"].tokens) and any("\r" in t for t in out["odd"].tokens)
    return out


def random_trace(rng, T=200, L=2, orders=(2, 3, 4), hpn=2, M=3, K=4, Y=3) -> Trace:
    """A shape-valid trace of arbitrary float32 bit patterns and odd strings, no model needed."""
    n_ord, H, N = len(orders), len(orders) * hpn, max(orders)
    floats = lambda *shape: rng.integers(0, 2**32, size=shape, dtype=np.uint64).astype(np.uint32).view(np.float32)
    ints = lambda *shape: rng.integers(-(2**62), 2**62, size=shape)
    words = lambda *shape: np.array(ODD_STRINGS, dtype=object)[rng.integers(0, len(ODD_STRINGS), shape)].tolist()
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -1e-45, 3.4028235e38, 1.1754944e-38], np.float32)
    gate = floats(L, T, M)
    gate.flat[: special.size] = special
    return Trace(
        text="".join(ODD_STRINGS) + "\ud800",
        checkpoint="0123456789abcdef",
        tokens=words(T),
        token_ids=ints(T),
        offsets=ints(T, 2),
        compressed_ids=ints(T),
        layers=(1, 3)[:L],
        orders=orders,
        heads_per_ngram=hpn,
        ngram_ids=ints(n_ord, T, N),
        ngram_text=words(n_ord, T),
        hash_rows=ints(L, T, H),
        gate_score=floats(L, T, M),
        gate=gate,
        out_norm=floats(L, T),
        mask=KnockOut(heads={(1, 2, 0)}, branches={1}),
        logprob_next=floats(T),
        topk_ids=ints(T, K),
        topk_logprob=floats(T, K),
        masked_logprob_next=floats(T),
        masked_topk_ids=ints(T, K),
        masked_topk_logprob=floats(T, K),
        kl=floats(T),
        lens_kl_on=floats(Y, T),
        lens_kl_off=floats(Y, T),
        topk_text=words(T, K),
        masked_topk_text=words(T, K),
    )


def assert_bit_equal(a: Trace, b: Trace) -> None:
    """Stronger than ==: every float has the same bits (so -0.0 stays -0.0), NaNs where NaNs were."""
    assert a == b
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind == "f":
            nan = np.isnan(x)
            np.testing.assert_array_equal(nan, np.isnan(y), err_msg=name)
            np.testing.assert_array_equal(x.view(np.uint32)[~nan], y.view(np.uint32)[~nan], err_msg=name)


def test_every_trace_field_has_a_place_in_the_schema():
    groups = META_FIELDS + TEXT_FIELDS + ARRAY_FIELDS + ("schema",)
    assert sorted(groups) == sorted(f.name for f in dataclasses.fields(Trace))
    assert len(set(groups)) == len(groups)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(TEXTS))
def test_capture_round_trip(traces, tmp_path, fmt, name):
    tr = traces[name]
    path = write(tr, tmp_path / f"trace{SUFFIX[fmt]}")
    back = read(path)
    assert_bit_equal(back, tr)
    assert back.logprob_next.dtype == np.float32 and back.token_ids.dtype == np.int64
    assert np.isnan(back.logprob_next[-1])
    assert back.text == TEXTS[name][0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_bits_and_odd_strings_round_trip(tmp_path, rng, fmt):
    tr = random_trace(rng)
    assert_bit_equal(read(write(tr, tmp_path / f"t{SUFFIX[fmt]}")), tr)
    # the format is named explicitly when the suffix says nothing
    assert_bit_equal(read(write(tr, tmp_path / "t.trace", fmt), fmt), tr)


def test_json_string_round_trip_and_document(traces):
    tr = traces["odd"]
    s = to_json(tr)
    assert s.isascii() and "NaN" not in s
    doc = json.loads(s)
    assert doc["schema"] == SCHEMA and doc["meta"]["layers"] == list(tr.layers) and doc["tokens"] == tr.tokens
    gate = doc["arrays"]["gate"]
    assert gate["dtype"] == "float32" and gate["shape"] == list(tr.gate.shape)
    assert doc["arrays"]["logprob_next"]["data"][-1] is None  # NaN is null
    assert from_json(s) == tr


def test_float32_survives_python_float_repr(rng):
    # the formats write a float32 as repr() of the float64 equal to it: exact by construction, checked here
    bits = rng.integers(0, 2**32, size=100_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    back = np.array([float(repr(v)) for v in x.tolist()], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(back.view(np.uint32), x.view(np.uint32))


def test_mutated_copies_are_not_equal(traces, tmp_path):
    tr = traces["masked"]
    assert tr == dataclasses.replace(tr)
    gate = tr.gate.copy()
    gate[1, 2, 0] = np.nextafter(gate[1, 2, 0], np.float32(np.inf))  # one ulp
    lp = tr.logprob_next.copy()
    lp[-1] = 0.0  # the NaN at the end is part of the value
    mutants = {
        "gate": gate,
        "logprob_next": lp,
        "kl": tr.kl.astype(np.float64),  # same values, other dtype
        "tokens": tr.tokens[:-1] + [tr.tokens[-1] + "x"],
        "mask": KnockOut(layers={1}),
        "layers": tuple(reversed(tr.layers)),
    }
    for field, value in mutants.items():
        other = dataclasses.replace(tr, **{field: value})
        assert other != tr, field
    written = dataclasses.replace(tr, gate=gate)
    assert read(write(written, tmp_path / "m.npz")) != tr


def test_csv_is_one_row_per_token_layer_head(traces, tmp_path):
    tr = traces["masked"]
    path = write(tr, tmp_path / "t.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    side = json.loads(sidecar_path(path).read_text())
    assert side["schema"] == SCHEMA and side["header"]["meta"]["text"] == tr.text
    T, L, H = tr.n_tokens, len(tr.layers), len(tr.orders) * tr.heads_per_ngram
    assert len(rows) == T * L * H
    row = next(r for r in rows if (r["position"], r["layer"], r["order"], r["head"]) == ("2", "1", "3", "1"))
    li, hi = tr.layers.index(1), tr.head_index(3, 1)
    assert int(row["row"]) == tr.hash_rows[li, 2, hi]
    assert np.float32(float(row["gate_b1"])) == tr.gate[li, 2, 1]
    assert np.float32(float(row["gate_mean"])) == tr.gate[li, 2].mean()
    assert row["token"] == tr.tokens[2] and row["ngram_text"] == tr.ngram_text[1][2]
    assert [int(x) for x in row["ngram_ids"].split()] == tr.ngram_ids[1, 2].tolist()
    assert json.loads(row["topk_text"]) == tr.topk_text[2]
    assert rows[-1]["logprob_next"] == "nan"
    assert pq.read_table(write(tr, tmp_path / "t.parquet")).column_names == list(rows[0])


def test_csv_rows_in_any_order_and_missing_rows(traces, tmp_path, rng):
    tr = traces["masked"]
    path = write(tr, tmp_path / "t.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    body = rows[1:]
    shuffled = [body[i] for i in rng.permutation(len(body))]
    for name, table in {"shuffled": shuffled, "short": body[:-1], "repeated": body[:-1] + body[:1]}.items():
        out = tmp_path / f"{name}.csv"
        with open(out, "w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([rows[0]] + table)
        sidecar_path(out).write_bytes(sidecar_path(path).read_bytes())
        if name == "shuffled":
            assert read(out) == tr
        else:
            with pytest.raises(ValueError, match="exactly one row per"):
                read(out)


def test_pandas_reads_the_csv_with_its_columns(traces, tmp_path):
    """Bug 11: the CSV's first line is its header, so pandas and spreadsheets see the real columns."""
    import pandas as pd

    tr = traces["masked"]
    path = write(tr, tmp_path / "t.csv")
    df = pd.read_csv(path, keep_default_na=False)
    assert list(df.columns) == pq.read_table(write(tr, tmp_path / "t.parquet")).column_names
    T, L, H = tr.n_tokens, len(tr.layers), len(tr.orders) * tr.heads_per_ngram
    assert len(df) == T * L * H
    assert df["position"].tolist() == np.repeat(np.arange(T), L * H).tolist()
    first = df.iloc[0]
    assert first["token"] == tr.tokens[0] and int(first["row"]) == tr.hash_rows[0, 0, 0]
    assert np.float32(first["gate_b0"]) == tr.gate[0, 0, 0]
    # the sidecar holds what is not a column, and the two read back to the same trace
    assert json.loads(sidecar_path(path).read_text())["header"]["meta"]["mask"] == tr.mask.to_dict()
    assert read(path) == tr


def test_csv_without_its_sidecar_is_a_clear_error(traces, tmp_path):
    path = write(traces["masked"], tmp_path / "t.csv")
    sidecar_path(path).unlink()
    with pytest.raises(SchemaError, match="no metadata file t.csv.json"):
        read(path)


def test_csv_of_the_first_layout_still_reads(traces, tmp_path):
    """A CSV written before the sidecar, with `# engram-trace/1 {header}` on line 1, reads back equal."""
    tr = traces["masked"]
    path = write(tr, tmp_path / "t.csv")
    side = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).unlink()
    old = tmp_path / "old.csv"
    line = f"# {side['schema']} {json.dumps(side['header'], ensure_ascii=True)}\r\n"
    old.write_bytes(line.encode() + path.read_bytes())
    assert read(old) == tr


def forge_schema(path, fmt: str, schema: str) -> None:
    """Rewrite the schema string of a written file, leaving everything else as it was."""
    if fmt == "json":
        doc = json.loads(path.read_text())
        path.write_text(json.dumps({**doc, "schema": schema}))
    elif fmt == "csv":
        side = sidecar_path(path)
        side.write_text(json.dumps({**json.loads(side.read_text()), "schema": schema}))
    elif fmt == "parquet":
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"engram_trace.schema": schema}), path)
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"][()])), "schema": schema}))
        with open(path, "wb") as f:
            np.savez(f, **arrays)


@pytest.mark.parametrize("fmt", FORMATS)
def test_other_schema_versions(traces, tmp_path, fmt):
    tr = traces["one-token"]
    path = write(tr, tmp_path / f"t{SUFFIX[fmt]}")
    forge_schema(path, fmt, "engram-trace/1.7")  # a later minor version only adds: still readable
    assert read(path) == dataclasses.replace(tr, schema="engram-trace/1.7")
    forge_schema(path, fmt, "engram-trace/2")
    with pytest.raises(SchemaError, match=r"this file is engram-trace/2; this version reads engram-trace/1"):
        read(path)
    forge_schema(path, fmt, "pile-of-floats/1")
    with pytest.raises(SchemaError, match="not an engram trace"):
        read(path)


def test_unknown_formats_and_foreign_files(traces, tmp_path):
    tr = traces["one-token"]
    with pytest.raises(ValueError, match="unknown trace format 'xml'"):
        write(tr, tmp_path / "t.json", "xml")
    with pytest.raises(ValueError, match="from its suffix"):
        write(tr, tmp_path / "t.txt")
    with pytest.raises(ValueError, match="unknown trace format"):
        read(tmp_path / "t.json", fmt="hdf5")
    with pytest.raises(SchemaError, match="this trace is engram-trace/2"):
        write(dataclasses.replace(tr, schema="engram-trace/2"), tmp_path / "t.json")
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    (tmp_path / "plain.json").write_text('{"a": 1}')
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    for fmt in FORMATS:
        with pytest.raises(SchemaError, match="not an engram trace"):
            read(tmp_path / f"plain{SUFFIX[fmt]}")


def test_shapes_are_checked_before_writing(traces, tmp_path):
    tr = traces["odd"]
    assert dims(tr)["tokens"] == tr.n_tokens and dims(tr)["heads"] == 4
    bad = dataclasses.replace(tr, hash_rows=tr.hash_rows[:, :-1])
    with pytest.raises(ValueError, match="hash_rows has shape"):
        write(bad, tmp_path / "t.json")
    with pytest.raises(ValueError, match="topk_text is not"):
        write(dataclasses.replace(tr, topk_text=[]), tmp_path / "t.csv")


def test_write_table_csv_and_parquet(tmp_path):
    import csv as _csv

    import pyarrow.parquet as pq

    from engram_inspect.text.export import write_table

    rows = [{"layer": 1, "order": 2, "usage": 0.5, "name": 'a,"b"'}, {"layer": 2, "order": 3, "usage": 1.0, "name": ""}]
    write_table(rows, tmp_path / "t.csv")
    back = list(_csv.DictReader(open(tmp_path / "t.csv", newline="")))
    assert [r["name"] for r in back] == ['a,"b"', ""] and float(back[0]["usage"]) == 0.5
    write_table(rows, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").to_pylist() == rows
    with pytest.raises(ValueError, match="csv or parquet"):
        write_table(rows, tmp_path / "t.xlsx")
    with pytest.raises(ValueError, match="no rows"):
        write_table([], tmp_path / "e.csv")


def test_export_modules_import_one_way():
    """trace_schema <- long_table <- export: neither lower module imports a higher one, and each stays small."""
    import ast

    pkg = Path(__file__).resolve().parent.parent / "engram_inspect" / "text"
    order = ["trace_schema", "long_table", "export"]

    def local_imports(name: str) -> set[str]:
        tree = ast.parse((pkg / f"{name}.py").read_text())
        found = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1 and n.module}
        found |= {
            n.module.removeprefix("engram_inspect.text.")
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("engram_inspect.text.")
        }
        return found

    for i, name in enumerate(order):
        assert not local_imports(name) & set(order[i:]), f"{name} imports a module above it"
        assert len((pkg / f"{name}.py").read_text().splitlines()) <= 500, f"{name}.py is over 500 lines"
    assert {"trace_schema", "long_table"} <= local_imports("export")
