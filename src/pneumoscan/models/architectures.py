"""Keras model builders. Every model takes ``(size, size, 1)`` grey images in 0..255 and returns
one sigmoid unit, the probability of PNEUMONIA; scaling lives inside the model so that a saved
``.keras`` file owns its preprocessing.

- :func:`build_baseline_cnn`: a plain CNN from scratch (the seed's step 2: it overfits).
- :func:`build_regularized_cnn`: smaller, with dropout and global pooling (step 3; augmentation is
  applied by the input pipeline).
- :func:`build_mobilenetv2`: ImageNet MobileNetV2 with a small head (step 4).
- :func:`build_ensemble`: K MobileNetV2 tops on one frozen stem, in one model (the released model).
- :func:`shared_body` and :func:`build_shared_ensemble`: the same K members sharing ONE body, the
  average of their fine-tuned blocks' weights, each keeping its own head: the same output row at
  the cost of one network (``pneumoscan distill --kind shared-body``; not released: it has not
  passed the gate). :func:`member_tops` gives each member's
  ``cut features -> P`` whichever of the two layouts a model has.
- :func:`student_top` and :func:`build_student`: one top on the same stem that predicts what the
  ensemble says (its calibrated probability and its members' spread), distilled from it
  (:mod:`pneumoscan.training.distill`).

:data:`ARCHITECTURES` is the registry, name -> :class:`Architecture`: the training engine builds
from it, the CLI offers its names, the app shows its labels and the model sidecar is checked
against it. Adding an architecture is one entry here.

Only standard Keras layers are used, so models load with ``safe_mode=True``. Keras is imported
inside the builders, so the registry itself (names, labels) is readable without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pneumoscan.config import TrainConfig

if TYPE_CHECKING:
    import keras

#: Name of the backbone's last convolutional activation, the Grad-CAM target of MobileNetV2.
MOBILENET_LAST_CONV = "out_relu"
MOBILENET_BLOCKS = 17  # block_0 .. block_16


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights could not be loaded (offline and not in the Keras cache)."""


