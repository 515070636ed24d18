"""The out-of-scope guard: is this image one the model may be asked about?

The model was trained on frontal chest X-rays of children aged 1 to 5 from one hospital. Every
prediction (``predict``, ``evaluate``, ``explain``, the app) passes the same two checks, in
:class:`~pneumoscan.inference.predictor.Predictor`:

1. :func:`check_image`, on the decoded file: **not a radiograph at all**. A colour image (Hasler-Suesstrunk
   colourfulness above :data:`~pneumoscan.config.MAX_COLOURFULNESS`), or a document or drawing: a
   flat background covering most of the image with few grey levels between (sampled to about
   512 px a side, at least :data:`MIN_FLAT_SHARE` of the pixels within 3 grey levels of the commonest one and
   :data:`MIN_STILL_SHARE` of neighbouring pixel pairs exactly equal; on the 5,216 training X-rays
   resized to 224 px these shares reach at most 0.33 and 0.38, on the out-of-scope development
   X-rays and CT slices 0.51 and 0.67, on rendered text and line drawings 0.7 to 0.99). Such an
   image gets no probabilities. The same check flags a lossy file **compressed more heavily than
   the training images** (all JPEGs of quality 75): a JPEG of estimated quality below 70 or a lossy
   WebP below 84 (:data:`MIN_QUALITY`; :mod:`pneumoscan.data.imaging.compression` reads the
   estimate, exact for JPEG, rough for WebP). It keeps its probabilities, marked unreliable,
   since new compression artefacts move the model. ``python benchmarks/input_paths.py --sweep
   30`` (60 training films, 2026-12-03): a JPEG re-encoding moved P(pneumonia) by at most 0.043
   at quality 70 and above, 0.092 at 65, 0.116 at 60; a WebP one by at most 0.031 at 85 and
   above, 0.089 at 80, 0.152 at 70. WebP's bound lies between the estimates read back at 80
   (78..83) and at 85 (84..87).
2. :class:`ScopeGuard`, on the model's embedding (the pooled features of the frozen stem):
   **outside the training population** (adults, lateral views, CT slices, other body parts, natural
   photographs). A Mahalanobis distance to the training embeddings (standardised, PCA, Ledoit-Wolf
   precision) above a threshold set on out-of-fold training images at a stated false-alarm rate.
   Such an image keeps its probabilities, marked unreliable.

Each flag carries a reason a person understands (:data:`REASON_COLOUR`, :data:`REASON_DOCUMENT`,
:data:`REASON_COMPRESSED`, :data:`REASON_POPULATION`); :func:`combine` joins the two checks' verdicts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumoscan.config import MAX_COLOURFULNESS
from pneumoscan.data.dataset import fold_patients
from pneumoscan.data.imaging import DecodedImage

#: The pixel checks look at every k-th pixel, k such that the shorter side keeps at least this many.
ANALYSIS_SIDE = 512
#: A document or drawing: at least this share of pixels within 3 grey levels of the commonest...
MIN_FLAT_SHARE = 0.6
#: ...and at least this share of horizontally or vertically neighbouring pixels exactly equal.
MIN_STILL_SHARE = 0.6
#: A lossy file of lower estimated quality is flagged (probabilities kept, marked unreliable), per
#: codec (``DecodedImage.format``): at one nominal quality, WebP's artefacts move the model more.
MIN_QUALITY = {"JPEG": 70, "WEBP": 84}
#: False-alarm rate on out-of-fold training images at which :meth:`ScopeGuard.fit` sets its threshold.
DEFAULT_FALSE_ALARM_RATE = 0.01
#: PCA dimensions the guard keeps at most (all of a 160-d embedding would be 160).
DEFAULT_GUARD_DIMS = 128
#: Quantile levels of the out-of-fold training scores kept as the drift reference.
REFERENCE_QUANTILES = np.linspace(0.0, 1.0, 101)

REASON_COLOUR = "colour image: not a radiograph"
REASON_DOCUMENT = "looks like a document or drawing, not a radiograph"
REASON_COMPRESSED = (
    "compressed more heavily than the training images ({codec} quality about {quality}; theirs are "
    "JPEGs of quality 75): probabilities unreliable"
)
REASON_POPULATION = (
    "unlike the children's frontal chest X-rays the model was trained on (may be an adult, a lateral "
    "view, a CT slice or another body part): probabilities unreliable"
)


@dataclasses.dataclass(frozen=True)
class ScopeCheck:
    """What the guard says about one image.

    Attributes
    ----------
    in_scope : bool
        The image looks like the model's training images.
    radiograph : bool
        False when the image is not a radiograph at all: then it gets no probabilities.
    reason : str
        Why it is out of scope, in plain words; ``""`` when in scope.
    distance : float or None
        The embedding's distance relative to the guard's threshold (above 1 is flagged); ``None``
        when not measured (no embedding, or not a radiograph).
    """

    in_scope: bool
    radiograph: bool = True
    reason: str = ""
    distance: float | None = None


IN_SCOPE = ScopeCheck(True)


def pixel_statistics(gray: np.ndarray) -> tuple[float, float]:
    """``(flat_share, still_share)`` of a grey image (see the module docstring).

    Parameters
    ----------
    gray : ndarray of shape (h, w), uint8

    Returns
    -------
    flat_share : float in [0, 1]
        Share of pixels within 3 grey levels of the commonest level.
    still_share : float in [0, 1]
        Share of horizontally and vertically neighbouring pixel pairs that are exactly equal.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8 or min(gray.shape) < 2:
        raise ValueError(f"expected a 2-D uint8 image of at least 2 x 2, got {gray.shape} {gray.dtype}")
    hist = np.bincount(gray.ravel(), minlength=256)
    mode = int(hist.argmax())
    flat = hist[max(0, mode - 3) : mode + 4].sum() / gray.size
    still = ((gray[:, 1:] == gray[:, :-1]).mean() + (gray[1:, :] == gray[:-1, :]).mean()) / 2
    return float(flat), float(still)


