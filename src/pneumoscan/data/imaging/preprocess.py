"""Decoded pixels -> the model's input: :func:`preprocess` (and :func:`resize_gray`, :func:`load_image`).

Steps 3 to 5 of the package's policy (:mod:`pneumoscan.data.imaging`): resize to the model's side,
stretch over 0..255, blur by :data:`INPUT_BLUR`. Every image that pneumoscan touches (training,
evaluation, prediction, the app, export checks) reaches a model through :func:`preprocess`, so
training and serving cannot drift.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from pneumoscan.data.imaging.decode import read_image
from pneumoscan.data.imaging.decoded import DecodedImage
from pneumoscan.data.imaging.pixels import stretch

#: Radius (about the standard deviation, in pixels of the model's input) of the Gaussian blur that
#: :func:`preprocess` applies last: it evens out the fine texture that differs between the paths
#: one film can come in by (a JPEG of the small copy, a resampling of a large original).
INPUT_BLUR = 1.0


def preprocess(image: DecodedImage | np.ndarray, size: int) -> np.ndarray:
    """Resize grey pixels to the model's input, then stretch them over the full 0..255 range.

    The stretch (the image's own min..max onto 0..255, as :func:`~pneumoscan.data.imaging.decode_bytes`
    already does for more-than-8-bit data) makes every path of one film give the same input: an
    8-bit JPEG, a 16-bit PNG, an 8- or 12-bit DICOM or MONOCHROME1 of the same pixels differ only by
    an affine map, which the stretch removes. It also removes a shortcut the shortcut audit found in
    the training folder: most pneumonia films there never reach white (median brightest pixel 225
    against 251 for normal films), a trait of how they were processed, not of the lungs.

    Last, a Gaussian blur of :data:`INPUT_BLUR` pixels: the finest texture of a film (JPEG grain,
    the resampling filter that made the file) depends on the path that brought it in, not on the
    lungs; after the blur a small copy and a resampling of a larger original keep nearly the same
    fine texture, so the model can neither learn nor be fooled by the difference
    (``benchmarks/input_paths.py`` measures what is left of it in the model's answers).

    Parameters
    ----------
    image : DecodedImage or ndarray of shape (height, width), uint8
    size : int
        Output side in pixels.

    Returns
    -------
    ndarray of shape (size, size, 1), dtype uint8
    """
    stretched = Image.fromarray(stretch(resize_gray(image, size)), "L")
    return np.asarray(stretched.filter(ImageFilter.GaussianBlur(INPUT_BLUR)))[:, :, None]


def resize_gray(image: DecodedImage | np.ndarray, size: int) -> np.ndarray:
    """Grey pixels resized (antialiased bilinear) to ``size`` x ``size``, values as they are: the
    film as decoded, before :func:`preprocess` stretches it (the shortcut audit reads this).

    Returns
    -------
    ndarray of shape (size, size), dtype uint8
    """
    gray = image.gray if isinstance(image, DecodedImage) else np.asarray(image)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got shape {gray.shape} dtype {gray.dtype}")
    if gray.shape != (size, size):
        gray = np.asarray(Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BILINEAR))
    return gray


def load_image(path: str | Path, size: int) -> np.ndarray:
    """:func:`~pneumoscan.data.imaging.read_image` then :func:`preprocess`: ``uint8`` array of shape
    ``(size, size, 1)``."""
    return preprocess(read_image(path), size)
