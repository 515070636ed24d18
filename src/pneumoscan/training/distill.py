"""Distil the released ensemble into one student: ``pneumoscan distill``.

The ensemble (:func:`~pneumoscan.models.architectures.build_ensemble`) runs a frozen stem once and
K member tops on it. The student (:func:`~pneumoscan.models.architectures.build_student`) keeps the
same stem, so its 160-d embedding, and with it the out-of-scope guard, is the teacher's unchanged,
and puts ONE top on it, a copy of a member's (the one whose calibrated probability is closest to
the teacher's on the distillation images) with a second sigmoid unit. It learns, on the very same
views the teacher scores:

- ``pred``: the teacher's *calibrated* ensemble probability (the mean of the members' calibrated
  probabilities), by binary cross-entropy with soft targets, so the threshold and the uncertainty
  band of the teacher's sidecar keep their meaning. The copied member's Platt map is folded into
  the ``pred`` unit before training, so training starts from that member's calibrated answer;
- ``spread``: the members' spread (standard deviation of their calibrated probabilities), the
  ``uncertainty`` of every answer, by mean squared error.

What it learns from: a patient-level part of the training folder (all but ``holdout_fraction`` of
the patients, seeded; images that every member held out are always kept back), each image clean
and under ``augmented_views`` draws of the training augmentation
(:meth:`~pneumoscan.training.engine.Trainer.stem_features`, cached once), plus
``mixup_views`` mixtures of those views in the stem's feature space (:func:`mixed_views`, none by
default). Training runs in two
phases like the engine's: the head on the pooled features of the copied member's frozen blocks,
then the blocks and head together.

The gate (:mod:`pneumoscan.training.distill_gate`): before anything is written, the student and
the teacher score, on cached stem features, images the student never distilled on: the held-out
part (clean; its members mostly trained on it), shifted views of it, images every member held
out, and the out-of-scope set when given. The student must be within
:attr:`DistillConfig.max_auc_diff` ROC AUC of the teacher on the held-out part and on its shifted
views, and its three-outcome decisions must agree with the teacher's on at least
:attr:`DistillConfig.min_agreement` of the images no member trained on (shifted views, images every
member held out, out-of-scope radiographs). A student that fails is not written; the error says by
how much it missed, and the run's report is kept as ``distill-refused.json``.

The output folder: ``model.keras`` (:func:`~pneumoscan.models.artifacts.save_model`), its sidecar
(the teacher's, plus a ``student`` section: output columns, teacher file and sha256, what was
distilled on, the seed, the gate's results), ``model-litert.tflite`` (float16,
:func:`~pneumoscan.training.export.export_tflite`, checked against the Keras student) and
``distill.json`` (everything measured, and the time each stage took).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from pneumoscan import __version__
from pneumoscan.config import DistillConfig, TrainConfig
from pneumoscan.data.dataset import (
    DecodedSet,
    Sample,
    decode_samples,
    discover_split,
    fingerprint,
    patient_split,
    stratified_subset,
)
from pneumoscan.models.architectures import (
    STUDENT_COLUMNS,
    build_shared_ensemble,
    build_student,
    member_head,
    member_tops,
    mobilenet_cut_layer,
    shared_body,
    student_top,
)
from pneumoscan.models.artifacts import ModelMetadata, save_model
from pneumoscan.training.distill_gate import (
    GATE_SHIFTS,
    GateSet,
    gate,
    ood_images,
    score_student,
    serving_check,
    summary,
)

log = logging.getLogger(__name__)

#: File names in the output folder.
MODEL_FILE, LITERT_FILE, REPORT_FILE = "model.keras", "model-litert.tflite", "distill.json"
#: What a student that fails the gate leaves behind instead of a model: its report, so the figures
#: of a run of many minutes are not only in a terminal's scrollback.
REFUSED_FILE = "distill-refused.json"


class GateError(ValueError):
    """The student failed the gate; ``report`` holds every figure, the message the misses."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------- the teacher


