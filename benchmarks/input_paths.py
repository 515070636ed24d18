"""One film, one answer? P(pneumonia) of the same training films brought in by 19 paths, and 3 lossy ones.

    python benchmarks/input_paths.py [--model M] [--per-class 6] [--least-sure 24] [--random 120]
                                     [--sweep N] [--no-fast-path]

Each film (the first ``--per-class`` files of each class of the training folder, sorted by name) is
scored as its file and as the 18 files of :func:`pneumoscan.testing.variants.xray_variants` (8- and
16-bit PNG, 16-bit TIFF, lossless WebP, 8- and 12-bit DICOM, MONOCHROME1, signed with a rescale, RLE
and JPEG 2000, a colour JPEG, a JPEG stored on its side with an EXIF orientation, resamplings to
1024 and 2048 px as PNG, JPEG and DICOM, a half-size copy), each decoded from bytes as every surface
does. Prints each film's probabilities and the spread (max - min) per film, then the largest and the
mean spread, how many films exceed issue 16's bound of 0.05, and each path's mean and largest move
from the file.

Then the same for the ``--least-sure`` films the model is least sure of (all training films scored,
those with P(pneumonia) nearest 0.5 kept; scored by the ensemble with any fast path off, so that a
run with ``--no-fast-path`` and one without score the same films). The first films of each class are
mostly scored near 0 or 1, where the model's answer hardly moves whatever the input does: their
spread flatters. A new intake's films are not so sure (the issue's example film scored 0.39), and
there the same change of the input moves P(pneumonia) several times as far. For them it also prints
how far changes of the model input that no path makes and no eye sees move the answer (Gaussian
noise of SD 0.5 grey levels, a shift by one pixel), and the spread over the paths again with
test-time augmentation (``tta``: the image and three 92 % crops averaged, four times the cost): how
much of the spread is the model's own roughness near 0.5 rather than any path's doing.

Every film also says whether its *decision* (no pneumonia / uncertain / pneumonia suspected, the
stored band) is the same on every path. Films near 0.5 lie inside the band, where every path says
"uncertain"; a decision flips only for films near the band's edges. How often a film chosen at random
is caught either way, the spread above 0.05 or a decision that depends on the path, is what
``--random`` N says: the same figures for a seeded random sample of N training films.

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
#: Paths that keep less of the film than the file: a half-size copy holds a quarter of its pixels.
#: Issue 16's paths (a larger original, 16 bits, DICOM, MONOCHROME1) lose nothing; the spread is
#: also given without these.
SHRINKING_PATHS = {"down_half_png"}
TRAIN = REPO.parent / "shared" / "data" / "chest_xray" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="default: the bundled LiteRT export (what predict uses)")
    parser.add_argument("--data", type=Path, default=TRAIN)
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument(
        "--least-sure", type=int, default=24, help="films the model is least sure of (0: skip that part)"
    )
    parser.add_argument(
        "--random", type=int, default=120, help="a seeded random sample of training films (0: skip that part)"
    )
    parser.add_argument("--sweep", type=int, default=0, help="films per class for the quality sweep")
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="the ensemble answers every image, even where the sidecar names a fast path",
    )
    args = parser.parse_args()

    from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH
    from pneumoscan.inference.predictor import Predictor

    predictor = Predictor(args.model or DEFAULT_LITERT_MODEL_PATH, fast_path=not args.no_fast_path)
    fast = predictor.fast_path
    described = (
        f"{fast.file.name} (delta {fast.delta}, blend {fast.blend}; above the band {fast.delta_above}, "
        f"{fast.blend_above})"
        if fast
        else "none"
    )
    print(f"model: {predictor.model_path}, fast path: {described}")
    films = []
    for cls in ("NORMAL", "PNEUMONIA"):
        films += sorted((args.data / cls).iterdir())[: args.per_class]
    print(f"\nThe first {args.per_class} films of each class, by name")
    path_spreads(predictor, films, lossy=True)
    if args.least_sure:
        # Chosen by the ensemble's own answer (its fast path off), so that runs with and without
        # the fast path score the same films.
        chooser = (
            predictor if predictor.fast_path is None else Predictor(predictor.model_path, fast_path=False)
        )
        files, p = score_training_films(chooser, args.data)
        films = least_sure(files, p, args.least_sure)
        print(f"\nThe {len(films)} films the model is least sure of (P(pneumonia) nearest 0.5)")
        path_spreads(predictor, films, lossy=False)
        roughness(predictor, films)
    if args.random:
        files = training_files(args.data)
        picked = np.random.default_rng(5).choice(len(files), args.random, replace=False)
        print(f"\n{args.random} training films picked at random (seed 5): how often a film is caught")
        path_spreads(predictor, [files[i] for i in sorted(picked)], lossy=False, quiet=True)
    if args.sweep:
        quality_sweep(predictor, args.data, args.sweep)


def path_spreads(predictor, films: list[Path], *, lossy: bool, quiet: bool = False) -> None:
    """Each film's P(pneumonia) and decision as its file and as every path of ``xray_variants``; the
    spread per film (not with ``quiet``), the largest and mean spread against the bound, the films
    whose decision depends on the path, each path's mean and largest move from the file; with
    ``lossy``, the lossy re-encodings' largest moves and how many the guard flags."""
    from pneumoscan.data.imaging import decode_bytes, read_image
    from pneumoscan.testing.variants import lossy_variants, xray_variants

    spreads, kept_spreads, moves, lossy_moves, lossy_flagged, split = [], [], {}, {}, {}, []
    for film in films:
        image = read_image(film)
        answers = {"file": predictor.predict_image(image)}
        for name, data in xray_variants(image.gray).items():
            answers[name] = predictor.predict_image(decode_bytes(data, name=name))
        p = {k: a.p_pneumonia for k, a in answers.items()}
        for name in p.keys() - {"file"}:
            moves.setdefault(name, []).append(abs(p[name] - p["file"]))
        spread = max(p.values()) - min(p.values())
        spreads.append(spread)
        kept = [v for k, v in p.items() if k not in SHRINKING_PATHS]
        kept_spreads.append(max(kept) - min(kept))
        decisions = {a.decision for a in answers.values()}
        if len(decisions) > 1:
            split.append(film.name)
        if not quiet:
            print(
                f"{film.name[:28]:<28} spread {spread:.4f}  {' / '.join(sorted(decisions))}  "
                + " ".join(f"{k}={v:.3f}" for k, v in p.items())
            )
        for name, data in lossy_variants(image.gray).items() if lossy else ():
            answer = predictor.predict_bytes(data, name=name)
            lossy_moves[name] = max(lossy_moves.get(name, 0.0), abs(answer.p_pneumonia - p["file"]))
            lossy_flagged[name] = lossy_flagged.get(name, 0) + (not answer.in_scope)
    widest = max(moves, key=lambda k: max(moves[k]))
    print(
        f"{len(films)} films x {len(p)} paths: largest spread {max(spreads):.4f}, "
        f"mean {np.mean(spreads):.4f}, "
        f"above 0.05 {sum(s > 0.05 for s in spreads)} of {len(films)} "
        f"(bound 0.05: {'PASS' if max(spreads) <= 0.05 else 'FAIL'}); "
        f"farthest from its file: {widest} ({max(moves[widest]):.4f}); without "
        f"{', '.join(sorted(SHRINKING_PATHS))}: largest {max(kept_spreads):.4f}, "
        f"mean {np.mean(kept_spreads):.4f}, "
        f"above 0.05 {sum(s > 0.05 for s in kept_spreads)} of {len(films)}; "
        f"the same decision on every path: {len(films) - len(split)} of {len(films)} films"
        + (f" (not: {', '.join(split)})" if split else "")
    )
    print(
        "move from the file per path, mean / largest: "
        + ", ".join(
            f"{k} {np.mean(v):.4f} / {max(v):.4f}"
            for k, v in sorted(moves.items(), key=lambda kv: -np.mean(kv[1]))
            if max(v) > 0
        )
    )
    if lossy:
        print(
            "lossy re-encodings, largest |P - P(file)| (a finding, not the bound), and how many films "
            "the guard flags: "
            + ", ".join(
                f"{k} {v:.4f} ({lossy_flagged[k]} of {len(films)} flagged)" for k, v in lossy_moves.items()
            )
        )


