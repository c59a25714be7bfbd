"""A real browser (Playwright driving Debian's Chromium) against the app.

Opens the app, runs a text, sees the token strip and the gate heatmap, switches
memory off and sees the Δ view, clicks a memory-map point and sees neighbours,
downloads a trace and loads it. Screenshots of each view go to
$ENGRAM_SCREENSHOTS (default build/screenshots). `.ci/run` installs Chromium;
`playwright install` is never called.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from engram_core import KnockOut  # noqa: E402
from engram_inspect.text.capture import capture  # noqa: E402
from engram_inspect.text.export import read  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("ENGRAM_SCREENSHOTS", ROOT / "build" / "screenshots"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
TEXT = "Good night, sweet prince, and flights of angels sing thee to thy rest!"

pytestmark = pytest.mark.slow

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must install Debian's chromium (scripts/test.sh does)")
    pytest.skip("no chromium on this machine: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def app_url(served_app):
    session, _, url = served_app  # one app server per test session (conftest), launched with CLICK_JS
    return session, url


@pytest.fixture(scope="module")
def page(app_url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        pg.set_default_timeout(120_000)
        # expect()'s own default is 5 s: on a busy machine a view takes longer to draw than that
        sync_api.expect.set_options(timeout=120_000)
        yield pg
        browser.close()


# true when no event is queued or running: Gradio shows "queue: i/n" or "processing" on what it is computing
IDLE = "() => !/processing|queue: \\d/.test(document.body.innerText)"


def shot(page, name: str) -> None:
    page.wait_for_function(IDLE, timeout=120_000)  # every pending event drawn first
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_the_whole_tour(app_url, page):
    session, url = app_url
    page.goto(url)
    box = page.locator("#text-input textarea")
    # the page runs the text of its link (or the first example) once when it opens
    sync_api.expect(page.locator("#status")).to_contain_text("tokens", timeout=120_000)
    box.fill(TEXT)
    box.press("Enter")
    strip = page.locator("#token-strip")
    sync_api.expect(strip).to_contain_text("prince", timeout=120_000)
    sync_api.expect(page.locator("#status")).to_contain_text("tokens")
    shot(page, "lookups")

    tab(page, "Gates")
    sync_api.expect(page.locator("#gate-heatmap .js-plotly-plot")).to_be_visible()
    shot(page, "gates")

    tab(page, "Knock-out")
    page.locator("#ko-apply").click()
    summary = page.locator("#ko-summary")
    sync_api.expect(summary).to_contain_text("mean loss change", timeout=120_000)
    first = summary.inner_text()
    sync_api.expect(page.locator("#ko-delta .js-plotly-plot")).to_be_visible()
    shot(page, "knockout")
    page.locator("#ko-all input").uncheck()
    page.get_by_label("layer 1").check()
    page.locator("#ko-apply").click()
    sync_api.expect(summary).to_contain_text("layer=1", timeout=120_000)
    assert summary.inner_text() != first  # the Δ view changed with the mask

    tab(page, "Memory map")
    plot = page.locator("#memory-map .js-plotly-plot")
    plot.wait_for(timeout=120_000)
    # a click on a point: plotly's own click event carrying the point's row id
    page.wait_for_function("() => document.querySelector('#memory-map .js-plotly-plot').__engramHooked === true")
    row = page.evaluate(
        "() => { const d = document.querySelector('#memory-map .js-plotly-plot');"
        " const row = d.data[0].customdata[0];"
        " d.emit('plotly_click', {points: [{customdata: row}]}); return String(row); }"
    )
    # a found row names the query row it is nearest to ("0." once matched the queue's "0.1s")
    sync_api.expect(page.locator("#neighbours-table")).to_contain_text(re.compile(r"\(head \d\)"), timeout=120_000)
    # the click also opens the point's row page 0.4 s later (once a fast neighbour search let the tour
    # click Export first, and the row page then took the screen): wait for it before moving on
    sync_api.expect(page.get_by_role("tab", name="Row page")).to_have_attribute("aria-selected", "true")
    sync_api.expect(page.locator("#row-page-query textarea, #row-page-query input").first).to_have_value(row)
    page.wait_for_function(IDLE, timeout=120_000)
    tab(page, "Memory map")
    shot(page, "memory-map")

    tab(page, "Export")
    page.locator("#export-trace").click()
    link = page.locator("#export-file a").first
    link.wait_for(timeout=120_000)
    with page.expect_download() as dl:
        link.click()
    path = Path(dl.value.path())
    trace = read(path, "json")
    assert trace == capture(session.ck, TEXT, mask=KnockOut(layers={1}))  # the knock-out run is the current trace
    shot(page, "export")

    tab(page, "Health")
    page.get_by_role("button", name="Load memory health").click()
    first_prime = str(session.ck.model.cfg.memory.hash_spec.primes[1][0])  # the first table's size
    sync_api.expect(page.locator("#health-table")).to_contain_text(first_prime, timeout=120_000)
    shot(page, "health")

    tab(page, "Paper checks")
    page.get_by_role("button", name="Show the paper checks").click()
    sync_api.expect(page.locator(".js-plotly-plot").filter(has_text="learning curves")).to_be_visible(timeout=120_000)
    shot(page, "paper-checks")


def test_link_reopens_text_and_mask(app_url, page):
    _, url = app_url
    from urllib.parse import urlencode

    page.goto(url + "?" + urlencode({"text": "O, I am fortune's fool!", "mask": "layer=2"}))
    sync_api.expect(page.locator("#status")).to_contain_text("layer=2", timeout=120_000)
    sync_api.expect(page.locator("#token-strip")).to_contain_text("fort", timeout=120_000)
    assert "mask=layer%3D2" in page.locator("#share-link textarea, #share-link input").first.input_value()


def test_link_opens_the_v41_picker(app_url, page):
    """A link with model=deepseek-v4.1-flash picks it: its rows in Lookups, a backbone tab's one line."""
    _, url = app_url
    from urllib.parse import urlencode

    page.goto(url + "?" + urlencode({"text": "O, I am fortune's fool!", "model": "deepseek-v4.1-flash"}))
    sync_api.expect(page.locator("#status")).to_contain_text("deepseek-v4.1-flash", timeout=120_000)
    sync_api.expect(page.locator("#v41-tokens")).to_contain_text("fort", timeout=120_000)
    assert "model=deepseek-v4.1-flash" in page.locator("#share-link textarea, #share-link input").first.input_value()
    tab(page, "Gates")
    sync_api.expect(page.locator("#backbone-notice")).to_contain_text("the gates need the backbone", timeout=120_000)
    # picking the shipped model in the picker runs the text again under it
    page.locator("#model input").click()
    page.get_by_role("option", name="shipped model").click()
    sync_api.expect(page.locator("#status")).to_contain_text("mask all", timeout=120_000)
    sync_api.expect(page.locator("#backbone-notice")).to_have_text("", timeout=120_000)


