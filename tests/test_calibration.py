"""Calibration maps: each method's fit, its JSON form, and the choice among them on evidence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from pneumoscan.models.calibration import (
    CALIBRATION_METHODS,
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
    choose_calibrator,
    fit_calibrator,
)


def overconfident(n: int = 4000, *, seed: int = 0, squash: float = 3.0):
    """Labels drawn from true probabilities, and raw scores three times too confident in logit."""
    rng = np.random.default_rng(seed)
    true_p = expit(rng.normal(0.0, 1.5, n))
    y = (rng.random(n) < true_p).astype(int)
    return y, expit(squash * logit(true_p)), true_p


def test_platt_and_temperature_undo_an_overconfident_logit():
    y, raw, _ = overconfident()
    platt = PlattCalibrator.fit(y, raw)
    temperature = PlattCalibrator.fit(y, raw, intercept=False)
    assert platt.a == pytest.approx(1 / 3, abs=0.05) and abs(platt.b) < 0.1
    assert temperature.method == "temperature" and temperature.b == 0.0
    assert temperature.a == pytest.approx(1 / 3, abs=0.05)


def test_isotonic_is_monotone_in_range_and_round_trips():
    y, raw, _ = overconfident(seed=1)
    iso = IsotonicCalibrator.fit(y, raw)
    grid = np.linspace(0, 1, 101)
    out = iso.transform(grid)
    assert (np.diff(out) >= 0).all() and out.min() > 0 and out.max() < 1
    assert calibrator_from_dict(iso.to_dict()) == iso


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_every_method_round_trips_through_json(method):
    y, raw, _ = overconfident(seed=2)
    fitted = fit_calibrator(method, y, raw)
    again = calibrator_from_dict(fitted.to_dict())
    np.testing.assert_allclose(again.transform(raw), fitted.transform(raw), atol=1e-6)


def test_plain_platt_keeps_the_sidecar_form_older_files_have():
    assert PlattCalibrator(1.5, -0.2).to_dict() == {"a": 1.5, "b": -0.2}
    assert calibrator_from_dict({"a": 1.5, "b": -0.2}) == PlattCalibrator(1.5, -0.2)


def test_choice_follows_the_evidence():
    # A logit distortion: the two-parameter map is the right model, isotonic only approximates it.
    y, raw, _ = overconfident(seed=3)
    chosen, evidence = choose_calibrator(y, raw, groups=np.arange(len(y)) // 2)
    assert evidence["chosen"] == chosen.method in ("platt", "temperature")
    assert evidence[chosen.method]["log_loss"] == min(evidence[m]["log_loss"] for m in CALIBRATION_METHODS)
    # A step-shaped truth (only the order of the scores carries information) favours isotonic.
    rng = np.random.default_rng(4)
    raw = rng.random(6000)
    y = (rng.random(6000) < np.where(raw < 0.5, 0.05, np.where(raw < 0.52, 0.95, 0.6))).astype(int)
    chosen, evidence = choose_calibrator(y, raw, groups=np.arange(6000))
    assert chosen.method == "isotonic", evidence


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"method": "magic"}, "unknown calibration method"),
        ({"method": "isotonic", "x": [0.1]}, "isotonic calibration needs"),
        ({"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2]}, "strictly increasing"),
        ({"method": "temperature", "a": 1.0, "b": 0.5}, "temperature"),
        ({"a": -1.0, "b": 0.0}, "positive"),
    ],
)
def test_bad_calibration_objects_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        calibrator_from_dict(bad)
