"""Matplotlib figures: evaluation plots, learning curves, run comparisons and the data report's charts.

This module owns how results look. Every function builds and returns a
:class:`matplotlib.figure.Figure` on the non-interactive Agg canvas; nothing is ever shown, and
:mod:`matplotlib.pyplot` (with its global state, unsafe in the Streamlit app's threads) is never
used. :func:`save` writes a figure as PNG. Probabilities are of PNEUMONIA, the positive class.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumoscan.config import CLASS_NAMES

log = logging.getLogger(__name__)

DPI = 120
#: Colour-blind friendly (Okabe-Ito) colours.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
CLASS_COLOURS = {CLASS_NAMES[0]: "#0072B2", CLASS_NAMES[1]: "#D55E00"}


def new_figure(width: float = 6.0, height: float = 4.5, **kwargs) -> Figure:
    """A blank figure of ``width x height`` inches on an Agg canvas (not registered with pyplot)."""
    fig = Figure(figsize=(width, height), layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` as an image (PNG by suffix) at dpi 120 with a tight bounding box, then close it.

    Figures from this module are not held by pyplot, so closing only matters for a figure made
    with :mod:`matplotlib.pyplot`; it is closed there too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)
    log.debug("saved figure %s", path)
    return path


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


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


def roc_figure(y_true, y_score, *, threshold: float, title: str = "ROC curve") -> Figure:
    """ROC curve with its AUC, the chance diagonal and the operating point at ``threshold``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y, s = _arrays(y_true, y_score)
    fig = new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    if not _both_classes(y):
        _message(ax, "ROC curve undefined:\nthe data hold only one class")
        ax.set_title(title)
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

    y, s = _arrays(y_true, y_score)
    fig = new_figure(5.6, 5.0)
    ax = fig.add_subplot()
    if not _both_classes(y):
        _message(ax, "Precision-recall curve undefined:\nthe data hold only one class")
        ax.set_title(title)
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
    from pneumoscan.evaluation import expected_calibration_error, reliability_curve

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


def gallery_figure(
    images: Sequence[np.ndarray], captions: Sequence[str], *, ncols: int = 4, title: str = ""
) -> Figure:
    """A grid of grey images with a caption under each.

    Parameters
    ----------
    images : sequence of ndarray of shape (h, w), uint8
    captions : sequence of str, same length
    ncols : int
    title : str
    """
    if len(images) != len(captions):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    if not images:
        fig = new_figure(6.0, 2.0)
        _message(fig.add_subplot(), "Nothing to show (no mistakes)")
        if title:
            fig.suptitle(title)
        return fig
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig = new_figure(3.0 * ncols, 3.5 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, captions, strict=False):
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
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
        _message(fig.add_subplot(), "No training history recorded")
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


# --------------------------------------------------------------------------- data report


def class_balance_figure(
    counts: Mapping[str, Mapping[str, int]], *, title: str = "Images per class and split"
) -> Figure:
    """Grouped bars of image counts per split and class, labelled with counts and shares.

    Parameters
    ----------
    counts : mapping
        Split name -> {class name -> number of images}, e.g.
        ``{"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "test": {...}}``.
    """
    splits = list(counts)
    classes = list(CLASS_NAMES) + sorted({c for d in counts.values() for c in d} - set(CLASS_NAMES))
    fig = new_figure(max(5.5, 1.8 * len(splits) + 2), 4.5)
    ax = fig.add_subplot()
    if not splits:
        _message(ax, "No images found")
        return fig
    x = np.arange(len(splits))
    width = 0.8 / len(classes)
    for k, cls in enumerate(classes):
        values = [int(counts[split].get(cls, 0)) for split in splits]
        totals = [max(1, sum(counts[split].values())) for split in splits]
        bars = ax.bar(
            x + (k - (len(classes) - 1) / 2) * width,
            values,
            width,
            color=CLASS_COLOURS.get(cls, COLOURS[(k + 2) % len(COLOURS)]),
            label=cls,
        )
        ax.bar_label(
            bars,
            labels=[f"{v}\n({100 * v / t:.0f}%)" for v, t in zip(values, totals, strict=True)],
            fontsize=8,
            padding=2,
        )
    ax.set_xticks(x, splits)
    ax.set_xlabel("Split")
    ax.set_ylabel("Number of images")
    ax.set_title(title)
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="Class")
    return fig


def size_distribution_figure(widths, heights, *, title: str = "Image sizes") -> Figure:
    """Original image sizes: width vs height scatter and a histogram of aspect ratios.

    Parameters
    ----------
    widths, heights : array-like of shape (n,), int
        Sizes in pixels.
    """
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    if w.shape != h.shape or w.ndim != 1:
        raise ValueError(f"widths and heights must be 1-D of the same length, got {w.shape} and {h.shape}")
    fig = new_figure(11.0, 4.5)
    scatter_ax, hist_ax = fig.subplots(1, 2)
    if w.size == 0:
        _message(scatter_ax, "No images")
        _message(hist_ax, "No images")
        return fig
    scatter_ax.scatter(w, h, s=6, alpha=0.4, color=COLOURS[0], edgecolors="none")
    top = float(max(w.max(), h.max())) * 1.05
    scatter_ax.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="square (width = height)")
    scatter_ax.set_xlim(0, top)
    scatter_ax.set_ylim(0, top)
    scatter_ax.set_xlabel("Width (pixels)")
    scatter_ax.set_ylabel("Height (pixels)")
    scatter_ax.set_title(f"Width vs height (n = {w.size}; median {np.median(w):.0f} x {np.median(h):.0f} px)")
    scatter_ax.grid(alpha=0.3)
    scatter_ax.legend(fontsize=8, loc="upper left")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = w / h
    ratio = ratio[np.isfinite(ratio)]
    hist_ax.hist(ratio, bins=40, color=COLOURS[2], alpha=0.85)
    hist_ax.axvline(1.0, ls="--", color="grey", lw=1, label="square")
    hist_ax.set_xlabel("Aspect ratio (width / height)")
    hist_ax.set_ylabel("Number of images")
    hist_ax.set_title("Aspect ratios (models see a square, stretched)")
    hist_ax.grid(alpha=0.3)
    hist_ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig
