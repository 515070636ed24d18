"""Evaluating a model on its own training or validation images (:mod:`pneumoscan.evaluation.overlap`):
found by path and by content, refused or marked, and said when it cannot be checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.config import SplitConfig
from pneumoscan.data.dataset import discover_split, fingerprint, train_val_split
from pneumoscan.evaluation import evaluate
from pneumoscan.evaluation.metrics import format_metrics_table
from pneumoscan.evaluation.overlap import (
    TRAINING_HASHES_KEY,
    VALIDATION_HASHES_KEY,
    TrainingDataOverlapError,
    check_training_overlap,
    file_sha256,
)
from pneumoscan.models.artifacts import ModelMetadata

SPLIT = SplitConfig(val_fraction=0.3, seed=7)


def sidecar(train_dir: Path | str | None, *, split=SPLIT, fp: str | None = "auto", **extra) -> ModelMetadata:
    """The sidecar a model trained on ``train_dir`` with ``SPLIT`` would carry."""
    if fp == "auto":
        train, val = train_val_split(discover_split(train_dir, prefer="train"), split or SplitConfig())
        fp = fingerprint(train + val)
    return ModelMetadata(
        image_size=64,
        threshold=0.5,
        split=split,
        data_dir=None if train_dir is None else str(train_dir),
        data_fingerprint=fp,
        extra=extra,
    )


@pytest.fixture
def data(make_tree) -> Path:
    """``data/train`` and ``data/test`` (synthetic), the model's training split known."""
    return make_tree()


def model_split(data: Path) -> tuple[list[str], list[str]]:
    train, val = train_val_split(discover_split(data / "train"), SPLIT)
    return [str(s.path) for s in train], [str(s.path) for s in val]


def test_a_root_holding_only_train_is_the_models_own_data(data, tmp_path):
    shutil.rmtree(data / "test")
    samples = discover_split(data, prefer="test")  # what `evaluate --data ROOT` sees: train/
    check = check_training_overlap(samples, sidecar(data / "train"))

    train, val = model_split(data)
    assert check.checked and check.note is None
    assert sorted(check.training) == train and sorted(check.validation) == val
    assert check.overlaps_training_data == len(train) > 0
    assert check.chose_the_model is True
    assert "training split of" in check.compared_with


def test_the_test_split_does_not_overlap(data):
    check = check_training_overlap(discover_split(data / "test"), sidecar(data / "train"))
    assert check.checked and check.training == () and check.validation == ()
    assert check.overlaps_training_data == 0 and check.chose_the_model is False


def test_renamed_copies_are_found_by_content(data, tmp_path):
    train, val = model_split(data)
    copies = tmp_path / "elsewhere"
    (copies / "NORMAL").mkdir(parents=True)
    (copies / "PNEUMONIA").mkdir(parents=True)
    trained_copy = copies / ("PNEUMONIA" if "PNEUMONIA" in train[-1] else "NORMAL") / "renamed-1.jpeg"
    shutil.copy(train[-1], trained_copy)
    val_copy = copies / ("PNEUMONIA" if "PNEUMONIA" in val[0] else "NORMAL") / "renamed-2.jpeg"
    shutil.copy(val[0], val_copy)
    shutil.copy(data / "test" / "NORMAL" / "IM-0001-0001.jpeg", copies / "NORMAL" / "unseen.jpeg")

    check = check_training_overlap(discover_split(copies), sidecar(data / "train"))
    assert check.training == (str(trained_copy),)
    assert check.validation == (str(val_copy),)


def test_every_image_a_cross_fitted_ensemble_saw_is_a_training_image(data):
    from pneumoscan.data.dataset import stratified_subset

    folder = discover_split(data / "train")
    subset = stratified_subset(folder, 10, seed=7)
    meta = ModelMetadata(
        image_size=64,
        threshold=0.5,
        data_dir=str(data / "train"),
        data_fingerprint=fingerprint(subset),
        ensemble={"members": 3, "embedding_dim": 0, "folds": 3, "fold_seed": 7, "limit": 10},
    )
    check = check_training_overlap(folder, meta)
    assert check.checked and check.note is None and "cross-fitted" in check.compared_with
    assert sorted(check.training) == [str(s.path) for s in subset] and check.validation == ()
    assert len(check.training) == 10 < len(folder)  # images outside the limit were never seen


