"""The model picker: DeepSeek-V4.1-Flash addressed through the app, checked against engram_core.

Through gradio_client against the one app server of the test session (conftest.served_app).
"""

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from app.layouts import MODELS, SHIPPED, V41, unavailable  # noqa: E402
from engram_core.addressing import address_text  # noqa: E402
from engram_core.layout import load_layout  # noqa: E402

TEXT = "I pray you, my lord, let me know your pleasure."


@pytest.fixture(scope="module")
def client(served_app):
    return Client(served_app[2], verbose=False)


@pytest.fixture(scope="module")
def v41():
    return load_layout(V41)


def test_v41_rows_match_engram_core(client, v41):
    got = client.predict(TEXT, V41, api_name="/address")
    want = address_text(v41, TEXT)
    assert got["model"] == V41 and got["layers"] == [1, 14]
    assert [t["id"] for t in got["tokens"]] == want.ids.tolist()
    for i, layer in enumerate(v41.layers):
        rows = np.array([t["rows"][str(layer)] for t in got["tokens"]])
        assert rows.shape == (len(want.ids), 24)
        np.testing.assert_array_equal(rows, want.rows[i])
        # global = head offset (sum of the primes before it) + head-local row
        local = np.array([t["local_rows"][str(layer)] for t in got["tokens"]])
        np.testing.assert_array_equal(rows - local, np.broadcast_to(v41.offsets[layer], rows.shape))


def test_shipped_model_rows_match_its_trace(client, served_app):
    session = served_app[0]
    got = client.predict(TEXT, SHIPPED, api_name="/address")
    trace = client.predict(TEXT, "all", api_name="/trace")
    assert [t["id"] for t in got["tokens"]] == session.ck.tokenizer.encode(TEXT, add_special_tokens=False).ids
    for i, layer in enumerate(trace["layers"]):
        local = [t["local_rows"][str(layer)] for t in got["tokens"]]
        assert local == trace["hash_rows"][i]


def test_reason_line():
    line = unavailable(V41, "the gates")
    assert line == f"Not for {V41}: the gates need the backbone, and the app reads only this model's memory addressing."


def test_bad_model_one_line_and_server_keeps_serving(client):
    with pytest.raises(Exception) as err:
        client.predict(TEXT, "gpt-2", api_name="/address")
    assert "unknown model 'gpt-2'" in str(err.value)
    with pytest.raises(Exception) as err:
        client.predict("   ", V41, api_name="/address")
    assert "empty" in str(err.value)
    assert client.predict("O, I am fortune's fool!", V41, api_name="/address")["tokens"]


def test_link_round_trips_the_model(served_app):
    """The Run event writes the model into the link; opening the link picks it again."""
    from app.main import _from_url

    demo = served_app[1]
    run = next(fn for fn in demo.fns.values() if fn.name == "run")
    *_, trace, addresses, status, link, _number = run.fn(None, "O, I am fortune's fool!", V41, "all")
    assert trace is None and V41 in status and "model=deepseek-v4.1-flash" in link
    assert len(addresses.ids) == len(addresses.rows[0])

    class Req:
        query_params = dict(p.split("=", 1) for p in link.split("?", 1)[1].split("&"))

    import urllib.parse

    Req.query_params = {k: urllib.parse.unquote_plus(v) for k, v in Req.query_params.items()}
    assert _from_url(Req(), MODELS) == ("O, I am fortune's fool!", "all", V41)
    Req.query_params = {"text": "x", "model": "gpt-2"}
    assert _from_url(Req(), MODELS)[2] == SHIPPED  # a bad model in a link falls back to the shipped one


