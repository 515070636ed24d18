"""LiteRT export: float, float16, dynamic-range and int8 pass their check (int8-stem quantizes only a
nested-top model's stem) against Keras; the check runs
on images the model never trained on (held out, shifted views, out-of-scope) and fails a broken export;
a failed check leaves nothing behind; no data, no export."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.inference.predictor import Predictor
from pneumoscan.models.artifacts import ModelMetadata, metadata_path
from pneumoscan.testing.models import export_tiny_litert, make_tiny_model
from pneumoscan.training import export, export_check
from pneumoscan.training.export import convert_keras_model, export_tflite
from pneumoscan.training.export_check import (
    CHECK_SHIFTS,
    check_images,
    held_out_samples,
    model_split,
    parity,
)

SIZE = 64
SPLIT = {"val_fraction": 0.25, "seed": 7, "limit": None}


def chest(pneumonia: bool, seed: int, size: int = SIZE) -> np.ndarray:
    """X-ray-like (size, size) uint8: dark background, two grey lungs, noise; pneumonia fills one
    lung with a bright opacity.

    Not :func:`pneumoscan.testing.synthetic.xray_like` on purpose: the int8 export check needs the
    probe-fitted model's outputs spread well away from the threshold, and int8 quantization ranges
    follow these images' statistics (with the shared generator's small opacity, 1 of 12 labels flips).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.full((size, size), 20.0)
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 100.0 + 30.0 * rng.random()
    if pneumonia:
        cx = rng.choice([0.3, 0.7])
        img[((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.28) ** 2 < 1] = 190.0 + 40.0 * rng.random()
    img += rng.normal(0.0, 8.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_tree(root: Path, per_class: int = 20) -> Path:
    """``root/train/{NORMAL,PNEUMONIA}/`` with Kermany-style names (some patients twice)."""
    names = {
        "NORMAL": [f"IM-{k // 2 + 1:04d}-{k % 2 + 1:04d}.jpeg" for k in range(per_class)],
        "PNEUMONIA": [
            f"person{k // 2 + 1}_{'bacteria' if k % 3 else 'virus'}_{k + 1}.jpeg" for k in range(per_class)
        ],
    }
    seed = 0
    for cls, files in names.items():
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for name in files:
            seed += 1
            Image.fromarray(chest(cls == "PNEUMONIA", seed)).save(root / "train" / cls / name, quality=92)
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("data")) / "train"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, data_dir) -> Path:
    """make_tiny_model with its head fitted (a logistic-regression probe on the pooled features of
    the training side of the split), so that the classes separate and outputs spread over 0..1."""
    import keras
    from sklearn.linear_model import LogisticRegression

    from pneumoscan.data.dataset import decode_samples

    path = make_tiny_model(tmp_path_factory.mktemp("model"), image_size=SIZE, threshold=0.4)
    meta = ModelMetadata.read(path).updated(
        data_dir=str(data_dir), split=SPLIT, calibration={"a": 1.3, "b": -0.2}
    )
    train_s, _ = model_split(meta, data_dir)
    train = decode_samples(train_s, SIZE, progress=False)
    model = keras.saving.load_model(path, compile=False)
    pooled = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    features = np.asarray(pooled(train.x.astype("float32")))
    mu, sd = features.mean(0), features.std(0) + 1e-6
    probe = LogisticRegression(C=0.05).fit((features - mu) / sd, train.y)
    w = probe.coef_[0] / sd
    b = probe.intercept_[0] - float((mu * w).sum())
    model.get_layer("pred").set_weights([w[:, None].astype("float32"), np.array([b], "float32")])
    model.save(path)
    meta.write(path)
    return path


@pytest.fixture(scope="module")
def predictor(model_path) -> Predictor:
    return Predictor(model_path)


def fixed_inputs(n: int = 7) -> np.ndarray:
    """Model inputs as the pipeline makes them (preprocessed), like the export's own images."""
    from pneumoscan.data.imaging import preprocess

    return np.stack([preprocess(chest(i % 2 == 1, 500 + i), SIZE) for i in range(n)])


