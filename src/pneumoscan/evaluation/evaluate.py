"""``pneumoscan evaluate``: predict a labelled folder, write metrics, predictions and figures."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pneumoscan.config import DEFAULT_SEED
from pneumoscan.evaluation.metrics import check_threshold, metrics_report
from pneumoscan.evaluation.overlap import TrainingDataOverlapError, check_training_overlap
from pneumoscan.inference.results import LABELLED_COLUMNS, labelled_row, make_prediction, write_rows
from pneumoscan.inference.scope import IN_SCOPE

log = logging.getLogger(__name__)

#: How many of the most confident mistakes the gallery shows.
GALLERY_SIZE = 12


# --------------------------------------------------------------------------- evaluate a folder


def scope_report(samples, predictions, ok, probs, threshold, *, n_boot: int, seed: int) -> dict:
    """How many images the out-of-scope guard flagged, the decisions, and metrics on in-scope ones.

    Returns
    -------
    dict
        ``flagged`` (images out of scope, radiographs or not), ``not_radiograph``, ``reasons``
        (reason -> count), ``decisions`` (outcome -> count) and ``in_scope`` (the metrics of
        :func:`metrics_report` on the scored images the guard kept; ``None`` when it flagged none,
        as they equal the main report, or kept none).
    """
    from collections import Counter

    from pneumoscan.inference.results import Prediction

    reasons: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    keep = np.zeros(len(samples), bool)
    not_radiograph = 0
    for i, outcome in enumerate(predictions):
        if isinstance(outcome, str):
            continue
        if isinstance(outcome, Prediction):
            decisions[outcome.decision] += 1
            keep[i] = outcome.in_scope and ok[i]
            if not outcome.in_scope:
                reasons[outcome.scope_reason] += 1
        else:  # a ScopeCheck refusing a non-radiograph
            not_radiograph += 1
            decisions["out of scope"] += 1
            reasons[outcome.reason] += 1
    flagged = int(sum(reasons.values()))
    in_scope = None
    if flagged and keep.any():
        kept = [s for s, k in zip(samples, keep, strict=True) if k]
        in_scope = metrics_report(
            np.array([s.label for s in kept], dtype=np.int64),
            probs[keep],
            threshold=threshold,
            groups=[s.patient_id for s in kept],
            subtypes=[s.subtype for s in kept],
            n_boot=n_boot,
            seed=seed,
        )
    return {
        "flagged": flagged,
        "not_radiograph": not_radiograph,
        "reasons": dict(reasons),
        "decisions": dict(decisions),
        "in_scope": in_scope,
    }


def evaluate_folder(
    samples,
    predictor,
    *,
    out_dir: str | Path,
    threshold: float | None = None,
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    allow_training_data: bool = False,
) -> dict:
    """Predict every sample, compute the metrics report and write it with its figures.

    First the samples are compared with the model's own training and validation images
    (:func:`pneumoscan.evaluation.overlap.check_training_overlap`): training images are refused
    unless ``allow_training_data``, validation images (which chose the model) only mark the report.

    Parameters
    ----------
    samples : list of pneumoscan.data.Sample
        Labelled images (``pneumoscan.data.discover_split``).
    predictor : pneumoscan.inference.predictor.Predictor
        Or any object with ``threshold``, ``image_size`` and ``predict_paths``.
    out_dir : path
        Created if needed. Receives ``metrics.json``, ``predictions.csv`` and the PNG figures
        ``confusion_matrix``, ``roc``, ``pr``, ``reliability``, ``threshold_sweep`` and
        ``worst_mistakes``.
    threshold : float, optional
        Operating threshold; the predictor's stored one by default.
    tta : bool
        Test-time augmentation in the predictor.
    n_boot, seed : int
        Bootstrap resamples and seed (:func:`bootstrap_ci`).
    progress : bool
        Show a progress bar.
    allow_training_data : bool
        Score images the model was trained on anyway; the report says how many.

    Returns
    -------
    dict
        :func:`metrics_report` plus ``skipped`` (``[{"path", "error"}]``), ``model`` (str or None),
        ``tta``, and the overlap with the model's data: ``overlaps_training_data`` (how many
        training images were scored; ``None`` when the check could not run), ``chose_the_model``
        (whether validation images were; ``None`` likewise) and ``data_overlap``
        (:meth:`OverlapCheck.to_json`). Unreadable files are skipped, never fatal.

    Raises
    ------
    TrainingDataOverlapError
        Some samples are the model's training images and ``allow_training_data`` is false; raised
        before anything is predicted or written. A ``ValueError``.
    ValueError
        No samples, or none of them could be read.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("no images to evaluate: the sample list is empty")
    t = check_threshold(predictor.threshold if threshold is None else threshold)
    model_path = getattr(predictor, "model_path", None)
    overlap = _check_overlap(samples, predictor, model_path, allow_training_data=allow_training_data)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    probs, ok, predictions, skipped = _predict_samples(samples, predictor, t, tta=tta, progress=progress)
    rows = (labelled_row(s, o) for s, o in zip(samples, predictions, strict=True))
    write_rows(out_dir / "predictions.csv", LABELLED_COLUMNS, rows, digits=6)
    kept = _scored_samples(samples, ok, skipped)
    report = _kept_metrics(kept, probs[ok], t, n_boot=n_boot, seed=seed)
    report["skipped"] = skipped
    report["scope"] = scope_report(samples, predictions, ok, probs, t, n_boot=n_boot, seed=seed)
    report["model"] = None if model_path is None else str(model_path)
    report["tta"] = bool(tta)
    report["overlaps_training_data"] = overlap.overlaps_training_data
    report["chose_the_model"] = overlap.chose_the_model
    report["data_overlap"] = overlap.to_json()
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_figures(out_dir, report["confusion_matrix"], kept, probs[ok], t)
    log.info("evaluation written to %s", out_dir)
    return report