def _sparse_v41_shard(path, v41, rows: np.ndarray, scales: np.ndarray):
    """A full-size layer-1 FP8 table as a sparse file: only `rows` hold data (all 1.0, scale 2^scales)."""
    import json
    import struct

    n, d = v41.num_embeddings(1), v41.d_head
    header = {
        "layers.1.engram.embed.weight": {"dtype": "F8_E4M3", "shape": [n, d], "data_offsets": [0, n * d]},
        "layers.1.engram.embed.scale": {
            "dtype": "F8_E8M0",
            "shape": [n, d // 32],
            "data_offsets": [n * d, n * d + n * d // 32],
        },
    }
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    start = 8 + len(head)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for r, s in zip(rows.tolist(), scales.tolist(), strict=True):
            f.seek(start + r * d)
            f.write(b"\x38" * d)  # E4M3 0x38 = 1.0
            f.seek(start + n * d + r * (d // 32))
            f.write(bytes([127 + s]) * (d // 32))  # E8M0: 2^(byte - 127)
        f.truncate(start + n * d + n * d // 32)
    return path


def test_v41_panels_read_the_scan_and_tables(tiny_session, v41, tmp_path):
    """The Lookups panel with --scan and --tables: rows, scan counts, and row norms read from disk."""
    import json

    from app.layouts import Layouts
    from app.main import build_app
    from engram_inspect.corpus.scan import scan

    # three documents in one shard (one cache replay), so every row this text reads is read three times
    (tmp_path / "c.jsonl").write_text(f'{{"text": {json.dumps(TEXT)}}}\n' * 3)
    scan(v41, [str(tmp_path / "c.jsonl")], tmp_path / "out", rate=1.0)
    want = address_text(v41, TEXT)
    scales = np.arange(24) % 3
    _sparse_v41_shard(tmp_path / "t.safetensors", v41, want.rows[0, 2], scales)
    demo = build_app(tiny_session, Layouts(scan_dir=tmp_path / "out", tables_dir=tmp_path / "t.safetensors"))
    lookup = next(
        f
        for f in demo.fns.values()
        if f.name == "lookup" and "v41-lookups" in [getattr(b, "elem_id", None) for b in f.outputs]
    )
    note, table, rows = lookup.fn(V41, want, 2)
    assert f"{3 * len(want.ids):,} tokens, 3 documents" in note
    assert [r[4] for r in table] == want.rows[:, 2].reshape(-1).tolist()
    assert all(r[8] == 3 and r[7] == 1 for r in table)  # read once per document, by this N-gram alone
    assert all(r[6] == 3 for r in table)  # each N-gram occurs once per document
    np.testing.assert_allclose([r[4] for r in rows], 16.0 * 2.0**scales)  # sqrt(256) x the block scale
    assert [r[3] for r in rows] == want.rows[0, 2].tolist()
    health = next(f for f in demo.fns.values() if f.name == "tables" and len(f.inputs) == 1)
    _, layers, sizes, _, _ = health.fn(V41)
    assert [r[2] for r in layers] == [24 * 3 * len(want.ids)] * 2
    # 264 bytes a row: 1 MiB holds 3,971 rows, so the table's 1 MiB line is the curve's 2,896 rows
    one = [r for r in sizes if r[0] == 1][0]
    assert one[1] == 2896 and one[2] == round(2896 * 264 / 2**20, 3)
    # every row is read once per document: a static cache holding all rows hit serves every read, and
    # an LRU cache that large, filled from cold, misses only each row's first read (2 of 3 hit)
    assert len(set(want.rows[0].reshape(-1).tolist())) <= 2896
    assert one[4] == 1.0 and one[3] == round(2 / 3, 4)


def test_backbone_tabs_show_their_one_line_reason(served_app):
    """Showing a tab with V4.1 picked: every tab but the card says in one line why its plots are empty."""
    import gradio as gr

    class Fresh:
        session_hash = "a-browser-that-never-ran"

    for f in served_app[1].fns.values():
        if f.name != "on_select":
            continue
        vals = [
            V41 if getattr(b, "elem_id", None) == "model" else None if isinstance(b, gr.State) else b.value
            for b in f.inputs[1:]  # after the run's number
        ]
        tab, drawn = f.fn.__kwdefaults__["tab_id"], f.fn(Fresh(), None, *vals)  # a browser yet to run
        lines = [d for d in drawn if isinstance(d, str) and d.startswith("Not for ")]
        if tab == "card":
            assert lines == []
            continue
        assert len(lines) == 1 and "\n" not in lines[0] and "need the backbone" in lines[0], tab


def test_app_refuses_a_bad_scan_or_tables_folder(tmp_path):
    import argparse

    from app.cli import cmd_app
    from engram_core.cli import UserError

    args = argparse.Namespace(checkpoint="x", host="127.0.0.1", port=0, scan=str(tmp_path), tables=None)
    with pytest.raises(UserError, match="no summary.json"):
        cmd_app(args)
    args.scan, args.tables = None, str(tmp_path / "nope")
    with pytest.raises(UserError, match="no such file or folder"):
        cmd_app(args)


def test_a_run_overtaken_by_a_newer_one_lands_nothing(served_app, monkeypatch):
    """The opening link's run and the user's own can overlap; under load the older finished last and
    its text replaced the newer one on the page. Now the older result, and its redraw, are dropped."""
    import gradio as gr

    from app import main

    demo = served_app[1]
    run = next(fn for fn in demo.fns.values() if fn.name == "run")
    redraw = next(fn for fn in demo.fns.values() if fn.name == "redraw_shown")
    runs = next(c.cell_contents for c in redraw.fn.__closure__ if isinstance(c.cell_contents, main.Runs))

    class Req:
        session_hash = "one-browser"
        request = None

    real = main.api.user_trace

    def overtaken(*args, **kwargs):
        runs.start(Req())  # the user pressed Enter while this run was computing
        return real(*args, **kwargs)

    monkeypatch.setattr(main.api, "user_trace", overtaken)
    assert all(isinstance(x, type(gr.skip())) for x in run.fn(Req(), "I pray you, my lord", main.SHIPPED, "all"))
    monkeypatch.setattr(main.api, "user_trace", real)
    *_, trace, _, status, _, number = run.fn(Req(), "I pray you, my lord", main.SHIPPED, "all")
    assert trace is not None and "tokens" in status and runs.current(Req(), number)

    class Other:
        session_hash = "another-browser"

    assert not runs.current(Other(), number)  # sessions never see each other's runs


def test_qwen_rows_match_engram_core(client):
    from app.layouts import QWEN

    got = client.predict(TEXT, QWEN, api_name="/address")
    want = address_text(load_layout(QWEN), TEXT)
    assert got["model"] == QWEN and got["layers"] == [1]
    assert [t["id"] for t in got["tokens"]] == want.ids.tolist()
    np.testing.assert_array_equal(np.array([t["rows"]["1"] for t in got["tokens"]]), want.rows[0])


def test_qwen_panels_read_its_own_scan_and_tables(tiny_session, tmp_path):
    """--scan and --tables serve the model they were made for: a Qwen scan and Qwen's 128 row shards
    (a sparse full-size file) fill Qwen's Lookups and Health; with V4.1 picked neither is used."""
    import json

    from app.layouts import QWEN, Layouts
    from app.main import build_app
    from engram_core.tables import write_sparse_shards
    from engram_inspect.corpus.scan import scan

    qwen = load_layout(QWEN)
    (tmp_path / "c.jsonl").write_text(f'{{"text": {json.dumps(TEXT)}}}\n' * 2)
    scan(qwen, [str(tmp_path / "c.jsonl")], tmp_path / "out", rate=1.0)
    want = address_text(qwen, TEXT)
    per = qwen.stored_rows(1) // 128
    names = [f"model.language_model.layers.1.ple.ple_embedding.ngram_embedding.shard_{i}.weight" for i in range(128)]
    rows = {int(r): np.full(160, 0x4000) for r in want.rows[0, 3]}  # bf16 2.0: norm 2 x sqrt(160)
    write_sparse_shards(tmp_path / "t.safetensors", names, (per, 160), "BF16", rows)
    layouts = Layouts(scan_dir=tmp_path / "out", tables_dir=tmp_path / "t.safetensors")
    assert layouts.scan_model() == QWEN and layouts.scan_for(V41) is None
    demo = build_app(tiny_session, layouts)
    lookup = next(
        f
        for f in demo.fns.values()
        if f.name == "lookup" and "v41-lookups" in [getattr(b, "elem_id", None) for b in f.outputs]
    )
    note, table, norms = lookup.fn(QWEN, want, 3)
    assert f"{2 * len(want.ids):,} tokens, 2 documents" in note
    assert [r[4] for r in table] == want.rows[0, 3].tolist() and all(r[8] == 2 for r in table)
    np.testing.assert_allclose([r[4] for r in norms], 2.0 * np.sqrt(160), rtol=1e-6)
    health = next(f for f in demo.fns.values() if f.name == "tables" and len(f.inputs) == 1)
    _, layers, *_ = health.fn(QWEN)
    assert [r[2] for r in layers] == [16 * 2 * len(want.ids)]
    assert layouts.tables(V41) == {} and set(layouts.tables(QWEN)) == {1}


def test_tables_that_fit_no_model_are_one_line(tmp_path):
    from app.layouts import QWEN, Layouts
    from engram_core.tables import write_sparse_shards

    write_sparse_shards(tmp_path / "t.safetensors", ["layers.1.engram.embed.weight"], (1000, 160), "BF16")
    with pytest.raises(ValueError, match="fits no model") as err:
        Layouts(tables_dir=tmp_path / "t.safetensors").tables(QWEN)
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)


def longcat_folder(tmp_path):
    """A released LongCat-Flash-Lite folder: its config.json and a tokenizer.json (the shipped one stands in)."""
    import json
    import shutil
    from pathlib import Path

    from engram_core.families import longcat

    folder = tmp_path / "LongCat-Flash-Lite"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(longcat.CONFIG))
    shutil.copy(Path(__file__).resolve().parent.parent / "assets" / "default-model" / "tokenizer.json", folder)
    return folder


def test_a_released_folder_joins_the_picker(tiny_session, tmp_path):
    """`engram app --layout FOLDER`: LongCat-Flash-Lite (no tokenizer on any registry) is picked by its
    folder's name; a run, its Lookups, its card and /address read its 12 embedders."""
    from app.layouts import Layouts, address_json
    from app.main import build_app

    folder = longcat_folder(tmp_path)
    layouts = Layouts.with_folders([str(folder)])
    assert layouts.models() == (*MODELS, "LongCat-Flash-Lite")
    demo = build_app(tiny_session, layouts)
    picker = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model")
    assert "LongCat-Flash-Lite" in [c[0] if isinstance(c, tuple | list) else c for c in picker.choices]
    run = next(fn for fn in demo.fns.values() if fn.name == "run")
    *_, trace, addresses, status, link, _number = run.fn(None, TEXT, "LongCat-Flash-Lite", "all")
    assert trace is None and "LongCat-Flash-Lite" in status and "model=LongCat-Flash-Lite" in link
    want = address_text(load_layout(folder), TEXT)
    np.testing.assert_array_equal(addresses.rows, want.rows)
    assert addresses.rows.shape[2] == 12
    got = address_json(layouts, tiny_session, TEXT, "LongCat-Flash-Lite")
    assert got["model"] == "LongCat-Flash-Lite" and got["layers"] == [0]
    from app.tabs.card import layout_card

    card = layout_card(layouts.layout("LongCat-Flash-Lite"))
    assert "memory layout" in card and "122,683,536" in card
    assert layouts.default_scan_dir("LongCat-Flash-Lite").parent.name == want.layout.digest


def test_app_refuses_a_bad_layout_folder(tmp_path):
    import argparse
    import json

    from app.cli import cmd_app
    from engram_core.cli import UserError

    args = argparse.Namespace(checkpoint="x", host="127.0.0.1", port=0, scan=None, tables=None)
    folder = longcat_folder(tmp_path)
    (folder / "tokenizer.json").unlink()
    args.layout = [str(folder)]
    with pytest.raises(UserError, match="no tokenizer.json beside its config.json"):
        cmd_app(args)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="not a family this tool addresses"):
        cmd_app(args)
    args.layout = [str(tmp_path / "nope")]
    with pytest.raises(UserError, match="no such folder"):
        cmd_app(args)
    taken = tmp_path / V41
    taken.mkdir()
    args.layout = [str(taken)]
    with pytest.raises(UserError, match="is taken"):
        cmd_app(args)
