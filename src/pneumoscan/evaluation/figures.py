"""Figures of evaluation and training: ROC, PR, reliability, threshold sweep, learning curves, comparisons.

Every function returns a :class:`matplotlib.figure.Figure` (see :mod:`pneumoscan.plotting`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from pneumoscan.config import CLASS_NAMES
from pneumoscan.plotting import COLOURS, message, new_figure

log = logging.getLogger(__name__)


def _arrays(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true and y_score must be 1-D of the same length, got {y.shape} and {s.shape}")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(0 < y.sum() < y.size)


def _operating_point(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(recall, specificity, precision) at ``s >= threshold``; NaN where undefined."""
    pred = s >= threshold
    pos, neg = y == 1, y == 0
    tp = float((pred & pos).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / pos.sum() if pos.any() else math.nan
        spec = float((~pred & neg).sum()) / neg.sum() if neg.any() else math.nan
        precision = tp / pred.sum() if pred.any() else math.nan
    return recall, spec, precision


# --------------------------------------------------------------------------- evaluation


def confusion_matrix_figure(cm: Mapping[str, int], *, title: str = "Confusion matrix") -> Figure:
    """2x2 confusion matrix with counts and the percentage of each true class.

    Parameters
    ----------
    cm : mapping
        ``{"tn", "fp", "fn", "tp"}`` -> int, as in ``binary_metrics(...)["confusion_matrix"]``.
    """
    counts = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.int64)
    row_total = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(row_total > 0, counts / np.maximum(row_total, 1), 0.0)
    names = [
        ["true negative", "false positive\n(false alarm)"],
        ["false negative\n(missed)", "true positive"],
    ]
    fig = new_figure(5.6, 4.8)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            colour = "white" if share[i, j] > 0.55 else "black"
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{100 * share[i, j]:.1f}% of row\n{names[i][j]}",
                ha="center",
                va="center",
                color=colour,
                fontsize=10,
            )
    ax.set_xticks([0, 1], [f"{c}" for c in CLASS_NAMES])
    ax.set_yticks([0, 1], [f"{c}" for c in CLASS_NAMES])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title}  (n = {int(counts.sum())})")
    fig.colorbar(image, ax=ax, label="Fraction of the true class", shrink=0.8)
    return fig


def _curve_figure(y_true, y_score, curve: str, title: str):
    """``(y, s, fig, ax)`` for a curve that needs both classes; with only one, ``ax`` is None and
    ``fig`` already says that ``curve`` is undefined."""
    y, s = _arrays(y_true, y_score)
    fig = new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    if not _both_classes(y):
        message(ax, f"{curve} undefined:\nthe data hold only one class")
        ax.set_title(title)
        return y, s, fig, None
    return y, s, fig, ax


