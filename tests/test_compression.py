"""pneumoscan.data.imaging.compression: a lossy file's quality read back from the file itself."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from pneumoscan.data.imaging import decode_bytes
from pneumoscan.data.imaging.compression import webp_quality
from pneumoscan.testing.synthetic import xray_like


def saved(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [20, 30, 50, 69, 70, 75, 90, 100])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_quality_is_read_back_from_the_file(quality, mode):
    film = Image.fromarray(xray_like(64, 64, seed=quality), "L").convert(mode)
    decoded = decode_bytes(saved(film, "JPEG", quality=quality), name="q.jpeg")
    assert abs(decoded.lossy_quality - quality) <= 1
    assert decode_bytes(saved(film, "PNG"), name="q.png").lossy_quality is None


@pytest.mark.parametrize("side", [64, 256])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_webp_quality_is_estimated_from_the_vp8_header(side, mode):
    """libwebp moves each segment's quantizer with the content, so the estimate is rough where the
    compression is heavy, and close where the scope guard's bound (84) lies."""
    estimates = []
    for quality in (10, 30, 50, 60, 70, 80, 85, 90, 95, 100):
        film = Image.fromarray(xray_like(side, side, seed=quality), "L").convert(mode)
        estimate = decode_bytes(saved(film, "WEBP", quality=quality), name="q.webp").lossy_quality
        assert abs(estimate - quality) <= (3 if quality >= 80 else 10), (quality, estimate)
        estimates.append(estimate)
    assert estimates == sorted(estimates) and estimates[-1] == 100


def test_lossless_and_animated_webp_carry_no_estimate():
    frames = [Image.fromarray(xray_like(64, 64, seed=s), "L").convert("RGB") for s in range(2)]
    assert decode_bytes(saved(frames[0], "WEBP", lossless=True), name="l.webp").lossy_quality is None
    animated = saved(frames[0], "WEBP", quality=50, save_all=True, append_images=frames[1:])
    assert b"ANMF" in animated and webp_quality(animated) is None
    translucent = frames[0].convert("RGBA")
    translucent.putalpha(Image.linear_gradient("L").resize(translucent.size))
    with_alpha = saved(translucent, "WEBP", quality=50)  # VP8X + ALPH + VP8
    assert b"VP8X" in with_alpha and abs(webp_quality(with_alpha) - 50) <= 10


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(0, 400), noise=st.binary(min_size=0, max_size=64))
def test_a_damaged_webp_header_gives_no_estimate_and_never_raises(cut, noise):
    """Truncated or garbled headers: ``None`` or a number on the scale, never an exception (the
    decoder, not this estimate, says what is wrong with the file)."""
    data = saved(Image.fromarray(xray_like(64, 64, seed=3), "L"), "WEBP", quality=60)
    for damaged in (
        data[:cut],
        data[:30] + noise + data[30 + len(noise) :],
        b"RIFF\xff\xff\xff\xffWEBP" + noise,
    ):
        estimate = webp_quality(damaged)
        assert estimate is None or 0 <= estimate <= 100


def test_a_riff_file_that_is_not_webp_gives_no_estimate():
    assert webp_quality(b"RIFF\x04\x00\x00\x00WAVE") is None
    assert webp_quality(b"") is None
    assert webp_quality(np.zeros(64, np.uint8).tobytes()) is None
