"""Image files -> decoded pixels -> the model's input array. The one preprocessing path.

Every image that pneumoscan touches (training, evaluation, prediction, the app, export checks)
goes through :func:`decode_bytes` and :func:`preprocess`, so training and serving cannot drift.
This module is longer than issue 10's ~600 lines on purpose: it owns every format's decoder with
the limits and memory budget they share, so the one decode path is read, and tested, in one place.

Formats are recognised by their content (magic bytes, the DICOM preamble), never by the file name
(see :func:`sniff_format`). Accepted:

* JPEG (grey, RGB, CMYK), PNG (1/L/LA/P/RGB/RGBA, 8 or 16 bits), TIFF (first page; 1/L/P/RGB/RGBA/
  CMYK, 16-bit, 32-bit integer and float), BMP and WebP, opened by Pillow with exactly that
  format, no other Pillow plugin (no EPS, no PDF, ...).
* DICOM, with or without the 128-byte preamble, in the transfer syntaxes of
  :data:`DICOM_TRANSFER_SYNTAXES`; the first frame of a multi-frame file.

Anything else gets an :class:`ImageDecodeError` naming the file and the reason, e.g.
``"unsupported format (PDF)"``; so does every decoder failure, whatever its exception type.

Limits (all checked from the header, before any pixel is decompressed): at most
:data:`~pneumoscan.config.MAX_IMAGE_PIXELS` pixels per image and :data:`MIN_IMAGE_SIDE` px a side;
files of at most :data:`MAX_FILE_BYTES`; DICOM pixel data of at most :data:`MAX_DICOM_PIXEL_BYTES`
once decompressed, all frames counted; a Deflated DICOM data set inflates to at most that plus
:data:`MAX_DICOM_HEADER_BYTES`, checked while it streams. PNG text chunks are capped by Pillow's own
``PngImagePlugin.MAX_TEXT_CHUNK``/``MAX_TEXT_MEMORY``. Pillow's global settings are left untouched.

Memory: decoding keeps the native pixels (1 to 8 bytes a sample), the uint8 result and chunks of at
most :data:`_CHUNK_PIXELS` float64 values, never a float64 copy of the whole image. A decode
reserves an estimate of its peak (:func:`_decode_estimate`, about 3 to 11 bytes a pixel) from a
process-wide budget of :data:`DECODE_MEMORY_BUDGET` bytes, so threads decoding many files at once
stay within it (a single image over the budget decodes alone). Measured with
``benchmarks/decode_memory.py``: a 49 MP image adds about 0.25 GB (16-bit grey PNG or DICOM) to
0.34 GB (RGB PNG) to the 0.94 GB peak of a ``pneumoscan predict`` process on one small JPEG.

Preprocessing policy (written down because models depend on it):

1. Convert to one grey channel. Colour is dropped (ITU-R 601 luma); transparent pixels are laid on
   black, the usual X-ray background.
2. Bring to 0..255. 8-bit data is kept as is. Data with more bits (16-bit PNG/TIFF, float TIFF,
   DICOM) is mapped linearly from its own min..max, after DICOM's modality LUT (rescale
   slope/intercept) and VOI LUT or window, and MONOCHROME1 is inverted so that bone is always bright.
3. Resize to ``size x size`` with an antialiased bilinear filter, *without* keeping the aspect
   ratio: the training copy of the dataset was made that way, so serving does the same.
4. Round to ``uint8`` of shape ``(size, size, 1)``. Models take this and scale it themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from pneumoscan.config import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE

#: What folder discovery for *training and evaluation* picks up. ``predict`` takes every file of a
#: folder instead (:func:`list_input_files`), so that nothing it was pointed at goes unreported.
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom"})
#: Refuse files larger than this many bytes before reading them (a 16-bit 4k x 4k DICOM is ~32 MB).
MAX_FILE_BYTES = 200 * 1024 * 1024
#: Largest DICOM pixel data, decompressed, all frames together (rows x columns x samples x frames x
#: bits allocated / 8): one 50 MP 16-bit frame fits, a 100-frame 3000 x 3000 series does not.
MAX_DICOM_PIXEL_BYTES = 128 * 1024 * 1024
#: What a Deflated DICOM may inflate to beyond its pixel data (header, overlays, private tags).
MAX_DICOM_HEADER_BYTES = 16 * 1024 * 1024
#: Bytes that decodes running at the same time may hold together (see :class:`_MemoryBudget`).
DECODE_MEMORY_BUDGET = 768 * 1024 * 1024
#: Radius (about the standard deviation, in pixels of the model's input) of the Gaussian blur that
#: :func:`preprocess` applies last: it evens out the fine texture that differs between the paths
#: one film can come in by (a JPEG of the small copy, a resampling of a large original).
INPUT_BLUR = 1.0
#: Float64 values converted at a time when mapping more-than-8-bit data to 0..255 (8 MB).
_CHUNK_PIXELS = 1 << 20

#: Formats that decode, by :func:`sniff_format`'s name; all but DICOM go to Pillow, restricted to it.
SUPPORTED_FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "DICOM")
_ACCEPTED = "accepted: JPEG, PNG, TIFF, BMP, WebP, DICOM"

#: DICOM transfer syntaxes that decode (tested against the uncompressed pixels in the test suite).
DICOM_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless (Process 14, SV1)",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
_DEFLATED = "1.2.840.10008.1.2.1.99"


def available_cpus() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def decode_workers() -> int:
    """Threads for decoding many files: PIL and pydicom release the GIL while they decode, and file
    reads wait on the disk, so two per core (at most 8) keep the cores busy."""
    return min(8, 2 * available_cpus())


class ImageDecodeError(ValueError):
    """A file that cannot be used as a chest X-ray. ``str(err)`` is ``"<file>: <reason>"``."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


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


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    """A decoded image before resizing.

    Attributes
    ----------
    gray : ndarray of shape (h, w), dtype uint8
        Grey levels 0..255 after step 1 and 2 of the module's policy. Usually ``(height, width)``;
        JPEGs over 1024 px a side are decoded at half scale (still far above any model's input).
    width, height : int
        Original size in pixels, as stored in the file.
    mode : str
        What the file held: a PIL mode (``"L"``, ``"RGB"``, ``"I;16"``, ...) or ``"DICOM/<photometric>"``.
    format : str
        ``"JPEG"``, ``"PNG"``, ``"TIFF"``, ``"BMP"``, ``"WEBP"`` or ``"DICOM"``.
    colourfulness : float
        Hasler-Suesstrunk colourfulness of the original (0 for grey images, above ~20 for ordinary
        colour photographs). X-rays are grey; the app uses this to refuse holiday photos.
    """

    gray: np.ndarray
    width: int
    height: int
    mode: str
    format: str
    colourfulness: float


