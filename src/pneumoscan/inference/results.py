"""What a prediction is, and the per-image rows every table of predictions is made of.

- :class:`Prediction`: the answer for one image (:meth:`Predictor.predict_image
  <pneumoscan.inference.predictor.Predictor.predict_image>`).
- :data:`PREDICTION_COLUMNS` / :func:`prediction_row`: one image's prediction, or why there is
  none. ``pneumoscan predict --csv`` writes these columns, the app shows and downloads them under
  its own headings (:data:`pneumoscan.interfaces.app.COLUMN_HEADINGS`).
- :data:`LABELLED_COLUMNS` / :func:`labelled_row`: the same for an image whose true class is known,
  with its patient and subtype: ``predictions.csv`` of ``pneumoscan evaluate``, and with the raw
  score added (:data:`VALIDATION_COLUMNS`) ``validation_predictions.csv`` of a training run, which
  ``pneumoscan compare`` reads. In these two ``label`` is the *true* class index (0/1) and
  ``predicted`` the model's; in the prediction row ``label`` is the predicted class name.
- :func:`write_rows`: the one CSV writer (floats with a fixed number of decimals, ``None`` empty).
- :func:`percent`: a probability as people read it, on every screen (the app, the CLI's table),
  never rounded to certainty.

The row states the three-outcome decision (:mod:`pneumoscan.inference.decision`) and the
out-of-scope guard's verdict (:mod:`pneumoscan.inference.scope`): ``decision``, ``uncertainty``
(the ensemble members' spread of P(pneumonia)), ``in_scope`` and ``scope_reason``. An image that is
not a radiograph at all gets a row with its reason and decision ``out of scope``, no probabilities.

Growing the row: a new per-image column is added to :class:`Prediction`, to :data:`PREDICTION_COLUMNS` (before
``error``) and to :func:`prediction_row`; add it to :data:`LABELLED_COLUMNS` too and
:func:`labelled_row` carries it over, so the CLI, the app and evaluation all gain it at once.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pneumoscan.config import CLASS_NAMES, POSITIVE_CLASS
from pneumoscan.inference.decision import OUT_OF_SCOPE, UncertaintyBand, decide
from pneumoscan.inference.scope import IN_SCOPE, ScopeCheck

if TYPE_CHECKING:
    from pneumoscan.data.dataset import Sample

#: One image's prediction: ``label`` is the predicted class name; on failure only ``path``,
#: ``threshold`` (when given) and ``error`` are filled.
PREDICTION_COLUMNS: tuple[str, ...] = (
    "path",
    "p_normal",
    "p_pneumonia",
    "label",
    "confidence",
    "threshold",
    "decision",
    "uncertainty",
    "in_scope",
    "scope_reason",
    "scope_distance",
    "error",
)
#: One labelled image: ``label`` is its true class index, ``predicted`` the model's (0/1).
LABELLED_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "subtype",
    "label",
    "p_pneumonia",
    "predicted",
    "decision",
    "uncertainty",
    "in_scope",
    "scope_reason",
    "scope_distance",
    "error",
)
#: A training run's validation images: ``p_raw`` is the uncalibrated model output; no image fails
#: (undecodable files were left out of the split before training).
VALIDATION_COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "subtype",
    "label",
    "p_raw",
    "p_pneumonia",
    "predicted",
)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The answer for one image.

    Attributes
    ----------
    p_normal, p_pneumonia : float
        Calibrated probabilities, summing to 1.
    label : str
        The class at the operating threshold: ``"PNEUMONIA"`` when ``p_pneumonia >= threshold``,
        else ``"NORMAL"`` (what metrics at the threshold count; people read ``decision``).
    confidence : float or None
        The probability of the stated ``decision``: P(pneumonia) for "pneumonia suspected",
        P(normal) for "no pneumonia detected", always >= 0.5; ``None`` when uncertain.
    threshold : float
        The operating threshold on ``p_pneumonia``.
    decision : str
        :data:`~pneumoscan.inference.decision.PNEUMONIA`, ``NO_PNEUMONIA`` or ``UNCERTAIN``.
    uncertainty : float or None
        Spread (standard deviation) of the ensemble members' P(pneumonia); ``None`` for one model.
    in_scope : bool
        False when the out-of-scope guard flagged the image: its probabilities are unreliable.
    scope_reason : str
        Why it was flagged, in plain words; ``""`` when in scope.
    scope_distance : float or None
        The guard's embedding distance over its threshold (above 1 is flagged); ``None`` without
        a guard. A batch's distances give its drift summary (:mod:`pneumoscan.inference.drift`).
    """

    p_normal: float
    p_pneumonia: float
    label: str
    confidence: float | None
    threshold: float
    decision: str = ""
    uncertainty: float | None = None
    in_scope: bool = True
    scope_reason: str = ""
    scope_distance: float | None = None


def make_prediction(
    p_pneumonia: float,
    threshold: float,
    *,
    band: UncertaintyBand | None = None,
    spread: float | None = None,
    scope: ScopeCheck = IN_SCOPE,
) -> Prediction:
    """The prediction for one calibrated probability: label at ``threshold``, decision by the rule.

    Parameters
    ----------
    p_pneumonia : float in [0, 1]
    threshold : float in (0, 1)
    band : UncertaintyBand, optional
        The model's band (default: the minimal one, between 0.5 and the threshold).
    spread : float, optional
        The ensemble members' spread of P(pneumonia).
    scope : ScopeCheck, default=IN_SCOPE
        The out-of-scope guard's verdict (a radiograph; not-a-radiograph gets no prediction).
    """
    p = float(p_pneumonia)
    label = CLASS_NAMES[1] if p >= threshold else CLASS_NAMES[0]
    spread = None if spread is None or spread != spread else float(spread)  # NaN: no spread
    decision = decide(p, threshold=float(threshold), band=band, spread=spread)
    return Prediction(
        p_normal=1.0 - p,
        p_pneumonia=p,
        label=label,
        confidence=decision.stated_probability,
        threshold=float(threshold),
        decision=decision.outcome,
        uncertainty=spread,
        in_scope=scope.in_scope,
        scope_reason=scope.reason,
        scope_distance=scope.distance,
    )


def prediction_row(
    path: str | Path, outcome: Prediction | ScopeCheck | str, *, threshold: float | None = None
) -> dict[str, Any]:
    """One row of :data:`PREDICTION_COLUMNS`.

    Parameters
    ----------
    path : str or Path
        The file (or upload name) the row is about.
    outcome : Prediction, ScopeCheck or str
        The prediction; or the guard's refusal of an image that is not a radiograph (decision
        ``out of scope``, no probabilities); or why there is none (an error message).
    threshold : float, optional
        Written in the ``threshold`` column of a failed row (the one that would have applied);
        a prediction carries its own.

    Returns
    -------
    dict
        Column -> value: floats for probabilities, ``None`` for numbers a failed row lacks, ``""``
        for its ``label`` and for the ``error`` of a good row.
    """
    if isinstance(outcome, Prediction):
        return {
            "path": str(path),
            "p_normal": outcome.p_normal,
            "p_pneumonia": outcome.p_pneumonia,
            "label": outcome.label,
            "confidence": outcome.confidence,
            "threshold": outcome.threshold,
            "decision": outcome.decision,
            "uncertainty": outcome.uncertainty,
            "in_scope": outcome.in_scope,
            "scope_reason": outcome.scope_reason,
            "scope_distance": outcome.scope_distance,
            "error": "",
        }
    empty = {
        "path": str(path),
        "p_normal": None,
        "p_pneumonia": None,
        "label": "",
        "confidence": None,
        "threshold": None if threshold is None else float(threshold),
        "decision": "",
        "uncertainty": None,
        "in_scope": None,
        "scope_reason": "",
        "scope_distance": None,
        "error": "",
    }
    if isinstance(outcome, ScopeCheck):
        if outcome.radiograph:
            raise ValueError(
                "a ScopeCheck row is only for images that are not radiographs; predict the others"
            )
        return {**empty, "decision": OUT_OF_SCOPE, "in_scope": False, "scope_reason": outcome.reason}
    if not isinstance(outcome, str) or not outcome:
        raise TypeError(
            f"outcome must be a Prediction, a ScopeCheck or a non-empty error message, got {outcome!r}"
        )
    return {**empty, "error": outcome}


def labelled_row(sample: Sample, outcome: Prediction | ScopeCheck | str) -> dict[str, Any]:
    """One row of :data:`LABELLED_COLUMNS`: the sample's truth beside :func:`prediction_row`.

    Parameters
    ----------
    sample : pneumoscan.data.dataset.Sample
        The image, with its true ``label`` (0/1), ``patient_id`` and ``subtype``.
    outcome : Prediction or str
        As in :func:`prediction_row`.
    """
    row = prediction_row(sample.path, outcome)
    failed = row["p_pneumonia"] is None
    return {
        **{k: v for k, v in row.items() if k in LABELLED_COLUMNS},
        "patient_id": sample.patient_id,
        "subtype": sample.subtype,
        "label": int(sample.label),
        "predicted": None if failed else int(row["label"] == POSITIVE_CLASS),
    }


def percent(value: float, digits: int = 0, *, space: str = "\u00a0") -> str:
    """``0.932 -> "93 %"`` (with ``digits`` decimals; ``space`` before the sign, a no-break space
    unless given).

    A probability short of certainty never reads as certain: ``0.996 -> "> 99 %"`` and
    ``0.0004`` with one decimal ``-> "< 0.1 %"``, where plain rounding would print 100 % and 0.0 %.
    """
    pct = 100.0 * float(value)
    text, step = f"{pct:.{digits}f}", 10.0**-digits
    if float(text) >= 100.0 > pct:
        return f">{space}{100.0 - step:.{digits}f}{space}%"
    if float(text) <= 0.0 < pct:
        return f"<{space}{step:.{digits}f}{space}%"
    return f"{text}{space}%"


def _cell(value: Any, digits: int) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):  # numpy float64 included; ints and bools stay as they are
        return f"{value:.{digits}f}"
    return value


def write_rows(
    out: str | Path | IO[str], columns: Sequence[str], rows: Iterable[Mapping[str, Any]], *, digits: int
) -> None:
    """Write rows as CSV: a header of ``columns``, floats with ``digits`` decimals, ``None`` empty.

    Parameters
    ----------
    out : path or text file
        A path is created (overwritten); an open file must have been opened with ``newline=""``.
    columns : sequence of str
        The header; keys of a row outside it are ignored.
    rows : iterable of mapping
        E.g. :func:`prediction_row` or :func:`labelled_row` results.
    digits : int
        Decimals of float cells.
    """
    if isinstance(out, str | Path):
        with open(out, "w", newline="") as fh:
            write_rows(fh, columns, rows, digits=digits)
        return
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k), digits) for k in columns})
