"""The row page in a real browser: a deep link opens it, and a click on a memory-map point opens that row's page."""

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from tests.test_browser import app_url, page, shot, tab  # noqa: E402, F401 - fixtures shared with the tour

pytestmark = pytest.mark.slow


def test_deep_link_opens_the_row_page(app_url, page):  # noqa: F811
    _, url = app_url
    page.goto(url + "?row=1:2:0:8615")
    summary = page.locator("#row-page-summary")
    sync_api.expect(summary).to_contain_text("Row 1:2:0:8615", timeout=120_000)
    sync_api.expect(summary).to_contain_text("corpus N-grams hash here")
    sync_api.expect(page.get_by_text("my lord").first).to_be_visible()
    shot(page, "row-page")


def test_clicking_a_map_point_opens_its_row_page(app_url, page):  # noqa: F811
    _, url = app_url
    page.goto(url)
    sync_api.expect(page.locator("#status")).to_contain_text("tokens", timeout=120_000)
    tab(page, "Memory map")
    page.locator("#memory-map .js-plotly-plot").wait_for(timeout=120_000)
    page.wait_for_function("() => document.querySelector('#memory-map .js-plotly-plot').__engramHooked === true")
    row = page.evaluate(
        "() => { const d = document.querySelector('#memory-map .js-plotly-plot');"
        " const row = d.data[0].customdata[3];"
        " d.emit('plotly_click', {points: [{customdata: row}]}); return row; }"
    )
    sync_api.expect(page.locator("#row-page-summary")).to_contain_text(f"Row {row}", timeout=120_000)