@dataclasses.dataclass
class Teacher:
    """A released ensemble, loaded for distillation.

    Attributes
    ----------
    path : Path
    metadata : ModelMetadata
    model : keras.Model
    cut : str
        The stem's last layer (the members' input).
    tops : list of keras.Model
        The member tops, cut features -> raw probability.
    sha256 : str
    """

    path: Path
    metadata: ModelMetadata
    model: keras.Model
    cut: str
    tops: list
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> Teacher:
        """Load a ``.keras`` ensemble (safe mode) with its sidecar; ValueError for anything else."""
        path = Path(path)
        if path.suffix.lower() != ".keras":
            raise ValueError(f"the teacher must be a .keras ensemble, got {path}")
        meta = ModelMetadata.read(path)
        if meta.ensemble is None or meta.student is not None:
            raise ValueError(
                f"{path}: not an ensemble (its sidecar has no 'ensemble' section, or is a student's)"
            )
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        cut = mobilenet_cut_layer(model, meta.ensemble.unfreeze_blocks)
        tops = member_tops(model, meta.ensemble.members)
        return cls(path, meta, model, cut, tops, hashlib.sha256(path.read_bytes()).hexdigest())

    def stem(self) -> keras.Model:
        return keras.Model(self.model.input, self.model.get_layer(self.cut).output, name="stem")

    def members(self, features: np.ndarray) -> np.ndarray:
        """Each member's *calibrated* probability from cached cut features, shape ``(n, K)``."""
        return calibrated_members(self.tops, self.metadata, features)

    def targets(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's answer: calibrated mean probability and spread, each shape ``(n,)``."""
        members = self.members(features)
        return members.mean(axis=1), members.std(axis=1)


def calibrated_members(tops: list, metadata: ModelMetadata, features: np.ndarray) -> np.ndarray:
    """Each member top's probability on cached cut ``features``, calibrated one by one with the
    sidecar's map as the Predictor does, shape ``(n, K)``."""
    raw = np.stack([_predict(top, features) for top in tops], axis=1)
    return np.asarray(metadata.calibration.transform(raw), dtype=np.float64)


def _batched(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``model`` over ``x`` in batches, its one output as it is."""
    return np.concatenate(
        [np.asarray(model(x[i : i + batch_size].astype(np.float32))) for i in range(0, len(x), batch_size)]
    )


def _predict(model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``model`` over ``x`` in batches (first output when it has several), float64 ``(n,)``."""
    outs = []
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size].astype(np.float32), training=False)
        outs.append(np.asarray(out[0] if isinstance(out, list | tuple) else out).reshape(-1))
    return np.concatenate(outs).astype(np.float64) if outs else np.zeros(0)


# --------------------------------------------------------------------------- data


def members_held_out(samples: list[Sample], metadata: ModelMetadata) -> set[Path]:
    """Paths of the images every member of the teacher held out (none for cross-fitted folds, or
    when ``samples`` are not the folder the teacher was trained on)."""
    ensemble = metadata.ensemble
    if ensemble is None or ensemble.member_split != "validation":
        return set()
    seed = ensemble.fold_seed
    folder = stratified_subset(samples, ensemble.limit, seed=seed)
    if metadata.data_fingerprint and fingerprint(folder) != metadata.data_fingerprint:
        log.warning("the data is not the teacher's training folder: no image is known to be held out by all")
        return set()
    held = None
    for k in range(ensemble.members):
        _, val = patient_split(folder, val_fraction=ensemble.val_fraction, seed=seed + k)
        held = {s.path for s in val} if held is None else held & {s.path for s in val}
    return held or set()


def distillation_split(
    data_dir: str | Path, metadata: ModelMetadata, cfg: DistillConfig
) -> tuple[list[Sample], list[Sample], set[Path]]:
    """The distillation images, the held-out ones (whole patients) and the held-out paths every
    teacher member held out too (always held out)."""
    samples = discover_split(data_dir, prefer="train")
    never = members_held_out(samples, metadata)
    samples = stratified_subset(samples, cfg.limit, seed=cfg.seed)
    distil, held = patient_split(samples, val_fraction=cfg.holdout_fraction, seed=cfg.seed)
    never_patients = {s.patient_id for s in samples if s.path in never}
    held += [s for s in distil if s.patient_id in never_patients]
    distil = [s for s in distil if s.patient_id not in never_patients]
    held.sort(key=lambda s: str(s.path))
    return distil, held, {s.path for s in held if s.path in never}


# --------------------------------------------------------------------------- features


def mixed_views(
    teacher: Teacher, features: np.ndarray, members: np.ndarray, cfg: DistillConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``features`` and ``members`` with :attr:`DistillConfig.mixup_views` mixed views appended:
    each view pairs every row with a random other (seeded), mixes the two cut features with a
    weight drawn uniformly from [0, 1] and takes the teacher members' calibrated answers on the
    mixture as its targets. The teacher and the model share the stem, so a mixture of cut
    features is a point both can be asked about, and the targets are the teacher's own there."""
    if not cfg.mixup_views:
        return features, members
    rng = np.random.default_rng(cfg.seed + 7919)
    xs, targets = [features], [members]
    for _ in range(cfg.mixup_views):
        partner = rng.permutation(len(features))
        weight = rng.uniform(size=(len(features),) + (1,) * (features.ndim - 1)).astype(np.float32)
        mixed = weight * features + (1.0 - weight) * features[partner]
        xs.append(mixed)
        targets.append(teacher.members(mixed))
    return np.concatenate(xs), np.concatenate(targets)


def distillation_features(engine, stem, x: np.ndarray, cfg: DistillConfig) -> np.ndarray:
    """Stem features of ``x`` clean, then of ``cfg.augmented_views`` augmented copies, stacked
    (the training engine's :meth:`~pneumoscan.training.engine.Trainer.stem_features`)."""
    views = [engine.stem_features(stem, x, augment=False, seed=cfg.seed, desc="stem (clean)")]
    for v in range(cfg.augmented_views):
        seed = cfg.seed + 101 * (v + 1)
        views.append(engine.stem_features(stem, x, augment=True, seed=seed, desc=f"stem (view {v + 1})"))
    return np.concatenate(views)


def gate_sets(
    engine, stem, teacher: Teacher, held: list[Sample], never: set[Path], ood_dir, *, progress: bool
) -> list[GateSet]:
    """The held-out images clean and under each of :data:`GATE_SHIFTS`, and the out-of-scope
    radiographs of ``ood_dir`` (when given), with the teacher's answers."""
    size, seed = teacher.metadata.image_size, engine.cfg.seed
    views: list[tuple[str, DecodedSet, bool]] = [
        ("held out", decode_samples(held, size, progress=progress), False)
    ]
    for name, load in GATE_SHIFTS.items():
        views.append((name, decode_samples(held, size, progress=progress, load=load), True))
    sets = []
    for name, data, shifted in views:
        features = engine.stem_features(stem, data.x, augment=False, seed=seed, desc=name)
        never_mask = np.array([shifted or s.path in never for s in data.samples], bool)
        sets.append(GateSet(name, features, data.y, never_mask, *teacher.targets(features)))
    if ood_dir is not None:
        x, _ = ood_images(ood_dir, size)
        features = engine.stem_features(stem, x, augment=False, seed=seed, desc="out of scope")
        sets.append(
            GateSet("out of scope", features, None, np.ones(len(x), bool), *teacher.targets(features))
        )
    return sets


# --------------------------------------------------------------------------- training


def choose_member(members: np.ndarray, target: np.ndarray) -> tuple[int, list[float]]:
    """The member whose calibrated probabilities are closest to ``target`` (mean squared logit
    error), and every member's error."""
    from scipy.special import logit

    def z(p):
        return logit(np.clip(p, 1e-4, 1 - 1e-4))

    errors = [float(np.mean((z(members[:, k]) - z(target)) ** 2)) for k in range(members.shape[1])]
    return int(np.argmin(errors)), errors


def init_student(teacher: Teacher, member: int, mean_spread: float) -> keras.Model:
    """:func:`~pneumoscan.models.architectures.student_top` of ``member``, its Platt map folded
    into the ``pred`` unit (so it starts at the member's calibrated probability) and the spread
    unit starting at ``mean_spread``."""
    from scipy.special import logit

    top = student_top(teacher.tops[member])
    _fold_platt(top, teacher.metadata.calibration)
    spread = top.get_layer("spread")
    kernel, bias = spread.get_weights()
    spread.set_weights([kernel, np.full_like(bias, logit(np.clip(mean_spread, 1e-3, 0.5)))])
    return top


def _fit(model, x, p, spread, *, epochs: int, learning_rate: float, cfg: DistillConfig, progress: bool):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=[keras.losses.BinaryCrossentropy(), keras.losses.MeanSquaredError()],
        loss_weights=[1.0, cfg.spread_weight],
    )
    history = model.fit(
        x.astype(np.float32),
        [p.astype(np.float32)[:, None], spread.astype(np.float32)[:, None]],
        batch_size=cfg.batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=2 if progress else 0,
    )
    return [round(float(v), 6) for v in history.history["loss"]]


def fit_student(
    teacher: Teacher,
    features: np.ndarray,
    members: np.ndarray,
    cfg: DistillConfig,
    *,
    n_clean: int,
    progress: bool,
) -> tuple[keras.Model, dict]:
    """Train a student top on cached ``features`` against the teacher's calibrated ``members``
    (shape ``(n, K)``; the first ``n_clean`` rows are the clean images). Returns a fresh,
    never-compiled copy of it and what happened."""
    p, spread = members.mean(axis=1), members.std(axis=1)
    chosen, errors = choose_member(members[:n_clean], p[:n_clean])
    member = chosen if cfg.init_member is None else cfg.init_member
    keras.utils.set_random_seed(cfg.seed)
    top = init_student(teacher, member, float(spread.mean()))
    record = {"init_member": member, "init_member_logit_mse": errors, "chosen_by": "closest to the teacher"}
    if cfg.init_member is not None:
        record["chosen_by"] = "given (--init-member)"
    if cfg.head_epochs:
        pooled_at = top.get_layer("avg_pool").output
        frozen = keras.Model(top.input, pooled_at)  # the member's blocks, as they are in this phase
        pooled = _batched(frozen, features)
        head = keras.Model(pooled_at, top.outputs, name="student_head")
        record["head_loss"] = _fit(
            head,
            pooled,
            p,
            spread,
            epochs=cfg.head_epochs,
            learning_rate=cfg.head_learning_rate,
            cfg=cfg,
            progress=progress,
        )
    if cfg.finetune_epochs:
        record["finetune_loss"] = _fit(
            top,
            features,
            p,
            spread,
            epochs=cfg.finetune_epochs,
            learning_rate=cfg.finetune_learning_rate,
            cfg=cfg,
            progress=progress,
        )
    serving = student_top(teacher.tops[member])  # never compiled: no optimizer state in the file
    serving.set_weights(top.get_weights())
    return serving, record


def _fold_platt(head: keras.Model, calibration, *, inverse: bool = False) -> None:
    """Fold the teacher's Platt map into ``head``'s ``pred`` unit (its sigmoid then gives the
    calibrated probability), or take it out again (``inverse``); nothing for other calibrations."""
    from pneumoscan.models.calibration import PlattCalibrator

    if not isinstance(calibration, PlattCalibrator):
        return
    pred = head.get_layer("pred")
    kernel, bias = pred.get_weights()
    a, b = calibration.a, calibration.b
    pred.set_weights([kernel / a, (bias - b) / a] if inverse else [kernel * a, bias * a + b])


