"""Grad-CAM: heatmap shape and range, the peak follows the evidence, overlay, figure, LiteRT refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.config import CLASS_NAMES
from pneumoscan.inference.explain import (
    Explanation,
    explain_file,
    explain_image,
    explanation_figure,
    gradcam_heatmap,
    overlay,
)
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.testing.models import make_tiny_model

SIZE = 64


def chest(blob: str | None = None, *, size: int = SIZE, seed: int = 0) -> np.ndarray:
    """An X-ray-like (size, size) uint8 image: dark background, two grey lungs, noise, and a
    bright blob in the lung on the image's ``"left"`` or ``"right"`` half (or none)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 25.0)
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 110.0
    if blob is not None:
        cx = 0.3 if blob == "left" else 0.7
        img[((xx - cx) / 0.08) ** 2 + ((yy - 0.55) / 0.08) ** 2 < 1] = 250.0
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def blob_detector(size: int = SIZE):
    """A small CNN with fixed weights whose pneumonia score rises with bright (> ~215) regions.

    conv1 averages 5x5 neighbourhoods and keeps what is brighter than 0.85 (of 255), conv2 passes
    that on (the Grad-CAM layer), then global pooling and a positive dense weight.
    """
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    x = layers.Conv2D(4, 5, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pred")(x)
    model = keras.Model(inputs, outputs, name="blob_detector")
    k1 = np.full((5, 5, 1, 4), 1.0 / 25.0, dtype=np.float32)
    model.get_layer("conv1").set_weights([k1, np.full(4, -0.85, dtype=np.float32)])
    k2 = np.zeros((3, 3, 4, 4), dtype=np.float32)
    k2[1, 1] = np.eye(4)
    model.get_layer("conv2").set_weights([k2, np.zeros(4, dtype=np.float32)])
    dense = [np.full((4, 1), 20.0, dtype=np.float32), np.array([-1.0], np.float32)]
    model.get_layer("pred").set_weights(dense)
    return model


@pytest.fixture(scope="module")
def blob_model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("explain") / "blob.keras"
    blob_detector().save(path)
    ModelMetadata(image_size=SIZE, threshold=0.5).write(path)  # built by hand: no registered arch
    return path


@pytest.fixture(scope="module")
def blob_predictor(blob_model_path) -> Predictor:
    return Predictor(blob_model_path)


def test_heatmap_shape_and_range_on_a_pneumoscan_cnn(tmp_path):
    import keras

    model = keras.saving.load_model(make_tiny_model(tmp_path, image_size=SIZE), compile=False)
    heat = gradcam_heatmap(model, chest("left")[:, :, None])
    assert heat.shape == (SIZE, SIZE)
    assert heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_heatmap_on_flat_mobilenetv2_uses_out_relu():
    from pneumoscan.models.architectures import build_mobilenetv2, last_conv_layer_name

    model = build_mobilenetv2(96, weights=None)
    assert last_conv_layer_name(model) == "out_relu"
    heat = gradcam_heatmap(model, chest("left", size=96)[:, :, None])
    assert heat.shape == (96, 96) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() <= 1.0


@pytest.mark.parametrize("side", ["left", "right"])
def test_heatmap_peak_follows_the_bright_blob(side):
    model = blob_detector()
    heat = gradcam_heatmap(model, chest(side)[:, :, None], layer_name="conv2")
    assert heat.max() == pytest.approx(1.0)
    _, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert (col < SIZE // 2) if side == "left" else (col >= SIZE // 2)
    half = SIZE // 2
    left_mass, right_mass = heat[:, :half].sum(), heat[:, half:].sum()
    assert (left_mass > 5 * right_mass) if side == "left" else (right_mass > 5 * left_mass)


def test_heatmap_default_layer_and_empty_evidence():
    model = blob_detector()
    # The default layer is the last 4-D one (conv2); no bright region -> no evidence -> zeros.
    heat = gradcam_heatmap(model, chest(None)[:, :, None])
    assert heat.shape == (SIZE, SIZE) and not heat.any()


def test_heatmap_rejects_bad_input():
    model = blob_detector()
    with pytest.raises(ValueError, match="shape"):
        gradcam_heatmap(model, np.zeros((32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="no layer 'nope'"):
        gradcam_heatmap(model, chest()[:, :, None], layer_name="nope")
    with pytest.raises(ValueError, match="4-D"):
        gradcam_heatmap(model, chest()[:, :, None], layer_name="pred")


def test_overlay_is_rgb_at_the_original_size():
    gray = np.full((90, 120), 100, np.uint8)
    heat = np.zeros((SIZE, SIZE), np.float32)
    heat[:, : SIZE // 2] = 1.0
    out = overlay(gray, heat, alpha=0.5)
    assert out.shape == (90, 120, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[:, 10], out[:, -10])  # hot left half, cold right half
    assert np.array_equal(overlay(gray, heat, alpha=0.0), np.repeat(gray[..., None], 3, axis=2))
    with pytest.raises(ValueError, match="alpha"):
        overlay(gray, heat, alpha=1.5)


def test_explain_image_and_figure(blob_predictor):
    gray = chest("right", size=100)  # not the model's size: resized for the model, not for the overlay
    explanation = explain_image(blob_predictor, gray)
    assert isinstance(explanation, Explanation)
    assert explanation.heatmap.shape == (SIZE, SIZE)
    assert explanation.overlay.shape == (100, 100, 3)
    assert explanation.prediction == blob_predictor.predict_image(gray)
    fig = explanation_figure(explanation, gray, title="x.png")
    texts = " ".join(t.get_text() for t in fig.texts)
    assert explanation.prediction.label in texts and "not a medical device" in texts


def test_explain_file_writes_png(blob_predictor, tmp_path):
    image = tmp_path / "in.png"
    Image.fromarray(chest("left", size=80)).save(image)
    out = tmp_path / "sub" / "heatmap.png"
    prediction = explain_file(blob_predictor, image, out=out)
    assert prediction.label in CLASS_NAMES
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size[0] > 100


def test_gradcam_refuses_a_litert_predictor(blob_model_path, tmp_path):
    import keras

    from pneumoscan.training.export import convert_keras_model

    model = keras.saving.load_model(blob_model_path, compile=False)
    lite = tmp_path / "blob.tflite"
    lite.write_bytes(convert_keras_model(model))
    ModelMetadata(image_size=SIZE, threshold=0.5).write(lite)
    predictor = Predictor(lite)
    with pytest.raises(ValueError, match="Grad-CAM needs the .keras model"):
        explain_image(predictor, chest("left"))
    image = tmp_path / "in.png"
    Image.fromarray(chest("left")).save(image)
    with pytest.raises(ValueError, match="Grad-CAM needs the .keras model"):
        explain_file(predictor, image, out=tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()
