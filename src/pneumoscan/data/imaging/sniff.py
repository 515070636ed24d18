"""Recognising a file by its content: :func:`sniff_format` (magic bytes, the DICOM preamble), never its name.

It names the formats that decode (:data:`SUPPORTED_FORMATS`) and, so that a refusal can say what
the file was, many that do not (PDF, SVG, GIF, ZIP, HEIF, text, ...). :func:`is_dicom` also
recognises a DICOM data set written without its 128-byte preamble.
"""

from __future__ import annotations

import struct

#: Formats that decode, by :func:`sniff_format`'s name; all but DICOM go to Pillow, restricted to it.
SUPPORTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "DICOM")

#: (magic at offset 0, name) for formats recognised only to be refused by name.
_UNSUPPORTED_MAGIC = (
    (b"%PDF", "PDF"),
    (b"%!PS", "EPS/PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS/PostScript"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"PK\x03\x04", "ZIP"),
    (b"PK\x05\x06", "ZIP"),
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"qoif", "QOI"),
    (b"\x7fELF", "executable"),
    (b"MZ", "executable"),
)
#: Explicit VRs, to recognise a DICOM data set that starts without preamble or ``DICM``.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
    b"US UT UV".split()
)


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM data set written without the 128-byte preamble: it starts with an element of group
    0x0002 (file meta) or 0x0008 (identification), in explicit or implicit VR little endian."""
    if len(data) < 12:
        return False
    group, element = struct.unpack_from("<HH", data)
    if group not in (0x0002, 0x0008) or element > 0x2000:
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    (length,) = struct.unpack_from("<I", data, 4)
    return length < min(len(data), 1024)  # implicit VR: a short first value


def is_dicom(data: bytes, name: str = "") -> bool:
    """True when ``data`` is a DICOM file: the ``DICM`` magic after the 128-byte preamble, or a data
    set that starts without it. ``name`` is ignored (kept for callers): content decides."""
    return data[128:132] == b"DICM" or _looks_like_bare_dicom(data)


def _text_kind(head: bytes) -> str | None:
    """``"SVG"``, ``"HTML"``, ``"XML"`` or ``"text"`` when ``head`` is text; else ``None``."""
    try:
        text = head.decode("utf-8") if not head.startswith(b"\xff\xfe") else head.decode("utf-16")
    except UnicodeDecodeError:
        # a cut multi-byte character at the end of head is still text
        try:
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) < 0.95 * len(text):
        return None
    lowered = text.lstrip("\ufeff \r\n\t").lower()
    if "<svg" in lowered:
        return "SVG"
    if lowered.startswith(("<!doctype html", "<html")):
        return "HTML"
    if lowered.startswith("<?xml"):
        return "XML"
    return "text"


def sniff_format(data: bytes) -> str:
    """The format of a file's content, from its first bytes only.

    Parameters
    ----------
    data : bytes
        The file, or at least its first 2 kB.

    Returns
    -------
    str
        One of :data:`SUPPORTED_FORMATS`; or the name of a recognised but unsupported format
        (``"PDF"``, ``"SVG"``, ``"EPS/PostScript"``, ``"GIF"``, ``"ZIP"``, ``"text"``, ...); or
        ``"unknown"``.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if is_dicom(data):
        return "DICOM"
    if (
        data.startswith(b"BM")
        and len(data) >= 26
        and struct.unpack_from("<I", data, 14)[0] in (12, 40, 52, 56, 64, 108, 124)
    ):
        return "BMP"  # "BM" and a known DIB header size
    for magic, kind in _UNSUPPORTED_MAGIC:
        if data.startswith(magic):
            return kind
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        return {b"avif": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF"}.get(
            brand, "MP4/QuickTime"
        )
    if data.startswith(b"RIFF"):
        return "RIFF (" + data[8:12].decode("latin-1").strip() + ")"
    if data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "NIfTI"
    return _text_kind(data[:2048]) or "unknown"
