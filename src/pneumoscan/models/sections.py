"""Typed sections of the model sidecar (:class:`~pneumoscan.models.artifacts.ModelMetadata`).

A section that readers interpret, rather than pass on, gets a class here that says what its
numbers are, checks them when it is made, and reads and writes its JSON form:

- :class:`HeldOutFigures`, the sidecar's ``held_out`` section: metrics at the stored threshold on
  training images the model (or each member) held out, with what those images were and what they
  chose. Older sidecars stored the bare metrics as ``validation``; :meth:`HeldOutFigures.from_legacy`
  reads them.
- :class:`EnsembleSection`, the sidecar's ``ensemble`` section: how many members the output row
  holds, the embedding's width, and how the members split the training folder (the one place
  that knows the defaults of sidecars that left a key out).
- :class:`StudentSection`, the ``student`` section of a distilled student: which output column
  holds what, and where the student came from.
- :class:`ExportSection`, the ``export`` section of a LiteRT file: its Keras source, how it was
  converted and what its parity check found.

The band (``decision``) and the guard (``scope``) are parsed by the inference classes that use
them (:class:`~pneumoscan.inference.decision.UncertaintyBand`,
:class:`~pneumoscan.inference.scope.ScopeGuard`); ``test_split`` is figures reported back, shown as
they are. Those stay read-only mappings (:func:`frozen_json`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

from pneumoscan.config import DEFAULT_SEED, DEFAULT_VAL_FRACTION

#: What held-out images choose in a training run, in the words the model card and the API use.
CHOSE_EPOCHS, CHOSE_CALIBRATION, CHOSE_THRESHOLD, CHOSE_BAND = "epochs", "calibration", "threshold", "band"


def frozen_json(value: Any) -> Any:
    """A read-only deep copy of a JSON value (mappings become ``MappingProxyType``, lists tuples)."""
    if isinstance(value, Mapping):
        return types.MappingProxyType({str(k): frozen_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(frozen_json(v) for v in value)
    return value


def thawed_json(value: Any) -> Any:
    """The plain JSON value (dicts, lists) of a :func:`frozen_json` one."""
    if isinstance(value, Mapping):
        return {k: thawed_json(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thawed_json(v) for v in value]
    return value


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a sidecar metric may be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any, least: int = 0) -> bool:
    """An int (not a bool) of at least ``least``: a sidecar's counts, columns and seeds."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclasses.dataclass(frozen=True)
class HeldOutFigures:
    """Metrics of a model at its stored threshold on training images it held out.

    Attributes
    ----------
    metrics : mapping of str to number or None
        ``n``, ``accuracy``, ``recall``, ``specificity``, ``roc_auc``, ``ece``, ... (read-only).
    measured_on : str
        Which images, in words: a patient-level validation split, or each image scored by the
        ensemble member that held it out (the figures of one member, not of the averaged ensemble).
    chose : tuple of str
        What those same images chose (:data:`CHOSE_EPOCHS`, ...): when anything, the figures are
        optimistic, and :attr:`optimistic` says so in words.
    """

    metrics: Mapping[str, float | int | None]
    measured_on: str
    chose: tuple[str, ...] = (CHOSE_EPOCHS, CHOSE_CALIBRATION, CHOSE_THRESHOLD)

    def __post_init__(self):
        if not isinstance(self.metrics, Mapping):
            raise ValueError(f"held_out.metrics must be a mapping, got {self.metrics!r}")
        for key, value in self.metrics.items():
            if value is not None and not is_number(value):
                raise ValueError(f"held_out.metrics[{key!r}] must be a number or null, got {value!r}")
        if not isinstance(self.measured_on, str) or not self.measured_on.strip():
            raise ValueError(f"held_out.measured_on must say which images, got {self.measured_on!r}")
        chose = tuple(self.chose)
        if not all(isinstance(c, str) for c in chose):
            raise ValueError(f"held_out.chose must be names, got {self.chose!r}")
        object.__setattr__(self, "metrics", types.MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "chose", chose)

    @property
    def optimistic(self) -> str | None:
        """What the images chose, as a sentence; None when they chose nothing."""
        if not self.chose:
            return None
        return f"optimistic: these images chose the {', '.join(self.chose)}"

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "measured_on": self.measured_on, "chose": list(self.chose)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeldOutFigures:
        if not isinstance(d, Mapping) or not {"metrics", "measured_on"} <= set(d):
            raise ValueError(f"held_out must hold 'metrics' and 'measured_on', got {d!r}")
        return cls(d["metrics"], d["measured_on"], tuple(d.get("chose", ())))

    @classmethod
    def from_legacy(cls, metrics: Mapping[str, Any], sidecar: Mapping[str, Any]) -> HeldOutFigures:
        """The ``validation`` metrics of a sidecar written before this section had a type.

        ``sidecar`` is the rest of the sidecar's JSON: an ensemble's own words for its held-out
        predictions (``ensemble.validation``) say which images; a stored band was fitted on them too.
        """
        if not isinstance(metrics, Mapping):
            raise ValueError(f"validation must be a mapping, got {metrics!r}")
        ensemble = EnsembleSection.from_dict(sidecar["ensemble"]) if sidecar.get("ensemble") else None
        measured_on = (ensemble and ensemble.held_out_words) or "the model's patient-level validation split"
        return cls(metrics, measured_on, held_out_choices(ensemble, band=sidecar.get("decision") is not None))


