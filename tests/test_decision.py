"""The three-outcome decision rule and its uncertainty band (:mod:`pneumoscan.inference.decision`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumoscan.config import DEFAULT_KERAS_MODEL_PATH
from pneumoscan.inference.decision import (
    NO_PNEUMONIA,
    OUT_OF_SCOPE,
    PNEUMONIA,
    UNCERTAIN,
    UncertaintyBand,
    band_summary,
    decide,
    decide_many,
    fit_uncertainty_band,
    out_of_scope_decision,
)
from pneumoscan.models.artifacts import ModelMetadata

ORDER = {NO_PNEUMONIA: 0, UNCERTAIN: 1, PNEUMONIA: 2}


@pytest.fixture(scope="module")
def stored() -> ModelMetadata:
    """The released model's sidecar: the rule is tested at its stored threshold and band."""
    return ModelMetadata.read(DEFAULT_KERAS_MODEL_PATH)


def stored_band(meta: ModelMetadata) -> UncertaintyBand:
    decision = meta.decision
    if decision and decision.get("band"):
        return UncertaintyBand.from_dict(decision["band"])
    return UncertaintyBand.minimal(meta.threshold)


# --------------------------------------------------------------------------- at the stored threshold


def test_issue_case_between_half_and_the_threshold_is_uncertain():
    # IM-0015-0001.jpeg scored 0.851 under the previous release's threshold 0.912 and read
    # "No pneumonia detected — confidence 15 %"; with that threshold and no fitted band it is uncertain.
    d = decide(0.851, threshold=0.912, band=UncertaintyBand.minimal(0.912))
    assert d.outcome == UNCERTAIN
    assert d.stated_probability is None
    assert "uncertain band" in d.reason


def test_between_half_and_stored_threshold_is_uncertain(stored):
    t = stored.threshold
    for p in np.linspace(min(0.5, t), max(0.5, t), 7)[:-1]:
        d = decide(p, threshold=t, band=stored_band(stored))
        assert d.outcome == UNCERTAIN and d.stated_probability is None


def test_stored_threshold_clear_cases(stored):
    band = stored_band(stored)
    low = decide(min(band.low, 0.5) / 2, threshold=stored.threshold, band=band)
    assert low.outcome == NO_PNEUMONIA and low.stated_probability >= 0.5
    high = decide((band.high + 1.0) / 2, threshold=stored.threshold, band=band)
    assert high.outcome == PNEUMONIA and high.stated_probability == pytest.approx((band.high + 1.0) / 2)


def test_band_edges_at_stored_threshold(stored):
    band = stored_band(stored)
    t = stored.threshold
    assert decide(band.low, threshold=t, band=band).outcome == UNCERTAIN  # low edge is inside
    assert decide(np.nextafter(band.low, 0.0), threshold=t, band=band).outcome == NO_PNEUMONIA
    assert decide(band.high, threshold=t, band=band).outcome == PNEUMONIA  # high edge is outside
    assert decide(np.nextafter(band.high, 0.0), threshold=t, band=band).outcome == UNCERTAIN
    assert decide(0.5, threshold=t, band=band).outcome == UNCERTAIN
    assert decide(np.nextafter(t, 0.0), threshold=t, band=band).outcome == UNCERTAIN


def test_minimal_band_edges():
    assert UncertaintyBand.minimal(0.91) == UncertaintyBand(0.5, 0.91)
    assert UncertaintyBand.minimal(0.2) == UncertaintyBand(0.2, 0.5)
    assert decide(0.5, threshold=0.5).outcome == PNEUMONIA  # empty band: the plain threshold
    assert decide(0.4999, threshold=0.5).outcome == NO_PNEUMONIA
    assert decide(0.3, threshold=0.2).outcome == UNCERTAIN  # low threshold: P(pneumonia) 30 % not stated


