"""One film, one answer? P(pneumonia) of the same training films brought in by 19 paths, and 3 lossy ones.

    python benchmarks/input_paths.py [--model M] [--per-class 6]

Each film (the first ``--per-class`` files of each class of the training folder, sorted by name) is
scored as its file and as the 18 files of :func:`pneumoscan.testing.variants.xray_variants` (8- and
16-bit PNG, 16-bit TIFF, lossless WebP, 8- and 12-bit DICOM, MONOCHROME1, signed with a rescale, RLE
and JPEG 2000, a colour JPEG, a JPEG stored on its side with an EXIF orientation, resamplings to
1024 and 2048 px as PNG, JPEG and DICOM, a half-size copy), each decoded from bytes as every surface
does. Prints each film's probabilities and the spread (max - min) per film, then the largest and the
mean spread, and the path that set the largest. Issue 16's bound: 0.05.

Then, apart, the largest move from the file's own P(pneumonia) under each of
:func:`~pneumoscan.testing.variants.lossy_variants` (JPEG at quality 50, lossy WebP at 80 and 50):
new compression artefacts, which say how much the model reads texture; not part of the bound. It
also counts the films the scope guard flags as compressed more heavily than the training images
(``pneumoscan.inference.scope.MIN_QUALITY``: a JPEG below quality 70, a lossy WebP below 84).

``--sweep N`` then re-encodes N films of each class (a seeded random sample) as JPEGs of quality
50, 55, ..., 90 and as lossy WebPs of quality 60, 65, ..., 100 and prints, per codec and quality,
how far P(pneumonia) moved from the film's file (largest, 90th percentile, mean, share above
0.05), the range of the quality the guard read back from the files, and how many the scope guard
flagged, for any reason: what the guard's bounds (``pneumoscan.inference.scope.MIN_QUALITY``)
were set from.

These are training images, which the released members trained on: the figure is about consistency
across paths, not about accuracy. Needs ``../shared`` (the training folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "chest_xray" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="default: the bundled LiteRT export (what predict uses)")
    parser.add_argument("--data", type=Path, default=TRAIN)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--sweep", type=int, default=0, help="films per class for the JPEG quality sweep")
    args = parser.parse_args()

    from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH
    from pneumoscan.data.imaging import read_image
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.testing.variants import lossy_variants, xray_variants

    predictor = Predictor(args.model or DEFAULT_LITERT_MODEL_PATH)
    print(f"model: {predictor.model_path}")
    films = []
    for cls in ("NORMAL", "PNEUMONIA"):
        films += sorted((args.data / cls).iterdir())[: args.per_class]
    spreads, lossy_moves, lossy_flagged = [], {}, {}
    widest = ("", 0.0)  # the path farthest from its film's file, over all films
    for film in films:
        gray = read_image(film).gray
        p = {"file": float(predictor.predict_paths([film], progress=False).p_pneumonia[0])}
        for name, data in xray_variants(gray).items():
            p[name] = predictor.predict_bytes(data, name=name).p_pneumonia
            if abs(p[name] - p["file"]) > widest[1]:
                widest = (name, abs(p[name] - p["file"]))
        spread = max(p.values()) - min(p.values())
        spreads.append(spread)
        print(f"{film.name[:28]:<28} spread {spread:.4f}  " + " ".join(f"{k}={v:.3f}" for k, v in p.items()))
        for name, data in lossy_variants(gray).items():
            answer = predictor.predict_bytes(data, name=name)
            move = abs(answer.p_pneumonia - p["file"])
            lossy_moves[name] = max(lossy_moves.get(name, 0.0), move)
            lossy_flagged[name] = lossy_flagged.get(name, 0) + (not answer.in_scope)
    print(
        f"\n{len(films)} films x {len(p)} paths: largest spread {max(spreads):.4f}, "
        f"mean {np.mean(spreads):.4f} (bound 0.05: {'PASS' if max(spreads) <= 0.05 else 'FAIL'}); "
        f"farthest from its file: {widest[0]} ({widest[1]:.4f})"
    )
    print(
        "lossy re-encodings, largest |P - P(file)| (a finding, not the bound), and how many films the "
        "guard flags: "
        + ", ".join(
            f"{k} {v:.4f} ({lossy_flagged[k]} of {len(films)} flagged)" for k, v in lossy_moves.items()
        )
    )
    if args.sweep:
        quality_sweep(predictor, args.data, args.sweep)


def quality_sweep(predictor, data: Path, per_class: int, seed: int = 3) -> None:
    """Re-encodings of a seeded sample of films at falling quality, as JPEG and as lossy WebP: how
    far P(pneumonia) moves, how many the guard flags, and the quality the guard read from the file."""
    from pneumoscan.data.imaging import decode_bytes, read_image
    from pneumoscan.testing.variants import jpeg_bytes, webp_bytes

    rng = np.random.default_rng(seed)
    films = []
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((data / cls).iterdir())
        films += [files[i] for i in rng.choice(len(files), per_class, replace=False)]
    encoders = {"JPEG": (jpeg_bytes, range(50, 91, 5)), "WebP": (webp_bytes, range(60, 101, 5))}
    grid = [(codec, q) for codec, (_, qualities) in encoders.items() for q in qualities]
    moves, estimates = ({key: [] for key in grid} for _ in range(2))
    flagged = dict.fromkeys(grid, 0)
    for film in films:
        gray = read_image(film).gray
        base = float(predictor.predict_paths([film], progress=False).p_pneumonia[0])
        for codec, q in grid:
            encoded = encoders[codec][0](gray, q)
            answer = predictor.predict_bytes(encoded, name=f"q{q}.{codec.lower()}")
            moves[codec, q].append(abs(answer.p_pneumonia - base))
            estimates[codec, q].append(decode_bytes(encoded).lossy_quality)
            flagged[codec, q] += not answer.in_scope
    print(f"\nQuality sweep, {len(films)} films ({per_class} per class, seed {seed}): |P - P(file)|")
    for codec, q in grid:
        m, e = np.asarray(moves[codec, q]), np.asarray(estimates[codec, q])
        print(
            f"  {codec} {q:3d}: largest {m.max():.4f}, p90 {np.percentile(m, 90):.4f}, mean {m.mean():.4f}, "
            f"above 0.05 {np.mean(m > 0.05):.3f}; quality read from the file {e.min()}..{e.max()}; "
            f"out of scope (any reason) {flagged[codec, q]} of {len(films)}"
        )


if __name__ == "__main__":
    main()
