"""DICOM files for tests and benchmarks: one data-set builder, and patient tags that must never leak
into logs."""

from __future__ import annotations

import io

import numpy as np

#: Patient tags written into :func:`dicom_bytes` files by default: made up, and easy to search for.
PATIENT_TAGS: dict[str, str] = {
    "PatientName": "Quixote^Dulcinea",
    "PatientID": "PID-7731-XQ",
    "PatientBirthDate": "19380517",
}


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    modality: str = "DX",
    tags: dict | None = None,
):
    """An uncompressed (explicit VR little endian) pydicom Dataset holding ``pixels``.

    Parameters
    ----------
    pixels : ndarray or None
        ``(rows, cols)`` uint8 or uint16 (stored as is: 8 or 16 bits allocated), or
        ``(frames, rows, cols)`` for ``frames > 1``; ``None`` leaves out the pixel data (which the
        decoder refuses).
    bits_stored : int
        Bits in use of each stored value.
    photometric : str
        ``MONOCHROME2`` (bone bright) or ``MONOCHROME1``.
    frames : int
        Number of frames claimed (written only when above 1).
    modality : str
        The Modality element.
    tags : dict, optional
        Data elements to set, last (so they may override any above); default ``PatientID=TEST``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = pixels.tobytes()
    for key, value in ({"PatientID": "TEST"} if tags is None else tags).items():
        setattr(ds, key, value)
    return ds


def dicom_to_bytes(ds, *, preamble: bool = True) -> bytes:
    """``ds`` as a DICOM file in its transfer syntax; without ``preamble`` only the data set (no
    preamble, no ``DICM``, no file meta), explicit VR little endian."""
    buf = io.BytesIO()
    if preamble:
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds = ds.copy()
        del ds.file_meta
        ds.save_as(buf, implicit_vr=False, little_endian=True)
    return buf.getvalue()


def dicom_bytes(
    pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", tags: dict[str, str] | None = None
) -> bytes:
    """A minimal valid DICOM file (explicit VR little endian, 16-bit storage), in memory.

    Parameters
    ----------
    pixels : ndarray of shape (h, w), integers 0..4095, or None
        The image; ``None`` writes a file without pixel data (which the decoder refuses).
    photometric : str
        ``MONOCHROME2`` (bone bright) or ``MONOCHROME1``.
    tags : dict, optional
        Data elements to set (default :data:`PATIENT_TAGS`).

    Returns
    -------
    bytes
    """
    stored = None if pixels is None else np.asarray(pixels, dtype=np.uint16)
    tags = PATIENT_TAGS if tags is None else tags
    return dicom_to_bytes(dicom_dataset(stored, photometric=photometric, modality="CR", tags=tags))
