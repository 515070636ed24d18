"""LiteRT (TFLite) export of a Keras model, with a mandatory parity check against the original.

This module owns the conversion (:func:`convert_keras_model`) and ``pneumoscan export``
(:func:`export_tflite`). Every exported file keeps the float32 ``(n, size, size, 1)`` input in
0..255 and the float32 sigmoid output of the Keras model, so the
:class:`~pneumoscan.inference.predictor.Predictor` feeds it the same arrays, and gets a sidecar
``<stem>.meta.json``: the Keras model's metadata (same threshold and calibration) plus an
``"export"`` section saying how it was made and checked (its ``source`` is the Keras model's path
relative to the export's folder).

Quantization modes:

- ``"none"``: float32 weights and activations.
- ``"float16"``: float16 weights (half the size), float32 compute.
- ``"int8"``: full-integer weights and activations, calibrated on up to
  :data:`REPRESENTATIVE_IMAGES` *training* images of the model's own patient-level split (the split
  is recovered from the sidecar's ``data_dir`` and ``split`` entries); input and output stay float32.

The check runs the Keras model and the new file through the Predictor on the *validation* images of
that split. The export is kept only if the predicted labels agree on at least :data:`MIN_AGREEMENT`
of them and the ROC AUCs of the calibrated probabilities differ by at most :data:`MAX_AUC_DIFF`;
otherwise nothing is written and a ValueError gives the numbers. Without data there is no check, so
there is no export.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from pneumoscan.config import SplitConfig
from pneumoscan.data.dataset import Sample, decode_samples, discover_split, stratified_subset, train_val_split
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models.artifacts import ModelMetadata, metadata_path

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "float16", "int8")
#: Least share of validation images whose label must be the same for Keras and LiteRT.
MIN_AGREEMENT = 0.99
#: Largest allowed |ROC AUC (Keras) - ROC AUC (LiteRT)| on the validation images.
MAX_AUC_DIFF = 0.005
#: Training images fed to the int8 calibration (the representative dataset).
REPRESENTATIVE_IMAGES = 300


def convert_keras_model(model, *, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model to a LiteRT flatbuffer (no check; see :func:`export_tflite`).

    The model is exported to a temporary SavedModel (Keras 3 ``model.export``) and converted with
    ``tf.lite.TFLiteConverter.from_saved_model``; the batch dimension stays dynamic.

    Parameters
    ----------
    model : keras.Model
        ``(n, size, size, 1)`` input in 0..255, one sigmoid output.
    quantize : {"none", "float16", "int8"}, default="none"
    representative : ndarray of shape (m, size, size, 1), uint8 or float in 0..255, optional
        Calibration images; required for ``"int8"``, ignored otherwise.

    Returns
    -------
    bytes
        The ``.tflite`` file, with float32 input and output in every mode.
    """
    import tensorflow as tf

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and (representative is None or len(representative) == 0):
        raise ValueError("int8 quantization needs representative images (training images, 0..255)")
    with tempfile.TemporaryDirectory(prefix="pneumoscan-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            images = np.asarray(representative, dtype=np.float32)

            def representative_dataset():
                for i in range(len(images)):
                    yield [images[i : i + 1]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
        return converter.convert()


def model_split(metadata: ModelMetadata, data_dir: str | Path) -> tuple[list[Sample], list[Sample]]:
    """Recover the patient-level train/validation split a model was trained with.

    Parameters
    ----------
    metadata : ModelMetadata
        The model's sidecar; its ``split`` (:class:`pneumoscan.config.SplitConfig`) is used, the
        default split when it has none.
    data_dir : path
        The training data: a split folder or a root holding ``train/``.

    Returns
    -------
    train, val : list of pneumoscan.data.dataset.Sample
        :func:`pneumoscan.data.dataset.train_val_split`, as in training.
    """
    split = metadata.split
    if split is None and metadata.ensemble is not None:
        # An ensemble has no one held-out split: every image was seen by most of its members. The
        # export check compares the export with the Keras model (parity), for which any images do;
        # this is the same deterministic patient-level share of the folder (with the default
        # member_split, member 0's own validation split).
        split = SplitConfig(
            seed=metadata.ensemble.get("fold_seed", SplitConfig().seed), limit=metadata.ensemble.get("limit")
        )
    elif split is None:
        split = SplitConfig()
        log.warning("the model's sidecar has no 'split' entry; assuming the default split %s", split)
    return train_val_split(discover_split(data_dir, prefer="train"), split)


def export_tflite(
    predictor: Predictor,
    *,
    out: str | Path,
    quantize: str = "none",
    data_dir: str | Path | None = None,
    progress: bool = True,
    max_check_images: int | None = None,
) -> dict:
    """Export the predictor's Keras model to LiteRT and check it against the Keras model.

    Parameters
    ----------
    predictor : Predictor
        On a ``.keras`` model with its sidecar.
    out : path
        The ``.tflite`` file to write; its sidecar ``<stem>.meta.json`` is written beside it.
        Existing files are replaced only when the new export passes its check.
    quantize : {"none", "float16", "int8"}, default="none"
    data_dir : path, optional
        Training data (split folder or root with ``train/``). Default: the sidecar's ``data_dir``.
    progress : bool, default=True
        Show decoding progress bars.
    max_check_images : int, optional
        Check on at most this many validation images (both classes kept in proportion).

    Returns
    -------
    dict
        ``quantize``, ``path``, ``size_bytes``, ``n_check`` (validation images compared),
        ``n_representative`` (int8 calibration images, else 0), ``agreement`` (share of equal
        labels, 0..1), ``auc_keras``, ``auc_tflite``, ``max_abs_prob_diff`` (calibrated), ``passed``.

    Raises
    ------
    ValueError
        Bad ``quantize`` or ``out``, a LiteRT predictor, no data to check on, a validation split
        without both classes, or a failed check (the message gives the numbers; nothing is left
        on disk).
    FileNotFoundError
        ``data_dir`` does not exist.
    """
    _check_arguments(predictor, out, quantize, max_check_images)
    out = Path(out)
    meta = predictor.metadata
    data_dir = _training_data(predictor, data_dir)
    train_s, val_s = model_split(meta, data_dir)
    seed = (meta.split or SplitConfig()).seed
    if max_check_images is not None:
        val_s = stratified_subset(val_s, max_check_images, seed=seed)
    size = predictor.image_size
    val = _check_images(val_s, size, data_dir, progress=progress)
    representative = None
    if quantize == "int8":
        representative = _representative_images(train_s, size, data_dir, seed=seed, progress=progress)

    log.info("converting %s to LiteRT (quantize=%s)", predictor.model_path, quantize)
    flatbuffer = convert_keras_model(predictor.model, quantize=quantize, representative=representative)
    n_representative = 0 if representative is None else len(representative)
    report, check = _write_checked(
        predictor,
        flatbuffer,
        val,
        out=out,
        quantize=quantize,
        data_dir=data_dir,
        n_representative=n_representative,
    )
    log.info("exported %s (%d bytes): %s", out, report["size_bytes"], json.dumps(check))
    return report


def _check_images(val_s: list[Sample], size: int, data_dir: Path, *, progress: bool):
    """The decoded validation images the export is checked on; a ``ValueError`` without both classes."""
    val = decode_samples(val_s, size, progress=progress)
    if len(set(val.y.tolist())) < 2:
        raise ValueError(
            f"{data_dir}: the validation split holds {len(val.y)} readable image(s) of "
            f"{len(set(val.y.tolist()))} class(es); the export check needs both classes"
        )
    return val


def _representative_images(
    train_s: list[Sample], size: int, data_dir: Path, *, seed: int, progress: bool
) -> np.ndarray:
    """A seeded choice of up to :data:`REPRESENTATIVE_IMAGES` training images for the int8 calibration."""
    rng = np.random.default_rng(seed)
    picked = sorted(rng.permutation(len(train_s))[:REPRESENTATIVE_IMAGES])
    representative = decode_samples([train_s[i] for i in picked], size, progress=progress).x
    if len(representative) == 0:
        raise ValueError(f"{data_dir}: no readable training image for the int8 calibration")
    return representative


def _write_checked(
    predictor: Predictor,
    flatbuffer: bytes,
    val,
    *,
    out: Path,
    quantize: str,
    data_dir: Path,
    n_representative: int,
) -> tuple[dict, dict]:
    """Write the LiteRT model and its sidecar aside, check them against Keras on ``val``, and only
    then move them to ``out``. Returns the check's report and the numbers recorded in the sidecar."""
    meta = predictor.metadata
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))
    try:
        tmp_model = tmp / out.name
        tmp_model.write_bytes(flatbuffer)
        export_info = {
            "format": "tflite",
            "quantize": quantize,
            "source": _relative_to(predictor.model_path, out.parent),
            "data_dir": str(data_dir),
            "n_representative": n_representative,
            "tensorflow": _tf_version(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        meta.updated(export=export_info).write(tmp_model)
        report = _compare_with_keras(predictor, tmp_model, val, quantize=quantize, out=out)
        report["n_representative"] = export_info["n_representative"]
        check = {
            k: report[k] for k in ("n_check", "agreement", "auc_keras", "auc_tflite", "max_abs_prob_diff")
        }
        meta.updated(export={**export_info, "check": check}).write(tmp_model)
        os.replace(metadata_path(tmp_model), metadata_path(out))
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report, check


def _check_arguments(predictor: Predictor, out, quantize: str, max_check_images: int | None) -> None:
    """The ValueErrors of :func:`export_tflite` that need no data."""
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if predictor.backend != "keras":
        raise ValueError(f"export needs a .keras model, got {predictor.model_path} ({predictor.backend})")
    out = Path(out)
    if out.suffix.lower() != ".tflite":
        raise ValueError(f"out must be a .tflite file, got {out}")
    if metadata_path(out).resolve() == metadata_path(predictor.model_path).resolve():
        raise ValueError(
            f"{out} would share its sidecar {metadata_path(out).name} with {predictor.model_path} and "
            f"overwrite it; give the export another name (e.g. {out.with_stem(out.stem + '-litert').name})"
        )
    if max_check_images is not None and max_check_images < 4:
        raise ValueError(f"max_check_images must be at least 4, got {max_check_images}")


def _training_data(predictor: Predictor, data_dir: str | Path | None) -> Path:
    """``data_dir``, else the one the model's sidecar names; it must exist (the check needs it)."""
    data_dir = data_dir if data_dir is not None else predictor.metadata.data_dir
    if data_dir is None:
        raise ValueError(
            f"{predictor.model_path}: its sidecar names no data_dir and none was given; the export "
            "check against the Keras model is mandatory, so pass the training data (--data DATA_DIR)"
        )
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"training data not found at {data_dir}; the export check against the Keras model is "
            "mandatory, so pass the folder the model was trained on (--data DATA_DIR)"
        )
    return data_dir


def _compare_with_keras(predictor: Predictor, tflite: Path, val, *, quantize: str, out: Path) -> dict:
    """Run the Keras model and the export at ``tflite`` on the validation images; the report of
    :func:`export_tflite` (without ``n_representative``). Raises ValueError when the check fails."""
    from sklearn.metrics import roc_auc_score

    log.info("checking the export on %d validation images", len(val.y))
    p_keras = predictor.predict_proba(val.x)
    p_lite = Predictor(tflite, threshold=predictor.threshold).predict_proba(val.x)
    agreement = float(np.mean((p_keras >= predictor.threshold) == (p_lite >= predictor.threshold)))
    auc_keras = float(roc_auc_score(val.y, p_keras))
    auc_lite = float(roc_auc_score(val.y, p_lite))
    report = {
        "quantize": quantize,
        "path": str(out),
        "size_bytes": tflite.stat().st_size,
        "n_check": len(val.y),
        "n_representative": 0,
        "agreement": agreement,
        "auc_keras": auc_keras,
        "auc_tflite": auc_lite,
        "max_abs_prob_diff": float(np.max(np.abs(p_keras - p_lite))),
        "passed": bool(agreement >= MIN_AGREEMENT and abs(auc_keras - auc_lite) <= MAX_AUC_DIFF),
    }
    if not report["passed"]:
        raise ValueError(
            f"LiteRT export ({quantize}) failed its check on {report['n_check']} validation images: "
            f"label agreement {agreement:.2%} (needs >= {MIN_AGREEMENT:.0%}), ROC AUC Keras "
            f"{auc_keras:.4f} vs LiteRT {auc_lite:.4f} (|diff| {abs(auc_keras - auc_lite):.4f}, "
            f"allowed {MAX_AUC_DIFF}), max |prob diff| {report['max_abs_prob_diff']:.4f}; "
            f"nothing was written to {out}"
        )
    return report


#: ``pneumoscan export --format``: format name -> exporter (same keyword arguments).
EXPORT_FORMATS = {"tflite": export_tflite}


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (so a sidecar stays true when the folder moves), else absolute."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(folder).resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(path).resolve())


def _tf_version() -> str:
    import tensorflow as tf

    return tf.__version__