def build_baseline_cnn(image_size: int) -> keras.Model:
    """Three conv/pool blocks, flatten, a wide dense layer: high capacity, no regularisation."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for i, filters in enumerate((32, 64, 128)):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = layers.MaxPooling2D(2, name="pool_final")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pred")(x)
    return keras.Model(inputs, outputs, name="baseline_cnn")


def build_regularized_cnn(image_size: int, *, dropout: float = 0.5) -> keras.Model:
    """Fewer filters, batch norm, spatial dropout and global pooling instead of a wide flatten."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for i, filters in enumerate((16, 32, 64, 64)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}")(x)
        x = layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = layers.Activation("relu", name=f"relu{i + 1}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
        if i >= 2:
            x = layers.SpatialDropout2D(0.1, name=f"sdrop{i + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pred")(x)
    return keras.Model(inputs, outputs, name="regularized_cnn")


def build_mobilenetv2(
    image_size: int, *, dense_units: int = 128, dropout: float = 0.5, weights: str | None = "imagenet"
) -> keras.Model:
    """MobileNetV2 (alpha 1.0, ImageNet) with the seed's head: GAP -> Dense(ReLU) -> Dropout -> sigmoid.

    The backbone is built on the model's own tensors (not nested) so that every layer, e.g.
    ``out_relu`` for Grad-CAM, is reachable by name. It starts frozen, BatchNorm included.

    Raises
    ------
    WeightsUnavailableError
        ``weights="imagenet"`` and Keras cannot find or download them. Never falls back to random
        weights.
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 1), name="image")
    x = layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs])
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x)  # MobileNetV2 expects -1..1
    try:
        backbone = keras.applications.MobileNetV2(
            input_tensor=x,
            input_shape=(image_size, image_size, 3),
            include_top=False,
            weights=weights,
            alpha=1.0,
        )
    except Exception as exc:  # urllib, OSError, ValueError...: all mean "no weights here"
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise WeightsUnavailableError(
            "cannot load the ImageNet weights of MobileNetV2 "
            f"({type(exc).__name__}: {exc}). Keras looks for "
            f"'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{_weights_size(image_size)}_no_top.h5' "
            f"in {cache}. Put the file there, or set KERAS_HOME to a folder whose models/ holds it "
            "(in this repository's CI: KERAS_HOME=../shared/keras), or allow Keras to download it."
        ) from exc
    for layer in backbone.layers:
        layer.trainable = False
    x = layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    x = layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    outputs = layers.Dense(1, activation="sigmoid", name="pred")(x)
    return keras.Model(inputs, outputs, name="pneumoscan_mobilenetv2")


def _weights_size(image_size: int) -> int:
    return image_size if image_size in (96, 128, 160, 192, 224) else 224


def mobilenet_cut_layer(model: keras.Model, unfreeze_blocks: int) -> str:
    """Name of the layer whose output feeds the first trainable block when fine-tuning.

    ``unfreeze_blocks=3`` trains ``block_14`` .. ``block_16`` and ``Conv_1``; the cut is the output
    of ``block_13``. ``0`` trains ``Conv_1`` only.
    """
    if not 0 <= unfreeze_blocks <= MOBILENET_BLOCKS - 2:
        raise ValueError(f"unfreeze_blocks must be in 0..{MOBILENET_BLOCKS - 2}, got {unfreeze_blocks}")
    last_frozen = MOBILENET_BLOCKS - 1 - unfreeze_blocks
    names = {layer.name for layer in model.layers}
    for name in (f"block_{last_frozen}_add", f"block_{last_frozen}_project_BN"):
        if name in names:
            return name
    raise ValueError(f"model has no block_{last_frozen} output; is it a pneumoscan MobileNetV2?")


def set_finetune_trainable(model: keras.Model, cut_layer: str) -> None:
    """Unfreeze every backbone layer after ``cut_layer``, keeping BatchNorm in inference mode.

    The shipped ImageNet weights have BatchNorm folded into the convolutions, and small-batch
    statistics would wreck them anyway, so BatchNorm layers stay frozen (Keras then runs them in
    inference mode).
    """
    from keras import layers

    after = False
    for layer in model.layers:
        if layer.name == cut_layer:
            after = True
            continue
        if after:
            layer.trainable = not isinstance(layer, layers.BatchNormalization)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One entry of the registry.

    Attributes
    ----------
    name : str
        What ``--arch`` and the sidecar's ``arch`` say.
    label : str
        How people are shown it (the app's model card).
    build : callable
        ``build(cfg, weights=...) -> keras.Model``; ``weights`` is ``"imagenet"`` or ``None``.
    pretrained : bool
        Starts from ImageNet weights: trained in two phases on a cached frozen stem
        (:mod:`pneumoscan.training.engine`), instead of one plain fit.
    augment_inputs : bool
        The plain fit augments its input batches (:class:`~pneumoscan.config.AugmentConfig`).
    """

    name: str
    label: str
    build: Callable[..., keras.Model]
    pretrained: bool = False
    augment_inputs: bool = False


#: The registry: every architecture pneumoscan can train, by name.
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "baseline",
            "Baseline CNN (trained from scratch)",
            lambda cfg, weights=None: build_baseline_cnn(cfg.image_size),
        ),
        Architecture(
            "regularized",
            "Regularised CNN (batch norm, dropout; trained from scratch)",
            lambda cfg, weights=None: build_regularized_cnn(cfg.image_size, dropout=cfg.dropout),
            augment_inputs=True,
        ),
        Architecture(
            "mobilenetv2",
            "MobileNetV2 (ImageNet-pretrained, fine-tuned)",
            lambda cfg, weights="imagenet": build_mobilenetv2(
                cfg.image_size, dense_units=cfg.dense_units, dropout=cfg.dropout, weights=weights
            ),
            pretrained=True,
        ),
    )
}


