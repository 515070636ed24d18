"""The contracts between stages, each defined once: the model sidecar, the run folder's file names,
the per-image prediction rows, the architecture registry and the training/validation split."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from pneumoscan.config import BUNDLED_MODELS_DIR, CLASS_NAMES, TrainConfig
from pneumoscan.inference.results import (
    LABELLED_COLUMNS,
    PREDICTION_COLUMNS,
    VALIDATION_COLUMNS,
    labelled_row,
    make_prediction,
    prediction_row,
    write_rows,
)
from pneumoscan.models.architectures import ARCHITECTURES, architecture
from pneumoscan.models.artifacts import ModelMetadata, RunFolder, metadata_path
from pneumoscan.models.calibration import PlattCalibrator

RELEASED_SIDECARS = sorted(BUNDLED_MODELS_DIR.glob("*.meta.json"))


# --------------------------------------------------------------------------- model metadata


@pytest.mark.parametrize("sidecar", RELEASED_SIDECARS, ids=lambda p: p.name)
def test_released_sidecars_round_trip_unchanged(sidecar, tmp_path):
    data = json.loads(sidecar.read_text())
    meta = ModelMetadata.from_json(data)
    assert meta.to_json() == data
    # The release is an ensemble: it says how its members held images out, not one split.
    assert meta.arch == "mobilenetv2" and meta.split is None
    assert meta.ensemble.member_split in ("validation", "folds") and meta.ensemble.members >= 3
    # Written back, the file is the released one (which was saved without a final newline).
    model = tmp_path / sidecar.name.replace(".meta.json", ".keras")
    meta.write(model)
    assert metadata_path(model).read_text() == sidecar.read_text().rstrip("\n") + "\n"
    assert ModelMetadata.read(model) == meta


def test_released_sidecars_exist():
    assert {p.name for p in RELEASED_SIDECARS} == {
        "pneumoscan-mobilenetv2.meta.json",
        "pneumoscan-mobilenetv2-litert.meta.json",
    }


def test_metadata_defaults_unknown_keys_and_updates(tmp_path):
    names = list(CLASS_NAMES)  # required in a file: the output is never read by position alone
    meta = ModelMetadata.from_json(
        {"image_size": 64, "threshold": 0.3, "class_names": names, "future_section": {"members": 5}}
    )
    assert meta.calibration == PlattCalibrator()
    assert meta.arch is None and meta.split is None and meta.extra == {"future_section": {"members": 5}}
    # Unknown sections survive a rewrite; None fields are not written.
    assert meta.to_json() == {
        "image_size": 64,
        "threshold": 0.3,
        "class_names": list(CLASS_NAMES),
        "calibration": {"a": 1.0, "b": 0.0},
        "future_section": {"members": 5},
    }
    # Fields, not keys: the sidecar is read through its typed fields only.
    assert not hasattr(meta, "get") and not hasattr(meta, "__getitem__")
    changed = meta.updated(threshold=0.4, data_dir="d")
    assert (changed.threshold, changed.data_dir, meta.threshold) == (0.4, "d", 0.3)
    assert changed.updated(data_dir=None).data_dir is None


def test_held_out_figures_say_which_images_and_what_they_chose_and_read_older_sidecars():
    base = {"image_size": 64, "threshold": 0.3, "class_names": list(CLASS_NAMES)}
    # A single model's sidecar written before the section had a type: bare metrics as "validation".
    old = ModelMetadata.from_json({**base, "validation": {"n": 10, "recall": 0.9}})
    assert dict(old.held_out.metrics) == {"n": 10, "recall": 0.9}
    assert old.held_out.measured_on == "the model's patient-level validation split"
    assert old.held_out.chose == ("epochs", "calibration", "threshold")
    assert "validation" not in old.to_json() and old.to_json()["held_out"]["metrics"] == {
        "n": 10,
        "recall": 0.9,
    }
    assert ModelMetadata.from_json(old.to_json()) == old
    # An ensemble with fixed-epoch fold members and a band: its own words, no epochs, the band.
    ensemble = {"members": 3, "member_split": "folds", "validation": "out-of-fold: each image ..."}
    band = {"band": {"lower": 0.1, "upper": 0.5}}
    folds = ModelMetadata.from_json({**base, "ensemble": ensemble, "decision": band, "validation": {"n": 5}})
    # The ensemble section's own words move to held_out_words; written back under that name.
    assert folds.ensemble.held_out_words == "out-of-fold: each image ..."
    assert folds.to_json()["ensemble"]["held_out_words"] == "out-of-fold: each image ..."
    assert "validation" not in folds.to_json()["ensemble"]
    assert folds.held_out.measured_on == "out-of-fold: each image ..."
    assert folds.held_out.chose == ("calibration", "threshold", "band")
    assert folds.held_out.optimistic == "optimistic: these images chose the calibration, threshold, band"


def test_metadata_is_frozen_all_the_way_down():
    meta = ModelMetadata(image_size=64, threshold=0.5, export={"check": {"agreement": 1.0}})
    with pytest.raises(AttributeError):
        meta.threshold = 0.1
    with pytest.raises(TypeError):
        meta.export.check["agreement"] = 0.0
    assert meta.to_json()["export"] == {"check": {"agreement": 1.0}}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_names": ["PNEUMONIA", "NORMAL"]}, "class_names must be"),
        ({"threshold": 1.0}, r"threshold must be a number in \(0, 1\), got 1.0"),
        ({"threshold": "0.5"}, "threshold must be a number"),
        ({"image_size": 8}, "image_size must be at least 32, got 8"),
        ({"image_size": 64.0}, "image_size must be an integer"),
        ({"arch": "resnet"}, "unknown architecture 'resnet'"),
        ({"calibration": {"a": -1.0, "b": 0.0}}, "slope a must be a finite positive number"),
        ({"split": {"val_fraction": 0.2, "sed": 1}}, "split has unknown keys"),
        ({"validation": {"recall": "high"}}, r"held_out.metrics\['recall'\] must be a number"),
        ({"held_out": {"metrics": {"recall": 0.9}}}, "held_out must hold 'metrics' and 'measured_on'"),
        ({"held_out": {"metrics": {}, "measured_on": " "}}, "held_out.measured_on must say which images"),
        ({"export": {"source": 3}}, "export.source must be a path string"),
        ({"export": {"quantize": 16}}, "export.quantize must be a string, got 16"),
        ({"export": {"check": [1.0]}}, "export.check must be a mapping"),
        (
            {"student": {"outputs": {"p_pneumonia": 0}, "width": 2, "embedding_dim": 0}},
            "student.outputs must give",
        ),
        (
            {
                "student": {
                    "outputs": {"p_pneumonia": 0, "spread": 0, "embedding": 2},
                    "width": 2,
                    "embedding_dim": 0,
                }
            },
            "do not fit an output",
        ),
        ({"ensemble": {"members": 1}}, "ensemble.members must be an integer >= 2, got 1"),
        ({"ensemble": {"members": 3, "member_split": "bags"}}, "ensemble.member_split must be one of"),
        ({"ensemble": {"members": 3, "val_fraction": 1.5}}, r"ensemble.val_fraction must be in \(0, 1\)"),
        ({"ensemble": {"embedding_dim": 4}}, "ensemble must be a mapping with 'members'"),
        ({"threshold": None}, "missing key 'threshold'"),
        ({"class_names": None}, r"class_names must be \['NORMAL', 'PNEUMONIA'\], got \[\]"),
    ],
)
def test_metadata_refuses_bad_values_naming_them(changes, message):
    good = {"image_size": 64, "threshold": 0.5, "class_names": list(CLASS_NAMES)}
    with pytest.raises(ValueError, match=message):
        ModelMetadata.from_json({**good, **changes})


def test_student_and_export_sections_are_typed_and_keep_what_they_do_not_know():
    from pneumoscan.models.artifacts import OutputLayout
    from pneumoscan.models.sections import ExportSection, StudentSection

    student = {
        "outputs": {"p_pneumonia": 0, "spread": 1, "embedding": 2},
        "width": 6,
        "embedding_dim": 4,
        "teacher": {"file": "t.keras", "members": 3},
        "seed": 7,
    }
    export = {
        "source": "m.keras",
        "format": "tflite",
        "quantize": "float16",
        "check": {"n_check": 9},
        "created": "x",
    }
    sidecar = {
        "image_size": 64,
        "threshold": 0.5,
        "class_names": list(CLASS_NAMES),
        "student": student,
        "export": export,
    }
    meta = ModelMetadata.from_json(sidecar)
    assert isinstance(meta.student, StudentSection) and isinstance(meta.export, ExportSection)
    assert meta.student.outputs["spread"] == 1 and meta.student.extra["teacher"]["members"] == 3
    assert meta.embedding_dim == 4
    layout = OutputLayout.of(meta)
    assert (layout.width, layout.probability, layout.spread, layout.embedding) == (6, 0, 1, 2)
    assert meta.export.source == "m.keras" and meta.export.check["n_check"] == 9
    assert meta.export.extra["created"] == "x"
    # The file's form is what was read, unknown keys included.
    assert meta.to_json()["student"] == student and meta.to_json()["export"] == export
    with pytest.raises(TypeError):
        meta.student.extra["teacher"]["members"] = 1


def test_read_names_the_file(tmp_path):
    model = tmp_path / "m.keras"
    with pytest.raises(FileNotFoundError, match=r"m\.meta\.json not found"):
        ModelMetadata.read(model)
    metadata_path(model).write_text("{not json")
    with pytest.raises(ValueError, match=r"m\.meta\.json: not valid JSON"):
        ModelMetadata.read(model)
    metadata_path(model).write_text(
        json.dumps({"image_size": 64, "threshold": 2, "class_names": CLASS_NAMES})
    )
    with pytest.raises(ValueError, match=r"m\.meta\.json: threshold must be"):
        ModelMetadata.read(model)


# --------------------------------------------------------------------------- run folder


def test_run_folder_names(tmp_path):
    run = RunFolder(tmp_path)
    assert run.model == tmp_path / "model.keras" and metadata_path(run.model).name == "model.meta.json"
    names = [run.config, run.history, run.learning_curves, run.reliability, run.validation]
    names += [run.validation_predictions, run.timings]
    assert [p.name for p in names] == [
        "config.json",
        "history.csv",
        "learning_curves.png",
        "reliability.png",
        "validation.json",
        "validation_predictions.csv",
        "timings.json",
    ]
    assert run.phase_weights("head") == tmp_path / "checkpoints" / "head.weights.h5"
    assert run.phase_history("head") == tmp_path / "checkpoints" / "head.history.json"
    assert run.phase_backup("head") == tmp_path / "backup" / "head"


def test_saved_model_stores_kernels_in_float16_and_loads_in_float32(tmp_path):
    import zipfile

    import h5py
    import keras
    import numpy as np

    from pneumoscan.models.architectures import build_regularized_cnn
    from pneumoscan.models.artifacts import KERAS_WEIGHTS_FILE, save_model

    keras.utils.set_random_seed(0)
    model = build_regularized_cnn(64)
    model.save(tmp_path / "plain.keras")
    save_model(model, tmp_path / "model.keras")

    with zipfile.ZipFile(tmp_path / "model.keras") as archive, archive.open(KERAS_WEIGHTS_FILE) as fh:
        arrays = []
        h5py.File(fh, "r").visititems(
            lambda name, item: arrays.append(item[()]) if isinstance(item, h5py.Dataset) else None
        )
    arrays = [a for a in arrays if a.size > 1]
    assert {str(a.dtype) for a in arrays if a.ndim >= 2} == {"float16"}
    assert {str(a.dtype) for a in arrays if a.ndim == 1} == {"float32"}  # biases, BatchNorm statistics
    assert (tmp_path / "model.keras").stat().st_size < 0.7 * (tmp_path / "plain.keras").stat().st_size

    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True, compile=False)
    assert {str(w.dtype) for w in loaded.weights} == {"float32"}
    for original, restored in zip(model.weights, loaded.weights, strict=True):
        expected = np.asarray(original)
        if expected.ndim >= 2:
            expected = expected.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(restored), expected, err_msg=original.path)
    x = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)


def test_the_released_model_file_stays_within_budget():
    assert (BUNDLED_MODELS_DIR / "pneumoscan-mobilenetv2.keras").stat().st_size <= 15_000_000


# --------------------------------------------------------------------------- prediction rows


def _csv(columns, rows, digits) -> list[dict]:
    buffer = io.StringIO(newline="")
    write_rows(buffer, columns, rows, digits=digits)
    return list(csv.DictReader(io.StringIO(buffer.getvalue())))


def test_refused_non_radiograph_row_has_a_reason_and_no_probabilities():
    from pneumoscan.inference.scope import REASON_COLOUR, ScopeCheck

    row = prediction_row("photo.jpg", ScopeCheck(False, radiograph=False, reason=REASON_COLOUR))
    assert row["decision"] == "out of scope" and row["in_scope"] is False
    assert row["scope_reason"] == REASON_COLOUR and row["p_pneumonia"] is None and row["error"] == ""
    flagged = make_prediction(0.7, 0.9, scope=ScopeCheck(False, True, "unlike the training images"))
    row = prediction_row("adult.png", flagged)
    assert row["in_scope"] is False and row["p_pneumonia"] == 0.7 and row["decision"] == "uncertain"


def test_prediction_row_round_trips_through_csv():
    good = prediction_row(Path("a.png"), make_prediction(0.8, 0.3))
    bad = prediction_row("b.txt", "not a recognised image", threshold=0.3)
    assert list(good) == list(bad) == list(PREDICTION_COLUMNS)
    assert good["label"] == "PNEUMONIA" and good["error"] == "" and good["p_normal"] == pytest.approx(0.2)
    assert bad["p_pneumonia"] is None and bad["label"] == "" and bad["threshold"] == 0.3
    read = _csv(PREDICTION_COLUMNS, [good, bad], 4)
    assert read[0] == {
        "path": "a.png",
        "p_normal": "0.2000",
        "p_pneumonia": "0.8000",
        "label": "PNEUMONIA",
        "confidence": "0.8000",
        "threshold": "0.3000",
        "decision": "pneumonia suspected",
        "uncertainty": "",
        "in_scope": "True",
        "scope_reason": "",
        "scope_distance": "",
        "error": "",
    }
    assert read[1] == {**{k: "" for k in PREDICTION_COLUMNS}, "path": "b.txt", "threshold": "0.3000"} | {
        "error": "not a recognised image"
    }
    with pytest.raises(TypeError, match="outcome must be a Prediction"):
        prediction_row("c.png", None)


def test_labelled_rows_keep_the_truth_beside_the_prediction():
    from pneumoscan.data.dataset import Sample

    sample = Sample(Path("PNEUMONIA/person1_virus_2.jpeg"), 1, "person1", "virus", "val")
    good = labelled_row(sample, make_prediction(0.25, 0.3))
    bad = labelled_row(sample, "truncated file")
    assert set(good) == set(LABELLED_COLUMNS)
    assert (good["label"], good["predicted"], good["p_pneumonia"]) == (1, 0, 0.25)
    read = _csv(LABELLED_COLUMNS, [good, bad], 6)
    assert read[0]["p_pneumonia"] == "0.250000" and read[0]["patient_id"] == "person1"
    assert (read[1]["p_pneumonia"], read[1]["predicted"], read[1]["error"]) == ("", "", "truncated file")
    read = _csv(VALIDATION_COLUMNS, [{**good, "p_raw": 0.125}], 6)
    assert list(read[0]) == list(VALIDATION_COLUMNS) and read[0]["p_raw"] == "0.125000"


# --------------------------------------------------------------------------- registry and split


def test_registry_feeds_the_cli_the_app_and_the_default():
    from pneumoscan.interfaces.cli import build_parser

    assert TrainConfig().arch in ARCHITECTURES
    assert all(name == a.name and a.label for name, a in ARCHITECTURES.items())
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    arch_action = next(a for a in train._actions if a.dest == "arch")
    assert list(arch_action.choices) == list(ARCHITECTURES)
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg'; choose one of \['baseline'"):
        architecture("vgg")


def test_one_split_for_training_and_export(make_tree):
    from pneumoscan.data.dataset import discover_split, train_val_split
    from pneumoscan.training.export_check import model_split

    data = make_tree() / "train"
    cfg = TrainConfig(arch="baseline", val_fraction=0.3, seed=5)
    meta = ModelMetadata(image_size=64, threshold=0.5, split=cfg.split)
    train, val = train_val_split(discover_split(data), cfg.split)
    assert model_split(meta, data) == (train, val)
    assert {s.patient_id for s in train}.isdisjoint({s.patient_id for s in val}) and val