def fit_shared(
    teacher: Teacher, features: np.ndarray, members: np.ndarray, cfg: DistillConfig, *, progress: bool
) -> tuple[keras.Model, list, dict]:
    """The ``shared-body`` kind: ONE body, the mean of the teacher members' fine-tuned blocks
    (:func:`~pneumoscan.models.architectures.shared_body`), and each member's own head, trained on
    cached ``features`` so that head ``k``'s calibrated probability matches member ``k``'s
    (``members[:, k]``, binary cross-entropy with soft targets; the Platt map is folded into each
    ``pred`` unit while training and taken out after, so the sidecar's calibration still applies).
    Phase one trains the heads on the body's pooled features, phase two the body (BatchNorm frozen)
    and the heads together. Returns the body, the heads (never compiled) and what happened."""
    from keras import layers

    keras.utils.set_random_seed(cfg.seed)
    body = shared_body(teacher.tops)
    heads = [member_head(top, name=f"member_{k}_head") for k, top in enumerate(teacher.tops)]
    calibration = teacher.metadata.calibration
    for head in heads:
        _fold_platt(head, calibration)
    # Dropout would make the heads disagree with members that answer without it.
    rates = {}
    for head in heads:
        dropout = head.get_layer("top_dropout")
        rates[head.name], dropout.rate = dropout.rate, 0.0
    targets = members.astype(np.float32)
    record: dict = {"kind": "shared-body", "init": "the mean of the members' body weights, their own heads"}

    def fit(model, x, epochs, learning_rate, name):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
        history = model.fit(
            x, targets, batch_size=cfg.batch_size, epochs=epochs, shuffle=True, verbose=2 if progress else 0
        )
        record[name] = [round(float(v), 6) for v in history.history["loss"]]

    if cfg.head_epochs:
        pooled = _batched(body, features)
        pooled_in = keras.Input(pooled.shape[1:])
        model = keras.Model(pooled_in, layers.Concatenate()([h(pooled_in) for h in heads]))
        fit(model, pooled, cfg.head_epochs, cfg.head_learning_rate, "head_loss")
    if cfg.finetune_epochs:
        cut_in = keras.Input(features.shape[1:])
        pooled_t = body(cut_in)
        model = keras.Model(cut_in, layers.Concatenate()([h(pooled_t) for h in heads]))
        fit(
            model,
            features.astype(np.float32),
            cfg.finetune_epochs,
            cfg.finetune_learning_rate,
            "finetune_loss",
        )
    for head in heads:
        _fold_platt(head, calibration, inverse=True)
        head.get_layer("top_dropout").rate = rates[head.name]
    # Fresh, never-compiled copies: no optimizer state in the file.
    serving_body = shared_body([body])
    serving_heads = []
    for head in heads:
        copy = keras.models.clone_model(head)
        copy.set_weights(head.get_weights())
        serving_heads.append(copy)
    return serving_body, serving_heads, record


def score_shared(model: keras.Model, metadata: ModelMetadata, sets: list[GateSet]) -> None:
    """Fill in each gate set's ``student_p`` and ``student_spread`` for a shared-body ensemble
    from its cached cut features: the mean and spread of its members' calibrated probabilities,
    as the Predictor combines them."""
    tops = member_tops(model, metadata.ensemble.members)
    for gate_set in sets:
        calibrated = calibrated_members(tops, metadata, gate_set.features)
        gate_set.student_p, gate_set.student_spread = calibrated.mean(axis=1), calibrated.std(axis=1)


# --------------------------------------------------------------------------- the command


def _timed(timings: dict, name: str):
    import contextlib

    @contextlib.contextmanager
    def timer():
        start = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - start, 2)
        log.info("%s: %.1f s", name, timings[name])

    return timer()


def _provenance(teacher: Teacher, *, distilled_on: dict, training: dict, report: dict, cfg, now: str) -> dict:
    """What every distilled sidecar records of its making: the teacher file, the training, the
    seed and options, the data, the gate's figures and the time."""
    return {
        "teacher": {
            "file": teacher.path.name,
            "sha256": teacher.sha256,
            "members": len(teacher.tops),
            "created": teacher.metadata.created,
        },
        **training,
        "seed": cfg.seed,
        "config": dataclasses.asdict(cfg),
        "distilled_on": distilled_on,
        "gate": report,
        "created": now,
    }


def student_metadata(
    teacher: Teacher, *, dim: int, distilled_on: dict, training: dict, report: dict, cfg
) -> ModelMetadata:
    """The student's sidecar: the teacher's (threshold, calibration, band, guard, and ``ensemble``
    describing the teacher), without its export, plus the ``student`` section."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    student = {
        "outputs": dict(STUDENT_COLUMNS),
        "width": 2 + dim,
        "embedding_dim": dim,
        "p_pneumonia": (
            "the teacher's calibrated ensemble probability (mean of its members' calibrated "
            "probabilities); the sidecar's calibration, the teacher members' map, is not applied to it"
        ),
        "spread": "the teacher members' spread (standard deviation of their calibrated probabilities)",
        "validation": (
            "the sidecar's validation figures are the teacher's, where its threshold and band were chosen"
        ),
        **_provenance(teacher, distilled_on=distilled_on, training=training, report=report, cfg=cfg, now=now),
    }
    return teacher.metadata.updated(
        student=student, export=None, released_from=None, created=now, pneumoscan_version=__version__
    )


def shared_metadata(
    teacher: Teacher, *, dim: int, distilled_on: dict, training: dict, report: dict, cfg
) -> ModelMetadata:
    """A shared-body ensemble's sidecar: the teacher's (threshold, calibration, band, guard, its
    ``ensemble`` section), without its export, with ``ensemble.shared_body`` saying where the body
    and heads came from and how they were gated. ``dim`` is unused (the layout is the teacher's)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    shared = {
        "what": (
            "the members share ONE body (block_14 .. Conv_1), the mean of the teacher members' "
            "fine-tuned weights, then trained with their own heads so that each member's calibrated "
            "probability matches the teacher member's; the output row is the teacher's"
        ),
        "validation": (
            "the sidecar's threshold, calibration, band and validation figures are the teacher's, "
            "where they were chosen; the gate below checks that they still hold"
        ),
        **_provenance(teacher, distilled_on=distilled_on, training=training, report=report, cfg=cfg, now=now),
    }
    ensemble = {**teacher.metadata.ensemble.to_dict(), "shared_body": shared}
    return teacher.metadata.updated(
        ensemble=ensemble, export=None, released_from=None, created=now, pneumoscan_version=__version__
    )


