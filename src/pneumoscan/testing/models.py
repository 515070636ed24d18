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
