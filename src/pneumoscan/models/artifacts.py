"""What a trained model is on disk: its metadata sidecar and the files of a run folder.

Three contracts, each defined here and nowhere else:

- :class:`ModelMetadata`, the sidecar ``<stem>.meta.json`` beside every model file. Training and
  export write it, the :class:`~pneumoscan.inference.predictor.Predictor` reads it, the tests and
  benchmarks build it; it is checked when it is made, so a bad sidecar is never written. On disk::

      {"arch": "mobilenetv2", "calibration": {"a": 1.46, "b": -0.32},
       "class_names": ["NORMAL", "PNEUMONIA"], "image_size": 224, "threshold": 0.912,
       "split": {"limit": null, "seed": 1337, "val_fraction": 0.15},
       "held_out": {"metrics": {...}, "measured_on": "...", "chose": [...]}, ...}

- :class:`OutputLayout`, where each quantity sits in a model's raw output row (probability,
  members, spread, embedding), read from the sidecar: the model builders in
  :mod:`~pneumoscan.models.architectures` write the row in this order, the predictor reads it.

- :class:`RunFolder`, the file names of a ``pneumoscan train`` run folder, used by the training
  engine that writes them and by ``pneumoscan compare`` and ``--resume`` that read them.

And how a trained model is written: :func:`save_model`, Keras's own ``.keras`` file with its weight
matrices stored in float16.

Growing the sidecar: a new optional section (ensemble members, an uncertainty band, a scope guard)
is a new field defaulting to ``None``, converted in :meth:`ModelMetadata.from_json` /
:meth:`ModelMetadata.to_json` and checked in ``__post_init__``. ``None`` fields are not written, so
older sidecars stay valid. Keys this version does not know are kept in ``extra`` and written back
unchanged, so reading and rewriting a newer sidecar loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pneumoscan.config import CLASS_NAMES, MIN_IMAGE_SIDE, SplitConfig
from pneumoscan.models.architectures import architecture
from pneumoscan.models.calibration import (
    Calibrator,
    IsotonicCalibrator,
    PlattCalibrator,
    calibrator_from_dict,
)
from pneumoscan.models.sections import (
    EnsembleSection,
    ExportSection,
    HeldOutFigures,
    StudentSection,
    frozen_json,
    is_number,
    thawed_json,
)

SIDECAR_SUFFIX = ".meta.json"


#: The weights file inside a ``.keras`` archive (Keras's v3 format: ``config.json``,
#: ``metadata.json`` and this HDF5 file).
KERAS_WEIGHTS_FILE = "model.weights.h5"


def save_model(model, path: str | Path) -> Path:
    """Save ``model`` as a ``.keras`` file whose weight matrices are stored as float16.

    Keras writes every variable in its own dtype, float32. Here the arrays of two or more
    dimensions (convolution and dense kernels: almost all of the bytes) are then rewritten as
    float16 in the archive's weights file; biases and BatchNorm statistics stay float32. Keras's own
    loader (safe mode) casts them back into the float32 variables, so the model still computes in
    float32, with kernels rounded to float16 precision: the rounding the float16 LiteRT export
    makes too. The file halves (the released three-member ensemble: 24.2 MB -> 12.8 MB).

    Parameters
    ----------
    model : keras.Model
    path : path
        The ``.keras`` file to write (replaced if it exists).

    Returns
    -------
    Path
        ``path``.
    """
    import io
    import zipfile

    import h5py
    import numpy as np

    path = Path(path)
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    if KERAS_WEIGHTS_FILE not in entries:
        raise ValueError(f"{path}: no {KERAS_WEIGHTS_FILE} in the Keras archive ({sorted(entries)})")
    compact = io.BytesIO()
    with (
        h5py.File(io.BytesIO(entries[KERAS_WEIGHTS_FILE]), "r") as weights,
        h5py.File(compact, "w") as out,
    ):
        out.attrs.update(weights.attrs)

        def copy(name: str, item) -> None:
            if isinstance(item, h5py.Group):
                out.require_group(name).attrs.update(item.attrs)
                return
            data = item[()]
            if data.dtype == np.float32 and data.ndim >= 2:
                data = data.astype(np.float16)
            out.create_dataset(name, data=data).attrs.update(item.attrs)

        weights.visititems(copy)
    entries[KERAS_WEIGHTS_FILE] = compact.getvalue()
    partial = path.with_name(path.name + ".partial")
    with zipfile.ZipFile(partial, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    partial.replace(path)
    return path


def metadata_path(model_path: str | Path) -> Path:
    """The sidecar of a model file: ``models/x.keras`` -> ``models/x.meta.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + SIDECAR_SUFFIX)


#: Sidecar sections with a class of their own (:mod:`pneumoscan.models.sections`).
_TYPED_SECTIONS = (("ensemble", EnsembleSection), ("student", StudentSection), ("export", ExportSection))


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """The sidecar of one model file: what the model needs and how to read its output.

    Read its fields (``meta.threshold``, ``meta.export``); :meth:`to_json` is the file's form.

    Attributes
    ----------
    image_size : int
        Side, in pixels, of the square grey ``(n, size, size, 1)`` input, at least
        :data:`~pneumoscan.config.MIN_IMAGE_SIDE`.
    threshold : float in (0, 1)
        Operating threshold on the calibrated P(pneumonia).
    class_names : tuple of str
        Must be :data:`~pneumoscan.config.CLASS_NAMES`: the output is P(class 1 = PNEUMONIA).
    calibration : PlattCalibrator or IsotonicCalibrator
        Maps the raw output (each member's, for an ensemble) to a calibrated probability; the
        identity when the file has none.
    arch : str or None
        A name of :data:`~pneumoscan.models.architectures.ARCHITECTURES`; ``None`` for a model
        built by hand (tests).
    target_recall : float in (0, 1], optional
        The validation recall the threshold was chosen to reach.
    split : SplitConfig, optional
        The patient-level split of ``data_dir`` the model was validated on.
    data_dir, data_fingerprint : str, optional
        The training data and a hash of its files (:func:`pneumoscan.data.dataset.fingerprint`).
    held_out : HeldOutFigures, optional
        Metrics at the threshold on training images the model (or each member) held out, with which
        images and what they chose (:class:`~pneumoscan.models.sections.HeldOutFigures`). Read
        from the ``validation`` key of older sidecars.
    ensemble : EnsembleSection, optional
        Present for a deep ensemble (:func:`pneumoscan.models.architectures.build_ensemble`;
        given as a :class:`~pneumoscan.models.sections.EnsembleSection` or its JSON form): the
        model's output is then ``(n, 1 + members + embedding_dim)``: the mean raw probability,
        each member's raw probability, and the embedding of the shared frozen stem; the section
        also says how the members split the training folder.
    student : StudentSection, optional
        Present for a distilled student (:mod:`pneumoscan.training.distill`; given as a
        :class:`~pneumoscan.models.sections.StudentSection` or its JSON form): one top on the
        teacher ensemble's frozen stem. Its ``outputs`` name the columns of the model's output
        (``p_pneumonia``, the teacher's *calibrated* ensemble probability, so ``calibration`` is
        not applied to it; ``spread``, the teacher members' spread; ``embedding``, the first of
        ``embedding_dim`` columns of the stem's embedding), ``width`` the output's width; the rest
        says where it came from (``teacher``: file name, sha256, members) and how it was checked
        (``gate``). The output is read by these columns, not by ``ensemble``, which then describes
        the teacher (how its members split the training data; the student's stem is the teacher's).
    decision : mapping, optional
        The three-outcome rule's uncertainty band, ``{"band": {...}}``
        (:class:`pneumoscan.inference.decision.UncertaintyBand`, fitted on out-of-fold predictions).
    scope : mapping, optional
        The out-of-scope guard on the model's embedding
        (:class:`pneumoscan.inference.scope.ScopeGuard`); needs an embedding output
        (``ensemble.embedding_dim`` > 0, or a student's ``embedding_dim``).
    test_split : mapping, optional
        Metrics of *this* model measured independently on the official test split (``n``,
        ``accuracy``, ``recall``, ..., and ``ci`` with 95 % intervals, ``source``); shown beside
        ``held_out`` and only for this model.
    export : ExportSection, optional
        How a LiteRT file was made from a Keras model and checked (``source``, ``quantize``,
        ``check``, ...; :class:`~pneumoscan.models.sections.ExportSection`, or its JSON form;
        :mod:`pneumoscan.training.export`).
    pneumoscan_version, created, released_from : str, optional
        Provenance: the version that trained it, when (ISO 8601, UTC), and a release note.
    extra : mapping
        Keys this version does not know, kept as they were.
    """

    image_size: int
    threshold: float
    class_names: tuple[str, ...] = CLASS_NAMES
    calibration: Calibrator = PlattCalibrator()
    arch: str | None = None
    target_recall: float | None = None
    split: SplitConfig | None = None
    data_dir: str | None = None
    data_fingerprint: str | None = None
    held_out: HeldOutFigures | None = None
    ensemble: EnsembleSection | None = None
    student: StudentSection | None = None
    decision: Mapping[str, Any] | None = None
    scope: Mapping[str, Any] | None = None
    test_split: Mapping[str, Any] | None = None
    export: ExportSection | None = None
    pneumoscan_version: str | None = None
    created: str | None = None
    released_from: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    #: Fields read and written as JSON values as they are (strings, numbers).
    _PLAIN: ClassVar[tuple[str, ...]] = (
        "image_size",
        "threshold",
        "arch",
        "target_recall",
        "data_dir",
        "data_fingerprint",
        "pneumoscan_version",
        "created",
        "released_from",
    )

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the nested values once, here
        set_(self, "class_names", tuple(self.class_names))
        for name, section in _TYPED_SECTIONS:
            if isinstance(getattr(self, name), Mapping):  # given in its JSON form
                set_(self, name, section.from_dict(getattr(self, name)))
        for name in ("decision", "scope", "test_split", "extra"):
            if getattr(self, name) is not None:
                if not isinstance(getattr(self, name), Mapping):
                    raise ValueError(f"{name} must be a mapping, got {getattr(self, name)!r}")
                set_(self, name, frozen_json(getattr(self, name)))
        self._check()

    def _check(self) -> None:
        if self.class_names != CLASS_NAMES:
            raise ValueError(f"class_names must be {list(CLASS_NAMES)}, got {list(self.class_names)}")
        if not isinstance(self.image_size, int) or isinstance(self.image_size, bool):
            raise ValueError(f"image_size must be an integer, got {self.image_size!r}")
        if self.image_size < MIN_IMAGE_SIDE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIDE}, got {self.image_size}")
        if not (is_number(self.threshold) and 0.0 < self.threshold < 1.0):
            raise ValueError(f"threshold must be a number in (0, 1), got {self.threshold!r}")
        if self.target_recall is not None and not (
            is_number(self.target_recall) and 0.0 < self.target_recall <= 1.0
        ):
            raise ValueError(f"target_recall must be a number in (0, 1], got {self.target_recall!r}")
        if not isinstance(self.calibration, PlattCalibrator | IsotonicCalibrator):
            raise ValueError(f"calibration must be a calibration map, got {self.calibration!r}")
        for name, section in _TYPED_SECTIONS:
            if getattr(self, name) is not None and not isinstance(getattr(self, name), section):
                raise ValueError(
                    f"{name} must be a {section.__name__} or its JSON form, got {getattr(self, name)!r}"
                )
        # The band and the guard are parsed (and fully checked) by the inference stage that uses them.
        if self.decision is not None and not isinstance(self.decision.get("band"), Mapping):
            raise ValueError(f"decision must hold a 'band' mapping, got {thawed_json(self.decision)!r}")
        if self.scope is not None:
            dim = self.embedding_dim
            if not dim or len(self.scope.get("mean", ())) != dim:
                raise ValueError(
                    f"scope guard is for {len(self.scope.get('mean', ()))}-d embeddings but the model's "
                    f"embedding_dim is {dim}; refit it on this model's embeddings"
                )
        if self.split is not None and not isinstance(self.split, SplitConfig):
            raise ValueError(f"split must be a SplitConfig, got {self.split!r}")
        if self.arch is not None:
            architecture(self.arch)  # ValueError naming the registered ones
        if self.held_out is not None and not isinstance(self.held_out, HeldOutFigures):
            raise ValueError(f"held_out must be HeldOutFigures, got {self.held_out!r}")
        clash = set(self.extra) & {f.name for f in dataclasses.fields(self)}
        if clash:
            raise ValueError(f"extra must not repeat known keys, got {sorted(clash)}")

    @property
    def embedding_dim(self) -> int:
        """Width of the model's embedding output: a student's, else an ensemble's, else 0."""
        if self.student is not None:
            return self.student.embedding_dim
        return self.ensemble.embedding_dim if self.ensemble is not None else 0

    # ------------------------------------------------------------------ JSON

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        """Parse and check the JSON form (a mapping, as ``json.load`` returns it).

        Raises
        ------
        ValueError
            A missing ``image_size`` or ``threshold``, or any value that fails the checks; the
            message names the key and the bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a model sidecar must be a JSON object, got {type(data).__name__}")
        for key in ("image_size", "threshold"):
            if data.get(key) is None:
                raise ValueError(f"missing key {key!r}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values: dict[str, Any] = {k: data[k] for k in cls._PLAIN if data.get(k) is not None}
        values["class_names"] = tuple(data.get("class_names") or ())
        if data.get("calibration") is not None:
            values["calibration"] = calibrator_from_dict(data["calibration"])
        if data.get("split") is not None:
            if not isinstance(data["split"], Mapping):
                raise ValueError(f"split must be a mapping, got {data['split']!r}")
            values["split"] = SplitConfig.from_dict(dict(data["split"]))
        for key in ("ensemble", "student", "decision", "scope", "test_split", "export"):
            if data.get(key) is not None:
                values[key] = data[key]  # typed ones parsed by __post_init__
        if data.get("held_out") is not None:
            values["held_out"] = HeldOutFigures.from_dict(data["held_out"])
        elif data.get("validation") is not None:  # written before the section had a type
            values["held_out"] = HeldOutFigures.from_legacy(data["validation"], data)
        known.add("validation")
        values["extra"] = {k: v for k, v in data.items() if k not in known}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """The JSON form: plain dicts and lists, ``None`` fields left out, ``extra`` merged in."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._PLAIN if getattr(self, k) is not None}
        out["class_names"] = list(self.class_names)
        out["calibration"] = self.calibration.to_dict()
        if self.split is not None:
            out["split"] = self.split.to_dict()
        if self.held_out is not None:
            out["held_out"] = self.held_out.to_dict()
        for key, _ in _TYPED_SECTIONS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key).to_dict()
        for key in ("decision", "scope", "test_split"):
            if getattr(self, key) is not None:
                out[key] = thawed_json(getattr(self, key))
        out.update(thawed_json(self.extra))
        return out

    def updated(self, **changes: Any) -> ModelMetadata:
        """A copy with some keys replaced, given in their JSON form (``None`` removes a key).

        ``meta.updated(threshold=0.3, export={...})``; checked like :meth:`from_json`.
        """
        return type(self).from_json({**self.to_json(), **changes})

    # ------------------------------------------------------------------ files

    @classmethod
    def read(cls, model_path: str | Path) -> ModelMetadata:
        """Read and check the sidecar of ``model_path``.

        Raises
        ------
        FileNotFoundError
            No sidecar beside the model.
        ValueError
            Not JSON, or not a NORMAL/PNEUMONIA model's sidecar; the message starts with its path.
        """
        path = metadata_path(model_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: every pneumoscan model needs its metadata sidecar beside it "
                "(written by `pneumoscan train` and `pneumoscan export`)"
            )
        try:
            return cls.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def write(self, model_path: str | Path) -> Path:
        """Write the sidecar of ``model_path`` (keys sorted, indented); returns its path."""
        path = metadata_path(model_path)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return path

    __hash__ = None  # holds mappings; equality is by value


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    """Where each quantity sits in a model's raw output row, as its sidecar says.

    - one model: ``width`` 1, the raw probability in column 0;
    - an ensemble (sidecar ``ensemble``): the mean raw probability, each member's raw probability
      (``members`` columns from 1), then the embedding;
    - a distilled student (sidecar ``student``, which takes precedence): the columns its
      ``outputs`` name: the calibrated probability, the members' spread, the embedding.

    Attributes
    ----------
    width : int
    members : int
        Member columns (raw probabilities, calibrated one by one); 0 for a single model or a student.
    probability : int
        Column of the probability of pneumonia (raw; calibrated when ``calibrated``).
    calibrated : bool
        The probability column is already calibrated (a student): the sidecar's ``calibration``
        (its teacher members' map) is not applied again.
    spread : int or None
        Column of the members' spread, predicted by a student.
    embedding : int
        First column of the embedding (``embedding_dim`` columns).
    embedding_dim : int
    """

    width: int
    members: int = 0
    probability: int = 0
    calibrated: bool = False
    spread: int | None = None
    embedding: int = 0
    embedding_dim: int = 0

    @classmethod
    def of(cls, metadata: ModelMetadata) -> OutputLayout:
        """The layout the sidecar ``metadata`` describes."""
        if metadata.student is not None:
            student, columns = metadata.student, metadata.student.outputs
            return cls(
                width=student.width,
                probability=columns["p_pneumonia"],
                calibrated=True,
                spread=columns["spread"],
                embedding=columns["embedding"],
                embedding_dim=student.embedding_dim,
            )
        members = metadata.ensemble.members if metadata.ensemble is not None else 0
        dim = metadata.embedding_dim if members else 0
        return cls(width=1 + members + dim, members=members, embedding=1 + members, embedding_dim=dim)

    @property
    def member_columns(self) -> slice:
        """The members' raw probability columns (empty for a single model or a student)."""
        return slice(self.probability + 1, self.probability + 1 + self.members)

    @property
    def has_spread(self) -> bool:
        """The output gives a members' spread (an ensemble's members, or a student's column)."""
        return bool(self.members) or self.spread is not None


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """The files of one ``pneumoscan train --out RUN`` folder.

    Written by :mod:`pneumoscan.training.engine`; read by ``pneumoscan compare``
    (:mod:`pneumoscan.evaluation.comparison`) and ``--resume``.

    Attributes
    ----------
    root : Path
        The run folder.
    """

    root: Path

    MODEL: ClassVar[str] = "model.keras"  # the best model, chosen on validation; its sidecar beside it
    CONFIG: ClassVar[str] = "config.json"  # every option, data fingerprint, split sizes, versions
    HISTORY: ClassVar[str] = "history.csv"  # per-epoch metrics of every phase
    LEARNING_CURVES: ClassVar[str] = "learning_curves.png"
    RELIABILITY: ClassVar[str] = "reliability.png"
    VALIDATION: ClassVar[str] = "validation.json"  # metrics on validation at the threshold
    VALIDATION_PREDICTIONS: ClassVar[str] = "validation_predictions.csv"  # one row per image
    TIMINGS: ClassVar[str] = "timings.json"
    CHECKPOINTS: ClassVar[str] = "checkpoints"  # finished phases, for --resume
    BACKUP: ClassVar[str] = "backup"  # Keras BackupAndRestore of the running phase

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def model(self) -> Path:
        return self.root / self.MODEL

    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def history(self) -> Path:
        return self.root / self.HISTORY

    @property
    def learning_curves(self) -> Path:
        return self.root / self.LEARNING_CURVES

    @property
    def reliability(self) -> Path:
        return self.root / self.RELIABILITY

    @property
    def validation(self) -> Path:
        return self.root / self.VALIDATION

    @property
    def validation_predictions(self) -> Path:
        return self.root / self.VALIDATION_PREDICTIONS

    @property
    def timings(self) -> Path:
        return self.root / self.TIMINGS

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def backup(self) -> Path:
        return self.root / self.BACKUP

    def phase_weights(self, phase: str) -> Path:
        """Weights saved when training phase ``phase`` finished."""
        return self.checkpoints / f"{phase}.weights.h5"

    def phase_history(self, phase: str) -> Path:
        """Per-epoch history rows of a finished phase (JSON)."""
        return self.checkpoints / f"{phase}.history.json"

    def phase_backup(self, phase: str) -> Path:
        """Keras ``BackupAndRestore`` folder of a phase in progress."""
        return self.backup / phase
