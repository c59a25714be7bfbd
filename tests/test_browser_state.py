# ruff: noqa: F811 - the shared fixtures are imported by name
"""One state on screen, in a real browser: whatever changes the text, the model or the mask (Run, a typed
mask, a link, Apply, the map's "Knock out these rows", the picker), the status line, the mask box, the
switches, the link and the Knock-out view all end on the same state, and no view shows another model's
results. Every wait follows what the page shows; `bench/browser_under_load.sh` runs these with the CPU busy.
"""

import re
import urllib.parse

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from engram_core.knockout import format_knockout, parse_knockout  # noqa: E402
from tests.test_browser import IDLE, app_url, page, shot, tab  # noqa: E402, F401 - fixtures shared with the tour

pytestmark = pytest.mark.slow

TEXT = "I pray you, my lord, let me know your pleasure."

# true once nothing is running and every copy of the mask on screen reads `m`: the status line, the mask
# box, the link's mask parameter and, where it is drawn, the Knock-out summary
AGREE = """(m) => {
  if (/processing|queue: \\d/.test(document.body.innerText)) return false;
  const box = (id) => { const e = document.querySelector(`#${id} textarea, #${id} input`); return e ? e.value : ''; };
  const link = box('share-link');
  if (!link) return false;
  const status = document.querySelector('#status').innerText.trim();
  const summary = document.querySelector('#ko-summary');
  const drawn = summary && summary.offsetParent !== null && summary.innerText.trim() !== '';
  return status.endsWith('mask ' + m) && box('mask') === m
    && new URL(link).searchParams.get('mask') === m
    && (!drawn || summary.innerText.includes('mask ' + m + ' ·'));
}"""

SWITCHES = """() => {
  const ticked = (id) => [...document.querySelectorAll(`#${id} label`)]
    .filter((l) => l.querySelector('input') && l.querySelector('input').checked).map((l) => l.innerText.trim());
  const rows = document.querySelector('#ko-rows textarea, #ko-rows input');
  return {all: document.querySelector('#ko-all input').checked, layers: ticked('ko-layers'),
          orders: ticked('ko-orders'), branches: ticked('ko-branches'), mode: ticked('ko-mode'),
          rows: rows ? rows.value : null};
}"""


def canonical(mask: str) -> str:
    return format_knockout(parse_knockout(mask))


def agree(page, mask: str) -> None:
    page.wait_for_function(AGREE, arg=mask, timeout=120_000)


def open_at(page, url: str, **params) -> None:
    page.goto(f"{url}?{urllib.parse.urlencode({'text': TEXT, **params})}")
    sync_api.expect(page.locator("#status")).to_contain_text("tokens", timeout=120_000)


def test_a_second_apply_while_the_first_runs_wins(app_url, page):
    """Tick branch 0 and order 2, Apply, untick branch 0, Apply at once: once the summary kept branch=0
    while the switches and the mask box had none (the second click was dropped)."""
    _, url = app_url
    open_at(page, url)
    agree(page, "all")
    tab(page, "Knock-out")
    page.locator("#ko-all input").uncheck()
    page.get_by_label("branch 0").check()
    page.get_by_label("order 2").check()
    page.locator("#ko-apply").click()
    page.get_by_label("branch 0").uncheck()
    page.locator("#ko-apply").click()
    agree(page, canonical("order=2"))
    sync_api.expect(page.locator("#ko-summary")).to_contain_text("mask order=2 ·", timeout=120_000)
    s = page.evaluate(SWITCHES)
    assert s["branches"] == [] and s["orders"] == ["order 2"] and not s["all"], s


def test_a_link_sets_the_switches_and_apply_keeps_its_mask(app_url, page):
    """A link's mask (mode included) shows in the switches, so an Apply without changes keeps it;
    the link then follows Apply, and has a copy button."""
    _, url = app_url
    mask = canonical("layer=2,mode=mean")
    open_at(page, url, mask=mask)
    agree(page, mask)
    tab(page, "Knock-out")
    s = page.evaluate(SWITCHES)
    assert not s["all"] and s["layers"] == ["layer 2"] and s["mode"] == ["head's mean row"], s
    page.locator("#ko-apply").click()
    sync_api.expect(page.locator("#ko-summary")).to_contain_text(f"mask {mask} ·", timeout=120_000)
    agree(page, mask)
    page.get_by_label("layer 1").check()
    page.locator("#ko-apply").click()
    agree(page, canonical("layer=1,layer=2,mode=mean"))
    assert page.locator("#share-link").get_by_role("button").count() >= 1  # copy


