"""Image files -> decoded pixels -> the model's input array. The one preprocessing path.

Every image that pneumoscan touches (training, evaluation, prediction, the app, export checks)
goes through :func:`decode_bytes` and :func:`preprocess`, so training and serving cannot drift.
Import from here; the submodules are how the package is organised, one concern each:

====================  =========================================================================
:mod:`.decode`        the entry points :func:`decode_bytes` and :func:`read_image`: sniff, hand
                      to a decoder, one :class:`ImageDecodeError` for any failure
:mod:`.sniff`         recognising a file by its content (:func:`sniff_format`, :func:`is_dicom`)
:mod:`.pillow`        JPEG, PNG, TIFF, BMP and WebP through Pillow, restricted to the sniffed format
:mod:`.dicom`         DICOM through pydicom, the Deflated kind inflated as a capped stream
:mod:`.limits`        every size limit, checked from the header, and the process-wide memory budget
:mod:`.pixels`        array operations the decoders and preprocessing share (stretch, colourfulness)
:mod:`.compression`   how heavily a lossy file was compressed (JPEG and WebP quality, from the file)
:mod:`.preprocess`    decoded pixels -> the model's input (:func:`preprocess`, :func:`load_image`)
:mod:`.files`         which files a command takes, and reading one within the size limit
:mod:`.decoded`       the result and the error: :class:`DecodedImage`, :class:`ImageDecodeError`
====================  =========================================================================

The imports run one way: decoded <- limits <- pixels <- (pillow, dicom) <- decode <- preprocess;
sniff, files and compression (which pillow reads) stand beside them. How many threads decode at
once is not an image question: see :func:`pneumoscan.runtime.decode_workers` (also re-exported here
for older callers).

Formats are recognised by their content (magic bytes, the DICOM preamble), never by the file name
(see :func:`sniff_format`). Accepted:

* JPEG (grey, RGB, CMYK), PNG (1/L/LA/P/RGB/RGBA, 8 or 16 bits), TIFF (first page; 1/L/P/RGB/RGBA/
  CMYK, 16-bit, 32-bit integer and float), BMP and WebP, opened by Pillow with exactly that
  format, no other Pillow plugin (no EPS, no PDF, ...).
* DICOM, with or without the 128-byte preamble, in the transfer syntaxes of
  :data:`DICOM_TRANSFER_SYNTAXES`; the first frame of a multi-frame file.

Anything else gets an :class:`ImageDecodeError` naming the file and the reason, e.g.
``"unsupported format (PDF)"``; so does every decoder failure, whatever its exception type.

Limits and memory (:mod:`.limits`, all checked from the header, before any pixel is decompressed):
at most :data:`~pneumoscan.config.MAX_IMAGE_PIXELS` pixels per image and
:data:`~pneumoscan.config.MIN_IMAGE_SIDE` px a side; files of at most :data:`MAX_FILE_BYTES`; DICOM
pixel data of at most :data:`MAX_DICOM_PIXEL_BYTES` once decompressed, all frames counted; a
Deflated DICOM data set inflates to at most that plus :data:`MAX_DICOM_HEADER_BYTES`, checked while
it streams; decodes in flight share :data:`DECODE_MEMORY_BUDGET` bytes. The constants here are
copies for reading: the decoders read them from :mod:`.limits`, which is where to change one.

Preprocessing policy (written down because models depend on it):

1. Convert to one grey channel. Colour is dropped (ITU-R 601 luma); transparent pixels are laid on
   black, the usual X-ray background. An image stored turned or mirrored with an EXIF
   ``Orientation`` saying so is turned the way viewers show it.
2. Bring to 0..255. 8-bit data is kept as is. Data with more bits (16-bit PNG/TIFF, float TIFF,
   DICOM) is mapped linearly from its own min..max, after DICOM's modality LUT (rescale
   slope/intercept) and VOI LUT or window, and MONOCHROME1 is inverted so that bone is always bright.
3. Resize to ``size x size`` with an antialiased bilinear filter, *without* keeping the aspect
   ratio: the training copy of the dataset was made that way, so serving does the same.
4. Stretch the resized film from its own min..max over 0..255, then blur it by a Gaussian of
   :data:`INPUT_BLUR` px (:func:`preprocess` says why).
5. The result is ``uint8`` of shape ``(size, size, 1)``. Models take this and scale it themselves.
"""

from __future__ import annotations

from pneumoscan.data.imaging.decode import decode_bytes, read_image
from pneumoscan.data.imaging.decoded import DecodedImage, ImageDecodeError
from pneumoscan.data.imaging.dicom import DICOM_TRANSFER_SYNTAXES
from pneumoscan.data.imaging.files import IMAGE_SUFFIXES, list_input_files, read_file_bytes
from pneumoscan.data.imaging.limits import (
    DECODE_MEMORY_BUDGET,
    MAX_DICOM_HEADER_BYTES,
    MAX_DICOM_PIXEL_BYTES,
    MAX_FILE_BYTES,
)
from pneumoscan.data.imaging.preprocess import INPUT_BLUR, load_image, preprocess, resize_gray
from pneumoscan.data.imaging.sniff import SUPPORTED_FORMATS, is_dicom, sniff_format
from pneumoscan.runtime import available_cpus, decode_workers

__all__ = [
    "DECODE_MEMORY_BUDGET",
    "DICOM_TRANSFER_SYNTAXES",
    "IMAGE_SUFFIXES",
    "INPUT_BLUR",
    "MAX_DICOM_HEADER_BYTES",
    "MAX_DICOM_PIXEL_BYTES",
    "MAX_FILE_BYTES",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageDecodeError",
    "available_cpus",
    "decode_bytes",
    "decode_workers",
    "is_dicom",
    "list_input_files",
    "load_image",
    "preprocess",
    "read_file_bytes",
    "read_image",
    "resize_gray",
    "sniff_format",
]
