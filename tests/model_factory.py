"""Small real Keras models with sidecars, for tests that need a model but not a trained one."""

from __future__ import annotations

from pathlib import Path

from pneumoscan.config import CLASS_NAMES


def make_tiny_model(
    folder: Path, *, image_size: int = 64, threshold: float = 0.5, seed: int = 0, name: str = "tiny"
) -> Path:
    """Build a small regularized CNN with seeded random weights, save ``name.keras`` and its sidecar.

    The output is not meaningful, but it is a real model that goes through every real code path.
    """
    import keras

    from pneumoscan.inference.predictor import save_metadata
    from pneumoscan.models.architectures import build_regularized_cnn

    keras.utils.set_random_seed(seed)
    model = build_regularized_cnn(image_size)
    path = Path(folder) / f"{name}.keras"
    model.save(path)
    save_metadata(
        path,
        {
            "class_names": list(CLASS_NAMES),
            "image_size": image_size,
            "arch": "regularized",
            "threshold": threshold,
            "calibration": {"a": 1.0, "b": 0.0},
            "validation": {"accuracy": 0.5, "recall": 0.5, "specificity": 0.5, "roc_auc": 0.5},
            "pneumoscan_version": "test",
        },
    )
    return path


def export_tiny_litert(keras_path: Path, out: Path | None = None) -> Path:
    """A float32 LiteRT export of ``keras_path`` with the sidecar ``pneumoscan export`` writes
    (``export.source`` included), but without its check, which needs data and a trained model.

    Default ``out``: ``<stem>-litert.tflite`` beside the Keras model.
    """
    import keras

    from pneumoscan.inference.predictor import load_metadata, save_metadata
    from pneumoscan.training.export import convert_keras_model

    keras_path = Path(keras_path)
    out = Path(out) if out is not None else keras_path.with_name(keras_path.stem + "-litert.tflite")
    out.write_bytes(convert_keras_model(keras.saving.load_model(keras_path, compile=False)))
    export = {"format": "tflite", "quantize": "none", "source": str(keras_path)}
    save_metadata(out, {**load_metadata(keras_path), "export": export})
    return out
