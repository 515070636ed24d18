"""``pneumoscan site-check``: does the model hold on a site's own labelled images?

A site-check is an evaluation (:func:`pneumoscan.evaluation.evaluate.evaluate_folder`: metrics with
patient-bootstrap CIs at the stored threshold, the reliability figure, decisions, the scope guard's
flags, training images refused) followed by a plain verdict against the floors a screening use
needs (:class:`SiteFloors`):

- **adapt before use**: a point estimate misses its floor (for example "specificity 0.51
  [0.44, 0.57] at the stored threshold: adapt before use");
- **not sure yet**: every point estimate meets its floor but a confidence interval reaches below it;
  more labelled images would settle it;
- **fit for use**: every floor is met with its whole interval above it;
- **too few images**: too few images of a class to judge at all.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pneumoscan.config import DEFAULT_SEED
from pneumoscan.evaluation.evaluate import evaluate_folder

#: Fewest images of each class a verdict is given on.
MIN_CHECK_PER_CLASS = 20

ADAPT = "adapt before use"
UNSURE = "not sure yet: collect more labelled images"
FIT = "fit for use at the stored threshold"
TOO_FEW = "too few images to judge"


@dataclasses.dataclass(frozen=True)
class SiteFloors:
    """What the model must reach on the site at its stored threshold.

    Defaults: recall 0.95 (the model is chosen for 0.98 on held-out training images; a site is
    allowed a small loss), specificity 0.70 (below it more than three in ten healthy children are
    sent for review), ECE 0.10 (probabilities off by more than that are not worth showing).
    """

    recall: float = 0.95
    specificity: float = 0.70
    ece: float = 0.10


def _misses(name: str, value: float | None, floors: SiteFloors) -> bool:
    """Whether ``value`` of ``name`` (recall, specificity: a floor; ece: a ceiling) misses ``floors``."""
    limit = getattr(floors, name)
    return value is None or (value > limit if name == "ece" else value < limit)


def floor_misses(metrics: dict, floors: SiteFloors = SiteFloors()) -> list[str]:
    """The point estimates of ``metrics`` that miss ``floors``, as "specificity 0.29 (floor 0.70)"."""
    return [
        f"{label} {metrics[name]:.2f} (floor {getattr(floors, name):.2f})"
        for name, label in (("recall", "recall"), ("specificity", "specificity"), ("ece", "ECE"))
        if _misses(name, metrics.get(name), floors)
    ]


def site_verdict(report: dict, floors: SiteFloors = SiteFloors()) -> dict:
    """The verdict on an :func:`evaluate_folder` report: ``{"verdict", "reasons", "floors"}``."""
    cm = report.get("confusion_matrix") or {}
    n_normal = int(cm.get("tn", 0) + cm.get("fp", 0))
    n_pneumonia = int(cm.get("fn", 0) + cm.get("tp", 0))
    floors_json = dataclasses.asdict(floors)
    if min(n_normal, n_pneumonia) < MIN_CHECK_PER_CLASS:
        return {
            "verdict": TOO_FEW,
            "reasons": [
                f"{n_normal} NORMAL and {n_pneumonia} PNEUMONIA image(s) were scored; a verdict needs at "
                f"least {MIN_CHECK_PER_CLASS} of each class"
            ],
            "floors": floors_json,
        }
    ci = report.get("ci95") or {}
    missed, unsure, met = [], [], []
    for name in ("recall", "specificity"):
        value, floor = report.get(name), getattr(floors, name)
        low, high = (ci.get(name) or (None, None))[:2]
        text = f"{name} {value:.2f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")
        text += f" at the stored threshold (floor {floor:.2f})"
        if _misses(name, value, floors):
            missed.append(text)
        elif low is not None and low < floor:
            unsure.append(text)
        else:
            met.append(text)
    ece = report.get("ece")
    if ece is not None and _misses("ece", ece, floors):
        missed.append(f"calibration error (ECE) {ece:.3f} above {floors.ece:.2f}")
    if missed:
        verdict, reasons = ADAPT, missed
    elif unsure:
        verdict, reasons = UNSURE, unsure
    else:
        verdict, reasons = FIT, met
    return {"verdict": verdict, "reasons": reasons, "floors": floors_json}


def site_check(
    samples,
    predictor,
    *,
    out_dir: str | Path,
    floors: SiteFloors = SiteFloors(),
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> dict:
    """Evaluate the predictor on a site's labelled images and give a verdict.

    Writes everything :func:`evaluate_folder` writes into ``out_dir``, plus ``site_check.json``
    (the report with ``verdict``, ``reasons``, ``floors`` and ``summary``: one line).

    Raises
    ------
    TrainingDataOverlapError
        Some images are the model's training images (refused as ``evaluate`` refuses them).
    """
    report = evaluate_folder(samples, predictor, out_dir=out_dir, seed=seed, progress=progress)
    verdict = site_verdict(report, floors)
    report.update(verdict)
    report["summary"] = f"{'; '.join(verdict['reasons'])}: {verdict['verdict']}"
    if verdict["verdict"] == ADAPT:
        report["summary"] += " (pneumoscan adapt --data SITE_DIR --out SITE_MODEL_DIR)"
    (Path(out_dir) / "site_check.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