def roc_figure(y_true, y_score, *, threshold: float, title: str = "ROC curve") -> Figure:
    """ROC curve with its AUC, the chance diagonal and the operating point at ``threshold``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s, fig, ax = _curve_figure(y_true, y_score, "ROC curve", title)
    if ax is None:
        return fig
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, color=COLOURS[0], lw=2, label=f"model (AUC = {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC = 0.5)")
    recall, spec, _ = _operating_point(y, s, threshold)
    ax.plot(
        1 - spec,
        recall,
        "o",
        ms=9,
        color=COLOURS[1],
        label=f"operating point t = {threshold:.3f}\n(sensitivity {recall:.3f}, specificity {spec:.3f})",
    )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity, recall)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return fig


def pr_figure(y_true, y_score, *, threshold: float, title: str = "Precision-recall curve") -> Figure:
    """Precision-recall curve with average precision, the prevalence baseline and the operating point."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, s, fig, ax = _curve_figure(y_true, y_score, "Precision-recall curve", title)
    if ax is None:
        return fig
    precision, recall, _ = precision_recall_curve(y, s)
    ax.step(
        recall,
        precision,
        where="post",
        color=COLOURS[0],
        lw=2,
        label=f"model (average precision = {average_precision_score(y, s):.3f})",
    )
    prevalence = float(y.mean())
    ax.axhline(
        prevalence, ls="--", color="grey", lw=1, label=f"chance (pneumonia prevalence {prevalence:.2f})"
    )
    r, _, p = _operating_point(y, s, threshold)
    if not math.isnan(p):
        ax.plot(
            r,
            p,
            "o",
            ms=9,
            color=COLOURS[1],
            label=f"operating point t = {threshold:.3f}\n(recall {r:.3f}, precision {p:.3f})",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (positive predictive value)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    return fig


def reliability_figure(
    y_true, p_raw, p_cal=None, *, n_bins: int = 15, title: str = "Reliability of p(pneumonia)"
) -> Figure:
    """Reliability diagram (observed pneumonia fraction vs predicted probability) and histogram.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    p_raw : array-like of shape (n,), float in 0..1
        Probabilities before calibration (or the only ones, when ``p_cal`` is None).
    p_cal : array-like of shape (n,), optional
        The same after calibration, drawn alongside.
    n_bins : int
        Equal-width bins.
    """
    from pneumoscan.evaluation.metrics import expected_calibration_error, reliability_curve

    y, p_raw = _arrays(y_true, p_raw)
    series = [("before calibration" if p_cal is not None else "model", p_raw, COLOURS[1])]
    if p_cal is not None:
        series.append(("after calibration", _arrays(y, p_cal)[1], COLOURS[0]))
    fig = new_figure(5.6, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / n_bins
    for k, (label, p, colour) in enumerate(series):
        curve = reliability_curve(y, p, n_bins=n_bins)
        ece = expected_calibration_error(y, p, n_bins=n_bins)
        full = curve.counts > 0
        top.plot(
            curve.confidence[full],
            curve.accuracy[full],
            "o-",
            color=colour,
            lw=2,
            label=f"{label} (ECE = {ece:.3f})",
        )
        offset = (k - (len(series) - 1) / 2) * width / len(series)
        bottom.bar(
            curve.centers + offset,
            curve.counts,
            width=width / len(series),
            color=colour,
            alpha=0.8,
            label=label,
        )
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel("Observed fraction with pneumonia")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    bottom.set_xlabel("Predicted probability of pneumonia")
    bottom.set_ylabel("Images")
    bottom.grid(alpha=0.3)
    return fig


def threshold_sweep_figure(
    y_true,
    y_score,
    *,
    threshold: float,
    target_recall: float | None = None,
    title: str = "Sensitivity and specificity vs threshold",
) -> Figure:
    """Recall and specificity as the threshold moves from 0 to 1, the operating threshold marked."""
    y, s = _arrays(y_true, y_score)
    grid = np.linspace(0.0, 1.0, 401)
    pred = s[None, :] >= grid[:, None]
    pos, neg = y == 1, y == 0
    fig = new_figure(6.4, 4.5)
    ax = fig.add_subplot()
    if pos.any():
        ax.plot(grid, pred[:, pos].mean(1), color=COLOURS[1], lw=2, label="recall (sensitivity)")
    if neg.any():
        ax.plot(grid, (~pred[:, neg]).mean(1), color=COLOURS[0], lw=2, label="specificity")
    recall, spec, _ = _operating_point(y, s, threshold)
    parts = [f"{name} {v:.3f}" for name, v in (("sens.", recall), ("spec.", spec)) if not math.isnan(v)]
    ax.axvline(
        threshold,
        color="black",
        ls="--",
        lw=1.2,
        label=f"operating threshold {threshold:.3f} ({', '.join(parts)})",
    )
    if target_recall is not None:
        ax.axhline(target_recall, color=COLOURS[1], ls=":", lw=1, label=f"target recall {target_recall:.2f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("Threshold on p(pneumonia)")
    ax.set_ylabel("Rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9, ncol=2)
    return fig


# --------------------------------------------------------------------------- training


def learning_curves_figure(
    history: Mapping[str, Sequence[float]],
    *,
    phase_boundaries: Sequence[int] | None = None,
    title: str = "Learning curves",
) -> Figure:
    """Training vs validation curves, one panel per metric.

    Parameters
    ----------
    history : mapping of str to list of float
        Keras history: ``loss``/``val_loss``, ``auc``/``val_auc``, ... one value per epoch.
        Learning-rate entries (``lr``, ``learning_rate``) get their own log-scale panel.
    phase_boundaries : sequence of int, optional
        0-based index of the first epoch of each later phase (e.g. fine-tuning); drawn as a
        vertical line just before that epoch.
    """
    bases: list[str] = []
    for key in history:
        base = key[4:] if key.startswith("val_") else key
        if base not in bases:
            bases.append(base)
    n = len(bases)
    if n == 0:
        fig = new_figure(6.0, 2.0)
        message(fig.add_subplot(), "No training history recorded")
        return fig
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = new_figure(4.4 * ncols, 3.4 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.axis("off")
    for ax, base in zip(axes, bases, strict=False):
        for key, label, colour, style in (
            (base, "training", COLOURS[0], "-"),
            ("val_" + base, "validation", COLOURS[1], "-"),
        ):
            values = history.get(key)
            if values is None or len(values) == 0:
                continue
            epochs = np.arange(1, len(values) + 1)
            ax.plot(
                epochs,
                np.asarray(values, dtype=np.float64),
                style,
                color=colour,
                lw=2,
                marker="o" if len(values) <= 30 else None,
                ms=3,
                label=label,
            )
        for k, boundary in enumerate(phase_boundaries or ()):
            ax.axvline(
                boundary + 0.5, color="grey", ls="--", lw=1, label="new training phase" if k == 0 else None
            )
        if base in ("lr", "learning_rate"):
            ax.set_yscale("log")
        ax.set_title(base.replace("_", " "))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(base.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return fig


def comparison_figure(
    runs: Mapping[str, Mapping], *, title: str = "Model comparison (validation set)"
) -> Figure:
    """ROC curves of several runs on one axis, and a grouped bar chart of their key metrics.

    Parameters
    ----------
    runs : mapping
        Run name -> ``{"y_true": (n,) int, "y_score": (n,) float, "metrics": metrics_report dict}``.
        The operating point of each run is taken from ``metrics["threshold"]``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = new_figure(12.0, 5.0)
    roc_ax, bar_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    roc_ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    keys = [
        ("recall", "recall"),
        ("specificity", "specificity"),
        ("accuracy", "accuracy"),
        ("roc_auc", "ROC AUC"),
    ]
    names = list(runs)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(keys))
    for k, name in enumerate(names):
        run = runs[name]
        colour = COLOURS[k % len(COLOURS)]
        y, s = _arrays(run["y_true"], run["y_score"])
        metrics = run.get("metrics") or {}
        if _both_classes(y):
            fpr, tpr, _ = roc_curve(y, s)
            roc_ax.plot(fpr, tpr, color=colour, lw=2, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
            if metrics.get("threshold") is not None:
                recall, spec, _ = _operating_point(y, s, float(metrics["threshold"]))
                roc_ax.plot(1 - spec, recall, "o", ms=8, color=colour, markeredgecolor="black")
        values = [metrics.get(key) for key, _ in keys]
        heights = [0.0 if v is None else float(v) for v in values]
        bars = bar_ax.bar(x + (k - (len(names) - 1) / 2) * width, heights, width, color=colour, label=name)
        bar_ax.bar_label(
            bars,
            labels=["n/a" if v is None else f"{v:.3f}" for v in values],
            fontsize=7,
            padding=2,
            rotation=90 if len(names) > 3 else 0,
        )
    roc_ax.set_xlim(-0.01, 1.01)
    roc_ax.set_ylim(-0.01, 1.01)
    roc_ax.set_xlabel("False positive rate (1 - specificity)")
    roc_ax.set_ylabel("True positive rate (sensitivity)")
    roc_ax.set_title("ROC curves (dots: operating points)")
    roc_ax.grid(alpha=0.3)
    roc_ax.legend(loc="lower right", fontsize=8)
    bar_ax.set_xticks(x, [label for _, label in keys])
    bar_ax.set_ylim(0, 1.15)
    bar_ax.set_ylabel("Value (thresholded metrics at each run's threshold)")
    bar_ax.set_title("Key metrics")
    bar_ax.grid(axis="y", alpha=0.3)
    bar_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(4, len(names)))
    fig.suptitle(title)
    return fig
