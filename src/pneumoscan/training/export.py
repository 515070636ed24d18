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
- ``"int8-stem"``: the same calibration, but only the shared stem in int8 (every layer before the
  first nested top: an ensemble's members or a student's top); the tops, their mean and the
  embedding stay float32 (:func:`float_layer_names`). Meant for a frozen ImageNet stem under
  fine-tuned tops; a model without nested tops is refused.

The check (:mod:`pneumoscan.training.export_check`) runs the Keras model and the new file through
the Predictor on images the model never trained on: held out by every member, shifted views of
films held out by some member (never the int8 calibration images), and the out-of-scope
development set when present. The export is kept only if it passes
(:func:`~pneumoscan.training.export_check.parity`: decisions agree on at least 99 %, no calibrated
P(pneumonia) moves by more than 0.05); else nothing is written and a ValueError gives the numbers.
The sidecar's ``export.check`` says which images were used (``n_check``, ``kinds``, ``sources``)
and what the check found. Without data there is no check, so there is no export.

``--fast-path`` (an ensemble only) also writes ``<out>-fast.tflite``: the ensemble's stem, ONE body
averaged from its members' weights and each member's own head, untrained
(:func:`~pneumoscan.models.architectures.soup_ensemble`), at about one network's cost instead of
one stem and K tops. The Predictor answers with it and lets the ensemble answer instead every image
whose fast answer lies in the uncertain band or within :data:`FAST_PATH_DELTA` of it
(:data:`FAST_PATH_DELTA_ABOVE` above it), mixing the two answers up to :data:`FAST_PATH_BLEND`
(:data:`FAST_PATH_BLEND_ABOVE`) (:class:`~pneumoscan.inference.predictor.FastPath`). The pair is a
student of the ensemble, not a copy of it, so it is judged as one on the same check images
(:func:`~pneumoscan.training.export_check.fast_path_parity`). It is recorded in the sidecar's
``export.fast_path`` only when it passes; the export itself stands either way.
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

from pneumoscan.data.dataset import Sample, decode_samples
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models.artifacts import ModelMetadata, metadata_path
from pneumoscan.training.export_check import (
    AUTO,
    CheckSet,
    check_images,
    check_seed,
    fast_path_parity,
    model_split,
    parity,
)

log = logging.getLogger(__name__)

#: ``none``: float32; ``float16``: float16 weights, float32 arithmetic; ``dynamic``: int8 weights,
#: activations quantized at run time per call (no calibration images); ``int8``: weights and
#: activations int8, activation ranges calibrated on training images; ``int8-stem``: the same for the
#: shared stem only, the tops float32.
QUANTIZE_MODES = ("none", "float16", "dynamic", "int8", "int8-stem")
#: The modes that calibrate activation ranges on representative training images.
CALIBRATED_MODES = ("int8", "int8-stem")
#: Distance to the uncertain band under which the ensemble answers alone on the fast path (0 in
#: the band). Chosen on the training folder (docs/speed.md: with 0.05 the averaged body stated an
#: outcome for 12 of the ensemble's 68 uncertain training films, with 0.10 for 3), then measured
#: over three distill hold-outs (benchmarks/fast_path.py).
FAST_PATH_DELTA = 0.10
#: Distance from which the fast path answers alone; in between the two answers are mixed, so the
#: answer has no jump where the rule hands over (the same film by two paths may fall either side).
FAST_PATH_BLEND = 0.15
#: The same two above the band, where the averaged body errs upwards (up to 0.3 near 0.5): with
#: 0.10 and 0.15 there, 3 of the ensemble's 24 least-sure training films got a decision that
#: depended on the file's path; from 0.20 and 0.25 none did, and the largest spread over 19 paths of
#: 120 random films fell from 0.228 to the ensemble's own 0.094 (docs/speed.md; chosen on the
#: training folder among 0.10-0.30, then measured over three distill hold-outs).
FAST_PATH_DELTA_ABOVE = 0.20
FAST_PATH_BLEND_ABOVE = 0.25
#: What the fast path's file is called beside the export: ``<stem>-fast.tflite``.
FAST_PATH_SUFFIX = "-fast"
#: Training images fed to the int8 calibration (the representative dataset).
REPRESENTATIVE_IMAGES = 300


