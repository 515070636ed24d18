"""pneumoscan.data.imaging: every accepted format, mode and bit depth, and every way a file can be bad."""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter, ImageOps

from pneumoscan.data.imaging import (
    INPUT_BLUR,
    DecodedImage,
    ImageDecodeError,
    decode_bytes,
    is_dicom,
    limits,
    load_image,
    preprocess,
    read_image,
    resize_gray,
)
from pneumoscan.data.imaging.pixels import stretch
from pneumoscan.testing.dicom import dicom_dataset, dicom_to_bytes
from pneumoscan.testing.synthetic import write_image, xray_like

SIZE = 48


def _png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, **kwargs)
    return buf.getvalue()


def _assert_model_input(array: np.ndarray, size: int = SIZE) -> None:
    assert array.shape == (size, size, 1)
    assert array.dtype == np.uint8


def _error_pattern(path: str | Path, reason: str) -> str:
    """``pytest.raises(match=...)`` pattern: the message starts with the file, then the reason."""
    return "^" + re.escape(str(path)) + ": .*" + reason


# --------------------------------------------------------------------------- formats and modes


def _gray_in_mode(gray: np.ndarray, mode: str) -> Image.Image:
    """``gray`` (h, w) uint8 as a PIL image of ``mode`` that still shows the same grey levels."""
    base = Image.fromarray(gray, "L")
    if mode == "P":
        img = Image.fromarray(gray, "P")
        img.putpalette([v for i in range(256) for v in (i, i, i)])
        return img
    if mode == "1":
        return Image.fromarray(gray > 128)
    if mode == "LA":
        return Image.merge("LA", (base, Image.new("L", base.size, 255)))
    if mode == "RGBA":
        return Image.merge("RGBA", (base, base, base, Image.new("L", base.size, 255)))
    return base.convert(mode)


PNG_MODES = ["L", "RGB", "RGBA", "LA", "P", "1"]
JPEG_MODES = ["L", "RGB", "CMYK"]


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", m) for m in PNG_MODES] + [("JPEG", m) for m in JPEG_MODES])
def test_every_mode_decodes_to_the_model_input(tmp_path, fmt, mode):
    gray = xray_like(70, 90, seed=3)
    img = _gray_in_mode(gray, mode)
    path = tmp_path / f"x-{mode}.{'png' if fmt == 'PNG' else 'jpeg'}"
    img.save(path, fmt)
    decoded = read_image(path)
    assert isinstance(decoded, DecodedImage)
    assert decoded.format == fmt
    assert decoded.mode == mode
    assert (decoded.width, decoded.height) == (90, 70)
    assert decoded.gray.shape == (70, 90) and decoded.gray.dtype == np.uint8
    assert decoded.colourfulness == pytest.approx(0.0, abs=1.0)
    if fmt == "PNG" and mode != "1":
        np.testing.assert_array_equal(decoded.gray, gray)  # lossless: grey levels survive exactly
    elif mode == "1":
        assert set(np.unique(decoded.gray)) <= {0, 255}
        np.testing.assert_array_equal(decoded.gray == 255, gray > 128)
    else:
        assert np.abs(decoded.gray.astype(int) - gray).mean() < 6  # JPEG: close
    _assert_model_input(load_image(path, SIZE))


def test_transparent_pixels_are_laid_on_black():
    gray = np.full((40, 40), 200, np.uint8)
    alpha = np.full((40, 40), 255, np.uint8)
    alpha[:, :20] = 0  # left half fully transparent
    alpha[:, 20:30] = 128  # half transparent
    for img in (
        Image.merge("LA", (Image.fromarray(gray), Image.fromarray(alpha))),
        Image.merge("RGBA", (*[Image.fromarray(gray)] * 3, Image.fromarray(alpha))),
    ):
        decoded = decode_bytes(_png_bytes(img), name=f"alpha-{img.mode}.png")
        assert decoded.mode == img.mode
        assert (decoded.gray[:, :20] == 0).all()
        assert np.abs(decoded.gray[:, 20:30].astype(int) - 100).max() <= 1
        assert (decoded.gray[:, 30:] == 200).all()