def test_a_typed_mask_and_run_move_the_switches(app_url, page):
    _, url = app_url
    open_at(page, url)
    agree(page, "all")
    page.locator("#mask textarea, #mask input").first.fill("order=3,mode=mean")
    page.locator("#run").click()
    agree(page, canonical("order=3,mode=mean"))
    tab(page, "Knock-out")
    sync_api.expect(page.locator("#ko-summary")).to_contain_text("mask order=3,mode=mean ·", timeout=120_000)
    s = page.evaluate(SWITCHES)
    assert not s["all"] and s["orders"] == ["order 3"] and s["layers"] == [] and s["mode"] == ["head's mean row"]


def test_a_bad_typed_mask_says_so_once_and_keeps_the_state(app_url, page):
    _, url = app_url
    open_at(page, url, mask="layer=1")
    agree(page, "layer=1")
    page.locator("#mask textarea, #mask input").first.fill("layer=9")
    page.locator("#run").click()
    sync_api.expect(page.locator(".toast-body").filter(has_text="layer")).to_have_count(1, timeout=120_000)
    # the typed mask stays to be mended; the state that ran is still the one shown
    assert page.locator("#mask textarea, #mask input").first.input_value() == "layer=9"
    assert page.locator("#status").inner_text().strip().endswith("mask layer=1")


def test_map_rows_join_the_mask_and_survive_apply(app_url, page):
    """The rows "Knock out these rows" sends run at once, show in the switches' row box, and an Apply
    after keeps them (once they were lost at the next Apply and never re-ran)."""
    _, url = app_url
    open_at(page, url)
    agree(page, "all")
    tab(page, "Memory map")
    page.locator("#row-query textarea, #row-query input").first.fill("my lord")
    page.locator("#find-neighbours").click()
    # a row of the table names the query's row it is nearest to, "L:N:K:R (head h)"
    sync_api.expect(page.locator("#neighbours-table")).to_contain_text(
        re.compile(r"\d+:\d:\d:\d+ \(head \d\)"), timeout=120_000
    )
    page.get_by_role("button", name="Knock out these rows").click()
    page.wait_for_function(
        "() => /mask row=/.test(document.querySelector('#status').innerText)"
        " && !/processing|queue: \\d/.test(document.body.innerText)",
        timeout=120_000,
    )
    mask = page.locator("#mask textarea, #mask input").first.input_value()
    assert mask.startswith("row=") and "all" not in mask
    agree(page, mask)
    tab(page, "Knock-out")
    sync_api.expect(page.locator("#ko-summary")).to_contain_text(f"mask {mask} ·", timeout=120_000)
    s = page.evaluate(SWITCHES)
    assert not s["all"] and s["rows"] and canonical(",".join(f"row={r.strip()}" for r in s["rows"].split(","))) == mask
    page.locator("#ko-apply").click()
    agree(page, mask)
    shot(page, "knockout-rows")


def test_another_model_shows_none_of_the_shipped_models_views(app_url, page):
    """With DeepSeek-V4.1-Flash picked, every tab shows that model or one line why not, never the shipped
    model's results under the other label."""
    _, url = app_url
    open_at(page, url, model="deepseek-v4.1-flash")
    sync_api.expect(page.locator("#status")).to_contain_text("deepseek-v4.1-flash", timeout=120_000)
    sync_api.expect(page.locator("#v41-tokens")).to_contain_text("pray", timeout=120_000)
    assert not page.locator("#token-strip").is_visible()
    shot(page, "v41-lookups")
    for name, shipped, line in [
        ("Gates", "#gate-heatmap", "the gates need the backbone"),
        ("Memory map", "#memory-map", "the memory map"),
        ("Knock-out", "#ko-apply", "knock-outs need the backbone"),
        ("Export", "#export-trace", "trace exports need the backbone"),
        ("Row page", "#row-page-go", "the row page"),
        ("Paper checks", "button:has-text('Show the paper checks')", "the paper checks need the backbone"),
    ]:
        tab(page, name)
        sync_api.expect(page.locator("#backbone-notice")).to_contain_text(line, timeout=120_000)
        sync_api.expect(page.locator(shipped)).to_be_hidden(timeout=120_000)
    tab(page, "Health")
    sync_api.expect(page.locator("#health-table")).to_be_hidden(timeout=120_000)
    tab(page, "Model card")
    sync_api.expect(page.locator("#layout-card")).to_contain_text("deepseek-v4.1-flash: memory layout")
    shot(page, "v41-model-card")
    # back to the shipped model: its views return, and the notice goes
    page.locator("#model input").click()
    page.get_by_role("option", name="shipped model").click()
    agree(page, "all")
    tab(page, "Knock-out")
    sync_api.expect(page.locator("#ko-apply")).to_be_visible(timeout=120_000)
    sync_api.expect(page.locator("#backbone-notice")).to_have_text("", timeout=120_000)