def test_band_that_misses_the_half_to_threshold_stretch_is_refused():
    with pytest.raises(ValueError, match="must cover the stretch between 0.5 and the threshold"):
        decide(0.7, threshold=0.9, band=UncertaintyBand(0.6, 0.95))
    with pytest.raises(ValueError, match="must cover"):
        decide(0.3, threshold=0.2, band=UncertaintyBand(0.1, 0.45))
    with pytest.raises(ValueError, match="must not be above"):
        UncertaintyBand(0.6, 0.4)
    with pytest.raises(ValueError, match=r"p_pneumonia must be in \[0, 1\]"):
        decide(1.2, threshold=0.5)


def test_spread_above_cap_is_uncertain_whatever_p():
    band = UncertaintyBand(0.4, 0.9, max_spread=0.1)
    assert decide(0.99, threshold=0.8, band=band, spread=0.2).outcome == UNCERTAIN
    assert "disagree" in decide(0.01, threshold=0.8, band=band, spread=0.2).reason
    assert decide(0.99, threshold=0.8, band=band, spread=0.05).outcome == PNEUMONIA
    assert decide(0.99, threshold=0.8, band=UncertaintyBand(0.4, 0.9), spread=0.5).outcome == PNEUMONIA


def test_out_of_scope_decision_has_no_probability():
    d = out_of_scope_decision("colour image: not a radiograph")
    assert d.outcome == OUT_OF_SCOPE and d.p_pneumonia is None and d.stated_probability is None


def test_band_round_trips_through_json():
    band = UncertaintyBand(0.3, 0.95, max_spread=0.12, error_share=0.6, referral_rate=0.08, n=100)
    assert UncertaintyBand.from_dict(band.to_dict()) == band
    with pytest.raises(ValueError, match="unknown keys"):
        UncertaintyBand.from_dict({"low": 0.1, "high": 0.9, "width": 3})


def test_decide_many_matches_decide():
    rng = np.random.default_rng(0)
    p, spread = rng.uniform(size=300), rng.uniform(0, 0.3, size=300)
    band = UncertaintyBand(0.35, 0.93, max_spread=0.2)
    many = decide_many(p, threshold=0.9, band=band, spread=spread)
    assert list(many) == [
        decide(a, threshold=0.9, band=band, spread=s).outcome for a, s in zip(p, spread, strict=True)
    ]


# --------------------------------------------------------------------------- invariants


bands = st.tuples(
    st.floats(0.01, 0.99), st.floats(0, 1), st.floats(0, 1), st.one_of(st.none(), st.floats(0, 0.5))
).map(
    lambda t: (
        t[0],
        UncertaintyBand(min(t[0], 0.5) * t[1], max(t[0], 0.5) + (1 - max(t[0], 0.5)) * t[2], max_spread=t[3]),
    )
)


@settings(max_examples=400, deadline=None)
@given(p=st.floats(0, 1), threshold_band=bands, spread=st.one_of(st.none(), st.floats(0, 0.5)))
def test_stated_outcome_is_never_the_less_probable_class(p, threshold_band, spread):
    threshold, band = threshold_band
    d = decide(p, threshold=threshold, band=band, spread=spread)
    if d.outcome == PNEUMONIA:
        assert p >= 0.5 and p >= threshold and d.stated_probability == p
    elif d.outcome == NO_PNEUMONIA:
        assert 1 - p >= 0.5 and p < threshold and d.stated_probability == 1 - p
    else:
        assert d.outcome == UNCERTAIN and d.stated_probability is None


@settings(max_examples=300, deadline=None)
@given(
    a=st.floats(0, 1), b=st.floats(0, 1), threshold_band=bands, spread=st.one_of(st.none(), st.floats(0, 0.5))
)
def test_outcome_is_monotonic_in_p(a, b, threshold_band, spread):
    threshold, band = threshold_band
    lo, hi = sorted((a, b))
    first = decide(lo, threshold=threshold, band=band, spread=spread).outcome
    second = decide(hi, threshold=threshold, band=band, spread=spread).outcome
    assert ORDER[first] <= ORDER[second]


# --------------------------------------------------------------------------- fitting