def training_files(data: Path) -> list[Path]:
    """Every film of the training folder, normals first."""
    from pneumoscan.data.imaging import list_input_files

    return list_input_files(data / "NORMAL") + list_input_files(data / "PNEUMONIA")


def score_training_films(predictor, data: Path) -> tuple[list[Path], np.ndarray]:
    """Every training film and its P(pneumonia), as ``predict`` scores them."""
    files = training_files(data)
    return files, np.asarray(predictor.predict_paths(files, progress=False).p_pneumonia)


def least_sure(files: list[Path], p: np.ndarray, n: int) -> list[Path]:
    """The ``n`` films whose P(pneumonia) is nearest 0.5 (smallest |logit|, the same order): where a
    path's small change of the input moves the answer most, and where a new intake's films lie."""
    return [files[i] for i in np.argsort(np.abs(np.asarray(p, np.float64) - 0.5), kind="stable")[:n]]


def film_views(image, size: int) -> np.ndarray:
    """``(19, size, size, 1)``: a decoded film as the model sees it from its file and from each
    path of :func:`~pneumoscan.testing.variants.xray_variants`, each decoded from bytes."""
    from pneumoscan.data.imaging import decode_bytes, preprocess
    from pneumoscan.testing.variants import xray_variants

    paths = xray_variants(image.gray).items()
    return np.stack(
        [preprocess(image, size)] + [preprocess(decode_bytes(data, name=k), size) for k, data in paths]
    )


