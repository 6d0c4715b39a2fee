"""The Use cases tab in a real browser: paint an inpainting mask with the mouse and run it.

Screenshot to docs/screenshots/5_usecases.png when UPDATE_SCREENSHOTS=1, else to a temporary folder.
Skips when /usr/bin/chromium is missing (fixtures as in tests/test_browser.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}
SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
TIMEOUT_MS = 90_000
STEPS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", str(tmp_path_factory.mktemp("examples")))
    from demo.app import build_demo, launch_options
    from explain.session import Engine

    demo = build_demo(Engine())
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=_free_port(), quiet=True, **launch_options())
    yield url
    demo.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url)
        yield page
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        return SCREENSHOT_DIR
    return tmp_path_factory.mktemp("screenshots")


def test_paint_a_mask_and_inpaint(page, shots):
    page.get_by_role("tab", name="5 · Use cases").click()
    page.get_by_role("tab", name="Inpainting").click()
    page.locator("#inpaint-sample").click()
    editor = page.locator("#inpaint-editor")
    # the editor shows its drawing tools (brush size) only once the image is on the canvas
    for _ in range(30):
        editor.get_by_role("button", name="Brush", exact=True).click()
        if editor.get_by_role("button", name="Brush Size").count():
            break
        page.wait_for_timeout(1000)
    editor.get_by_role("button", name="Brush Size").wait_for()
    canvas = editor.locator("canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None and box["width"] > 50
    x0, y0 = box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.4
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 7):  # a short zigzag stroke right of centre
        page.mouse.move(x0 + (i % 2) * box["width"] * 0.15, y0 + i * box["height"] * 0.03, steps=4)
    page.mouse.up()
    steps = page.locator("#inpaint-steps input[type=number]")
    steps.fill(str(STEPS))
    steps.press("Tab")
    page.locator("#inpaint-run").click()
    page.locator("#inpaint-output img").first.wait_for()
    page.locator("#inpaint-maps img").nth(2).wait_for()  # one overlay per word
    assert "pixels filled" in page.locator("#inpaint-summary").inner_text()
    page.screenshot(path=shots / "5_usecases.png", full_page=True)
