"""The gate a distilled student must pass before ``pneumoscan distill`` writes it.

This module owns what the gate scores and how: the shifted views (:data:`GATE_SHIFTS`, made from
the decoded film before preprocessing, so they take the path a real film of that kind would), the
out-of-scope radiographs (:func:`ood_images`), the teacher's and the student's answers on cached
stem features (:class:`GateSet`, :func:`score_student`) and the comparison (:func:`gate`): ROC AUC
of both on the held-out images and on their shifted views, three-outcome decision agreement
(:func:`~pneumoscan.inference.decision.decide_many`, the teacher's threshold and band) on the images
no teacher member trained on, max |dp|, and the correlation of the predicted and the real spread;
and the serving check of the saved student (:func:`serving_check`).
:mod:`pneumoscan.training.distill` builds the sets and acts on the verdict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pneumoscan.data.imaging import ImageDecodeError, preprocess, read_image
from pneumoscan.models.artifacts import ModelMetadata


def _load_cropped(path: Path, size: int) -> np.ndarray:
    gray = read_image(path).gray
    h, w = gray.shape
    dy, dx = round(h * 0.075), round(w * 0.075)
    return preprocess(np.ascontiguousarray(gray[dy : h - dy, dx : w - dx]), size)


def _load_resampled(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    gray = Image.fromarray(read_image(path).gray, "L").resize((1024, 1024), Image.Resampling.LANCZOS)
    return preprocess(np.asarray(gray), size)


_GAMMA = np.round(255.0 * (np.arange(256) / 255.0) ** 1.5).astype(np.uint8)


def _load_darker(path: Path, size: int) -> np.ndarray:
    return preprocess(_GAMMA[read_image(path).gray], size)


#: Shifted views of the gate, made from the decoded film before preprocessing: name -> loader.
GATE_SHIFTS: dict[str, Callable[[Path, int], np.ndarray]] = {
    "tight crop (central 85 %)": _load_cropped,
    "1024-px resample round trip": _load_resampled,
    "darker (gamma 1.5)": _load_darker,
}


def ood_images(folder: str | Path, size: int, *, progress: bool = False) -> tuple[np.ndarray, list[str]]:
    """The radiographs of an out-of-scope folder (tree), preprocessed; files the pixel checks
    refuse (no probabilities for either model) and unreadable files are left out."""
    from pneumoscan.inference.scope import check_image

    files = [p for p in sorted(Path(folder).rglob("*")) if p.is_file()]
    files = [p for p in files if p.suffix.lower() not in (".csv", ".md", ".txt", ".json")]
    x, kept = [], []
    for path in files:
        try:
            image = read_image(path)
        except ImageDecodeError:
            continue
        if check_image(image).radiograph:
            x.append(preprocess(image, size))
            kept.append(str(path.relative_to(folder)))
    return (np.stack(x) if x else np.zeros((0, size, size, 1), np.uint8)), kept


@dataclasses.dataclass
class GateSet:
    """One kind of gate image, on cached stem features, with the teacher's answers.

    ``y`` is None where there are no labels (the out-of-scope set); ``never`` marks the images no
    member trained on; ``student_p`` and ``student_spread`` are filled in once there is a student.
    """

    name: str
    features: np.ndarray
    y: np.ndarray | None
    never: np.ndarray
    teacher_p: np.ndarray
    teacher_spread: np.ndarray
    student_p: np.ndarray | None = None
    student_spread: np.ndarray | None = None


def score_student(top, sets: list[GateSet]) -> None:
    """Fill in each set's ``student_p`` and ``student_spread`` from its cached features."""
    for gate_set in sets:
        outs = [
            top(gate_set.features[i : i + 256].astype(np.float32), training=False)
            for i in range(0, len(gate_set.features), 256)
        ]
        gate_set.student_p = np.concatenate([np.asarray(o[0]).reshape(-1) for o in outs]).astype(np.float64)
        gate_set.student_spread = np.concatenate([np.asarray(o[1]).reshape(-1) for o in outs]).astype(
            np.float64
        )


def _auc(y, p) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if y is not None and len(set(np.asarray(y).tolist())) == 2 else None


def _compare(y, tp, ts, sp, ss, decide) -> dict:
    """Teacher vs student on one group of images."""
    auc_t, auc_s = _auc(y, tp), _auc(y, sp)
    dp = np.abs(sp - tp)
    corr = float(np.corrcoef(ts, ss)[0, 1]) if len(ts) > 2 and np.std(ts) > 0 and np.std(ss) > 0 else None
    return {
        "n": int(len(tp)),
        "roc_auc_teacher": auc_t,
        "roc_auc_student": auc_s,
        "roc_auc_diff": None if auc_t is None or auc_s is None else auc_s - auc_t,
        "decision_agreement": float(np.mean(decide(tp, ts) == decide(sp, ss))) if len(tp) else None,
        "max_abs_p_diff": float(dp.max()) if len(dp) else None,
        "mean_abs_p_diff": float(dp.mean()) if len(dp) else None,
        "spread_correlation": corr,
        "max_abs_spread_diff": float(np.abs(ss - ts).max()) if len(ts) else None,
    }


