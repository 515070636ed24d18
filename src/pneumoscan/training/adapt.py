"""``pneumoscan adapt``: refit a model's last layer, calibration and threshold on a site's sample.

A model trained on one folder reads more than the lungs of that folder (the shortcut audit,
:mod:`pneumoscan.evaluation.shortcuts`), so a new hospital's films can move every probability. A
site's own labelled sample (a few hundred images with ``NORMAL/`` and ``PNEUMONIA/``) fixes what it
can, without the training folder, which a site does not have:

1. **What is refitted.** Only the last layer of each top (each ensemble member's ``pred`` unit,
   128 weights and a bias on the ``head_dense`` features). The stem, the blocks and the guard's
   embedding stay shared with the base model. Retraining the last layer on a small sample of the
   target data removes much of what spurious features cost (Kirichenko et al., *Last Layer
   Re-Training is Sufficient for Robustness to Spurious Correlations*, ICLR 2023); with a few hundred
   images a whole network would overfit. The training folder's say is kept by an L2 pull towards the
   base weights (a prior centred on them) whose strength is chosen by patient-grouped
   cross-validation inside the sample; the largest strength leaves the weights as they were and
   moves only the bias, so a site that needs little change gets little.
2. **Calibration, threshold and band** are refitted on *cross-fitted* site predictions (each image
   scored by last layers fitted without its patient), as training does on held-out predictions.
3. **The estimate** of the adapted model on the site comes from the same cross-fitting, reported
   twice: at the final threshold (chosen on those predictions, so optimistic), and with calibration
   and threshold also chosen without each fold (``nested``), the figure to quote.

Writes ``model.keras`` (:func:`~pneumoscan.models.artifacts.save_model`), its sidecar with a
``site`` section (base model and its SHA-256, the sample's fingerprint, size, class counts, the
protocol, the estimates), the float16 LiteRT export ``model-litert.tflite`` checked against the
Keras model on the site images, and ``adapt_report.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan import __version__
from pneumoscan.config import DEFAULT_SEED, DEFAULT_TARGET_RECALL
from pneumoscan.data.dataset import Sample, decode_samples, fingerprint
from pneumoscan.evaluation import metrics as metrics_lib
from pneumoscan.evaluation.overlap import TrainingDataOverlapError, check_training_overlap, file_sha256
from pneumoscan.inference.decision import fit_uncertainty_band
from pneumoscan.models.artifacts import ModelMetadata, save_model
from pneumoscan.models.calibration import choose_calibrator
from pneumoscan.models.sections import HeldOutFigures

log = logging.getLogger(__name__)

#: Fewest images and patients of each class a site sample needs: five patient folds must each hold
#: both classes, and a threshold for recall 0.98 on fewer than 40 pneumonia images rests on one image.
MIN_IMAGES_PER_CLASS = 40
MIN_PATIENTS_PER_CLASS = 20
#: Strengths of the pull towards the base weights tried (per image, on the mean log loss); the last
#: keeps the weights and refits the bias only.
PRIOR_STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e4)
SITE_FOLDS = 5
#: File names inside the adapted model's folder.
MODEL_FILE = "model.keras"
LITERT_FILE = "model-litert.tflite"
REPORT_FILE = "adapt_report.json"


class SiteSampleError(ValueError):
    """The site sample cannot support an adaptation (too small, one-sided, or training images)."""


def check_site_sample(samples: Sequence[Sample], *, where: str = "the site sample") -> dict:
    """Class and patient counts of a site sample; raises :class:`SiteSampleError` when too small.

    Returns
    -------
    dict
        ``{"NORMAL": {"images", "patients"}, "PNEUMONIA": {...}}``.
    """
    counts = {}
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        of_class = [s for s in samples if s.label == label]
        counts[name] = {"images": len(of_class), "patients": len({s.patient_id for s in of_class})}
    short = [
        f"{name}: {c['images']} image(s) from {c['patients']} patient(s)"
        for name, c in counts.items()
        if c["images"] < MIN_IMAGES_PER_CLASS or c["patients"] < MIN_PATIENTS_PER_CLASS
    ]
    if short:
        raise SiteSampleError(
            f"{where} is too small to adapt on ({'; '.join(short)}). Adaptation needs at least "
            f"{MIN_IMAGES_PER_CLASS} images from at least {MIN_PATIENTS_PER_CLASS} patients of EACH class "
            "(NORMAL/ and PNEUMONIA/): cross-fitting needs both classes in every fold, and a threshold "
            "for the target recall needs enough pneumonia images to rest on. Add labelled images of the "
            "short class; a few hundred in all is the intended size."
        )
    return counts


# --------------------------------------------------------------------------- the last layers


def _tops(model, metadata: ModelMetadata) -> list:
    """The sub-models whose ``pred`` layer is refitted: each member of an ensemble, else the model."""
    from pneumoscan.models.architectures import member_tops

    members = metadata.ensemble.members if metadata.ensemble is not None else 0
    if members:
        return member_tops(model, members)
    return [model]


def head_features(model, metadata: ModelMetadata, x: np.ndarray, *, batch_size: int = 32) -> list[np.ndarray]:
    """The input of each top's ``pred`` layer (``head_dense`` activations), one ``(n, d)`` per top.

    An ensemble's stem runs once per batch (up to the cut its sidecar's ``unfreeze_blocks`` names)
    and feeds every member, as in the model itself.
    """
    import keras

    from pneumoscan.models.architectures import mobilenet_cut_layer

    tops = _tops(model, metadata)
    stem = None
    if tops[0] is not model:
        cut = mobilenet_cut_layer(model, metadata.ensemble.unfreeze_blocks)
        stem = keras.Model(model.input, model.get_layer(cut).output)
    heads = [keras.Model(top.input, top.get_layer("head_dense").output) for top in tops]
    out: list[list[np.ndarray]] = [[] for _ in tops]
    for start in range(0, len(x), batch_size):
        batch = np.asarray(x[start : start + batch_size], dtype=np.float32)
        base = batch if stem is None else np.asarray(stem(batch, training=False))
        for k, head in enumerate(heads):
            out[k].append(np.asarray(head(base, training=False), dtype=np.float64))
    return [np.concatenate(parts) for parts in out]


def last_layer_weights(model, metadata: ModelMetadata) -> list[tuple[np.ndarray, float]]:
    """``(w, b)`` of each top's ``pred`` layer."""
    out = []
    for top in _tops(model, metadata):
        kernel, bias = top.get_layer("pred").get_weights()
        out.append((np.asarray(kernel, np.float64).ravel(), float(np.ravel(bias)[0])))
    return out