def check_image(image: DecodedImage) -> ScopeCheck:
    """Is this a radiograph at all? The pixel-level half of the guard.

    Parameters
    ----------
    image : DecodedImage

    Returns
    -------
    ScopeCheck
        ``radiograph=False`` with :data:`REASON_COLOUR` or :data:`REASON_DOCUMENT`; a radiograph
        out of scope with :data:`REASON_COMPRESSED` (a lossy file below :data:`MIN_QUALITY`); else
        :data:`IN_SCOPE`. The embedding check comes later (:func:`combine`).
    """
    if image.colourfulness > MAX_COLOURFULNESS:
        return ScopeCheck(
            False,
            radiograph=False,
            reason=f"{REASON_COLOUR} (colourfulness {image.colourfulness:.0f}; X-rays are grey and score "
            f"below {MAX_COLOURFULNESS:.0f})",
        )
    flat, still = pixel_statistics(analysis_pixels(image.gray))
    if flat >= MIN_FLAT_SHARE and still >= MIN_STILL_SHARE:
        return ScopeCheck(
            False,
            radiograph=False,
            reason=f"{REASON_DOCUMENT} ({flat:.0%} of it is one flat background)",
        )
    bound = MIN_QUALITY.get(image.format)
    if bound is not None and image.lossy_quality is not None and image.lossy_quality < bound:
        codec = "WebP" if image.format == "WEBP" else image.format
        return ScopeCheck(False, reason=REASON_COMPRESSED.format(codec=codec, quality=image.lossy_quality))
    return IN_SCOPE


