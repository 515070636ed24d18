"""Image files -> decoded pixels -> the model's input array. The one preprocessing path.

Every image that pneumoscan touches (training, evaluation, prediction, the app, export checks)
goes through :func:`decode_bytes` and :func:`preprocess`, so training and serving cannot drift.

Accepted: JPEG and PNG of any size, 8 or 16 bits, modes 1/L/LA/I;16/I/F/P/RGB/RGBA/CMYK; DICOM
(``.dcm`` or the ``DICM`` magic) through pydicom. Anything else raises :class:`ImageDecodeError`,
which names the file and the problem.

Preprocessing policy (written down because models depend on it):

1. Convert to one grey channel. Colour is dropped (ITU-R 601 luma); transparent pixels are laid on
   black, the usual X-ray background.
2. Bring to 0..255. 8-bit data is kept as is. Data with more bits (16-bit PNG, DICOM) is mapped
   linearly from its own min..max, after DICOM's modality LUT (rescale slope/intercept) and VOI LUT
   or window, and MONOCHROME1 is inverted so that bone is always bright.
3. Resize to ``size x size`` with an antialiased bilinear filter, *without* keeping the aspect
   ratio: the training copy of the dataset was made that way, so serving does the same.
4. Round to ``uint8`` of shape ``(size, size, 1)``. Models take this and scale it themselves.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumoscan.config import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE

IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".dcm", ".dicom"})
#: Refuse files larger than this many bytes before reading them (a 16-bit 4k x 4k DICOM is ~32 MB).
MAX_FILE_BYTES = 200 * 1024 * 1024

# We enforce our own, stricter limit in _check_size; PIL's warning would only add noise.
Image.MAX_IMAGE_PIXELS = None


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
        ``"JPEG"``, ``"PNG"``, ``"DICOM"``, ...
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


def is_dicom(data: bytes, name: str = "") -> bool:
    """True when ``data`` carries the DICOM preamble magic or ``name`` ends in ``.dcm``/``.dicom``."""
    return data[128:132] == b"DICM" or Path(name).suffix.lower() in (".dcm", ".dicom")


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
        Shown in errors, and its suffix helps recognise DICOM.

    Returns
    -------
    DecodedImage

    Raises
    ------
    ImageDecodeError
        Empty, truncated, unrecognised, too small, too large (decompression bomb), or DICOM without
        pixel data.
    """
    if len(data) == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageDecodeError(name, f"file too large ({len(data) / 2**20:.0f} MB)")
    if is_dicom(data, name):
        return _decode_dicom(data, name)
    return _decode_pil(data, name)


def preprocess(image: DecodedImage | np.ndarray, size: int) -> np.ndarray:
    """Resize grey pixels to the model's input.

    Parameters
    ----------
    image : DecodedImage or ndarray of shape (height, width), uint8
    size : int
        Output side in pixels.

    Returns
    -------
    ndarray of shape (size, size, 1), dtype uint8
    """
    gray = image.gray if isinstance(image, DecodedImage) else np.asarray(image)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 array, got shape {gray.shape} dtype {gray.dtype}")
    if gray.shape != (size, size):
        gray = np.asarray(Image.fromarray(gray, "L").resize((size, size), Image.Resampling.BILINEAR))
    return gray[:, :, None]


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


def _decode_pil(data: bytes, name: str) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt, mode = img.format or "?", img.mode
            width, height = img.size
            _check_size(name, width, height)
            img = _load_pil(img, data)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(name, "not a recognised image (expected JPEG, PNG or DICOM)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(name, f"corrupt or truncated image data ({exc})") from exc
    if img.mode == "YCbCr":  # a colour JPEG, decoded without colour conversion by _load_pil
        planes = np.asarray(img)
        gray = np.ascontiguousarray(planes[..., 0])
        return DecodedImage(gray, width, height, mode, fmt, _colourfulness(planes, ycbcr=True))
    colourfulness = 0.0
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new(img.mode, img.size, (0, 0, 0, 255) if img.mode == "RGBA" else (0, 255))
        img = Image.alpha_composite(background, img) if img.mode == "RGBA" else _composite_la(img)
    if img.mode in ("RGB", "RGBA", "CMYK"):
        img = img.convert("RGB")
        colourfulness = _colourfulness(np.asarray(img))
        img = img.convert("L")
    if img.mode in ("1", "L"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
    else:  # I;16, I;16B, I, F: more than 8 bits
        gray = _stretch(np.asarray(img, dtype=np.float64))
    return DecodedImage(gray, width, height, mode, fmt, colourfulness)


def _load_pil(img: Image.Image, data: bytes) -> Image.Image:
    """Decode the pixels of an opened image, taking libjpeg's shortcuts for JPEGs.

    libjpeg can decode at 1/2 scale for free (JPEGs over 1024 px a side, still far above any
    model's input) and can hand out a colour JPEG's YCbCr planes without converting them to RGB:
    their Y plane is the ITU-R 601 luma that ``convert("L")`` would compute, bit for bit, and one
    decode then serves both the grey image and the colourfulness. An RGB-coded JPEG (Adobe, no
    colour transform) has no YCbCr planes; it is decoded again the ordinary way.
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
        img = Image.open(io.BytesIO(data))
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


def _colourfulness(pixels: np.ndarray, *, ycbcr: bool = False) -> float:
    """Hasler-Suesstrunk colourfulness of an ``(h, w, 3)`` RGB (or JPEG YCbCr) array.

    Measured on every k-th pixel, k chosen for about 64 samples a side: enough to tell a colour
    photograph from a grey radiograph, at a fraction of a full pass.
    """
    step = max(1, min(pixels.shape[:2]) // 64)
    sample = np.asarray(pixels[::step, ::step], dtype=np.float64).reshape(-1, 3)
    to_opponent = _OPPONENT
    if ycbcr:
        sample = sample - (0.0, 128.0, 128.0)
        to_opponent = _OPPONENT @ _YCBCR_TO_RGB
    rg_yb = to_opponent @ sample.T  # (2, n), contiguous rows: fast reductions
    mean, std = rg_yb.mean(axis=1), rg_yb.std(axis=1)
    return float(np.hypot(*std) + 0.3 * np.hypot(*mean))


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map an array linearly from its finite min..max onto uint8 0..255 (constant -> 0)."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _decode_dicom(data: bytes, name: str) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise ImageDecodeError(name, f"unreadable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ImageDecodeError(
            name, "DICOM file has no pixel data (is it a report or a structured document?)"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(name, cols, rows)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad or unsupported pixel data
        raise ImageDecodeError(name, f"cannot decode DICOM pixel data ({exc})") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]  # a radiograph has one frame; take the first of a multi-frame file
    colourfulness = 0.0
    if pixels.ndim == 3:  # RGB or YBR colour DICOM
        rgb = _stretch(pixels) if pixels.dtype != np.uint8 else pixels
        img = Image.fromarray(rgb[..., :3], "RGB")
        colourfulness = _colourfulness(rgb[..., :3])
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
    else:
        try:
            values = apply_modality_lut(pixels, ds)
            values = apply_voi_lut(values, ds, index=0)
        except Exception as exc:  # malformed LUT or window attributes
            raise ImageDecodeError(name, f"invalid DICOM modality/VOI LUT or window ({exc})") from exc
        gray = _stretch(np.asarray(values, dtype=np.float64))
        if photometric == "MONOCHROME1":
            gray = 255 - gray
    return DecodedImage(gray, cols, rows, f"DICOM/{photometric}", "DICOM", colourfulness)
