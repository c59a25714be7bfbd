"""Redraw the README's screenshots of every view: `python scripts/screenshots.py [OUT_DIR]`.

Starts the app on the shipped model on a free loopback port, drives Debian's Chromium
through Playwright (never `playwright install`) and writes one PNG per view to OUT_DIR
(default docs/screenshots). Every step waits on what the page shows.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)

TEXT = "Good night, sweet prince, and flights of angels sing thee to thy rest!"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]  # fmt: skip
# no event queued or running: Gradio writes "queue: i/n" or "processing" on what it computes
IDLE = "() => !/processing|queue: \\d/.test(document.body.innerText)"


def serve():
    from app.main import CLICK_JS, build_app
    from app.session import Session
    from app.views import APP_CSS

    session = Session.load(ROOT / "assets" / "default-model")
    demo = build_app(session)
    demo.queue(default_concurrency_limit=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, js=CLICK_JS, css=APP_CSS
    )
    return session, demo, f"http://127.0.0.1:{port}/"


def main(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from engram_inspect.text.capture import capture

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on this machine: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    session, demo, url = serve()
    trace = capture(session.ck, TEXT)
    row = f"1:2:0:{int(trace.hash_rows[0, 3, 0])}"  # the row the fourth token's bigram reads on head 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(180_000)
        expect.set_options(timeout=180_000)  # its own default is 5 s

        def shot(name: str, element: str | None = None) -> None:
            page.wait_for_function(IDLE)
            target = page.locator(element).first if element else page
            target.screenshot(path=str(out / f"{name}.png"), **({} if element else {"full_page": True}))
            print(f"{out / name}.png", flush=True)

        def tab(name: str) -> None:
            page.get_by_role("tab", name=name).click()

        try:
            page.goto(f"{url}?{urllib.parse.urlencode({'text': TEXT})}")
            expect(page.locator("#token-strip")).to_contain_text("prince")
            page.locator("#token-strip .token", has_text="prince").first.click()  # its lookups and attribution
            expect(page.locator("#lookup-table")).to_contain_text("prince")
            expect(page.locator("#attribution .js-plotly-plot")).to_be_visible()
            shot("lookups")
            shot("attribution", "#attribution")

            tab("Gates")
            expect(page.locator("#gate-heatmap .js-plotly-plot")).to_be_visible()
            shot("gates")

            tab("Memory map")
            expect(page.locator("#memory-map .js-plotly-plot")).to_be_visible()
            page.locator("#row-query textarea, #row-query input").first.fill("my lord")
            page.locator("#find-neighbours").click()
            expect(page.locator("#neighbours-table")).to_contain_text(re.compile(r"\(head \d\)"))  # a found row
            shot("memory-map")

            tab("Knock-out")
            page.locator("#ko-all input").uncheck()
            page.get_by_label("layer 1").check()
            page.locator("#ko-apply").click()
            expect(page.locator("#ko-summary")).to_contain_text("mask layer=1 ·")
            shot("knockout")

            tab("Health")
            page.get_by_role("button", name="Load memory health").click()
            expect(page.locator("#health-table")).to_contain_text("layer")
            page.get_by_text("Cache sizing: hot-row cache hit rates").click()
            page.locator("#cache-simulate").click()
            expect(page.locator("#cache-words")).to_contain_text("Per layer for 80% hits")
            shot("health")
            shot("cache-sizing", "#cache-plot")

            tab("Export")
            page.locator("#export-trace").click()
            page.locator("#export-file a").first.wait_for()
            shot("export")

            tab("Paper checks")
            page.get_by_role("button", name="Show the paper checks").click()
            expect(page.locator(".js-plotly-plot").filter(has_text="learning curves")).to_be_visible()
            shot("paper-checks")

            page.goto(f"{url}?{urllib.parse.urlencode({'row': row})}")
            expect(page.locator("#row-page-summary")).to_contain_text(f"Row {row}")
            shot("row-page")

            page.goto(f"{url}?{urllib.parse.urlencode({'text': TEXT, 'model': 'deepseek-v4.1-flash'})}")
            expect(page.locator("#v41-tokens")).to_contain_text("prince")
            pos = page.locator("#v41-pos input").first  # "Good", " night", ",", " sweet", " prince"
            pos.fill("4")
            pos.press("Enter")
            expect(page.locator("#v41-lookups")).to_contain_text("prince")
            shot("model-picker")

            page.goto(f"{url}?{urllib.parse.urlencode({'text': TEXT})}")
            expect(page.locator("#token-strip")).to_contain_text("prince")
            page.locator("button", has_text="dark mode").click()
            tab("Gates")
            expect(page.locator("#gate-heatmap .js-plotly-plot")).to_be_visible()
            shot("dark-mode")
        except Exception:
            failed = ROOT / "build" / "screenshots-failed.png"
            failed.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(failed), full_page=True)
            print(f"failed: the page as it stood is in {failed}", file=sys.stderr)
            raise
        finally:
            browser.close()
    demo.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
