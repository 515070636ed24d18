"""What a training run writes beside its model: ``history.csv`` and ``learning_curves.png``,
``validation_predictions.csv``, and the versions record of ``config.json``. Shared by both
trainers (:mod:`pneumoscan.training.engine`, :mod:`pneumoscan.training.ensemble`)."""

from __future__ import annotations

import csv
import platform
from pathlib import Path

import keras
import numpy as np

from pneumoscan import __version__
from pneumoscan.data.dataset import DecodedSet
from pneumoscan.evaluation import figures
from pneumoscan.models.artifacts import RunFolder
from pneumoscan.plotting import save as save_figure


def package_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run depends on."""
    import sklearn
    import tensorflow as tf

    return {
        "pneumoscan": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }


def write_validation_predictions(
    path: Path, val: DecodedSet, raw: np.ndarray, p_cal: np.ndarray, threshold: float
) -> None:
    """``validation_predictions.csv``: :data:`~pneumoscan.inference.results.VALIDATION_COLUMNS`."""
    from pneumoscan.inference.results import VALIDATION_COLUMNS, labelled_row, make_prediction, write_rows

    rows = (
        {**labelled_row(s, make_prediction(p, threshold)), "p_raw": r}
        for s, r, p in zip(val.samples, raw, p_cal, strict=True)
    )
    write_rows(path, VALIDATION_COLUMNS, rows, digits=6)


def write_history(files: RunFolder, rows: list[dict], phase_boundaries: list[int]) -> None:
    """``history.csv`` (phase and epoch first, then the metrics by name) and ``learning_curves.png``."""
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("phase", "epoch"), k))
    with open(files.history, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    series = {k: [row.get(k, np.nan) for row in rows] for k in keys if k not in ("phase", "epoch", "best")}
    save_figure(
        figures.learning_curves_figure(series, phase_boundaries=phase_boundaries), files.learning_curves
    )