def synthetic_oof(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated-looking scores: y ~ Bernoulli(p) with p spread over [0, 1]."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.6, 0.4, size=n)
    return p, (rng.uniform(size=n) < p).astype(int)


def test_fitted_band_holds_the_stated_share_of_errors_at_the_least_referral():
    p, y = synthetic_oof()
    t = 0.85
    band = fit_uncertainty_band(p, y, threshold=t, error_share=0.6)
    band.check(t)
    errors = (p >= t).astype(int) != y
    inside = (p >= band.low) & (p < band.high)
    assert band.error_share == pytest.approx(errors[inside].sum() / errors.sum())
    assert band.error_share >= 0.6
    assert band.referral_rate == pytest.approx(inside.mean())
    assert band.n == len(p)
    # Any band holding as many errors that also covers [0.5, t) refers at least as many images.
    for low in np.linspace(0, 0.5, 26):
        for high in np.linspace(t, 1.0, 16):
            inside2 = (p >= low) & (p < high)
            if errors[inside2].sum() >= 0.6 * errors.sum():
                assert inside2.mean() >= band.referral_rate - 2.0 / len(p)


def test_fitted_band_is_minimal_when_it_already_holds_enough():
    p, y = synthetic_oof()
    band = fit_uncertainty_band(p, y, threshold=0.6, error_share=0.0)
    assert (band.low, band.high) == (0.5, 0.6)


def test_fitted_band_uses_spread_when_it_is_cheaper():
    p, y = synthetic_oof()
    errors = (p >= 0.7).astype(int) != y
    rng = np.random.default_rng(1)  # spread that singles out the errors
    spread = np.where(errors, rng.uniform(0.2, 0.4, len(p)), rng.uniform(0.0, 0.1, len(p)))
    band = fit_uncertainty_band(p, y, threshold=0.7, error_share=0.9, spread=spread)
    assert band.max_spread is not None and band.error_share >= 0.9
    assert band.referral_rate < fit_uncertainty_band(p, y, threshold=0.7, error_share=0.9).referral_rate


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="one length"):
        fit_uncertainty_band(np.zeros(3), np.zeros(4), threshold=0.5)
    with pytest.raises(ValueError, match="0/1 labels"):
        fit_uncertainty_band(np.zeros(3), np.array([0, 1, 2]), threshold=0.5)


def test_band_summary_states_both_numbers():
    text = band_summary(UncertaintyBand(0.3, 0.95, error_share=0.62, referral_rate=0.081, n=5216))
    assert "62% of the errors" in text and "8.1% of images referred" in text


# --------------------------------------------------------------------------- the released model's rule


def test_released_band_is_fitted_and_shared_by_the_app_model(stored):
    """The band is stored with the model (not the minimal one), the LiteRT export the app serves
    carries the same threshold and band, and its Predictor uses them."""
    from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH
    from pneumoscan.inference.predictor import Predictor

    band = stored_band(stored)
    assert band != UncertaintyBand.minimal(stored.threshold)
    assert band.low < min(0.5, stored.threshold) and band.high > max(0.5, stored.threshold)
    assert band.error_share >= 0.5 and 0 < band.referral_rate < 0.1 and band.n > 0
    app = ModelMetadata.read(DEFAULT_LITERT_MODEL_PATH)
    assert app.threshold == stored.threshold and stored_band(app) == band
    predictor = Predictor(DEFAULT_LITERT_MODEL_PATH, num_threads=1)
    assert predictor.threshold == stored.threshold and predictor.band == band
    assert f"held {band.error_share:.0%} of the errors" in band_summary(band)


@settings(max_examples=300, deadline=None)
@given(p=st.floats(0, 1))
def test_stored_rule_states_only_the_more_probable_class(stored, p):
    band, t = stored_band(stored), stored.threshold
    d = decide(p, threshold=t, band=band)
    expected = PNEUMONIA if p >= band.high else NO_PNEUMONIA if p < band.low else UNCERTAIN
    assert d.outcome == expected
    assert decide_many(np.array([p]), threshold=t, band=band)[0] == expected
    if d.stated_probability is not None:
        assert d.stated_probability >= 0.5
        assert d.stated_probability == (p if expected == PNEUMONIA else 1 - p)
    if 0.5 <= p < t or t <= p < 0.5:  # between 0.5 and the threshold: never a stated outcome
        assert expected == UNCERTAIN
