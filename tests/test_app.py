"""Tests of the Streamlit app (``pneumoscan.interfaces.app``) with Streamlit AppTest and a real tiny model.

The page runs as a script, exactly as ``streamlit run`` runs it; uploads go through the real
``st.file_uploader`` (AppTest can set its files), the model is a real Keras model from
:mod:`pneumoscan.testing.models`.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from pneumoscan.config import DISCLAIMER
from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.testing.models import export_tiny_litert, make_tiny_model
from pneumoscan.testing.synthetic import xray_image

APP = Path(__file__).resolve().parents[1] / "src" / "pneumoscan" / "interfaces" / "app.py"
TIMEOUT = 120  # the first run in a process loads TensorFlow and the model


# --------------------------------------------------------------------------- test images


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def huge_png_header(width: int = 10_000, height: int = 10_000) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (no real pixel data): a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def colour_photo() -> bytes:
    """A colourful RGB picture (a sunset-like gradient with a green field), as a JPEG."""
    size = 256
    y = np.linspace(0, 1, size)[:, None]
    rgb = np.zeros((size, size, 3), dtype=np.float32)
    rgb[..., 0] = 255 * (1 - 0.3 * y)
    rgb[..., 1] = 120 + 80 * y
    rgb[..., 2] = 255 * y
    rgb[size // 2 :, :, :] = (40, 160, 50)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("app-model"))


@pytest.fixture
def app(tiny_model, monkeypatch) -> AppTest:
    """The app on the tiny model, after its first run (no upload yet)."""
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(tiny_model))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, *files: tuple[str, bytes]) -> AppTest:
    mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}
    at.file_uploader(key="uploads").set_value(
        [(name, data, mime.get(name.rsplit(".", 1)[-1], "application/octet-stream")) for name, data in files]
    )
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def headlines(at: AppTest) -> list[str]:
    """The decision headline of each result (markdown level-4 headings)."""
    return [m for m in texts(at.markdown) if m.startswith("####")]


# --------------------------------------------------------------------------- the page


def test_page_shows_title_disclaimer_uploader_and_model_card(app, tiny_model):
    assert app.title[0].value == "Pneumonia screening in chest X-rays"
    assert DISCLAIMER in texts(app.warning)
    uploader = app.file_uploader(key="uploads")
    assert uploader.accept_multiple_files
    assert set(uploader.allowed_type) >= {".jpg", ".jpeg", ".png", ".dcm", ".dicom"}
    assert not app.error
    card = "\n".join(texts(app.sidebar.markdown))
    assert "Regularised CNN" in card
    assert "0.500" in card  # the threshold
    assert tiny_model.name in card
    assert "Sensitivity (recall)" in card and "ROC AUC" in card
    # Under the figures: which images they were measured on and what they chose, from the sidecar.
    captions = "\n".join(texts(app.sidebar.caption))
    held_out = ModelMetadata.read(tiny_model).held_out
    assert f"Measured on: {held_out.measured_on}." in captions
    assert "chose the epochs, calibration, threshold, so the figures are optimistic" in captions
    assert app.sidebar.toggle(key="show_gradcam").value is False


def test_one_upload_gives_probabilities_prediction_threshold_and_disclaimer(app):
    upload(app, ("chest.png", png_bytes(xray_image())))
    assert not app.error
    bars = app.progress
    assert len(bars) == 2
    assert bars[0].text.startswith("P(normal)") and bars[1].text.startswith("P(pneumonia)")
    assert all("%" in b.text for b in bars)
    assert abs(bars[0].value + bars[1].value - 100) <= 1
    (headline,) = headlines(app)
    assert "confidence" in headline and "%" in headline
    captions = texts(app.caption)
    assert any("Operating threshold 0.50" in c and "uncertain when" in c for c in captions)
    assert any(DISCLAIMER in c for c in captions)  # next to the prediction, not only at the top
    assert len(app.image) == 1
    assert not app.dataframe  # one file: no table


def test_bad_files_are_named_and_the_good_one_is_still_served(app):
    upload(
        app,
        ("good.png", png_bytes(xray_image())),
        ("notes.png", b"this is not an image at all"),
        ("truncated.png", png_bytes(xray_image())[:300]),
        ("pixel.png", png_bytes(Image.new("L", (1, 1), 128))),
        ("bomb.png", huge_png_header()),
        ("empty.jpg", b""),
    )
    errors = texts(app.error)
    assert len(errors) == 5
    by_file = {e.split("**")[1]: e for e in errors}
    assert "not a recognised image" in by_file["notes.png"]
    assert "corrupt or undecodable PNG data" in by_file["truncated.png"]  # the README's wording
    assert "too small" in by_file["pixel.png"]
    assert "too large" in by_file["bomb.png"]
    assert "empty" in by_file["empty.jpg"]
    assert len(app.progress) == 2 and len(headlines(app)) == 1  # good.png still predicted
    table = app.dataframe[0].value
    assert list(table["file"]) == [
        "good.png",
        "notes.png",
        "truncated.png",
        "pixel.png",
        "bomb.png",
        "empty.jpg",
    ]
    assert table["error"].iloc[0] == "" and all(table["error"].iloc[1:] != "")
    assert table["P(pneumonia)"].iloc[0].endswith("%") and (table["P(pneumonia)"].iloc[1:] == "").all()


def test_several_files_give_a_table_and_a_csv_download(app):
    upload(app, *[(f"xray-{i}.png", png_bytes(xray_image(seed=i))) for i in range(3)])
    assert len(app.progress) == 6 and len(headlines(app)) == 3
    table = app.dataframe[0].value
    assert list(table.columns) == [
        "file",
        "P(normal)",
        "P(pneumonia)",
        "prediction",
        "confidence",
        "decision",
        "uncertainty",
        "in_scope",
        "scope_reason",
        "distance to training images",
        "error",
    ]
    assert list(table["file"]) == ["xray-0.png", "xray-1.png", "xray-2.png"]
    p_normal, p_pneumonia = (table[c].str.rstrip("%").astype(float) for c in ("P(normal)", "P(pneumonia)"))
    assert np.allclose(p_normal + p_pneumonia, 100.0, atol=0.11)
    assert set(table["prediction"]) <= {"NORMAL", "PNEUMONIA"}
    assert (table["error"] == "").all()
    assert app.download_button[0].label == "Download results (CSV)"


def test_colour_photograph_is_refused(app):
    upload(app, ("holiday.jpg", colour_photo()))
    (error,) = texts(app.error)
    assert "holiday.jpg" in error and "colour image: not a radiograph" in error
    assert not app.progress and not headlines(app)


def test_missing_model_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(tmp_path / "missing.keras"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    (error,) = texts(at.error)
    assert "could not be loaded" in error and "missing.keras" in error
    assert "pneumoscan train" in error and "--model" in error
    assert not at.file_uploader  # st.stop() after the message
    assert DISCLAIMER in texts(at.warning)  # the page itself still renders


def test_model_card_file_beside_the_model_is_shown(tiny_model, tmp_path, monkeypatch):
    for path in tiny_model.parent.glob(tiny_model.stem + ".*"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "MODEL_CARD.md").write_text("# Model card\n\nTrained on the teaching dataset.\n")
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(tmp_path / tiny_model.name))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    (expander,) = at.sidebar.expander
    assert expander.label == "Full model card"
    assert "Trained on the teaching dataset." in texts(expander.markdown)[0]


def test_gradcam_is_computed_only_when_switched_on(app):
    upload(app, ("chest.png", png_bytes(xray_image())))
    assert len(app.image) == 1
    app.sidebar.toggle(key="show_gradcam").set_value(True).run()
    assert not app.exception
    assert len(app.progress) == 2  # the prediction is still shown
    if importlib.util.find_spec("pneumoscan.inference.explain") is None:
        assert any("Grad-CAM is not available" in t for t in texts(app.info))
    else:
        assert len(app.image) == 2, texts(app.warning)
        assert "Grad-CAM" in app.image[1].captions[0]


@pytest.fixture(scope="module")
def tiny_litert(tiny_model, tmp_path_factory) -> Path:
    """A LiteRT export of the tiny model, in a folder of its own with its Keras source beside it."""
    folder = tmp_path_factory.mktemp("app-litert")
    for path in tiny_model.parent.glob(tiny_model.stem + ".*"):
        shutil.copy(path, folder / path.name)
    return export_tiny_litert(folder / tiny_model.name)


def test_litert_model_is_served_and_gradcam_uses_its_keras_source(tiny_litert, monkeypatch):
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(tiny_litert))
    at = upload(
        AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), ("chest.png", png_bytes(xray_image()))
    )
    assert len(at.progress) == 2 and len(headlines(at)) == 1
    assert f"`{tiny_litert.name}` (LiteRT)" in "\n".join(texts(at.sidebar.markdown))
    at.sidebar.toggle(key="show_gradcam").set_value(True).run()
    assert not at.exception
    assert len(at.image) == 2, texts(at.warning) + texts(at.info)
    assert "Grad-CAM" in at.image[1].captions[0]


def test_litert_model_without_its_keras_source_says_why_there_is_no_gradcam(
    tiny_litert, tmp_path, monkeypatch
):
    for path in tiny_litert.parent.glob(tiny_litert.stem + ".*"):
        shutil.copy(path, tmp_path / path.name)  # the export alone, no .keras beside it
    lonely = tmp_path / tiny_litert.name
    meta = (tmp_path / (tiny_litert.stem + ".meta.json")).read_text()
    (tmp_path / (tiny_litert.stem + ".meta.json")).write_text(
        meta.replace(str(tiny_litert.parent), "/nowhere")
    )
    monkeypatch.setenv("PNEUMOSCAN_MODEL", str(lonely))
    at = upload(
        AppTest.from_file(str(APP), default_timeout=TIMEOUT).run(), ("chest.png", png_bytes(xray_image()))
    )
    at.sidebar.toggle(key="show_gradcam").set_value(True).run()
    assert not at.exception
    assert len(at.progress) == 2 and len(at.image) == 1  # the prediction stays, no heatmap
    assert any("Grad-CAM needs the Keras model" in t for t in texts(at.info))


def test_the_app_on_a_litert_model_never_imports_tensorflow(tiny_litert, tmp_path):
    # What makes it start in seconds and answer in milliseconds: no TensorFlow, so no Keras
    # session for Streamlit to clear after each run (see config.default_serving_model_path).
    image = tmp_path / "chest.png"
    xray_image(256).save(image)
    script = tmp_path / "run_app.py"
    script.write_text(
        f"""
