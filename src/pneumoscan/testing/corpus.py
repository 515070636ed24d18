"""Files for the decoder's tests and ``benchmarks/decode_memory.py``: one radiograph in every accepted
format, mode and DICOM transfer syntax, and every kind of hostile file, all generated in memory.

Every *lossless* variant holds the same grey levels: :func:`base_gray` spans 0..255 exactly, so an
8-bit copy is kept as is and a 12-bit, 16-bit or float copy is stretched back onto the same values.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.testing.dicom import dicom_dataset, dicom_to_bytes
from pneumoscan.testing.synthetic import xray_like

HEIGHT, WIDTH = 160, 128


def base_gray(height: int = HEIGHT, width: int = WIDTH, seed: int = 7) -> np.ndarray:
    """An X-ray-like ``(height, width)`` uint8 image whose values span 0..255 exactly."""
    gray = xray_like(height, width, seed=seed)
    gray[0, 0], gray[0, 1] = 0, 255
    return gray


# --------------------------------------------------------------------------- DICOM


def _encapsulated(ds, transfer_syntax: str, frame: bytes) -> bytes:
    from pydicom.encaps import encapsulate

    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    return dicom_to_bytes(ds)


#: Transfer syntax UID -> (name, lossless?, largest absolute difference allowed from the reference
#: grey levels after decoding, mean absolute difference allowed).
TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": ("implicit VR little endian", True, 0, 0.0),
    "1.2.840.10008.1.2.1": ("explicit VR little endian", True, 0, 0.0),
    "1.2.840.10008.1.2.1.99": ("deflated explicit VR little endian", True, 0, 0.0),
    "1.2.840.10008.1.2.2": ("explicit VR big endian", True, 0, 0.0),
    "1.2.840.10008.1.2.4.50": ("JPEG baseline", False, 40, 2.5),
    "1.2.840.10008.1.2.4.51": ("JPEG extended 12-bit", False, 40, 2.5),
    "1.2.840.10008.1.2.4.57": ("JPEG lossless process 14", True, 0, 0.0),
    "1.2.840.10008.1.2.4.70": ("JPEG lossless SV1", True, 0, 0.0),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS lossless", True, 0, 0.0),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS near-lossless (NEAR=3 of 12 bits)", False, 1, 0.5),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000 lossless", True, 0, 0.0),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000 (PSNR 60 dB)", False, 4, 1.0),
    "1.2.840.10008.1.2.5": ("RLE lossless", True, 0, 0.0),
}


def dicom_in(
    transfer_syntax: str, gray: np.ndarray | None = None, *, photometric: str = "MONOCHROME2"
) -> bytes:
    """``gray`` (default :func:`base_gray`) as a DICOM file in ``transfer_syntax``.

    Stored as 12-bit values ``gray * 16`` (8-bit for JPEG baseline); MONOCHROME1 stores the
    inverse, so every variant decodes back to ``gray``.
    """
    import imagecodecs
    from pydicom.uid import UID

    gray = base_gray() if gray is None else gray
    eight = transfer_syntax == "1.2.840.10008.1.2.4.50"
    values = gray.copy() if eight else gray.astype(np.uint16) * 16
    if photometric == "MONOCHROME1":
        values = (255 if eight else 4080) - values
    ds = dicom_dataset(values, bits_stored=8 if eight else 12, photometric=photometric)
    ts = UID(transfer_syntax)
    if transfer_syntax == "1.2.840.10008.1.2.4.50":
        return _encapsulated(ds, ts, imagecodecs.jpeg8_encode(values, level=95))
    if transfer_syntax == "1.2.840.10008.1.2.4.51":
        return _encapsulated(ds, ts, imagecodecs.jpeg8_encode(values, level=95, bitspersample=12))
    if transfer_syntax in ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"):
        predictor = 1 if transfer_syntax.endswith(".70") else 6
        frame = imagecodecs.jpeg8_encode(values, lossless=True, predictor=predictor, bitspersample=12)
        return _encapsulated(ds, ts, frame)
    if transfer_syntax == "1.2.840.10008.1.2.4.80":
        return _encapsulated(ds, ts, imagecodecs.jpegls_encode(values))
    if transfer_syntax == "1.2.840.10008.1.2.4.81":
        return _encapsulated(ds, ts, imagecodecs.jpegls_encode(values, level=3))
    if transfer_syntax in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"):
        ds.compress(ts)
        return dicom_to_bytes(ds)
    if transfer_syntax == "1.2.840.10008.1.2.4.91":
        ds.compress(ts, j2k_psnr=[60])
        return dicom_to_bytes(ds)
    if transfer_syntax == "1.2.840.10008.1.2.2":
        ds.PixelData = values.astype(">u2").tobytes()  # pydicom writes the value's bytes as they are
    ds.file_meta.TransferSyntaxUID = ts  # native: pydicom writes the elements in that encoding
    return dicom_to_bytes(ds)


def deflated_dicom_bomb(inflated_mb: int = 200) -> bytes:
    """A Deflated DICOM of a few hundred kB whose data set inflates to ``inflated_mb`` MB: a small
    ordinary image preceded by a private element full of zeros."""
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dicom_dataset(base_gray().astype(np.uint16) * 16, bits_stored=12)
    body = dicom_to_bytes(ds, preamble=False)  # the raw data set, explicit VR little endian
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    split = body.index(b"\xe0\x7f\x10\x00")  # pixel data
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = inflated_mb * 2**20
    parts = [deflate.compress(body[:split] + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, size))]
    zeros = bytes(2**20)
    for _ in range(inflated_mb):
        parts.append(deflate.compress(zeros))
    parts += [deflate.compress(body[split:]), deflate.flush()]
    head = io.BytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    return head.getvalue() + b"".join(parts)


def multiframe_dicom(frames: int, rows: int, cols: int, *, stored_frames: int | None = None) -> bytes:
    """An uncompressed multi-frame DICOM claiming ``frames`` frames of ``rows x cols`` at 16 bits,
    frame ``k`` filled with ``k * 100``; only ``stored_frames`` (default all) are in the file."""
    stored = frames if stored_frames is None else stored_frames
    stack = np.stack([np.full((rows, cols), k * 100, np.uint16) for k in range(stored)])
    stack[0] = base_gray(rows, cols).astype(np.uint16) * 16
    ds = dicom_dataset(stack, bits_stored=12, frames=frames)
    return dicom_to_bytes(ds)


# --------------------------------------------------------------------------- Pillow formats


def pil_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims ``width x height`` 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def png_with_ztxt_bomb(megabytes: int = 64) -> bytes:
    """A small, valid PNG with a zTXt chunk that inflates to ``megabytes`` MB of text."""
    data = pil_bytes(Image.fromarray(base_gray()), "PNG")
    text = zlib.compress(b"a" * (megabytes * 2**20), 9)
    chunk = png_chunk(b"zTXt", b"Comment\0\0" + text)
    at = data.index(b"IDAT") - 4
    return data[:at] + chunk + data[at:]


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose only IFD claims ``width x height`` 8-bit grey pixels."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: BlackIsZero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: after the IFD
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts: 16 bytes are there
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF0 header is patched to claim ``width x height``."""
    data = bytearray(pil_bytes(Image.fromarray(base_gray()), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# --------------------------------------------------------------------------- the corpus


def lossless_variants() -> dict[str, bytes]:
    """File name -> bytes: :func:`base_gray` losslessly in every format, mode and encoding that
    holds it exactly; each decodes to exactly :func:`base_gray`."""
    gray = base_gray()
    img = Image.fromarray(gray)
    rgb = Image.merge("RGB", (img, img, img))
    palette = Image.fromarray(gray, "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    as_float = Image.fromarray(gray.astype(np.float32) / 255.0, "F")
    variants = {
        "png-L.png": pil_bytes(img, "PNG"),
        "png-LA.png": pil_bytes(Image.merge("LA", (img, Image.new("L", img.size, 255))), "PNG"),
        "png-P.png": pil_bytes(palette, "PNG"),
        "png-RGB.png": pil_bytes(rgb, "PNG"),
        "png-RGBA.png": pil_bytes(rgb.convert("RGBA"), "PNG"),
        "png-I16.png": pil_bytes(sixteen, "PNG"),
        "tiff-L.tif": pil_bytes(img, "TIFF"),
        "tiff-L-lzw.tiff": pil_bytes(img, "TIFF", compression="tiff_lzw"),
        "tiff-I16.tif": pil_bytes(sixteen, "TIFF"),
        "tiff-F.tif": pil_bytes(as_float, "TIFF"),
        "tiff-RGB-deflate.tif": pil_bytes(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "bmp-L.bmp": pil_bytes(img, "BMP"),
        "bmp-RGB.bmp": pil_bytes(rgb, "BMP"),
        "webp-lossless.webp": pil_bytes(rgb, "WEBP", lossless=True),
        "dicom-mono1.dcm": dicom_in("1.2.840.10008.1.2.1", photometric="MONOCHROME1"),
        "dicom-no-extension": dicom_in("1.2.840.10008.1.2.1"),
    }
    no_preamble = dicom_dataset(gray.astype(np.uint16) * 16, bits_stored=12)
    variants["dicom-no-preamble.dcm"] = dicom_to_bytes(no_preamble, preamble=False)
    for uid, (_, lossless, _, _) in TRANSFER_SYNTAXES.items():
        if lossless:
            variants[f"dicom-{uid}.dcm"] = dicom_in(uid)
    return variants


def lossy_variants() -> dict[str, bytes]:
    """File name -> bytes: :func:`base_gray` in lossy encodings (close to it, not equal)."""
    gray = base_gray()
    img = Image.fromarray(gray)
    cmyk = Image.merge("RGB", (img, img, img)).convert("CMYK")
    variants = {
        "jpeg-L.jpg": pil_bytes(img, "JPEG", quality=95),
        "jpeg-RGB.jpeg": pil_bytes(Image.merge("RGB", (img, img, img)), "JPEG", quality=95),
        "jpeg-CMYK.jpg": pil_bytes(cmyk, "JPEG", quality=95),
        "webp-lossy.webp": pil_bytes(img.convert("RGB"), "WEBP", quality=90),
    }
    for uid, (_, lossless, _, _) in TRANSFER_SYNTAXES.items():
        if not lossless:
            variants[f"dicom-{uid}.dcm"] = dicom_in(uid)
    return variants


#: Hostile file name -> regular expression that its refusal must match.
HOSTILE_REASONS = {
    "deflated-bomb.dcm": r"Deflated DICOM inflates to more than 144 MB",
    "multiframe-huge.dcm": r"DICOM pixel data too large \(4000 frame\(s\) of 1024x1024",
    "png-bomb.png": r"image too large \(10000x6000 = 60 MP; limit 50 MP\)",
    "png-pillow-bomb.png": r"image too large \(10000 MP; limit 50 MP\)",
    "png-ztxt-bomb.png": r"Decompressed data too large",
    "tiff-bomb.tif": r"image too large \(900 MP; limit 50 MP\)",
    "jpeg-bomb.jpg": r"image too large \(7000x8000 = 56 MP; limit 50 MP\)",
    "truncated.png": r"corrupt or undecodable PNG data",
    "truncated.jpg": r"corrupt or undecodable JPEG data .*truncated",
    "truncated.tif": r"corrupt (or undecodable )?TIFF",
    "truncated.dcm": r"cannot decode DICOM pixel data|unreadable DICOM",
    "truncated-deflated.dcm": r"truncated Deflated DICOM",
    "text-as.jpeg": r"not a recognised image \(a text file\)",
    "document.pdf": r"unsupported format \(PDF\)",
    "drawing.svg": r"unsupported format \(SVG\)",
    "figure.eps": r"unsupported format \(EPS/PostScript\)",
    "animation.gif": r"unsupported format \(GIF\)",
    "archive.zip": r"unsupported format \(ZIP\)",
    "empty.png": r"empty file \(0 bytes\)",
    "random.bin": r"not a recognised image \(unknown binary content\)",
    "report.dcm": r"DICOM file has no pixel data",
    "mpeg2.dcm": r"unsupported DICOM transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100",
}


def hostile_files() -> dict[str, bytes]:
    """File name -> bytes for every entry of :data:`HOSTILE_REASONS`."""
    gray = base_gray()
    png = pil_bytes(Image.fromarray(gray), "PNG")
    jpeg = pil_bytes(Image.fromarray(xray_like(400, 400, seed=3)), "JPEG", quality=90)
    tiff = pil_bytes(Image.fromarray(gray), "TIFF", compression="tiff_lzw")
    dicom = dicom_in("1.2.840.10008.1.2.1")
    deflated = dicom_in("1.2.840.10008.1.2.1.99")
    report = dicom_dataset(gray, bits_stored=8)
    del report.PixelData
    mpeg = dicom_dataset(gray, bits_stored=8)
    from pydicom.encaps import encapsulate

    mpeg.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    mpeg.PixelData = encapsulate([b"\0\0\1\xb3" + bytes(100)])
    mpeg["PixelData"].VR = "OB"
    gif = pil_bytes(Image.fromarray(gray), "GIF")
    zipped = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("scan.png", png)
    return {
        "deflated-bomb.dcm": deflated_dicom_bomb(),
        "multiframe-huge.dcm": multiframe_dicom(4000, 1024, 1024, stored_frames=1),
        "png-bomb.png": png_claiming(10_000, 6_000),
        "png-pillow-bomb.png": png_claiming(100_000, 100_000),
        "png-ztxt-bomb.png": png_with_ztxt_bomb(),
        "tiff-bomb.tif": tiff_claiming(30_000, 30_000),
        "jpeg-bomb.jpg": jpeg_claiming(7_000, 8_000),
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.tif": tiff[: len(tiff) // 2],
        "truncated.dcm": dicom[: len(dicom) - 2000],
        "truncated-deflated.dcm": deflated[: len(deflated) // 2],
        "text-as.jpeg": b"patient notes, not an image\n" * 20,
        "document.pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "drawing.svg": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" '
        b'height="10"><rect width="10" height="10"/></svg>\n',
        "figure.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "animation.gif": gif,
        "archive.zip": zipped.getvalue(),
        "empty.png": b"",
        "random.bin": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "report.dcm": dicom_to_bytes(report),
        "mpeg2.dcm": dicom_to_bytes(mpeg),
    }


def write_corpus(folder: Path) -> dict[str, dict[str, bytes]]:
    """Write every lossless, lossy and hostile file into ``folder``; returns them by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = {"lossless": lossless_variants(), "lossy": lossy_variants(), "hostile": hostile_files()}
    for files in corpus.values():
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return corpus
