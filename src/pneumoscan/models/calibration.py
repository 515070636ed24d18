"""Calibration of the model's raw pneumonia score into a probability that means what it says.

Three maps, each stored in the model sidecar as a small JSON object with its ``method``:

- :class:`PlattCalibrator` (``"platt"``): ``sigmoid(a * logit(p) + b)``, two parameters;
- the same with ``b = 0`` (``"temperature"``): one parameter, only rescales confidence;
- :class:`IsotonicCalibrator` (``"isotonic"``): a monotone step function, the most flexible.

:func:`choose_calibrator` fits each on out-of-fold predictions and keeps the one with the lowest
patient-grouped cross-validated log loss, so the choice is made on evidence, not by habit.
:func:`calibrator_from_dict` reads any of them back.
"""

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
    method: str = "platt"

    def __post_init__(self):
        if not (math.isfinite(self.a) and self.a > 0.0):
            raise ValueError(f"calibration slope a must be a finite positive number, got {self.a}")
        if not math.isfinite(self.b):
            raise ValueError(f"calibration intercept b must be finite, got {self.b}")
        if self.method not in ("platt", "temperature") or (self.method == "temperature" and self.b != 0.0):
            raise ValueError(
                f"a PlattCalibrator's method is 'platt' or 'temperature' (b = 0), got {self.method!r}"
            )

    @classmethod
    def fit(cls, y_true, p_raw, *, intercept: bool = True) -> PlattCalibrator:
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
        intercept : bool
            Fit ``b`` too (Platt); ``False`` fixes ``b = 0`` (temperature scaling, ``a = 1/T``).
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
        model = LogisticRegression(C=np.inf, max_iter=1000, fit_intercept=intercept)
        model.fit(x, labels, sample_weight=weights)
        a, b = float(model.coef_[0, 0]), float(model.intercept_[0]) if intercept else 0.0
        if not (math.isfinite(a) and a > 0.0 and math.isfinite(b)):
            log.warning("Platt calibration fit gave slope a=%.4g (not increasing); using the identity", a)
            return cls()
        log.info("%s calibration: a=%.4f b=%.4f", "Platt" if intercept else "temperature", a, b)
        return cls(a, b, "platt" if intercept else "temperature")

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

    def to_dict(self) -> dict:
        # Plain Platt keeps the sidecar form it always had ({"a", "b"}), so old files round-trip.
        out = {"a": float(self.a), "b": float(self.b)}
        return out if self.method == "platt" else {**out, "method": self.method}

    @classmethod
    def from_dict(cls, d: dict) -> PlattCalibrator:
        try:
            return cls(float(d["a"]), float(d["b"]), str(d.get("method", "platt")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"calibration must be a mapping with numbers 'a' and 'b', got {d!r}") from exc


@dataclasses.dataclass(frozen=True)
class IsotonicCalibrator:
    """Isotonic regression of the label on the raw score: a non-decreasing step function.

    Attributes
    ----------
    x, y : tuple of float
        Knots, increasing in ``x`` and non-decreasing in ``y``; linear between them and clipped
        outside (:func:`numpy.interp`).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: str = "isotonic"

    def __post_init__(self):
        x, y = np.asarray(self.x, dtype=np.float64), np.asarray(self.y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or x.size < 2:
            raise ValueError("isotonic calibration needs at least two knots with one y per x")
        if not (np.isfinite(x).all() and np.isfinite(y).all() and (np.diff(x) > 0).all()):
            raise ValueError("isotonic calibration knots must be finite with strictly increasing x")
        if (np.diff(y) < 0).any() or y.min() < 0.0 or y.max() > 1.0:
            raise ValueError("isotonic calibration values must be non-decreasing probabilities")

    @classmethod
    def fit(cls, y_true, p_raw) -> IsotonicCalibrator:
        """Fit on raw probabilities ``p_raw`` (shape ``(n,)``) and labels ``y_true`` (0/1)."""
        from sklearn.isotonic import IsotonicRegression

        y, p = _labels_and_probabilities(y_true, p_raw)
        # Kept inside (eps, 1 - eps): a calibrated probability of exactly 0 or 1 would overstate.
        iso = IsotonicRegression(y_min=_EPS, y_max=1.0 - _EPS, out_of_bounds="clip").fit(p, y)
        return cls(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))

    def transform(self, p_raw) -> np.ndarray:
        """Calibrated probabilities, same shape as ``p_raw``, float64."""
        return np.interp(np.asarray(p_raw, dtype=np.float64), self.x, self.y)

    def to_dict(self) -> dict:
        return {"method": self.method, "x": list(self.x), "y": list(self.y)}


#: Every calibration map a sidecar may hold.
Calibrator = PlattCalibrator | IsotonicCalibrator
CALIBRATION_METHODS = ("platt", "temperature", "isotonic")


def calibrator_from_dict(d) -> Calibrator:
    """Read a sidecar's ``calibration`` object (any method; no ``method`` key means Platt)."""
    if not hasattr(d, "get"):
        raise ValueError(f"calibration must be a mapping, got {d!r}")
    method = d.get("method", "platt")
    if method in ("platt", "temperature"):
        return PlattCalibrator.from_dict(d)
    if method == "isotonic":
        try:
            return IsotonicCalibrator(tuple(d["x"]), tuple(d["y"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"isotonic calibration needs lists 'x' and 'y', got {dict(d)!r}") from exc
    raise ValueError(f"unknown calibration method {method!r}; known: {CALIBRATION_METHODS}")


def fit_calibrator(method: str, y_true, p_raw) -> Calibrator:
    """Fit the calibration map called ``method`` (one of :data:`CALIBRATION_METHODS`)."""
    if method == "platt":
        return PlattCalibrator.fit(y_true, p_raw)
    if method == "temperature":
        return PlattCalibrator.fit(y_true, p_raw, intercept=False)
    if method == "isotonic":
        return IsotonicCalibrator.fit(y_true, p_raw)
    raise ValueError(f"unknown calibration method {method!r}; known: {CALIBRATION_METHODS}")


def choose_calibrator(y_true, p_raw, *, groups, folds: int = 5, seed: int = 0) -> tuple[Calibrator, dict]:
    """Fit every method and keep the one with the lowest cross-validated log loss.

    The cross-validation keeps each patient's images in one fold (``groups``), so the score of a
    map is measured on patients it was not fitted on.

    Parameters
    ----------
    y_true : array-like of shape (n,), int 0/1
    p_raw : array-like of shape (n,), float in 0..1
        Out-of-fold raw probabilities (never predictions on the model's own training images).
    groups : sequence of str, length n
        Patient ids.

    Returns
    -------
    calibrator : PlattCalibrator or IsotonicCalibrator
        The chosen method, refitted on all of ``p_raw``.
    evidence : dict
        Per method: cross-validated ``log_loss`` and ``brier``; and ``chosen``.
    """
    from sklearn.model_selection import GroupKFold

    y, p = _labels_and_probabilities(y_true, p_raw)
    groups = np.asarray([str(g) for g in groups])
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    evidence: dict = {}
    for method in CALIBRATION_METHODS:
        out = np.empty_like(p)
        for fit_idx, test_idx in splitter.split(p, y, groups):
            out[test_idx] = fit_calibrator(method, y[fit_idx], p[fit_idx]).transform(p[test_idx])
        q = np.clip(out, _EPS, 1.0 - _EPS)
        evidence[method] = {
            "log_loss": float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))),
            "brier": float(np.mean((out - y) ** 2)),
        }
    chosen = min(CALIBRATION_METHODS, key=lambda m: evidence[m]["log_loss"])
    evidence["chosen"] = chosen
    log.info("calibration chosen on cross-validated log loss: %s (%s)", chosen, evidence)
    return fit_calibrator(chosen, y, p), evidence


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
