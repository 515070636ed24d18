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

The check (:func:`check_images`, :func:`parity`) runs the Keras model and the new file through the
Predictor on images the model never trained on: ``held_out``, the images every ensemble member held
out (:func:`held_out_samples`; a single model's validation split); ``shifted``, the
:data:`CHECK_SHIFTS` views (central 85 % crop, 1024-px resample round trip, gamma 1.5) of
:data:`SHIFTED_BASE_IMAGES` seeded films held out by some member, never the int8 calibration
images; ``out_of_scope``, the out-of-scope development set when present (default: an ``ood/``
folder beside the training data, usually absent where models are exported). The export is kept
only if the three-outcome decisions (:mod:`pneumoscan.inference.decision`, with the Predictor's
threshold, band and member spread) agree on at least :data:`MIN_AGREEMENT` of them and no
calibrated P(pneumonia) moves by more than :data:`MAX_ABS_PROB_DIFF`; else nothing is written and a
ValueError gives the numbers. ROC AUC is recorded, not gated on. The sidecar's ``export.check``
says which images were used (``n_check``, ``kinds``, ``sources``) and what the check found. Without
data there is no check, so there is no export.

``--fast-path`` (an ensemble only) also writes ``<out>-fast.tflite``: the ensemble's stem, ONE body
averaged from its members' weights and each member's own head, untrained
(:func:`~pneumoscan.models.architectures.soup_ensemble`), at about one network's cost instead of
one stem and K tops. The Predictor answers with it and lets the ensemble answer instead every image
whose fast answer lies in the uncertain band or within :data:`FAST_PATH_DELTA` of it, mixing the
two answers up to :data:`FAST_PATH_BLEND` (:class:`~pneumoscan.inference.predictor.FastPath`). The pair is a
student of the ensemble, not a copy of it, so it is judged as one on the same check images:
decisions agree on at least :data:`MIN_AGREEMENT`, ROC AUC within :data:`FAST_PATH_MAX_AUC_DIFF`;
|dp| is recorded, not gated (an image far from every edge may move further without changing its
decision). It is recorded in the sidecar's ``export.fast_path`` only when it passes; the export
itself stands either way.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import io
import json
import logging
import os
import shutil
import tempfile
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
from pneumoscan.models.artifacts import ModelMetadata, metadata_path

log = logging.getLogger(__name__)

#: ``none``: float32; ``float16``: float16 weights, float32 arithmetic; ``dynamic``: int8 weights,
#: activations quantized at run time per call (no calibration images); ``int8``: weights and
#: activations int8, activation ranges calibrated on training images; ``int8-stem``: the same for the
#: shared stem only, the tops float32.
QUANTIZE_MODES = ("none", "float16", "dynamic", "int8", "int8-stem")
#: The modes that calibrate activation ranges on representative training images.
CALIBRATED_MODES = ("int8", "int8-stem")
#: Least share of check images whose three-outcome decision must be the same for Keras and LiteRT.
MIN_AGREEMENT = 0.99
#: Largest allowed |calibrated P(pneumonia), Keras - LiteRT| on any check image.
MAX_ABS_PROB_DIFF = 0.05
#: Distance to the uncertain band under which the ensemble answers alone on the fast path (0 in
#: the band). Chosen on the training folder (docs/speed.md: with 0.05 the averaged body stated an
#: outcome for 12 of the ensemble's 68 uncertain training films, with 0.10 for 3), then measured
#: over three distill hold-outs (benchmarks/fast_path.py).
FAST_PATH_DELTA = 0.10
#: Distance from which the fast path answers alone; in between the two answers are mixed, so the
#: answer has no jump where the rule hands over (the same film by two paths may fall either side).
FAST_PATH_BLEND = 0.15
#: Largest allowed |ROC AUC, ensemble - fast path| on the labelled check images (issue 18's
#: tolerance for a student).
FAST_PATH_MAX_AUC_DIFF = 0.005
#: What the fast path's file is called beside the export: ``<stem>-fast.tflite``.
FAST_PATH_SUFFIX = "-fast"
#: Fewest check images a check may rest on.
MIN_CHECK_IMAGES = 10
#: Training images fed to the int8 calibration (the representative dataset).
REPRESENTATIVE_IMAGES = 300
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
        :data:`MIN_CHECK_IMAGES` check images, or a failed check (the message gives the numbers;
        nothing is left on disk).
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
    seed = _check_seed(meta)
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
        "what": (
            "the ensemble's stem, ONE body averaged from its members' weights, each member's own head "
            "(untrained); where its P(pneumonia) lies in the uncertain band or within delta of it the "
            "ensemble answers instead, and up to blend the two answers are mixed"
        ),
        "quantize": quantize,
        "size_bytes": fast_file.stat().st_size,
    }
    try:
        exported.updated(export={**export_record, "fast_path": record}).write(out)
        found = fast_path_parity(predictor, Predictor(out, threshold=predictor.threshold), check)
        record["check"] = found
        if not found["passed"]:
            raise ValueError(
                f"the fast path of {predictor.model_path} failed its check on {found['n_check']} images the "
                f"model never trained on: decision agreement {found['agreement']:.2%} "
                f"({found['decisions_changed']} changed; needs >= {MIN_AGREEMENT:.0%}), ROC AUC "
                f"{found['auc_fast_path']} against {found['auc_keras']} (allowed difference "
                f"{FAST_PATH_MAX_AUC_DIFF}); {fast_file} was removed, {out} answers without it"
            )
        exported.updated(export={**export_record, "fast_path": record}).write(out)
    except BaseException:
        fast_file.unlink(missing_ok=True)
        exported.write(out)
        raise
    log.info("fast path %s: %s", fast_file, json.dumps(record["check"]["agreement"]))
    return record


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
        kinds = {k: int((self.kind == k).sum()) for k in CHECK_KINDS}
        return {"n_check": len(self.kind), "kinds": kinds, "sources": self.sources}


def _check_seed(metadata: ModelMetadata) -> int:
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
    size, seed = predictor.image_size, _check_seed(predictor.metadata)
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
        for k in CHECK_KINDS
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
        raise ValueError(
            f"LiteRT export ({quantize}) of {predictor.model_path} failed its check on {report['n_check']} "
            f"images the model never trained on ({report['kinds']}): decision agreement "
            f"{report['agreement']:.2%} ({report['decisions_changed']} changed; needs >= "
            f"{MIN_AGREEMENT:.0%}), "
            f"max |P(pneumonia) diff| {report['max_abs_prob_diff']:.4f} (allowed {MAX_ABS_PROB_DIFF}; "
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