def convert_keras_model(model, *, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model to a LiteRT flatbuffer (no check; see :func:`export_tflite`).

    The model is exported to a temporary SavedModel (Keras 3 ``model.export``) and converted with
    ``tf.lite.TFLiteConverter.from_saved_model``; the batch dimension stays dynamic.

    ``model``: ``(n, size, size, 1)`` input in 0..255; ``quantize``: one of :data:`QUANTIZE_MODES`;
    ``representative``: calibration images ``(m, size, size, 1)`` in 0..255, required for
    :data:`CALIBRATED_MODES`. Returns the ``.tflite`` file, with float32 input and output in every mode.
    """
    import tensorflow as tf

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize in CALIBRATED_MODES and (representative is None or len(representative) == 0):
        raise ValueError(f"{quantize} quantization needs representative images (training images, 0..255)")
    float_layers = float_layer_names(model) if quantize == "int8-stem" else ()
    with tempfile.TemporaryDirectory(prefix="pneumoscan-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "dynamic":
            # Dynamic-range quantization: DEFAULT with no representative data and no target type.
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        elif quantize in CALIBRATED_MODES:
            images = np.asarray(representative, dtype=np.float32)

            def representative_dataset():
                for i in range(len(images)):
                    yield [images[i : i + 1]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
            if quantize == "int8-stem":
                return _quantize_all_but(converter, representative_dataset, float_layers)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter.convert()


def float_layer_names(model) -> tuple[str, ...]:
    """The layers ``int8-stem`` keeps float: the first nested model (a member's or student's top)
    and every layer after it in the model's (topological) layer order; the layers before it are the
    stem. Raises ValueError for a model with no nested top."""
    import keras

    nested = [i for i, layer in enumerate(model.layers) if isinstance(layer, keras.Model)]
    if not nested:
        raise ValueError(
            f"int8-stem needs a model whose tops are nested models (an ensemble or a student); "
            f"{model.name} has none: use int8 to quantize it whole"
        )
    return tuple(layer.name for layer in model.layers[nested[0] :])


def _quantize_all_but(converter, representative_dataset, float_layers: tuple[str, ...]) -> bytes:
    """Calibrate and quantize, leaving float every op whose output belongs to ``float_layers``.

    Uses TensorFlow Lite's selective quantization (``QuantizationDebugger`` with
    ``denylisted_nodes``: op output names). A converted op's name joins the names of the ops fused
    into it with ``;``, each ``<model>/<layer>/...`` with Keras's export suffix ``_1`` on both. The
    converter still rounds a float sigmoid's output to int8's fixed steps of 1/256 and back."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    debugging = tf.lite.experimental
    probe = debugging.QuantizationDebugger(converter=converter, debug_dataset=representative_dataset)
    calibrated = Interpreter(model_content=probe.calibrated_model)
    names = [t["name"] for t in calibrated.get_tensor_details()]
    # The model's output op (the concatenation of the tops' answers) is named after the signature.
    outputs = {t["name"] for t in calibrated.get_output_details()}
    wanted = {n for layer in float_layers for n in (layer, f"{layer}_1")}

    def is_float(name: str) -> bool:
        parts = [p.split("/") for p in name.split(";")]
        return name in outputs or any(len(p) > 1 and p[1] in wanted for p in parts)

    denied = [n for n in names if is_float(n)]
    if len(denied) <= len(outputs):  # the naming changed: nothing would stay float but the output
        raise ValueError(
            f"int8-stem found none of the ops of {', '.join(float_layers[:3])}... in the converted graph "
            "(TensorFlow's op naming may have changed); use int8 to quantize the whole model"
        )
    # New options on the same debugger re-quantize its calibrated model: no second calibration.
    probe.options = debugging.QuantizationDebugOptions(denylisted_nodes=denied)
    return probe.get_nondebug_quantized_model()