def set_last_layer_weights(
    model, metadata: ModelMetadata, weights: Sequence[tuple[np.ndarray, float]]
) -> None:
    for top, (w, b) in zip(_tops(model, metadata), weights, strict=True):
        top.get_layer("pred").set_weights([w.reshape(-1, 1).astype(np.float32), np.array([b], np.float32)])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def fit_last_layer(f: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: float, strength: float):
    """Logistic weights minimising mean log loss + ``strength``/2 * ||w - w0||^2 (bias free).

    Returns
    -------
    w : ndarray of shape (d,)
    b : float
    """
    from scipy.optimize import minimize

    n, d = f.shape

    def loss(theta: np.ndarray):
        w, b = theta[:d], theta[d]
        p = _sigmoid(f @ w + b)
        eps = 1e-12
        value = -np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
        value += 0.5 * strength * np.sum((w - w0) ** 2)
        residual = (p - y) / n
        grad = np.r_[f.T @ residual + strength * (w - w0), residual.sum()]
        return value, grad

    result = minimize(loss, np.r_[w0, b0], jac=True, method="L-BFGS-B", options={"maxiter": 500})
    return result.x[:d], float(result.x[d])


def site_folds(y: np.ndarray, groups: Sequence[str], *, seed: int, folds: int = SITE_FOLDS) -> np.ndarray:
    """Patient-grouped, class-stratified fold index per image."""
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, np.asarray(groups))):
        fold[test] = k
    return fold


def cross_fitted_raw(features, y, base, fold: np.ndarray, strength: float) -> np.ndarray:
    """``(n, tops)`` raw probabilities, each image scored by last layers fitted without its fold."""
    out = np.empty((len(y), len(features)))
    for k in np.unique(fold):
        fit, held = fold != k, fold == k
        for t, (f, (w0, b0)) in enumerate(zip(features, base, strict=True)):
            w, b = fit_last_layer(f[fit], y[fit], w0, b0, strength)
            out[held, t] = _sigmoid(f[held] @ w + b)
    return out


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def choose_strength(features, y, base, fold) -> tuple[float, dict]:
    """The prior strength with the lowest cross-fitted log loss of the mean raw probability."""
    evidence = {}
    for strength in PRIOR_STRENGTHS:
        raw = cross_fitted_raw(features, y, base, fold, strength)
        evidence[f"{strength:g}"] = {
            "log_loss": _log_loss(y, raw.mean(axis=1)),
            "roc_auc": metrics_lib.binary_metrics(y, raw.mean(axis=1), threshold=0.5)["roc_auc"],
        }
    best = min(PRIOR_STRENGTHS, key=lambda s: evidence[f"{s:g}"]["log_loss"])
    return best, evidence