def test_palette_with_colours_becomes_luma():
    img = Image.fromarray(np.array([[0, 1], [2, 3]], np.uint8).repeat(20, 0).repeat(20, 1), "P")
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255] + [0] * (256 * 3 - 12))
    decoded = decode_bytes(_png_bytes(img), name="palette.png")
    expected = np.asarray(img.convert("RGB").convert("L"))
    np.testing.assert_array_equal(decoded.gray, expected)
    assert decoded.colourfulness > 20


def test_16_bit_png_with_12_bit_range_is_stretched(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.integers(100, 4001, size=(64, 80)).astype(np.uint16)
    values[0, 0], values[0, 1] = 100, 4000  # known min and max
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    decoded = read_image(path)
    assert decoded.mode.startswith("I")
    assert decoded.gray.min() == 0 and decoded.gray.max() == 255  # full 0..255, not 4000 >> 8 = 15
    expected = np.round((values.astype(np.float64) - 100) * 255.0 / 3900).astype(np.uint8)
    np.testing.assert_array_equal(decoded.gray, expected)
    _assert_model_input(load_image(path, SIZE))


def test_constant_16_bit_image_maps_to_zero():
    decoded = decode_bytes(_png_bytes(Image.fromarray(np.full((40, 40), 777, np.uint16))), name="flat.png")
    assert (decoded.gray == 0).all()


@pytest.mark.parametrize(("width", "height"), [(32, 32), (50, 120), (300, 41), (224, 224), (1500, 900)])
def test_any_size_gives_the_model_input(width, height):
    data = _jpeg_bytes(Image.fromarray(xray_like(height, width, seed=width)))
    decoded = decode_bytes(data, name="any.jpeg")
    assert (decoded.width, decoded.height) == (width, height)
    _assert_model_input(preprocess(decoded, SIZE))
    _assert_model_input(preprocess(decoded, 224), 224)


def test_large_jpeg_decodes_at_reduced_scale_keeping_its_true_size(tmp_path):
    path = write_image(tmp_path / "big.jpeg", xray_like(2500, 3000, seed=1), quality=80)
    decoded = read_image(path)
    assert (decoded.width, decoded.height) == (3000, 2500)  # the file's size is reported
    h, w = decoded.gray.shape
    assert w / h == pytest.approx(3000 / 2500, rel=0.01) and w >= 1024  # draft mode: smaller but enough
    out = load_image(path, 224)
    _assert_model_input(out, 224)
    small = np.asarray(Image.open(path).convert("L").resize((224, 224), Image.Resampling.BILINEAR))
    resized = resize_gray(decoded, 224)  # the picture before the model's stretch
    assert np.abs(resized.astype(int) - small).mean() < 3  # same picture as a full decode
    np.testing.assert_array_equal(out[..., 0], preprocess(resized, 224)[..., 0])


def test_preprocess_keeps_an_image_of_the_right_size_and_rejects_bad_arrays():
    gray = xray_like(SIZE, SIZE)
    np.testing.assert_array_equal(resize_gray(gray, SIZE), gray)
    # The right size is kept as it is, then stretched over 0..255: the same as stretching by hand.
    lo, hi = int(gray.min()), int(gray.max())
    stretched = np.round((gray.astype(np.float64) - lo) * 255.0 / (hi - lo)).astype(np.uint8)
    expected = Image.fromarray(stretched).filter(ImageFilter.GaussianBlur(INPUT_BLUR))
    np.testing.assert_array_equal(preprocess(gray, SIZE)[..., 0], np.asarray(expected))
    with pytest.raises(ValueError, match="2-D uint8"):
        preprocess(gray[..., None], SIZE)
    with pytest.raises(ValueError, match="2-D uint8"):
        preprocess(gray.astype(np.float32), SIZE)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
)
def test_stretch_of_8_bit_pixels_is_the_float_mapping_byte_for_byte(h, w, a, b, seed):
    # stretch() maps 8-bit pixels through a 256-entry table; the same values as uint16 take the
    # float path every other input takes. Both must give the same bytes, for any range.
    lo, hi = min(a, b), max(a, b)
    pixels = np.random.default_rng(seed).integers(lo, hi + 1, (h, w), dtype=np.uint8)
    table = stretch(pixels)
    assert table.dtype == np.uint8
    np.testing.assert_array_equal(table, stretch(pixels.astype(np.uint16)))
    if hi > lo and pixels.min() < pixels.max():
        assert table.min() == 0 and table.max() == 255


def test_resize_does_not_keep_aspect_ratio():
    gray = np.zeros((50, 200), np.uint8)
    gray[:, 100:] = 255  # right half white
    out = resize_gray(gray, 40)
    assert (out[:, :18] == 0).all() and (out[:, 22:] == 255).all()  # stretched, not letterboxed


def test_preprocess_gives_one_input_for_an_affine_copy_of_the_pixels():
    """A 16-bit or 12-bit copy (decoded with a min..max stretch) and a dimmer 8-bit copy of one film
    reach the model as the same pixels."""
    gray = xray_like(120, 100, seed=3)
    dim = (gray.astype(np.float64) * 0.8 + 10).round().astype(np.uint8)
    base = preprocess(gray, 64)
    diff = np.abs(preprocess(dim, 64).astype(int) - base)
    assert diff.max() <= 3 and diff.mean() < 0.7  # the dim copy's own rounding, amplified by 1/0.8
    assert (preprocess(np.full((50, 50), 90, np.uint8), 32) == 0).all()  # a blank image stays blank


def test_decode_bytes_and_read_image_agree(tmp_path):
    path = write_image(tmp_path / "same.png", xray_like(60, 70, seed=5))
    from_file, from_bytes = read_image(path), decode_bytes(path.read_bytes(), name=str(path))
    np.testing.assert_array_equal(from_file.gray, from_bytes.gray)
    assert (from_file.width, from_file.height, from_file.mode, from_file.format) == (
        from_bytes.width,
        from_bytes.height,
        from_bytes.mode,
        from_bytes.format,
    )
    assert from_file.colourfulness == from_bytes.colourfulness