import sys
from pathlib import Path
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(APP)!r}, default_timeout={TIMEOUT}).run()
at.file_uploader(key="uploads").set_value([("chest.png", Path({str(image)!r}).read_bytes(), "image/png")])
at.run()
assert not at.exception and len(at.progress) == 2, at
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    )
    env = dict(os.environ, PNEUMOSCAN_MODEL=str(tiny_litert))
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_default_app_model_is_the_bundled_litert_export(monkeypatch):
    from pneumoscan import config

    monkeypatch.delenv("PNEUMOSCAN_MODEL", raising=False)
    assert config.default_serving_model_path() == config.DEFAULT_LITERT_MODEL_PATH
    assert config.DEFAULT_LITERT_MODEL_PATH.is_file(), "the bundled LiteRT export is missing from models/"
    monkeypatch.setattr(config, "DEFAULT_LITERT_MODEL_PATH", Path("/nowhere/model.tflite"))
    assert config.default_serving_model_path() == config.DEFAULT_KERAS_MODEL_PATH
    monkeypatch.setenv("PNEUMOSCAN_MODEL", "/some/model.keras")
    assert config.default_serving_model_path() == Path("/some/model.keras")


# --------------------------------------------------------------------------- helpers of the page


@pytest.mark.parametrize(
    ("value", "digits", "shown"),
    [
        (0.932, 0, "93"),
        (0.5, 1, "50.0"),
        (1.0, 0, "100"),
        (0.0, 1, "0.0"),
        (0.996, 0, "> 99"),  # rounding would say 100 %: certainty the model did not state
        (0.9996, 1, "> 99.9"),
        (0.99949, 1, "99.9"),
        (0.004, 0, "< 1"),
        (0.0004, 1, "< 0.1"),
    ],
)
def test_percent_never_rounds_a_probability_to_certainty(value, digits, shown):
    from pneumoscan.inference.results import percent

    assert percent(value, digits) == shown.replace(" ", "\u00a0") + "\u00a0%"


