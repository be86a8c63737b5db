"""Retake docs/images/status-page.png: `zoomrules demo`'s scenario, its status page in Chromium.

    python docs/dev/status_page_screenshot.py [--out docs/images/status-page.png]

Runs the demo (the real daemon against the built-in simulator) with the
demo's rules plus an `[http]` section, waits until the scenario's events
are on the status page, and screenshots the page with the system's
Chromium driven by Playwright (`apt-get install chromium`; `pip install
-e '.[test]'`), as tests/test_status_page.py does.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
from functools import partial
from pathlib import Path

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from engine.demo import demo_events, demo_rules_path, run_demo  # noqa: E402

#: Events of the demo's scenario on the page before the screenshot.
EVENTS = len(demo_events())


async def main(out: Path) -> None:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "demo.toml"
        http = f'\n[http]\nlisten = "127.0.0.1:{port}"\n'
        rules.write_text(demo_rules_path().read_text() + http)
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_demo, None, 1.0, rules=[rules]))
            url = f"http://127.0.0.1:{port}/"
            async with async_playwright() as playwright:
                # Started first: the demo stops its daemon two steps after its last event.
                browser = await playwright.chromium.launch(
                    executable_path=chromium,
                    args=[
                        "--no-sandbox",
                        "--disable-background-networking",
                        "--disable-component-update",
                    ],
                )
                page = await browser.new_page(viewport={"width": 1000, "height": 800})
                await _wait_for_events(url)
                await page.goto(url)
                await page.screenshot(path=str(out), full_page=True)
                await browser.close()
            tg.cancel_scope.cancel()
    print(f"wrote {out}")


async def _wait_for_events(url: str) -> None:
    async with httpx.AsyncClient() as client:
        with anyio.fail_after(60):
            while True:
                try:
                    page = (await client.get(url)).text
                except httpx.TransportError:
                    page = ""
                if page.count('<details class="event"') >= EVENTS and 'class="pending"' not in page:
                    return
                await anyio.sleep(0.2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/images/status-page.png")
    anyio.run(main, parser.parse_args().out)
