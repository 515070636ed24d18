"""Tests of pneumoscan.evaluation.figures: every figure builds, is labelled, and saves as a valid PNG."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pneumoscan import plotting
from pneumoscan.data import report
from pneumoscan.evaluation import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.clip(rng.normal(0.3 + 0.45 * y, 0.18), 0, 1)
    return y, s


def _check_saved(fig, path):
    assert isinstance(fig, Figure)
    out = plotting.save(fig, path)
    assert out == path
    assert path.read_bytes().startswith(PNG_MAGIC)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert min(img.size) > 100


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


def test_evaluation_figures(tmp_path, scores):
    y, s = scores
    cm = {"tn": 150, "fp": 40, "fn": 5, "tp": 205}
    fig = figures.confusion_matrix_figure(cm)
    assert "Predicted class" in _texts(fig) and "True class" in _texts(fig)
    _check_saved(fig, tmp_path / "cm.png")

    fig = figures.roc_figure(y, s, threshold=0.4)
    text = _texts(fig)
    assert "AUC" in text and "operating point" in text and "specificity" in text
    _check_saved(fig, tmp_path / "roc.png")

    fig = figures.pr_figure(y, s, threshold=0.4)
    assert "average precision" in _texts(fig)
    _check_saved(fig, tmp_path / "pr.png")

    p_cal = np.clip(s * 0.8 + 0.1, 0, 1)
    fig = figures.reliability_figure(y, s, p_cal)
    text = _texts(fig)
    assert "before calibration" in text and "after calibration" in text and "ECE" in text
    _check_saved(fig, tmp_path / "rel.png")
    _check_saved(figures.reliability_figure(y, s), tmp_path / "rel1.png")

    fig = figures.threshold_sweep_figure(y, s, threshold=0.4, target_recall=0.98)
    text = _texts(fig)
    assert "recall" in text and "specificity" in text and "operating threshold 0.400" in text
    _check_saved(fig, tmp_path / "sweep.png")


def test_figures_survive_a_single_class(tmp_path):
    y = np.ones(20, dtype=int)
    s = np.linspace(0.1, 0.9, 20)
    for name, fig in {
        "roc": figures.roc_figure(y, s, threshold=0.5),
        "pr": figures.pr_figure(y, s, threshold=0.5),
        "sweep": figures.threshold_sweep_figure(y, s, threshold=0.5),
        "rel": figures.reliability_figure(y, s),
    }.items():
        _check_saved(fig, tmp_path / f"{name}.png")


def test_gallery_figure(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (80 + 10 * i, 64), dtype=np.uint8) for i in range(5)]
    captions = [f"image {i}\np = 0.{i}" for i in range(5)]
    fig = plotting.gallery_figure(images, captions, ncols=3, title="Mistakes")
    assert fig._suptitle.get_text() == "Mistakes"
    assert [ax.get_title() for ax in fig.axes[:5]] == captions
    _check_saved(fig, tmp_path / "gallery.png")
    _check_saved(plotting.gallery_figure([], [], title="Nothing"), tmp_path / "empty.png")
    with pytest.raises(ValueError, match="captions"):
        plotting.gallery_figure(images, captions[:2])


def test_learning_curves_figure(tmp_path):
    history = {
        "loss": [0.7, 0.5, 0.4, 0.35, 0.3],
        "val_loss": [0.65, 0.55, 0.5, 0.45, 0.47],
        "auc": [0.7, 0.8, 0.85, 0.9, 0.92],
        "val_auc": [0.72, 0.79, 0.84, 0.88, 0.89],
        "recall": [0.8, 0.85, 0.9, 0.92, 0.94],
        "val_recall": [0.82, 0.86, 0.88, 0.9, 0.9],
        "learning_rate": [1e-3, 1e-3, 1e-4, 1e-4, 1e-4],
    }
    fig = figures.learning_curves_figure(history, phase_boundaries=[2])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["loss", "auc", "recall", "learning rate"]
    text = _texts(fig)
    assert "training" in text and "validation" in text and "new training phase" in text
    _check_saved(fig, tmp_path / "curves.png")
    _check_saved(figures.learning_curves_figure({"val_loss": [1.0]}), tmp_path / "val_only.png")
    _check_saved(figures.learning_curves_figure({}), tmp_path / "none.png")


def test_comparison_figure(tmp_path, scores):
    y, s = scores
    runs = {
        "baseline": {
            "y_true": y,
            "y_score": s,
            "metrics": {
                "threshold": 0.4,
                "recall": 0.95,
                "specificity": 0.7,
                "accuracy": 0.85,
                "roc_auc": 0.93,
            },
        },
        "mobilenetv2": {
            "y_true": y,
            "y_score": np.sqrt(s),
            "metrics": {
                "threshold": 0.6,
                "recall": 0.98,
                "specificity": 0.8,
                "accuracy": 0.9,
                "roc_auc": None,
            },
        },
    }
    fig = figures.comparison_figure(runs)
    assert "baseline" in _texts(fig) and "mobilenetv2" in _texts(fig)
    _check_saved(fig, tmp_path / "cmp.png")


def test_data_report_figures(tmp_path):
    counts = {
        "train": {"NORMAL": 1341, "PNEUMONIA": 3875},
        "val": {"NORMAL": 8, "PNEUMONIA": 8},
        "test": {"NORMAL": 234, "PNEUMONIA": 390},
    }
    fig = report.class_balance_figure(counts)
    assert "Number of images" in _texts(fig)
    _check_saved(fig, tmp_path / "balance.png")
    rng = np.random.default_rng(2)
    widths = rng.integers(400, 2900, 300)
    heights = (widths * rng.uniform(0.6, 1.1, 300)).astype(int)
    fig = report.size_distribution_figure(widths, heights)
    assert "Width (pixels)" in _texts(fig)
    _check_saved(fig, tmp_path / "sizes.png")
    _check_saved(report.size_distribution_figure([], []), tmp_path / "no_sizes.png")
    with pytest.raises(ValueError, match="same length"):
        report.size_distribution_figure([1, 2], [3])


def test_figures_do_not_use_pyplot():
    # Figures live on their own Agg canvases; pyplot's global list of figures is never touched.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = figures.confusion_matrix_figure({"tn": 1, "fp": 0, "fn": 0, "tp": 1})
    assert fig.canvas.__class__.__name__ == "FigureCanvasAgg"
    assert plt.get_fignums() == before


def test_save_closes_pyplot_figures(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    plt.plot([0, 1], [0, 1])
    plotting.save(fig, tmp_path / "sub" / "plt.png")
    assert (tmp_path / "sub" / "plt.png").is_file()
    assert fig.number not in plt.get_fignums()
