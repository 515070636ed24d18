"""DICOM: :func:`decode_dicom`, the first frame of a file with or without its preamble, by pydicom.

Accepted: the transfer syntaxes of :data:`DICOM_TRANSFER_SYNTAXES`; MONOCHROME1/2 (MONOCHROME1
inverted so that bone is always bright) and colour (converted to ITU-R 601 luma); 1 to 64 bits
allocated. Grey values pass the modality LUT (rescale slope/intercept) and the VOI LUT or window,
then are stretched from their own min..max to 0..255.

Limits, all from the header before any pixel is decompressed
(:mod:`~pneumoscan.data.imaging.limits`): the image's size, and
:data:`~pneumoscan.data.imaging.limits.MAX_DICOM_PIXEL_BYTES` of pixel data with every frame
counted. A Deflated data set is inflated here as a stream (:func:`_inflate_capped`), never by
pydicom in one call, and refused once it passes that limit plus
:data:`~pneumoscan.data.imaging.limits.MAX_DICOM_HEADER_BYTES`.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

import pneumoscan.data.imaging.limits as limits
from pneumoscan.data.imaging.decoded import DecodedImage, ImageDecodeError
from pneumoscan.data.imaging.pixels import colourfulness, stretch

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
        limit = limits.MAX_DICOM_PIXEL_BYTES + limits.MAX_DICOM_HEADER_BYTES
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


def _open(data: bytes, name: str):
    """:func:`_dicom_header`, refusing a malformed header, a file without pixel data and an
    unsupported transfer syntax."""
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
    return ds, stream, transfer_syntax


def _layout(ds, name: str) -> tuple[int, int, int, int]:
    """``(rows, columns, samples per pixel, bits allocated)`` from the header, refusing a layout
    that does not decode and pixel data over the limits."""
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
    limits.check_size(name, cols, rows)
    pixel_bytes = rows * cols * samples * frames * bits // 8
    limit = limits.MAX_DICOM_PIXEL_BYTES
    if pixel_bytes > limit:
        raise ImageDecodeError(
            name,
            f"DICOM pixel data too large ({frames} frame(s) of {cols}x{rows}x{samples} at {bits} bits = "
            f"{pixel_bytes / 2**20:.0f} MB decompressed; limit {limit / 2**20:.0f} MB): "
            "refused as a possible decompression bomb",
        )
    return rows, cols, samples, bits


def _to_gray(pixels: np.ndarray, ds, name: str, photometric: str) -> tuple[np.ndarray, float]:
    """The first frame's pixels -> ``(gray uint8, colourfulness)``: colour to luma; grey through the
    modality and VOI LUTs, stretched, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if pixels.ndim == 3:  # RGB or YBR colour DICOM (pydicom converts YBR to RGB)
        rgb = pixels[..., :3] if pixels.dtype == np.uint8 else stretch(pixels[..., :3])
        colour = colourfulness(rgb)
        gray = np.asarray(Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("L"), dtype=np.uint8)
        return gray, colour

    def luts(block: np.ndarray) -> np.ndarray:
        return apply_voi_lut(apply_modality_lut(block, ds), ds, index=0)

    try:
        gray = stretch(pixels, luts)
    except Exception as exc:  # malformed LUT or window attributes
        raise ImageDecodeError(
            name, f"invalid DICOM modality/VOI LUT or window ({type(exc).__name__}: {exc})"
        ) from exc
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray, 0.0


def decode_dicom(data: bytes, name: str) -> DecodedImage:
    """Decode the first frame of a DICOM file (see the module's docstring for what is accepted)."""
    from pydicom.pixels import pixel_array

    ds, stream, transfer_syntax = _open(data, name)
    rows, cols, samples, bits = _layout(ds, name)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    with limits.reserve(limits.decode_estimate(rows * cols, max(1, bits // 8), samples)):
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
        gray, colour = _to_gray(pixels, ds, name, photometric)
    return DecodedImage(gray, cols, rows, f"DICOM/{photometric}", "DICOM", colour)
