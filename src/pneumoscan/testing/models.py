"""Small real Keras models with their sidecars, for tests and benchmarks that need a model but
not a trained one."""

from __future__ import annotations

import os
from pathlib import Path

from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.models.sections import HeldOutFigures

#: File names of a tiny training tree (``make_tree(TINY_NAMES)``): 11 normal images of 10 patients
#: and 14 pneumonia images of 12, some patients with two: enough for a patient-level split.
TINY_NAMES = {
    "train": {
        "NORMAL": [f"IM-{100 + i:04d}-0001.jpeg" for i in range(8)]
        + ["IM-0100-0002.jpeg", "NORMAL2-IM-0007-0001.jpeg", "NORMAL2-IM-0008-0001.jpeg"],
        "PNEUMONIA": [f"person{i}_{'virus' if i % 3 == 0 else 'bacteria'}_{i * 3}.jpeg" for i in range(1, 13)]
        + ["person1_bacteria_99.jpeg", "person2_bacteria_98.jpeg"],
    }
}


def make_tiny_model(
    folder: Path, *, image_size: int = 64, threshold: float = 0.5, seed: int = 0, name: str = "tiny"
) -> Path:
    """Build a small regularized CNN with seeded random weights, save ``name.keras`` and its sidecar.

    The output is not meaningful, but it is a real model that goes through every real code path.
    """
    import keras

    from pneumoscan.models.architectures import build_regularized_cnn

    keras.utils.set_random_seed(seed)
    model = build_regularized_cnn(image_size)
    path = Path(folder) / f"{name}.keras"
    model.save(path)
    ModelMetadata(
        image_size=image_size,
        threshold=threshold,
        arch="regularized",
        held_out=HeldOutFigures(
            {"accuracy": 0.5, "recall": 0.5, "specificity": 0.5, "roc_auc": 0.5},
            measured_on="nothing: an untrained test model with made-up figures",
        ),
        pneumoscan_version="test",
    ).write(path)
    return path


def make_tiny_ensemble(folder: Path, *, seed: int = 0, size: int = 64) -> Path:
    """A three-member ensemble on a random-weight MobileNetV2 stem (no ImageNet weights needed),
    saved like the release with a sidecar: Platt calibration, band, guard, ``ensemble`` section."""
    import keras
    import numpy as np

    from pneumoscan.config import TrainConfig
    from pneumoscan.inference.scope import ScopeGuard
    from pneumoscan.models.architectures import (
        build_ensemble,
        build_mobilenetv2,
        mobilenet_cut_layer,
        mobilenet_member,
    )
    from pneumoscan.models.artifacts import save_model
    from pneumoscan.models.calibration import PlattCalibrator

    keras.utils.set_random_seed(seed)
    cfg = TrainConfig(image_size=size, dense_units=16)
    base = build_mobilenetv2(size, dense_units=16, weights=None)
    cut = mobilenet_cut_layer(base, 3)
    members = [mobilenet_member(cfg, cut, name=f"member_{k}", weights=None)[1] for k in range(3)]
    for k, member in enumerate(members):  # members that disagree, as trained ones do a little
        pred = member.get_layer("pred")
        kernel, bias = pred.get_weights()
        pred.set_weights([kernel * (2.0 + k), bias + 0.3 * (k - 1)])
    model = build_ensemble(base, cut, members)
    path = folder / "teacher.keras"
    save_model(model, path)
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(60, 160))
    guard = ScopeGuard.fit(embeddings, groups=list(range(60)), seed=seed, dims=4)
    ModelMetadata(
        image_size=size,
        threshold=0.55,
        calibration=PlattCalibrator(1.2, 0.1),
        arch="mobilenetv2",
        decision={"band": {"low": 0.4, "high": 0.6}},
        scope=guard.to_dict(),
        ensemble={
            "members": 3,
            "embedding_dim": 160,
            "member_split": "validation",
            "val_fraction": 0.3,
            "fold_seed": 7,
            "limit": None,
            "unfreeze_blocks": 3,
        },
        pneumoscan_version="test",
    ).write(path)
    return path


def export_tiny_litert(keras_path: Path, out: Path | None = None) -> Path:
    """A float32 LiteRT export of ``keras_path`` with the sidecar ``pneumoscan export`` writes
    (``export.source`` included), but without its check, which needs data and a trained model.

    Default ``out``: ``<stem>-litert.tflite`` beside the Keras model.
    """
    import keras

    from pneumoscan.training.export import convert_keras_model

    keras_path = Path(keras_path)
    out = Path(out) if out is not None else keras_path.with_name(keras_path.stem + "-litert.tflite")
    out.write_bytes(convert_keras_model(keras.saving.load_model(keras_path, compile=False)))
    export = {"format": "tflite", "quantize": "none", "source": str(keras_path)}
    ModelMetadata.read(keras_path).updated(export=export).write(out)
    return out


def mobilenet_weights_available() -> bool:
    """Whether Keras finds MobileNetV2's ImageNet weights offline: in ``$KERAS_HOME/models`` (the
    tests' conftest points it at ``../shared/keras`` when present) or ``~/.keras/models``."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return any((home / "models").glob("mobilenet_v2_weights_*no_top.h5"))
