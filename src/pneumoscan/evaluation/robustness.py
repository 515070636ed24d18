"""Acquisition-shift stress test: validation images re-rendered as another machine might take them.

A random patient-level split is too kind: its images come from the same machines and protocols as
the training images, so it cannot show whether a model leans on exposure, contrast or framing.
The official test split is shifted in exactly that way (models trained here call many of its normal
images pneumonia), so every run is also scored on its validation images under each shift below,
and recipes are compared on the worst case, not on the clean split alone.

Each shift maps ``uint8`` batches ``(n, s, s, 1)`` to the same shape; all are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter


def _per_image(fn: Callable[[Image.Image], Image.Image]) -> Callable[[np.ndarray], np.ndarray]:
    def apply(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for i in range(len(x)):
            out[i, :, :, 0] = np.asarray(fn(Image.fromarray(x[i, :, :, 0], "L")), dtype=np.uint8)
        return out

    return apply


def _gamma(g: float) -> Callable[[np.ndarray], np.ndarray]:
    lut = np.round(255.0 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
    return lambda x: lut[x]


def _contrast(c: float) -> Callable[[np.ndarray], np.ndarray]:
    def apply(x: np.ndarray) -> np.ndarray:
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return np.clip((x - mean) * c + mean, 0, 255).astype(np.uint8)

    return apply


def _zoom(f: float) -> Callable[[np.ndarray], np.ndarray]:
    """f < 1: a tighter crop of the centre; f > 1: the image shrunk inside a black border."""

    def fn(img: Image.Image) -> Image.Image:
        s = img.size[0]
        if f < 1:
            m = int(round(s * (1 - f) / 2))
            return img.crop((m, m, s - m, s - m)).resize((s, s), Image.Resampling.BILINEAR)
        inner = int(round(s / f))
        canvas = Image.new("L", (s, s), 0)
        canvas.paste(img.resize((inner, inner), Image.Resampling.BILINEAR), ((s - inner) // 2,) * 2)
        return canvas

    return _per_image(fn)


#: Name -> transform. Magnitudes are at or beyond the training augmentation's range on purpose.
SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "darker (gamma 1.5)": _gamma(1.5),
    "brighter (gamma 0.67)": _gamma(1 / 1.5),
    "low contrast (x0.6)": _contrast(0.6),
    "blurred (radius 1.5)": _per_image(lambda im: im.filter(ImageFilter.GaussianBlur(1.5))),
    "tight crop (85 %)": _zoom(0.85),
    "wide framing (border)": _zoom(1.15),
}


def stress_report(predictor, x: np.ndarray, y: np.ndarray, *, threshold: float) -> dict:
    """Metrics of ``predictor`` on ``x`` under every shift in :data:`SHIFTS`.

    Parameters
    ----------
    predictor : pneumoscan.inference.predictor.Predictor
    x : ndarray of shape (n, s, s, 1), uint8
    y : ndarray of shape (n,), 0/1
    threshold : float
        Operating threshold on calibrated probabilities.

    Returns
    -------
    dict
        ``{"shifts": {name: {accuracy, recall, specificity, roc_auc}}, "worst": {...}}``; ``worst``
        holds the lowest value of each metric over the shifts.
    """
    from pneumoscan.evaluation.metrics import binary_metrics

    keys = ("accuracy", "recall", "specificity", "roc_auc")
    shifts = {}
    for name, transform in SHIFTS.items():
        m = binary_metrics(y, predictor.predict_proba(transform(x)), threshold=threshold)
        shifts[name] = {k: m[k] for k in keys}
    worst = {k: min(v[k] for v in shifts.values() if v[k] is not None) for k in keys}
    return {"shifts": shifts, "worst": worst}


def stress_from_predictions(y: np.ndarray, p: np.ndarray, shift_names, *, threshold: float) -> dict:
    """:func:`stress_report`'s result from predictions already made, one shift per image.

    Parameters
    ----------
    y : ndarray of shape (n,), 0/1
    p : ndarray of shape (n,)
        Calibrated P(pneumonia) of each image under its shift.
    shift_names : sequence of str, length n
        Keys of :data:`SHIFTS`.
    threshold : float
    """
    from pneumoscan.evaluation.metrics import binary_metrics

    keys = ("accuracy", "recall", "specificity", "roc_auc")
    names = np.asarray(shift_names)
    shifts = {}
    for name in SHIFTS:
        held = names == name
        if held.any():
            m = binary_metrics(np.asarray(y)[held], np.asarray(p)[held], threshold=threshold)
            shifts[name] = {k: m[k] for k in keys} | {"n": int(held.sum())}
    worst = {k: min((v[k] for v in shifts.values() if v[k] is not None), default=None) for k in keys}
    return {"shifts": shifts, "worst": worst}
