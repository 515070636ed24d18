"""Pure metrics of arrays: point metrics, reliability, the operating threshold, the patient bootstrap.

Every function takes ``y_true`` (integer labels 0/1, 1 = PNEUMONIA, the positive class) and
``y_score`` (float probabilities of pneumonia in 0..1) and touches no file. Conventions:

- An image is predicted PNEUMONIA when ``y_score >= threshold``.
- Results are plain Python ``int``/``float``/``None`` so that they go straight into JSON. A metric
  that is undefined on the data (ROC AUC with a single class, recall without pneumonia images,
  specificity without normal images) is ``None``, never NaN.
- Confidence intervals come from a patient-level (cluster) bootstrap: many patients have several
  images, which are not independent evidence.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numpy as np

from pneumoscan.config import CLASS_NAMES, DEFAULT_SEED, DEFAULT_TARGET_RECALL

log = logging.getLogger(__name__)

#: Metrics that :func:`bootstrap_ci` can resample.
BOOTSTRAP_METRICS = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc", "brier")
#: Metrics with a confidence interval in :func:`metrics_report`.
REPORT_CI_METRICS = ("accuracy", "recall", "specificity", "roc_auc")
#: Pneumonia subtypes whose recall :func:`per_subtype_recall` reports.
SUBTYPES = ("bacteria", "virus")


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


def check_threshold(threshold: float) -> float:
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
    t = check_threshold(threshold)
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


def threshold_for_recall(y_true, y_score, *, target_recall: float = DEFAULT_TARGET_RECALL) -> float:
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
    seed: int = DEFAULT_SEED,
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
    t = check_threshold(threshold)
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
    seed: int = DEFAULT_SEED,
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


def fmt_metric(value, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``"n/a"`` for an undefined (None) metric."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_metrics_table(metrics: dict) -> str:
    """A plain-text table of a :func:`metrics_report` (or :func:`binary_metrics`) dict.

    A report of :func:`pneumoscan.evaluation.evaluate.evaluate_folder` that scored the model's own
    training or validation images (its ``data_overlap`` entry) starts with a warning saying so.
    """
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
        line = f"{label:<{width}}{fmt_metric(metrics.get(key), digits):>7}"
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
        parts = ", ".join(f"{k} {fmt_metric(v)}" for k, v in per_subtype.items())
        lines += ["", f"Recall by pneumonia subtype: {parts}"]
    from pneumoscan.evaluation.overlap import overlap_lines

    marks = overlap_lines(metrics)  # training or validation images among those evaluated: said first
    return "\n".join([*marks, *([""] if marks else []), *lines])