@pytest.mark.parametrize(("quantize", "atol"), [("none", 1e-5), ("float16", 5e-3), ("dynamic", 5e-2)])
def test_export_passes_its_check_and_matches_keras(predictor, tmp_path, quantize, atol):
    out = tmp_path / "out" / f"m-{quantize}.tflite"
    report = export_tflite(predictor, out=out, quantize=quantize, progress=False)
    assert report["passed"] is True and report["quantize"] == quantize
    assert report["agreement"] >= 0.99 and report["max_abs_prob_diff"] <= 0.05
    assert report["size_bytes"] == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, metadata_path(out).name])
    meta = json.loads(metadata_path(out).read_text())
    for key in ("threshold", "calibration", "image_size", "class_names", "split"):
        assert meta[key] == predictor.metadata.to_json()[key]
    assert meta["export"]["quantize"] == quantize
    check = meta["export"]["check"]
    assert check["agreement"] == report["agreement"] and check["n_check"] == report["n_check"]
    assert check["max_abs_prob_diff"] == report["max_abs_prob_diff"]
    # Images the model never trained on: its validation split, and views of those films.
    _, val = model_split(predictor.metadata, predictor.metadata.data_dir)
    assert check["kinds"] == {
        "held_out": len(val),
        "shifted": len(CHECK_SHIFTS) * len(val),
        "out_of_scope": 0,
    }
    assert report["n_check"] == (1 + len(CHECK_SHIFTS)) * len(val)

    lite = Predictor(out)
    assert lite.backend == "litert"
    x = fixed_inputs()
    p_keras, p_lite = predictor.predict_proba(x), lite.predict_proba(x)
    np.testing.assert_allclose(p_lite, p_keras, atol=atol)
    assert ((p_lite >= lite.threshold) == (p_keras >= predictor.threshold)).all()


def test_int8_is_refused_when_it_moves_probabilities_past_the_gate(predictor, tmp_path, monkeypatch):
    # This tiny probe-fitted model's int8 export moves a held-out probability by ~0.1: refused.
    out = tmp_path / "m-int8.tflite"
    with pytest.raises(ValueError, match=r"\(int8\) .* failed its check .* \(allowed 0\.05"):
        export_tflite(predictor, out=out, quantize="int8", progress=False)
    assert list(tmp_path.iterdir()) == []
    # With the limit raised the same export is written, calibrated on the training side only.
    monkeypatch.setattr(export_check, "MAX_ABS_PROB_DIFF", 0.25)
    report = export_tflite(predictor, out=out, quantize="int8", progress=False)
    train, _ = model_split(predictor.metadata, predictor.metadata.data_dir)
    assert report["passed"] and report["n_representative"] == len(train)
    assert 0.05 < report["max_abs_prob_diff"] <= 0.25
    assert ModelMetadata.read(out).export.check["gate"]["max_abs_prob_diff"] == 0.25
    x = fixed_inputs()
    p_keras, p_lite = predictor.predict_proba(x), Predictor(out).predict_proba(x)
    np.testing.assert_allclose(p_lite, p_keras, atol=0.25)


def tiny_two_top_ensemble():
    """A stem of two named layers and two nested member tops on it, put together by the release's
    own :func:`build_ensemble` (small enough to convert in seconds)."""
    import keras
    from keras import layers

    from pneumoscan.models.architectures import build_ensemble

    keras.utils.set_random_seed(3)
    image = keras.Input((32, 32, 1), name="image")
    cut = layers.ReLU(name="stem_relu")(layers.Conv2D(8, 3, strides=2, name="stem_conv")(image / 255.0))
    stem_source = keras.Model(image, cut)
    members = []
    for k in range(2):
        features = keras.Input(cut.shape[1:])
        x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu", name="top_conv")(features))
        p = layers.Dense(1, activation="sigmoid", name="pred")(x)
        members.append(keras.Model(features, p, name=f"member_{k}"))
    return build_ensemble(stem_source, "stem_relu", members)


