"""Decoding cost per file, the figure docs/scaling.md projects archives from.

Times file bytes -> the model's input (:func:`pneumoscan.data.imaging.decode_bytes` then
:func:`~pneumoscan.data.imaging.preprocess`: sniffing, decoding, the stretch, the resize and the
blur), one file at a time on one thread, p50 over ``--reps`` calls after one warm-up call, for:

- a real 224-px training JPEG re-encoded in memory (the archive of this dataset's kind);
- a full-size frontal film as a 2048 x 2500, 12-bit-stored, 16-bit-allocated uncompressed DICOM
  (10.2 MB), made from a real training film resized up (``pneumoscan.testing.dicom``), else a
  synthetic one;

beside a plain baseline measured in the same run: Pillow's own decode and resize of the same JPEG
(``Image.open(...).convert("L").resize``), and NumPy reading the DICOM's raw pixel bytes
(``np.frombuffer`` of the pixel data: the least any decoder must do).

Run: ``python benchmarks/decode_speed.py [--reps 10]``. Prints the machine with every figure.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_parts import machine, machine_words  # noqa: E402  (the benchmarks' one machine record)

SHARED_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray" / "train"


def p50_ms(fn, reps: int) -> float:
    fn()  # warm-up: first-call imports and allocations are not the per-file cost
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def source_film() -> tuple[np.ndarray, str]:
    films = sorted((SHARED_TRAIN / "NORMAL").glob("*.jpeg"))[:1]
    if films:
        return np.asarray(Image.open(films[0]).convert("L")), f"{films[0].name} (training folder)"
    from pneumoscan.testing.synthetic import xray_like

    return xray_like(1024, 1024), "a synthetic film (no training folder beside the checkout)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="timed calls per case (default: %(default)s)")
    args = parser.parse_args(argv)

    from pneumoscan.data.imaging import decode_bytes, preprocess
    from pneumoscan.testing.dicom import dicom_bytes

    film, source = source_film()
    small = io.BytesIO()
    Image.fromarray(film).resize((224, 224), Image.BILINEAR).save(small, "JPEG", quality=90)
    jpeg = small.getvalue()
    full = np.asarray(Image.fromarray(film).resize((2048, 2500), Image.BILINEAR), dtype=np.uint16) * 16
    dicom = dicom_bytes(full)

    def ours(data: bytes, name: str):
        return lambda: preprocess(decode_bytes(data, name=name), 224)

    cases = {
        "224-px JPEG": (
            ours(jpeg, "x.jpeg"),
            lambda: Image.open(io.BytesIO(jpeg)).convert("L").resize((224, 224)),
        ),
        f"2048 x 2500 16-bit DICOM ({len(dicom) / 1e6:.1f} MB)": (
            ours(dicom, "x.dcm"),
            lambda: np.frombuffer(dicom[-full.nbytes :], dtype="<u2").reshape(full.shape).copy(),
        ),
    }
    print(f"machine: {machine_words(machine())}")
    print(f"film: {source}; p50 of {args.reps} calls on one thread, after one warm-up")
    for name, (pneumoscan_path, baseline) in cases.items():
        a, b = p50_ms(pneumoscan_path, args.reps), p50_ms(baseline, args.reps)
        print(f"  {name}: file -> model input {a:.2f} ms; plain baseline {b:.2f} ms ({a / b:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