def _check_overlap(samples, predictor, model_path, *, allow_training_data: bool):
    """The samples' overlap with the model's own data; refuses training images unless allowed."""
    overlap = check_training_overlap(samples, getattr(predictor, "metadata", None), model_path=model_path)
    if overlap.training:
        if not allow_training_data:
            raise TrainingDataOverlapError(overlap.refusal(len(samples), model_path))
        log.warning("scoring %d of the model's own training images, as asked", len(overlap.training))
    return overlap


class _Scored(NamedTuple):
    """What :func:`_predict_samples` found, one entry per sample."""

    probs: np.ndarray  #: p(pneumonia), NaN where not scored
    ok: np.ndarray  #: bool: read, a radiograph, and a finite probability
    predictions: list  #: a Prediction, an error message (str) or a refusing ScopeCheck
    skipped: list[dict]  #: ``{"path", "error"}`` for each unreadable file


def _predict_samples(samples, predictor, t: float, *, tta: bool, progress: bool) -> _Scored:
    """Predict every sample at threshold ``t``; unreadable files and non-radiographs are set aside."""
    results = predictor.predict_paths([s.path for s in samples], tta=tta, progress=progress)
    probs = np.asarray(results.p_pneumonia, dtype=np.float64)
    errors = list(results.errors)
    if probs.shape != (len(samples),) or len(errors) != len(samples):
        raise ValueError(
            f"predictor returned {probs.shape[0]} probabilities and {len(errors)} errors "
            f"for {len(samples)} files"
        )
    scope = list(getattr(results, "scope", None) or [IN_SCOPE] * len(samples))
    spread = getattr(results, "spread", None)
    band = _band_at(predictor, t)
    refused = [c if not c.radiograph else None for c in scope]
    for i in np.flatnonzero(~np.isfinite(probs)):
        if errors[i] is None and refused[i] is None:
            errors[i] = "the model returned no finite probability"
    ok = np.array([e is None and r is None for e, r in zip(errors, refused, strict=True)])
    skipped = [
        {"path": str(s.path), "error": e} for s, e in zip(samples, errors, strict=True) if e is not None
    ]
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["error"])

    def outcome(i: int):
        if errors[i] is not None:
            return errors[i]
        if refused[i] is not None:
            return refused[i]
        sp = None if spread is None else spread[i]
        return make_prediction(probs[i], t, band=band, spread=sp, scope=scope[i])

    return _Scored(probs, ok, [outcome(i) for i in range(len(samples))], skipped)


def _scored_samples(samples, ok: np.ndarray, skipped: list[dict]) -> list:
    """The samples that were scored (``ok``); a ``ValueError`` naming the first error when none was."""
    if not ok.any():
        first = skipped[0]
        raise ValueError(
            f"none of the {len(samples)} images could be read; first error: {first['path']}: {first['error']}"
        )
    return [s for s, good in zip(samples, ok, strict=True) if good]


