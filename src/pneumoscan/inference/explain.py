"""Grad-CAM explanations: where in the image the model found its evidence for PNEUMONIA.

This module owns the heatmap (:func:`gradcam_heatmap`), its colour overlay on the original image
(:func:`overlay`), and the explanation figure written by ``pneumoscan explain`` and shown by the
app (:func:`explain_image`, :func:`explanation_figure`, :func:`explain_file`).

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional layer's activations by
the spatial mean of the gradient of the pneumonia score (the model's sigmoid output) with respect to
that channel, sums the channels, keeps the positive part and scales it to 0..1. The map always
shows evidence *for* pneumonia, whatever the predicted label: on an image predicted NORMAL it shows
where the little pneumonia evidence there is lies. It needs the Keras model (gradients); a LiteRT
``.tflite`` model cannot be explained.

A heatmap is a coarse (7x7 for MobileNetV2 at 224 px) map upsampled to the input size; it says
where the model looked, not what is wrong there.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.config import DISCLAIMER
from pneumoscan.data.imaging import DecodedImage, preprocess, read_image
from pneumoscan.inference.predictor import Prediction, Predictor

log = logging.getLogger(__name__)

#: Matplotlib colormap of the overlay: perceptually uniform, readable in grey print.
COLORMAP = "inferno"


@dataclasses.dataclass(frozen=True)
class Explanation:
    """A prediction with its Grad-CAM evidence.

    Attributes
    ----------
    prediction : Prediction
        Calibrated probabilities, label and threshold, as :meth:`Predictor.predict_image` gives.
    heatmap : ndarray of shape (size, size), float32 in [0, 1]
        Grad-CAM at the model's input size.
    overlay : ndarray of shape (height, width, 3), uint8
        The heatmap in colour over the original image, at the original image's size.
    """

    prediction: Prediction
    heatmap: np.ndarray
    overlay: np.ndarray


def gradcam_heatmap(model, x: np.ndarray, *, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM of the pneumonia score for one image.

    Parameters
    ----------
    model : keras.Model
        A pneumoscan model: ``(n, size, size, 1)`` grey input in 0..255, one sigmoid output.
    x : ndarray of shape (size, size, 1) or (size, size), uint8 or float in 0..255
        The preprocessed image (:func:`pneumoscan.data.imaging.preprocess`).
    layer_name : str, optional
        Convolutional layer to explain. Default:
        :func:`pneumoscan.models.last_conv_layer_name` (``out_relu`` for MobileNetV2).

    Returns
    -------
    ndarray of shape (size, size), float32 in [0, 1]
        The class-activation map upsampled (bilinear) from the layer's grid, divided by its
        maximum. All zeros when the layer holds no positive evidence for pneumonia (or when the
        sigmoid is so saturated that its gradient underflows).

    Raises
    ------
    ValueError
        ``x`` does not match the model's input, or ``layer_name`` is not a 4-D layer of ``model``.
    """
    import keras
    import tensorflow as tf

    from pneumoscan.models.architectures import last_conv_layer_name

    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, :, None]
    expected = tuple(model.inputs[0].shape[1:])
    if x.ndim != 3 or any(e is not None and e != s for e, s in zip(expected, x.shape, strict=True)):
        raise ValueError(f"expected an image of shape {expected}, got {x.shape}")
    layer_name = layer_name or last_conv_layer_name(model)
    try:
        layer = model.get_layer(layer_name)
    except ValueError as exc:
        raise ValueError(f"model {model.name!r} has no layer {layer_name!r}") from exc
    if len(layer.output.shape) != 4:
        raise ValueError(
            f"layer {layer_name!r} has output shape {layer.output.shape}; Grad-CAM needs a 4-D feature map"
        )

    grad_model = keras.Model(model.inputs, [layer.output, model.output])
    batch = tf.convert_to_tensor(x[None].astype(np.float32))
    with tf.GradientTape() as tape:
        features, score = grad_model(batch, training=False)
        score = score[:, 0]
    grads = tape.gradient(score, features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (1, 1, 1, channels)
    cam = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))[0].numpy().astype(np.float64)
    peak = float(cam.max()) if cam.size else 0.0
    size = x.shape[:2]
    if not np.isfinite(peak) or peak <= 0.0:
        log.debug("Grad-CAM of layer %s is empty (no positive evidence)", layer_name)
        return np.zeros(size, dtype=np.float32)
    cam = (cam / peak).astype(np.float32)
    resized = Image.fromarray(cam, "F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def overlay(gray: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """Blend a heatmap, in colour, over a grey image.

    Parameters
    ----------
    gray : ndarray of shape (height, width) or (height, width, 1), uint8
        The original image (any size).
    heatmap : ndarray of shape (h, w), float in [0, 1]
        Resized (bilinear) to ``(height, width)``; values outside [0, 1] are clipped.
    alpha : float, default=0.4
        Weight of the colour layer, in [0, 1].

    Returns
    -------
    ndarray of shape (height, width, 3), uint8
        RGB image, ``(1 - alpha) * gray + alpha * colormap(heatmap)`` with :data:`COLORMAP`.
    """
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    gray = np.asarray(gray)
    if gray.ndim == 3 and gray.shape[2] == 1:
        gray = gray[:, :, 0]
    if gray.ndim != 2:
        raise ValueError(f"expected a grey image of shape (height, width), got {gray.shape}")
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {heatmap.shape}")
    height, width = gray.shape
    if heatmap.shape != (height, width):
        heatmap = np.asarray(Image.fromarray(heatmap, "F").resize((width, height), Image.Resampling.BILINEAR))
    colour = colormaps[COLORMAP](np.clip(np.nan_to_num(heatmap), 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * gray.astype(np.float32)[..., None] + alpha * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _require_keras(predictor: Predictor) -> None:
    if predictor.backend != "keras":
        raise ValueError(
            f"Grad-CAM needs the .keras model (gradients); {predictor.model_path} runs on the "
            f"{predictor.backend!r} backend. Pass --model with the .keras file it was exported from."
        )


def explain_image(predictor: Predictor, image: DecodedImage | np.ndarray) -> Explanation:
    """Predict one image and explain the prediction with Grad-CAM.

    Parameters
    ----------
    predictor : Predictor
        Must run a ``.keras`` model (``predictor.backend == "keras"``).
    image : DecodedImage or ndarray of shape (height, width), uint8
        The decoded image at its original size.

    Returns
    -------
    Explanation
        The overlay is at the original image's size.

    Raises
    ------
    ValueError
        The predictor runs a LiteRT model.
    """
    _require_keras(predictor)
    gray = image.gray if isinstance(image, DecodedImage) else np.asarray(image)
    x = preprocess(image, predictor.image_size)
    prediction = predictor.predict_image(image)
    heatmap = gradcam_heatmap(predictor.model, x)
    return Explanation(prediction, heatmap, overlay(gray, heatmap))


def explanation_figure(explanation: Explanation, gray: np.ndarray, *, title: str = ""):
    """The original and the Grad-CAM overlay side by side, captioned with the prediction.

    Parameters
    ----------
    explanation : Explanation
    gray : ndarray of shape (height, width), uint8
        The original image (the one the overlay was made from).
    title : str
        Shown above the images (e.g. the file name).

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas, not registered with pyplot. The caption gives the label, the calibrated
        P(pneumonia), the threshold and :data:`pneumoscan.config.DISCLAIMER`.
    """
    from pneumoscan.plotting import new_figure

    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = gray[:, :, 0]
    pred = explanation.prediction
    fig = new_figure(9.0, 5.4)
    left, right = fig.subplots(1, 2)
    left.imshow(gray, cmap="gray", vmin=0, vmax=255)
    left.set_title("original")
    right.imshow(explanation.overlay)
    right.set_title(f"Grad-CAM: evidence for pneumonia ({COLORMAP})")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    caption = (
        f"Prediction: {pred.label}   P(pneumonia) = {pred.p_pneumonia:.1%} (calibrated)   "
        f"threshold {pred.threshold:.3f}\n{DISCLAIMER}"
    )
    fig.text(0.5, 0.0, caption, ha="center", va="top", fontsize=8, wrap=True)
    return fig


def explain_file(predictor: Predictor, path: str | Path, *, out: str | Path) -> Prediction:
    """Explain one image file and save the explanation figure as ``out`` (PNG).

    Parameters
    ----------
    predictor : Predictor
        A Keras predictor (see :func:`explain_image`).
    path : path
        JPEG, PNG or DICOM.
    out : path
        Figure to write; parent folders are created.

    Returns
    -------
    Prediction

    Raises
    ------
    pneumoscan.data.imaging.ImageDecodeError
        The file cannot be read (a ValueError).
    ValueError
        The predictor runs a LiteRT model.
    """
    from pneumoscan.plotting import save

    _require_keras(predictor)
    path = Path(path)
    image = read_image(path)
    explanation = explain_image(predictor, image)
    save(explanation_figure(explanation, image.gray, title=path.name), out)
    log.info("Grad-CAM of %s written to %s", path, out)
    return explanation.prediction
