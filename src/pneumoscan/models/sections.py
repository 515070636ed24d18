"""Typed sections of the model sidecar (:class:`~pneumoscan.models.artifacts.ModelMetadata`).

A section that readers interpret, rather than pass on, gets a class here that says what its
numbers are, checks them when it is made, and reads and writes its JSON form:

- :class:`HeldOutFigures`, the sidecar's ``held_out`` section: metrics at the stored threshold on
  training images the model (or each member) held out, with what those images were and what they
  chose. Older sidecars stored the bare metrics as ``validation``; :meth:`HeldOutFigures.from_legacy`
  reads them.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

#: What held-out images choose in a training run, in the words the model card and the API use.
CHOSE_EPOCHS, CHOSE_CALIBRATION, CHOSE_THRESHOLD, CHOSE_BAND = "epochs", "calibration", "threshold", "band"


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool): what a sidecar metric may be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


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
        ensemble = sidecar.get("ensemble") or {}
        measured_on = ensemble.get("validation") or "the model's patient-level validation split"
        chose = [CHOSE_CALIBRATION, CHOSE_THRESHOLD]
        if ensemble.get("member_split", "validation") == "validation":
            chose.insert(0, CHOSE_EPOCHS)
        if sidecar.get("decision") is not None:
            chose.append(CHOSE_BAND)
        return cls(metrics, measured_on, tuple(chose))
