"""The decision for one image, in three outcomes, and the uncertainty band it rests on.

One rule, used by every surface (CLI, app, CSV, evaluation, services): a calibrated P(pneumonia)
``p`` is read against the operating ``threshold`` and an :class:`UncertaintyBand` ``[low, high)``
that contains the threshold:

- ``p < low``: :data:`NO_PNEUMONIA`, "No pneumonia detected";
- ``low <= p < high``: :data:`UNCERTAIN`, "Uncertain — needs a closer look";
- ``p >= high``: :data:`PNEUMONIA`, "Pneumonia suspected";
- and :data:`UNCERTAIN` whatever ``p`` when the ensemble's members disagree by more than the band's
  ``max_spread`` (when it has one).

The band always covers the stretch between 0.5 and the threshold, so a stated outcome is always the
more probable class: "No pneumonia detected" only with P(normal) >= 0.5, "Pneumonia suspected"
only with P(pneumonia) >= 0.5 (checked in :class:`UncertaintyBand` and by property tests). With no
fitted band (older models) the narrowest such band is used, :meth:`UncertaintyBand.minimal`.

The band is fitted on held-out predictions of the training images
(:func:`fit_uncertainty_band`): the narrowest band, in share of images referred, that holds a
stated share of the out-of-fold errors at the threshold. Both numbers are stored with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

#: The three outcomes, as written in the ``decision`` column, and a fourth for images that are not
#: radiographs at all (no probabilities; :mod:`pneumoscan.inference.scope`).
PNEUMONIA = "pneumonia suspected"
NO_PNEUMONIA = "no pneumonia detected"
UNCERTAIN = "uncertain"
OUT_OF_SCOPE = "out of scope"
DECISIONS = (NO_PNEUMONIA, UNCERTAIN, PNEUMONIA, OUT_OF_SCOPE)

#: How people read each outcome (headlines of the app, the CLI's table).
HEADLINES = {
    PNEUMONIA: "Pneumonia suspected",
    NO_PNEUMONIA: "No pneumonia detected",
    UNCERTAIN: "Uncertain — needs a closer look",
    OUT_OF_SCOPE: "Out of scope — not assessed",
}

#: Default share of out-of-fold errors the fitted band must hold.
DEFAULT_ERROR_SHARE = 0.5


def _probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class UncertaintyBand:
    """Where the rule says "uncertain": ``low <= P(pneumonia) < high``, or members disagreeing.

    Attributes
    ----------
    low, high : float in [0, 1]
        Edges on the calibrated P(pneumonia); ``low <= min(threshold, 0.5)`` and
        ``high >= max(threshold, 0.5)`` for the threshold it is used with (:meth:`check`).
    max_spread : float or None
        Above this spread of the members' P(pneumonia) (standard deviation) an image is uncertain
        whatever its mean; ``None``: the spread is shown but not used.
    error_share : float or None
        Share of the out-of-fold errors at the threshold that fell in the band when it was fitted.
    referral_rate : float or None
        Share of the out-of-fold images that fell in the band: its cost in referrals.
    n : int or None
        Out-of-fold images it was fitted on.
    """

    low: float
    high: float
    max_spread: float | None = None
    error_share: float | None = None
    referral_rate: float | None = None
    n: int | None = None

    def __post_init__(self):
        low, high = _probability("low", self.low), _probability("high", self.high)
        if low > high:
            raise ValueError(f"band low ({low}) must not be above high ({high})")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        if self.max_spread is not None:
            object.__setattr__(self, "max_spread", _probability("max_spread", self.max_spread))
        for name in ("error_share", "referral_rate"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _probability(name, getattr(self, name)))

    @classmethod
    def minimal(cls, threshold: float) -> UncertaintyBand:
        """The narrowest band the rule allows at ``threshold``: between 0.5 and the threshold."""
        threshold = _probability("threshold", threshold)
        return cls(min(threshold, 0.5), max(threshold, 0.5))

    def check(self, threshold: float) -> None:
        """Raise ValueError unless the band covers ``[min(threshold, 0.5), max(threshold, 0.5))``.

        Without it, a P(pneumonia) between 0.5 and the threshold would be stated as the less
        probable outcome (e.g. "No pneumonia detected" at P(normal) = 15 %).
        """
        threshold = _probability("threshold", threshold)
        if self.low > min(threshold, 0.5) or self.high < max(threshold, 0.5):
            raise ValueError(
                f"uncertainty band [{self.low:.4f}, {self.high:.4f}) must cover the stretch between 0.5 and "
                f"the threshold {threshold:.4f}; refit it (fit_uncertainty_band) for this threshold"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the sidecar's ``decision.band``); ``None`` entries left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UncertaintyBand:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"uncertainty band has unknown keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**dict(d))


@dataclasses.dataclass(frozen=True)
class Decision:
    """The decision for one image.

    Attributes
    ----------
    outcome : str
        One of :data:`DECISIONS`.
    headline : str
        The outcome in words (:data:`HEADLINES`).
    p_pneumonia : float or None
        Calibrated P(pneumonia); ``None`` for :data:`OUT_OF_SCOPE`.
    stated_probability : float or None
        The probability of the stated outcome: P(pneumonia) for :data:`PNEUMONIA`, P(normal) for
        :data:`NO_PNEUMONIA`, always >= 0.5; ``None`` for the other outcomes.
    reason : str
        Why this outcome, in one sentence.
    """

    outcome: str
    headline: str
    p_pneumonia: float | None
    stated_probability: float | None
    reason: str


def decide(
    p_pneumonia: float, *, threshold: float, band: UncertaintyBand | None = None, spread: float | None = None
) -> Decision:
    """Apply the rule to one calibrated probability.

    Parameters
    ----------
    p_pneumonia : float in [0, 1]
        Calibrated P(pneumonia) (the ensemble's combined probability).
    threshold : float in (0, 1)
        The model's operating threshold (the stored one, unless overridden).
    band : UncertaintyBand, optional
        Default: :meth:`UncertaintyBand.minimal` at ``threshold``. Must cover the stretch between
        0.5 and the threshold (ValueError otherwise).
    spread : float, optional
        Spread (standard deviation) of the members' P(pneumonia); used only when the band has a
        ``max_spread``.

    Returns
    -------
    Decision
    """
    p = _probability("p_pneumonia", p_pneumonia)
    threshold = _probability("threshold", threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    band = UncertaintyBand.minimal(threshold) if band is None else band
    band.check(threshold)
    if spread is not None and band.max_spread is not None and float(spread) > band.max_spread:
        reason = (
            f"the ensemble's models disagree (spread {float(spread):.1%} of P(pneumonia), above "
            f"{band.max_spread:.1%})"
        )
        return Decision(UNCERTAIN, HEADLINES[UNCERTAIN], p, None, reason)
    if p >= band.high:
        return Decision(
            PNEUMONIA, HEADLINES[PNEUMONIA], p, p, f"P(pneumonia) {p:.1%} is at or above {band.high:.1%}"
        )
    if p < band.low:
        return Decision(
            NO_PNEUMONIA,
            HEADLINES[NO_PNEUMONIA],
            p,
            1.0 - p,
            f"P(pneumonia) {p:.1%} is below {band.low:.1%}",
        )
    return Decision(
        UNCERTAIN,
        HEADLINES[UNCERTAIN],
        p,
        None,
        f"P(pneumonia) {p:.1%} lies in the uncertain band [{band.low:.1%}, {band.high:.1%}) around the "
        f"threshold {threshold:.1%}",
    )


def out_of_scope_decision(reason: str) -> Decision:
    """The decision for an image that is not a radiograph: no probabilities, only ``reason``."""
    return Decision(OUT_OF_SCOPE, HEADLINES[OUT_OF_SCOPE], None, None, reason)


def decide_many(
    p_pneumonia: np.ndarray,
    *,
    threshold: float,
    band: UncertaintyBand | None = None,
    spread: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`decide`'s outcome for many images at once.

    Parameters
    ----------
    p_pneumonia : ndarray of shape (n,)
    threshold : float
    band : UncertaintyBand, optional
    spread : ndarray of shape (n,), optional

    Returns
    -------
    ndarray of shape (n,), object
        Outcomes, one of :data:`NO_PNEUMONIA`, :data:`UNCERTAIN`, :data:`PNEUMONIA`.
    """
    p = np.asarray(p_pneumonia, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p_pneumonia must be a 1-D array of probabilities in [0, 1]")
    band = UncertaintyBand.minimal(threshold) if band is None else band
    band.check(threshold)
    out = np.where(p >= band.high, PNEUMONIA, np.where(p < band.low, NO_PNEUMONIA, UNCERTAIN)).astype(object)
    if spread is not None and band.max_spread is not None:
        out[np.asarray(spread, dtype=np.float64) > band.max_spread] = UNCERTAIN
    return out


def band_distance(
    p_pneumonia: np.ndarray,
    *,
    band: UncertaintyBand,
    spread: np.ndarray | None = None,
) -> np.ndarray:
    """How far each answer lies from the uncertain band: 0 inside it (``low <= p < high``, which
    holds the threshold, so the label's edge too), else the distance of P(pneumonia) to its nearer
    edge; and 0 where the spread is above the band's ``max_spread``, else at most the spread's
    distance below it (when the band has one). An answer that moves by less than this cannot
    leave a stated outcome. The fast path (:class:`~pneumoscan.inference.predictor.FastPath`)
    lets the whole ensemble answer where it is small.

    Returns
    -------
    ndarray of shape (n,), float64
    """
    p = np.asarray(p_pneumonia, dtype=np.float64)
    distance = np.where(p < band.low, band.low - p, np.where(p >= band.high, p - band.high, 0.0))
    if spread is not None and band.max_spread is not None:
        below = band.max_spread - np.asarray(spread, dtype=np.float64)
        distance = np.minimum(distance, np.maximum(below, 0.0))
    return distance


def fit_uncertainty_band(
    p_oof: np.ndarray,
    y: np.ndarray,
    *,
    threshold: float,
    error_share: float = DEFAULT_ERROR_SHARE,
    spread: np.ndarray | None = None,
    grid: int = 200,
) -> UncertaintyBand:
    """The cheapest band that holds ``error_share`` of the out-of-fold errors at ``threshold``.

    An error is an image whose class at the threshold (``p >= threshold``: pneumonia) differs from
    its label. Candidate bands ``[low, high)`` always cover the stretch between 0.5 and the
    threshold; their edges run over ``grid`` quantiles of ``p_oof`` on each side. With ``spread``,
    caps on the members' spread (its 80th to 99.5th percentiles) are tried too. Of the candidates
    holding at least ``error_share`` of the errors, the one referring the fewest images wins (ties:
    more errors held). When none does (the minimal band already holds more, or no error exists),
    the minimal band is returned with its own numbers.

    Parameters
    ----------
    p_oof : ndarray of shape (n,)
        Calibrated out-of-fold P(pneumonia) of the training images (each from a model that did not
        see the image's patient).
    y : ndarray of shape (n,)
        True labels, 0 (normal) or 1 (pneumonia).
    threshold : float in (0, 1)
        The operating threshold the band is for.
    error_share : float in [0, 1], default=0.5
        Share of errors the band must hold.
    spread : ndarray of shape (n,), optional
        Out-of-fold spread of the members' P(pneumonia), when there is one (with cross-fitting
        each image is out-of-fold for one member only, so usually there is none).
    grid : int, default=200
        Candidate edges per side.

    Returns
    -------
    UncertaintyBand
        With ``error_share`` and ``referral_rate`` as measured on ``p_oof`` and ``n``.
    """
    p, y = _checked_oof(p_oof, y)
    threshold = _probability("threshold", threshold)
    target = _probability("error_share", error_share)
    minimal = UncertaintyBand.minimal(threshold)
    errors = (p >= threshold).astype(int) != y
    caps, spread = _spread_caps(spread, p)
    lows, highs = _candidate_edges(p, minimal, grid)
    best: tuple | None = None  # (key, low, high, cap, held, referral); the smallest key wins
    for cap in caps:
        spread_flag = np.zeros(len(p), bool) if cap is None else spread > cap
        key, i, j, held, referral = _best_edges(p, errors, spread_flag, lows, highs, target)
        if best is None or key < best[0]:
            best = (key, float(lows[i]), float(highs[j]), cap, held, referral)
    _, low, high, cap, held_share, referral_rate = best
    return UncertaintyBand(
        low=low, high=high, max_spread=cap, error_share=held_share, referral_rate=referral_rate, n=int(len(p))
    )


def _checked_oof(p_oof, y) -> tuple[np.ndarray, np.ndarray]:
    """``p_oof`` and ``y`` as arrays, once they are known to be probabilities and 0/1 labels."""
    p = np.asarray(p_oof, dtype=np.float64)
    y = np.asarray(y)
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"p_oof and y must be 1-D arrays of one length, got shapes {p.shape} and {y.shape}")
    if len(p) == 0 or not np.all(np.isfinite(p)) or not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p_oof must be a non-empty array of probabilities in [0, 1]")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"y must hold 0/1 labels, got values {sorted(set(np.unique(y).tolist()))}")
    return p, y


def _spread_caps(spread, p: np.ndarray) -> tuple[list[float | None], np.ndarray | None]:
    """The spread caps to try (``None``: no cap; with ``spread``, its high percentiles), and ``spread``."""
    caps: list[float | None] = [None]
    if spread is not None:
        spread = np.asarray(spread, dtype=np.float64)
        if spread.shape != p.shape:
            raise ValueError(f"spread must have the shape of p_oof {p.shape}, got {spread.shape}")
        caps += [float(np.quantile(spread, q)) for q in (0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.995)]
    return caps, spread


def _candidate_edges(p: np.ndarray, minimal: UncertaintyBand, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate low and high edges: ``grid`` quantiles of ``p`` on each side of the minimal band."""
    qs = np.linspace(0.0, 1.0, grid + 1)
    below, above = p[p < minimal.low], p[p >= minimal.high]
    # No prediction on a side (tiny data): that side keeps the minimal edge and the extreme only.
    lows = np.unique(np.concatenate([[minimal.low, 0.0], np.quantile(below, qs) if below.size else []]))
    highs = np.unique(np.concatenate([[minimal.high, 1.0], np.quantile(above, qs) if above.size else []]))
    return lows[lows <= minimal.low], highs[highs >= minimal.high]


def _best_edges(
    p: np.ndarray,
    errors: np.ndarray,
    spread_flag: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
    target: float,
) -> tuple[tuple, int, int, float, float]:
    """The best ``[lows[i], highs[j])`` with the images ``spread_flag`` refers anyway.

    Returns ``(key, i, j, held, referral)``: ``key`` orders the results of several spread caps
    (smallest best), ``held`` is the share of ``errors`` referred and ``referral`` the share of images.
    """
    n_errors = int(errors.sum())
    # Counts of images and errors inside [low, high) or flagged by spread, via cumulative sums.
    order = np.argsort(p)
    ps = p[order]
    free = ~spread_flag[order]
    cum_n = np.concatenate([[0], np.cumsum(free)])
    cum_e = np.concatenate([[0], np.cumsum(free & errors[order])])
    base_n = int(spread_flag.sum())
    base_e = int((spread_flag & errors).sum())
    lo_idx = np.searchsorted(ps, lows, side="left")  # first index with p >= low
    hi_idx = np.searchsorted(ps, highs, side="left")  # first index with p >= high
    inside_n = base_n + (cum_n[hi_idx][None, :] - cum_n[lo_idx][:, None])
    inside_e = base_e + (cum_e[hi_idx][None, :] - cum_e[lo_idx][:, None])
    held = inside_e / n_errors if n_errors else np.ones_like(inside_e, dtype=float)
    referral = inside_n / len(p)
    ok = held >= target - 1e-12
    if ok.any():  # the cheapest band holding the target share; ties: more errors held
        flat = np.lexsort((-held.ravel(), np.where(ok, referral, np.inf).ravel()))[0]
    else:  # errors at p = 1 or p = 0 no band holds: hold as many as possible
        flat = np.lexsort((referral.ravel(), -held.ravel()))[0]
    i, j = np.unravel_index(flat, referral.shape)
    key = (0, referral[i, j], -held[i, j]) if ok.any() else (1, -held[i, j], referral[i, j])
    return key, i, j, float(held[i, j]), float(referral[i, j])


def band_summary(band: UncertaintyBand) -> str:
    """The band and its fitted numbers in one sentence (model card, app, logs)."""
    text = f"uncertain when {band.low:.1%} <= P(pneumonia) < {band.high:.1%}"
    if band.max_spread is not None:
        text += f" or the members' spread exceeds {band.max_spread:.1%}"
    if band.error_share is not None and band.referral_rate is not None:
        text += (
            f"; on {band.n} held-out training predictions it held {band.error_share:.0%} of the errors "
            f"at a cost of {band.referral_rate:.1%} of images referred"
        )
    return text
