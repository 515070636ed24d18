"""One X-ray in many files: the formats, bit depths and resamplings a user may bring the same film in.

A model must give the same answer whatever path brings an image in (issue 16). :func:`xray_variants`
re-encodes one grey image as the files a hospital, a PACS export or a user's screenshot produce;
the tests and ``benchmarks/input_paths.py`` score them all and compare.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pneumoscan.testing.dicom import dicom_dataset, dicom_to_bytes


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")  # uint8 -> L, uint16 -> I;16
    return buf.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def xray_variants(gray: np.ndarray) -> dict[str, bytes]:
    """The same film as the files of each path: name -> file bytes.

    ``gray`` (h, w) uint8 is the film as pneumoscan decodes it. The variants:

    - ``png8``: lossless 8-bit PNG; ``png16``: 16-bit grey PNG of the same values (x257);
    - ``dicom8``: 8-bit DICOM; ``dicom12``: 12-bit DICOM (x16); ``dicom12_mono1``: the 12-bit values
      stored inverted as MONOCHROME1;
    - ``rgb_jpeg95``: a colour JPEG of the grey film, quality 95;
    - ``up1024_png``, ``up1024_jpeg90``, ``up2048_jpeg90``: resampled to a larger original (Lanczos)
      as a PNG or a JPEG, which the decoder brings back down (JPEGs over 1024 px at half scale);
    - ``up1024_dicom12``: the 1024-px resampling as a 12-bit DICOM.
    """
    gray = np.asarray(gray, dtype=np.uint8)
    twelve = gray.astype(np.uint16) * 16
    image = Image.fromarray(gray, "L")
    up1024 = image.resize((1024, 1024), Image.Resampling.LANCZOS)
    up2048 = image.resize((2048, 2048), Image.Resampling.LANCZOS)
    return {
        "png8": _png(gray),
        "png16": _png(gray.astype(np.uint16) * 257),
        "dicom8": dicom_to_bytes(dicom_dataset(gray, bits_stored=8)),
        "dicom12": dicom_to_bytes(dicom_dataset(twelve, bits_stored=12)),
        "dicom12_mono1": dicom_to_bytes(
            dicom_dataset((4095 - twelve).astype(np.uint16), bits_stored=12, photometric="MONOCHROME1")
        ),
        "rgb_jpeg95": _jpeg(Image.merge("RGB", (image, image, image)), 95),
        "up1024_png": _png(np.asarray(up1024)),
        "up1024_jpeg90": _jpeg(up1024, 90),
        "up2048_jpeg90": _jpeg(up2048, 90),
        "up1024_dicom12": dicom_to_bytes(
            dicom_dataset(np.asarray(up1024).astype(np.uint16) * 16, bits_stored=12)
        ),
    }
