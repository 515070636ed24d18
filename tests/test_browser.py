"""End-to-end test of the app in a real browser: ``pneumoscan app`` in a subprocess, headless Chromium.

Uses Debian's Chromium (``/usr/bin/chromium``; Playwright's own browser download needs the
internet) and is skipped when it is missing (a failure under ``CI=true``). Every check on the page
waits for what it asserts (Playwright's ``expect``), since Streamlit renders a run's elements in no
fixed order. Set ``PNEUMOSCAN_SCREENSHOT=docs/screenshot.png`` to
keep the screenshot; ``PNEUMOSCAN_SCREENSHOT_MODEL`` and ``PNEUMOSCAN_SCREENSHOT_IMAGE`` replace the
tiny test model and the synthetic X-ray (e.g. with the released model and a real radiograph).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from pneumoscan.config import DISCLAIMER
from pneumoscan.testing.app_server import CHROMIUM, CHROMIUM_ARGS, pneumoscan_app, running_app
from pneumoscan.testing.synthetic import xray_image

pytestmark = pytest.mark.browser

READY_TIMEOUT_S = 60
#: How long a check waits for the element it asserts on, in ms.
WAIT_MS = 30_000
HEADLINE = re.compile(r"(Pneumonia suspected|No pneumonia detected) — confidence \d+\s%")


@pytest.fixture
def app_url(tmp_path):
    """``pneumoscan app`` on a free port; yields (url, start time)."""
    model = os.environ.get("PNEUMOSCAN_SCREENSHOT_MODEL")
    if model is None:
        from pneumoscan.testing.models import export_tiny_litert, make_tiny_model

        # The app's production path: a LiteRT export, with its Keras source beside it.
        model = export_tiny_litert(make_tiny_model(tmp_path))
    with running_app(pneumoscan_app(model), tmp_path / "app.log", timeout=READY_TIMEOUT_S) as (url, started):
        yield url, started


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
)
def test_upload_in_a_real_browser(app_url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, started = app_url
    image = Path(os.environ.get("PNEUMOSCAN_SCREENSHOT_IMAGE") or tmp_path / "chest-xray.png")
    if not image.exists():
        xray_image(768).save(image)

    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.goto(url, timeout=READY_TIMEOUT_S * 1000)
            # The uploader appears once the model is loaded: the app is ready.
            page.wait_for_selector("input[type=file]", state="attached", timeout=READY_TIMEOUT_S * 1000)
            ready_s = time.monotonic() - started

            t0 = time.monotonic()
            page.set_input_files("input[type=file]", str(image))
            page.get_by_text(HEADLINE).wait_for(timeout=60_000)
            prediction_s = time.monotonic() - t0

            page.wait_for_selector("[data-testid=stImage] img", timeout=30_000)
            page.wait_for_function(
                "() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=30_000
            )
            # Wait for each thing asserted on: a finished script run is not a finished render.
            for text in (
                re.compile(r"P\(normal\): \d+\.\d\s%"),
                re.compile(r"P\(pneumonia\): \d+\.\d\s%"),
                re.compile(r"Operating threshold \d\.\d\d: pneumonia is flagged"),
            ):
                expect(page.get_by_text(text).first).to_be_visible(timeout=WAIT_MS)
            expect(page.get_by_text(DISCLAIMER).nth(1)).to_be_attached(timeout=WAIT_MS)  # top and result
            body = page.inner_text("body")
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)

            # A second file, once everything is warm: two results and the table with its CSV button.
            second = tmp_path / "second.png"
            xray_image(640, seed=1).save(second)
            t0 = time.monotonic()
            page.set_input_files("input[type=file]", str(second))
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=stProgress]').length == 4",
                polling="raf",
                timeout=60_000,
            )
            warm_prediction_s = time.monotonic() - t0
            page.get_by_text("Download results (CSV)").wait_for(timeout=30_000)
            # The table renders after the button often enough: wait for it rather than count once.
            expect(page.locator("[data-testid=stDataFrame]")).to_have_count(1, timeout=WAIT_MS)
            page.screenshot(path=str(tmp_path / "app-two-files.png"), full_page=True)
        finally:
            browser.close()

    print(
        f"\napp ready {ready_s:.1f} s after start; prediction {prediction_s:.2f} s after the first upload, "
        f"{warm_prediction_s:.2f} s after the second; screenshot {shot}"
    )
    assert re.search(r"P\(normal\): \d+\.\d\s%", body), body
    assert re.search(r"P\(pneumonia\): \d+\.\d\s%", body), body
    assert HEADLINE.search(body)
    assert "Operating threshold" in body
    assert body.count(DISCLAIMER) >= 2  # at the top and next to the prediction
    assert "Traceback" not in body
    assert ready_s < READY_TIMEOUT_S
    if os.environ.get("PNEUMOSCAN_SCREENSHOT"):
        target = Path(os.environ["PNEUMOSCAN_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target)
