"""The released recipe: a deep ensemble of MobileNetV2 tops on one frozen stem.

Each member holds some images out and predicts them (``TrainConfig.member_split``):

- ``"validation"`` (the default): member ``k`` trains like one single model, on all but its own
  seeded patient-level validation split (:func:`~pneumoscan.data.dataset.patient_split`, seed
  ``seed + k``), and each phase keeps its epoch of best validation ROC AUC there. The independent
  test figures of issue 16 are why: the mean of three such single models (0.963) beat the
  cross-fitted ensemble below (0.940). About 39 % of the images are held out by some member.
- ``"folds"``: the training folder is cut into K patient-level folds
  (:func:`~pneumoscan.data.dataset.patient_folds`); member ``k`` trains on every fold but ``k`` for
  fixed epochs and predicts fold ``k``, so every image gets one out-of-fold prediction.

Each held-out image is scored by the first member that held it out. Calibration (the method chosen
on evidence, :func:`~pneumoscan.models.calibration.choose_calibrator`), the operating threshold and
the uncertainty band are fitted on those predictions, clean and under an acquisition shift
(:data:`~pneumoscan.evaluation.robustness.SHIFTS`, one per image); the scope guard on every image's
embedding.

What it costs: the frozen stem (MobileNetV2 up to the last frozen block) runs once per image and
view for all members together; each member trains its own top blocks and head on that cache
(:class:`~pneumoscan.training.engine.Trainer` phases). The members are then put on the stem in one
Keras model (:func:`~pneumoscan.models.architectures.build_ensemble`) whose output also carries
each member's probability and the stem's embedding.

Honest reading of the held-out numbers (``validation.json``): each image is scored by *one*
member, so they describe a single member, not the averaged ensemble, which no image of the
training folder can score without having been seen; with ``"validation"`` the same images chose
that member's epochs; and the recipe was chosen with the test figures of earlier releases in view,
so they are optimistic for a new intake.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import shutil
import time

import keras
import numpy as np

from pneumoscan import __version__
from pneumoscan.config import TrainConfig
from pneumoscan.data.dataset import (
    DecodedSet,
    class_weights,
    decode_samples,
    discover_split,
    fingerprint,
    patient_folds,
    patient_split,
    stratified_subset,
)
from pneumoscan.evaluation import figures
from pneumoscan.evaluation import metrics as metrics_lib
from pneumoscan.evaluation.robustness import SHIFTS, stress_from_predictions
from pneumoscan.models.architectures import build_ensemble, mobilenet_cut_layer, mobilenet_member
from pneumoscan.models.artifacts import ModelMetadata, save_model
from pneumoscan.models.calibration import choose_calibrator
from pneumoscan.models.sections import EnsembleSection, HeldOutFigures, held_out_choices
from pneumoscan.plotting import save as save_figure
from pneumoscan.training.engine import (
    SIDECAR_VALIDATION_METRICS,
    Trainer,
    _Phase,
    _strategy,
    decoded_set_report,
)
from pneumoscan.training.run_files import package_versions, write_history

log = logging.getLogger(__name__)

#: What the held-out predictions of each ``member_split`` are, in the words of the sidecar and reports.
HELD_OUT_WORDS = {
    "folds": (
        "out-of-fold: each training image scored by the member that did not see it, alone: one member's "
        "figures, not the averaged ensemble's"
    ),
    "validation": (
        "held out: each image of a member's own patient-level validation split scored by that member "
        "alone (the first such member), which kept its best epoch there: one member's figures, not the "
        "averaged ensemble's; images no member held out are not scored"
    ),
}
#: Metrics summarised over the members (each on the images it held out).
MEMBER_METRICS = ("roc_auc", "recall", "specificity", "ece", "brier")


@dataclasses.dataclass
class OutOfFold:
    """Out-of-fold raw predictions of the members, aligned with the training images.

    Attributes
    ----------
    fold : ndarray of shape (n,), int
        The member that predicted each image held out (its fold, or the first member whose
        validation split holds it); -1 for an image no member held out.
    clean, shifted : ndarray of shape (n,), float64
        Raw P(pneumonia) of the image as it is, and under its acquisition shift.
    shift_names : list of str, length n
        Which :data:`~pneumoscan.evaluation.robustness.SHIFTS` entry each image got.
    """

    fold: np.ndarray
    clean: np.ndarray
    shifted: np.ndarray
    shift_names: list[str]


def assign_shifts(n: int, *, seed: int) -> list[str]:
    """One acquisition shift per image, each shift given to about ``n / len(SHIFTS)`` images."""
    names = list(SHIFTS)
    order = np.random.default_rng(seed).permutation(n)
    out = [""] * n
    for rank, i in enumerate(order):
        out[i] = names[rank % len(names)]
    return out


def apply_shifts(x: np.ndarray, shift_names: list[str]) -> np.ndarray:
    """``x`` (n, s, s, 1) uint8 with image ``i`` re-rendered by ``SHIFTS[shift_names[i]]``."""
    out = np.empty_like(x)
    names = np.asarray(shift_names)
    for name, transform in SHIFTS.items():
        idx = np.flatnonzero(names == name)
        if idx.size:
            out[idx] = transform(x[idx])
    return out


class EnsembleTrainer(Trainer):
    """Trains the ensemble into ``run_dir``; see the module docstring.

    ``cfg.members`` is the number of folds and members; the other options are those of the
    single MobileNetV2 recipe (:class:`~pneumoscan.config.TrainConfig`).
    """

    # ------------------------------------------------------------------ data

    def load_all(self) -> tuple[DecodedSet, np.ndarray]:
        """Every image of the training folder (or ``cfg.limit`` of them) and its fold."""
        cfg = self.cfg
        samples = stratified_subset(discover_split(self.data_dir, prefer="train"), cfg.limit, seed=cfg.seed)
        with self.timed("decode", len(samples)):
            data = decode_samples(samples, cfg.image_size, progress=self.progress)
        self.fingerprint = fingerprint(samples)
        held = self.member_held_out(data)
        for k, mask in enumerate(held):
            if len(set(data.y[mask].tolist())) < 2 or len(set(data.y[~mask].tolist())) < 2:
                raise ValueError(
                    f"{self.data_dir}: member {k} of {cfg.members} would hold out or train on one class "
                    f"only ({len(data.y)} images); use more images or fewer --members"
                )
        return data, held

    def member_held_out(self, data: DecodedSet) -> list[np.ndarray]:
        """Each member's held-out images, a boolean mask over ``data``: its patient fold
        (``member_split="folds"``) or its own seeded patient-level validation split (``"validation"``)."""
        cfg = self.cfg
        if cfg.member_split == "folds":
            folds = patient_folds(data.samples, cfg.members, seed=cfg.seed)
            return [folds == k for k in range(cfg.members)]
        index = {s.path: i for i, s in enumerate(data.samples)}
        masks = []
        for k in range(cfg.members):
            _, val = patient_split(data.samples, val_fraction=cfg.val_fraction, seed=cfg.seed + k)
            mask = np.zeros(len(data.samples), bool)
            mask[[index[s.path] for s in val]] = True
            masks.append(mask)
        return masks

    def write_config(self, data: DecodedSet, held: list[np.ndarray]) -> None:
        record = {
            **self.cfg.to_dict(),
            "data_dir": str(self.data_dir),
            "data_fingerprint": self.fingerprint,
            "members_held_out": {
                "member_split": self.cfg.member_split,
                "images": len(data.y),
                "patients": len({s.patient_id for s in data.samples}),
                "held_out_by_member_and_class": [np.bincount(data.y[m], minlength=2).tolist() for m in held],
                "held_out_by_no_member": int((~np.any(held, axis=0)).sum()),
            },
            "class_weight": class_weights(data.y) if self.cfg.imbalance == "class_weight" else None,
            "skipped": [{"path": str(s.path), "error": e} for s, e in data.skipped],
            "versions": package_versions(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        self.files.config.write_text(json.dumps(record, indent=2) + "\n")

    def cache_views(self, stem, data: DecodedSet, shift_names: list[str]) -> dict[str, np.ndarray]:
        """Stem features of every image: ``clean``, ``augmented`` (views stacked) and ``shifted``."""
        cfg = self.cfg
        n_views = 2 + cfg.augmented_views
        with self.timed("stem_features", len(data.y) * n_views):
            clean = self.stem_features(stem, data.x, augment=False, seed=cfg.seed, desc="stem (clean)")
            augmented = [
                self.stem_features(
                    stem, data.x, augment=True, seed=cfg.seed + 101 * (v + 1), desc=f"stem (view {v + 1})"
                )
                for v in range(cfg.augmented_views)
            ]
            shifted = self.stem_features(
                stem, apply_shifts(data.x, shift_names), augment=False, seed=cfg.seed, desc="stem (shifted)"
            )
        return {"clean": clean, "augmented": augmented, "shifted": shifted}

    # ------------------------------------------------------------------ members

    def train_member(self, k: int, cut: str, views: dict, pooled: dict, y: np.ndarray, held: np.ndarray):
        """Fit member ``k`` on every image but its held-out ones (``held``, a mask); returns its top
        (cut features -> probability). With ``member_split="validation"`` each phase keeps its
        best epoch on the held-out images, like a single model; with ``"folds"`` the epochs are
        fixed, since the held-out fold is what the member predicts out of fold."""
        cfg = self.cfg
        keras.utils.set_random_seed(cfg.seed + 1000 * (k + 1))  # members differ in seed and in data
        # Models made inside the scope carry the strategy into fit (optimizer variables included).
        with self.strategy.scope():
            full, top = mobilenet_member(cfg, cut, name=f"member_{k}")
            head = keras.Model(full.get_layer("avg_pool").output, full.output, name=f"member_{k}_head")
        train = ~held
        restore_best = cfg.member_split == "validation"
        n_train_views = 1 + cfg.augmented_views
        train_y = np.tile(y[train], n_train_views)
        weights = self.image_weights(
            None if self.setup is None else self.setup[train], y[train], n_train_views
        )
        self.fit_phase(
            _Phase(
                f"member{k}_head",
                head,
                np.concatenate([pooled["clean"][train], *(p[train] for p in pooled["augmented"])]),
                train_y,
                pooled["clean"][held],
                y[held],
                cfg.head_epochs,
                cfg.head_learning_rate,
                restore_best=restore_best,
                sample_weight=weights,
            )
        )
        if cfg.finetune_epochs > 0:
            self.fit_phase(
                _Phase(
                    f"member{k}_finetune",
                    top,
                    np.concatenate([views["clean"][train], *(v[train] for v in views["augmented"])]),
                    train_y,
                    views["clean"][held],
                    y[held],
                    cfg.finetune_epochs,
                    cfg.finetune_learning_rate,
                    restore_best=restore_best,
                    sample_weight=weights,
                )
            )
        return top

    def out_of_fold(self, tops, views: dict, held: list[np.ndarray], shift_names: list[str]) -> OutOfFold:
        """Each held-out image scored by the first member that held it out (clean and shifted)."""
        fold = np.full(len(shift_names), -1)
        for k in reversed(range(len(held))):
            fold[held[k]] = k
        clean = np.full(len(fold), np.nan)
        shifted = np.full(len(fold), np.nan)
        for k, top in enumerate(tops):
            mine = fold == k
            for out, key in ((clean, "clean"), (shifted, "shifted")):
                x = views[key][mine].astype(np.float32)
                out[mine] = top.predict(x, batch_size=256, verbose=0).reshape(-1)
        return OutOfFold(fold, clean, shifted, shift_names)

    # ------------------------------------------------------------------ run

    def run(self, *, resume: bool = False) -> dict:
        cfg = self.cfg
        if not self.arch.pretrained:
            raise ValueError(f"an ensemble needs a pretrained architecture; {cfg.arch!r} is not one")
        self.prepare_run_dir(resume=resume)
        data, held = self.load_all()
        self.write_config(data, held)
        self.setup = self.setup_scores(data)
        self.strategy = _strategy(cfg.distribute)
        start = time.perf_counter()
        with self.strategy.scope():
            base = self.arch.build(cfg)
        cut = mobilenet_cut_layer(base, cfg.unfreeze_blocks)
        stem = keras.Model(base.input, base.get_layer(cut).output, name="stem")
        shift_names = assign_shifts(len(data.y), seed=cfg.seed)
        views = self.cache_views(stem, data, shift_names)
        # The head phase of every member starts on the frozen top's pooled features: the same
        # ImageNet weights for all members, so computed once.
        frozen_top = keras.Model(base.get_layer(cut).output, base.get_layer("avg_pool").output)
        with self.timed("pooled_features", len(data.y) * (1 + cfg.augmented_views)):
            pooled = {
                "clean": frozen_top.predict(views["clean"].astype(np.float32), batch_size=256, verbose=0),
                "augmented": [
                    frozen_top.predict(v.astype(np.float32), batch_size=256, verbose=0)
                    for v in views["augmented"]
                ],
            }
        tops = []
        for k in range(cfg.members):
            with self.timed(f"member_{k}", int((~held[k]).sum()) * (1 + cfg.augmented_views)):
                tops.append(self.train_member(k, cut, views, pooled, data.y, held[k]))
        oof = self.out_of_fold(tops, views, held, shift_names)
        # The embedding the model outputs (and the scope guard reads): the stem's pooled features.
        embeddings = views["clean"].astype(np.float32).mean(axis=(1, 2))
        del views, pooled
        with self.timed("finalise", len(data.y)):
            model = build_ensemble(base, cut, serving_members(cfg, cut, tops))
            metrics = self.finalise_ensemble(model, data, oof, embeddings)
        self.timings["total_after_decode"] = {"seconds": round(time.perf_counter() - start, 2)}
        self.files.timings.write_text(json.dumps(self.timings, indent=2) + "\n")
        return metrics

    def finalise_ensemble(self, model, data: DecodedSet, oof: OutOfFold, embeddings: np.ndarray) -> dict:
        """Calibrate and choose the threshold on the OOF predictions, fit the uncertainty band and
        the scope guard; write the model, its sidecar and the reports.

        ``embeddings`` : ndarray of shape (n, e), the stem's pooled features of every image.
        """
        from pneumoscan.inference.predictor import Predictor

        cfg = self.cfg
        all_groups = [s.patient_id for s in data.samples]
        # Calibration, threshold, band and reports use the images some member held out; the guard
        # uses every image's embedding.
        data, oof = held_out_part(data, oof)
        groups = [s.patient_id for s in data.samples]
        y2 = np.r_[data.y, data.y]
        p2 = np.r_[oof.clean, oof.shifted]
        calibrator, calibration_evidence = choose_calibrator(y2, p2, groups=groups + groups, seed=cfg.seed)
        threshold = metrics_lib.threshold_for_recall(
            y2, calibrator.transform(p2), target_recall=cfg.target_recall
        )
        metrics = oof_metrics(data, oof, calibrator, threshold, seed=cfg.seed, member_split=cfg.member_split)
        metrics["calibration"] = {
            **calibrator.to_dict(),
            "method": calibrator.method,
            "fitted_on": (
                "held-out predictions of the members, each image clean and under one acquisition shift"
            ),
            "cross_validated": calibration_evidence,
            "ece_before": metrics_lib.expected_calibration_error(data.y, oof.clean),
            "ece_after": metrics_lib.expected_calibration_error(data.y, calibrator.transform(oof.clean)),
        }
        section = ensemble_section(cfg, embedding_dim=int(model.output.shape[-1]) - 1 - cfg.members)
        band, guard = fit_band_and_guard(
            data, oof, calibrator, threshold, embeddings, all_groups, seed=cfg.seed
        )
        metrics["decision"] = {"band": band.to_dict()}
        metrics["scope"] = {k: v for k, v in guard.to_dict().items() if not isinstance(v, list)}
        meta = ModelMetadata(
            image_size=cfg.image_size,
            threshold=threshold,
            calibration=calibrator,
            arch=cfg.arch,
            target_recall=cfg.target_recall,
            data_dir=str(self.data_dir),
            data_fingerprint=self.fingerprint,
            held_out=held_out_figures(cfg, metrics, section),
            decision={"band": band.to_dict()},
            scope=guard.to_dict(),
            ensemble=section,
            pneumoscan_version=__version__,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        save_model(model, self.files.model)
        meta.write(self.files.model)
        metrics["serving_check"] = serving_check(Predictor(self.files.model), data, oof)
        self.files.validation.write_text(json.dumps(metrics, indent=2) + "\n")
        write_oof_predictions(self.files.validation_predictions, data, oof, calibrator, threshold)
        if self.history_rows:
            write_history(self.files, self.history_rows, self.phase_boundaries)
        save_figure(
            figures.reliability_figure(data.y, oof.clean, calibrator.transform(oof.clean)),
            self.files.reliability,
        )
        shutil.rmtree(self.files.backup, ignore_errors=True)
        return metrics


def held_out_figures(cfg: TrainConfig, metrics: dict, section: EnsembleSection) -> HeldOutFigures:
    """The sidecar's held-out figures of an ensemble: which images, and what they chose."""
    return HeldOutFigures(
        {k: metrics[k] for k in SIDECAR_VALIDATION_METRICS},
        measured_on=HELD_OUT_WORDS[cfg.member_split],
        chose=held_out_choices(section, band=True),
    )


def ensemble_section(cfg: TrainConfig, embedding_dim: int) -> EnsembleSection:
    """The sidecar's ``ensemble`` section: how the output is laid out and how the members were trained."""
    folds = cfg.member_split == "folds"
    return EnsembleSection(
        members=cfg.members,
        embedding_dim=embedding_dim,
        member_split=cfg.member_split,
        folds=cfg.members if folds else None,
        val_fraction=None if folds else cfg.val_fraction,
        fold_seed=cfg.seed,
        limit=cfg.limit,
        unfreeze_blocks=cfg.unfreeze_blocks,
        combine="mean of the members' calibrated probabilities",
        held_out_words=HELD_OUT_WORDS[cfg.member_split],
    )


def held_out_part(data: DecodedSet, oof: OutOfFold) -> tuple[DecodedSet, OutOfFold]:
    """The images some member held out (``oof.fold >= 0``) and their predictions."""
    keep = oof.fold >= 0
    if keep.all():
        return data, oof
    samples = [s for s, k in zip(data.samples, keep, strict=True) if k]
    names = [n for n, k in zip(oof.shift_names, keep, strict=True) if k]
    return (
        DecodedSet(data.x[keep], data.y[keep], samples, data.skipped),
        OutOfFold(oof.fold[keep], oof.clean[keep], oof.shifted[keep], names),
    )


def fit_band_and_guard(
    data: DecodedSet, oof: OutOfFold, calibrator, threshold: float, embeddings, groups, *, seed: int
):
    """The uncertainty band (on the calibrated held-out predictions of ``data``, clean and shifted)
    and the scope guard (on every training image's embedding, ``groups`` its patients; threshold
    on patient-level out-of-fold scores)."""
    from pneumoscan.inference.decision import fit_uncertainty_band
    from pneumoscan.inference.scope import DEFAULT_GUARD_DIMS, ScopeGuard

    p = calibrator.transform(np.r_[oof.clean, oof.shifted])
    band = fit_uncertainty_band(p, np.r_[data.y, data.y], threshold=threshold)
    # The guard's dimensions shrink with the data (it needs about 5 images per dimension): a full
    # training folder keeps the default, a smoke run on a few dozen images gets a small guard.
    dims = max(1, min(DEFAULT_GUARD_DIMS, embeddings.shape[1], len(embeddings) // 5))
    guard = ScopeGuard.fit(embeddings, groups=list(groups), seed=seed, dims=dims)
    return band, guard


def serving_members(cfg, cut: str, tops) -> list:
    """Fresh, never-compiled copies of the trained member tops, weights copied.

    A compiled model carries its optimizer, and Keras saves a nested model's optimizer state with
    it: Adam's two moments would triple the saved file (64 MB instead of 23 MB for 3 members).
    """
    copies = []
    for top in tops:
        _, copy = mobilenet_member(cfg, cut, name=top.name, weights=None)
        copy.set_weights(top.get_weights())
        copies.append(copy)
    return copies


def oof_metrics(
    data: DecodedSet, oof: OutOfFold, calibrator, threshold: float, *, seed: int, member_split: str = "folds"
) -> dict:
    """``validation.json`` of an ensemble: OOF metrics with patient-bootstrap CIs, per shift, per member."""
    p_clean = calibrator.transform(oof.clean)
    p_shifted = calibrator.transform(oof.shifted)
    metrics = decoded_set_report(data, p_clean, threshold, seed=seed)
    metrics["split"] = (
        f"{HELD_OUT_WORDS[member_split]}; the same data chose the threshold and the calibration"
    )
    metrics["stress"] = stress_from_predictions(data.y, p_shifted, oof.shift_names, threshold=threshold)
    shifted = metrics_lib.binary_metrics(data.y, p_shifted, threshold=threshold)
    metrics["shifted"] = {
        k: shifted[k] for k in ("accuracy", "recall", "specificity", "roc_auc", "ece", "brier")
    }
    per_member = []
    for k in range(int(oof.fold.max()) + 1):
        held = oof.fold == k
        if not held.any():  # every image it held out was scored by an earlier member
            per_member.append({"member": k, "n": 0, **dict.fromkeys(MEMBER_METRICS)})
            continue
        m = metrics_lib.binary_metrics(data.y[held], p_clean[held], threshold=threshold)
        per_member.append({"member": k, "n": int(held.sum()), **{key: m[key] for key in MEMBER_METRICS}})
    # A metric a member's images cannot define (one class only, in a small run) is None; the
    # summaries are over the members that define it.
    defined = {k: [m[k] for m in per_member if m[k] is not None] for k in MEMBER_METRICS}
    metrics["members"] = {
        "each": per_member,
        "mean": {k: float(np.mean(v)) if v else None for k, v in defined.items()},
        "sd": {k: float(np.std(v, ddof=1)) if len(v) > 1 else None for k, v in defined.items()},
    }
    return metrics


def serving_check(predictor, data: DecodedSet, oof: OutOfFold, *, n: int = 64) -> dict:
    """Score a few training images through the saved model and the Predictor, and compare each
    member's output with the OOF prediction made on the cached stem features.

    They differ only by the float16 feature cache; a large difference means the saved model is
    not the one that was validated.
    """
    idx = np.linspace(0, len(data.y) - 1, min(n, len(data.y))).astype(int)
    outputs = predictor.predict_outputs(data.x[idx])
    served = outputs[np.arange(len(idx)), 1 + oof.fold[idx]]
    diff = float(np.max(np.abs(served - oof.clean[idx])))
    if diff > 0.02:
        log.warning("served member outputs differ from the OOF predictions by up to %.4f", diff)
    return {"images": int(len(idx)), "max_abs_diff": diff, "passed": diff <= 0.02}


def write_oof_predictions(path, data: DecodedSet, oof: OutOfFold, calibrator, threshold: float) -> None:
    """``validation_predictions.csv`` of an ensemble: one OOF row per training image."""
    from pneumoscan.inference.results import VALIDATION_COLUMNS, labelled_row, make_prediction, write_rows

    p = calibrator.transform(oof.clean)
    rows = (
        {**labelled_row(s, make_prediction(pk, threshold)), "p_raw": r}
        for s, r, pk in zip(data.samples, oof.clean, p, strict=True)
    )
    write_rows(path, VALIDATION_COLUMNS, rows, digits=6)