# --------------------------------------------------------------------------- operating point


def operating_point(y, raw: np.ndarray, groups, *, target_recall: float, seed: int):
    """Calibration (fitted on every top's raw probability), threshold and band from ``raw``.

    Returns
    -------
    calibrator, threshold : Calibrator, float
    p, spread : ndarray of shape (n,)
        Mean and spread of the tops' calibrated probabilities.
    evidence : dict
        The calibration's cross-validated comparison.
    """
    tops = raw.shape[1]
    calibrator, evidence = choose_calibrator(
        np.tile(y, tops), raw.T.ravel(), groups=list(groups) * tops, seed=seed
    )
    calibrated = np.column_stack([calibrator.transform(raw[:, t]) for t in range(tops)])
    p = calibrated.mean(axis=1)
    threshold = metrics_lib.threshold_for_recall(y, p, target_recall=target_recall)
    return calibrator, threshold, p, calibrated.std(axis=1), evidence


def nested_estimate(y, raw, groups, fold, *, target_recall: float, seed: int) -> dict:
    """Recall, specificity and ECE when calibration and threshold are also chosen without each fold."""
    p = np.empty(len(y))
    predicted = np.empty(len(y), dtype=np.int64)
    groups = np.asarray(groups)
    for k in np.unique(fold):
        fit, held = fold != k, fold == k
        calibrator, t, _, _, _ = operating_point(
            y[fit], raw[fit], groups[fit], target_recall=target_recall, seed=seed
        )
        p[held] = np.mean([calibrator.transform(raw[held, j]) for j in range(raw.shape[1])], axis=0)
        predicted[held] = p[held] >= t
    tp = int(np.sum((predicted == 1) & (y == 1)))
    tn = int(np.sum((predicted == 0) & (y == 0)))
    return {
        "recall": tp / max(1, int(np.sum(y == 1))),
        "specificity": tn / max(1, int(np.sum(y == 0))),
        "roc_auc": metrics_lib.binary_metrics(y, p, threshold=0.5)["roc_auc"],
        "ece": metrics_lib.expected_calibration_error(y, p),
        "protocol": (
            f"{SITE_FOLDS} patient-grouped folds of the site sample: last layers, calibration and "
            "threshold all fitted without the fold they score"
        ),
    }


def _site_metrics(y, p, threshold, groups, samples, *, seed: int) -> dict:
    return metrics_lib.metrics_report(
        y,
        p,
        threshold=threshold,
        groups=list(groups),
        subtypes=[s.subtype for s in samples],
        n_boot=1000,
        seed=seed,
    )


# --------------------------------------------------------------------------- the command


def adapt_model(
    samples: Sequence[Sample],
    model_path: str | Path,
    out_dir: str | Path,
    *,
    target_recall: float | None = None,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
    export: bool = True,
) -> dict:
    """Adapt the model at ``model_path`` to a site's labelled sample; write it into ``out_dir``.

    Parameters
    ----------
    samples : sequence of Sample
        The site's labelled images (:func:`pneumoscan.data.dataset.discover_split`).
    model_path : path
        The base model: a ``.keras`` file, or a LiteRT export whose sidecar names its ``.keras``
        source (the last layers are refitted in Keras).
    out_dir : path
        Receives :data:`MODEL_FILE`, :data:`LITERT_FILE` (unless ``export`` is false), their
        sidecars and :data:`REPORT_FILE`.
    target_recall : float, optional
        Recall the site threshold is chosen for; default the base model's.
    seed : int
        Folds, calibration folds and bootstrap.

    Returns
    -------
    dict
        The report (also written to :data:`REPORT_FILE`): ``base`` (the base model at its stored
        threshold on the site, image-level CIs by patient bootstrap), ``adapted`` (cross-fitted, at
        the final threshold: optimistic), ``nested`` (the estimate to quote), ``prior_strength``,
        ``files`` and ``seconds``.

    Raises
    ------
    SiteSampleError
        Too few images or patients of a class.
    TrainingDataOverlapError
        Some site images are the base model's training images (as ``pneumoscan evaluate`` refuses).
    """
    import keras

    started = time.perf_counter()
    timings = _Laps()
    keras_path, base_meta = _base_model(list(samples), model_path)
    target_recall = float(target_recall or base_meta.target_recall or DEFAULT_TARGET_RECALL)
    decoded = decode_samples(list(samples), base_meta.image_size, progress=progress)
    timings.lap("decode")
    if decoded.skipped:
        log.warning("%d site image(s) could not be read and were left out", len(decoded.skipped))
    counts = check_site_sample(decoded.samples, where="the readable part of the site sample")
    model = keras.saving.load_model(keras_path, safe_mode=True, compile=False)
    features = head_features(model, base_meta, decoded.x)
    timings.lap("load_and_features")
    fit = fit_site(features, decoded, last_layer_weights(model, base_meta), base_meta, target_recall, seed)
    set_last_layer_weights(model, base_meta, fit.weights)
    timings.lap("fit")

    report = fit.report(decoded, base_meta, seed=seed)
    site = _site_section(fit, report, keras_path, decoded.samples, counts, target_recall, seed)
    meta = base_meta.updated(
        threshold=fit.threshold,
        calibration=fit.calibrator.to_dict(),
        target_recall=target_recall,
        decision={"band": fit.band.to_dict()},
        held_out=_held_out_on_site(fit.nested, len(decoded.samples)).to_dict(),
        export=None,
        site=site,
    )
    files = _write_adapted(model, meta, Path(out_dir), decoded.x if export else None, timings)
    report.update(files=files, timings=timings.seconds, site=site)
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2, default=float) + "\n")
    return report


