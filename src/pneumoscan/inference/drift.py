"""Drift: how far an intake's images lie from the training images, and what to do about it.

The measure is the scope guard's (:class:`~pneumoscan.inference.scope.ScopeGuard`): the Mahalanobis
distance of each image's embedding to the training images', divided by the guard's threshold (1.0 is
the threshold). Two questions are asked of a batch of unlabelled images:

- **the share beyond the threshold**, against the guard's own false-alarm rate on held-out training
  images (1 %), with a one-sided binomial test;
- **the whole distribution**, against the training images' held-out distances stored in the sidecar
  (``scope.reference``, 101 quantiles), with a one-sided Kolmogorov-Smirnov test: are these images
  farther than the training images are from each other?

and :func:`drift_summary` turns them into one verdict (:data:`SIMILAR`, :data:`DIFFERS`,
:data:`OUT_OF_SCOPE` or :data:`TOO_FEW`). ``pneumoscan drift``, ``pneumoscan predict``'s batch
summary, the Ray engine, the service and the app's batch summary all call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pneumoscan.inference.scope import REFERENCE_QUANTILES, ScopeGuard

SIMILAR = "no sign of drift"
DIFFERS = "this intake differs from the training images"
OUT_OF_SCOPE = "most of these images are unlike the training images"
TOO_FEW = "too few images to judge"

#: Fewest scored images a verdict is given on.
MIN_DRIFT_IMAGES = 20
#: p-value under which a difference is reported.
DRIFT_ALPHA = 0.01
#: Share of images beyond the guard's threshold from which the intake is called out of scope.
OUT_OF_SCOPE_SHARE = 0.5

ADVICE = {
    SIMILAR: "the stored threshold was set on images like these",
    DIFFERS: "run pneumoscan site-check on labelled images of this intake before trusting the threshold",
    OUT_OF_SCOPE: "do not use this model as it is on this intake: it was trained on pediatric frontal chest "
    "X-rays; if these are such films taken another way, run pneumoscan site-check and adapt first",
    TOO_FEW: f"score at least {MIN_DRIFT_IMAGES} images",
}


def _reference_cdf(reference: np.ndarray):
    """The piecewise-linear CDF through the stored quantiles (flat beyond their range)."""
    levels = REFERENCE_QUANTILES
    values = np.maximum.accumulate(np.asarray(reference, dtype=np.float64))

    def cdf(x):
        return np.interp(x, values, levels, left=0.0, right=1.0)

    return cdf


# The two tests below are scipy.stats.binomtest(..., alternative="greater").pvalue and
# scipy.stats.kstest(..., alternative="less").pvalue, written with the distribution functions they
# call (scipy.special.bdtrc, scipy.special.smirnov): importing scipy.stats took 0.65 s on 2 cores,
# a fifth of a 300-file `pneumoscan predict` job, all of it after the last image was scored.
# tests/test_site.py checks both against scipy.stats on random intakes.


def share_p_value(beyond: int, n: int, rate: float) -> float:
    """One-sided binomial test: P(X >= ``beyond``) for X ~ Binomial(``n``, ``rate``)."""
    from scipy.special import bdtrc

    return 1.0 if beyond <= 0 else float(bdtrc(beyond - 1, n, rate))


def distribution_p_value(distances: np.ndarray, cdf) -> float:
    """One-sided one-sample Kolmogorov-Smirnov test that ``distances`` come from ``cdf``, against
    the alternative that their CDF lies below it (they are larger): statistic D- = max over the
    sorted sample of cdf(x_i) - (i - 1) / n, exact p-value ``smirnov(n, D-)``."""
    from scipy.special import smirnov

    x = np.sort(np.asarray(distances, dtype=np.float64))
    d_minus = float(np.max(cdf(x) - np.arange(x.size) / x.size))
    return float(np.clip(smirnov(x.size, d_minus), 0.0, 1.0))


def drift_summary(distances: np.ndarray, guard: ScopeGuard | None) -> dict[str, Any]:
    """The verdict on a batch's relative guard distances (score / threshold; NaN = not scored).

    Returns
    -------
    dict
        ``n`` (images with a distance), ``median_distance``, ``share_beyond`` (above 1.0),
        ``expected_share`` (the guard's false-alarm rate), ``p_share`` (one-sided binomial),
        ``p_distribution`` (one-sided KS against ``scope.reference``; ``None`` without one),
        ``verdict``, ``advice`` and ``summary`` (one line). Without a guard: ``verdict`` ``None``.
    """
    d = np.asarray(distances, dtype=np.float64)
    d = d[np.isfinite(d)]
    out: dict[str, Any] = {"n": int(d.size), "verdict": None}
    if guard is None:
        out["summary"] = "this model has no scope guard: drift cannot be measured"
        return out
    out["expected_share"] = guard.false_alarm_rate
    if d.size < MIN_DRIFT_IMAGES:
        out.update(verdict=TOO_FEW, advice=ADVICE[TOO_FEW])
        out["summary"] = f"{d.size} image(s) scored: {TOO_FEW} ({ADVICE[TOO_FEW]})"
        return out
    beyond = int(np.sum(d > 1.0))
    out["median_distance"] = float(np.median(d))
    out["share_beyond"] = beyond / d.size
    out["p_share"] = share_p_value(beyond, d.size, guard.false_alarm_rate)
    out["p_distribution"] = None
    if guard.reference is not None:
        # alternative="less": the intake's CDF lies below the reference's, i.e. its distances are larger.
        out["p_distribution"] = distribution_p_value(d, _reference_cdf(guard.reference))
        out["reference_median"] = float(np.interp(0.5, REFERENCE_QUANTILES, guard.reference))
    p_values = [p for p in (out["p_share"], out["p_distribution"]) if p is not None]
    if out["share_beyond"] >= OUT_OF_SCOPE_SHARE:
        verdict = OUT_OF_SCOPE
    elif min(p_values) < DRIFT_ALPHA:
        verdict = DIFFERS
    else:
        verdict = SIMILAR
    out.update(verdict=verdict, advice=ADVICE[verdict])
    out["summary"] = (
        f"{verdict}: {out['share_beyond']:.1%} of {d.size} images beyond the scope guard's threshold "
        f"(training images: {guard.false_alarm_rate:.1%}, p = {out['p_share']:.2g}); median distance "
        f"{out['median_distance']:.2f}"
        + (
            f" against {out['reference_median']:.2f} for held-out training images "
            f"(p = {out['p_distribution']:.2g})"
            if out["p_distribution"] is not None
            else ""
        )
        + f". {ADVICE[verdict][0].upper()}{ADVICE[verdict][1:]}."
    )
    return out


def relative_distances(guard: ScopeGuard | None, embedding: np.ndarray | None) -> np.ndarray | None:
    """Score / threshold of each embedding (NaN rows stay NaN); ``None`` without a guard."""
    if guard is None or embedding is None:
        return None
    return guard.score(embedding) / guard.threshold


def reference_quantiles(guard: ScopeGuard, embeddings: np.ndarray, groups, *, seed: int) -> np.ndarray:
    """The drift reference of ``guard`` from its training images' embeddings.

    For a guard fitted before :attr:`ScopeGuard.reference` was recorded: the training images'
    out-of-fold scores (same folds, dimensions and seed as :meth:`ScopeGuard.fit`) over the stored
    threshold, at :data:`REFERENCE_QUANTILES`.
    """
    dims = int(guard.whitening.shape[0])
    oof = ScopeGuard.out_of_fold_scores(
        embeddings, groups=groups, seed=seed, n_folds=guard.n_folds, dims=dims
    )
    return np.quantile(oof / guard.threshold, REFERENCE_QUANTILES)


def batch_drift(rows, guard: ScopeGuard | Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`drift_summary` of prediction rows (:data:`~pneumoscan.inference.results.PREDICTION_COLUMNS`,
    their ``scope_distance``): the per-batch summary of the service, the Ray engine and the app.
    ``guard`` may be a sidecar's ``scope`` section (a read-only mapping, as ModelMetadata keeps it)."""
    if isinstance(guard, Mapping):
        guard = ScopeGuard.from_dict(guard)
    distances = [np.nan if r.get("scope_distance") is None else float(r["scope_distance"]) for r in rows]
    return drift_summary(np.asarray(distances, dtype=np.float64), guard)
