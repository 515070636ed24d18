"""Whether the images being evaluated are the model's own training or validation images.

``pneumoscan evaluate --data ROOT`` on a root that holds only ``train/`` would otherwise score the
model on the images it learnt from. :func:`check_training_overlap` compares the evaluated files with
the model's data, by path and by content (copies move and get renamed), using the first source
that is available:

1. hashes stored in the model's sidecar: the keys :data:`TRAINING_HASHES_KEY` and
   :data:`VALIDATION_HASHES_KEY` of ``ModelMetadata.extra``, lists of hex SHA-256 digests of the
   files' bytes (a prefix of at least :data:`MIN_HASH_CHARS` characters is enough);
2. the model's split re-derived from its sidecar: ``data_dir`` (relative paths are tried from the
   current folder, then from the folders above the model file) cut with ``split`` by
   :func:`pneumoscan.data.dataset.train_val_split`, exactly as training cut it; for a cross-fitted
   ensemble (an ``ensemble`` section) every image of its ``limit`` subset is a training image, since
   each trained all members but one; the sidecar's ``data_fingerprint`` tells whether the folder
   still holds the files the model was trained on;
3. nothing: the check could not run, and says why.

Training images make :func:`pneumoscan.evaluation.evaluate.evaluate_folder` refuse unless allowed;
validation images ("chose the model": its epochs, calibration and threshold) only mark the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Sidecar keys (in ``ModelMetadata.extra``) of the SHA-256 digests of the training and the
#: validation files' bytes; used first when present.
TRAINING_HASHES_KEY = "training_sha256"
VALIDATION_HASHES_KEY = "validation_sha256"
#: Shortest stored digest prefix accepted (64 bits).
MIN_HASH_CHARS = 16
#: How many folders above the model file a relative ``data_dir`` is looked for from.
_PARENT_LEVELS = 3


class TrainingDataOverlapError(ValueError):
    """The evaluated images include images the model was trained on."""


@dataclasses.dataclass(frozen=True)
class OverlapCheck:
    """The outcome of :func:`check_training_overlap`.

    Attributes
    ----------
    checked : bool
        Whether the evaluated files could be compared with the model's data at all.
    compared_with : str
        What they were compared with (stored hashes, the re-derived split of a folder), or why
        nothing.
    training, validation : tuple of str
        Evaluated files that are (by path or content) images the model trained on / was validated
        on. A file that is both counts as training.
    note : str or None
        Why the check could not run, or why its answer is approximate.
    """

    checked: bool
    compared_with: str
    training: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    note: str | None = None

    @property
    def overlaps_training_data(self) -> int | None:
        """How many evaluated images were trained on; ``None`` when unchecked."""
        return len(self.training) if self.checked else None

    @property
    def chose_the_model(self) -> bool | None:
        """Whether any evaluated image is from the model's validation split; ``None`` when unchecked."""
        return bool(self.validation) if self.checked else None

    def to_json(self) -> dict[str, Any]:
        """The ``data_overlap`` entry of ``metrics.json``."""
        return {
            "checked": self.checked,
            "compared_with": self.compared_with,
            "training_images": self.overlaps_training_data,
            "validation_images": len(self.validation) if self.checked else None,
            "note": self.note,
            "training_files": list(self.training),
            "validation_files": list(self.validation),
        }

    def refusal(self, n_samples: int, model: str | Path | None = None) -> str:
        """The message refusing to score training images, naming a few and what to do instead."""
        shown = ", ".join(self.training[:3]) + (", ..." if len(self.training) > 3 else "")
        return (
            f"{len(self.training)} of the {n_samples} images to evaluate were used to train "
            f"{'this model' if model is None else model} (found by comparing with {self.compared_with}): "
            f"{shown}. Scores on them measure memory, not screening: evaluate on images the model never "
            "saw (such as the test split), or pass --allow-training-data to score them anyway, and the "
            "report will be marked (overlaps_training_data in metrics.json)."
        )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_training_overlap(
    samples: Sequence, metadata, *, model_path: str | Path | None = None
) -> OverlapCheck:
    """Compare the files to evaluate with the model's training and validation images.

    Parameters
    ----------
    samples : sequence of pneumoscan.data.Sample
        The images to evaluate (only ``path`` is used).
    metadata : pneumoscan.models.artifacts.ModelMetadata or None
        The model's sidecar; ``None`` (a predictor without one) means the check cannot run.
    model_path : path, optional
        The model file: a relative ``data_dir`` is also looked for from the folders above it.

    Returns
    -------
    OverlapCheck
        Never raises for missing data: a check that cannot run says so in ``note``.
    """
    paths = [Path(s.path) for s in samples]
    if metadata is None:
        return _unchecked("no model sidecar to read the training data from")
    extra: Mapping[str, Any] = getattr(metadata, "extra", None) or {}
    if extra.get(TRAINING_HASHES_KEY):
        return _against_stored_hashes(paths, extra)
    if not getattr(metadata, "data_dir", None):
        return _unchecked("the model's sidecar records no training data (data_dir)")
    data_dir = _find_data_dir(metadata.data_dir, model_path)
    if data_dir is None:
        return _unchecked(
            f"the model's training data {metadata.data_dir} is not on this machine "
            "(looked in the current folder and the folders above the model)"
        )
    return _against_split(paths, metadata, data_dir)


def _unchecked(why: str) -> OverlapCheck:
    note = f"could not check whether these images were used to train the model: {why}"
    log.warning("%s", note)
    return OverlapCheck(checked=False, compared_with="nothing", note=note)