def held_out_choices(ensemble: EnsembleSection | None, *, band: bool) -> tuple[str, ...]:
    """What a model's held-out images chose in training: the calibration and threshold always; the
    epochs for a single model and for ``"validation"`` members (fold members train fixed epochs);
    the uncertainty band when one was fitted on them."""
    epochs = ensemble is None or ensemble.member_split == "validation"
    chose = ((CHOSE_EPOCHS,) if epochs else ()) + (CHOSE_CALIBRATION, CHOSE_THRESHOLD)
    return chose + ((CHOSE_BAND,) if band else ())


#: How ensemble members hold training images out: cross-fitted patient folds, or each member its
#: own seeded patient-level validation split.
MEMBER_SPLITS = ("folds", "validation")


@dataclasses.dataclass(frozen=True)
class EnsembleSection:
    """How a deep ensemble's output is laid out and how its members were trained.

    Attributes
    ----------
    members : int >= 2
        Member columns of the output row (:class:`~pneumoscan.models.artifacts.OutputLayout`).
    embedding_dim : int >= 0
        Width of the stem's embedding at the end of the row.
    member_split : {"folds", "validation"}
        How members held images out (:data:`MEMBER_SPLITS`); sidecars without the key were folds.
    val_fraction : float or None
        Each member's validation share of patients (``"validation"``; the default when missing).
    folds : int or None
        Patient folds (``"folds"``).
    fold_seed : int
        Seed of the folds, or of member 0's validation split (member ``k``: ``fold_seed + k``).
    limit : int or None
        The stratified subset of the training folder the members saw (None: all of it).
    unfreeze_blocks : int
        Top MobileNetV2 blocks each member fine-tuned: the stem is cut below them.
    combine, held_out_words : str or None
        How the members' probabilities are combined, and what their held-out predictions are, in
        words (written as ``held_out_words``; older sidecars wrote ``validation``).
    extra : mapping
        Other keys, kept as they were.
    """

    members: int
    embedding_dim: int = 0
    member_split: str = "folds"
    val_fraction: float | None = None
    folds: int | None = None
    fold_seed: int = DEFAULT_SEED
    limit: int | None = None
    unfreeze_blocks: int = 3
    combine: str | None = None
    held_out_words: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not is_count(self.members, 2):
            raise ValueError(f"ensemble.members must be an integer >= 2, got {self.members!r}")
        if not is_count(self.embedding_dim):
            raise ValueError(f"ensemble.embedding_dim must be an integer >= 0, got {self.embedding_dim!r}")
        if self.member_split not in MEMBER_SPLITS:
            raise ValueError(
                f"ensemble.member_split must be one of {MEMBER_SPLITS}, got {self.member_split!r}"
            )
        if self.member_split == "validation" and self.val_fraction is None:
            object.__setattr__(self, "val_fraction", DEFAULT_VAL_FRACTION)
        if self.val_fraction is not None and not (is_number(self.val_fraction) and 0 < self.val_fraction < 1):
            raise ValueError(f"ensemble.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("fold_seed", "unfreeze_blocks"):
            if not is_count(getattr(self, name)):
                raise ValueError(f"ensemble.{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.limit is not None and not is_count(self.limit, 1):
            raise ValueError(f"ensemble.limit must be a positive integer or null, got {self.limit!r}")
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))

    _KEYS = ("members", "embedding_dim", "member_split", "val_fraction", "folds", "fold_seed", "limit")
    _WORDS = ("unfreeze_blocks", "combine", "held_out_words")

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._KEYS + self._WORDS if getattr(self, k) is not None}
        out["limit"] = self.limit  # written even when null: "all of the folder" is a statement
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EnsembleSection:
        if not isinstance(d, Mapping) or "members" not in d:
            raise ValueError(f"ensemble must be a mapping with 'members', got {d!r}")
        known = set(cls._KEYS + cls._WORDS)
        values = {k: d[k] for k in known if d.get(k) is not None}
        if "held_out_words" not in values and isinstance(d.get("validation"), str):
            values["held_out_words"] = d["validation"]  # older sidecars
        extra = {k: v for k, v in d.items() if k not in known | {"validation"}}
        return cls(**values, extra=extra)


#: The columns a student's sidecar must name (``student.outputs``).
STUDENT_OUTPUTS = ("p_pneumonia", "spread", "embedding")


@dataclasses.dataclass(frozen=True)
class StudentSection:
    """How a distilled student's output row is laid out (:mod:`pneumoscan.training.distill`).

    Attributes
    ----------
    outputs : mapping of str to int
        The column of each of :data:`STUDENT_OUTPUTS`: ``p_pneumonia`` (the teacher's *calibrated*
        ensemble probability, so the sidecar's calibration is not applied to it), ``spread`` (the
        teacher members' spread), ``embedding`` (the first of ``embedding_dim`` columns).
    width : int
        Columns of the output row.
    embedding_dim : int
        Width of the stem's embedding (the teacher's).
    extra : mapping
        Where it came from and how it was checked (``teacher``, ``config``, ``distilled_on``,
        ``gate``, ...), kept as they were (read-only).
    """

    outputs: Mapping[str, int]
    width: int
    embedding_dim: int
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        outputs, width, dim = self.outputs, self.width, self.embedding_dim
        if not isinstance(outputs, Mapping) or not all(is_count(outputs.get(k)) for k in STUDENT_OUTPUTS):
            raise ValueError(
                f"student.outputs must give a column for each of {list(STUDENT_OUTPUTS)}, got {outputs!r}"
            )
        if not (is_count(width) and is_count(dim)):
            raise ValueError(
                f"student.width and student.embedding_dim must be integers >= 0, got {width!r}, {dim!r}"
            )
        p, spread, start = (outputs[k] for k in STUDENT_OUTPUTS)
        embedding = set(range(start, start + dim))
        if max(p, spread) >= width or start + dim > width or len({p, spread}) < 2 or {p, spread} & embedding:
            raise ValueError(
                f"student.outputs {dict(outputs)} with a {dim}-d embedding do not fit an output"
                f" of width {width}"
            )
        object.__setattr__(self, "outputs", types.MappingProxyType(dict(outputs)))
        object.__setattr__(self, "extra", frozen_json(self.extra))

    def to_dict(self) -> dict[str, Any]:
        return {
            "outputs": dict(self.outputs),
            "width": self.width,
            "embedding_dim": self.embedding_dim,
            **thawed_json(self.extra),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudentSection:
        if not isinstance(d, Mapping):
            raise ValueError(f"student must be a mapping, got {d!r}")
        known = ("outputs", "width", "embedding_dim")
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(d.get("outputs"), d.get("width"), d.get("embedding_dim"), extra=extra)


@dataclasses.dataclass(frozen=True)
class ExportSection:
    """How a LiteRT file was made from a Keras model and checked against it
    (:mod:`pneumoscan.training.export`, and ``adapt``'s export).

    Attributes
    ----------
    source : str or None
        The Keras model it was converted from: relative to the export's folder, or absolute.
    format, quantize : str or None
        ``"tflite"``; ``"none"``, ``"float16"`` or ``"int8"``.
    check : mapping
        The parity check against the Keras model: which images (``n_check``, ``kinds``,
        ``sources``), decision agreement, max |dp|, the gate, ``passed`` (read-only; empty when
        none was run).
    extra : mapping
        Other keys (``created``, ``tensorflow``, ``data_dir``, ``n_representative``), kept as they were.
    """

    source: str | None = None
    format: str | None = None
    quantize: str | None = None
    check: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name, what in (("source", "a path string"), ("format", "a string"), ("quantize", "a string")):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"export.{name} must be {what}, got {value!r}")
        if not isinstance(self.check, Mapping):
            raise ValueError(f"export.check must be a mapping, got {self.check!r}")
        object.__setattr__(self, "check", frozen_json(self.check))
        object.__setattr__(self, "extra", frozen_json(self.extra))

    _KEYS = ("source", "format", "quantize")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in self._KEYS if getattr(self, k) is not None}
        if self.check:
            out["check"] = thawed_json(self.check)
        return {**out, **thawed_json(self.extra)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportSection:
        if not isinstance(d, Mapping):
            raise ValueError(f"export must be a mapping, got {d!r}")
        extra = {k: v for k, v in d.items() if k not in (*cls._KEYS, "check")}
        return cls(**{k: d.get(k) for k in cls._KEYS}, check=d.get("check") or {}, extra=extra)
