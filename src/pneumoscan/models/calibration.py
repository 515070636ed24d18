"""Calibration of the model's raw pneumonia score into a probability that means what it says."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

#: Probabilities are clipped to this margin before taking their logit.
_EPS = 1e-6


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

        y, p = _labels_and_probabilities(y_true, p_raw)
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
            return cls()
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


def _labels_and_probabilities(y_true, p_raw) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(p_raw, dtype=np.float64)
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"y_true and p_raw must be 1-D of the same length, got {y.shape} and {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (NORMAL) or 1 (PNEUMONIA) only")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("p_raw must hold finite probabilities in 0..1")
    return y.astype(np.int64), p


def _logit(p: np.ndarray) -> np.ndarray:
    from scipy.special import logit

    return logit(np.clip(p, _EPS, 1.0 - _EPS))
