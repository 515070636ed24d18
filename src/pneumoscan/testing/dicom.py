"""DICOM files for tests, with patient tags that must never leak into logs."""

from __future__ import annotations

import io

import numpy as np

#: Patient tags written into :func:`dicom_bytes` files by default: made up, and easy to search for.
PATIENT_TAGS: dict[str, str] = {
    "PatientName": "Quixote^Dulcinea",
    "PatientID": "PID-7731-XQ",
    "PatientBirthDate": "19380517",
}


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
    ds.Modality = "CR"
    for key, value in (PATIENT_TAGS if tags is None else tags).items():
        setattr(ds, key, value)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = np.asarray(pixels, dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
