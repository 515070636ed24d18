"""The training engine behind ``pneumoscan train``: data -> split -> fit -> calibrate -> run folder.

A run folder holds everything needed to use, audit or resume the run::

    model.keras               the best model (chosen on validation), loadable in safe mode
    model.meta.json           sidecar read by the Predictor: image size, threshold, calibration
    config.json               every option, the seed, data fingerprint, split sizes, versions
    history.csv               per-epoch metrics of every phase, train and validation
    learning_curves.png       loss, AUC and recall per epoch, train vs validation
    validation.json           metrics on the validation split at the operating threshold
    validation_predictions.csv  one row per validation image
    checkpoints/, backup/     for ``--resume``

MobileNetV2 is trained in two phases on a frozen *stem*: the backbone up to the last frozen block
is run once per image and augmented view, and its output is cached. Phase 1 fits the head, phase 2
fine-tunes the top blocks, both on the cache, so the backbone is not recomputed every epoch.
BatchNorm stays in inference mode throughout.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from pneumoscan import __version__
from pneumoscan.config import TrainConfig
from pneumoscan.data.augment import build_augmenter
from pneumoscan.data.dataset import (
    DecodedSet,
    class_weights,
    decode_samples,
    discover_split,
    fingerprint,
    make_dataset,
    train_val_split,
)
from pneumoscan.evaluation import figures
from pneumoscan.evaluation import metrics as metrics_lib
from pneumoscan.models.architectures import architecture, mobilenet_cut_layer, set_finetune_trainable
from pneumoscan.models.artifacts import ModelMetadata, RunFolder, save_model
from pneumoscan.models.calibration import PlattCalibrator
from pneumoscan.models.sections import HeldOutFigures
from pneumoscan.plotting import save as save_figure
from pneumoscan.training.run_files import package_versions, write_history, write_validation_predictions

log = logging.getLogger(__name__)

#: Validation metrics copied into the model's sidecar (the app's model card shows them).
SIDECAR_VALIDATION_METRICS = (
    "n",
    "accuracy",
    "recall",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "pr_auc",
    "ece",
)


class _RestoreBest(keras.callbacks.Callback):
    """Remember the weights of the best validation epoch and restore them when training ends.

    Parameters
    ----------
    monitor : str or None
        The logged metric to maximise, e.g. ``"val_auc"``; ``None`` keeps the last epoch.
    """

    def __init__(self, monitor: str | None = "val_auc"):
        super().__init__()
        self.monitor = monitor
        self.best, self.best_weights, self.best_epoch = -np.inf, None, None

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor) if self.monitor else None
        if value is not None and value > self.best:
            self.best, self.best_epoch = value, epoch
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)
            log.info("restored epoch %d (%s=%.4f)", self.best_epoch + 1, self.monitor, self.best)


def compile_model(model, learning_rate: float, label_smoothing: float) -> None:
    """Compile ``model`` as every training phase does (Adam, binary cross-entropy with label
    smoothing, AUC/recall/precision/accuracy); public so benchmarks time the same step."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing),
        metrics=[
            keras.metrics.AUC(name="auc"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.BinaryAccuracy(name="accuracy"),
        ],
    )


def _strategy(name: str):
    import tensorflow as tf

    if name != "mirrored":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    log.info("MirroredStrategy over %s", devices)
    return tf.distribute.MirroredStrategy(devices=devices)


@dataclasses.dataclass
class _Phase:
    name: str
    model: object  # the keras.Model being fitted
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    epochs: int
    learning_rate: float
    augment: object = None
    # Keep the epoch with the best validation AUC. Off for cross-fitted ensemble members, whose
    # "validation" is the fold they predict out of fold: choosing on it would flatter those
    # predictions, and every calibration and threshold fitted on them.
    restore_best: bool = True
    # Per-image training weights (``imbalance="setup_balanced"``); they replace the class weights.
    sample_weight: np.ndarray | None = None


class Trainer:
    """Runs one training job into ``run_dir``. Use :func:`train` unless you need the pieces."""

    def __init__(self, cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, *, progress: bool = True):
        self.cfg, self.data_dir, self.run_dir, self.progress = cfg, Path(data_dir), Path(run_dir), progress
        self.files = RunFolder(self.run_dir)
        self.arch = architecture(cfg.arch)  # ValueError naming the registered ones
        self.history_rows: list[dict] = []
        self.phase_boundaries: list[int] = []
        self.timings: dict[str, dict] = {}

    @contextmanager
    def timed(self, name: str, images: int = 0):
        """Record the wall time (and images/s when ``images``) of a stage into ``timings.json``."""
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        self.timings[name] = {
            "seconds": round(seconds, 2),
            "images": images,
            "images_per_s": round(images / seconds, 1) if images and seconds else None,
        }
        log.info("%s: %.1f s", name, seconds)
        if self.run_dir.is_dir():
            self.files.timings.write_text(json.dumps(self.timings, indent=2) + "\n")

    # ------------------------------------------------------------------ data

    def load_data(self) -> tuple[DecodedSet, DecodedSet]:
        cfg = self.cfg
        train_s, val_s = train_val_split(discover_split(self.data_dir, prefer="train"), cfg.split)
        samples = train_s + val_s
        if not train_s or not val_s or len({s.label for s in val_s}) < 2:
            raise ValueError(
                f"{self.data_dir}: too few images or patients ({len(samples)} images) for a patient-level "
                "validation split holding both classes"
            )
        log.info("decoding %d training and %d validation images", len(train_s), len(val_s))
        with self.timed("decode", len(samples)):
            train = decode_samples(train_s, cfg.image_size, progress=self.progress)
            val = decode_samples(val_s, cfg.image_size, progress=self.progress)
        self.fingerprint = fingerprint(samples)
        return train, val

    def write_config(self, train: DecodedSet, val: DecodedSet) -> None:
        record = {
            **self.cfg.to_dict(),
            "data_dir": str(self.data_dir),
            "data_fingerprint": self.fingerprint,
            "split": {
                "train_images": len(train.y),
                "val_images": len(val.y),
                "train_by_class": np.bincount(train.y, minlength=2).tolist(),
                "val_by_class": np.bincount(val.y, minlength=2).tolist(),
                "train_patients": len({s.patient_id for s in train.samples}),
                "val_patients": len({s.patient_id for s in val.samples}),
            },
            "class_weight": class_weights(train.y) if self.cfg.imbalance == "class_weight" else None,
            "skipped": [{"path": str(s.path), "error": e} for s, e in train.skipped + val.skipped],
            "versions": package_versions(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self.files.config.write_text(json.dumps(record, indent=2) + "\n")

    # ------------------------------------------------------------------ fitting

    def fit_phase(self, phase: _Phase) -> None:
        """Fit one phase with best-epoch restore and resumable backups; skip if already done."""

        cfg = self.cfg
        done = self.files.phase_weights(phase.name)
        if done.exists():
            log.info("phase %s already finished; loading %s", phase.name, done)
            phase.model.load_weights(done)
            self._load_history(phase.name)
            return
        with self.strategy.scope():
            compile_model(phase.model, phase.learning_rate, cfg.label_smoothing)
        balanced = cfg.imbalance == "balanced_sampling"
        train_ds = make_dataset(
            phase.train_x,
            phase.train_y,
            batch_size=cfg.batch_size,
            shuffle=True,
            augment=phase.augment,
            balanced=balanced,
            seed=cfg.seed,
            drop_remainder=cfg.distribute == "mirrored",
            sample_weight=phase.sample_weight,
        )
        val_batch = cfg.batch_size * 2
        if self.strategy.num_replicas_in_sync > 1:
            # Keras cannot split a short last batch over replicas: pad validation to whole batches
            # with zero-weight copies, which leaves every metric unchanged.
            pad = -len(phase.val_y) % val_batch
            weights = np.r_[np.ones(len(phase.val_y)), np.zeros(pad)].astype(np.float32)
            val_ds = make_dataset(
                np.concatenate([phase.val_x, phase.val_x[:1].repeat(pad, axis=0)]),
                np.r_[phase.val_y, np.zeros(pad, dtype=phase.val_y.dtype)],
                batch_size=val_batch,
                sample_weight=weights,
            )
        else:
            val_ds = make_dataset(phase.val_x, phase.val_y, batch_size=val_batch)
        restore_best = _RestoreBest("val_auc" if phase.restore_best else None)
        with self.timed(f"fit_{phase.name}", len(phase.train_y) * phase.epochs):
            history = self._fit(phase, train_ds, val_ds, balanced, restore_best)
        done.parent.mkdir(parents=True, exist_ok=True)
        phase.model.save_weights(done)
        # history.epoch holds absolute epoch indices, so a resumed phase keeps its numbering.
        rows = [
            {
                "phase": phase.name,
                "epoch": epoch + 1,
                **{k: float(v[i]) for k, v in history.history.items()},
                "best": int(epoch == restore_best.best_epoch),
            }
            for i, epoch in enumerate(history.epoch)
        ]
        self.files.phase_history(phase.name).write_text(json.dumps(rows))
        self._append_history(rows)

    def _fit(self, phase: _Phase, train_ds, val_ds, balanced: bool, restore_best):
        cfg = self.cfg
        return phase.model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=phase.epochs,
            shuffle=False,  # the dataset shuffles itself, seeded
            steps_per_epoch=int(np.ceil(len(phase.train_y) / cfg.batch_size)) if balanced else None,
            class_weight=(
                class_weights(phase.train_y)
                # setup_balanced falls back to class weights when the data is too small to score
                # the set-up (Trainer.setup_scores).
                if cfg.imbalance in ("class_weight", "setup_balanced") and phase.sample_weight is None
                else None
            ),
            callbacks=[
                keras.callbacks.BackupAndRestore(str(self.files.phase_backup(phase.name))),
                restore_best,
            ],
            verbose=1 if self.progress else 0,
        )

    def _load_history(self, name: str) -> None:
        path = self.files.phase_history(name)
        if path.exists():
            self._append_history(json.loads(path.read_text()))

    def _append_history(self, rows: list[dict]) -> None:
        if self.history_rows:
            self.phase_boundaries.append(len(self.history_rows))
        self.history_rows += rows

    def setup_scores(self, images: DecodedSet) -> np.ndarray | None:
        """With ``imbalance="setup_balanced"``, the set-up score of every image (the shortcut
        audit's cross-fitted border model, :func:`~pneumoscan.evaluation.shortcuts.setup_scores`),
        recorded in ``timings.json``; else None."""
        if self.cfg.imbalance != "setup_balanced":
            return None
        from pneumoscan.evaluation.shortcuts import setup_scores

        groups = [s.patient_id for s in images.samples]
        patients_per_class = min(
            len({g for g, y in zip(groups, images.y, strict=True) if y == c}) for c in (0, 1)
        )
        if patients_per_class < 5:
            log.warning(
                "too few patients (%d in the smaller class) to score the acquisition set-up: "
                "class weights instead of set-up balanced weights",
                patients_per_class,
            )
            self.timings["setup_scores"] = {"skipped": "fewer than 5 patients in a class"}
            return None
        with self.timed("setup_scores", len(images.y)):
            return setup_scores(images.x, images.y, groups, seed=self.cfg.seed)

    @staticmethod
    def image_weights(setup: np.ndarray | None, y: np.ndarray, views: int) -> np.ndarray | None:
        """Set-up balanced weights of images ``y`` (set-up scores ``setup``), tiled over ``views``."""
        if setup is None:
            return None
        from pneumoscan.evaluation.shortcuts import setup_balanced_weights

        return np.tile(setup_balanced_weights(setup, y), views)

    def train_cnn(self, model, train: DecodedSet, val: DecodedSet) -> None:
        augment = self.cfg.augment if self.arch.augment_inputs else None
        self.fit_phase(
            _Phase(
                "train",
                model,
                train.x,
                train.y,
                val.x,
                val.y,
                self.cfg.epochs,
                self.cfg.learning_rate,
                augment,
                sample_weight=self.image_weights(self.setup_scores(train), train.y, 1),
            )
        )

    def stem_features(self, stem, x: np.ndarray, *, augment: bool, seed: int, desc: str) -> np.ndarray:
        """Run the frozen stem over ``x`` once (optionally augmented): float16 features."""
        import tensorflow as tf
        from tqdm.auto import tqdm

        augmenter = build_augmenter(self.cfg.augment, seed=seed) if augment else None

        @tf.function(reduce_retracing=True)
        def run(batch):
            batch = tf.cast(batch, tf.float32)
            if augmenter is not None:
                batch = augmenter(batch, training=True)
            return stem(batch, training=False)

        out = []
        batch_size = 64
        for start in tqdm(
            range(0, len(x), batch_size), desc=desc, unit="batch", disable=not self.progress, leave=False
        ):
            out.append(run(x[start : start + batch_size]).numpy().astype(np.float16))
        return np.concatenate(out)

    def train_mobilenet(self, model, train: DecodedSet, val: DecodedSet) -> None:
        """Two phases on a cached frozen stem: the head on pooled features, then the top blocks."""
        cfg = self.cfg
        cut = mobilenet_cut_layer(model, cfg.unfreeze_blocks)
        cut_tensor = model.get_layer(cut).output
        stem = keras.Model(model.input, cut_tensor, name="stem")
        n_views = 1 + cfg.augmented_views
        weights = self.image_weights(self.setup_scores(train), train.y, n_views)
        with self.timed("stem_features", len(train.y) * n_views + len(val.y)):
            views = [
                self.stem_features(stem, train.x, augment=False, seed=cfg.seed, desc="stem features (clean)")
            ]
            for v in range(cfg.augmented_views):
                views.append(
                    self.stem_features(
                        stem,
                        train.x,
                        augment=True,
                        seed=cfg.seed + 101 * (v + 1),
                        desc=f"stem features (view {v + 1}/{cfg.augmented_views})",
                    )
                )
            train_f, train_y = np.concatenate(views), np.tile(train.y, n_views)
            val_f = self.stem_features(stem, val.x, augment=False, seed=cfg.seed, desc="stem features (val)")
            del views

        # Phase 1: the head, on pooled features of the still-frozen top (computed once).
        pooled_tensor = model.get_layer("avg_pool").output
        frozen_top = keras.Model(cut_tensor, pooled_tensor, name="frozen_top")
        with self.timed("pooled_features", len(train_f) + len(val_f)):
            train_p = frozen_top.predict(train_f.astype(np.float32), batch_size=256, verbose=0)
            val_p = frozen_top.predict(val_f.astype(np.float32), batch_size=256, verbose=0)
        # Models made inside the scope carry the strategy into fit (optimizer variables included).
        with self.strategy.scope():
            head = keras.Model(pooled_tensor, model.output, name="head")
        self.fit_phase(
            _Phase(
                "head",
                head,
                train_p,
                train_y,
                val_p,
                val.y,
                cfg.head_epochs,
                cfg.head_learning_rate,
                sample_weight=weights,
            )
        )

        # Phase 2: fine-tune the top blocks and the head together, BatchNorm kept frozen.
        if cfg.finetune_epochs > 0:
            set_finetune_trainable(model, cut)
            with self.strategy.scope():
                top = keras.Model(cut_tensor, model.output, name="top")
            self.fit_phase(
                _Phase(
                    "finetune",
                    top,
                    train_f,
                    train_y,
                    val_f,
                    val.y,
                    cfg.finetune_epochs,
                    cfg.finetune_learning_rate,
                    sample_weight=weights,
                )
            )

    # ------------------------------------------------------------------ after fitting

    def finalise(self, model, val: DecodedSet) -> dict:
        """Save the model, calibrate and pick the threshold on validation, write the reports.

        Validation predictions go through the serving path itself (the Predictor on the saved
        file), so what is measured is what ships.
        """
        from pneumoscan.inference.predictor import Predictor

        cfg = self.cfg
        meta = ModelMetadata(
            image_size=cfg.image_size,
            threshold=0.5,  # until calibration picks it, below
            arch=cfg.arch,
            target_recall=cfg.target_recall,
            split=cfg.split,
            data_dir=str(self.data_dir),
            data_fingerprint=self.fingerprint,
            pneumoscan_version=__version__,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        save_model(model, self.files.model)
        meta.write(self.files.model)
        predictor = Predictor(self.files.model)
        raw = predictor.predict_raw(val.x)
        calibrator, threshold = calibrate(val.y, raw, target_recall=cfg.target_recall)
        metrics = validation_metrics(predictor, val, raw, calibrator, threshold, seed=cfg.seed)
        self.files.validation.write_text(json.dumps(metrics, indent=2) + "\n")
        held_out = HeldOutFigures(
            {k: metrics[k] for k in SIDECAR_VALIDATION_METRICS},
            measured_on=(
                f"the model's patient-level validation split ({cfg.split.val_fraction:.0%} of the "
                f"training folder's patients, seed {cfg.split.seed})"
            ),
        )
        dataclasses.replace(meta, threshold=threshold, calibration=calibrator, held_out=held_out).write(
            self.files.model
        )
        p_cal = calibrator.transform(raw)
        write_validation_predictions(self.files.validation_predictions, val, raw, p_cal, threshold)
        if self.history_rows:
            write_history(self.files, self.history_rows, self.phase_boundaries)
        save_figure(figures.reliability_figure(val.y, raw, p_cal), self.files.reliability)
        shutil.rmtree(self.files.backup, ignore_errors=True)
        return metrics

    def prepare_run_dir(self, *, resume: bool) -> None:
        """Create the run folder (refusing a finished run unless resuming), clear stale checkpoints
        of a fresh run, and seed Keras, NumPy and Python with ``cfg.seed``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.files.model.exists():
            raise FileExistsError(f"{self.run_dir} already holds a finished run; choose another --out")
        if not resume:
            shutil.rmtree(self.files.checkpoints, ignore_errors=True)
            shutil.rmtree(self.files.backup, ignore_errors=True)
        keras.utils.set_random_seed(self.cfg.seed)

    def run(self, *, resume: bool = False) -> dict:
        """Load the data, fit, finalise; with ``resume``, skip the phases already finished."""
        cfg = self.cfg
        self.prepare_run_dir(resume=resume)
        train, val = self.load_data()
        self.write_config(train, val)
        self.strategy = _strategy(cfg.distribute)
        with self.strategy.scope():
            model = self.arch.build(cfg)
        start = time.perf_counter()
        if self.arch.pretrained:
            self.train_mobilenet(model, train, val)
        else:
            self.train_cnn(model, train, val)
        with self.timed("finalise", len(val.y)):
            metrics = self.finalise(model, val)
        self.timings["total_after_decode"] = {"seconds": round(time.perf_counter() - start, 2)}
        self.files.timings.write_text(json.dumps(self.timings, indent=2) + "\n")
        return metrics


# --------------------------------------------------------------------------- finalising a run


def calibrate(y: np.ndarray, raw: np.ndarray, *, target_recall: float) -> tuple[PlattCalibrator, float]:
    """Fit Platt calibration on validation and the threshold that reaches ``target_recall`` there.

    Parameters
    ----------
    y : ndarray of shape (n,), int 0/1
    raw : ndarray of shape (n,), float in 0..1
        Uncalibrated model outputs.

    Returns
    -------
    calibrator : PlattCalibrator
    threshold : float
        On the calibrated probability.
    """
    calibrator = PlattCalibrator.fit(y, raw)
    threshold = metrics_lib.threshold_for_recall(y, calibrator.transform(raw), target_recall=target_recall)
    return calibrator, threshold


def validation_metrics(
    predictor, val: DecodedSet, raw: np.ndarray, calibrator: PlattCalibrator, threshold: float, *, seed: int
) -> dict:
    """``validation.json``: the metrics report at ``threshold``, plus the calibration before and
    after, test-time augmentation and the acquisition-shift stress report.

    Parameters
    ----------
    predictor : Predictor
        On the saved model (uncalibrated: its sidecar still holds the identity).
    val : DecodedSet
    raw : ndarray of shape (n,)
        ``predictor.predict_raw(val.x)``.
    """
    from pneumoscan.evaluation.robustness import stress_report
    from pneumoscan.inference.predictor import tta_views

    p_cal = calibrator.transform(raw)
    metrics = decoded_set_report(val, p_cal, threshold, seed=seed)
    # The first TTA view is the image itself: reuse ``raw`` instead of predicting it again.
    raw_tta = np.mean([raw, *(predictor.predict_raw(v) for v in tta_views(val.x)[1:])], axis=0)
    metrics_tta = metrics_lib.binary_metrics(val.y, calibrator.transform(raw_tta), threshold=threshold)
    metrics["calibration"] = {
        "method": "platt",
        **calibrator.to_dict(),
        "ece_before": metrics_lib.expected_calibration_error(val.y, raw),
        "ece_after": metrics_lib.expected_calibration_error(val.y, p_cal),
    }
    metrics["tta"] = {k: metrics_tta[k] for k in ("accuracy", "recall", "specificity", "roc_auc", "ece")}
    metrics["split"] = "validation (patient-level, carved from the training data)"
    metrics["stress"] = stress_report(predictor, val.x, val.y, threshold=threshold)
    return metrics


def decoded_set_report(images: DecodedSet, p: np.ndarray, threshold: float, *, seed: int) -> dict:
    """:func:`~pneumoscan.evaluation.metrics.metrics_report` of calibrated ``p`` (shape ``(n,)``) on
    ``images``, with its patients (bootstrap groups) and pneumonia subtypes."""
    return metrics_lib.metrics_report(
        images.y,
        p,
        threshold=threshold,
        groups=[s.patient_id for s in images.samples],
        subtypes=[s.subtype for s in images.samples],
        seed=seed,
    )