def decider(metadata: ModelMetadata) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(p, spread) -> outcomes``: the three-outcome decision with the teacher's threshold and band
    (:func:`~pneumoscan.inference.decision.decide_many`), the one both models are judged by."""
    from pneumoscan.inference.decision import UncertaintyBand, decide_many

    band = UncertaintyBand.minimal(metadata.threshold)
    if metadata.decision is not None:
        band = UncertaintyBand.from_dict(metadata.decision["band"])

    def decide(p, spread):
        return decide_many(np.clip(p, 0, 1), threshold=metadata.threshold, band=band, spread=spread)

    return decide


def gate(sets: list[GateSet], metadata: ModelMetadata, *, max_auc_diff: float, min_agreement: float) -> dict:
    """Compare the student with the teacher on every gate set (filled in by :func:`score_student`);
    ``passed`` and, when not, ``misses`` (what failed, by how much)."""
    decide = decider(metadata)

    def group(chosen: list[GateSet], mask=lambda s: np.ones(len(s.teacher_p), bool)) -> dict:
        parts = [(s, mask(s)) for s in chosen]
        cat = {
            k: np.concatenate([getattr(s, k)[m] for s, m in parts])
            for k in ("teacher_p", "teacher_spread", "student_p", "student_spread")
        }
        labelled = all(s.y is not None for s in chosen)
        y = np.concatenate([s.y[m] for s, m in parts]) if labelled else None
        return _compare(
            y, cat["teacher_p"], cat["teacher_spread"], cat["student_p"], cat["student_spread"], decide
        )

    shifted = [s for s in sets if s.name in GATE_SHIFTS]
    report = {
        "sets": {s.name: group([s]) for s in sets},
        "held_out_shifted": group(shifted),
        "never_trained": group(sets, mask=lambda s: s.never),
        "all": group(sets),
        "limits": {"max_auc_diff": max_auc_diff, "min_agreement": min_agreement},
    }
    report["never_trained"]["what"] = (
        "shifted views of the held-out images, held-out images every teacher member held out, "
        "out-of-scope radiographs"
    )
    misses = []
    for key, label in (("held out", "the held-out images"), ("held_out_shifted", "their shifted views")):
        figures = report["sets"][key] if key == "held out" else report[key]
        diff = figures["roc_auc_diff"]
        if diff is not None and abs(diff) > max_auc_diff:
            misses.append(
                f"ROC AUC on {label} {figures['roc_auc_student']:.4f} against the teacher's "
                f"{figures['roc_auc_teacher']:.4f}: off by {abs(diff):.4f}, {abs(diff) - max_auc_diff:.4f} "
                f"more than the {max_auc_diff} allowed"
            )
    agreement = report["never_trained"]["decision_agreement"]
    if agreement is None or agreement < min_agreement:
        shortfall = (
            "no images" if agreement is None else f"{agreement:.2%}, {min_agreement - agreement:.2%} short"
        )
        misses.append(
            f"decisions agree with the teacher's on {shortfall} of the {report['never_trained']['n']} "
            f"images no member trained on (at least {min_agreement:.0%} required)"
        )
    report["passed"], report["misses"] = not misses, misses
    return report


def summary(report: dict) -> dict:
    """The gate's figures as the sidecar records them (all of it, rounded)."""

    def rounded(value):
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, float):
            return round(value, 6)
        return value

    return rounded({k: v for k, v in report.items() if k != "serving_check"})


def serving_check(teacher_path: Path, model_path: Path, sets: list[GateSet], x: np.ndarray) -> dict:
    """A few held-out images through the saved student and teacher Predictors: the student's
    served probability against the one the gate measured on cached features, and its embedding
    against the teacher's (the same stem: the guard is unchanged)."""
    from pneumoscan.inference.predictor import Predictor

    student = Predictor(model_path).predict_details(x)
    embedding = Predictor(teacher_path).predict_details(x).embedding
    diff = float(np.max(np.abs(student.p_pneumonia - sets[0].student_p[: len(x)])))
    embedding_diff = float(np.max(np.abs(student.embedding - embedding)))
    return {
        "images": len(x),
        "max_abs_p_diff_vs_gate": diff,
        "max_abs_embedding_diff_vs_teacher": embedding_diff,
        "passed": diff <= 0.02 and embedding_diff <= 1e-3,
    }
