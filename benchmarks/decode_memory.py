"""Peak memory and time of ``pneumoscan predict`` on hostile and very large files (issue 13).

Each case runs ``python -m pneumoscan.interfaces.cli predict <file> --quiet`` in its own subprocess and reads
that process's maximum RSS from ``os.wait4`` (``ru_maxrss``), with its wall time (interpreter, model
and TensorFlow start-up included). The decode alone is also timed in this process
(:func:`pneumoscan.data.imaging.decode_bytes`, best of 3), which is what the 5 s per file target is about.

Cases: a plain baseline (one ordinary 224-px JPEG: the cost of the process itself), every hostile
file of :mod:`pneumoscan.testing.corpus`, the largest images the limits allow (a 50 MP 16-bit PNG and an
uncompressed 50 MP 16-bit DICOM, a 48 MP RGB PNG), and the whole corpus as one folder.

Targets: max RSS <= 1.5 GB for the whole process and <= 5 s decode per file.

Run: ``python benchmarks/decode_memory.py [--model M.keras] [--only NAME ...]``.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]

RSS_LIMIT_MB = 1536
DECODE_LIMIT_S = 5.0


def large_files() -> dict[str, bytes]:
    """The largest inputs the limits let through: what a decode may cost at most."""
    from PIL import Image

    from pneumoscan.testing.dicom import dicom_dataset, dicom_to_bytes

    side = 7000  # 49 MP, just under the 50 MP limit
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 4095, side, dtype=np.float32)
    values = (ramp[None, :] + ramp[:, None] / 2).astype(np.uint16)
    values[::7] += rng.integers(0, 50, size=side, dtype=np.uint16)
    files = {}
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, "PNG", compress_level=1)
    files["large-49MP-16bit.png"] = buf.getvalue()
    files["large-49MP-16bit.dcm"] = dicom_to_bytes(dicom_dataset(values, bits_stored=12))
    rgb = np.stack([(values >> 4).astype(np.uint8)] * 3, axis=2)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "PNG", compress_level=1)
    files["large-49MP-RGB.png"] = buf.getvalue()
    return files


def run_predict(paths: list[Path], model: str | None) -> tuple[float, float, int]:
    """``(max RSS in MB, wall seconds, exit code)`` of one ``pneumoscan predict`` process."""
    cmd = [sys.executable, "-m", "pneumoscan.interfaces.cli", "predict", *map(str, paths), "--quiet"]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    # Linux carries the forking parent's peak RSS into a child's ru_maxrss across exec, so a child
    # of this (large) benchmark process would report at least the benchmark's own size. A tiny
    # GNU time process in between forks instead, and reports the predict process's own peak (%M).
    gnu_time = shutil.which("time") if Path("/usr/bin/time").exists() else None
    if gnu_time:
        cmd = [gnu_time, "-f", "MAXRSS_KB %M", *cmd]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    lines = [line for line in err.splitlines() if line.startswith("MAXRSS_KB ")]
    if lines:
        return int(lines[-1].split()[1]) / 1024, wall, proc.returncode
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, wall, proc.returncode


def decode_seconds(data: bytes, name: str) -> tuple[float, str]:
    """Best of 3 in-process decode times, and the outcome (``"decoded"`` or the refusal)."""
    from pneumoscan.data.imaging import ImageDecodeError, decode_bytes

    best, outcome = float("inf"), ""
    for _ in range(3):
        start = time.perf_counter()
        try:
            decode_bytes(data, name=name)
            outcome = "decoded"
        except ImageDecodeError as exc:
            outcome = exc.reason
        best = min(best, time.perf_counter() - start)
    return best, outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model for predict (default: the bundled one)")
    parser.add_argument("--only", nargs="*", help="run only these case names")
    args = parser.parse_args()

    from PIL import Image

    from pneumoscan.testing.corpus import hostile_files, write_corpus
    from pneumoscan.testing.synthetic import xray_like

    with tempfile.TemporaryDirectory(prefix="decode-memory-") as tmp:
        tmp = Path(tmp)
        buf = io.BytesIO()
        Image.fromarray(xray_like(224, 224, seed=1)).save(buf, "JPEG", quality=90)
        cases = {"baseline-224px.jpeg": buf.getvalue(), **hostile_files(), **large_files()}
        if args.only:
            cases = {k: v for k, v in cases.items() if k in args.only}
        rows = []
        for name, data in cases.items():
            path = tmp / "single" / name
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            seconds, outcome = decode_seconds(data, name)
            rss, wall, rc = run_predict([path], args.model)
            rows.append((name, len(data), rss, wall, seconds, outcome))
            path.unlink()
            print(f"  {name}: {rss:.0f} MB, {seconds:.3f} s", file=sys.stderr, flush=True)
        if not args.only:
            folder = tmp / "corpus"
            corpus = write_corpus(folder)
            count = sum(len(v) for v in corpus.values())
            size = sum(p.stat().st_size for p in folder.iterdir())
            rss, wall, rc = run_predict([folder], args.model)
            rows.append((f"whole corpus ({count} files)", size, rss, wall, float("nan"), f"exit code {rc}"))

    print(f"{'case':<32} {'file':>9} {'max RSS':>8} {'process':>8} {'decode':>8}  outcome")
    for name, size, rss, wall, seconds, outcome in rows:
        size_text = f"{size / 1024:.0f} kB" if size < 2**20 else f"{size / 2**20:.1f} MB"
        decode_text = "-" if seconds != seconds else f"{seconds:.3f}s"
        print(f"{name:<32} {size_text:>9} {rss:>6.0f}MB {wall:>7.1f}s {decode_text:>8}  {outcome[:70]}")
    baseline = rows[0][2] if rows and rows[0][0].startswith("baseline") else None
    worst_rss = max(r[2] for r in rows)
    worst_decode = max((r[4] for r in rows if r[4] == r[4]), default=0.0)
    print()
    if baseline is not None:
        print(
            f"baseline process (one 224-px JPEG): {baseline:.0f} MB; "
            f"worst case adds {worst_rss - baseline:.0f} MB"
        )
    ok = worst_rss <= RSS_LIMIT_MB and worst_decode <= DECODE_LIMIT_S
    print(
        f"verdict: {'PASS' if ok else 'FAIL'}: worst max RSS {worst_rss:.0f} MB (limit {RSS_LIMIT_MB} MB), "
        f"worst decode {worst_decode:.2f} s (limit {DECODE_LIMIT_S:.0f} s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