def test_int8_stem_quantizes_the_stem_and_keeps_the_tops_float():
    from ai_edge_litert.interpreter import Interpreter

    model = tiny_two_top_ensemble()
    assert export.float_layer_names(model)[:2] == ("member_0", "member_1")
    rng = np.random.default_rng(0)
    representative = rng.uniform(0, 255, (24, 32, 32, 1)).astype("float32")
    interpreter = Interpreter(
        model_content=convert_keras_model(model, quantize="int8-stem", representative=representative)
    )
    interpreter.allocate_tensors()
    dtypes = collections.defaultdict(set)  # the weights and outputs of each layer's ops
    for t in interpreter.get_tensor_details():
        for key in ("stem_conv", "member_0_1/top_conv", "member_1_1/top_conv", "pred_1/MatMul", "embedding"):
            if key in t["name"]:
                dtypes[key].add(np.dtype(t["dtype"]).name)
    assert dtypes["stem_conv"] == {"int8"}  # the stem's convolution runs in int8
    # The tops' convolutions and dense layers, and the embedding, stay float. (The converter still
    # rounds each sigmoid's output to int8's fixed 1/256 steps and back: not asserted either way.)
    for key in ("member_0_1/top_conv", "member_1_1/top_conv", "pred_1/MatMul", "embedding"):
        assert dtypes[key] == {"float32"}, key
    # And it still computes the same model, within int8's error on the stem alone.
    x = rng.uniform(0, 255, (6, 32, 32, 1)).astype("float32")
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(lite, np.asarray(model(x)), atol=0.02)


def test_int8_stem_refuses_when_it_cannot_find_the_tops_ops(monkeypatch):
    # Were the converter to name ops otherwise, nothing would be left float: refused, not int8 whole.
    monkeypatch.setattr(export, "float_layer_names", lambda model: ("no_such_layer",))
    representative = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 1)).astype("float32")
    with pytest.raises(ValueError, match="int8-stem found none of the ops of no_such_layer"):
        convert_keras_model(tiny_two_top_ensemble(), quantize="int8-stem", representative=representative)


