"""JPEG, PNG, TIFF, BMP and WebP: :func:`decode_pillow`, Pillow restricted to the one sniffed format.

Pillow opens the file with exactly the format :func:`~pneumoscan.data.imaging.sniff_format` named,
no other plugin (no EPS, no PDF, ...), and its global settings are left untouched: the size check
(:func:`~pneumoscan.data.imaging.limits.check_size`) runs on the header before any pixel is
decoded; PNG text chunks are capped by Pillow's own ``PngImagePlugin.MAX_TEXT_CHUNK``/
``MAX_TEXT_MEMORY``. The pixels then become one grey uint8 channel by steps 1 and 2 of the
package's policy (:mod:`pneumoscan.data.imaging`): colour to ITU-R 601 luma, transparency laid on
black, more than 8 bits stretched from min..max. A JPEG, TIFF or WebP whose EXIF ``Orientation``
says it is stored rotated or mirrored is turned the way every viewer shows it (the model is not
rotation invariant: ``benchmarks/input_paths.py`` on its 12 training films printed a largest spread
of 0.78, mean 0.14, the JPEG stored on its side the farthest, with the decoder of commit 7dafb30,
before this turn; 0.027 and 0.006 after it, a half-size copy the farthest; 2026-12-03).
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

import pneumoscan.data.imaging.limits as limits
from pneumoscan.data.imaging.compression import jpeg_quality, webp_quality
from pneumoscan.data.imaging.decoded import DecodedImage, ImageDecodeError
from pneumoscan.data.imaging.pixels import colourfulness, sample_image, stretch

#: Bytes a sample of each Pillow mode holds (default 1).
_MODE_SAMPLE_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I;16S": 2}


def decode_pillow(data: bytes, name: str, fmt: str) -> DecodedImage:
    """Decode ``data`` as ``fmt`` (one of the Pillow formats of ``SUPPORTED_FORMATS``)."""
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:  # Pillow's own limit (at open), far above ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else str(exc)
        raise limits.bomb_error(name, size) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, f"corrupt {fmt} file: its header cannot be read") from exc
    mode = img.mode
    width, height = img.size
    limits.check_size(name, width, height)
    scale = 4 if fmt == "JPEG" and min(width, height) > 1024 else 1
    estimate = limits.decode_estimate(
        width * height // scale, _MODE_SAMPLE_BYTES.get(mode, 1), len(img.getbands())
    )
    with limits.reserve(estimate):
        img = _load_pil(img, data)
        if fmt != "JPEG":  # no reduced-scale decode: the loaded size is the file's, as TIFF shows it
            width, height = img.size
        # Read after loading: Pillow turns a TIFF itself as it loads it, and drops its Orientation.
        orientation = _orientation(img)
        if 2 <= orientation <= 8:
            ImageOps.exif_transpose(img, in_place=True)  # in place: the JPEG's format and planes stay
            if orientation >= 5:  # a quarter turn or a transposition: the shown image is the other way up
                width, height = height, width
        gray, colour = _pil_to_gray(img)
    quality = jpeg_quality(img) if fmt == "JPEG" else webp_quality(data) if fmt == "WEBP" else None
    return DecodedImage(gray, width, height, mode, fmt, colour, quality)


def _orientation(img: Image.Image) -> int:
    """The EXIF ``Orientation`` of an opened image (1, as stored, when it has none or it is unreadable)."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a malformed EXIF block is not worth refusing the pixels for
        return 1


def _pil_to_gray(img: Image.Image) -> tuple[np.ndarray, float]:
    """A loaded image -> ``(gray (h, w) uint8, colourfulness)`` by the package's policy."""
    if img.mode == "YCbCr" and img.format == "JPEG":  # a colour JPEG decoded without conversion
        planes = np.asarray(img)
        return np.ascontiguousarray(planes[..., 0]), colourfulness(planes, ycbcr=True)
    colour = 0.0
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new(img.mode, img.size, (0, 0, 0, 255) if img.mode == "RGBA" else (0, 255))
        img = Image.alpha_composite(background, img) if img.mode == "RGBA" else _composite_la(img)
    if img.mode not in ("1", "L", "I", "F") and not img.mode.startswith("I;16"):
        if img.mode != "RGB":
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBA laid on black
        colour = colourfulness(sample_image(img), sampled=True)
        img = img.convert("L")
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8), colour
    return stretch(np.asarray(img)), colour  # I;16, I;16B, I, F: more than 8 bits


def _load_pil(img: Image.Image, data: bytes) -> Image.Image:
    """Decode the pixels of an opened image, taking libjpeg's shortcuts for JPEGs.

    libjpeg can decode at 1/2 scale for free (JPEGs over 1024 px a side, still far above any
    model's input) and can hand out a colour JPEG's YCbCr planes without converting them to RGB:
    their Y plane is the ITU-R 601 luma that ``convert("L")`` would compute, bit for bit, and one
    decode then serves both the grey image and the colourfulness. An RGB-coded JPEG (Adobe, no
    colour transform) has no YCbCr planes; it is decoded again the ordinary way. A multi-page TIFF
    gives its first page.
    """
    if img.format != "JPEG":
        img.load()
        return img
    width, height = img.size
    scaled = (width // 2, height // 2) if min(width, height) > 1024 else (width, height)
    colour = img.mode == "RGB"
    img.draft("YCbCr" if colour else img.mode, scaled)
    try:
        img.load()
    except OSError:
        if not colour:
            raise
        img = Image.open(io.BytesIO(data), formats=["JPEG"])
        img.draft(img.mode, scaled)
        img.load()
    return img


def _composite_la(img: Image.Image) -> Image.Image:
    luma, alpha = (np.asarray(c, dtype=np.float32) for c in img.split())
    return Image.fromarray(np.round(luma * alpha / 255.0).astype(np.uint8), "L")