def test_the_cli_table_reads_percentages_the_same_way_without_spaces():
    from pneumoscan.inference.results import percent

    assert [percent(v, 1, space="") for v in (0.9996, 0.932, 0.0004)] == [">99.9%", "93.2%", "<0.1%"]


def test_a_near_certain_answer_is_shown_short_of_certainty():
    from pneumoscan.inference.predictor import make_prediction
    from pneumoscan.interfaces.app import verdict

    headline, _ = verdict(make_prediction(0.9996, 0.5))
    assert headline == "Pneumonia suspected — confidence >\u00a099\u00a0%"


@pytest.mark.parametrize("threshold", [0.3, 0.9123794438495197])  # a low one and the released model's
def test_verdict_never_states_an_outcome_below_fifty_percent(threshold):
    from pneumoscan.inference.predictor import make_prediction
    from pneumoscan.interfaces.app import verdict

    headline, note = verdict(make_prediction(0.93, threshold))
    assert headline == "Pneumonia suspected — confidence 93\u00a0%" and note is None
    headline, note = verdict(make_prediction(0.1, threshold))
    assert headline == "No pneumonia detected — confidence 90\u00a0%" and note is None
    between = (threshold + 0.5) / 2  # between 0.5 and the threshold: the 15 % case
    headline, note = verdict(make_prediction(between, threshold))
    assert headline == "Uncertain — needs a closer look" and "confidence" not in headline
    assert f"operating threshold of {100 * threshold:.1f}\u00a0%" in note and "clinician" in note


def test_results_csv_has_one_row_per_file():
    from pneumoscan.inference.predictor import make_prediction
    from pneumoscan.interfaces.app import results_csv

    rows = [
        {"name": "a.png", "prediction": make_prediction(0.8, 0.3), "error": None},
        {"name": "b.txt", "prediction": None, "error": "not a recognised image"},
    ]
    lines = results_csv(rows).decode().splitlines()
    header = (
        "file,P(normal),P(pneumonia),prediction,confidence,threshold,decision,uncertainty,in_scope,"
        "scope_reason,distance to training images,error"
    )
    assert lines[0] == header
    assert lines[1] == "a.png,0.2000,0.8000,PNEUMONIA,0.8000,0.3000,pneumonia suspected,,True,,,"
    assert lines[2] == "b.txt,,,,,,,,,,,not a recognised image"