def test_int8_stem_refuses_a_model_without_nested_tops(predictor, tmp_path):
    with pytest.raises(ValueError, match="int8-stem needs a model whose tops are nested models"):
        export_tflite(predictor, out=tmp_path / "m.tflite", quantize="int8-stem", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_check_leaves_nothing_and_keeps_an_older_export(predictor, tmp_path, monkeypatch):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"an older export")
    monkeypatch.setattr(export_check, "MIN_AGREEMENT", 1.01)  # impossible: the check must fail
    with pytest.raises(ValueError, match=r"failed its check on \d+ images the model never trained on"):
        export_tflite(predictor, out=out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite"]
    assert out.read_bytes() == b"an older export"


def test_max_check_images_limits_the_check(predictor, tmp_path):
    report = export_tflite(predictor, out=tmp_path / "m.tflite", progress=False, max_check_images=6)
    assert report["passed"] and report["kinds"]["held_out"] <= 6
    assert report["kinds"]["shifted"] <= 6 * len(CHECK_SHIFTS)


def test_no_data_no_export(predictor, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="mandatory"):
        export_tflite(predictor, out=tmp_path / "m.tflite", data_dir=tmp_path / "nowhere")
    monkeypatch.setattr(predictor, "metadata", predictor.metadata.updated(data_dir=None))
    with pytest.raises(ValueError, match="mandatory"):
        export_tflite(predictor, out=tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_check_needs_enough_unseen_images(predictor, tmp_path):
    few = tmp_path / "few" / "train"
    (few / "NORMAL").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(chest(False, i)).save(few / "NORMAL" / f"IM-{i:04d}-0001.jpeg")
    with pytest.raises(ValueError, match=r"only \d+ image\(s\) the model never trained on .* at least 10"):
        export_tflite(predictor, out=tmp_path / "m.tflite", data_dir=few, progress=False)
    assert not (tmp_path / "m.tflite").exists()


def test_bad_arguments(predictor, tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_tflite(predictor, out=tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="must be a .tflite file"):
        export_tflite(predictor, out=tmp_path / "m.onnx")


def test_export_never_overwrites_the_source_models_sidecar(predictor):
    # m.keras and m.tflite in one folder would share m.meta.json.
    sidecar = metadata_path(predictor.model_path)
    before = sidecar.read_bytes()
    with pytest.raises(ValueError, match="would share its sidecar"):
        export_tflite(predictor, out=predictor.model_path.with_suffix(".tflite"), progress=False)
    assert sidecar.read_bytes() == before
    assert not predictor.model_path.with_suffix(".tflite").exists()


def test_export_refuses_a_litert_predictor(tmp_path):
    lite_path = export_tiny_litert(make_tiny_model(tmp_path, image_size=SIZE))
    with pytest.raises(ValueError, match="needs a .keras model"):
        export_tflite(Predictor(lite_path), out=tmp_path / "again.tflite")


# --------------------------------------------------------------------------- the check's images


def test_check_images_are_never_training_images(predictor, data_dir):
    from pneumoscan.data.dataset import decode_samples

    train_s, val_s = model_split(predictor.metadata, data_dir)
    check = check_images(predictor, data_dir, ood_dir=None)
    train_x = {a.tobytes() for a in decode_samples(train_s, SIZE, progress=False).x}
    val = decode_samples(val_s, SIZE, progress=False)
    # held out: exactly the model's validation split; shifted: new inputs made from those films
    np.testing.assert_array_equal(check.x[check.kind == "held_out"], val.x)
    shifted = check.x[check.kind == "shifted"]
    assert len(shifted) == len(CHECK_SHIFTS) * len(val.y)
    assert not {a.tobytes() for a in shifted} & {a.tobytes() for a in val.x}
    assert not {a.tobytes() for a in check.x} & train_x
    assert sorted(check.y[check.kind == "shifted"].tolist()) == sorted(
        np.repeat(val.y, len(CHECK_SHIFTS)).tolist()
    )


def test_out_of_scope_images_join_the_check(predictor, tmp_path):
    from pneumoscan.testing.synthetic import xray_like

    root = write_tree(tmp_path / "data")  # the fixture's films again, with an ood/ folder beside train/
    (root / "ood" / "ct").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(xray_like(96, 80, seed=i)).save(root / "ood" / "ct" / f"ct-{i}.png")
    (root / "ood" / "ct" / "notes.jpeg").write_text("not an image")  # skipped
    check = check_images(predictor, root / "train")  # ood_dir="auto" finds it
    assert check.describe()["kinds"]["out_of_scope"] == 5
    assert (check.y[check.kind == "out_of_scope"] == -1).all()
    assert check.sources["out_of_scope"] == str(root / "ood")
    assert check_images(predictor, root / "train", ood_dir=None).describe()["kinds"]["out_of_scope"] == 0
    with pytest.raises(FileNotFoundError, match="out-of-scope images .* not found"):
        check_images(predictor, root / "train", ood_dir=tmp_path / "nowhere")


def test_an_ensembles_held_out_images_are_held_out_by_every_member(predictor, data_dir):
    from pneumoscan.data.dataset import discover_split, patient_split

    ensemble = {"members": 3, "embedding_dim": 0, "member_split": "validation", "val_fraction": 0.45}
    meta = predictor.metadata.updated(ensemble={**ensemble, "fold_seed": 3, "limit": None})
    samples = discover_split(data_dir, prefer="train")
    vals = [{s.path for s in patient_split(samples, val_fraction=0.45, seed=3 + k)[1]} for k in range(3)]
    held, some, words = held_out_samples(meta, data_dir)
    assert {s.path for s in held} == vals[0] & vals[1] & vals[2] and "all 3 members" in words
    assert {s.path for s in some} == vals[0] | vals[1] | vals[2]
    folds = meta.updated(ensemble={**meta.ensemble.to_dict(), "member_split": "folds"})
    held, some, words = held_out_samples(folds, data_dir)
    assert held == [] and len(some) == len(samples) and words.startswith("none")


def test_the_gate_fails_a_broken_export(predictor, tmp_path, monkeypatch):
    """A LiteRT file made from the model with every weight scaled by a seeded factor in 0.8..1.2:
    the check (decisions and max |dp| on unseen images) refuses it, and nothing is written."""
    import keras

    broken = keras.saving.load_model(predictor.model_path, compile=False)
    rng = np.random.default_rng(0)
    broken.set_weights([w * rng.uniform(0.8, 1.2, w.shape).astype(w.dtype) for w in broken.get_weights()])
    flatbuffer = convert_keras_model(broken)
    lite_path = tmp_path / "broken" / "m.tflite"
    lite_path.parent.mkdir()
    lite_path.write_bytes(flatbuffer)
    predictor.metadata.write(lite_path)
    check = check_images(predictor, predictor.metadata.data_dir, ood_dir=None)
    report = parity(predictor, Predictor(lite_path), check)
    assert report["passed"] is False and report["max_abs_prob_diff"] > 0.05

    monkeypatch.setattr(export, "convert_keras_model", lambda model, **kwargs: flatbuffer)
    out = tmp_path / "out" / "m.tflite"
    with pytest.raises(
        ValueError, match=r"failed its check .* max \|P\(pneumonia\) diff\| 0\.\d+ \(allowed 0\.05"
    ):
        export_tflite(predictor, out=out, progress=False)
    assert not out.exists() and not metadata_path(out).exists()
