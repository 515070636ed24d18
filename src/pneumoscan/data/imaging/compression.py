"""How heavily a lossy file was compressed: :func:`jpeg_quality` and :func:`webp_quality`.

Every training image is a JPEG of one quality (75); a film re-compressed more heavily carries
artefacts the model never saw, and they move its answer (``benchmarks/input_paths.py --sweep``).
The scope guard (:func:`pneumoscan.inference.scope.check_image`) flags such files; this module
only reads the estimate from the file, on each codec's own scale, without decoding pixels:

* **JPEG**: how far the luminance quantization table is scaled from the IJG quality-50 table
  (libjpeg's scaling rule inverted; Pillow hands out the tables).
* **WebP (lossy)**: the quantizer indices in the VP8 frame header (RFC 6386, sections 9.3 and
  9.6, read with the boolean decoder of section 7), mapped back through libwebp's
  quality-to-quantizer curve. A rough estimate, as every WebP quality estimate is: libwebp moves
  each segment's quantizer with the image's content. On 60 training films re-encoded by Pillow's
  libwebp it came within 3 of the quality given at 80 and above and within 10 from 60 to 75
  (``python benchmarks/input_paths.py --sweep 30``, 2026-12-03).

Both return ``None`` for a file that carries no estimate (lossless WebP, PNG, ...) and never raise:
a damaged header is the decoder's business, not this module's.
"""

from __future__ import annotations

import struct

from PIL import Image

#: The IJG (libjpeg) luminance quantization table at quality 50, whose scaled copies make the
#: table of every other quality; only its sum is used, so its order does not matter.
_IJG_LUMINANCE_SUM = sum(
    (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56)
    + (14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92)
    + (49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
)

#: VP8 quantizer indices run 0 (finest) to 127 (coarsest).
_VP8_MAX_QUANTIZER = 127


def jpeg_quality(img: Image.Image) -> int | None:
    """A JPEG's quality on the IJG scale, from how much its luminance table is scaled from the
    quality-50 one (libjpeg's rule inverted: within 1 of the quality Pillow was given from 20 to
    100; below, libjpeg's 8-bit tables stop scaling at 255 and it reads a little high; an estimate
    for tables of other encoders); ``None`` without quantization tables."""
    tables = getattr(img, "quantization", None)
    if not tables:
        return None
    luminance = tables[min(tables)]
    scale = 100.0 * sum(luminance) / _IJG_LUMINANCE_SUM  # libjpeg: quality q < 50 -> 5000/q, else 200 - 2q
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return int(min(100, max(1, round(quality))))


def webp_quality(data: bytes) -> int | None:
    """A lossy WebP's quality on libwebp's 0..100 scale, estimated from its VP8 frame header;
    ``None`` for a lossless or animated WebP, anything that is not a WebP, or a header that cannot
    be read.

    The quantizer is the mean of the four segments' (or the frame's one when segmentation is off),
    mapped back through libwebp's curve (quality -> compression ``c``; ``c ** (1/3)`` scaled onto
    the quantizer range).
    """
    try:
        quantizer = _vp8_mean_quantizer(data)
    except (IndexError, struct.error):
        return None
    if quantizer is None:
        return None
    cube = (1.0 - quantizer / _VP8_MAX_QUANTIZER) ** 3  # libwebp: quantizer = 127 * (1 - linear ** (1/3))
    quality = 150.0 * cube if cube < 0.5 else 50.0 * (cube + 1.0)  # its piecewise-linear first step, inverted
    return int(min(100, max(0, round(quality))))


def _vp8_chunk(data: bytes) -> bytes | None:
    """The payload of the top-level ``VP8 `` chunk of a RIFF WebP (a simple or extended file; an
    animation keeps its frames inside ``ANMF`` chunks and has none)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    position = 12
    while position + 8 <= len(data):
        tag = data[position : position + 4]
        (size,) = struct.unpack("<I", data[position + 4 : position + 8])
        if tag == b"VP8 ":
            return data[position + 8 : position + 8 + size]
        position += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


class _BoolDecoder:
    """RFC 6386 section 7.3: the boolean entropy decoder every VP8 header field is read with."""

    def __init__(self, data: bytes):
        self._data, self._position = data, 2
        self._value = (data[0] << 8) | data[1]
        self._range, self._bit_count = 255, 0

    def bit(self, probability: int = 128) -> int:
        split = 1 + (((self._range - 1) * probability) >> 8)
        if self._value >= split << 8:
            bit, self._range, self._value = 1, self._range - split, self._value - (split << 8)
        else:
            bit, self._range = 0, split
        while self._range < 128:
            self._value, self._range = self._value << 1, self._range << 1
            self._bit_count += 1
            if self._bit_count == 8:
                self._bit_count = 0
                if self._position < len(self._data):  # past the end the stream reads as zeros
                    self._value |= self._data[self._position]
                    self._position += 1
        return bit

    def literal(self, bits: int) -> int:
        """``L(n)`` of the RFC: an unsigned n-bit number, most significant bit first."""
        value = 0
        for _ in range(bits):
            value = (value << 1) | self.bit()
        return value

    def optional_signed(self, bits: int) -> int | None:
        """A flag, then (if set) an n-bit magnitude and a sign bit; ``None`` when the flag is clear."""
        if not self.bit():
            return None
        magnitude = self.literal(bits)
        return -magnitude if self.bit() else magnitude


def _vp8_mean_quantizer(data: bytes) -> float | None:
    """The mean luma AC quantizer index of a key frame, read from the first partition's header
    (RFC 6386 section 19.2, fields up to ``y_ac_qi``)."""
    frame = _vp8_chunk(data)
    # Frame tag (3 bytes; bit 0 clear on a key frame), start code, width and height: 10 bytes.
    if frame is None or len(frame) < 12 or frame[0] & 1 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    header = _BoolDecoder(frame[10:])
    header.literal(2)  # colour space, clamping type
    segment_quantizers, absolute = None, False
    if header.bit():  # segmentation enabled
        update_map, update_data = header.bit(), header.bit()
        if update_data:
            absolute = bool(header.bit())
            segment_quantizers = [header.optional_signed(7) or 0 for _ in range(4)]
            for _ in range(4):
                header.optional_signed(6)  # loop filter level per segment
        if update_map:
            for _ in range(3):
                if header.bit():
                    header.literal(8)  # segment map probabilities
    header.literal(1 + 6 + 3)  # filter type, loop filter level, sharpness
    if header.bit() and header.bit():  # loop filter adjustments enabled, and updated here
        for _ in range(8):
            header.optional_signed(6)  # 4 reference-frame and 4 mode deltas
    header.literal(2)  # log2 of the number of DCT partitions
    base = header.literal(7)  # y_ac_qi
    if segment_quantizers is None:
        return float(base)
    levels = [q if absolute else base + q for q in segment_quantizers]
    return sum(min(_VP8_MAX_QUANTIZER, max(0, q)) for q in levels) / len(levels)
