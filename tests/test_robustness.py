"""The acquisition-shift stress test: shifts are deterministic, keep shapes, and really shift."""

from __future__ import annotations

import numpy as np

from pneumoscan.evaluation.robustness import SHIFTS, stress_report
from pneumoscan.inference.predictor import Predictor
from pneumoscan.testing.models import make_tiny_model
from pneumoscan.testing.synthetic import xray_like


def batch(n=4, size=64):
    return np.stack([xray_like(size, size, seed=i, pneumonia=i % 2 == 1) for i in range(n)])[..., None]


def test_every_shift_is_deterministic_keeps_shape_and_changes_the_image():
    x = batch()
    for name, shift in SHIFTS.items():
        out = shift(x)
        assert out.shape == x.shape and out.dtype == np.uint8, name
        assert np.array_equal(out, shift(x)), f"{name} is not deterministic"
        assert np.abs(out.astype(int) - x).mean() > 1.0, f"{name} barely changes the image"


def test_darker_and_brighter_shifts_move_mean_intensity_the_right_way():
    x = batch()
    assert SHIFTS["darker (gamma 1.5)"](x).mean() < x.mean() < SHIFTS["brighter (gamma 0.67)"](x).mean()
    assert SHIFTS["low contrast (x0.6)"](x).std() < x.std()


def test_stress_report_scores_every_shift_and_the_worst_case(tmp_path):
    predictor = Predictor(make_tiny_model(tmp_path, image_size=64))
    x, y = batch(8), np.array([0, 1] * 4)
    report = stress_report(predictor, x, y, threshold=0.5)
    assert set(report["shifts"]) == set(SHIFTS)
    for metrics in report["shifts"].values():
        assert set(metrics) == {"accuracy", "recall", "specificity", "roc_auc"}
    for key, worst in report["worst"].items():
        assert worst == min(m[key] for m in report["shifts"].values())
