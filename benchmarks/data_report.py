"""Benchmark: time :func:`pneumoscan.data.report.build_report` on a real dataset against a plain baseline.

The baseline, measured in the same run over the same files, is the least any scan must do: a
single-threaded loop of ``PIL.Image.open`` + ``load`` + sha256 of the file bytes. The report does
more (grey conversion, colourfulness, statistics, figures) but decodes in threads.

Usage::

    python benchmarks/data_report.py [DATA_DIR] [--out OUT] [--target 60]

``DATA_DIR`` defaults to ``../shared/data/chest_xray`` beside the repository (or
``$PNEUMOSCAN_SHARED_DATA``). Exit status 0 when the report meets the target, 1 when not.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from pneumoscan.data.dataset import discover
from pneumoscan.data.report import build_report

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(
    os.environ.get("PNEUMOSCAN_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data" / "chest_xray"
)
TARGET_S = 60.0

log = logging.getLogger("benchmarks.data_report")


def baseline(paths: list[Path]) -> float:
    """Seconds for a single-threaded open + load + sha256 of every file (unreadable ones skipped)."""
    start = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except Exception:  # the baseline only times; bad files are the report's job
            pass
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        default=DEFAULT_DATA,
        help="dataset root or split folder (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: a temporary one)")
    parser.add_argument(
        "--target", type=float, default=TARGET_S, help="target seconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if not args.data_dir.is_dir():
        log.error("data folder not found: %s (pass a path or set PNEUMOSCAN_SHARED_DATA)", args.data_dir)
        return 2
    paths = [s.path for samples in discover(args.data_dir).values() for s in samples]
    n = len(paths)
    log.info("%d files in %s; %d CPU(s)", n, args.data_dir, os.cpu_count() or 1)

    # Warm the OS file cache once so that neither measurement pays for the first cold read.
    for path in paths:
        path.read_bytes()

    base_s = baseline(paths)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "report"
        start = time.perf_counter()
        report = build_report(args.data_dir, out_dir=out, progress=False)
        report_s = time.perf_counter() - start

    log.info("baseline (1 thread, PIL open+load+sha256): %6.2f s  %7.1f images/s", base_s, n / base_s)
    log.info("build_report (decode, stats, figures):      %6.2f s  %7.1f images/s", report_s, n / report_s)
    log.info("ratio report / baseline: %.2fx", report_s / base_s)
    log.info("counts: %s", report["splits"])
    ok = report_s <= args.target
    log.info("%s: %.1f s vs target %.0f s", "PASS" if ok else "FAIL", report_s, args.target)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