STRIP_COLOURS = """() => Array.from(document.querySelectorAll('#token-strip .token')).map(e => {
  const s = getComputedStyle(e);
  return [e.innerText, s.backgroundColor, s.color];
})"""


def test_the_strip_colours_follow_the_gate(app_url, page):
    """What the browser draws: each token's background is its gate bin's colour (once every token was
    the same orange), and the text is light in dark mode."""
    import urllib.parse

    from app import views

    session, url = app_url
    text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"
    page.goto(f"{url}?{urllib.parse.urlencode({'text': text})}")
    sync_api.expect(page.locator("#token-strip")).to_contain_text("whether", timeout=120_000)
    drawn = page.evaluate(STRIP_COLOURS)
    trace = capture(session.ck, text)
    bins = [views.gate_bin(a) for a in views.gate_values(trace, "mean")]
    assert len(drawn) == trace.n_tokens
    rgb = {name: tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for name, c in views.GATE_COLOURS.items()}
    for (token, background, _), name in zip(drawn, bins, strict=True):
        got = tuple(int(x) for x in background[background.index("(") + 1 :].split(",")[:3])
        assert got == rgb[name], (token, background, name)
    assert len({b for _, b, _ in drawn}) >= 3  # the gate varies over this text, and so does the colour
    page.locator("button", has_text="dark mode").click()
    # the text's colour changes with a transition: wait for what the page settles on
    page.wait_for_function(
        "() => document.body.classList.contains('dark') && Array.from(document.querySelectorAll("
        "'#token-strip .token')).every(e => getComputedStyle(e).color === 'rgb(245, 245, 245)')",
        timeout=10_000,
    )
    light = page.evaluate(STRIP_COLOURS)
    assert all(c == "rgb(245, 245, 245)" for _, _, c in light), light[:3]
    page.locator("button", has_text="dark mode").click()  # back, for the tests after
    page.wait_for_function("() => !document.body.classList.contains('dark')")


def test_clicking_an_example_runs_it(app_url, page):
    """Once an example filled the text and every view kept the previous one."""
    from app.main import EXAMPLES

    _, url = app_url
    page.goto(url)
    sync_api.expect(page.locator("#status")).to_contain_text("tokens", timeout=120_000)
    example = next(e for e in EXAMPLES if "fortune" in e)
    page.get_by_text(example[:20], exact=False).first.click()
    sync_api.expect(page.locator("#token-strip")).to_contain_text("fort", timeout=120_000)
    sync_api.expect(page.locator("#share-link textarea")).to_have_value(re.compile("fortune"), timeout=120_000)


def test_cache_sizing_in_health(app_url, page):
    """Health: pick a policy and streams, simulate, and read the capacities in words beside the curves."""
    _, url = app_url
    page.goto(url)
    sync_api.expect(page.locator("#status")).to_contain_text("tokens", timeout=120_000)
    tab(page, "Health")
    page.get_by_text("Cache sizing: hot-row cache hit rates").click()
    page.locator("#cache-streams").get_by_text("4", exact=True).click()
    page.locator("#cache-simulate").click()
    words = page.locator("#cache-words")
    sync_api.expect(words).to_contain_text("the default corpus sample", timeout=120_000)
    sync_api.expect(words).to_contain_text("the text shown, layer 2, 4 streams, rows", timeout=120_000)
    assert "Per layer for 80% hits: lru" in words.inner_text()
    # both curves are drawn: corpus and text, for both layers
    sync_api.expect(page.locator("#cache-plot .scatterlayer .trace")).to_have_count(4, timeout=120_000)
    shot(page, "cache-sizing")
