"""One X-ray in many files: the formats, bit depths and resamplings a user may bring the same film in.

A model must give the same answer whatever path brings an image in (issue 16). :func:`xray_variants`
re-encodes one grey image as the files a hospital, a PACS export or a user's screenshot produce;
the tests and ``benchmarks/input_paths.py`` score them all and compare. :func:`lossy_variants` are
harder: new compression artefacts at qualities the training copy never had. The benchmark reports
them apart, as a finding about the model, not a requirement of the decoder.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable

import numpy as np
from PIL import ExifTags, Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from pneumoscan.testing.dicom import dicom_dataset, dicom_to_bytes


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # uint8 -> L, uint16 -> I;16
    return buf.getvalue()


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **options)
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    return _save(image, "JPEG", quality=quality)


def jpeg_bytes(gray: np.ndarray, quality: int) -> bytes:
    """A grey film as a JPEG file of ``quality`` (Pillow's, i.e. libjpeg's, scale)."""
    return _jpeg(Image.fromarray(np.asarray(gray, dtype=np.uint8), "L"), int(quality))


def _on_its_side_jpeg(image: Image.Image) -> bytes:
    """A JPEG stored turned a quarter turn, whose EXIF ``Orientation`` 6 tells viewers to turn it back."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return _save(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())


def _compressed_dicom(pixels: np.ndarray, transfer_syntax) -> bytes:
    """A 12-bit DICOM whose pixel data is compressed losslessly (pydicom's encoders)."""
    ds = dicom_dataset(pixels, bits_stored=12)
    ds.compress(transfer_syntax)
    return dicom_to_bytes(ds)


def _signed_rescaled_dicom(twelve: np.ndarray) -> bytes:
    """The 12-bit values stored signed, shifted by -2048, with a rescale intercept that undoes it."""
    ds = dicom_dataset((twelve.astype(np.int32) - 2048).astype(np.int16).view(np.uint16), bits_stored=12)
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 2048
    return dicom_to_bytes(ds)


def xray_variants(gray: np.ndarray, only: Iterable[str] | None = None) -> dict[str, bytes]:
    """The same film as the files of each path (all, or the names in ``only``): name -> file bytes.

    ``gray`` (h, w) uint8 is the film as pneumoscan decodes it. The variants:

    - ``png8``: lossless 8-bit PNG; ``png16``: 16-bit grey PNG of the same values (x257);
    - ``dicom8``: 8-bit DICOM; ``dicom12``: 12-bit DICOM (x16); ``dicom12_mono1``: the 12-bit values
      stored inverted as MONOCHROME1;
    - ``rgb_jpeg95``: a colour JPEG of the grey film, quality 95;
    - ``up1024_png``, ``up1024_jpeg90``, ``up2048_jpeg90``: resampled to a larger original (Lanczos)
      as a PNG or a JPEG, which the decoder brings back down (JPEGs over 1024 px at half scale);
    - ``up1024_dicom12``: the 1024-px resampling as a 12-bit DICOM;
    - ``tiff16``: 16-bit grey TIFF; ``webp_lossless``; ``la_png``: grey with an opaque alpha channel;
    - ``jpeg_exif_rotated``: stored on its side with EXIF ``Orientation`` 6 (viewers turn it back);
    - ``dicom12_signed_rescaled``: signed stored values and a rescale intercept;
      ``dicom12_rle``, ``dicom12_j2k``: RLE and JPEG 2000 lossless compressed pixel data;
    - ``down_half_png``: a copy at half the size (Lanczos), as a thumbnail or a downsized export.
    """
    gray = np.asarray(gray, dtype=np.uint8)
    twelve = gray.astype(np.uint16) * 16
    image = Image.fromarray(gray, "L")
    up1024 = functools.cache(lambda: image.resize((1024, 1024), Image.Resampling.LANCZOS))
    up2048 = functools.cache(lambda: image.resize((2048, 2048), Image.Resampling.LANCZOS))
    half = (max(1, gray.shape[1] // 2), max(1, gray.shape[0] // 2))
    makers = {
        "png8": lambda: _png(gray),
        "png16": lambda: _png(gray.astype(np.uint16) * 257),
        "dicom8": lambda: dicom_to_bytes(dicom_dataset(gray, bits_stored=8)),
        "dicom12": lambda: dicom_to_bytes(dicom_dataset(twelve, bits_stored=12)),
        "dicom12_mono1": lambda: dicom_to_bytes(
            dicom_dataset((4095 - twelve).astype(np.uint16), bits_stored=12, photometric="MONOCHROME1")
        ),
        "rgb_jpeg95": lambda: _jpeg(Image.merge("RGB", (image, image, image)), 95),
        "up1024_png": lambda: _png(np.asarray(up1024())),
        "up1024_jpeg90": lambda: _jpeg(up1024(), 90),
        "up2048_jpeg90": lambda: _jpeg(up2048(), 90),
        "up1024_dicom12": lambda: dicom_to_bytes(
            dicom_dataset(np.asarray(up1024()).astype(np.uint16) * 16, bits_stored=12)
        ),
        "tiff16": lambda: _save(Image.fromarray(gray.astype(np.uint16) * 257), "TIFF"),
        "webp_lossless": lambda: _save(image, "WEBP", lossless=True),
        "la_png": lambda: _save(Image.merge("LA", (image, Image.new("L", image.size, 255))), "PNG"),
        "jpeg_exif_rotated": lambda: _on_its_side_jpeg(image),
        "dicom12_signed_rescaled": lambda: _signed_rescaled_dicom(twelve),
        "dicom12_rle": lambda: _compressed_dicom(twelve, RLELossless),
        "dicom12_j2k": lambda: _compressed_dicom(twelve, JPEG2000Lossless),
        "down_half_png": lambda: _png(np.asarray(image.resize(half, Image.Resampling.LANCZOS))),
    }
    unknown = set(only or ()) - set(makers)
    if unknown:
        raise ValueError(f"no such variant: {sorted(unknown)}; known: {sorted(makers)}")
    return {name: make() for name, make in makers.items() if only is None or name in only}


def webp_bytes(gray: np.ndarray, quality: int) -> bytes:
    """A grey film as a lossy WebP of ``quality`` (libwebp through Pillow)."""
    return _save(Image.fromarray(np.asarray(gray, dtype=np.uint8), "L"), "WEBP", quality=quality)


def lossy_variants(gray: np.ndarray) -> dict[str, bytes]:
    """The same film re-compressed at qualities the training copy never had: name -> file bytes.

    Every training file is a JPEG at one quality (the same quantization tables throughout), so a
    re-encoding at that quality changes almost nothing; these add new artefacts: ``jpeg_q50``, and
    lossy WebP at quality 80 and 50.
    """
    return {
        "jpeg_q50": jpeg_bytes(gray, 50),
        "webp_q80": webp_bytes(gray, 80),
        "webp_q50": webp_bytes(gray, 50),
    }