def analysis_pixels(gray: np.ndarray) -> np.ndarray:
    """Every k-th pixel of every k-th row, k chosen so that the shorter side keeps at least
    :data:`ANALYSIS_SIDE` pixels: sampling, not averaging, keeps text crisp and X-ray noise noisy."""
    step = max(1, min(gray.shape) // ANALYSIS_SIDE)
    return gray[::step, ::step]


def patient_folds(groups: Sequence, n_folds: int, *, seed: int) -> np.ndarray:
    """Fold index per image, whole groups (patients) at a time, groups shuffled with ``seed``.

    :func:`~pneumoscan.data.dataset.fold_patients` without classes, dealt round robin (balanced in
    patients): the assignment the released guard's threshold was fitted with.

    Returns
    -------
    ndarray of shape (n,), int in ``0..n_folds-1``
    """
    return fold_patients(np.asarray(groups).tolist(), None, n_folds, seed=seed, balance="patients")


@dataclasses.dataclass(frozen=True, eq=False)
class ScopeGuard:
    """Distance of an embedding to the training images', with a threshold set out-of-fold.

    ``score(e) = || W ((e - mean) / scale) ||^2``: the squared Mahalanobis distance in the top
    ``dims`` principal components of the standardised training embeddings, ``W`` folding the PCA
    projection and a Ledoit-Wolf precision's Cholesky factor into one ``(dims, E)`` matrix.

    Attributes
    ----------
    mean, scale : ndarray of shape (E,), float64
        Of the training embeddings.
    whitening : ndarray of shape (dims, E), float64
    threshold : float
        Scores above it are out of scope.
    false_alarm_rate : float
        Share of out-of-fold training images above ``threshold`` (by construction).
    n : int
        Training images it was fitted on.
    n_folds : int
        Patient-level folds of the cross-fitting that set the threshold.
    reference : ndarray of shape (101,), optional
        Quantiles 0, 0.01, ..., 1 of those out-of-fold training scores divided by ``threshold``:
        the training distribution a new intake is compared with (:mod:`pneumoscan.inference.drift`).
        ``None`` for guards fitted before it was recorded.
    """

    mean: np.ndarray
    scale: np.ndarray
    whitening: np.ndarray
    threshold: float
    false_alarm_rate: float
    n: int
    n_folds: int
    reference: np.ndarray | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.mean.shape[0])

    @staticmethod
    def _fit_parts(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from sklearn.covariance import LedoitWolf

        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        _, vectors = np.linalg.eigh(z.T @ z)
        components = vectors[:, ::-1][:, :dims].T  # (dims, E), largest variance first
        precision = LedoitWolf().fit(z @ components.T).precision_
        cholesky = np.linalg.cholesky(precision)  # precision = L L^T: score = ||L^T P||^2
        return mean, scale, cholesky.T @ components

    @staticmethod
    def _score(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, whitening: np.ndarray) -> np.ndarray:
        projected = ((x - mean) / scale) @ whitening.T
        return np.einsum("ij,ij->i", projected, projected)

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        *,
        groups: Sequence,
        false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
        seed: int,
        n_folds: int = 5,
        dims: int | None = None,
    ) -> ScopeGuard:
        """Fit on training embeddings; set the threshold on patient-level out-of-fold scores.

        Each of ``n_folds`` patient folds is scored by a guard fitted on the others; the threshold
        is the ``1 - false_alarm_rate`` quantile of those scores. The guard returned is fitted on
        every image.

        Parameters
        ----------
        embeddings : ndarray of shape (n, E)
            The model's embedding of each training image (E = 160 for the MobileNetV2 stem).
        groups : sequence of length n
            Patient of each image, so that no patient is both fitted and scored.
        false_alarm_rate : float in (0, 0.5), default=0.01
        seed : int
            Seed of the fold assignment.
        n_folds : int, default=5
        dims : int, optional
            PCA dimensions kept; default ``min(E, 128)`` (:data:`DEFAULT_GUARD_DIMS`).

        Returns
        -------
        ScopeGuard
        """
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(groups):
            raise ValueError(
                f"embeddings must be (n, E) with one group per row, got {x.shape} and {len(groups)} groups"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("embeddings hold NaN or infinite values; drop the images that failed first")
        if not 0.0 < false_alarm_rate < 0.5:
            raise ValueError(f"false_alarm_rate must be in (0, 0.5), got {false_alarm_rate}")
        dims = min(x.shape[1], DEFAULT_GUARD_DIMS) if dims is None else int(dims)
        if not 1 <= dims <= x.shape[1]:
            raise ValueError(f"dims must be in 1..{x.shape[1]}, got {dims}")
        if len(x) < 5 * dims:
            raise ValueError(
                f"too few images ({len(x)}) for a {dims}-dimensional guard; use dims <= {len(x) // 5}"
            )
        oof = cls.out_of_fold_scores(x, groups=groups, seed=seed, n_folds=n_folds, dims=dims)
        threshold = float(np.quantile(oof, 1.0 - false_alarm_rate))
        mean, scale, whitening = cls._fit_parts(x, dims)
        reference = np.quantile(oof / threshold, REFERENCE_QUANTILES)
        return cls(
            mean, scale, whitening, threshold, float(np.mean(oof > threshold)), len(x), n_folds, reference
        )

    @classmethod
    def out_of_fold_scores(
        cls, embeddings: np.ndarray, *, groups: Sequence, seed: int, n_folds: int, dims: int
    ):
        """Each image's score by a guard fitted without its patient fold, as :meth:`fit` scores them."""
        x = np.asarray(embeddings, dtype=np.float64)
        folds = patient_folds(groups, n_folds, seed=seed)
        oof = np.empty(len(x))
        for k in range(n_folds):
            held = folds == k
            oof[held] = cls._score(x[held], *cls._fit_parts(x[~held], dims))
        return oof

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance, shape ``(n,)``, of ``(n, E)`` embeddings (NaN rows give NaN)."""
        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.embedding_dim:
            raise ValueError(f"expected embeddings of shape (n, {self.embedding_dim}), got {x.shape}")
        return self._score(x, self.mean, self.scale, self.whitening)

    def check(self, embeddings: np.ndarray) -> list[ScopeCheck]:
        """One :class:`ScopeCheck` per embedding: :data:`REASON_POPULATION` above the threshold."""
        relative = self.score(embeddings) / self.threshold
        return [
            ScopeCheck(True, distance=float(r))
            if r <= 1.0
            else ScopeCheck(False, True, REASON_POPULATION, float(r))
            for r in relative
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON form, the sidecar's ``scope`` section (numbers as float32-precise decimals)."""

        def floats(a: np.ndarray) -> list:
            return np.asarray(a, dtype=np.float32).tolist()

        return {
            "method": "mahalanobis",
            "mean": floats(self.mean),
            "scale": floats(self.scale),
            "whitening": floats(self.whitening),
            "threshold": self.threshold,
            "false_alarm_rate": self.false_alarm_rate,
            "n": self.n,
            "n_folds": self.n_folds,
            **({} if self.reference is None else {"reference": floats(self.reference)}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScopeGuard:
        if d.get("method") != "mahalanobis":
            raise ValueError(
                f"unknown scope guard method {d.get('method')!r}; this version knows 'mahalanobis'"
            )
        mean = np.asarray(d["mean"], dtype=np.float64)
        scale = np.asarray(d["scale"], dtype=np.float64)
        whitening = np.asarray(d["whitening"], dtype=np.float64)
        if (
            mean.ndim != 1
            or scale.shape != mean.shape
            or whitening.ndim != 2
            or whitening.shape[1] != len(mean)
        ):
            raise ValueError(
                f"scope guard arrays do not fit: mean {mean.shape}, scale {scale.shape}, "
                f"whitening {whitening.shape}"
            )
        if not float(d["threshold"]) > 0:
            raise ValueError(f"scope guard threshold must be positive, got {d['threshold']!r}")
        return cls(
            mean,
            scale,
            whitening,
            float(d["threshold"]),
            float(d["false_alarm_rate"]),
            int(d["n"]),
            int(d["n_folds"]),
            None if d.get("reference") is None else np.asarray(d["reference"], dtype=np.float64),
        )


def combine(image_check: ScopeCheck, embedding_check: ScopeCheck | None) -> ScopeCheck:
    """The image's verdict: a pixel-level refusal wins; a radiograph the pixel check flags (a
    heavily compressed JPEG) is out of scope with its reason and the embedding's, if any, and the
    embedding's distance; else the embedding's verdict."""
    if not image_check.radiograph or embedding_check is None:
        return image_check
    if image_check.in_scope:
        return embedding_check
    reasons = "; ".join(r for r in (image_check.reason, embedding_check.reason) if r)
    return ScopeCheck(False, radiograph=True, reason=reasons, distance=embedding_check.distance)
