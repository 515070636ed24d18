"""The decode entry points: a file or its bytes -> :class:`DecodedImage`, or one :class:`ImageDecodeError`.

:func:`decode_bytes` refuses empty and over-large input, names the format from the content
(:func:`~pneumoscan.data.imaging.sniff.sniff_format`), refuses what does not decode by that name
(``"unsupported format (PDF)"``), hands the rest to its decoder (:mod:`.pillow` or :mod:`.dicom`)
and turns every decoder failure, whatever its exception type, into an :class:`ImageDecodeError`
for that file alone. :func:`read_image` is the same for a path.
"""

from __future__ import annotations

from pathlib import Path

import pneumoscan.data.imaging.limits as limits
from pneumoscan.data.imaging.decoded import DecodedImage, ImageDecodeError
from pneumoscan.data.imaging.dicom import decode_dicom
from pneumoscan.data.imaging.files import read_file_bytes
from pneumoscan.data.imaging.pillow import decode_pillow
from pneumoscan.data.imaging.sniff import SUPPORTED_FORMATS, sniff_format

_ACCEPTED = "accepted: JPEG, PNG, TIFF, BMP, WebP, DICOM"


def read_image(path: str | Path) -> DecodedImage:
    """Read and decode one file. Raises :class:`ImageDecodeError` naming ``path`` on any problem."""
    return decode_bytes(read_file_bytes(path), name=str(path))


def decode_bytes(data: bytes, *, name: str = "<bytes>") -> DecodedImage:
    """Decode an image held in memory (an upload, a file's bytes).

    Parameters
    ----------
    data : bytes
        The whole file.
    name : str
        Shown in errors. The format comes from the content, not from this name.

    Returns
    -------
    DecodedImage

    Raises
    ------
    ImageDecodeError
        Empty, truncated, of an unsupported format, too small, too large (decompression bomb),
        DICOM without pixel data, or any failure of a decoder (its exception type is named).
    """
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    if len(data) > limits.MAX_FILE_BYTES:
        raise ImageDecodeError(name, f"file too large ({len(data) / 2**20:.0f} MB)")
    fmt = sniff_format(data)
    if fmt not in SUPPORTED_FORMATS:
        if fmt == "unknown" and Path(name).suffix.lower() in (".dcm", ".dicom"):
            fmt = "DICOM"  # a DICOM data set that starts with neither preamble nor a known group
        elif fmt in ("unknown", "text"):
            kind = "unknown binary content" if fmt == "unknown" else "a text file"
            raise ImageDecodeError(name, f"not a recognised image ({kind}); {_ACCEPTED}")
        else:
            raise ImageDecodeError(name, f"unsupported format ({fmt}); {_ACCEPTED}")
    try:
        if fmt == "DICOM":
            return decode_dicom(data, name)
        return decode_pillow(data, name, fmt)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(name, f"out of memory while decoding this {fmt} file") from exc
    except Exception as exc:  # any decoder's failure on any odd file: one error for this file only
        raise ImageDecodeError(
            name, f"corrupt or undecodable {fmt} data ({type(exc).__name__}: {exc})"
        ) from exc