def _held_out_on_site(nested: dict, n: int) -> HeldOutFigures:
    """The adapted model's held-out figures: the nested estimate on the site sample (the base
    model's training-folder figures say nothing about the adapted one)."""
    return HeldOutFigures(
        {"n": n, **{k: v for k, v in nested.items() if k != "protocol"}},
        measured_on=f"the site's sample: {nested['protocol']}",
        # The L2 prior strength was chosen on cross-fitted log loss over the whole sample.
        chose=("prior strength",),
    )


def _write_adapted(model, meta: ModelMetadata, out_dir: Path, export_x: np.ndarray | None, timings) -> dict:
    """Save the adapted Keras model with ``meta`` and, given the site images ``export_x``, its
    checked LiteRT export; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keras_out = out_dir / MODEL_FILE
    save_model(model, keras_out)
    meta.write(keras_out)
    files = {"keras": str(keras_out)}
    timings.lap("save")
    if export_x is not None:
        files["litert"] = str(export_site_model(keras_out, export_x, out_dir / LITERT_FILE))
        timings.lap("export_and_check")
    return files


class _Laps:
    """Seconds of each step, for the report."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._mark, 1)
        self._mark = now


def _base_model(samples: list[Sample], model_path: str | Path) -> tuple[Path, ModelMetadata]:
    """The base model's ``.keras`` file and sidecar, after the sample's size and overlap checks."""
    from pneumoscan.inference.predictor import source_keras_model

    check_site_sample(samples)
    keras_path = source_keras_model(model_path, ModelMetadata.read(model_path))
    if keras_path is None:
        raise FileNotFoundError(
            f"{model_path}: adapt refits the Keras model, and this LiteRT export's source .keras file "
            "was not found beside it; pass --model PATH/TO/model.keras"
        )
    base_meta = ModelMetadata.read(keras_path)
    overlap = check_training_overlap(samples, base_meta, model_path=keras_path)
    if overlap.training:
        raise TrainingDataOverlapError(overlap.refusal(len(samples), keras_path))
    return Path(keras_path), base_meta


@dataclasses.dataclass
class SiteFit:
    """What :func:`fit_site` chose, with the cross-fitted predictions it chose them on."""

    y: np.ndarray
    groups: list[str]
    p_base: np.ndarray
    p: np.ndarray
    strength: float
    strength_evidence: dict
    calibrator: object
    calibration_evidence: dict
    threshold: float
    band: object
    nested: dict
    weights: list

    def report(self, decoded, base_meta: ModelMetadata, *, seed: int) -> dict:
        kept = decoded.samples
        return {
            "base": _site_metrics(self.y, self.p_base, base_meta.threshold, self.groups, kept, seed=seed),
            "adapted": _site_metrics(self.y, self.p, self.threshold, self.groups, kept, seed=seed),
            "nested": self.nested,
            "prior_strength": {"chosen": self.strength, "cross_validated": self.strength_evidence},
            "calibration": {
                **self.calibrator.to_dict(),
                "method": self.calibrator.method,
                "cross_validated": self.calibration_evidence,
            },
            "threshold": self.threshold,
            "base_threshold": base_meta.threshold,
            "skipped": [{"path": str(s.path), "error": reason} for s, reason in decoded.skipped],
        }


