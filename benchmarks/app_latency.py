"""App speed in a real browser: start-up time and the time from an upload to the prediction on screen.

Measured, in one run, for two Streamlit apps driven by headless Chromium (Debian's
``/usr/bin/chromium``, through Playwright):

- the baseline: a bare Streamlit page whose whole script is a file uploader and one line of text
  about the upload: the framework's own round trip (upload request, script rerun, page update),
  the floor for any Streamlit app on this machine;
- ``pneumoscan app`` on the bundled model (or ``--model``).

For each: seconds from process start to the health endpoint and to the page being usable (the
uploader on screen, for pneumoscan the model loaded), then ``--uploads`` uploads of *different*
224-px X-ray-like PNGs one after the other (each a new file, so no cached result is reused), timed
inside the page: from just before the file is handed to the uploader to the first animation frame
that shows the result (a ``MutationObserver`` stamps ``performance.now()``; nothing polls). For
pneumoscan the server's own share, decoding + prediction + page script, is read from its debug log.

Targets (the app issue): a prediction within 1 s of upload once warm, the app ready within 20 s.

Run: ``python benchmarks/app_latency.py [--model M] [--uploads 10]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from pneumoscan.testing.app_server import CHROMIUM, CHROMIUM_ARGS, pneumoscan_app, running_app
from pneumoscan.testing.synthetic import xray_image

TARGET_PREDICTION_S = 1.0
TARGET_READY_S = 20.0

BASELINE_APP = textwrap.dedent(
    """
    import streamlit as st

    files = st.file_uploader("Chest X-rays", accept_multiple_files=True)
    if files:
        st.write(f"Received {files[-1].name}: {len(files[-1].getvalue())} bytes")
    """
)
BASELINE_DONE = r"Received [^:]+: \d+ bytes"
PNEUMOSCAN_DONE = r"(Pneumonia suspected|No pneumonia detected) — confidence \d+"

# Installed before each upload: stamps the first frame whose text matches the pattern.
OBSERVE_JS = """
(pattern) => {
  window.__done = null;
  const re = new RegExp(pattern);
  const check = () => {
    if (window.__done === null && re.test(document.body.innerText)) {
      window.__done = performance.now();
      observer.disconnect();
    }
  };
  const observer = new MutationObserver(() => requestAnimationFrame(check));
  observer.observe(document.body, {childList: true, subtree: true, characterData: true});
  return performance.now();
}
"""


def measure(browser, name: str, command, done: str, images: list[Path], tmp: Path) -> dict:
    """Start the app (``command(port)`` gives its command line), time its start-up, then each upload."""
    log_path = tmp / f"{name}.log"
    env = dict(os.environ, PNEUMOSCAN_LOG_LEVEL="DEBUG")  # the app logs its own render time
    with running_app(command, log_path, timeout=120, env=env) as (url, started):
        healthy_s = time.monotonic() - started
        page = browser.new_page(viewport={"width": 1440, "height": 1200})
        page.goto(url, timeout=120_000)
        page.wait_for_selector("input[type=file]", state="attached", timeout=120_000)
        ready_s = time.monotonic() - started
        latencies = []
        for image in images:
            t0 = page.evaluate(OBSERVE_JS, done)
            page.set_input_files("input[type=file]", str(image))
            page.wait_for_function("() => window.__done !== null", polling="raf", timeout=60_000)
            latencies.append((page.evaluate("() => window.__done") - t0) / 1000.0)
            # Clear the upload so the next one is the only file (as a user checking one image at a time).
            page.locator("[data-testid=stFileChipDeleteBtn] button").first.click()
            page.wait_for_function(
                f"() => !new RegExp({done!r}).test(document.body.innerText)", polling="raf", timeout=30_000
            )
        page.close()
    server = [float(m) for m in re.findall(r"rendered in ([\d.]+) s", log_path.read_text())]
    return {"healthy": healthy_s, "ready": ready_s, "latency": latencies, "server": server, "log": log_path}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model to serve (default: the bundled one)")
    parser.add_argument(
        "--uploads", type=int, default=10, help="timed uploads per app (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"Chromium not found at {CHROMIUM}: apt-get install chromium (or set PNEUMOSCAN_CHROMIUM)")
        return 2
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="pneumoscan-app-bench-"))
    images = [tmp / f"xray-{i:02d}.png" for i in range(args.uploads + 1)]
    for i, path in enumerate(images):
        xray_image(224, seed=i, pneumonia=i % 2 == 1).save(path)
    baseline_script = tmp / "baseline_app.py"
    baseline_script.write_text(BASELINE_APP)

    def baseline(port: int) -> list[str]:
        return [sys.executable, "-m", "streamlit", "run", str(baseline_script), "--server.headless", "true",
                "--browser.gatherUsageStats", "false", "--server.port", str(port),
                "--server.address", "127.0.0.1"]  # fmt: skip

    pneumoscan = pneumoscan_app(args.model)
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            print("baseline: bare Streamlit uploader ...", flush=True)
            results["bare Streamlit uploader"] = measure(
                browser, "baseline", baseline, BASELINE_DONE, images, tmp
            )
            print("pneumoscan app ...", flush=True)
            results["pneumoscan app"] = measure(
                browser, "pneumoscan", pneumoscan, PNEUMOSCAN_DONE, images, tmp
            )
        finally:
            browser.close()

    base = results["bare Streamlit uploader"]
    print(
        f"\n{'app':<26} {'healthy':>8} {'ready':>7} {'upload->shown p50':>18} {'max':>7} "
        f"{'first':>7} {'server p50':>11} {'x baseline':>10}"
    )
    for name, r in results.items():
        warm = r["latency"][1:]  # the first upload also warms the page's components
        server = f"{statistics.median(r['server']):.3f}s" if r["server"] else "-"
        print(
            f"{name:<26} {r['healthy']:>7.1f}s {r['ready']:>6.1f}s {statistics.median(warm):>17.3f}s "
            f"{max(warm):>6.3f}s {r['latency'][0]:>6.3f}s {server:>11} "
            f"{statistics.median(warm) / statistics.median(base['latency'][1:]):>9.1f}x"
        )
    r = results["pneumoscan app"]
    p50 = statistics.median(r["latency"][1:])
    ok_latency, ok_ready = p50 <= TARGET_PREDICTION_S, r["ready"] <= TARGET_READY_S
    print(
        f"\nprediction shown {p50:.2f} s after upload, warm p50 (target <= {TARGET_PREDICTION_S:.0f} s): "
        f"{'MET' if ok_latency else 'MISSED'}"
    )
    print(
        f"app ready {r['ready']:.1f} s after start (target <= {TARGET_READY_S:.0f} s): "
        f"{'MET' if ok_ready else 'MISSED'}"
    )
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok_latency and ok_ready else 1


if __name__ == "__main__":
    sys.exit(main())
