"""What a decode may cost: every size limit, checked from the header, and the process-wide memory budget.

The one home of the decoding limits. The decoders read them here, as ``limits.NAME``, when they
run, so changing one (a test, a deployment) changes it for every path:

* :data:`MAX_IMAGE_PIXELS` pixels per image and :data:`MIN_IMAGE_SIDE` px a side (the values of
  :mod:`pneumoscan.config`; :func:`check_size`), before any pixel is decompressed;
* :data:`MAX_FILE_BYTES` per file, before it is read;
* :data:`MAX_DICOM_PIXEL_BYTES` of DICOM pixel data once decompressed, all frames counted, and a
  Deflated DICOM data set inflated to at most that plus :data:`MAX_DICOM_HEADER_BYTES`, checked
  while it streams.

Memory: decoding keeps the native pixels (1 to 8 bytes a sample), the uint8 result and chunks of at
most :data:`CHUNK_PIXELS` float64 values, never a float64 copy of the whole image. A decode
reserves an estimate of its peak (:func:`decode_estimate`, about 3 to 11 bytes a pixel) from a
process-wide budget of :data:`DECODE_MEMORY_BUDGET` bytes (:func:`reserve`), so threads decoding
many files at once stay within it (a single image over the budget decodes alone). Measured with
``benchmarks/decode_memory.py``: a 49 MP image adds about 0.25 GB (16-bit grey PNG or DICOM) to
0.34 GB (RGB PNG) to the 0.94 GB peak of a ``pneumoscan predict`` process on one small JPEG.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from pneumoscan.config import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from pneumoscan.data.imaging.decoded import ImageDecodeError

__all__ = [
    "CHUNK_PIXELS",
    "DECODE_MEMORY_BUDGET",
    "MAX_DICOM_HEADER_BYTES",
    "MAX_DICOM_PIXEL_BYTES",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MIN_IMAGE_SIDE",
    "bomb_error",
    "check_size",
    "decode_estimate",
    "reserve",
]

#: Refuse files larger than this many bytes before reading them (a 16-bit 4k x 4k DICOM is ~32 MB).
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Largest DICOM pixel data, decompressed, all frames together (rows x columns x samples x frames x
#: bits allocated / 8): one 50 MP 16-bit frame fits, a 100-frame 3000 x 3000 series does not.
MAX_DICOM_PIXEL_BYTES = 128 * 1024 * 1024
#: What a Deflated DICOM may inflate to beyond its pixel data (header, overlays, private tags).
MAX_DICOM_HEADER_BYTES = 16 * 1024 * 1024
#: Bytes that decodes running at the same time may hold together (see :class:`_MemoryBudget`).
DECODE_MEMORY_BUDGET = 768 * 1024 * 1024
#: Float64 values converted at a time when mapping more-than-8-bit data to 0..255 (8 MB).
CHUNK_PIXELS = 1 << 20


def bomb_error(name: str, size: str) -> ImageDecodeError:
    """The refusal of an image over :data:`MAX_IMAGE_PIXELS`; ``size`` says how large it claims to be."""
    return ImageDecodeError(
        name,
        f"image too large ({size}; limit {MAX_IMAGE_PIXELS / 1e6:.0f} MP): refused as a possible "
        "decompression bomb",
    )


def check_size(name: str, width: int, height: int) -> None:
    """Refuse a header's ``width x height`` over :data:`MAX_IMAGE_PIXELS` or under :data:`MIN_IMAGE_SIDE`."""
    if width * height > MAX_IMAGE_PIXELS:
        raise bomb_error(name, f"{width}x{height} = {width * height / 1e6:.0f} MP")
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(
            name, f"image too small ({width}x{height} px; at least {MIN_IMAGE_SIDE} px a side needed)"
        )


def decode_estimate(pixels: int, sample_bytes: int, samples: int = 1) -> int:
    """Peak bytes a decode holds: native pixels twice (decoder output and one converted copy), the
    uint8 result, and the float64 chunks."""
    return pixels * (2 * sample_bytes * samples + 1) + 4 * 8 * CHUNK_PIXELS


class _MemoryBudget:
    """Bytes that decodes in flight may hold together; a decode waits until its estimate fits.

    A decode whose estimate alone exceeds the budget runs when nothing else holds any of it, so
    it cannot wait forever. Reservations are not nested (one per decode), so they cannot deadlock.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        nbytes = max(0, int(nbytes))
        with self._cond:
            while self.used and self.used + nbytes > self.limit:
                self._cond.wait()
            self.used += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()


_BUDGET = _MemoryBudget(DECODE_MEMORY_BUDGET)


def reserve(nbytes: int) -> contextlib.AbstractContextManager[None]:
    """Hold ``nbytes`` of the process-wide budget for the ``with`` block (waits until they fit)."""
    return _BUDGET.reserve(nbytes)
