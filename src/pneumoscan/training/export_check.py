"""The images a LiteRT export is checked on, and how its answers are compared with the Keras model's.

:func:`pneumoscan.training.export.export_tflite` keeps an export only if it passes :func:`parity`
here, and records its fast path only if it passes :func:`fast_path_parity`. The check runs both
models through the Predictor on images the model never trained on (:func:`check_images`):
``held_out``, the images every ensemble member held out (:func:`held_out_samples`; a single model's
validation split); ``shifted``, the :data:`CHECK_SHIFTS` views (central 85 % crop, 1024-px resample
round trip, gamma 1.5) of :data:`SHIFTED_BASE_IMAGES` seeded films held out by some member, never the
int8 calibration images; ``out_of_scope``, the out-of-scope development set when present (default:
an ``ood/`` folder beside the training data, usually absent where models are exported).

An export passes when the three-outcome decisions (:mod:`pneumoscan.inference.decision`, with the
Predictor's threshold, band and member spread) agree on at least :data:`MIN_AGREEMENT` of the
images and no calibrated P(pneumonia) moves by more than :data:`MAX_ABS_PROB_DIFF`; ROC AUC is
recorded, not gated on. A fast path is a student of the ensemble, not a copy of it, and is gated as
one: decisions agree on at least :data:`MIN_AGREEMENT`, ROC AUC within
:data:`FAST_PATH_MAX_AUC_DIFF`; |dp| is recorded, not gated (an image far from every edge may move
further without changing its decision). The benchmarks (``benchmarks/inference.py``) run the same
functions.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.config import SplitConfig
from pneumoscan.data.dataset import (
    Sample,
    decode_samples,
    discover_split,
    patient_split,
    stratified_subset,
    train_val_split,
)
from pneumoscan.data.imaging import (
    IMAGE_SUFFIXES,
    ImageDecodeError,
    decode_bytes,
    decode_workers,
    preprocess,
    read_image,
)
from pneumoscan.inference.decision import decide_many
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models.artifacts import ModelMetadata

log = logging.getLogger(__name__)

#: Least share of check images whose three-outcome decision must be the same for Keras and LiteRT.
MIN_AGREEMENT = 0.99
#: Largest allowed |calibrated P(pneumonia), Keras - LiteRT| on any check image.
MAX_ABS_PROB_DIFF = 0.05

#: Largest allowed |ROC AUC, ensemble - fast path| on the labelled check images (issue 18's
#: tolerance for a student).
FAST_PATH_MAX_AUC_DIFF = 0.005

#: Fewest check images a check may rest on.
MIN_CHECK_IMAGES = 10

#: Films whose shifted views join the check (one view per :data:`CHECK_SHIFTS` entry each).
SHIFTED_BASE_IMAGES = 200
#: The kinds of check images, in the order they are stacked.
CHECK_KINDS = ("held_out", "shifted", "out_of_scope")
#: ``ood_dir`` default: an ``ood/`` folder beside the training data, when there is one.
AUTO = "auto"


def _central_box(shape: tuple[int, int], share: float) -> tuple[int, int, int, int]:
    h, w = shape
    return (
        round(w * (1 - share) / 2),
        round(h * (1 - share) / 2),
        round(w * (1 + share) / 2),
        round(h * (1 + share) / 2),
    )


def _resample_round_trip(gray: np.ndarray) -> np.ndarray:
    """The film resampled (bicubic) to 1024 px on its longer side, saved as a JPEG and decoded."""
    h, w = gray.shape
    scale = 1024 / max(h, w)
    big = Image.fromarray(gray, "L").resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    return decode_bytes(buffer.getvalue(), name="<1024-px copy>").gray


#: Shifted views of a decoded film (grey ``(h, w)`` uint8 in and out), made before preprocessing.
CHECK_SHIFTS = {
    "central crop 85 %": lambda g: np.asarray(Image.fromarray(g, "L").crop(_central_box(g.shape, 0.85))),
    "1024-px resample round trip (JPEG q90)": _resample_round_trip,
    "gamma 1.5": lambda g: np.round(255.0 * (g / 255.0) ** 1.5).astype(np.uint8),
}


@dataclasses.dataclass
class CheckSet:
    """The parity check's images, none trained on: ``x`` (n, size, size, 1) uint8 preprocessed,
    ``kind`` (one of :data:`CHECK_KINDS` each), ``y`` (0/1, -1 when unlabelled), ``sources``
    (per kind, in words, where its images come from)."""

    x: np.ndarray
    kind: np.ndarray
    y: np.ndarray
    sources: dict

    def describe(self) -> dict:
        """``n_check``, ``kinds`` (images per kind) and ``sources``: what the sidecar records."""
        return {"n_check": len(self.kind), "kinds": self.counts(), "sources": self.sources}

    def counts(self) -> dict:
        """Images per kind: every :data:`CHECK_KINDS` entry (0 when absent), then any other kind
        (a site's images, for :func:`pneumoscan.training.adapt.export_site_model`)."""
        others = sorted(set(self.kind.tolist()) - set(CHECK_KINDS))
        return {k: int((self.kind == k).sum()) for k in (*CHECK_KINDS, *others)}


def check_seed(metadata: ModelMetadata) -> int:
    """The seed every choice of check (and int8 calibration) images is drawn with: the model's split seed."""
    if metadata.ensemble is not None:
        return metadata.ensemble.fold_seed
    return (metadata.split or SplitConfig()).seed


def held_out_samples(metadata: ModelMetadata, data_dir: str | Path) -> tuple[list[Sample], list[Sample], str]:
    """``(held_by_all, held_by_some, words)``: the training images every ensemble member held out
    (``member_split="validation"``: the intersection of the members' seeded patient-level validation
    splits, ``val_fraction`` and seeds ``fold_seed + k`` from the sidecar; ``"folds"``: none), those
    at least one held out (every image for ``"folds"``), and how the first were found. A single
    model: its validation split, twice. (Training split the images it could decode; a folder with
    unreadable files may shift a few patients.)"""
    ensemble = metadata.ensemble
    student = metadata.student
    if ensemble is None:
        _, val = model_split(metadata, data_dir)
        return val, val, "the model's own validation split (sidecar 'split'), which it never trained on"
    seed, members = ensemble.fold_seed, ensemble.members
    samples = stratified_subset(discover_split(data_dir, prefer="train"), ensemble.limit, seed=seed)
    if ensemble.member_split == "folds":
        return [], samples, f"none: with member_split 'folds' each image trained {members - 1} members"
    fraction = ensemble.val_fraction
    counts: collections.Counter = collections.Counter()
    for k in range(members):
        counts.update(s.path for s in patient_split(samples, val_fraction=fraction, seed=seed + k)[1])
    held_by_all = [s for s in samples if counts[s.path] == members]
    if student is not None:  # a distilled student learnt from the teacher's view of every image
        return [], [s for s in samples if counts[s.path] > 0], "none: a distilled student saw every image"
    words = (
        f"held out by all {members} members (the intersection of their patient-level validation "
        f"splits, val_fraction {fraction}, seeds {seed}..{seed + members - 1})"
    )
    return held_by_all, [s for s in samples if counts[s.path] > 0], words


def check_images(
    predictor: Predictor,
    data_dir: str | Path,
    *,
    ood_dir: str | Path | None = AUTO,
    max_images: int | None = None,
    exclude: set | frozenset = frozenset(),
    progress: bool = False,
) -> CheckSet:
    """The images the export is checked on (module docstring), seeded with the model's split seed.

    ``exclude``: paths never to use (the int8 calibration images). Raises ValueError when fewer
    than :data:`MIN_CHECK_IMAGES` images could be made, FileNotFoundError for a missing ``ood_dir``.
    """
    data_dir = Path(data_dir)
    size, seed = predictor.image_size, check_seed(predictor.metadata)
    held, pool, held_words = held_out_samples(predictor.metadata, data_dir)
    held = stratified_subset(held, max_images, seed=seed) if held else []
    pool = [s for s in pool if s.path not in exclude] or discover_split(data_dir, prefer="train")
    limit = SHIFTED_BASE_IMAGES if max_images is None else min(SHIFTED_BASE_IMAGES, max_images)
    base = stratified_subset(pool, limit, seed=seed)
    decoded = decode_samples(held, size, progress=progress)
    shifted_x, shifted_y = _shifted_views(base, size)
    parts = [(decoded.x, "held_out", decoded.y), (shifted_x, "shifted", shifted_y)]
    ood = _resolve_ood_dir(ood_dir, data_dir)
    if ood is not None:
        x = _ood_images(ood, size, max_images)
        parts.append((x, "out_of_scope", np.full(len(x), -1)))
    sources = {
        "held_out": held_words,
        "shifted": (
            f"{', '.join(CHECK_SHIFTS)} of {len(base)} training films held out by at least one member "
            "(or the model's validation split), never the int8 calibration images"
        ),
        "out_of_scope": str(ood) if ood is not None else "none (no out-of-scope folder)",
    }
    check = CheckSet(
        x=np.concatenate([np.asarray(p[0], np.uint8).reshape(-1, size, size, 1) for p in parts]),
        kind=np.concatenate([np.full(len(p[0]), p[1]) for p in parts]).astype(str),
        y=np.concatenate([np.asarray(p[2], int) for p in parts]),
        sources=sources,
    )
    if len(check.kind) < MIN_CHECK_IMAGES:
        raise ValueError(
            f"{data_dir}: only {len(check.kind)} image(s) the model never trained on could be made for the "
            f"export check ({check.describe()['kinds']}); it needs at least {MIN_CHECK_IMAGES}"
        )
    return check


def _map(function, items: list) -> list:
    with concurrent.futures.ThreadPoolExecutor(decode_workers()) as pool:
        return list(pool.map(function, items))


def _shifted_views(samples: list[Sample], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every :data:`CHECK_SHIFTS` view of each readable film of ``samples``: inputs and labels."""

    def views(sample: Sample) -> list[np.ndarray]:
        try:
            gray = read_image(sample.path).gray
        except ImageDecodeError as exc:
            log.warning("export check: skipped %s: %s", sample.path, exc.reason)
            return []
        return [preprocess(shift(gray), size) for shift in CHECK_SHIFTS.values()]

    x, y = [], []
    for sample, made in zip(samples, _map(views, samples), strict=True):
        x += made
        y += [sample.label] * len(made)
    return np.asarray(x, np.uint8).reshape(-1, size, size, 1), np.asarray(y, int)


def _resolve_ood_dir(ood_dir: str | Path | None, data_dir: Path) -> Path | None:
    if ood_dir is None:
        return None
    if ood_dir == AUTO:
        found = [c for c in (data_dir.parent / "ood", data_dir.parent.parent / "ood") if c.is_dir()]
        return found[0] if found else None
    if not Path(ood_dir).is_dir():
        raise FileNotFoundError(f"out-of-scope images for the export check not found at {ood_dir}")
    return Path(ood_dir)


def _ood_images(ood_dir: Path, size: int, max_images: int | None = None) -> np.ndarray:
    """The readable images under ``ood_dir`` (sorted; at most ``max_images``, evenly spread over
    the sorted list so every kind of image stays in), preprocessed; unreadable files are skipped."""
    files = sorted(p for p in ood_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if max_images is not None and len(files) > max_images:
        files = [files[i] for i in np.linspace(0, len(files) - 1, max_images).round().astype(int)]

    def load(path: Path) -> np.ndarray | None:
        try:
            return preprocess(read_image(path), size)
        except ImageDecodeError as exc:
            log.warning("export check: skipped %s: %s", path, exc.reason)
            return None

    x = [a for a in _map(load, files) if a is not None]
    return np.asarray(x, np.uint8).reshape(-1, size, size, 1)


def model_split(metadata: ModelMetadata, data_dir: str | Path) -> tuple[list[Sample], list[Sample]]:
    """The patient-level ``(train, val)`` split a model was trained with: the sidecar's ``split``
    (the default split when it has none) applied to ``data_dir`` (a split folder or a root holding
    ``train/``) by :func:`pneumoscan.data.dataset.train_val_split`, as in training."""
    split = metadata.split
    if split is None and metadata.ensemble is not None:
        # An ensemble has no one held-out split (see held_out_samples); this split's train side
        # (member 0's, with the default member_split) gives the int8 calibration images.
        split = SplitConfig(seed=metadata.ensemble.fold_seed, limit=metadata.ensemble.limit)
    elif split is None:
        split = SplitConfig()
        log.warning("the model's sidecar has no 'split' entry; assuming the default split %s", split)
    return train_val_split(discover_split(data_dir, prefer="train"), split)


def _outcomes(predictor: Predictor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated P(pneumonia), three-outcome decision (the Predictor's threshold, band and member
    spread, as :meth:`Predictor.assess` decides) and the embedding guard's in-scope verdict."""
    details = predictor.predict_details(x)
    decisions = decide_many(
        details.p_pneumonia, threshold=predictor.threshold, band=predictor.band, spread=details.spread
    )
    in_scope = np.array([c.in_scope for c in predictor.embedding_checks(details.embedding, len(x))], bool)
    return details.p_pneumonia, decisions, in_scope


def parity(reference: Predictor, candidate: Predictor, check: CheckSet) -> dict:
    """How ``candidate`` answers like ``reference`` on ``check``: :meth:`CheckSet.describe` and
    ``agreement`` (share of equal three-outcome decisions), ``decisions_changed``,
    ``max_abs_prob_diff`` (calibrated P(pneumonia)), ``per_kind`` (the three for each kind),
    ``scope_agreement`` (embedding guard), ``auc_keras``/``auc_tflite`` (reference/candidate on the
    labelled images, None without both classes), ``gate`` and ``passed`` (gated on decisions and
    |dp| only)."""
    from sklearn.metrics import roc_auc_score

    p_ref, d_ref, s_ref = _outcomes(reference, check.x)
    p_new, d_new, s_new = _outcomes(candidate, check.x)
    same, diff = d_ref == d_new, np.abs(p_ref - p_new)
    per_kind = {
        k: {
            "n": int(m.sum()),
            "agreement": float(same[m].mean()),
            "max_abs_prob_diff": float(diff[m].max()),
        }
        for k in check.counts()
        if (m := check.kind == k).any()
    }
    labelled = check.y >= 0
    two_classes = len(set(check.y[labelled].tolist())) == 2
    agreement, max_diff = float(same.mean()), float(diff.max())
    return {
        **check.describe(),
        "agreement": agreement,
        "decisions_changed": int((~same).sum()),
        "max_abs_prob_diff": max_diff,
        "per_kind": per_kind,
        "scope_agreement": float((s_ref == s_new).mean()),
        "auc_keras": float(roc_auc_score(check.y[labelled], p_ref[labelled])) if two_classes else None,
        "auc_tflite": float(roc_auc_score(check.y[labelled], p_new[labelled])) if two_classes else None,
        "gate": {
            "min_agreement": MIN_AGREEMENT,
            "max_abs_prob_diff": MAX_ABS_PROB_DIFF,
            "on": "three-outcome decisions and calibrated P(pneumonia) of images the model never trained on",
        },
        "passed": bool(agreement >= MIN_AGREEMENT and max_diff <= MAX_ABS_PROB_DIFF),
    }


def fast_path_parity(reference: Predictor, cascade: Predictor, check: CheckSet) -> dict:
    """How a Predictor on its fast path (``cascade``) answers like the Keras ensemble (``reference``)
    on ``check``: :func:`parity`'s figures, ``auc_fast_path`` for its ``auc_tflite``, the share of
    images the ensemble answered again (``answered_by_the_ensemble``, wholly or in part), and a
    ``passed`` gated as a student is: decisions agree on at least :data:`MIN_AGREEMENT`, ROC AUC
    within :data:`FAST_PATH_MAX_AUC_DIFF`; |dp| is recorded, not gated."""
    if cascade.fast_path is None:
        raise ValueError(f"{cascade.model_path} answers without a fast path: nothing to check")
    runtime = cascade.runtime
    before_rows, before_full = runtime.rows, runtime.full_rows
    found = parity(reference, cascade, check)
    found.pop("passed")
    found["auc_fast_path"] = found.pop("auc_tflite")
    found["answered_by_the_ensemble"] = (runtime.full_rows - before_full) / max(runtime.rows - before_rows, 1)
    auc_diff = None if found["auc_keras"] is None else abs(found["auc_fast_path"] - found["auc_keras"])
    auc_held = auc_diff is None or auc_diff <= FAST_PATH_MAX_AUC_DIFF
    found["gate"] = {
        "min_agreement": MIN_AGREEMENT,
        "max_auc_diff": FAST_PATH_MAX_AUC_DIFF,
        "on": "three-outcome decisions and ROC AUC of images the model never trained on; |dp| is "
        "recorded, not gated",
    }
    found["passed"] = bool(found["agreement"] >= MIN_AGREEMENT and auc_held)
    return found
