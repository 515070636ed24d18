"""End-to-end test of the app in a real browser: ``pneumoscan app`` in a subprocess, headless Chromium.

Uses Debian's Chromium (``/usr/bin/chromium``; Playwright's own browser download needs the
internet) and is skipped when it is missing. Set ``PNEUMOSCAN_SCREENSHOT=docs/screenshot.png`` to
keep the screenshot; ``PNEUMOSCAN_SCREENSHOT_MODEL`` and ``PNEUMOSCAN_SCREENSHOT_IMAGE`` replace the
tiny test model and the synthetic X-ray (e.g. with the released model and a real radiograph).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_app import xray_like

from pneumoscan.config import DISCLAIMER

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PNEUMOSCAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
READY_TIMEOUT_S = 60
HEADLINE = re.compile(r"(Pneumonia suspected|No pneumonia detected) — confidence \d+\s%")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the app did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


@pytest.fixture
def running_app(tmp_path):
    """Start ``pneumoscan app`` on a free port; yields (url, seconds to healthy, start time)."""
    model = os.environ.get("PNEUMOSCAN_SCREENSHOT_MODEL")
    if model is None:
        from model_factory import export_tiny_litert, make_tiny_model

        # The app's production path: a LiteRT export, with its Keras source beside it.
        model = export_tiny_litert(make_tiny_model(tmp_path))
    port = free_port()
    log_path = tmp_path / "app.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pneumoscan.cli",
                "app",
                "--model",
                str(model),
                "--port",
                str(port),
                "--address",
                "127.0.0.1",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the CLI starts streamlit as a child: stop the whole group
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log_path, READY_TIMEOUT_S)
        yield url, started, log_path
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
)
def test_upload_in_a_real_browser(running_app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, started, log_path = running_app
    image = Path(os.environ.get("PNEUMOSCAN_SCREENSHOT_IMAGE") or tmp_path / "chest-xray.png")
    if not image.exists():
        xray_like(768).save(image)

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
            body = page.inner_text("body")
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)

            # A second file, once everything is warm: two results and the table with its CSV button.
            second = tmp_path / "second.png"
            xray_like(640, seed=1).save(second)
            t0 = time.monotonic()
            page.set_input_files("input[type=file]", str(second))
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=stProgress]').length == 4",
                polling="raf",
                timeout=60_000,
            )
            warm_prediction_s = time.monotonic() - t0
            page.get_by_text("Download results (CSV)").wait_for(timeout=30_000)
            assert page.locator("[data-testid=stDataFrame]").count() == 1
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
