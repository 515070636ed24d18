"""The decoder against every format, mode and DICOM transfer syntax it claims, and every hostile file
(:mod:`pneumoscan.testing.corpus`): each decodes to the reference pixels within a stated tolerance or
is refused with its own message; and the whole corpus through ``Predictor.predict_paths`` in one folder."""

from __future__ import annotations

import io
import re
import struct

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data.imaging import (
    ImageDecodeError,
    decode_bytes,
    limits,
    list_input_files,
    pillow,
    read_image,
    sniff_format,
)
from pneumoscan.testing.corpus import (
    HOSTILE_REASONS,
    TRANSFER_SYNTAXES,
    base_gray,
    dicom_in,
    hostile_files,
    lossless_variants,
    lossy_variants,
    multiframe_dicom,
    write_corpus,
)


@pytest.fixture(scope="module")
def lossless() -> dict[str, bytes]:
    return lossless_variants()


@pytest.fixture(scope="module")
def lossy() -> dict[str, bytes]:
    return lossy_variants()


@pytest.fixture(scope="module")
def hostile() -> dict[str, bytes]:
    return hostile_files()


# --------------------------------------------------------------------------- what decodes


@pytest.mark.parametrize("uid", sorted(TRANSFER_SYNTAXES))
def test_every_transfer_syntax_matches_the_uncompressed_pixels(uid):
    name, lossless, max_diff, mean_diff = TRANSFER_SYNTAXES[uid]
    data = dicom_in(uid)
    assert uid.encode() in data[:400]  # the file really carries that transfer syntax
    decoded = decode_bytes(data, name=f"{name}.dcm")
    reference = decode_bytes(dicom_in("1.2.840.10008.1.2.1"), name="uncompressed.dcm").gray
    np.testing.assert_array_equal(reference, base_gray())  # the uncompressed file holds the reference
    assert decoded.format == "DICOM" and decoded.gray.shape == reference.shape
    diff = np.abs(decoded.gray.astype(int) - reference)
    if lossless:
        assert diff.max() == 0, f"{name}: lossless but differs by up to {diff.max()}"
    else:
        assert diff.max() <= max_diff and diff.mean() <= mean_diff, (name, diff.max(), diff.mean())


def test_every_lossless_format_and_mode_gives_the_same_grey_levels(lossless):
    expected_formats = {"png": "PNG", "tiff": "TIFF", "bmp": "BMP", "webp": "WEBP", "dicom": "DICOM"}
    for name, data in lossless.items():
        decoded = decode_bytes(data, name=name)
        assert decoded.format == expected_formats[name.split("-")[0]], name
        np.testing.assert_array_equal(decoded.gray, base_gray(), err_msg=name)
    modes = {name: decode_bytes(data, name=name).mode for name, data in lossless.items()}
    assert modes["tiff-I16.tif"].startswith("I;16") and modes["tiff-F.tif"] == "F"
    assert modes["dicom-mono1.dcm"] == "DICOM/MONOCHROME1"


def test_lossy_formats_are_close_to_the_reference(lossy):
    for name, data in lossy.items():
        decoded = decode_bytes(data, name=name)
        assert np.abs(decoded.gray.astype(int) - base_gray()).mean() < 3, name
    assert decode_bytes(lossy["jpeg-CMYK.jpg"], name="c.jpg").mode == "CMYK"


def test_format_comes_from_the_content_not_the_name(lossless, lossy):
    png_as_jpeg = decode_bytes(lossless["png-L.png"], name="scan.jpeg")
    jpeg_as_dicom = decode_bytes(lossy["jpeg-L.jpg"], name="scan.dcm")
    assert (png_as_jpeg.format, jpeg_as_dicom.format) == ("PNG", "JPEG")
    assert decode_bytes(lossless["dicom-no-extension"], name="IMG0001").format == "DICOM"
    assert sniff_format(lossless["dicom-no-preamble.dcm"]) == "DICOM"


def test_pillow_is_asked_only_for_the_sniffed_format(lossless, monkeypatch):
    seen = []
    real_open = Image.open

    def spy(fp, mode="r", formats=None):
        seen.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(Image, "open", spy)
    for name in ("png-L.png", "tiff-L.tif", "bmp-L.bmp", "webp-lossless.webp"):
        decode_bytes(lossless[name], name=name)
    assert seen == [["PNG"], ["TIFF"], ["BMP"], ["WEBP"]]


def test_pillow_globals_are_untouched():
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's own default


def test_multi_frame_dicom_gives_its_first_frame_and_counts_frames_in_the_limit(monkeypatch):
    data = multiframe_dicom(3, 96, 80)
    decoded = decode_bytes(data, name="three.dcm")
    np.testing.assert_array_equal(decoded.gray, base_gray(96, 80))  # frame 0, not frames 1-2 (flat)
    one_frame = 96 * 80 * 2
    monkeypatch.setattr(limits, "MAX_DICOM_PIXEL_BYTES", 2 * one_frame)
    with pytest.raises(ImageDecodeError, match=r"DICOM pixel data too large \(3 frame\(s\) of 80x96"):
        decode_bytes(data, name="three.dcm")


def test_multi_frame_tiff_gives_its_first_page():
    pages = [Image.fromarray(base_gray()), Image.fromarray(np.full((160, 128), 9, np.uint8))]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    np.testing.assert_array_equal(decode_bytes(buf.getvalue(), name="pages.tif").gray, base_gray())


# --------------------------------------------------------------------------- what is refused


@pytest.mark.parametrize("name", sorted(HOSTILE_REASONS))
def test_hostile_file_is_refused_with_its_reason(tmp_path, hostile, name):
    path = tmp_path / name
    path.write_bytes(hostile[name])
    with pytest.raises(ImageDecodeError) as info:
        read_image(path)
    assert info.value.source == str(path)
    assert re.search(HOSTILE_REASONS[name], info.value.reason), info.value.reason


def test_deflated_bomb_is_small_on_disk(hostile):
    assert len(hostile["deflated-bomb.dcm"]) < 1_000_000  # inflates to 200 MB


@pytest.mark.parametrize("exc", [EOFError("cut short"), struct.error("unpack requires 4 bytes"), KeyError(7)])
def test_unexpected_pillow_exception_becomes_a_decode_error(lossless, monkeypatch, exc):
    def broken(img, data):
        raise exc

    monkeypatch.setattr(pillow, "_load_pil", broken)
    with pytest.raises(
        ImageDecodeError, match=rf"^odd\.png: corrupt or undecodable PNG data \({type(exc).__name__}"
    ):
        decode_bytes(lossless["png-L.png"], name="odd.png")


def test_unexpected_dicom_exception_becomes_a_decode_error(lossless, monkeypatch):
    import pydicom.pixels

    def broken(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 8 bytes")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", broken)
    with pytest.raises(ImageDecodeError, match=r"^odd\.dcm: cannot decode DICOM pixel data .*error: unpack"):
        decode_bytes(lossless["dicom-1.2.840.10008.1.2.1.dcm"], name="odd.dcm")


def test_memory_budget_lets_a_decode_larger_than_the_budget_run_alone(monkeypatch, lossless):
    monkeypatch.setattr(limits, "_BUDGET", limits._MemoryBudget(1))  # every decode exceeds it
    assert decode_bytes(lossless["png-I16.png"], name="x.png").format == "PNG"
    assert limits._BUDGET.used == 0


# --------------------------------------------------------------------------- a folder of everything


def test_list_input_files_takes_every_file_but_hidden_ones(tmp_path):
    for name in ("a.png", "NOEXT", "notes.txt", "sub/b.dcm", ".DS_Store", ".git/config"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in list_input_files(tmp_path)] == [
        "NOEXT",
        "a.png",
        "notes.txt",
        "sub/b.dcm",
    ]


@pytest.mark.slow
def test_corpus_through_predict_paths_gives_every_file_one_row(tmp_path):
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.interfaces.commands import _expand_inputs
    from pneumoscan.testing.models import make_tiny_model

    folder = tmp_path / "inbox"
    corpus = write_corpus(folder)
    files = _expand_inputs([folder])
    expected = {name for kind in corpus.values() for name in kind}
    assert sorted(p.name for p in files) == sorted(expected)  # nothing silently dropped
    predictor = Predictor(make_tiny_model(tmp_path, image_size=64))
    results = predictor.predict_paths(files, progress=False)
    assert len(results.errors) == len(files) == len(results.p_pneumonia)
    by_name = {
        p.name: (prob, err) for p, prob, err in zip(files, results.p_pneumonia, results.errors, strict=True)
    }
    for name, reason in HOSTILE_REASONS.items():
        prob, err = by_name[name]
        assert np.isnan(prob) and err and re.search(reason, err), (name, err)
    for name in [*corpus["lossless"], *corpus["lossy"]]:
        prob, err = by_name[name]
        assert err is None and 0.0 <= prob <= 1.0, (name, err)
    lossless_probs = np.array([by_name[name][0] for name in corpus["lossless"]])
    assert lossless_probs.max() - lossless_probs.min() <= 0.05, dict(
        zip(corpus["lossless"], lossless_probs, strict=True)
    )