# --------------------------------------------------------------------------- recognising files

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


def list_input_files(folder: str | Path) -> list[Path]:
    """Every regular file under ``folder`` (recursively, sorted), whatever its name or suffix,
    skipping hidden files and folders (``.DS_Store``, ``.git/``): what ``predict`` reports on."""
    folder = Path(folder)
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


# --------------------------------------------------------------------------- public entry points


def read_image(path: str | Path) -> DecodedImage:
    """Read and decode one file. Raises :class:`ImageDecodeError` naming ``path`` on any problem."""
    return decode_bytes(read_file_bytes(path), name=str(path))


def read_file_bytes(path: str | Path) -> bytes:
    """The whole file, refusing files over :data:`MAX_FILE_BYTES` before reading them.

    Raises :class:`ImageDecodeError` naming ``path`` when it is too large or cannot be read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageDecodeError(
                path, f"file too large ({size / 2**20:.0f} MB; limit {MAX_FILE_BYTES / 2**20:.0f} MB)"
            )
        if not path.is_file():
            raise ImageDecodeError(path, "not a regular file")
        return path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc.strerror or exc})") from exc


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
    if len(data) > MAX_FILE_BYTES:
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
            return _decode_dicom(data, name)
        return _decode_pil(data, name, fmt)
    except ImageDecodeError:
        raise
    except MemoryError as exc:
        raise ImageDecodeError(name, f"out of memory while decoding this {fmt} file") from exc
    except Exception as exc:  # any decoder's failure on any odd file: one error for this file only
        raise ImageDecodeError(
            name, f"corrupt or undecodable {fmt} data ({type(exc).__name__}: {exc})"
        ) from exc


def preprocess(image: DecodedImage | np.ndarray, size: int) -> np.ndarray:
    """Resize grey pixels to the model's input, then stretch them over the full 0..255 range.

    The stretch (the image's own min..max onto 0..255, as :func:`decode_bytes` already does for
    more-than-8-bit data) makes every path of one film give the same input: an 8-bit JPEG, a
    16-bit PNG, an 8- or 12-bit DICOM or MONOCHROME1 of the same pixels differ only by an affine
    map, which the stretch removes. It also removes a shortcut the shortcut audit found in the
    training folder: most pneumonia films there never reach white (median brightest pixel 225
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
    stretched = Image.fromarray(_stretch(resize_gray(image, size)), "L")
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
    """:func:`read_image` then :func:`preprocess`: ``uint8`` array of shape ``(size, size, 1)``."""
    return preprocess(read_image(path), size)


def _check_size(name: str, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            name,
            f"image too large ({width}x{height} = {width * height / 1e6:.0f} MP; limit "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP): refused as a possible decompression bomb",
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageDecodeError(
            name, f"image too small ({width}x{height} px; at least {MIN_IMAGE_SIDE} px a side needed)"
        )


def _decode_estimate(pixels: int, sample_bytes: int, samples: int = 1) -> int:
    """Peak bytes a decode holds: native pixels twice (decoder output and one converted copy), the
    uint8 result, and the float64 chunks."""
    return pixels * (2 * sample_bytes * samples + 1) + 4 * 8 * _CHUNK_PIXELS


# --------------------------------------------------------------------------- Pillow formats

#: Bytes a sample of each Pillow mode holds (default 1).
_MODE_SAMPLE_BYTES = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I;16S": 2}


def _decode_pil(data: bytes, name: str, fmt: str) -> DecodedImage:
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:  # Pillow's own limit (at open), far above ours
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else str(exc)
        raise ImageDecodeError(
            name,
            f"image too large ({size}; limit {MAX_IMAGE_PIXELS / 1e6:.0f} MP): refused as a possible "
            "decompression bomb",
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, f"corrupt {fmt} file: its header cannot be read") from exc
    mode = img.mode
    width, height = img.size
    _check_size(name, width, height)
    scale = 4 if fmt == "JPEG" and min(width, height) > 1024 else 1
    estimate = _decode_estimate(width * height // scale, _MODE_SAMPLE_BYTES.get(mode, 1), len(img.getbands()))
    with _BUDGET.reserve(estimate):
        img = _load_pil(img, data)
        gray, colourfulness = _pil_to_gray(img)
    return DecodedImage(gray, width, height, mode, fmt, colourfulness)


def _pil_to_gray(img: Image.Image) -> tuple[np.ndarray, float]:
    """A loaded image -> ``(gray (h, w) uint8, colourfulness)`` by the module's policy."""
    if img.mode == "YCbCr" and img.format == "JPEG":  # a colour JPEG decoded without conversion
        planes = np.asarray(img)
        return np.ascontiguousarray(planes[..., 0]), _colourfulness(planes, ycbcr=True)
    colourfulness = 0.0
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new(img.mode, img.size, (0, 0, 0, 255) if img.mode == "RGBA" else (0, 255))
        img = Image.alpha_composite(background, img) if img.mode == "RGBA" else _composite_la(img)
    if img.mode not in ("1", "L", "I", "F") and not img.mode.startswith("I;16"):
        if img.mode != "RGB":
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, RGBA laid on black
        colourfulness = _colourfulness(_sample_image(img), sampled=True)
        img = img.convert("L")
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8), colourfulness
    return _stretch(np.asarray(img)), colourfulness  # I;16, I;16B, I, F: more than 8 bits


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


#: (R, G, B) -> the opponent-colour channels rg = R - G and yb = (R + G) / 2 - B.
_OPPONENT = np.array([[1.0, -1.0, 0.0], [0.5, 0.5, -1.0]])
#: JPEG's (Y, Cb - 128, Cr - 128) -> (R, G, B) (JFIF, ITU-R 601 full range).
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def _sample_step(height: int, width: int) -> int:
    """Every k-th pixel of each k-th row, k chosen for about 64 samples along the shorter side."""
    return max(1, min(height, width) // 64)


def _sample_image(img: Image.Image) -> np.ndarray:
    """``np.asarray(img)[::k, ::k]`` (k of :func:`_sample_step`) of an RGB image, read in strips
    of about a megapixel, so no full-size array copy is made."""
    width, height = img.size
    step = _sample_step(height, width)
    strip = step * max(1, _CHUNK_PIXELS // max(1, width * step))  # a multiple of step: rows align
    return np.concatenate(
        [
            np.asarray(img.crop((0, top, width, min(height, top + strip))))[::step, ::step]
            for top in range(0, height, strip)
        ]
    )


def _colourfulness(pixels: np.ndarray, *, ycbcr: bool = False, sampled: bool = False) -> float:
    """Hasler-Suesstrunk colourfulness of an ``(h, w, 3)`` RGB (or JPEG YCbCr) array.

    Measured on every k-th pixel (:func:`_sample_step`): enough to tell a colour photograph from a
    grey radiograph, at a fraction of a full pass. An already sampled array (:func:`_sample_image`)
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


def _stretch(values: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Map an array linearly from its min..max onto uint8 0..255 (constant -> 0); NaN and +-inf
    count as 0.

    Works on blocks of rows of at most :data:`_CHUNK_PIXELS` values, converted to float64 one at a
    time (two passes: min/max, then mapping), so no float copy of the whole image is ever held.

    Parameters
    ----------
    values : ndarray of shape (h, w) or (h, w, samples), any real dtype
    transform : callable, optional
        Applied to each block first (element-wise, e.g. DICOM's modality and VOI LUTs).

    Returns
    -------
    ndarray of the shape of ``values``, dtype uint8
    """
    rows = values.shape[0]
    step = max(1, _CHUNK_PIXELS // max(1, values[:1].size))

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


# --------------------------------------------------------------------------- DICOM


def _inflate_capped(compressed: memoryview, name: str, limit: int) -> bytes:
    """Raw-deflate ``compressed`` (a Deflated DICOM's data set), stopping past ``limit`` bytes.

    Pieces are kept in a list and joined once: a refused bomb never holds more than ``limit``
    bytes, an accepted data set twice its size for the moment of the join.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pieces: list[bytes] = []
    total = 0
    step = 1 << 16
    for start in range(0, len(compressed), step):
        chunk = compressed[start : start + step]
        while chunk and total <= limit:
            pieces.append(inflater.decompress(chunk, limit + 1 - total))
            total += len(pieces[-1])
            chunk = inflater.unconsumed_tail
        if total > limit:
            pieces.clear()
            raise ImageDecodeError(
                name,
                f"Deflated DICOM inflates to more than {limit / 2**20:.0f} MB (from "
                f"{len(compressed) / 2**20:.1f} MB): refused as a possible decompression bomb",
            )
        if inflater.eof:
            break
    if not inflater.eof:
        raise ImageDecodeError(name, "truncated Deflated DICOM: the compressed data set ends early")
    return b"".join(pieces)


def _dicom_header(data: bytes, name: str):
    """``(header data set without pixel data, stream positioned at the pixel data element,
    transfer syntax UID)``; a Deflated data set is inflated, within its cap, into the stream."""
    import pydicom
    from pydicom.filereader import _at_pixel_data, _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    stream = io.BytesIO(data)
    read_preamble(stream, force=True)
    meta = _read_file_meta_info(stream)
    transfer_syntax = meta.get("TransferSyntaxUID")
    if transfer_syntax == _DEFLATED:
        # pydicom would inflate the whole data set in one call, however large: do it here, capped.
        limit = MAX_DICOM_PIXEL_BYTES + MAX_DICOM_HEADER_BYTES
        stream = io.BytesIO(_inflate_capped(memoryview(data)[stream.tell() :], name, limit))
        ds = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixel_data)
        ds.file_meta = meta
        return ds, stream, ExplicitVRLittleEndian
    stream.seek(0)
    ds = pydicom.dcmread(stream, force=True, stop_before_pixels=True)
    if not transfer_syntax:  # no file meta: the encoding pydicom found
        implicit, little = ds.original_encoding
        transfer_syntax = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds, stream, UID(str(transfer_syntax))


def _decode_dicom(data: bytes, name: str) -> DecodedImage:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

    try:
        ds, stream, transfer_syntax = _dicom_header(data, name)
    except ImageDecodeError:
        raise
    except Exception as exc:  # pydicom raises many types for a malformed header
        raise ImageDecodeError(name, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    if stream.read(2) not in (b"\xe0\x7f", b"\x7f\xe0"):  # the next element is not group 7FE0
        raise ImageDecodeError(
            name, "DICOM file has no pixel data (is it a report or a structured document?)"
        )
    if str(transfer_syntax) not in DICOM_TRANSFER_SYNTAXES:
        raise ImageDecodeError(
            name,
            f"unsupported DICOM transfer syntax {transfer_syntax} ({transfer_syntax.name}); supported: "
            + ", ".join(DICOM_TRANSFER_SYNTAXES.values()),
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if bits not in (1, 8, 16, 32, 64) or samples not in (1, 3) or frames < 1:
        raise ImageDecodeError(
            name,
            f"unsupported DICOM pixel layout (BitsAllocated {bits}, SamplesPerPixel {samples}, "
            f"NumberOfFrames {frames})",
        )
    _check_size(name, cols, rows)
    pixel_bytes = rows * cols * samples * frames * bits // 8
    if pixel_bytes > MAX_DICOM_PIXEL_BYTES:
        raise ImageDecodeError(
            name,
            f"DICOM pixel data too large ({frames} frame(s) of {cols}x{rows}x{samples} at {bits} bits = "
            f"{pixel_bytes / 2**20:.0f} MB decompressed; limit {MAX_DICOM_PIXEL_BYTES / 2**20:.0f} MB): "
            "refused as a possible decompression bomb",
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    with _BUDGET.reserve(_decode_estimate(rows * cols, max(1, bits // 8), samples)):
        stream.seek(0)
        try:  # the first frame only, whatever the number of frames
            pixels = pixel_array(stream, index=0, transfer_syntax_uid=transfer_syntax)
        except Exception as exc:  # pydicom raises many types for bad or unsupported pixel data
            raise ImageDecodeError(
                name, f"cannot decode DICOM pixel data ({transfer_syntax.name}; {type(exc).__name__}: {exc})"
            ) from exc
        del stream
        if pixels.shape[:2] != (rows, cols):
            raise ImageDecodeError(name, f"DICOM pixel data has shape {pixels.shape}, not {rows}x{cols}")
        colourfulness = 0.0
        if pixels.ndim == 3:  # RGB or YBR colour DICOM (pydicom converts YBR to RGB)
            rgb = pixels[..., :3] if pixels.dtype == np.uint8 else _stretch(pixels[..., :3])
            colourfulness = _colourfulness(rgb)
            gray = np.asarray(Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L"), dtype=np.uint8)
        else:

            def luts(block: np.ndarray) -> np.ndarray:
                return apply_voi_lut(apply_modality_lut(block, ds), ds, index=0)

            try:
                gray = _stretch(pixels, luts)
            except Exception as exc:  # malformed LUT or window attributes
                raise ImageDecodeError(
                    name, f"invalid DICOM modality/VOI LUT or window ({type(exc).__name__}: {exc})"
                ) from exc
            if photometric == "MONOCHROME1":
                gray = 255 - gray
    return DecodedImage(gray, cols, rows, f"DICOM/{photometric}", "DICOM", colourfulness)