def roughness(predictor, films: list[Path], draws: int = 4, seed: int = 0) -> None:
    """How far changes of the model input that no eye sees move P(pneumonia), and the spread over the
    paths when test-time augmentation averages four views: the model's own roughness, not a path's."""
    from pneumoscan.data.imaging import preprocess, read_image

    rng = np.random.default_rng(seed)
    noise, shift, tta_spreads = [], [], []
    for film in films:
        image = read_image(film)
        x = preprocess(image, predictor.image_size)
        noisy = [np.clip(np.round(x + rng.normal(0, 0.5, x.shape)), 0, 255) for _ in range(draws)]
        padded = np.pad(x, ((1, 0), (1, 0), (0, 0)), mode="edge")  # edge pixels repeated, nothing wraps
        shifted = [padded[:-1, 1:], padded[1:, :-1]]
        p = predictor.predict_proba(np.stack([x, *noisy, *shifted]).astype(np.uint8))
        noise += list(np.abs(p[1 : 1 + draws] - p[0]))
        shift += list(np.abs(p[1 + draws :] - p[0]))
        p_tta = predictor.predict_proba(film_views(image, predictor.image_size), tta=True)
        tta_spreads.append(float(p_tta.max() - p_tta.min()))
    print(
        f"the same {len(films)} films, the model input itself changed: Gaussian noise of SD 0.5 grey "
        f"levels ({draws} seeded draws each) moves P(pneumonia) by mean {np.mean(noise):.4f}, "
        f"largest {max(noise):.4f}; "
        f"a shift by one pixel (down or right) by mean {np.mean(shift):.4f}, largest {max(shift):.4f}"
    )
    t = np.asarray(tta_spreads)
    print(
        f"with test-time augmentation (4 views averaged, 4x the cost), spread over the same paths: "
        f"largest {t.max():.4f}, mean {t.mean():.4f}, above 0.05 {int((t > 0.05).sum())} of {len(t)}"
    )


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
            decoded = decode_bytes(encoders[codec][0](gray, q), name=f"q{q}.{codec.lower()}")
            answer = predictor.assess(decoded)  # what predict_bytes does, with the decode kept
            moves[codec, q].append(abs(answer.p_pneumonia - base))
            estimates[codec, q].append(decoded.lossy_quality)
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
