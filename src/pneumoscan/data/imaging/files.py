"""Files on disk: which ones a command takes (:data:`IMAGE_SUFFIXES`, :func:`list_input_files`) and
reading one within :data:`~pneumoscan.data.imaging.limits.MAX_FILE_BYTES` (:func:`read_file_bytes`).

The suffixes only choose files for training and evaluation; what a file *is* comes from its
content (:mod:`.sniff`).
"""

from __future__ import annotations

from pathlib import Path

import pneumoscan.data.imaging.limits as limits
from pneumoscan.data.imaging.decoded import ImageDecodeError

#: What folder discovery for *training and evaluation* picks up. ``predict`` takes every file of a
#: folder instead (:func:`list_input_files`), so that nothing it was pointed at goes unreported.
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"})


def list_input_files(folder: str | Path) -> list[Path]:
    """Every regular file under ``folder`` (recursively, sorted), whatever its name or suffix,
    skipping hidden files and folders (``.DS_Store``, ``.git/``): what ``predict`` reports on."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_file_bytes(path: str | Path) -> bytes:
    """The whole file, refusing files over :data:`~pneumoscan.data.imaging.limits.MAX_FILE_BYTES`
    before reading them.

    Raises :class:`ImageDecodeError` naming ``path`` when it is too large or cannot be read.
    """
    path = Path(path)
    limit = limits.MAX_FILE_BYTES
    try:
        size = path.stat().st_size
        if size > limit:
            raise ImageDecodeError(
                path, f"file too large ({size / 2**20:.0f} MB; limit {limit / 2**20:.0f} MB)"
            )
        if not path.is_file():
            raise ImageDecodeError(path, "not a regular file")
        return path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc
