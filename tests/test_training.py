"""Training works end to end on tiny data: every architecture, seeds, resume, weights, multi-device.

These tests check that training *works* (a complete, loadable run folder), not how well it learns:
model quality is measured by the benchmarks and recorded in models/MODEL_CARD.md. Two things are
kept apart: what the split that chose the threshold shows (only the chooser's own property: its
target recall, there) and what unseen data shows (the real-data test: better than chance on
patients the run never saw).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pneumoscan.config import TrainConfig
from pneumoscan.testing.models import TINY_NAMES, mobilenet_weights_available
from pneumoscan.training.engine import Trainer
from pneumoscan.training.recipes import resume, train

RUN_FILES = (
    "model.keras",
    "model.meta.json",
    "config.json",
    "history.csv",
    "learning_curves.png",
    "validation.json",
    "validation_predictions.csv",
    "timings.json",
)


def tiny_config(arch: str, **overrides) -> TrainConfig:
    options = dict(
        arch=arch,
        image_size=64 if arch == "mobilenetv2" else 32,
        batch_size=8,
        epochs=1,
        head_epochs=1,
        finetune_epochs=1,
        augmented_views=1,
        val_fraction=0.3,
        seed=7,
        members=1,  # one model on a validation split; the ensemble has tests of its own below
    )
    return TrainConfig(**{**options, **overrides})


needs_weights = pytest.mark.skipif(
    not mobilenet_weights_available(),
    reason="MobileNetV2 ImageNet weights not in the Keras cache (set KERAS_HOME to ../shared/keras)",
)


def validation_rows(run_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(true labels, P(pneumonia), predicted labels)`` of a run's ``validation_predictions.csv``."""
    with open(run_dir / "validation_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["label"]) for r in rows])
    return y, np.array([float(r["p_pneumonia"]) for r in rows]), np.array([int(r["predicted"]) for r in rows])


def assert_chooser_reaches_target_on_its_own_split(run_dir, metrics, threshold):
    """The threshold is ``threshold_for_recall`` of the run's own validation predictions, so it
    reaches the target recall *there*: a property of the chooser on the data that chose it, which
    says nothing about unseen images (the real-data test below checks those). The report's recall
    is the one its rows show."""
    from pneumoscan.evaluation.metrics import threshold_for_recall

    y, p, predicted = validation_rows(run_dir)
    target = TrainConfig().target_recall
    # The CSV keeps 6 decimals; rounding keeps the order, so the chosen score moves by < 1e-6.
    assert threshold_for_recall(y, p, target_recall=target) == pytest.approx(threshold, abs=1e-6)
    recall = float(predicted[y == 1].mean())
    assert recall == pytest.approx(metrics["recall"]) and recall >= target


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch", ["baseline", "regularized", pytest.param("mobilenetv2", marks=needs_weights)]
)
@pytest.mark.required
def test_each_architecture_trains_into_a_complete_loadable_run(arch, make_tree, tmp_path):
    data = make_tree(TINY_NAMES, size=(80, 72))
    run_dir = tmp_path / f"run-{arch}"
    metrics = train(tiny_config(arch), data / "train", run_dir, progress=False)

    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing from the run folder"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == arch and config["seed"] == 7
    assert len(config["data_fingerprint"]) == 16
    assert {"tensorflow", "keras", "numpy", "python"} <= set(config["versions"])
    assert config["split"]["train_images"] + config["split"]["val_images"] == 25

    from pneumoscan.inference.predictor import Predictor

    predictor = Predictor(run_dir / "model.keras")
    assert predictor.metadata.arch == arch
    assert 0.0 < predictor.threshold < 1.0
    assert_chooser_reaches_target_on_its_own_split(run_dir, metrics, predictor.threshold)
    rows = (run_dir / "validation_predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + metrics["n"]


def test_same_seed_gives_the_same_split_and_another_seed_a_different_one(make_tree, tmp_path):
    data = make_tree(TINY_NAMES)

    def val_files(seed):
        trainer = Trainer(tiny_config("baseline", seed=seed), data / "train", tmp_path / "r", progress=False)
        _, val = trainer.load_data()
        return [s.path.name for s in val.samples], trainer.fingerprint

    first, fp1 = val_files(1)
    again, fp2 = val_files(1)
    other, _ = val_files(2)
    assert first == again and fp1 == fp2
    assert first != other


def test_missing_imagenet_weights_stop_with_instructions(monkeypatch):
    from keras.src.utils import file_utils

    from pneumoscan.models.architectures import WeightsUnavailableError, build_mobilenetv2

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError, match="KERAS_HOME"):
        build_mobilenetv2(96)


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(make_tree, tmp_path, monkeypatch):
    import keras

    from pneumoscan.training import engine as training

    data = make_tree(TINY_NAMES)
    run_dir = tmp_path / "run"
    cfg = tiny_config("baseline", epochs=3)

    real_restore_best = training._RestoreBest

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated interruption after epoch 2")

    def restore_best_then_crash(monitor="val_auc"):
        callback = real_restore_best(monitor)
        original = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            original(epoch, logs)
            Crash().on_epoch_end(epoch, logs)

        callback.on_epoch_end = on_epoch_end
        return callback

    monkeypatch.setattr(training, "_RestoreBest", restore_best_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data / "train", run_dir, progress=False)
    assert not (run_dir / "model.keras").exists()
    assert any((run_dir / "backup").rglob("*")), "no backup was written before the interruption"

    monkeypatch.setattr(training, "_RestoreBest", real_restore_best)
    resume(run_dir, progress=False)
    assert (run_dir / "model.keras").is_file()
    history = (run_dir / "history.csv").read_text().splitlines()
    epochs = [int(line.split(",")[history[0].split(",").index("epoch")]) for line in history[1:]]
    assert epochs == [3], f"resume should run only the third epoch, ran {epochs}"


def train_mirrored_on_two_logical_cpus(script: str, *, timeout: int) -> None:
    """Run ``script`` in a fresh CPU-only Python whose one CPU is split into two logical devices,
    so that ``distribute="mirrored"`` really has two replicas; it must exit 0 and see both."""
    preamble = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pneumoscan.training.engine import _strategy
print("replicas", _strategy("mirrored").num_replicas_in_sync)
"""
    result = subprocess.run(
        [sys.executable, "-c", preamble + script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2" in result.stdout


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_logical_cpus(make_tree, tmp_path):
    data = make_tree(TINY_NAMES)
    train_mirrored_on_two_logical_cpus(
        f"""
from pneumoscan.config import TrainConfig
from pneumoscan.testing.models import mobilenet_weights_available
from pneumoscan.training.engine import Trainer
cfg = TrainConfig(arch="regularized", image_size=32, batch_size=8, epochs=1, val_fraction=0.3, seed=7,
                  distribute="mirrored")
Trainer(cfg, {str(data / "train")!r}, {str(tmp_path / "run")!r}, progress=False).run()
""",
        timeout=600,
    )
    assert (tmp_path / "run" / "model.keras").is_file()


@pytest.mark.slow
@needs_weights
@pytest.mark.required
def test_mobilenetv2_trains_on_a_slice_of_the_real_data(shared_data, tmp_path):
    """80 real images, two short phases: the run's report is what its saved file answers, its
    sidecar round-trips, and on patients it never saw it ranks pneumonia above normal better than
    chance."""
    from sklearn.metrics import roc_auc_score

    from pneumoscan.data.dataset import discover_split, train_val_split
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.models.artifacts import ModelMetadata

    cfg = tiny_config("mobilenetv2", image_size=96, limit=80, val_fraction=0.2)
    run_dir = tmp_path / "run"
    metrics = train(cfg, shared_data / "train", run_dir, progress=False)
    assert metrics["n"] >= 10
    assert np.isfinite(metrics["brier"])

    # The validation report is the saved model's answer, read from the files by the Predictor.
    predictor = Predictor(run_dir / "model.keras")
    with open(run_dir / "validation_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    served = predictor.predict_paths([row["path"] for row in rows], progress=False).p_pneumonia
    np.testing.assert_allclose(served, [float(row["p_pneumonia"]) for row in rows], atol=2e-6)
    assert predictor.threshold == metrics["threshold"]
    assert_chooser_reaches_target_on_its_own_split(run_dir, metrics, predictor.threshold)

    # The sidecar round-trips: read, written elsewhere, read again, it is the same record.
    meta = ModelMetadata.read(run_dir / "model.keras")
    meta.write(tmp_path / "copy.keras")
    assert ModelMetadata.read(tmp_path / "copy.keras") == meta

    # Generalisation only on data that chose nothing: patients outside the run's 80-image subset.
    samples = discover_split(shared_data / "train", prefer="train")
    seen = {s.patient_id for part in train_val_split(samples, cfg.split) for s in part}
    unseen = [s for s in samples if s.patient_id not in seen]
    held_out = [s for label in (0, 1) for s in [s for s in unseen if s.label == label][::37][:30]]
    p = predictor.predict_paths([s.path for s in held_out], progress=False).p_pneumonia
    auc = roc_auc_score([s.label for s in held_out], p)
    # Chance is 0.5; with 30 images a class its standard error is about 0.075, so 0.7 is ~2.7 of them.
    assert auc >= 0.7, f"ROC AUC {auc:.3f} on {len(held_out)} images of unseen patients"


# --------------------------------------------------------------------------- the ensemble


def tiny_ensemble_config(**overrides) -> TrainConfig:
    return tiny_config("mobilenetv2", members=3, **overrides)


@pytest.mark.slow
@needs_weights
@pytest.mark.required
def test_ensemble_is_cross_fitted_and_serves_its_members(make_tree, tmp_path):
    from pneumoscan.inference.predictor import Predictor

    data = make_tree(TINY_NAMES, size=(80, 72))
    run_dir = tmp_path / "ens"
    metrics = train(tiny_ensemble_config(member_split="folds"), data / "train", run_dir, progress=False)

    for name in RUN_FILES:
        assert (run_dir / name).is_file(), f"{name} missing from the run folder"
    config = json.loads((run_dir / "config.json").read_text())
    folds = config["members_held_out"]["held_out_by_member_and_class"]
    assert config["members_held_out"]["member_split"] == "folds"
    assert len(folds) == 3 and all(n_normal > 0 and n_pneumonia > 0 for n_normal, n_pneumonia in folds)
    assert sum(map(sum, folds)) == 25 == metrics["n"]  # every image has an out-of-fold prediction
    assert len((run_dir / "validation_predictions.csv").read_text().splitlines()) == 1 + 25
    assert metrics["serving_check"]["passed"], metrics["serving_check"]
    assert metrics["calibration"]["cross_validated"]["chosen"] == metrics["calibration"]["method"]
    assert len(metrics["members"]["each"]) == 3
    assert set(metrics["stress"]["shifts"])
    # The threshold was chosen on every held-out prediction, clean and shifted: the chooser's target
    # holds on those pooled (same positives twice, so their recall is the mean), not on either alone.
    y, _, predicted = validation_rows(run_dir)
    assert float(predicted[y == 1].mean()) == pytest.approx(metrics["recall"])
    pooled_recall = (metrics["recall"] + metrics["shifted"]["recall"]) / 2
    assert pooled_recall >= TrainConfig().target_recall - 1e-12

    predictor = Predictor(run_dir / "model.keras")
    assert predictor.members == 3 and predictor.metadata.ensemble.members == 3
    # Fold members train fixed epochs: their out-of-fold figures chose no epoch.
    assert predictor.metadata.held_out.chose == ("calibration", "threshold", "band")
    assert predictor.metadata.held_out.measured_on.startswith("out-of-fold")
    # Weights only: no optimizer state saved with the members (it would triple the file).
    n_weights = sum(int(np.prod(w.shape)) for w in predictor.model.weights)
    assert (run_dir / "model.keras").stat().st_size < 4 * n_weights * 1.2
    x = np.stack([np.full((64, 64, 1), v, np.uint8) for v in (40, 120, 200)])
    details = predictor.predict_details(x)
    assert details.members.shape == (3, 3) and details.embedding.shape == (3, predictor.embedding_dim)
    np.testing.assert_allclose(details.p_pneumonia, details.members.mean(axis=1))
    np.testing.assert_allclose(details.spread, details.members.std(axis=1))
    assert ((details.p_pneumonia > 0) & (details.p_pneumonia < 1)).all()


@pytest.mark.slow
@needs_weights
@pytest.mark.required
def test_default_ensemble_members_keep_their_best_epoch_on_their_own_validation_split(make_tree, tmp_path):
    """The default recipe: each member trains like a single model, on all but its own seeded
    patient-level validation split, keeping its best epoch there; calibration, threshold and band
    are fitted on those held-out predictions, the guard on every image."""
    import csv

    from pneumoscan.inference.predictor import Predictor

    assert TrainConfig().member_split == "validation"
    data = make_tree(TINY_NAMES, size=(80, 72))
    run_dir = tmp_path / "ens"
    metrics = train(tiny_ensemble_config(finetune_epochs=2), data / "train", run_dir, progress=False)
    held = json.loads((run_dir / "config.json").read_text())["members_held_out"]
    assert held["member_split"] == "validation" and len(held["held_out_by_member_and_class"]) == 3
    assert all(n0 > 0 and n1 > 0 for n0, n1 in held["held_out_by_member_and_class"])
    scored = 25 - held["held_out_by_no_member"]
    assert 0 < scored < 25 and metrics["n"] == scored  # only images some member held out are scored
    assert len((run_dir / "validation_predictions.csv").read_text().splitlines()) == 1 + scored
    with open(run_dir / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    for k in range(3):  # each phase of each member marks the epoch it kept, chosen on val_auc
        for phase in (f"member{k}_head", f"member{k}_finetune"):
            assert sum(int(r["best"]) for r in rows if r["phase"] == phase) == 1, phase
    predictor = Predictor(run_dir / "model.keras")
    assert predictor.metadata.ensemble.member_split == "validation"
    assert len(predictor.metadata.scope["mean"]) > 0 and metrics["serving_check"]["passed"]
    # The sidecar says what its held-out figures are: one member's, on images that chose its epochs.
    held_out = predictor.metadata.held_out
    assert held_out.metrics["n"] == scored and "scored by that member" in held_out.measured_on
    assert held_out.chose == ("epochs", "calibration", "threshold", "band")


@pytest.mark.slow
@needs_weights
def test_ensemble_resume_skips_the_members_already_trained(make_tree, tmp_path, monkeypatch):
    from pneumoscan.training import ensemble

    data = make_tree(TINY_NAMES)
    run_dir = tmp_path / "ens"
    real = ensemble.EnsembleTrainer.train_member
    trained = []

    def crash_on_member_1(self, k, *args, **kwargs):
        if k == 1:
            raise KeyboardInterrupt("simulated interruption in member 1")
        return real(self, k, *args, **kwargs)

    monkeypatch.setattr(ensemble.EnsembleTrainer, "train_member", crash_on_member_1)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_ensemble_config(), data / "train", run_dir, progress=False)
    assert (run_dir / "checkpoints" / "member0_finetune.weights.h5").is_file()
    assert not (run_dir / "model.keras").exists()

    from pneumoscan.training import engine

    real_fit = engine.Trainer._fit

    def spy_fit(self, phase, *args, **kwargs):
        trained.append(phase.name)
        return real_fit(self, phase, *args, **kwargs)

    monkeypatch.setattr(ensemble.EnsembleTrainer, "train_member", real)
    monkeypatch.setattr(engine.Trainer, "_fit", spy_fit)
    resume(run_dir, progress=False)
    assert (run_dir / "model.keras").is_file()
    assert trained == ["member1_head", "member1_finetune", "member2_head", "member2_finetune"]


@pytest.mark.slow
@needs_weights
@pytest.mark.required
def test_mirrored_strategy_trains_the_default_recipe(make_tree, tmp_path):
    data = make_tree(TINY_NAMES)
    train_mirrored_on_two_logical_cpus(
        f"""
from pneumoscan.config import TrainConfig
from pneumoscan.testing.models import mobilenet_weights_available
from pneumoscan.training.recipes import train
default = TrainConfig()
cfg = TrainConfig(arch=default.arch, members=default.members, image_size=64, batch_size=8, head_epochs=1,
                  finetune_epochs=1, seed=7, distribute="mirrored")
train(cfg, {str(data / "train")!r}, {str(tmp_path / "run")!r}, progress=False)
""",
        timeout=900,
    )
    meta = json.loads((tmp_path / "run" / "model.meta.json").read_text())
    assert meta["ensemble"]["members"] == TrainConfig().members > 1