def test_colourfulness_separates_photos_from_x_rays():
    gray = xray_like(96, 96, seed=2)
    rgb_gray = np.repeat(gray[..., None], 3, axis=2)
    assert decode_bytes(_png_bytes(Image.fromarray(rgb_gray)), name="g.png").colourfulness < 1.0
    yy, xx = np.mgrid[0:96, 0:96]
    photo = np.stack([xx * 255 // 95, yy * 255 // 95, 255 - xx * 255 // 95], axis=2).astype(np.uint8)
    photo[30:60, 30:60] = (250, 200, 0)  # a yellow "sun"
    decoded = decode_bytes(_jpeg_bytes(Image.fromarray(photo)), name="holiday.jpeg")
    assert decoded.colourfulness > 40
    assert decoded.gray.shape == (96, 96)


def _photo(height: int = 90, width: int = 120) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    rgb = np.stack([220 * xx, 120 + 60 * np.sin(6 * yy), 255 - 220 * yy], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_colour_jpeg_luma_is_pils_grey_conversion():
    # Colour JPEGs are decoded to their Y plane without a colour conversion; it must be exactly
    # what an ordinary decode followed by convert("L") gives, or serving would drift from training.
    for pixels in (_photo(), np.repeat(xray_like(80, 64, seed=3)[..., None], 3, axis=2)):
        data = _jpeg_bytes(Image.fromarray(pixels))
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
        decoded = decode_bytes(data, name="colour.jpeg")
        np.testing.assert_array_equal(decoded.gray, expected)
        assert decoded.mode == "RGB" and decoded.format == "JPEG"


def test_rgb_coded_jpeg_without_ycbcr_planes_is_decoded():
    # An Adobe JPEG stored as RGB (no colour transform) has no YCbCr planes to hand out.
    data = _jpeg_bytes(Image.fromarray(_photo()), keep_rgb=True)
    decoded = decode_bytes(data, name="adobe-rgb.jpeg")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    np.testing.assert_array_equal(decoded.gray, expected)
    assert decoded.colourfulness > 40


def test_colourfulness_does_not_depend_on_the_encoding():
    photo = Image.fromarray(_photo())
    scores = [
        decode_bytes(_jpeg_bytes(photo), name="a.jpeg").colourfulness,
        decode_bytes(_jpeg_bytes(photo, keep_rgb=True), name="b.jpeg").colourfulness,
        decode_bytes(_png_bytes(photo), name="c.png").colourfulness,
    ]
    assert min(scores) > 40
    assert max(scores) - min(scores) < 0.05 * max(scores)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_turns_the_film_the_way_viewers_show_it(fmt, orientation):
    # A film stored turned or mirrored, with an EXIF Orientation saying so, must reach the model the
    # way every viewer shows it: PIL's own exif_transpose is the reference. Lossless formats only
    # for TIFF and WebP; the JPEG is compared with a decode of the same bytes.
    film = Image.fromarray(xray_like(60, 90, seed=orientation), "L")  # not square: the sides swap
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {"quality": 95} if fmt == "JPEG" else {}
    film.save(buf, format=fmt, exif=exif.tobytes(), **options)
    data = buf.getvalue()
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L"))
    decoded = decode_bytes(data, name=f"turned.{fmt.lower()}")
    np.testing.assert_array_equal(decoded.gray, shown)
    assert (decoded.height, decoded.width) == shown.shape
    assert shown.shape == ((90, 60) if orientation >= 5 else (60, 90))


def test_malformed_exif_keeps_the_pixels_as_stored():
    film = Image.fromarray(xray_like(64, 64, seed=1), "L")
    buf = io.BytesIO()
    film.save(buf, format="JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\xff\xff")
    as_stored = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    np.testing.assert_array_equal(decode_bytes(buf.getvalue(), name="bad-exif.jpeg").gray, as_stored)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(32, 260),
    height=st.integers(32, 260),
    mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "1", "I;16"]),
    size=st.sampled_from([32, 64, 224]),
)
def test_property_any_png_gives_uint8_size_size_1(width, height, mode, size):
    gray = xray_like(height, width, seed=width * height)
    img = Image.fromarray(gray.astype(np.uint16) * 16) if mode == "I;16" else _gray_in_mode(gray, mode)
    decoded = decode_bytes(_png_bytes(img), name="p.png")
    out = preprocess(decoded, size)
    assert out.shape == (size, size, 1) and out.dtype == np.uint8


# --------------------------------------------------------------------------- DICOM


def _write_dicom(
    path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", **elements
) -> Path:
    """A minimal but valid DICOM file (explicit VR little endian, 12 of 16 bits) written with pydicom."""
    stored = None if pixels is None else pixels.astype(np.uint16)
    tags = {"PatientID": "TEST", **elements}
    ds = dicom_dataset(stored, photometric=photometric, modality="CR", tags=tags)
    path.write_bytes(dicom_to_bytes(ds))
    return path


def _ramp(height: int = 64, width: int = 128) -> np.ndarray:
    """12-bit values rising from 0 (left) to 4095 (right)."""
    return np.tile(np.round(np.linspace(0, 4095, width)), (height, 1)).astype(np.uint16)


