"""Metrics, operating threshold, calibration and confidence intervals; evaluation runs and comparisons.

This module owns every number that says how good a model is. The top half is pure functions of
arrays: ``y_true`` holds integer labels 0/1 (1 = PNEUMONIA, the positive class) and ``y_score``
holds float probabilities of pneumonia in 0..1. The bottom half orchestrates them:
:func:`evaluate_folder` (``pneumoscan evaluate``) and :func:`compare_runs` (``pneumoscan compare``).

Conventions:

- An image is predicted PNEUMONIA when ``y_score >= threshold``.
- Results are plain Python ``int``/``float``/``None`` so that they go straight into JSON. A metric
  that is undefined on the data (ROC AUC with a single class, recall without pneumonia images,
  specificity without normal images) is ``None``, never NaN.
- Confidence intervals come from a patient-level (cluster) bootstrap: many patients have several
  images, which are not independent evidence.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.config import CLASS_NAMES

log = logging.getLogger(__name__)

#: Probabilities are clipped to this margin before taking their logit.
_EPS = 1e-6
#: Metrics that :func:`bootstrap_ci` can resample.
BOOTSTRAP_METRICS = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc", "brier")
#: Metrics with a confidence interval in :func:`metrics_report`.
REPORT_CI_METRICS = ("accuracy", "recall", "specificity", "roc_auc")
SUBTYPES = ("bacteria", "virus")
PREDICTION_COLUMNS = ("path", "patient_id", "subtype", "label", "p_pneumonia", "predicted", "error")
#: How many of the most confident mistakes the gallery shows.
GALLERY_SIZE = 12


# --------------------------------------------------------------------------- input checks


def _labels(y_true, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5].tolist()
        raise ValueError(f"{name} must hold 0 (NORMAL) and 1 (PNEUMONIA) only, got values such as {bad}")
    return y.astype(np.int64)


def _scores(y_score, n: int, name: str = "y_score") -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like y_true, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(s)).sum())} NaN or infinite values")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(f"{name} must be probabilities in [0, 1], got range [{s.min():g}, {s.max():g}]")
    return s


def _pair(y_true, y_score, *, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    if not allow_empty and y.size == 0:
        raise ValueError("no samples: y_true is empty")
    return y, s


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    return t


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


# --------------------------------------------------------------------------- point metrics


def binary_metrics(y_true, y_score, *, threshold: float) -> dict:
    """All point metrics of a binary pneumonia classifier at one operating threshold.

    Parameters
    ----------
    y_true : array-like of shape (n,), int
        0 = NORMAL, 1 = PNEUMONIA.
    y_score : array-like of shape (n,), float
        Probability of pneumonia in 0..1.
    threshold : float
        An image is predicted PNEUMONIA when ``y_score >= threshold``.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``precision``, ``recall`` (pneumonia sensitivity), ``specificity``,
        ``f1``, ``roc_auc``, ``pr_auc`` (average precision), ``brier``, ``ece``, ``threshold`` and
        ``confusion_matrix`` (``{"tn", "fp", "fn", "tp"}``, ints). ``roc_auc``/``pr_auc`` are
        ``None`` when only one class is present, ``recall`` is ``None`` without pneumonia images and
        ``specificity`` without normal ones. ``precision``/``f1`` are 0.0 when they have a zero
        denominator (scikit-learn's ``zero_division=0``).
    """
    from sklearn import metrics as skm

    y, s = _pair(y_true, y_score)
    t = _check_threshold(threshold)
    pred = (s >= t).astype(np.int64)
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y, pred, labels=[0, 1]).ravel())
    both = tp + fn > 0 and tn + fp > 0
    return {
        "n": int(y.size),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0.0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0.0)) if tp + fn else None,
        "specificity": _ratio(tn, tn + fp),
        "f1": float(skm.f1_score(y, pred, zero_division=0.0)),
        "roc_auc": float(skm.roc_auc_score(y, s)) if both else None,
        "pr_auc": float(skm.average_precision_score(y, s)) if both else None,
        "brier": float(skm.brier_score_loss(y, s, pos_label=1)),
        "ece": expected_calibration_error(y, s),
        "threshold": t,
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


@dataclasses.dataclass(frozen=True)
class ReliabilityCurve:
    """Equal-width bins of predicted pneumonia probability, for a reliability diagram.

    Attributes
    ----------
    edges : ndarray of shape (n_bins + 1,), float64
        Bin edges from 0 to 1.
    centers : ndarray of shape (n_bins,), float64
    accuracy : ndarray of shape (n_bins,), float64
        Observed fraction of pneumonia images in each bin (NaN for an empty bin).
    confidence : ndarray of shape (n_bins,), float64
        Mean predicted pneumonia probability in each bin (NaN for an empty bin).
    counts : ndarray of shape (n_bins,), int64
    """

    edges: np.ndarray
    centers: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    counts: np.ndarray


def reliability_curve(y_true, y_prob, *, n_bins: int = 15) -> ReliabilityCurve:
    """Bin ``y_prob`` into ``n_bins`` equal-width bins over [0, 1] (the last bin includes 1.0).

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    y_prob : array-like of shape (n,), float in 0..1
        Probability of pneumonia.
    n_bins : int
    """
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    n_bins = int(n_bins)
    y, p = _pair(y_true, y_prob, allow_empty=True)
    index = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=y, minlength=n_bins) / counts
        confidence = np.bincount(index, weights=p, minlength=n_bins) / counts
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return ReliabilityCurve(edges, (edges[:-1] + edges[1:]) / 2, accuracy, confidence, counts)


def expected_calibration_error(y_true, y_prob, *, n_bins: int = 15) -> float:
    """Expected calibration error of the pneumonia probability.

    The count-weighted mean, over ``n_bins`` equal-width bins, of ``|fraction of pneumonia -
    mean predicted probability|``. 0 is perfect calibration.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    y_prob : array-like of shape (n,), float in 0..1
    n_bins : int

    Returns
    -------
    float
    """
    curve = reliability_curve(y_true, y_prob, n_bins=n_bins)
    total = int(curve.counts.sum())
    if total == 0:
        raise ValueError("no samples: y_true is empty")
    full = curve.counts > 0
    gaps = np.abs(curve.accuracy[full] - curve.confidence[full])
    return float(np.sum(curve.counts[full] * gaps) / total)


def threshold_for_recall(y_true, y_score, *, target_recall: float = 0.98) -> float:
    """The largest threshold whose recall on these data is at least ``target_recall``.

    Predicting PNEUMONIA for ``y_score >= t`` with the returned ``t`` reaches the target on the same
    data; any larger threshold falls short of it.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
        Needs at least one pneumonia image.
    y_score : array-like of shape (n,), float in 0..1
    target_recall : float in (0, 1]

    Returns
    -------
    float
        One of the pneumonia images' scores.
    """
    if not 0.0 < float(target_recall) <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    y, s = _pair(y_true, y_score)
    positives = np.sort(s[y == 1])[::-1]
    n_pos = positives.size
    if n_pos == 0:
        raise ValueError("threshold_for_recall needs at least one PNEUMONIA image (label 1); got none")
    # Fewest positives k, counted the way recall is computed (k / n_pos), that reach the target.
    k = max(1, math.ceil(target_recall * n_pos))
    while k > 1 and (k - 1) / n_pos >= target_recall:
        k -= 1
    while k < n_pos and k / n_pos < target_recall:
        k += 1
    return float(positives[k - 1])


def per_subtype_recall(y_true, y_pred, subtypes) -> dict[str, float | None]:
    """Recall within each pneumonia subtype.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    y_pred : array-like of shape (n,), int 0/1
        Predicted labels (already thresholded).
    subtypes : sequence of str, length n
        ``"bacteria"``, ``"virus"`` or ``"none"``.

    Returns
    -------
    dict
        ``{"bacteria": recall or None, "virus": recall or None}``; ``None`` when the data hold no
        pneumonia image of that subtype.
    """
    y = _labels(y_true)
    pred = _labels(y_pred, "y_pred")
    sub = np.asarray([str(v).lower() for v in subtypes], dtype=object)
    if pred.shape != y.shape or sub.shape != y.shape:
        raise ValueError(
            f"y_true, y_pred and subtypes must have the same length, got {y.size}, {pred.size}, {sub.size}"
        )
    out: dict[str, float | None] = {}
    for name in SUBTYPES:
        mask = (y == 1) & (sub == name)
        out[name] = float(pred[mask].mean()) if mask.any() else None
    return out


# --------------------------------------------------------------------------- calibration


@dataclasses.dataclass(frozen=True)
class PlattCalibrator:
    """Platt scaling of the model's pneumonia probability: ``p_cal = sigmoid(a * logit(p) + b)``.

    ``a`` must be positive so that calibration keeps the order of the scores (the ROC curve and
    AUC are unchanged). The identity is ``a = 1, b = 0``.

    Attributes
    ----------
    a : float
        Slope on the logit, > 0.
    b : float
        Intercept.
    """

    a: float = 1.0
    b: float = 0.0

    def __post_init__(self):
        if not (math.isfinite(self.a) and self.a > 0.0):
            raise ValueError(f"calibration slope a must be a finite positive number, got {self.a}")
        if not math.isfinite(self.b):
            raise ValueError(f"calibration intercept b must be finite, got {self.b}")

    @classmethod
    def identity(cls) -> PlattCalibrator:
        return cls(1.0, 0.0)

    @classmethod
    def fit(cls, y_true, p_raw) -> PlattCalibrator:
        """Fit ``a, b`` by logistic regression of ``y_true`` on ``logit(p_raw)``.

        Uses Platt's smoothed targets (``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)``), which keeps the
        fit finite on perfectly separated data. Falls back to the identity, with a warning, when
        the fit is not increasing.

        Parameters
        ----------
        y_true : array-like of shape (n,), int 0/1
            Needs both classes (use a validation set, never the training set).
        p_raw : array-like of shape (n,), float in 0..1
            Uncalibrated probabilities of pneumonia.
        """
        from sklearn.linear_model import LogisticRegression

        y, p = _pair(y_true, p_raw)
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        if n_pos == 0 or n_neg == 0:
            raise ValueError(
                f"calibration needs both classes; got {n_neg} NORMAL and {n_pos} PNEUMONIA images"
            )
        z = _logit(p)
        target = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
        x = np.concatenate([z, z])[:, None]
        labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
        weights = np.concatenate([target, 1.0 - target])
        model = LogisticRegression(C=np.inf, max_iter=1000).fit(x, labels, sample_weight=weights)
        a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
        if not (math.isfinite(a) and a > 0.0 and math.isfinite(b)):
            log.warning("Platt calibration fit gave slope a=%.4g (not increasing); using the identity", a)
            return cls.identity()
        log.info("Platt calibration: a=%.4f b=%.4f", a, b)
        return cls(a, b)

    def transform(self, p_raw) -> np.ndarray:
        """Calibrated probabilities.

        Parameters
        ----------
        p_raw : array-like of any shape, float in 0..1

        Returns
        -------
        ndarray of the same shape, float64
        """
        from scipy.special import expit

        return expit(self.a * _logit(np.asarray(p_raw, dtype=np.float64)) + self.b)

    def to_dict(self) -> dict[str, float]:
        return {"a": float(self.a), "b": float(self.b)}

    @classmethod
    def from_dict(cls, d: dict) -> PlattCalibrator:
        try:
            return cls(float(d["a"]), float(d["b"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"calibration must be a mapping with numbers 'a' and 'b', got {d!r}") from exc


def _logit(p: np.ndarray) -> np.ndarray:
    from scipy.special import logit

    return logit(np.clip(p, _EPS, 1.0 - _EPS))


# --------------------------------------------------------------------------- bootstrap


def _group_index(groups, n: int) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    g = np.asarray([str(v) for v in groups], dtype=object)
    if g.shape != (n,):
        raise ValueError(f"groups must have one patient id per image ({n}), got {g.shape[0]}")
    _, index = np.unique(g, return_inverse=True)
    return index.astype(np.int64), int(index.max()) + 1 if n else 0


def _weighted_metrics(y: np.ndarray, s: np.ndarray, pred: np.ndarray, w: np.ndarray, names) -> dict:
    """Metrics under per-image weights, one row of ``w`` (shape (b, n)) per resample.

    Returns arrays of shape (b,) with NaN where a metric is undefined.
    """
    w = np.asarray(w, dtype=np.float64)
    pos, neg = (y == 1), (y == 0)
    w_pos, w_neg = w[:, pos].sum(1), w[:, neg].sum(1)
    tp = w[:, pos & (pred == 1)].sum(1)
    tn = w[:, neg & (pred == 0)].sum(1)
    fp, fn = w_neg - tn, w_pos - tp
    total = w_pos + w_neg
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name in names:
            if name == "accuracy":
                out[name] = (tp + tn) / total
            elif name == "recall":
                out[name] = tp / w_pos
            elif name == "specificity":
                out[name] = tn / w_neg
            elif name == "precision":
                out[name] = tp / (tp + fp)
            elif name == "f1":
                out[name] = 2 * tp / (2 * tp + fp + fn)
            elif name == "brier":
                out[name] = (w * (s - y) ** 2).sum(1) / total
            elif name == "roc_auc":
                out[name] = _weighted_auc(y, s, w, w_pos, w_neg)
    return out


def _weighted_auc(y, s, w, w_pos, w_neg) -> np.ndarray:
    """ROC AUC (ties count half) under each row of weights, in O(b * n)."""
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted, w_sorted = s[order], y[order], w[:, order]
    # Tie blocks of equal scores: first/last position of each image's block.
    new_block = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    block = np.cumsum(new_block) - 1
    starts = np.flatnonzero(new_block)
    ends = np.r_[starts[1:], s_sorted.size] - 1
    neg_cum = np.cumsum(np.where(y_sorted == 0, w_sorted, 0.0), axis=1)
    neg_cum = np.concatenate([np.zeros((w.shape[0], 1)), neg_cum], axis=1)  # neg weight before index i
    below = neg_cum[:, starts[block]]  # negatives with a strictly lower score
    equal = neg_cum[:, ends[block] + 1] - below  # negatives with the same score
    pos_sorted = y_sorted == 1
    contribution = w_sorted[:, pos_sorted] * (below[:, pos_sorted] + 0.5 * equal[:, pos_sorted])
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = contribution.sum(1) / (w_pos * w_neg)
    auc[(w_pos == 0) | (w_neg == 0)] = np.nan
    return auc


def bootstrap_ci(
    y_true,
    y_score,
    groups,
    *,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 1337,
    metrics: Sequence[str] = REPORT_CI_METRICS,
) -> dict[str, list[float] | None]:
    """95% confidence intervals by a patient-level (cluster) bootstrap.

    Each resample draws as many patients as there are, with replacement, and takes all images of
    each drawn patient. A resample where a metric is undefined (no pneumonia image for recall, ...)
    is skipped for that metric. The same ``seed`` always gives the same intervals.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    y_score : array-like of shape (n,), float in 0..1
    groups : sequence of str of length n, or None
        Patient id of each image; ``None`` resamples images independently.
    threshold : float
        Operating threshold for the thresholded metrics.
    n_boot : int
        Number of resamples.
    seed : int
        Seed of ``numpy.random.default_rng``.
    metrics : sequence of str
        Any of :data:`BOOTSTRAP_METRICS`.

    Returns
    -------
    dict
        Metric name -> ``[low, high]`` (2.5th and 97.5th percentiles) as floats, or ``None`` when no
        resample defines the metric.
    """
    unknown = [m for m in metrics if m not in BOOTSTRAP_METRICS]
    if unknown:
        raise ValueError(f"cannot bootstrap {unknown}; choose from {BOOTSTRAP_METRICS}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    y, s = _pair(y_true, y_score)
    t = _check_threshold(threshold)
    pred = (s >= t).astype(np.int64)
    index, n_groups = _group_index(groups, y.size)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(int(n_boot), n_groups))
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    chunk = max(1, 2_000_000 // max(y.size, n_groups))  # bound memory to a few tens of MB
    for start in range(0, int(n_boot), chunk):
        rows = draws[start : start + chunk]
        offsets = np.arange(rows.shape[0])[:, None] * n_groups
        multiplicity = np.bincount((rows + offsets).ravel(), minlength=rows.size).reshape(rows.shape)
        for name, v in _weighted_metrics(y, s, pred, multiplicity[:, index], metrics).items():
            values[name].append(v)
    out: dict[str, list[float] | None] = {}
    for name in metrics:
        v = np.concatenate(values[name])
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[name] = None
        else:
            low, high = np.percentile(v, [2.5, 97.5])
            out[name] = [float(low), float(high)]
        if v.size < int(n_boot):
            log.debug("bootstrap %s: %d of %d resamples defined", name, v.size, n_boot)
    return out


def metrics_report(
    y_true,
    y_score,
    *,
    threshold: float,
    groups,
    subtypes,
    n_boot: int = 1000,
    seed: int = 1337,
) -> dict:
    """Point metrics, patient-level 95% CIs and per-subtype recall: the schema of ``metrics.json``.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    y_score : array-like of shape (n,), float in 0..1
    threshold : float
    groups : sequence of str, length n
        Patient ids (or None for image-level resampling).
    subtypes : sequence of str, length n
        ``"bacteria"``, ``"virus"`` or ``"none"``.
    n_boot, seed : int
        See :func:`bootstrap_ci`.

    Returns
    -------
    dict
        :func:`binary_metrics` plus ``ci95`` (``{"accuracy", "recall", "specificity", "roc_auc"}`` ->
        ``[low, high]`` or ``None``) and ``per_subtype`` (``{"bacteria", "virus"}`` -> recall or
        ``None``).
    """
    report = binary_metrics(y_true, y_score, threshold=threshold)
    y, s = _pair(y_true, y_score)
    report["ci95"] = bootstrap_ci(y, s, groups, threshold=threshold, n_boot=n_boot, seed=seed)
    pred = (s >= float(threshold)).astype(np.int64)
    report["per_subtype"] = per_subtype_recall(y, pred, subtypes)
    return report


# --------------------------------------------------------------------------- terminal table


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_metrics_table(metrics: dict) -> str:
    """A plain-text table of a :func:`metrics_report` (or :func:`binary_metrics`) dict."""
    ci = metrics.get("ci95") or {}
    rows = [
        ("Accuracy", "accuracy"),
        ("Recall (sensitivity)", "recall"),
        ("Specificity", "specificity"),
        ("Precision (PPV)", "precision"),
        ("F1", "f1"),
        ("ROC AUC", "roc_auc"),
        ("PR AUC (avg. precision)", "pr_auc"),
        ("Brier score", "brier"),
        ("ECE (calibration error)", "ece"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{'Images evaluated':<{width}}{metrics['n']}"]
    skipped = metrics.get("skipped")
    if skipped:
        lines[0] += f"  ({len(skipped)} unreadable, skipped)"
    lines.append(f"{'Operating threshold':<{width}}{metrics['threshold']:.4f}")
    lines.append("")
    lines.append(f"{'Metric':<{width}}{'value':>7}   95% CI (patient bootstrap)")
    lines.append("-" * (width + 38))
    for label, key in rows:
        digits = 4 if key in ("brier", "ece") else 3
        line = f"{label:<{width}}{_fmt(metrics.get(key), digits):>7}"
        if key in ci:
            interval = ci[key]
            line += "   n/a" if interval is None else f"   [{interval[0]:.3f}, {interval[1]:.3f}]"
        lines.append(line)
    cm = metrics["confusion_matrix"]
    lines += [
        "",
        "Confusion matrix",
        f"{'':<20}{'pred. ' + CLASS_NAMES[0]:>16}{'pred. ' + CLASS_NAMES[1]:>19}",
        f"{'true ' + CLASS_NAMES[0]:<20}{cm['tn']:>16}{cm['fp']:>19}",
        f"{'true ' + CLASS_NAMES[1]:<20}{cm['fn']:>16}{cm['tp']:>19}",
    ]
    per_subtype = metrics.get("per_subtype")
    if per_subtype:
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in per_subtype.items())
        lines += ["", f"Recall by pneumonia subtype: {parts}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- evaluate a folder


def evaluate_folder(
    samples,
    predictor,
    *,
    out_dir: str | Path,
    threshold: float | None = None,
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = 1337,
    progress: bool = True,
) -> dict:
    """Predict every sample, compute the metrics report and write it with its figures.

    Parameters
    ----------
    samples : list of pneumoscan.data.Sample
        Labelled images (``pneumoscan.data.discover_split``).
    predictor : pneumoscan.predictor.Predictor
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

    Returns
    -------
    dict
        :func:`metrics_report` plus ``skipped`` (``[{"path", "error"}]``), ``model`` (str or None)
        and ``tta``. Unreadable files are skipped, never fatal.

    Raises
    ------
    ValueError
        No samples, or none of them could be read.
    """
    from pneumoscan import figures

    samples = list(samples)
    if not samples:
        raise ValueError("no images to evaluate: the sample list is empty")
    t = _check_threshold(predictor.threshold if threshold is None else threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [s.path for s in samples]
    results = predictor.predict_paths(paths, tta=tta, progress=progress)
    probs = np.asarray(results.p_pneumonia, dtype=np.float64)
    errors = list(results.errors)
    if probs.shape != (len(samples),) or len(errors) != len(samples):
        raise ValueError(
            f"predictor returned {probs.shape[0]} probabilities and {len(errors)} errors "
            f"for {len(samples)} files"
        )
    for i in np.flatnonzero(~np.isfinite(probs)):
        if errors[i] is None:
            errors[i] = "the model returned no finite probability"
    ok = np.array([e is None for e in errors])
    skipped = [
        {"path": str(s.path), "error": e} for s, e in zip(samples, errors, strict=True) if e is not None
    ]
    for item in skipped:
        log.warning("skipped %s: %s", item["path"], item["error"])
    _write_predictions(out_dir / "predictions.csv", samples, probs, errors, t)
    if not ok.any():
        raise ValueError(
            f"none of the {len(samples)} images could be read; first error: "
            f"{skipped[0]['path']}: {skipped[0]['error']}"
        )
    kept = [s for s, good in zip(samples, ok, strict=True) if good]
    y = np.array([s.label for s in kept], dtype=np.int64)
    p = probs[ok]
    report = metrics_report(
        y,
        p,
        threshold=t,
        groups=[s.patient_id for s in kept],
        subtypes=[s.subtype for s in kept],
        n_boot=n_boot,
        seed=seed,
    )
    model_path = getattr(predictor, "model_path", None)
    report["skipped"] = skipped
    report["model"] = None if model_path is None else str(model_path)
    report["tta"] = bool(tta)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")

    both = 0 < y.sum() < y.size
    cm_figure = figures.confusion_matrix_figure(report["confusion_matrix"])
    figures.save(cm_figure, out_dir / "confusion_matrix.png")
    figures.save(figures.roc_figure(y, p, threshold=t), out_dir / "roc.png")
    figures.save(figures.pr_figure(y, p, threshold=t), out_dir / "pr.png")
    figures.save(figures.reliability_figure(y, p), out_dir / "reliability.png")
    figures.save(figures.threshold_sweep_figure(y, p, threshold=t), out_dir / "threshold_sweep.png")
    figures.save(_worst_mistakes_figure(kept, p, t), out_dir / "worst_mistakes.png")
    if not both:
        log.warning("the evaluation set holds only one class: ROC/PR AUC are undefined")
    log.info("evaluation written to %s", out_dir)
    return report


def _write_predictions(path: Path, samples, probs: np.ndarray, errors, threshold: float) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for s, p, err in zip(samples, probs, errors, strict=True):
            good = err is None
            writer.writerow(
                [
                    str(s.path),
                    s.patient_id,
                    s.subtype,
                    int(s.label),
                    f"{p:.6f}" if good else "",
                    int(p >= threshold) if good else "",
                    err or "",
                ]
            )


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

    from pneumoscan import figures
    from pneumoscan.imaging import ImageDecodeError, read_image

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
    return figures.gallery_figure(images, captions, ncols=4, title=title)


# --------------------------------------------------------------------------- compare runs


def _read_run(run_dir: Path) -> dict:
    names = ("validation.json", "config.json", "validation_predictions.csv")
    files = {name: run_dir / name for name in names}
    for path in files.values():
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a complete training run: {path.name} is missing")
    metrics = json.loads(files["validation.json"].read_text())
    config = json.loads(files["config.json"].read_text())
    rows = list(csv.DictReader(files["validation_predictions.csv"].open(newline="")))
    missing = {"path", "label", "p_pneumonia"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{files['validation_predictions.csv']}: missing columns {sorted(missing)}")
    rows = [r for r in rows if r["p_pneumonia"] not in ("", None)]
    labels = np.array([_parse_label(r["label"]) for r in rows], dtype=np.int64)
    return {
        "name": str(config.get("name") or run_dir.name),
        "arch": str(config.get("arch", "?")),
        "metrics": metrics,
        "paths": [r["path"] for r in rows],
        "y_true": labels,
        "y_score": np.array([float(r["p_pneumonia"]) for r in rows]),
    }


def _parse_label(value: str) -> int:
    value = str(value).strip()
    if value.upper() in CLASS_NAMES:
        return CLASS_NAMES.index(value.upper())
    if value in ("0", "1"):
        return int(value)
    raise ValueError(
        f"unrecognised label {value!r} in validation_predictions.csv (expected 0/1 or a class name)"
    )


def _stress_table(runs: list[dict]) -> str:
    """Markdown: ROC AUC / recall / specificity of each run under each acquisition shift (if recorded)."""
    stressed = [r for r in runs if (r["metrics"].get("stress") or {}).get("shifts")]
    if not stressed:
        return ""
    shifts = list(stressed[0]["metrics"]["stress"]["shifts"])
    lines = [
        "",
        "Validation images under acquisition shifts (`pneumoscan.robustness`): "
        "ROC AUC / recall / specificity at each run's own threshold.",
        "",
        "| shift | " + " | ".join(r["name"].replace("|", "\\|") for r in stressed) + " |",
        "|---|" + "---:|" * len(stressed),
    ]
    for shift in [*shifts, "worst"]:
        cells = []
        for r in stressed:
            stress = r["metrics"]["stress"]
            m = stress["worst"] if shift == "worst" else stress["shifts"].get(shift, {})
            cells.append(" / ".join(_fmt(m.get(k)) for k in ("roc_auc", "recall", "specificity")))
        label = "**worst case**" if shift == "worst" else shift
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: Sequence[str | Path], *, out_dir: str | Path) -> str:
    """Compare training runs on their (identical) validation sets.

    Parameters
    ----------
    run_dirs : sequence of path
        Run folders of ``pneumoscan train``, each with ``validation.json``, ``config.json`` and
        ``validation_predictions.csv``.
    out_dir : path
        Receives ``comparison.md`` and ``comparison.png``.

    Returns
    -------
    str
        The Markdown table written to ``comparison.md``.

    Raises
    ------
    ValueError
        No runs, or runs validated on different images (their metrics would not be comparable).
    FileNotFoundError
        A run folder lacks one of its files.
    """
    from pneumoscan import figures

    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    runs = [_read_run(Path(d)) for d in run_dirs]
    names = [r["name"] for r in runs]
    for run, d in zip(runs, run_dirs, strict=True):
        if names.count(run["name"]) > 1:
            run["name"] = str(d)
    reference = set(runs[0]["paths"])
    for run, d in zip(runs[1:], run_dirs[1:], strict=True):
        other = set(run["paths"])
        if other != reference:
            only_ref, only_other = sorted(reference - other), sorted(other - reference)
            example = (only_ref or only_other)[0]
            raise ValueError(
                f"runs {run_dirs[0]} and {d} were validated on different images "
                f"({len(only_ref)} only in the first, {len(only_other)} only in the second, e.g. "
                f"{example}); their metrics are not comparable. Train them with the same data, "
                "val_fraction and seed."
            )

    header = [
        "run",
        "arch",
        "n",
        "accuracy",
        "recall",
        "recall 95% CI",
        "specificity",
        "precision",
        "f1",
        "roc_auc",
        "pr_auc",
        "brier",
        "ece",
        "threshold",
    ]
    align = ["---"] * 2 + ["---:"] * (len(header) - 2)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for run in runs:
        m = run["metrics"]
        ci = (m.get("ci95") or {}).get("recall")
        cells = [
            run["name"].replace("|", "\\|"),
            run["arch"],
            str(m.get("n", len(run["paths"]))),
            _fmt(m.get("accuracy")),
            _fmt(m.get("recall")),
            "n/a" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
            _fmt(m.get("specificity")),
            _fmt(m.get("precision")),
            _fmt(m.get("f1")),
            _fmt(m.get("roc_auc")),
            _fmt(m.get("pr_auc")),
            _fmt(m.get("brier"), 4),
            _fmt(m.get("ece"), 4),
            _fmt(m.get("threshold"), 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n" + _stress_table(runs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(markdown)
    fig = figures.comparison_figure(
        {r["name"]: {"y_true": r["y_true"], "y_score": r["y_score"], "metrics": r["metrics"]} for r in runs}
    )
    figures.save(fig, out_dir / "comparison.png")
    log.info("comparison of %d runs written to %s", len(runs), out_dir)
    return markdown