# counts every error toast that appears (a toast closes itself after a while, so a count of those on
# screen may already be 0 on a busy machine)
COUNT_TOASTS = """() => {
  window.__toasts = 0;
  new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach((n) => {
    if (n.nodeType !== 1) return;
    window.__toasts += (n.matches('.toast-body') ? 1 : 0) + n.querySelectorAll('.toast-body').length;
  }))).observe(document.body, {childList: true, subtree: true});
}"""


def test_a_bad_row_says_so_once(app_url, page):
    """A bad row typed in the Knock-out tab or on the Row page gives one message (once two toasts)."""
    _, url = app_url
    open_at(page, url)
    agree(page, "all")
    page.evaluate(COUNT_TOASTS)
    tab(page, "Knock-out")
    rows = page.locator("#ko-rows textarea, #ko-rows input").first
    rows.fill("9:9:9:9")
    rows.press("Enter")
    page.locator("#ko-apply").click()
    page.wait_for_function("() => window.__toasts > 0")
    page.wait_for_function(IDLE)
    assert page.evaluate("() => window.__toasts") == 1
    assert page.locator("#status").inner_text().strip().endswith("mask all")
    # close it if it is still there (no click on a toast that may close itself meanwhile)
    page.evaluate("() => document.querySelectorAll('.toast-close').forEach((b) => b.click())")
    sync_api.expect(page.locator(".toast-body")).to_have_count(0)
    tab(page, "Row page")
    page.evaluate("() => { window.__toasts = 0; }")
    box = page.locator("#row-page-query textarea, #row-page-query input").first
    box.fill("9:9:9:9")
    page.locator("#row-page-go").click()
    page.wait_for_function("() => window.__toasts > 0")
    page.wait_for_function(IDLE)
    assert page.evaluate("() => window.__toasts") == 1


def test_qwen_shows_its_own_rows_and_statistics_and_never_another_models(app_url, page):
    """Qwen3.8-Flash-Next picked by a link: its one table's rows in Lookups and its own traffic in Health;
    picking DeepSeek-V4.1-Flash then leaves neither on screen under the other model's name."""
    _, url = app_url
    open_at(page, url, model="qwen3.8-flash-next")
    sync_api.expect(page.locator("#status")).to_contain_text("qwen3.8-flash-next", timeout=120_000)
    sync_api.expect(page.locator("#v41-about")).to_contain_text(
        "its one N-gram table (layer 1: 16 heads", timeout=120_000
    )
    sync_api.expect(page.locator("#v41-tokens")).to_contain_text("pray", timeout=120_000)
    tab(page, "Health")
    page.locator("#v41-load").click()
    sync_api.expect(page.locator("#v41-health-note")).to_contain_text("Counts for qwen3.8-flash-next", timeout=300_000)
    page.wait_for_function(IDLE, timeout=120_000)
    shot(page, "qwen-health")
    page.locator("#model input").click()
    page.get_by_role("option", name="deepseek-v4.1-flash").click()
    sync_api.expect(page.locator("#status")).to_contain_text("deepseek-v4.1-flash", timeout=120_000)
    sync_api.expect(page.locator("#v41-health-note")).not_to_contain_text("qwen3.8-flash-next", timeout=120_000)
    tab(page, "Lookups")
    sync_api.expect(page.locator("#v41-about")).to_contain_text("all 2 Engram layers", timeout=120_000)
