"""Does one film keep one decision over its file paths, under each fast-path rule?

    python benchmarks/fast_path_paths.py [--rules 0.10:0.15,0.10:0.15:0.20:0.25,...]
        [--least-sure 24] [--random 120] [--cache runs/fast_path_paths.npz] [--json FILE]

Why: ``benchmarks/input_paths.py`` found that the fast path of the release (one averaged body,
the ensemble in and near the uncertain band) made the decision depend on the file's path for 3 of
the 24 training films the ensemble is least sure of, against none with the ensemble alone: near the
band the body errs upwards (up to 0.3), so a film the ensemble calls uncertain on every path can be
"pneumonia suspected" from the body on some. A rule that hands over a wider stretch above the band
(``delta:blend:delta_above:blend_above``, as :class:`pneumoscan.inference.predictor.FastPath` takes
them) should end that, at a higher share of images for the ensemble. This script measures both for
several rules at once, from raw rows computed once:

- the 24 least-sure films (P(pneumonia) of the ensemble nearest 0.5) and 120 films at random (seed
  5), each as its file and the 18 paths of :func:`pneumoscan.testing.variants.xray_variants` (as
  ``input_paths.py`` chooses and makes them): largest and mean spread of P(pneumonia), films above
  issue 16's 0.05, films with the same decision on every path;
- the whole training folder: the share of films the ensemble answers (wholly or in part) and the
  decisions that differ from the ensemble's.

The fast and the full rows come from the shipped LiteRT files (the export's runtimes), mixed as
:class:`~pneumoscan.inference.backends.CascadeBackend` mixes them. These are training films, most
trained on by two members: consistency, not accuracy; the rule chosen here is then measured on
images no member trained on by ``benchmarks/fast_path.py``. Needs ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_path import parse_rule, rule_fields, rule_words  # noqa: E402
from input_paths import film_views, least_sure, training_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "chest_xray" / "train"


def raw_rows(predictor, data: Path, n_least: int, n_random: int) -> dict:
    """Fast and full raw rows of every training film and of the chosen films' paths."""
    from pneumoscan.data.imaging import load_image, read_image

    fast, full, size = predictor.runtime.fast, predictor.runtime.full, predictor.image_size
    files = training_files(data)
    x = np.stack([load_image(f, size) for f in files])
    rows = {"folder_fast": fast.run(x), "folder_full": full.run(x)}
    p = predictor.details_of(rows["folder_full"]).p_pneumonia
    picked = np.random.default_rng(5).choice(len(files), n_random, replace=False)
    for name, films in (
        ("least_sure", least_sure(files, p, n_least)),
        ("random", [files[i] for i in sorted(picked)]),
    ):
        views = np.stack([film_views(read_image(film), size) for film in films])
        flat = views.reshape(-1, *views.shape[2:])
        rows[f"{name}_fast"], rows[f"{name}_full"] = fast.run(flat), full.run(flat)
        rows[f"{name}_paths"] = np.array(views.shape[1])
    return rows


def answers(
    predictor, fast_rows: np.ndarray, full_rows: np.ndarray, rule
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(pneumonia), decision and the ensemble's weight under ``rule`` (None: the ensemble alone)."""
    from pneumoscan.inference.backends import mix_rows
    from pneumoscan.inference.decision import decide_many

    band = predictor.band
    if rule is None:
        w = np.ones(len(full_rows))
    else:
        fast = predictor.details_of(fast_rows)
        w = rule.ensemble_weight(fast.p_pneumonia, band=band, spread=fast.spread)
    details = predictor.details_of(mix_rows(fast_rows, full_rows, w))
    decisions = decide_many(
        details.p_pneumonia, threshold=predictor.threshold, band=band, spread=details.spread
    )
    return details.p_pneumonia, decisions, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=REPO / "models" / "pneumoscan-mobilenetv2-litert.tflite"
    )
    parser.add_argument("--data", type=Path, default=TRAIN)
    parser.add_argument(
        "--rules",
        default="0.10:0.15,0.10:0.15:0.15:0.20,0.10:0.15:0.20:0.25,0.10:0.15:0.25:0.30,0.10:0.15:0.30:0.35",
        help="delta:blend[:delta_above:blend_above], comma-separated (default: %(default)s)",
    )
    parser.add_argument("--least-sure", type=int, default=24)
    parser.add_argument("--random", type=int, default=120)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "fast_path_paths.npz")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no training data at {args.data}: this benchmark needs ../shared", file=sys.stderr)
        return 2

    from pneumoscan.inference.predictor import Predictor

    predictor = Predictor(args.model)
    if predictor.fast_path is None:
        raise SystemExit(f"{args.model} has no fast path (pneumoscan export --fast-path)")
    t0 = time.perf_counter()
    if args.cache.is_file():
        rows = dict(np.load(args.cache))
        print(f"raw rows from {args.cache} (delete it to recompute)")
    else:
        rows = raw_rows(predictor, args.data, args.least_sure, args.random)
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.cache, **rows)
    _, folder_says, _ = answers(predictor, rows["folder_fast"], rows["folder_full"], None)
    report = []
    for rule in [None] + [parse_rule(item) for item in args.rules.split(",") if item]:
        entry = {"rule": "the ensemble alone" if rule is None else rule_words(rule)}
        entry.update({} if rule is None else rule_fields(rule))
        for name in ("least_sure", "random"):
            p, says, _ = answers(predictor, rows[f"{name}_fast"], rows[f"{name}_full"], rule)
            paths = int(rows[f"{name}_paths"])
            p, says = p.reshape(-1, paths), says.reshape(-1, paths)
            spread = p.max(axis=1) - p.min(axis=1)
            entry[name] = {
                "films": len(spread),
                "largest_spread": float(spread.max()),
                "mean_spread": float(spread.mean()),
                "above_0.05": int((spread > 0.05).sum()),
                "same_decision": int(sum(len(set(r.tolist())) == 1 for r in says)),
            }
        if rule is not None:
            _, says, w = answers(predictor, rows["folder_fast"], rows["folder_full"], rule)
            entry["folder"] = {
                "films": len(says),
                "answered_by_the_ensemble": float((w > 0).mean()),
                "decisions_differ": int((says != folder_says).sum()),
            }
        report.append(entry)
        line = f"{entry['rule']}:"
        for name in ("least_sure", "random"):
            r = entry[name]
            line += (
                f" {name} {r['films']} films x {int(rows[f'{name}_paths'])} paths: spread largest "
                f"{r['largest_spread']:.3f}, mean {r['mean_spread']:.4f}, above 0.05 {r['above_0.05']}, "
                f"same decision {r['same_decision']};"
            )
        if "folder" in entry:
            f = entry["folder"]
            line += (
                f" training folder: the ensemble answered {f['answered_by_the_ensemble']:.1%}, "
                f"{f['decisions_differ']} of {f['films']} decisions differ from the ensemble's"
            )
        print(line, flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
