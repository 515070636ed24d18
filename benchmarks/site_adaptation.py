"""What ``pneumoscan adapt`` buys at a simulated new site, and what ``drift`` and ``site-check`` say.

The protocol of issue 17's independent measurement, on a site simulated from the training folder
(:mod:`pneumoscan.testing.site`: training films re-framed to a tight central crop, the framing that
broke the released model on a new intake): the site's patients are split into halves A and B
(``--splits`` random splits); ``adapt`` on A, then the base and the adapted model are evaluated on B
(patients the adaptation never saw). Also: ``site-check``'s verdict on B, ``drift``'s verdicts on a
random split of the training folder, on the site and on the out-of-scope set, and the time ``adapt``
takes.

Honest labelling: the site's patients were in the model's training folder, uncropped; the figures
measure a change of acquisition, not a new population, and none of them chose anything in the model.

    python benchmarks/site_adaptation.py [--patients 150] [--splits 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pneumoscan.config import default_keras_model_path, default_serving_model_path
from pneumoscan.data.dataset import discover_split
from pneumoscan.evaluation.evaluate import evaluate_folder
from pneumoscan.evaluation.site import site_check
from pneumoscan.inference.drift import drift_summary, relative_distances
from pneumoscan.inference.predictor import Predictor
from pneumoscan.testing.site import pick_patients, write_simulated_site
from pneumoscan.training.adapt import adapt_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_parts import machine, machine_words  # noqa: E402  (the benchmarks' one machine record)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KEYS = ("roc_auc", "recall", "specificity", "ece")


def link_half(site: Path, patients: set[str], out: Path) -> Path:
    """``out/<CLASS>/`` holding links to the site's files of ``patients``."""
    from pneumoscan.data.dataset import patient_id

    for path in site.rglob("*.png"):
        if patient_id(path.name) in patients:
            (out / path.parent.name).mkdir(parents=True, exist_ok=True)
            (out / path.parent.name / path.name).symlink_to(path)
    return out


def one_split(site: Path, split: int, root: Path) -> dict:
    site_samples = discover_split(site, prefer="test")
    patients = sorted({s.patient_id for s in site_samples})
    random.Random(split).shuffle(patients)
    half = set(patients[: len(patients) // 2])
    a = link_half(site, half, root / f"split{split}" / "A")
    b = link_half(site, set(patients) - half, root / f"split{split}" / "B")
    started = time.perf_counter()
    report = adapt_model(
        discover_split(a, prefer="test"),
        default_keras_model_path(),
        root / f"split{split}" / "model",
        progress=False,
    )
    seconds = time.perf_counter() - started
    b_samples = discover_split(b, prefer="test")
    base = evaluate_folder(
        b_samples, Predictor(default_keras_model_path()), out_dir=root / "eval-base", progress=False
    )
    new = evaluate_folder(
        b_samples, Predictor(report["files"]["keras"]), out_dir=root / "eval-new", progress=False
    )
    check = site_check(
        b_samples, Predictor(default_serving_model_path()), out_dir=root / "check", progress=False
    )
    return {
        "n_A": report["site"]["n"],
        "n_B": len(b_samples),
        "adapt_seconds": round(seconds, 1),
        "adapt_stage_seconds": {k: round(v, 1) for k, v in report["timings"].items()},
        "base_on_B": {k: base[k] for k in KEYS},
        "adapted_on_B": {k: new[k] for k in KEYS},
        "adapt_estimate_from_A": {k: report["nested"][k] for k in KEYS},
        "site_check_on_B": check["summary"],
        "files_bytes": sum(Path(f).stat().st_size for f in report["files"].values()),
    }


def drift_verdicts(train, site_samples, site_files, root: Path) -> dict:
    predictor = Predictor(default_serving_model_path())
    ood = sorted(p for p in (DATA / "ood").rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    mild = write_simulated_site(site_samples, root / "mild", crop=0.85)
    sets = {
        "random training split": [s.path for s in random.Random(7).sample(train, len(site_files))],
        "same patients, milder crop (0.85)": sorted(mild.rglob("*.png")),
        "simulated site (crop 0.75)": site_files,
        "out-of-scope set": ood,
    }
    out = {}
    for name, files in sets.items():
        results = predictor.predict_paths(files, progress=False)
        out[name] = drift_summary(relative_distances(predictor.guard, results.embedding), predictor.guard)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=150, help="site patients per class")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    train = discover_split(DATA / "chest_xray" / "train", prefer="train")
    site_samples = pick_patients(train, args.patients, seed=11)
    measured_on = machine()
    print(f"machine: {machine_words(measured_on)}")
    print(
        f"simulated site: {len(site_samples)} training films of {args.patients} patients per class, re-framed"
    )
    with tempfile.TemporaryDirectory(prefix="pneumoscan-site-") as tmp:
        root = Path(tmp)
        site = write_simulated_site(site_samples, root / "site")
        splits = [one_split(site, k, root) for k in range(args.splits)]
        site_files = sorted(site.rglob("*.png"))
        drift = drift_verdicts(train, site_samples, site_files, root)
    print(f"\n{'':<26}" + "".join(f"{k:>13}" for k in KEYS))
    for label, key in (
        ("base, stored threshold", "base_on_B"),
        ("adapted on A, its threshold", "adapted_on_B"),
    ):
        values = np.array([[s[key][k] for k in KEYS] for s in splits])
        print(
            f"{label:<26}"
            + "".join(f"{m:>8.3f}±{sd:.3f}" for m, sd in zip(values.mean(0), values.std(0), strict=True))
        )
    print("(measured on half B of each split: patients the adaptation never saw; mean ± SD over splits)")
    for s in splits:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in s["adapt_stage_seconds"].items())
        print(
            f"adapt on {s['n_A']} images: {s['adapt_seconds']:.0f} s ({stages});"
            f" files {s['files_bytes'] / 1e6:.1f} MB"
        )
        estimate = ", ".join(f"{k} {v:.3f}" for k, v in s["adapt_estimate_from_A"].items())
        print(f"  adapt's own estimate from A (nested cross-fitting): {estimate}")
        print(f"  site-check on B: {s['site_check_on_B']}")
    for name, d in drift.items():
        print(f"drift, {name}: {d['summary']}")
    if args.json:
        args.json.write_text(
            json.dumps({"machine": measured_on, "splits": splits, "drift": drift}, indent=2, default=float)
        )


if __name__ == "__main__":
    main()