def test_the_check_says_when_it_cannot_run(data, tmp_path, caplog):
    samples = discover_split(data / "test")
    for meta, why in [
        (None, "no model sidecar"),
        (sidecar(None, fp=None), "records no training data (data_dir)"),
        (sidecar(tmp_path / "gone" / "train", fp="0123456789abcdef"), "is not on this machine"),
    ]:
        check = check_training_overlap(samples, meta)
        assert not check.checked
        assert check.overlaps_training_data is None and check.chose_the_model is None
        assert check.note.startswith("could not check whether these images were used to train the model")
        assert why in check.note
        assert why in caplog.text  # logged as a warning, not raised


def test_a_changed_training_folder_is_said(data):
    meta = sidecar(data / "train", fp="0123456789abcdef")
    check = check_training_overlap(discover_split(data / "train"), meta)
    assert check.checked and check.training
    assert "changed since training" in check.note and "0123456789abcdef" in check.note


def test_a_relative_data_dir_is_found_from_the_model_file(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "data" / "test")  # not from where the model was trained
    model = tmp_path / "runs" / "r1" / "model.keras"
    meta = sidecar(data / "train").updated(data_dir="data/train")  # as `train --data data/train` records it
    check = check_training_overlap(discover_split(data / "train"), meta, model_path=model)
    assert check.checked and len(check.training) + len(check.validation) == 14


def test_stored_hashes_are_used_first(data, tmp_path):
    train, val = model_split(data)
    meta = sidecar(
        tmp_path / "not-here",
        fp=None,
        **{
            TRAINING_HASHES_KEY: [file_sha256(train[0])],
            VALIDATION_HASHES_KEY: [file_sha256(val[0])[:16]],  # a prefix is enough
        },
    )
    check = check_training_overlap(discover_split(data / "train"), meta)
    assert check.checked and "stored in the model's sidecar" in check.compared_with
    assert check.training == (train[0],) and check.validation == (val[0],)


# --------------------------------------------------------------------------- evaluate_folder


class MeanGreyPredictor:
    """P(pneumonia) = mean grey level / 255; carries a sidecar like a real Predictor."""

    threshold = 0.5
    image_size = 64

    def __init__(self, metadata: ModelMetadata, model_path: Path):
        self.metadata, self.model_path, self.calls = metadata, model_path, 0

    def predict_paths(self, paths, *, tta=False, progress=True):
        from types import SimpleNamespace

        from pneumoscan.data.imaging import read_image

        self.calls += 1
        p = np.array([read_image(path).gray.mean() / 255.0 for path in paths])
        return SimpleNamespace(p_pneumonia=p, errors=[None] * len(paths))


def test_evaluate_refuses_training_images_before_predicting(data, tmp_path):
    predictor = MeanGreyPredictor(sidecar(data / "train"), tmp_path / "model.keras")
    out = tmp_path / "eval"
    with pytest.raises(TrainingDataOverlapError) as raised:
        evaluate.evaluate_folder(discover_split(data / "train"), predictor, out_dir=out, progress=False)
    message = str(raised.value)
    n_train = len(model_split(data)[0])
    assert message.startswith(f"{n_train} of the 14 images to evaluate were used to train {tmp_path}")
    assert "--allow-training-data" in message
    assert predictor.calls == 0 and not out.exists()


def test_evaluate_with_the_override_marks_the_report(data, tmp_path):
    predictor = MeanGreyPredictor(sidecar(data / "train"), tmp_path / "model.keras")
    out = tmp_path / "eval"
    report = evaluate.evaluate_folder(
        discover_split(data / "train"),
        predictor,
        out_dir=out,
        n_boot=20,
        progress=False,
        allow_training_data=True,
    )
    train, val = model_split(data)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["overlaps_training_data"] == report["overlaps_training_data"] == len(train)
    assert on_disk["chose_the_model"] is True
    assert sorted(on_disk["data_overlap"]["training_files"]) == train
    assert on_disk["data_overlap"]["validation_images"] == len(val)
    table = format_metrics_table(report)
    assert table.startswith(f"WARNING: {len(train)} of the images evaluated were used to train this model")
    assert f"NOTE: {len(val)} of these images are the model's validation split" in table


def test_evaluate_on_unseen_images_is_unmarked(data, tmp_path):
    predictor = MeanGreyPredictor(sidecar(data / "train"), tmp_path / "model.keras")
    report = evaluate.evaluate_folder(
        discover_split(data / "test"), predictor, out_dir=tmp_path / "e", n_boot=20, progress=False
    )
    assert report["overlaps_training_data"] == 0 and report["chose_the_model"] is False
    assert report["data_overlap"]["checked"] is True
    assert not format_metrics_table(report).startswith(("WARNING", "NOTE"))