def architecture(name: str) -> Architecture:
    """The registry entry called ``name``.

    Raises
    ------
    ValueError
        ``name`` is not in :data:`ARCHITECTURES`; the message lists the names that are.
    """
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}") from None


def mobilenet_member(cfg: TrainConfig, cut_layer: str, *, name: str, weights: str | None = "imagenet"):
    """One ensemble member: a fresh ImageNet MobileNetV2 from ``cut_layer`` to the sigmoid.

    Returns
    -------
    full : keras.Model
        The whole MobileNetV2 it was cut from (its ``avg_pool`` and head layers are the member's).
    top : keras.Model, named ``name``
        ``cut features -> P(pneumonia)``, the blocks after ``cut_layer`` trainable (BatchNorm
        frozen, :func:`set_finetune_trainable`), shape ``(n, h, w, c) -> (n, 1)``.
    """
    import keras

    full = build_mobilenetv2(
        cfg.image_size, dense_units=cfg.dense_units, dropout=cfg.dropout, weights=weights
    )
    set_finetune_trainable(full, cut_layer)
    return full, keras.Model(full.get_layer(cut_layer).output, full.output, name=name)


def build_ensemble(stem_source: keras.Model, cut_layer: str, members) -> keras.Model:
    """One model: the frozen stem of ``stem_source`` up to ``cut_layer``, then every member on it.

    The stem runs once per image and the members share its output, so an ensemble of K costs
    the stem plus K tops. The output is one tensor of shape ``(n, 1 + K + e)``: the mean of the
    members' probabilities, each member's probability, and the stem's pooled features (the
    embedding of the out-of-scope guard, ``e`` channels). The sidecar's ``ensemble`` section says
    how to read it (:class:`~pneumoscan.models.artifacts.ModelMetadata`).

    Parameters
    ----------
    stem_source : keras.Model
        A :func:`build_mobilenetv2` model whose layers up to ``cut_layer`` are the frozen stem.
    cut_layer : str
        :func:`mobilenet_cut_layer`.
    members : sequence of keras.Model
        Member tops, ``(n, h, w, c) -> (n, 1)``, with distinct names.
    """
    import keras
    from keras import layers

    for layer in stem_source.layers:
        layer.trainable = False
    cut = stem_source.get_layer(cut_layer).output
    probabilities = [member(cut) for member in members]
    mean = layers.Average(name="ensemble_mean")(probabilities)
    embedding = layers.GlobalAveragePooling2D(name="embedding")(cut)
    # The row models.artifacts.OutputLayout reads: mean, members, embedding.
    output = layers.Concatenate(name="ensemble_output")([mean, *probabilities, embedding])
    return keras.Model(stem_source.input, output, name="pneumoscan_ensemble")


#: Layers of a member top that are its own head (the rest, from the cut to ``avg_pool``, is its body).
MEMBER_HEAD_LAYERS = ("head_dense", "top_dropout", "pred")


def shared_body(members, *, name: str = "shared_body") -> keras.Model:
    """ONE body for K member tops: ``cut features -> pooled features``, every weight the mean of
    the members' (their fine-tuned blocks and ``Conv_1``; the BatchNorm statistics too, which the
    members share as ImageNet's when BatchNorm stayed frozen), BatchNorm frozen.

    Averaging the weights of networks fine-tuned from the same ImageNet start (a "model soup",
    Wortsman et al. 2022) keeps them in one basin; whether the members' own heads still read the
    averaged body as they read their own is measured, not assumed
    (:mod:`pneumoscan.training.distill`'s gate).

    Parameters
    ----------
    members : sequence of keras.Model
        Member tops with the same layers (:func:`mobilenet_member`), ``(n, h, w, c) -> (n, 1)``.
    """
    import keras
    import numpy as np
    from keras import layers

    first = members[0]
    copy = keras.models.clone_model(first)
    for layer in copy.layers:
        if not layer.weights:
            continue
        weights = [m.get_layer(layer.name).get_weights() for m in members]
        layer.set_weights([np.mean([w[i] for w in weights], axis=0) for i in range(len(weights[0]))])
    body = keras.Model(copy.input, copy.get_layer("avg_pool").output, name=name)
    for layer in body.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)
    return body