def export_tflite(
    predictor: Predictor,
    *,
    out: str | Path,
    quantize: str = "none",
    data_dir: str | Path | None = None,
    progress: bool = True,
    max_check_images: int | None = None,
    ood_dir: str | Path | None = AUTO,
    fast_path: bool = False,
) -> dict:
    """Export the predictor's Keras model to LiteRT and check it against the Keras model.

    Parameters
    ----------
    predictor : Predictor
        On a ``.keras`` model with its sidecar.
    out : path
        The ``.tflite`` file to write; its sidecar ``<stem>.meta.json`` is written beside it.
        Existing files are replaced only when the new export passes its check.
    quantize : {"none", "float16", "dynamic", "int8", "int8-stem"}, default="none"
    data_dir : path, optional
        Training data (split folder or root with ``train/``). Default: the sidecar's ``data_dir``.
    progress : bool, default=True
        Show decoding progress bars.
    max_check_images : int, optional
        At most this many held-out images, this many films for the shifted views (both classes
        kept in proportion, seeded) and this many out-of-scope images (spread over the folder).
    ood_dir : path, "auto" or None, default="auto"
        Out-of-scope images to add to the check; ``"auto"``: an ``ood/`` folder beside the training
        data when there is one; ``None``: none.

    Returns
    -------
    dict
        ``quantize``, ``path``, ``size_bytes``, ``n_representative`` (int8 calibration images,
        else 0) and the check's report (:func:`parity`; ``agreement`` is of the decisions).

    Raises
    ------
    ValueError
        Bad ``quantize`` or ``out``, a LiteRT predictor, no data to check on, fewer than
        :data:`~pneumoscan.training.export_check.MIN_CHECK_IMAGES` check images, or a failed check
        (the message gives the numbers; nothing is left on disk).
    FileNotFoundError
        ``data_dir`` or a given ``ood_dir`` does not exist.
    """
    _check_arguments(predictor, out, quantize, max_check_images)
    if fast_path and (predictor.metadata.ensemble is None or predictor.metadata.student is not None):
        raise ValueError(f"--fast-path needs an ensemble; {predictor.model_path} is not one")
    out = Path(out)
    meta = predictor.metadata
    data_dir = _training_data(predictor, data_dir)
    train_s, _ = model_split(meta, data_dir)
    seed = check_seed(meta)
    representative, calibration_paths = None, set()
    if quantize in CALIBRATED_MODES:
        representative, calibration_paths = _representative_images(
            train_s, predictor.image_size, data_dir, seed=seed, progress=progress
        )
    check = check_images(
        predictor,
        data_dir,
        ood_dir=ood_dir,
        max_images=max_check_images,
        exclude=calibration_paths,
        progress=progress,
    )

    log.info("converting %s to LiteRT (quantize=%s)", predictor.model_path, quantize)
    flatbuffer = convert_keras_model(predictor.model, quantize=quantize, representative=representative)
    n_representative = 0 if representative is None else len(representative)
    report, check_record = _write_checked(
        predictor,
        flatbuffer,
        check,
        out=out,
        quantize=quantize,
        data_dir=data_dir,
        n_representative=n_representative,
    )
    log.info("exported %s (%d bytes): %s", out, report["size_bytes"], json.dumps(check_record))
    if fast_path:
        report["fast_path"] = write_fast_path(predictor, out, check, quantize=quantize)
    return report