def _find_data_dir(recorded: str, model_path: str | Path | None) -> Path | None:
    path = Path(recorded)
    if path.is_absolute():
        return path if path.is_dir() else None
    bases = [Path.cwd()]
    if model_path is not None:
        bases += list(Path(model_path).resolve().parents)[:_PARENT_LEVELS]
    return next((base / path for base in bases if (base / path).is_dir()), None)


def _against_stored_hashes(paths: Sequence[Path], extra: Mapping[str, Any]) -> OverlapCheck:
    def prefixes(key: str) -> dict[int, set[str]]:
        by_length: dict[int, set[str]] = defaultdict(set)
        for digest in extra.get(key) or ():
            digest = str(digest).lower()
            if len(digest) >= MIN_HASH_CHARS:
                by_length[len(digest)].add(digest)
        return by_length

    training, validation = prefixes(TRAINING_HASHES_KEY), prefixes(VALIDATION_HASHES_KEY)
    found: dict[str, list[str]] = {"training": [], "validation": []}
    for path in paths:
        try:
            digest = file_sha256(path)
        except OSError:
            continue  # unreadable: evaluation reports it
        for side, stored in (("training", training), ("validation", validation)):
            if any(digest[:n] in digests for n, digests in stored.items()):
                found[side].append(str(path))
                break
    return OverlapCheck(
        checked=True,
        compared_with=f"the file hashes stored in the model's sidecar ({TRAINING_HASHES_KEY})",
        training=tuple(found["training"]),
        validation=tuple(found["validation"]),
    )


def _against_split(paths: Sequence[Path], metadata, data_dir: Path) -> OverlapCheck:
    from pneumoscan.data.dataset import discover_split, fingerprint, stratified_subset, train_val_split

    notes = []
    try:
        folder = discover_split(data_dir, prefer="train")
    except (FileNotFoundError, ValueError) as exc:
        return _unchecked(f"the model's training data {data_dir} could not be read ({exc})")
    ensemble = getattr(metadata, "ensemble", None)
    if ensemble is not None:  # cross-fitted: every image (of the limit) trained all members but one
        seed = ensemble.fold_seed
        train, val = stratified_subset(folder, ensemble.limit, seed=seed), []
        compared = f"the images the ensemble was cross-fitted on, in {data_dir} (seed {seed})"
    elif metadata.split is not None:
        train, val = train_val_split(folder, metadata.split)
        compared = f"the model's training split of {data_dir} (seed {metadata.split.seed})"
    else:  # no split recorded: every image of the folder may have been trained on
        train, val = list(folder), []
        compared = f"every image of the model's training data {data_dir} (its sidecar records no split)"
        notes.append("the sidecar records no split, so every image of data_dir counts as training")
    recorded = getattr(metadata, "data_fingerprint", None)
    if recorded and fingerprint(train + val) != recorded:
        notes.append(
            f"{data_dir} changed since training (data fingerprint {fingerprint(train + val)}, the model "
            f"records {recorded}), so its split was re-derived from the files there now"
        )
    elif not recorded:
        notes.append("the sidecar records no data fingerprint, so the folder may have changed since")
    sides = {"training": [s.path for s in train], "validation": [s.path for s in val]}

    by_path: dict[Path, str] = {}
    by_size: dict[int, list[tuple[Path, str]]] = defaultdict(list)
    for side, files in reversed(sides.items()):  # training last, so it wins for a file on both
        for path in files:
            try:
                by_path[path.resolve()] = side
                by_size[path.stat().st_size].append((path, side))
            except OSError:
                continue
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str | None:
        if path not in digests:
            try:
                digests[path] = file_sha256(path)
            except OSError:
                digests[path] = ""
        return digests[path] or None

    found: dict[str, list[str]] = {"training": [], "validation": []}
    for path in paths:
        try:
            side = by_path.get(path.resolve())
            size = path.stat().st_size
        except OSError:
            continue  # missing or unreadable: evaluation reports it
        if side is None:  # same bytes elsewhere? Only files of the same size can be.
            candidates = [(p, s) for p, s in by_size.get(size, ()) if digest(p) is not None]
            if candidates and digest(path) is not None:
                matches = {s for p, s in candidates if digests[p] == digests[path]}
                side = "training" if "training" in matches else next(iter(matches), None)
        if side is not None:
            found[side].append(str(path))
    return OverlapCheck(
        checked=True,
        compared_with=compared,
        training=tuple(found["training"]),
        validation=tuple(found["validation"]),
        note="; ".join(notes) or None,
    )


def overlap_lines(report: Mapping[str, Any]) -> list[str]:
    """Warning lines for a printed metrics table, from a report's ``data_overlap`` entry."""
    overlap = report.get("data_overlap")
    if not overlap:
        return []
    if not overlap["checked"]:
        return [f"NOTE: {overlap['note']}"]
    lines = []
    if overlap["training_images"]:
        lines.append(
            f"WARNING: {overlap['training_images']} of the images evaluated were used to train this model "
            "(overlaps_training_data): these numbers measure memory, not screening."
        )
    if overlap["validation_images"]:
        lines.append(
            f"NOTE: {overlap['validation_images']} of these images are the model's validation split, which "
            "chose its epochs, calibration and threshold (chose_the_model): the numbers are optimistic."
        )
    if overlap["note"]:
        lines.append(f"NOTE: {overlap['note']}")
    return lines