def member_head(member: keras.Model, *, name: str) -> keras.Model:
    """A member top's own head as a model, ``pooled features -> P(pneumonia)``, with its weights
    (layers named as in the member, so :mod:`pneumoscan.training.adapt` finds ``head_dense`` and
    ``pred``)."""
    import keras

    pooled = keras.Input(member.get_layer("avg_pool").output.shape[1:], name="pooled")
    x = pooled
    for layer_name in MEMBER_HEAD_LAYERS:
        source = member.get_layer(layer_name)
        # Trainable whatever the source is: build_shared_ensemble freezes its stem source's layers,
        # members included, and a frozen copy would silently skip the heads' training.
        layer = source.__class__.from_config({**source.get_config(), "trainable": True})
        x = layer(x)
        layer.set_weights(source.get_weights())
    return keras.Model(pooled, x, name=name)


def build_shared_ensemble(stem_source: keras.Model, cut_layer: str, body: keras.Model, heads) -> keras.Model:
    """One model: the frozen stem up to ``cut_layer``, ONE :func:`shared_body`, K member heads.

    The output row is :func:`build_ensemble`'s (mean, each member's probability, the stem's pooled
    features), so the Predictor, the calibration, the band and the guard read it unchanged; the
    members differ only in their heads, and an image costs one network plus K small heads.

    Parameters
    ----------
    stem_source : keras.Model
        A model whose layers up to ``cut_layer`` are the frozen stem.
    cut_layer : str
    body : keras.Model
        :func:`shared_body`.
    heads : sequence of keras.Model
        :func:`member_head`, named ``member_{k}_head``.
    """
    import keras
    from keras import layers

    for layer in stem_source.layers:
        layer.trainable = False
    cut = stem_source.get_layer(cut_layer).output
    pooled = body(cut)
    probabilities = [head(pooled) for head in heads]
    mean = layers.Average(name="ensemble_mean")(probabilities)
    embedding = layers.GlobalAveragePooling2D(name="embedding")(cut)
    output = layers.Concatenate(name="ensemble_output")([mean, *probabilities, embedding])
    return keras.Model(stem_source.input, output, name="pneumoscan_shared_ensemble")


def soup_ensemble(ensemble: keras.Model, cut_layer: str, members: int) -> keras.Model:
    """An ensemble's fast path: its own stem, ONE body whose every weight is the mean of its
    members' (:func:`shared_body`) and each member's own head, untrained
    (:func:`build_shared_ensemble`); the same output row at about one network's cost.

    It answers close to the ensemble, not as it: :class:`~pneumoscan.inference.backends.CascadeBackend`
    hands the images it places in or near the uncertain band to the ensemble itself, and ``pneumoscan export
    --fast-path`` measures the pair against the ensemble before it writes it. ``ensemble``'s layers
    are set non-trainable (the stem is shared, not copied).
    """
    tops = member_tops(ensemble, members)
    heads = [member_head(top, name=f"member_{k}_head") for k, top in enumerate(tops)]
    return build_shared_ensemble(ensemble, cut_layer, shared_body(tops), heads)