def distill(
    teacher_path: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    cfg: DistillConfig | None = None,
    ood_dir: str | Path | None = None,
    export: bool = True,
    progress: bool = True,
) -> dict:
    """Distil ``teacher_path`` on ``data_dir`` into ``out_dir`` (module docstring); returns the
    report written to ``distill.json``. Raises :class:`GateError` when the student fails the gate
    (no model written; the report goes to ``distill-refused.json``), FileExistsError when
    ``out_dir`` already holds a student."""

    cfg = cfg or DistillConfig()
    out_dir, timings = Path(out_dir), {}
    if (out_dir / MODEL_FILE).exists():
        raise FileExistsError(f"{out_dir} already holds a student; choose another --out")
    teacher = Teacher.load(teacher_path)
    distil_s, held_s, never = distillation_split(data_dir, teacher.metadata, cfg)
    cached = prepare_views(
        teacher, data_dir, out_dir, distil_s, held_s, never, ood_dir, cfg, timings, progress
    )
    features, members, kept, sets = cached
    with _timed(timings, "mixed views"):
        features, members = mixed_views(teacher, features, members, cfg)
    with _timed(timings, "student training"):
        if cfg.kind == "shared-body":
            body, heads, training = fit_shared(teacher, features, members, cfg, progress=progress)
            model = build_shared_ensemble(teacher.model, teacher.cut, body, heads)
        else:
            top, training = fit_student(teacher, features, members, cfg, n_clean=len(kept), progress=progress)
            model = build_student(teacher.model, teacher.cut, top)
    del features
    distil = DecodedSet(np.zeros((0,)), np.zeros(0), kept, [])
    distilled_on = {
        "data_dir": str(data_dir),
        "data_fingerprint": fingerprint(distil.samples),
        "images": len(distil.samples),
        "patients": len({s.patient_id for s in distil.samples}),
        "views_per_image": 1 + cfg.augmented_views,
        "mixed_views_per_image": cfg.mixup_views,
        "augmentation": "the training augmentation (pneumoscan.config.AugmentConfig defaults)",
        "held_out_images": len(sets[0].y),
        "held_out_by_every_member": int(sets[0].never.sum()),
        "holdout": f"patient-level, {cfg.holdout_fraction:.0%} of the images per class, seed {cfg.seed}",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_dir / ".distill-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        with _timed(timings, "save, reload, gate"):
            save_model(model, tmp / MODEL_FILE)
            saved = keras.saving.load_model(tmp / MODEL_FILE, safe_mode=True, compile=False)
            # The weights as saved (float16 kernels).
            if cfg.kind == "shared-body":
                score_shared(saved, teacher.metadata, sets)
            else:
                score_student(saved.get_layer("student"), sets)
            report = gate(
                sets, teacher.metadata, max_auc_diff=cfg.max_auc_diff, min_agreement=cfg.min_agreement
            )
        describe = shared_metadata if cfg.kind == "shared-body" else student_metadata
        meta = describe(
            teacher,
            dim=int(model.output.shape[-1]) - 2,
            distilled_on=distilled_on,
            training=training,
            report=summary(report),
            cfg=cfg,
        )
        meta.write(tmp / MODEL_FILE)
        if not report["passed"]:
            refused = _full_report(report, distilled_on, training, timings, cfg, teacher)
            (out_dir / REFUSED_FILE).write_text(json.dumps(refused, indent=2) + "\n")
            raise GateError(
                f"the student fails the gate, no model written (its report: {out_dir / REFUSED_FILE}): "
                + "; ".join(report["misses"]),
                report,
            )
        report["serving_check"] = serving_check(
            teacher.path, tmp / MODEL_FILE, sets, _first_held_out(held_s, teacher.metadata.image_size)
        )
        for name in (MODEL_FILE, Path(MODEL_FILE).stem + ".meta.json"):
            (tmp / name).replace(out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if export:
        with _timed(timings, "float16 LiteRT export and its check"):
            report["export"] = _export(out_dir, data_dir, progress=progress)
    full = _full_report(report, distilled_on, training, timings, cfg, teacher)
    (out_dir / REPORT_FILE).write_text(json.dumps(full, indent=2) + "\n")
    (out_dir / REFUSED_FILE).unlink(missing_ok=True)  # an earlier refusal in this folder is stale now
    return full


def _full_report(report, distilled_on, training, timings, cfg, teacher) -> dict:
    """Everything a run measured: the gate, the data, the training, the time of each stage."""
    full = {"gate": report, "distilled_on": distilled_on, "training": training, "timings_s": timings}
    full["config"] = dataclasses.asdict(cfg)
    full["teacher"] = {"path": str(teacher.path), "sha256": teacher.sha256}
    return full


def prepare_views(teacher, data_dir, out_dir, distil_s, held_s, never, ood_dir, cfg, timings, progress):
    """Stem features of the distillation views with the teacher's calibrated members, the kept
    distillation samples and the gate sets; read from ``out_dir/.cache`` when a previous run of the
    same teacher, data and view options left them there (``--keep-cache``)."""
    from pneumoscan.training.engine import Trainer

    size = teacher.metadata.image_size
    key = hashlib.sha256(
        json.dumps(
            [
                teacher.sha256,
                fingerprint(distil_s),
                fingerprint(held_s),
                str(ood_dir),
                cfg.augmented_views,
                cfg.seed,
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = Path(out_dir) / ".cache" / f"views-{key}.npz"
    if cache.is_file():
        log.info("reading the cached views %s", cache)
        with np.load(cache, allow_pickle=False) as z:
            by_path = {str(s.path): s for s in distil_s + held_s}
            kept = [by_path[p] for p in z["kept"]]
            sets = [
                GateSet(str(z[f"name{i}"]), z[f"features{i}"], z[f"y{i}"] if z[f"y{i}"].size else None,
                        z[f"never{i}"], z[f"tp{i}"], z[f"ts{i}"])
                for i in range(int(z["n_sets"]))
            ]  # fmt: skip
            return z["features"], z["members"], kept, sets
    engine = Trainer(TrainConfig(image_size=size, seed=cfg.seed), data_dir, out_dir, progress=progress)
    stem = teacher.stem()
    keras.utils.set_random_seed(cfg.seed)
    with _timed(timings, "distillation views: decode, stem"):
        distil = decode_samples(distil_s, size, progress=progress)
        features = distillation_features(engine, stem, distil.x, cfg)
    with _timed(timings, "teacher on the distillation views"):
        members = teacher.members(features)
    with _timed(timings, "gate views: decode, stem, teacher"):
        sets = gate_sets(engine, stem, teacher, held_s, never, ood_dir, progress=progress)
    if cfg.keep_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"features": features, "members": members, "kept": [str(s.path) for s in distil.samples]}
        for i, g in enumerate(sets):
            y = g.y if g.y is not None else np.zeros(0)
            arrays |= {f"name{i}": g.name, f"features{i}": g.features, f"y{i}": y, f"never{i}": g.never}
            arrays |= {f"tp{i}": g.teacher_p, f"ts{i}": g.teacher_spread}
        np.savez(cache, n_sets=len(sets), **arrays)
    return features, members, distil.samples, sets


def _first_held_out(held: list[Sample], size: int, n: int = 16) -> np.ndarray:
    return decode_samples(held[:n], size, progress=False).x


def _export(out_dir: Path, data_dir, *, progress: bool) -> dict:
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.training.export import export_tflite

    return export_tflite(
        Predictor(out_dir / MODEL_FILE),
        out=out_dir / LITERT_FILE,
        quantize="float16",
        data_dir=data_dir,
        progress=progress,
    )