def fit_site(features, decoded, base, base_meta: ModelMetadata, target_recall: float, seed: int) -> SiteFit:
    """Choose the prior strength, refit the last layers, calibration, threshold and band."""
    y, groups = decoded.y, [s.patient_id for s in decoded.samples]
    # The base model on the site, at its stored calibration and threshold (what site-check reports).
    raw_base = np.column_stack([_sigmoid(f @ w + b) for f, (w, b) in zip(features, base, strict=True)])
    p_base = np.mean(
        [base_meta.calibration.transform(raw_base[:, t]) for t in range(raw_base.shape[1])], axis=0
    )
    fold = site_folds(y, groups, seed=seed)
    strength, strength_evidence = choose_strength(features, y, base, fold)
    raw = cross_fitted_raw(features, y, base, fold, strength)
    calibrator, threshold, p, spread, calibration_evidence = operating_point(
        y, raw, groups, target_recall=target_recall, seed=seed
    )
    band = fit_uncertainty_band(p, y, threshold=threshold, spread=spread if raw.shape[1] > 1 else None)
    return SiteFit(
        y=y,
        groups=groups,
        p_base=p_base,
        p=p,
        strength=strength,
        strength_evidence=strength_evidence,
        calibrator=calibrator,
        calibration_evidence=calibration_evidence,
        threshold=threshold,
        band=band,
        nested=nested_estimate(y, raw, groups, fold, target_recall=target_recall, seed=seed),
        weights=[fit_last_layer(f, y, w0, b0, strength) for f, (w0, b0) in zip(features, base, strict=True)],
    )


def _site_section(fit: SiteFit, report: dict, keras_path: Path, kept, counts, target_recall, seed) -> dict:
    """The sidecar's ``site`` section: where the adapted model comes from and what it is worth."""
    headline = ("roc_auc", "recall", "specificity")
    return {
        "base_model": str(keras_path),
        "base_model_sha256": file_sha256(keras_path),
        "sample_fingerprint": fingerprint(kept),
        "n": len(kept),
        "counts": counts,
        "target_recall": target_recall,
        "refitted": "the last layer (pred) of each top, pulled towards the base weights; calibration, "
        "threshold and uncertainty band; stem, blocks and scope guard shared with the base model",
        "protocol": (
            f"{SITE_FOLDS} patient-grouped stratified folds (seed {seed}); prior strength chosen on "
            "cross-fitted log loss; calibration, threshold and band fitted on cross-fitted predictions"
        ),
        "prior_strength": fit.strength,
        "estimate": {k: v for k, v in fit.nested.items() if k != "protocol"},
        "estimate_protocol": fit.nested["protocol"],
        "cross_fitted_at_threshold": {k: report["adapted"][k] for k in headline},
        "base_at_stored_threshold": {k: report["base"][k] for k in headline},
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "pneumoscan_version": __version__,
    }


def export_site_model(keras_path: Path, x: np.ndarray, out: Path) -> Path:
    """Write the float16 LiteRT export of an adapted model; checked on the site images.

    The check is the export's own (:func:`pneumoscan.training.export_check.parity`, its gates:
    three-outcome decisions agree on at least 99 %, no calibrated P(pneumonia) moves by more than
    0.05) on every site image; the export is removed and an error raised when it fails.
    """
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.training.export import convert_keras_model
    from pneumoscan.training.export_check import CheckSet, parity

    keras_predictor = Predictor(keras_path, scope_guard=False)
    out.write_bytes(convert_keras_model(keras_predictor.model, quantize="float16"))
    meta = keras_predictor.metadata.updated(
        export={"source": keras_path.name, "format": "tflite", "quantize": "float16"}
    )
    meta.write(out)
    site = CheckSet(
        x=x,
        kind=np.full(len(x), "site"),
        y=np.full(len(x), -1),
        sources={"site": "the site sample the model was adapted on"},
    )
    check = parity(keras_predictor, Predictor(out, scope_guard=False), site)
    if not check["passed"]:
        out.unlink(missing_ok=True)
        raise ValueError(
            f"the LiteRT export of {keras_path} failed its check on {check['n_check']} site images: "
            f"decisions agree {check['agreement']:.2%} (needs >= {check['gate']['min_agreement']:.0%}), "
            f"max |P(pneumonia) diff| {check['max_abs_prob_diff']:.4f} (allowed "
            f"{check['gate']['max_abs_prob_diff']}); {out} was removed"
        )
    meta.updated(export={**meta.export.to_dict(), "check": check}).write(out)
    return out