def member_tops(model: keras.Model, members: int) -> list:
    """Each member's ``cut features -> P(pneumonia)`` model, for either ensemble layout: the
    ``member_{k}`` tops of :func:`build_ensemble`, or ``shared_body`` then ``member_{k}_head`` of
    :func:`build_shared_ensemble` (the layers are the model's own, not copies: setting a head's
    weights sets the model's)."""
    import keras

    names = {layer.name for layer in model.layers}
    if "member_0" in names:
        return [model.get_layer(f"member_{k}") for k in range(members)]
    body = model.get_layer("shared_body")
    tops = []
    for k in range(members):
        cut = keras.Input(body.input.shape[1:], name=f"member_{k}_cut")
        tops.append(keras.Model(cut, model.get_layer(f"member_{k}_head")(body(cut)), name=f"member_{k}"))
    return tops


#: Layer names of a student top's two sigmoid outputs.
STUDENT_PROBABILITY, STUDENT_SPREAD = "pred", "spread"


def student_top(member: keras.Model, *, name: str = "student") -> keras.Model:
    """A student top: a copy of an ensemble member's top with a second sigmoid output.

    The copy keeps the member's layers and weights (``block_14`` .. ``Conv_1``, pooling, the head;
    BatchNorm frozen); its ``pred`` output will learn the ensemble's calibrated probability, and a
    new ``spread`` unit on the head's features (zero kernel, bias 0) the members' spread.

    Parameters
    ----------
    member : keras.Model
        A member top (cut features -> P(pneumonia)), e.g. ``ensemble.get_layer("member_0")``,
        with a ``top_dropout`` layer before its ``pred`` unit.

    Returns
    -------
    keras.Model, named ``name``
        ``(n, h, w, c) -> [(n, 1), (n, 1)]``: probability, spread.
    """
    import keras
    from keras import layers

    copy = keras.models.clone_model(member)
    copy.set_weights(member.get_weights())
    for layer in copy.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)
    features = copy.get_layer("top_dropout").output
    spread = layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", name=STUDENT_SPREAD)(features)
    return keras.Model(copy.input, [copy.get_layer(STUDENT_PROBABILITY).output, spread], name=name)


def build_student(stem_source: keras.Model, cut_layer: str, top: keras.Model) -> keras.Model:
    """One model: the frozen stem of ``stem_source`` up to ``cut_layer``, then one student top.

    The output is one tensor of shape ``(n, 2 + e)``: the probability, the spread, and the stem's
    pooled features (the out-of-scope guard's embedding, the same as the ensemble's when the stem
    is). The sidecar's ``student.outputs`` names these columns
    (:class:`~pneumoscan.models.artifacts.ModelMetadata`).

    Parameters
    ----------
    stem_source : keras.Model
        A model whose layers up to ``cut_layer`` are the frozen stem (the teacher ensemble).
    cut_layer : str
    top : keras.Model
        :func:`student_top`.
    """
    import keras
    from keras import layers

    for layer in stem_source.layers:
        layer.trainable = False
    cut = stem_source.get_layer(cut_layer).output
    probability, spread = top(cut)
    embedding = layers.GlobalAveragePooling2D(name="embedding")(cut)
    # The row models.artifacts.OutputLayout reads through the sidecar's student outputs.
    output = layers.Concatenate(name="student_output")([probability, spread, embedding])
    return keras.Model(stem_source.input, output, name="pneumoscan_student")


#: The columns of :func:`build_student`'s output, as the sidecar's ``student.outputs`` records them.
STUDENT_COLUMNS = {"p_pneumonia": 0, "spread": 1, "embedding": 2}


def build_model(cfg: TrainConfig, *, weights: str | None = "imagenet") -> keras.Model:
    """The model named by ``cfg.arch`` in :data:`ARCHITECTURES`."""
    return architecture(cfg.arch).build(cfg, weights=weights)


def last_conv_layer_name(model: keras.Model) -> str:
    """The last layer with a 4-D output: the Grad-CAM target of any pneumoscan model."""
    from keras import layers

    if any(layer.name == MOBILENET_LAST_CONV for layer in model.layers):
        return MOBILENET_LAST_CONV
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4 and not isinstance(layer, layers.InputLayer):
            return layer.name
    raise ValueError(f"model {model.name!r} has no convolutional layer")