def test_dicom_monochrome2_applies_rescale_and_window(tmp_path):
    # Stored 0..4095, rescaled to -1024..3071 "HU"; window 40 +/- 200 keeps -160..240.
    path = _write_dicom(
        tmp_path / "chest.dcm",
        _ramp(),
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    decoded = read_image(path)
    assert decoded.format == "DICOM" and decoded.mode == "DICOM/MONOCHROME2"
    assert (decoded.width, decoded.height) == (128, 64)
    hu = np.linspace(0, 4095, 128).round() - 1024
    row = decoded.gray[0].astype(int)
    assert (row[hu < -170] == 0).all()  # below the window: black
    assert (row[hu > 250] == 255).all()  # above the window: white
    inside = (hu > -150) & (hu < 230)
    assert inside.sum() > 5 and (np.diff(row[inside]) >= 0).all() and 0 < row[inside].mean() < 255
    middle = np.argmin(np.abs(hu - 40))
    assert abs(row[middle] - 128) < 12  # the window centre lands mid-grey
    _assert_model_input(load_image(path, SIZE))


def test_dicom_without_window_is_stretched_from_min_to_max(tmp_path):
    path = _write_dicom(tmp_path / "plain.dcm", _ramp(), RescaleSlope=2, RescaleIntercept=-100)
    row = read_image(path).gray[0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = _ramp()
    mono2 = read_image(_write_dicom(tmp_path / "m2.dcm", pixels)).gray
    mono1 = read_image(_write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1")).gray
    # MONOCHROME1: high stored values are dark; after decoding bone must still be bright.
    assert mono1[0, 0] == 255 and mono1[0, -1] == 0
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_is_recognised_by_its_magic_without_suffix(tmp_path):
    data = _write_dicom(tmp_path / "x.dcm", _ramp()).read_bytes()
    assert is_dicom(data) and data[128:132] == b"DICM"
    assert decode_bytes(data, name="upload").format == "DICOM"
    # content decides, not the name: an empty ".DCM" is not DICOM, a PNG named ".dcm" is a PNG
    assert not is_dicom(b"", "scan.DCM") and not is_dicom(b"\x89PNG" + b"\0" * 200, "x.dcm")


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = _write_dicom(tmp_path / "report.dcm", None)
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "no pixel data")):
        read_image(path)


def test_garbage_dcm_is_refused(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"this is not a DICOM file at all" * 10)
    with pytest.raises(ImageDecodeError, match="^" + re.escape(str(path)) + ": .*DICOM"):
        read_image(path)


# --------------------------------------------------------------------------- bad files


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "empty file")) as info:
        read_image(path)
    assert info.value.source == str(path) and "empty" in info.value.reason


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.jpeg"
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "cannot read file")):
        read_image(path)


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(Image.fromarray(xray_like(200, 200, seed=9)))
    path = tmp_path / "cut.jpeg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "truncated")):
        read_image(path)


def test_text_file_named_jpeg(tmp_path):
    path = tmp_path / "notes.jpeg"
    path.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "not a recognised image")):
        read_image(path)


def test_one_pixel_image(tmp_path):
    path = write_image(tmp_path / "dot.png", np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, r"too small \(1x1")):
        read_image(path)


def test_image_just_below_minimum_side_is_refused():
    data = _png_bytes(Image.new("L", (limits.MIN_IMAGE_SIDE - 1, 500)))
    with pytest.raises(ImageDecodeError, match="too small"):
        decode_bytes(data, name="thin.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (8-bit grey) with one tiny, short IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20_000, 20_000))  # 400 MP claimed in a ~100-byte file
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "too large.*decompression bomb")):
        read_image(path)


def test_pixel_limit_is_the_module_constant(tmp_path, monkeypatch):
    path = write_image(tmp_path / "ordinary.png", xray_like(100, 100))
    assert read_image(path).width == 100
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 5_000)  # the decoders read the limit from limits
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "too large")):
        read_image(path)


def test_file_size_limit(tmp_path, monkeypatch):
    path = write_image(tmp_path / "heavy.png", xray_like(100, 100))
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 100)
    with pytest.raises(ImageDecodeError, match=_error_pattern(path, "file too large")):
        read_image(path)
    with pytest.raises(ImageDecodeError, match="file too large"):
        decode_bytes(path.read_bytes(), name="heavy.png")


def test_error_str_is_file_colon_reason():
    err = ImageDecodeError(Path("a/b.jpeg"), "broken")
    assert str(err) == f"{Path('a/b.jpeg')}: broken" and isinstance(err, ValueError)
