"""The app in a real browser: Debian's chromium, driven headless by Playwright, on a tiny index.

Uploads a catalogue image, waits for the gallery and checks that the image itself is the top
result; also checks that the page asks for nothing outside 127.0.0.1 and that Gradio refuses a
file outside the images folder. Skipped only when chromium or Playwright is missing outside CI
(``CI`` set: it fails instead, so CI cannot pass without running it). ``.ci/run`` installs
chromium. Set ``SIMSEARCH_SCREENSHOT=path.png`` to keep the screenshot.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
from PIL import Image
from test_app import build_tiny_index

from simsearch.apps.app import AppSettings, SearchService, launch_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
WAIT_MS = 60_000


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (apt-get install chromium; .ci/run does it)")
    for module in ("playwright", "gradio"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package (pip install -e '.[app]')")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(reason)


def test_a_missing_browser_skips_only_outside_ci(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium"):
        _require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run this test"):
        _require_browser()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upload_in_chromium_shows_the_image_itself_first(tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    index = build_tiny_index(tmp_path)
    service = SearchService(index, AppSettings(top_k=3))
    query = service.images_dir / "class_01" / "img_02.jpg"
    expected = service.search_upload(str(query))[0][0][1]  # the oracle: the same search without the browser
    assert expected.startswith("1. class_01/img_02.jpg · ")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    demo = launch_app(service, port=port, block=False, quiet=True)
    elsewhere: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport=VIEWPORT)

                def only_local(route) -> None:  # the test contacts nothing but the app
                    if route.request.url.startswith(base + "/"):
                        route.continue_()
                    else:
                        elsewhere.append(route.request.url)
                        route.abort()

                page.route("**/*", only_local)
                page.goto(base + "/", wait_until="load", timeout=WAIT_MS)
                page.locator("#query-image input[type=file]").set_input_files(str(query))
                captions = page.locator("#results .caption-label")
                captions.first.wait_for(timeout=WAIT_MS)
                page.wait_for_function("() => [...document.querySelectorAll('#results img')]"
                                       ".every(img => img.complete && img.naturalWidth > 0)", timeout=WAIT_MS)
                assert captions.count() == 3
                assert captions.first.inner_text().strip() == expected
                first_row = page.locator("#status table tbody tr").first.inner_text().split()
                assert first_row == ["1", expected.rsplit(" ", 1)[1], "class_01/img_02.jpg"]
                outside = page.request.get(f"{base}/gradio_api/file={index / 'manifest.json'}")
                assert outside.status == 403
                shot = tmp_path / "app.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()
    assert elsewhere == []
    with Image.open(shot) as img:
        assert img.width == VIEWPORT["width"] and img.height >= VIEWPORT["height"]
    if os.environ.get("SIMSEARCH_SCREENSHOT"):
        target = Path(os.environ["SIMSEARCH_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
