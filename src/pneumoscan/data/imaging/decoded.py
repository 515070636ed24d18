"""What a decode gives and how it fails: :class:`DecodedImage` and :class:`ImageDecodeError`.

Every decoder of the package (:mod:`.pillow`, :mod:`.dicom`) returns the one and raises the other,
and every caller (training, evaluation, prediction, the app, the service) reads only these two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


class ImageDecodeError(ValueError):
    """A file that cannot be used as a chest X-ray. ``str(err)`` is ``"<file>: <reason>"``."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """A decoded image before resizing.

    Attributes
    ----------
    gray : ndarray of shape (h, w), dtype uint8
        Grey levels 0..255 after step 1 and 2 of the package's policy (:mod:`pneumoscan.data.imaging`).
        Usually ``(height, width)``; JPEGs over 1024 px a side are decoded at half scale (still far
        above any model's input).
    width, height : int
        Original size in pixels, as stored in the file, or as shown when an EXIF ``Orientation``
        turned it a quarter turn.
    mode : str
        What the file held: a PIL mode (``"L"``, ``"RGB"``, ``"I;16"``, ...) or ``"DICOM/<photometric>"``.
    format : str
        ``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"BMP"``, ``"WEBP"`` or ``"DICOM"``.
    colourfulness : float
        Hasler-Suesstrunk colourfulness of the original (0 for grey images, above ~20 for ordinary
        colour photographs). X-rays are grey; the app uses this to refuse holiday photos.
    lossy_quality : int or None
        A lossy file's quality on its codec's scale, estimated from the file
        (:mod:`~pneumoscan.data.imaging.compression`): a JPEG's on the IJG scale (1..100), a lossy
        WebP's on libwebp's (0..100); ``None`` for lossless files. The training images are all
        JPEGs of quality 75; the scope guard flags a file compressed much more heavily.
    """

    gray: np.ndarray
    width: int
    height: int
    mode: str
    format: str
    colourfulness: float
    lossy_quality: int | None = None
