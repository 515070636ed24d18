"""Array operations that every decoder and :func:`~pneumoscan.data.imaging.preprocess` share.

:func:`stretch` maps any real array linearly onto uint8 0..255 in chunks of
:data:`~pneumoscan.data.imaging.limits.CHUNK_PIXELS` values (more-than-8-bit files, DICOM after its
LUTs, and the model's input); :func:`colourfulness` tells a colour photograph from a grey
radiograph on a sample of its pixels (:func:`sample_image` draws it from a Pillow image in strips).
No function here makes a float copy of a whole image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from pneumoscan.data.imaging.limits import CHUNK_PIXELS

#: (R, G, B) -> the opponent-colour channels rg = R - G and yb = (R + G) / 2 - B.
_OPPONENT = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
#: JPEG's (Y, Cb - 128, Cr - 128) -> (R, G, B) (JFIF, ITU-R 601 full range).
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def _sample_step(height: int, width: int) -> int:
    """Every k-th pixel of each k-th row, k chosen for about 64 samples along the shorter side."""
    return max(1, min(height, width) // 64)


def sample_image(img: Image.Image) -> np.ndarray:
    """``np.asarray(img)[::k, ::k]`` (k of :func:`_sample_step`) of an RGB image, read in strips
    of about a megapixel, so no full-size array copy is made."""
    width, height = img.size
    step = _sample_step(height, width)
    strip = step * max(1, CHUNK_PIXELS // max(1, width * step))  # a multiple of step: rows align
    return np.concatenate(
        [
            np.asarray(img.crop((0, top, width, min(height, top + strip))))[::step, ::step]
            for top in range(0, height, strip)
        ]
    )


def colourfulness(pixels: np.ndarray, *, ycbcr: bool = False, sampled: bool = False) -> float:
    """Hasler-Suesstrunk colourfulness of an ``(h, w, 3)`` RGB (or JPEG YCbCr) array.

    Measured on every k-th pixel (:func:`_sample_step`): enough to tell a colour photograph from a
    grey radiograph, at a fraction of a full pass. An already sampled array (:func:`sample_image`)
    is passed with ``sampled=True``.
    """
    step = 1 if sampled else _sample_step(*pixels.shape[:2])
    sample = np.asarray(pixels[::step, ::step, :3], dtype=np.float64).reshape(-1, 3)
    to_opponent = _OPPONENT
    if ycbcr:
        sample = sample - (0.0, 128.0, 128.0)
        to_opponent = _OPPONENT @ _YCBCR_TO_RGB
    rg_yb = to_opponent @ sample.T  # (2, n), contiguous rows: fast reductions
    mean, std = rg_yb.mean(axis=1), rg_yb.std(axis=1)
    return float(np.hypot(*std) + 0.3 * np.hypot(*mean))


def stretch(values: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Map an array linearly from its min..max onto uint8 0..255 (constant -> 0); NaN and +-inf
    count as 0.

    Works on blocks of rows of at most :data:`~pneumoscan.data.imaging.limits.CHUNK_PIXELS` values,
    converted to float64 one at a time (two passes: min/max, then mapping), so no float copy of the
    whole image is ever held.

    Parameters
    ----------
    values : ndarray of shape (h, w) or (h, w, samples), any real dtype
    transform : callable, optional
        Applied to each block first (element-wise, e.g. DICOM's modality and VOI LUTs).

    Returns
    -------
    ndarray of the shape of ``values``, dtype uint8
    """
    if values.dtype == np.uint8 and transform is None:
        # 8-bit pixels (every image on its way to the model): the same float mapping, evaluated
        # once per grey level into a 256-entry table and looked up per pixel: byte-identical to the
        # blocks below (tests/test_imaging.py) and about 7x faster on a 224 x 224 input.
        lo8, hi8 = int(values.min()), int(values.max())
        if not hi8 > lo8:
            return np.zeros(values.shape, dtype=np.uint8)
        table = np.round((np.arange(256, dtype=np.float64) - lo8) * (255.0 / (hi8 - lo8)))
        return np.clip(table, 0, 255).astype(np.uint8)[values]  # levels outside lo..hi never occur
    rows = values.shape[0]
    step = max(1, CHUNK_PIXELS // max(1, values[:1].size))

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, rows, step):
            block = values[start : start + step]
            block = np.asarray(transform(block) if transform else block, dtype=np.float64)
            yield start, np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)

    lo, hi = np.inf, -np.inf
    for _, block in blocks():
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    out = np.zeros(values.shape, dtype=np.uint8)
    if not hi > lo:
        return out
    scale = 255.0 / (hi - lo)
    for start, block in blocks():
        out[start : start + step] = np.round((block - lo) * scale)
    return out