def write_fast_path(predictor: Predictor, out: Path, check: CheckSet, *, quantize: str) -> dict:
    """Write the fast path of the ensemble ``predictor`` beside its export ``out``, check the pair
    against the Keras ensemble on ``check`` and record it in ``out``'s sidecar; returns the record.
    On a failed check the fast file is removed, the sidecar keeps no fast path, and a ValueError
    gives the figures."""
    from pneumoscan.models.architectures import mobilenet_cut_layer, soup_ensemble

    meta = predictor.metadata
    cut = mobilenet_cut_layer(predictor.model, meta.ensemble.unfreeze_blocks)
    soup = soup_ensemble(predictor.model, cut, meta.ensemble.members)
    fast_file = out.with_name(out.stem + FAST_PATH_SUFFIX + out.suffix)
    fast_file.write_bytes(convert_keras_model(soup, quantize=quantize))
    exported = ModelMetadata.read(out)
    export_record = exported.export.to_dict()
    record = {
        "file": fast_file.name,
        "delta": FAST_PATH_DELTA,
        "blend": FAST_PATH_BLEND,
        "delta_above": FAST_PATH_DELTA_ABOVE,
        "blend_above": FAST_PATH_BLEND_ABOVE,
        "what": (
            "the ensemble's stem, ONE body averaged from its members' weights, each member's own head "
            "(untrained); where its P(pneumonia) lies in the uncertain band or within delta of it "
            "(delta_above above it) the ensemble answers instead, and up to blend (blend_above) the "
            "two answers are mixed"
        ),
        "quantize": quantize,
        "size_bytes": fast_file.stat().st_size,
    }
    try:
        exported.updated(export={**export_record, "fast_path": record}).write(out)
        found = fast_path_parity(predictor, Predictor(out, threshold=predictor.threshold), check)
        record["check"] = found
        if not found["passed"]:
            gate = found["gate"]
            raise ValueError(
                f"the fast path of {predictor.model_path} failed its check on {found['n_check']} images the "
                f"model never trained on: decision agreement {found['agreement']:.2%} "
                f"({found['decisions_changed']} changed; needs >= {gate['min_agreement']:.0%}), ROC AUC "
                f"{found['auc_fast_path']} against {found['auc_keras']} (allowed difference "
                f"{gate['max_auc_diff']}); {fast_file} was removed, {out} answers without it"
            )
        exported.updated(export={**export_record, "fast_path": record}).write(out)
    except BaseException:
        fast_file.unlink(missing_ok=True)
        exported.write(out)
        raise
    log.info("fast path %s: %s", fast_file, json.dumps(record["check"]["agreement"]))
    return record


def _representative_images(
    train_s: list[Sample], size: int, data_dir: Path, *, seed: int, progress: bool
) -> tuple[np.ndarray, set]:
    """A seeded choice of up to :data:`REPRESENTATIVE_IMAGES` training images for the int8
    calibration, and their paths (kept out of the check)."""
    rng = np.random.default_rng(seed)
    picked = [train_s[i] for i in sorted(rng.permutation(len(train_s))[:REPRESENTATIVE_IMAGES])]
    representative = decode_samples(picked, size, progress=progress).x
    if len(representative) == 0:
        raise ValueError(f"{data_dir}: no readable training image for the int8 calibration")
    return representative, {s.path for s in picked}


def _write_checked(
    predictor: Predictor,
    flatbuffer: bytes,
    check: CheckSet,
    *,
    out: Path,
    quantize: str,
    data_dir: Path,
    n_representative: int,
) -> tuple[dict, dict]:
    """Write the LiteRT model and its sidecar aside, check them against Keras on ``check``, and only
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
        report = _compare_with_keras(predictor, tmp_model, check, quantize=quantize, out=out)
        report["n_representative"] = export_info["n_representative"]
        record = {k: v for k, v in report.items() if k not in ("quantize", "path", "size_bytes", "passed")}
        record.pop("n_representative")
        meta.updated(export={**export_info, "check": record}).write(tmp_model)
        os.replace(metadata_path(tmp_model), metadata_path(out))
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report, record


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
    if quantize == "int8-stem":
        float_layer_names(predictor.model)  # a model without nested tops is refused before any decoding


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


def _compare_with_keras(
    predictor: Predictor, tflite: Path, check: CheckSet, *, quantize: str, out: Path
) -> dict:
    """:func:`parity` of the export at ``tflite`` with the Keras model, as :func:`export_tflite`
    reports it (without ``n_representative``). Raises ValueError when the check fails."""
    log.info("checking the export on %d images the model never trained on", len(check.kind))
    lite = Predictor(tflite, threshold=predictor.threshold)
    report = {
        "quantize": quantize,
        "path": str(out),
        "size_bytes": tflite.stat().st_size,
        "n_representative": 0,
        **parity(predictor, lite, check),
    }
    if not report["passed"]:
        worst = max(report["per_kind"], key=lambda k: report["per_kind"][k]["max_abs_prob_diff"])
        gate = report["gate"]
        raise ValueError(
            f"LiteRT export ({quantize}) of {predictor.model_path} failed its check on {report['n_check']} "
            f"images the model never trained on ({report['kinds']}): decision agreement "
            f"{report['agreement']:.2%} ({report['decisions_changed']} changed; needs >= "
            f"{gate['min_agreement']:.0%}), max |P(pneumonia) diff| {report['max_abs_prob_diff']:.4f} "
            f"(allowed {gate['max_abs_prob_diff']}; "
            f"largest on {worst} images); nothing was written to {out}"
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
