"""Training-time augmentation of X-ray batches, as Keras layers (imports Keras: load it lazily).

:func:`build_augmenter` is applied by the input pipeline (:func:`pneumoscan.data.dataset.make_dataset`)
and by the training engine's augmented feature views, never inside a saved model, so saved models
hold only standard Keras layers and load in safe mode.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from pneumoscan.config import AugmentConfig


class RandomGammaBlurNoise(keras.layers.Layer):
    """Random gamma curve, occasional 3x3 blur and Gaussian noise, on 0..255 images (training only).

    Parameters
    ----------
    gamma : float
        ``log(gamma)`` is drawn uniformly from ``[-gamma, gamma]`` per image.
    blur_prob : float in 0..1
        Chance that an image is blurred with a 3x3 box filter.
    noise_std : float
        Standard deviation of the added Gaussian noise, in grey levels.
    seed : int, optional
        Seeds the layer's generator: same seed, same draws.
    """

    def __init__(self, gamma=0.3, blur_prob=0.25, noise_std=6.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.gamma, self.blur_prob, self.noise_std, self.seed = gamma, blur_prob, noise_std, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        n = ops.shape(images)[0]
        log_gamma = keras.random.uniform((n, 1, 1, 1), -self.gamma, self.gamma, seed=self.seed_generator)
        x = ops.power(ops.clip(images / 255.0, 0.0, 1.0), ops.exp(log_gamma)) * 255.0
        kernel = ops.ones((3, 3, 1, 1), dtype=x.dtype) / 9.0
        blurred = ops.conv(x, kernel, padding="same")
        use_blur = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < self.blur_prob
        x = ops.where(use_blur, blurred, x)
        x = x + keras.random.normal(ops.shape(x), stddev=self.noise_std, seed=self.seed_generator)
        return ops.clip(x, 0.0, 255.0)

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "blur_prob": self.blur_prob,
            "noise_std": self.noise_std,
            "seed": self.seed,
        }


def build_augmenter(cfg: AugmentConfig, *, seed: int):
    """A Keras model that augments ``float32`` batches in 0..255 of shape ``(n, s, s, 1)``.

    Geometric: rotation, shift, zoom (no flips, see :class:`~pneumoscan.config.AugmentConfig`).
    Photometric: brightness, contrast, gamma, occasional blur and sensor noise: X-rays from another
    machine or hospital differ mostly in exposure, contrast curve and sharpness.
    """
    return keras.Sequential(
        [
            layers.RandomRotation(cfg.rotation_deg / 360.0, fill_mode="constant", seed=seed),
            layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=seed + 1),
            layers.RandomZoom((-cfg.zoom, cfg.zoom), fill_mode="constant", seed=seed + 2),
            RandomGammaBlurNoise(cfg.gamma, cfg.blur_prob, cfg.noise_std, seed=seed + 3),
            layers.RandomBrightness(cfg.brightness, value_range=(0.0, 255.0), seed=seed + 4),
            layers.RandomContrast(cfg.contrast, value_range=(0.0, 255.0), seed=seed + 5),
        ],
        name="augment",
    )
