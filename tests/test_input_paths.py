"""The same X-ray gives the same answer whatever path brings it in (issue 16): real training films
re-encoded as PNG (8 and 16 bit), TIFF, WebP, DICOM (8 and 12 bit, MONOCHROME1, signed with a
rescale, RLE and JPEG 2000 compressed), a colour JPEG, a JPEG stored on its side with an EXIF
orientation, and larger and smaller resamplings, scored by the released model through the
byte-decoding path every surface uses."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscan.data.imaging import read_image
from pneumoscan.inference.predictor import Predictor
from pneumoscan.testing.variants import xray_variants

#: One normal and one pneumonia film of the training folder, and the largest spread of P(pneumonia)
#: over their paths that the issue allows.
FILMS = ("NORMAL/IM-0127-0001.jpeg", "PNEUMONIA/person1000_bacteria_2931.jpeg")
MAX_SPREAD = 0.05


@pytest.fixture(scope="module")
def bundled() -> Predictor:
    from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH

    return Predictor(DEFAULT_LITERT_MODEL_PATH)  # the released LiteRT export: what app, serve and predict use


def test_every_variant_decodes_to_the_same_film_up_to_resampling():
    from pneumoscan.data.imaging import decode_bytes, preprocess
    from pneumoscan.testing.synthetic import xray_like

    film = xray_like(224, 224, seed=4)
    base = preprocess(film, 224).astype(int)
    for name, data in xray_variants(film).items():
        x = preprocess(decode_bytes(data, name=name), 224).astype(int)
        diff = np.abs(x - base)
        if name.startswith("down"):
            assert diff.mean() < 8, name  # half the pixels: the synthetic film's pixel noise is gone
        elif name.startswith("up") or "jpeg" in name:
            assert diff.mean() < 6, name  # resampled or lossy: close, not equal
        else:
            assert diff.max() <= 1, name  # lossless paths: the same pixels after the stretch


@pytest.mark.parametrize("film", FILMS)
@pytest.mark.required
def test_one_real_film_gets_one_answer_on_every_path(shared_data, bundled, film):
    gray = read_image(shared_data / "train" / film).gray
    p = {"file": float(bundled.predict_paths([shared_data / "train" / film], progress=False).p_pneumonia[0])}
    for name, data in xray_variants(gray).items():
        prediction = bundled.predict_bytes(data, name=name)
        p[name] = prediction.p_pneumonia
    spread = max(p.values()) - min(p.values())
    assert spread <= MAX_SPREAD, f"{film}: P(pneumonia) by path {p}"