def _band_at(predictor, t: float):
    """The predictor's stored uncertainty band; ``None`` (the minimal band at ``t``) if it does not fit."""
    band = getattr(predictor, "band", None)
    if band is not None:
        try:
            band.check(t)
        except ValueError:
            return None  # a --threshold the stored band does not fit: the minimal band at t
    return band


def _kept_metrics(kept, p: np.ndarray, t: float, *, n_boot: int, seed: int) -> dict:
    """:func:`metrics_report` on the scored samples ``kept`` with their probabilities ``p``."""
    return metrics_report(
        np.array([s.label for s in kept], dtype=np.int64),
        p,
        threshold=t,
        groups=[s.patient_id for s in kept],
        subtypes=[s.subtype for s in kept],
        n_boot=n_boot,
        seed=seed,
    )


def _write_figures(out_dir: Path, confusion_matrix, kept, p: np.ndarray, t: float) -> None:
    """The report's PNG figures for the scored samples ``kept`` and their probabilities ``p``."""
    from pneumoscan import plotting
    from pneumoscan.evaluation import figures

    y = np.array([s.label for s in kept], dtype=np.int64)
    both = 0 < y.sum() < y.size
    plotting.save(figures.confusion_matrix_figure(confusion_matrix), out_dir / "confusion_matrix.png")
    plotting.save(figures.roc_figure(y, p, threshold=t), out_dir / "roc.png")
    plotting.save(figures.pr_figure(y, p, threshold=t), out_dir / "pr.png")
    plotting.save(figures.reliability_figure(y, p), out_dir / "reliability.png")
    plotting.save(figures.threshold_sweep_figure(y, p, threshold=t), out_dir / "threshold_sweep.png")
    plotting.save(_worst_mistakes_figure(kept, p, t), out_dir / "worst_mistakes.png")
    if not both:
        log.warning("the evaluation set holds only one class: ROC/PR AUC are undefined")


def worst_mistakes(labels: np.ndarray, probs: np.ndarray, threshold: float, *, limit: int = GALLERY_SIZE):
    """Indices of the most confident errors: false negatives first, then false positives.

    False negatives are sorted by increasing ``probs`` (most confidently called normal first),
    false positives by decreasing ``probs``. Up to ``limit`` in all; false negatives get at least
    half of the places when there are enough of them.

    Returns
    -------
    fn, fp : list of int
    """
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    pred = probs >= threshold
    fn = [int(i) for i in sorted(np.flatnonzero((labels == 1) & ~pred), key=lambda i: probs[i])]
    fp = [int(i) for i in sorted(np.flatnonzero((labels == 0) & pred), key=lambda i: -probs[i])]
    n_fn = min(len(fn), max(limit // 2, limit - len(fp)))
    n_fp = min(len(fp), limit - n_fn)
    return fn[:n_fn], fp[:n_fp]


def _worst_mistakes_figure(samples, probs: np.ndarray, threshold: float):
    from PIL import Image

    from pneumoscan import plotting
    from pneumoscan.data.imaging import ImageDecodeError, read_image

    labels = np.array([s.label for s in samples])
    fn, fp = worst_mistakes(labels, probs, threshold)
    images, captions = [], []
    for kind, indices in (("missed pneumonia (FN)", fn), ("false alarm (FP)", fp)):
        for i in indices:
            try:
                gray = read_image(samples[i].path).gray
            except ImageDecodeError as exc:  # it was read a moment ago; stay robust anyway
                log.warning("gallery: %s", exc)
                continue
            thumb = Image.fromarray(gray, "L")
            thumb.thumbnail((320, 320), Image.Resampling.BILINEAR)
            images.append(np.asarray(thumb))
            name = samples[i].path.name
            name = name if len(name) <= 28 else name[:12] + "..." + name[-13:]
            captions.append(f"{kind}\n{name}\np(pneumonia) = {probs[i]:.3f}")
    title = (
        f"Most confident mistakes at threshold {threshold:.3f} "
        f"({len(fn)} missed pneumonia, {len(fp)} false alarms shown)"
    )
    return plotting.gallery_figure(images, captions, ncols=4, title=title)
