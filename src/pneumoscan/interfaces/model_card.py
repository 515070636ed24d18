"""What ``GET /v1/model`` of ``pneumoscan serve`` answers: the model's identity, operating point and
figures, each named for what it is (held-out training figures, independent figures), from the
Predictor and its sidecar."""

from __future__ import annotations

from typing import Any

from pneumoscan import __version__
from pneumoscan.config import DISCLAIMER
from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.results import PREDICTION_COLUMNS
from pneumoscan.models.artifacts import ModelMetadata


def model_card(predictor: Predictor) -> dict[str, Any]:
    """What ``GET /v1/model`` answers: the model's identity, operating point and figures.

    ``held_out`` holds the sidecar's ``held_out`` figures (images the model, or a member, held out
    in training, with which images and what they chose: its operating point, so they are
    optimistic), ``independent`` the
    figures measured on data that chose nothing about the model (the sidecar's ``test_split``
    section); each ``None`` when the sidecar records none.
    """
    meta = predictor.metadata
    export = meta.export
    return {
        "model_file": predictor.model_path.name,
        "architecture": meta.arch,
        "backend": predictor.backend,
        "image_size": predictor.image_size,
        "class_names": list(meta.class_names),
        "threshold": predictor.threshold,
        "target_recall": meta.target_recall,
        "calibration": meta.calibration.to_dict(),
        "ensemble": meta.ensemble.to_dict() if meta.ensemble is not None else None,
        "held_out": _held_out(meta),
        "independent": _plain(meta.test_split),
        "decision_band": predictor.band.to_dict(),
        "scope_guard": predictor.guard is not None,
        "export": {
            "format": export.format,
            "quantize": export.quantize,
            "check": _plain(export.check) if export.check else None,
        }
        if export is not None
        else None,
        "version": {
            "model_created": meta.created,
            "model_pneumoscan_version": meta.pneumoscan_version,
            "released_from": meta.released_from,
            "data_fingerprint": meta.data_fingerprint,
            "service_pneumoscan_version": __version__,
        },
        "columns": list(PREDICTION_COLUMNS),
        "disclaimer": DISCLAIMER,
    }


def _held_out(meta: ModelMetadata) -> dict[str, Any] | None:
    """The sidecar's held-out training figures, with what they were measured on and why optimistic."""
    if meta.held_out is None:
        return None
    return {
        **_plain(meta.held_out.metrics),
        "measured_on": meta.held_out.measured_on,
        "optimistic": meta.held_out.optimistic,
    }


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a sidecar value (read-only mappings and tuples included)."""
    if value is None:
        return None
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
