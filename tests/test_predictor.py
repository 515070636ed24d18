"""The Predictor: calibrated outputs equal the model's, label semantics, files with errors, LiteRT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.results import make_prediction
from pneumoscan.models.artifacts import ModelMetadata, metadata_path
from pneumoscan.testing.models import export_tiny_litert, make_tiny_model

SIZE = 64
CAL = {"a": 1.7, "b": -0.3}


def images(n: int, *, size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)


def platt(p: np.ndarray, a: float, b: float) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(a * np.log(p / (1 - p)) + b)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = make_tiny_model(tmp_path_factory.mktemp("model"), image_size=SIZE, threshold=0.3)
    ModelMetadata.read(path).updated(calibration=CAL).write(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_path) -> Predictor:
    return Predictor(model_path)


@pytest.fixture(scope="module")
def lite_predictor(model_path, tmp_path_factory) -> Predictor:
    path = export_tiny_litert(model_path, tmp_path_factory.mktemp("lite") / "tiny.tflite")
    return Predictor(path, num_threads=2)


def test_outputs_match_the_model_and_calibration(predictor):
    x = images(5)
    raw = np.asarray(predictor.model(x.astype(np.float32), training=False)).reshape(-1)
    np.testing.assert_allclose(predictor.predict_raw(x), raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_proba(x), platt(raw, **CAL), rtol=1e-5, atol=1e-6)
    # Batching does not change the answer, and float input in 0..255 equals uint8 input.
    np.testing.assert_allclose(predictor.predict_raw(x, batch_size=2), raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_raw(x.astype(np.float32)), raw, rtol=1e-5, atol=1e-6)


def test_predict_raw_rejects_wrong_shapes(predictor):
    with pytest.raises(ValueError, match="expected images of shape"):
        predictor.predict_raw(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="expected images of shape"):
        predictor.predict_raw(np.zeros((SIZE, SIZE, 1), np.uint8))
    assert predictor.predict_raw(np.zeros((0, SIZE, SIZE, 1), np.uint8)).shape == (0,)


def test_label_threshold_confidence_semantics():
    flagged = make_prediction(0.3, 0.25)  # at the threshold, yet P(pneumonia) < 0.5: not stated
    assert flagged.label == "PNEUMONIA" and flagged.decision == "uncertain" and flagged.confidence is None
    assert flagged.p_normal + flagged.p_pneumonia == pytest.approx(1.0)
    normal = make_prediction(0.2, 0.25)
    assert normal.label == "NORMAL" and normal.confidence == pytest.approx(0.8)
    assert make_prediction(0.25, 0.25).label == "PNEUMONIA"  # at the threshold: flagged
    assert normal.threshold == 0.25


def test_threshold_override_and_validation(model_path, predictor):
    assert predictor.threshold == pytest.approx(0.3)
    gray = images(1)[0, :, :, 0]
    p = predictor.predict_image(gray).p_pneumonia
    low = Predictor(model_path, threshold=p - 1e-6)
    high = Predictor(model_path, threshold=min(p + 1e-3, 0.999))
    assert low.predict_image(gray).label == "PNEUMONIA"
    assert high.predict_image(gray).label == "NORMAL"
    with pytest.raises(ValueError, match="threshold must be in"):
        Predictor(model_path, threshold=1.0)


def test_predict_image_resizes_any_size(predictor):
    pred = predictor.predict_image(images(1, size=100)[0, :, :, 0])
    assert 0.0 <= pred.p_pneumonia <= 1.0 and pred.label in ("NORMAL", "PNEUMONIA")


def test_predict_paths_with_a_bad_file(predictor, tmp_path):
    arrays = images(3, size=80, seed=3)[..., 0]
    paths = []
    for i, array in enumerate(arrays):
        paths.append(tmp_path / f"good{i}.png")
        Image.fromarray(array).save(paths[-1])
    (tmp_path / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    paths.insert(1, tmp_path / "broken.jpeg")
    paths.append(tmp_path / "missing.png")
    result = predictor.predict_paths(paths, batch_size=2, progress=False)
    assert result.paths == paths
    assert result.errors[0] is None and result.errors[2] is None and result.errors[3] is None
    assert "corrupt" in result.errors[1] or "not a recognised image" in result.errors[1]
    assert "cannot read file" in result.errors[4]
    assert np.isnan(result.p_pneumonia[[1, 4]]).all()
    expected = [predictor.predict_image(a).p_pneumonia for a in arrays]
    np.testing.assert_allclose(result.p_pneumonia[[0, 2, 3]], expected, rtol=1e-5)
    preds = result.predictions(predictor.threshold)
    assert preds[1] is None and preds[4] is None and preds[0].p_pneumonia == pytest.approx(expected[0])


def test_missing_model_or_sidecar(tmp_path, model_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Predictor(tmp_path / "nope.keras")
    lone = tmp_path / "lone.keras"
    lone.write_bytes(model_path.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"lone\.meta\.json not found"):
        Predictor(lone)


def test_sidecar_must_name_the_classes(tmp_path, model_path):
    copy = tmp_path / "copy.keras"
    copy.write_bytes(model_path.read_bytes())
    meta = json.loads(metadata_path(model_path).read_text())
    # Written by hand: ModelMetadata itself refuses to write a sidecar with the classes swapped.
    metadata_path(copy).write_text(json.dumps({**meta, "class_names": ["PNEUMONIA", "NORMAL"]}))
    with pytest.raises(ValueError, match="class_names"):
        Predictor(copy)


def test_tta_keeps_the_shape(predictor):
    x = images(3)
    p = predictor.predict_proba(x, tta=True)
    assert p.shape == (3,) and np.isfinite(p).all()
    assert predictor.predict_image(x[0, :, :, 0], tta=True).label in ("NORMAL", "PNEUMONIA")


def test_litert_backend_matches_keras_with_batch_resizing(predictor, lite_predictor):
    assert lite_predictor.backend == "litert" and lite_predictor.model is None
    x = images(7, seed=5)
    expected = predictor.predict_raw(x)
    for batch_size in (1, 3, 64):  # every batch size resizes the interpreter's input
        np.testing.assert_allclose(lite_predictor.predict_raw(x, batch_size=batch_size), expected, atol=1e-5)
    np.testing.assert_allclose(lite_predictor.predict_raw(x[:1]), expected[:1], atol=1e-5)
    np.testing.assert_allclose(lite_predictor.predict_proba(x), predictor.predict_proba(x), atol=1e-5)


def test_litert_predictor_serves_concurrent_callers(predictor, lite_predictor):
    # The app and predict_paths share one Predictor between threads; its interpreters must not be.
    import concurrent.futures

    batches = [images(n, seed=10 + n) for n in (1, 2, 5, 1, 9, 3)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lite_predictor.predict_raw, batches * 3))
    for x, got in zip(batches * 3, results, strict=True):
        np.testing.assert_allclose(got, predictor.predict_raw(x), atol=1e-5)


def test_source_keras_model_of_an_export(model_path, tmp_path):
    from pneumoscan.inference.predictor import source_keras_model

    assert source_keras_model(model_path, ModelMetadata.read(model_path)) == model_path
    # At the recorded path: relative to the export's folder, as `pneumoscan export` writes it...
    shutil.copy(model_path, tmp_path / model_path.name)

    def exported(source: str) -> ModelMetadata:
        return ModelMetadata(image_size=64, threshold=0.5, export={"source": source})

    relative = exported(model_path.name)
    assert source_keras_model(tmp_path / "m.tflite", relative) == tmp_path / model_path.name
    (tmp_path / "sub").mkdir()
    up = exported("../" + model_path.name)
    assert source_keras_model(tmp_path / "sub" / "m.tflite", up) == tmp_path / "sub" / ".." / model_path.name
    # ...or absolute; and failing that, beside the export under the recorded name.
    recorded = exported(str(model_path))
    assert source_keras_model(tmp_path / "sub" / "m.tflite", recorded) == model_path
    moved = exported(f"/elsewhere/{model_path.name}")
    assert source_keras_model(tmp_path / "m.tflite", moved) == tmp_path / model_path.name
    assert source_keras_model(tmp_path / "sub" / "m.tflite", moved) is None
    assert source_keras_model(tmp_path / "m.tflite", ModelMetadata(image_size=64, threshold=0.5)) is None


@pytest.mark.slow
@pytest.mark.required
def test_bundled_litert_export_answers_like_the_bundled_keras_model(shared_data):
    # The app, `serve` and `predict` use the LiteRT export; evaluate, explain and export the Keras
    # model. The model card claims the same labels (the export's check: label agreement 100 %) and
    # probabilities within the check's max |dp|; the bounds are read from the export's sidecar.
    from pneumoscan.config import DEFAULT_KERAS_MODEL_PATH, DEFAULT_LITERT_MODEL_PATH

    files = [sorted((shared_data / "train" / c).glob("*.jpeg"))[::97][:24] for c in ("NORMAL", "PNEUMONIA")]
    files = files[0] + files[1]
    # The export itself, without its fast path (tests/test_fast_path.py checks the pair).
    keras_model = Predictor(DEFAULT_KERAS_MODEL_PATH)
    lite_model = Predictor(DEFAULT_LITERT_MODEL_PATH, fast_path=False)
    assert lite_model.backend == "litert" and lite_model.threshold == keras_model.threshold
    p_keras = keras_model.predict_paths(files, progress=False).p_pneumonia
    p_lite = lite_model.predict_paths(files, progress=False).p_pneumonia
    check = lite_model.metadata.export.check
    np.testing.assert_allclose(p_lite, p_keras, atol=max(1e-4, 1.5 * check["max_abs_prob_diff"]))
    # Every label the same, as the docs say. A label can differ only for an image whose two
    # probabilities straddle the threshold, i.e. one within |dp| of it; the message says how close.
    threshold = keras_model.threshold
    flipped = [
        f"{path.name} (P {pk:.4f} vs {pl:.4f}, threshold {threshold:.4f})"
        for path, pk, pl in zip(files, p_keras, p_lite, strict=True)
        if (pk >= threshold) != (pl >= threshold)
    ]
    assert not flipped, f"LiteRT and Keras labels differ: {flipped}"
    assert check["agreement"] >= 0.99 and abs(check["auc_keras"] - check["auc_tflite"]) <= 0.005
