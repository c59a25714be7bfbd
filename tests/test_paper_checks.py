"""Paper checks: the sweep keeps its budget, the report and the app tab show the recorded numbers."""

import json
from pathlib import Path

import pytest

from studies.sweep import MLP_UNIT, TABLES, allocation_runs, placement_runs, size_runs

DATA = Path(__file__).resolve().parent.parent / "docs" / "paper-checks"


def test_allocation_holds_the_budget():
    runs = allocation_runs()
    assert len(runs) >= 5 and runs[0]["rows"] == 0
    budgets = {r["mlp_ratio"] * MLP_UNIT + r["rows"] * TABLES * 32 for r in runs}
    assert max(budgets) - min(budgets) <= TABLES * 32  # equal up to rounding rows down
    shares = [r["memory_share"] for r in runs]
    assert shares == sorted(shares) and shares[-1] > 0.8


def test_size_and_placement_ranges():
    rows = [r["rows"] for r in size_runs()]
    assert max(rows) / min(rows) >= 16
    assert [r["layers"] for r in placement_runs()] == [[0], [1], [2], [3]]


@pytest.mark.skipif(not (DATA / "analysis.json").is_file(), reason="no recorded analysis")
def test_app_tab_draws_the_recorded_numbers():
    pytest.importorskip("plotly")
    from app.tabs.paper import figures

    a = json.loads((DATA / "analysis.json").read_text())
    figs = figures()
    bars = figs["kinds"].data[0]
    assert list(bars.y) == [
        v["knockout_by_kind"]["frequent_ngram_completion"]["loss_increase"] for v in a["by_domain"].values()
    ]
    assert list(figs["lens"].data[0].y) == a["by_domain"]["plays"]["logit_lens_engram"]
    size = json.loads((DATA / "sweep-size.json").read_text())
    configs = sorted(size["configs"], key=lambda r: r["rows"])
    assert list(figs["size"].data[0].x) == [r["rows"] for r in configs]
    assert list(figs["size"].data[1].y) == [r["val_code"] for r in configs]


def test_recorded_sweeps_carry_their_averages():
    """The app draws `configs`; they must be the averages of the recorded runs (regenerated, no training)."""
    from studies.records import by_config

    for study in ("allocation", "size", "placement"):
        sw = json.loads((DATA / f"sweep-{study}.json").read_text())
        assert sw["configs"] == by_config(sw["runs"]), study
        seeds = {r["name"]: [x["seed"] for x in sw["runs"] if x["name"] == r["name"]] for r in sw["configs"]}
        assert all(sorted(v) == c["seeds"] for c, v in zip(sw["configs"], seeds.values(), strict=True))


def test_report_renders_every_study(tmp_path, monkeypatch):
    import studies.report as report

    monkeypatch.setattr(report, "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(report, "DATA", DATA)
    report.main()
    text = (tmp_path / "docs" / "paper-checks.md").read_text()
    for i in range(1, 10):
        assert f"## {i}." in text
    card = json.loads(report.CARD.read_text())
    assert f"{card['val_loss']['plays']['memory_on']:.3f}" in text
    controls = json.loads((DATA / "controls.json").read_text())
    shipped = controls["controls"]["inference"]["shipped model"]
    assert "| shipped model | " + " | ".join(f"{shipped[d]:.3f}" for d in ("plays", "code", "prose")) + " |" in text
    inc = controls["modes"]["increase"]["all / mean"]
    assert "| all | mean | " + " | ".join(f"{inc[d]:+.3f}" for d in ("plays", "code", "prose")) + " |" in text


def test_seeds_average_into_one_row():
    from studies.records import by_config
    from studies.report import _cell

    runs = [
        {"name": "a", "seed": 0, "val_plays": 4.0, "val_code": 3.0},
        {"name": "a", "seed": 1, "val_plays": 4.2, "val_code": 3.0},
        {"name": "b", "seed": 0, "val_plays": 5.0, "val_code": 2.0, "val_plays_memory_off": 6.0},
    ]
    a, b = by_config(runs)
    assert a["seeds"] == [0, 1] and a["val_plays"] == pytest.approx(4.1) and a["val_plays_range"] == pytest.approx(0.2)
    assert _cell(a, "val_plays") == "4.100 ± 0.100" and _cell(a, "val_plays_memory_off") == "-"
    assert _cell(b, "val_plays") == "5.000" and b["seeds"] == [0]


def test_capacity_one_sentence_states_the_share_of_the_gain_kept():
    from studies.report import capacity_at_budget

    shipped = {"plays": 3.0, "code": 2.0, "prose": 4.0}
    budget = {
        "smallest tables (capacity one)": {"plays": 3.9, "code": 2.5, "prose": 4.4},
        "memory-free twin": {"plays": 4.0, "code": 3.0, "prose": 4.5},
    }
    text = capacity_at_budget(shipped, budget)
    # (twin - small) / (twin - shipped): 0.1/1.0, 0.5/1.0, 0.1/0.5
    assert "10 % (held-out plays)" in text and "50 % (held-out code)" in text and "20 % (Genesis" in text
    # each domain judged on its own share: half kept on code is "part", a tenth on plays is "no substitute"
    assert "on held-out code part of the gain survives" in text
    assert "on held-out plays, Genesis 1:1-10 a table of a few rows per head is no substitute" in text
    assert "most of the gain" not in text
    budget["smallest tables (capacity one)"]["code"] = 2.1
    assert "on held-out code most of the gain survives" in capacity_at_budget(shipped, budget)
    assert capacity_at_budget(shipped, {"memory-free twin": budget["memory-free twin"]}) == ""
    # a domain where the twin is as good as the shipped model is named, not divided by ~0
    budget["memory-free twin"]["code"] = 2.01
    text = capacity_at_budget(shipped, budget)
    assert "no gain to keep on held-out code" in text and "+0.010 (held-out code)" in text
