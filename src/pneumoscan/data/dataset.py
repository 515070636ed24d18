"""Datasets: file discovery, patient ids, patient-level splits, decoding into memory, ``tf.data``.

Layouts accepted (folder names case-insensitive)::

    <root>/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg     a dataset root
    <split>/{NORMAL,PNEUMONIA}/*.jpeg                     a single split folder

Labels come from the class folder: NORMAL is 0, PNEUMONIA is 1 (:data:`pneumoscan.config.CLASS_NAMES`).
The patient id comes from the file name (``person123_bacteria_456.jpeg`` -> ``person123``,
``IM-0115-0001.jpeg`` -> ``IM-0115``, ``NORMAL2-IM-0007-0001.jpeg`` -> ``NORMAL2-IM-0007``, anything
else -> its stem). Many patients have several images, so validation is always split by patient.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pneumoscan.config import (
    CLASS_NAMES,
    DEFAULT_SEED,
    DEFAULT_VAL_FRACTION,
    AugmentConfig,
    SplitConfig,
)
from pneumoscan.data.imaging import IMAGE_SUFFIXES, ImageDecodeError, load_image
from pneumoscan.runtime import decode_workers

log = logging.getLogger(__name__)

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)
_SUBTYPE = re.compile(r"_(bacteria|virus)_", re.IGNORECASE)
#: A patient id as its series and number: ``NORMAL2-IM-0383`` -> (``NORMAL2-IM-``, ``0383``).
_SERIES_NUMBER = re.compile(r"^(.*?)(\d+)$")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image file of a dataset.

    Attributes
    ----------
    path : Path
    label : int
        0 for NORMAL, 1 for PNEUMONIA.
    patient_id : str
    subtype : str
        ``"bacteria"``, ``"virus"`` or ``"none"`` (normal, or not said by the file name).
    split : str
        The split folder it was found in (``"train"``, ``"test"``, ... or the folder's own name).
    """

    path: Path
    label: int
    patient_id: str
    subtype: str
    split: str

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]


@dataclasses.dataclass
class DecodedSet:
    """Samples decoded into memory, plus those that failed.

    Attributes
    ----------
    x : ndarray of shape (n, size, size, 1), uint8
    y : ndarray of shape (n,), int64
    samples : list of Sample, length n, aligned with ``x``
    skipped : list of (Sample, str)
        Files that could not be decoded, with the reason.
    """

    x: np.ndarray
    y: np.ndarray
    samples: list[Sample]
    skipped: list[tuple[Sample, str]]


def patient_id(filename: str) -> str:
    """Patient id from a file name of the Kermany chest X-ray dataset (the stem when unknown)."""
    name = Path(filename).name
    for pattern in (_PERSON, _IM):
        match = pattern.match(name)
        if match:
            return match.group(1)
    return Path(name).stem


def pneumonia_subtype(filename: str) -> str:
    """``"bacteria"``, ``"virus"`` or ``"none"`` from a file name."""
    match = _SUBTYPE.search(Path(filename).name)
    return match.group(1).lower() if match else "none"


def _class_dirs(folder: Path) -> dict[int, Path]:
    found = {}
    for child in folder.iterdir() if folder.is_dir() else ():
        if child.is_dir() and child.name.upper() in CLASS_NAMES:
            found[CLASS_NAMES.index(child.name.upper())] = child
    return found


def discover(root: str | Path) -> dict[str, list[Sample]]:
    """Find the images of a dataset root or of a single split folder.

    Parameters
    ----------
    root : path
        ``<root>/<split>/<CLASS>/`` or ``<split>/<CLASS>/``.

    Returns
    -------
    dict
        Split name -> samples sorted by path. A single split folder gives one entry named after
        the folder.

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist.
    ValueError
        No ``NORMAL``/``PNEUMONIA`` folders were found at either level.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if _class_dirs(root):
        split_dirs = {root.name: root}
    else:
        split_dirs = {
            child.name.lower(): child
            for child in sorted(root.iterdir())
            if child.is_dir() and _class_dirs(child)
        }
    if not split_dirs:
        raise ValueError(
            f"{root}: no NORMAL/ or PNEUMONIA/ folders found, neither directly inside nor in split "
            "folders such as train/ and test/"
        )
    splits = {}
    for split, split_dir in split_dirs.items():
        samples = []
        for label, class_dir in sorted(_class_dirs(split_dir).items()):
            for path in sorted(class_dir.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    samples.append(
                        Sample(path, label, patient_id(path.name), pneumonia_subtype(path.name), split)
                    )
        splits[split] = samples
    return splits


def discover_split(path: str | Path, prefer: str = "test") -> list[Sample]:
    """The samples of one split: ``path`` itself, or its ``prefer`` split when it is a dataset root."""
    splits = discover(path)
    if len(splits) == 1:
        return next(iter(splits.values()))
    if prefer in splits:
        return splits[prefer]
    raise ValueError(f"{path} holds several splits {sorted(splits)}; name one of them directly")


def patient_split(
    samples: Sequence[Sample], *, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED
) -> tuple[list[Sample], list[Sample]]:
    """Split samples into train and validation by patient, stratified by class.

    For each class, patients (labelled with their majority class) are shuffled with ``seed`` and
    moved to validation until it holds ``val_fraction`` of that class's images. Same inputs and
    seed give the same split, whatever the input order.

    Returns
    -------
    train, val : list of Sample, each sorted by path. No patient id is on both sides.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_patient[s.patient_id].append(s)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in range(len(CLASS_NAMES)):
        patients = sorted(p for p, ss in by_patient.items() if round(np.mean([s.label for s in ss])) == label)
        target = val_fraction * sum(len(by_patient[p]) for p in patients)
        taken = 0
        for index in rng.permutation(len(patients)):
            if taken >= target:
                break
            val_patients.add(patients[index])
            taken += len(by_patient[patients[index]])
    train = sorted((s for s in samples if s.patient_id not in val_patients), key=lambda s: str(s.path))
    val = sorted((s for s in samples if s.patient_id in val_patients), key=lambda s: str(s.path))
    return train, val


def hold_out_patients(
    normal_order: Sequence,
    y: Sequence[int],
    groups: Sequence,
    *,
    normal_share: float,
    pneumonia_share: float,
    seed: int,
) -> np.ndarray:
    """A held-out mask of whole patients: normals in a given order, pneumonia at random.

    The normal patients are taken in ``normal_order`` until they hold ``normal_share`` of the
    normal images; then pneumonia patients, shuffled with ``seed``, until they hold
    ``pneumonia_share`` of the pneumonia images. The validation protocols of issue 16 differ only in
    the order of the normals (:func:`earliest_intake_split`,
    :func:`pneumoscan.evaluation.shortcuts.setup_shift_split`). Returns shape (n,), bool.
    """
    y = np.asarray(y)
    groups = np.asarray(list(groups))

    def first_patients(order, target: float) -> list:
        """Patients from the front of ``order`` until they hold ``target`` images."""
        taken, picked = 0, []
        for p in order:
            if taken >= target:
                break
            picked.append(p)
            taken += int((groups == p).sum())
        return picked

    held = set(first_patients(normal_order, normal_share * (y == 0).sum()))
    pneumonia = sorted(set(groups[y == 1].tolist()) - held)
    np.random.default_rng(seed).shuffle(pneumonia)
    held |= set(first_patients(pneumonia, pneumonia_share * (y == 1).sum()))
    return np.isin(groups, list(held))


def series_position(patient_ids: Sequence[str]) -> dict[str, float]:
    """Each patient's place in its naming series, from 0 (lowest number) to 1 (highest).

    A series is the id without its trailing number (``IM-``, ``NORMAL2-IM-``, ``person``); an id
    without one is a series of its own (position 0). The training folder's normal series start
    well above 1 (``IM-0115``, ``NORMAL2-IM-0383``): the lower numbers are elsewhere, presumably in
    the held-out test split.
    """
    series: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for pid in set(patient_ids):
        match = _SERIES_NUMBER.match(pid)
        if match:
            series[match.group(1)].append((int(match.group(2)), pid))
        else:
            series[pid].append((0, pid))
    position = {}
    for members in series.values():
        members.sort()
        for rank, (_, pid) in enumerate(members):
            position[pid] = rank / max(len(members) - 1, 1)
    return position


def earliest_intake_split(
    y: Sequence[int],
    groups: Sequence[str],
    *,
    normal_share: float = 0.3,
    pneumonia_share: float = 0.2,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """A validation of the normal patients numbered nearest the held-out test split's.

    The Kermany folders number patients in series, and the training folder's normal series begin
    high (``IM-0001``..``IM-0114`` and ``NORMAL2-IM-0000``..``0382`` are not in it): presumably the
    official test split's normals hold those numbers (its file names are not here to check), and if
    numbers follow the order of acquisition, its healthy children are an earlier intake. Held out:
    the lowest-numbered normal patients of each series (the same share of each, by
    :func:`series_position`) up to ``normal_share`` of the normal images, and a random
    ``pneumonia_share`` of the pneumonia images
    (:func:`hold_out_patients`). Returns the held-out mask, shape (n,).
    """
    y = np.asarray(y)
    groups = np.asarray(list(groups))
    normals = sorted(set(groups[y == 0].tolist()))
    position = series_position(normals)
    order = sorted(normals, key=lambda p: (position[p], p))
    return hold_out_patients(
        order, y, groups, normal_share=normal_share, pneumonia_share=pneumonia_share, seed=seed
    )


def stratified_subset(samples: Sequence[Sample], limit: int | None, *, seed: int) -> list[Sample]:
    """At most ``limit`` samples, both classes kept in proportion (deterministic for ``seed``).

    ``limit=None`` returns all samples. Used for smoke runs (``train --limit``) and quick checks.
    """
    if limit is None or limit >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    picked = []
    for label in (0, 1):
        of_class = [s for s in samples if s.label == label]
        k = max(2, round(limit * len(of_class) / len(samples)))
        picked += [of_class[i] for i in sorted(rng.permutation(len(of_class))[:k])]
    return sorted(picked, key=lambda s: str(s.path))


def train_val_split(samples: Sequence[Sample], split: SplitConfig) -> tuple[list[Sample], list[Sample]]:
    """The training and validation images of a training folder: the one split of pneumoscan.

    Training carves its validation set with it, and export and comparison recover a model's
    validation set from the ``split`` its sidecar records, so both see the same images.

    Parameters
    ----------
    samples : sequence of Sample
        The training folder's images (:func:`discover_split` with ``prefer="train"``).
    split : SplitConfig
        ``limit`` images are kept first (:func:`stratified_subset`), then cut by patient
        (:func:`patient_split`), both seeded with ``split.seed``.

    Returns
    -------
    train, val : list of Sample, each sorted by path; no patient on both sides.
    """
    subset = stratified_subset(samples, split.limit, seed=split.seed)
    return patient_split(subset, val_fraction=split.val_fraction, seed=split.seed)


def patient_folds(samples: Sequence[Sample], folds: int, *, seed: int) -> np.ndarray:
    """Assign every sample to one of ``folds`` patient-level folds, stratified by class.

    Cross-fitting uses it: member ``k`` of an ensemble trains on the other folds and predicts fold
    ``k``. The assignment is :func:`fold_patients` of the samples' patient ids and labels, balanced
    in images: every fold holds both classes in about the training folder's proportion and no
    patient is in two folds.

    Parameters
    ----------
    samples : sequence of Sample
    folds : int, at least 2
    seed : int

    Returns
    -------
    ndarray of shape (len(samples),), int64
        The fold of each sample, in ``0 .. folds - 1``.
    """
    return fold_patients(
        [s.patient_id for s in samples], [s.label for s in samples], folds, seed=seed, balance="images"
    )


def fold_patients(
    patient_ids: Sequence,
    labels: Sequence[int] | None,
    folds: int,
    *,
    seed: int,
    balance: str = "images",
) -> np.ndarray:
    """Assign every image to one of ``folds`` folds, whole patients at a time.

    Patients are taken class by class (each labelled with the majority class of its images; all in
    one class when ``labels`` is None), sorted, shuffled with one ``numpy`` generator seeded with
    ``seed``, and dealt in turn to the fold that holds the fewest images (``balance="images"``) or
    the fewest patients (``balance="patients"``: plain round robin) so far, the lowest on a tie.

    Parameters
    ----------
    patient_ids : sequence, one per image
    labels : sequence of int, one per image, or None
    folds : int, at least 2
    seed : int
    balance : {"images", "patients"}

    Returns
    -------
    ndarray of shape (len(patient_ids),), int64
        The fold of each image, in ``0 .. folds - 1``.
    """
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if balance not in ("images", "patients"):
        raise ValueError(f"balance must be 'images' or 'patients', got {balance!r}")
    if labels is not None and len(labels) != len(patient_ids):
        raise ValueError(f"{len(labels)} labels for {len(patient_ids)} patient ids")
    by_patient: dict = defaultdict(list)
    for i, patient in enumerate(patient_ids):
        by_patient[patient].append(i)
    if len(by_patient) < folds:
        raise ValueError(f"{len(by_patient)} patients cannot fill {folds} patient-level folds")
    if labels is None:
        strata = [sorted(by_patient)]
    else:
        majority = {p: round(np.mean([labels[i] for i in idx])) for p, idx in by_patient.items()}
        strata = [sorted(p for p in by_patient if majority[p] == label) for label in range(len(CLASS_NAMES))]
    rng = np.random.default_rng(seed)
    out = np.zeros(len(patient_ids), dtype=np.int64)
    for patients in strata:
        sizes = np.zeros(folds)
        for index in rng.permutation(len(patients)):
            fold = int(np.argmin(sizes))  # the emptiest fold so far
            out[by_patient[patients[index]]] = fold
            sizes[fold] += len(by_patient[patients[index]]) if balance == "images" else 1
    return out


def class_weights(labels: Sequence[int] | np.ndarray) -> dict[int, float]:
    """Balanced class weights, ``n / (n_classes * count)``, keyed by class index."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(CLASS_NAMES))
    if (counts == 0).any():
        raise ValueError(f"every class needs at least one image to weight it; counts are {counts.tolist()}")
    return {i: float(len(labels) / (len(counts) * c)) for i, c in enumerate(counts)}


def fingerprint(samples: Sequence[Sample]) -> str:
    """A short hash of which files (name, size, label) make up a dataset: same data, same hash."""
    digest = hashlib.sha256()
    for s in sorted(samples, key=lambda s: (s.split, s.label, s.path.name)):
        size = s.path.stat().st_size if s.path.exists() else -1
        digest.update(f"{s.split}/{s.label}/{s.path.name}/{size}\n".encode())
    return digest.hexdigest()[:16]


def decode_samples(
    samples: Sequence[Sample],
    size: int,
    *,
    workers: int | None = None,
    progress: bool = True,
    load: Callable[[Path, int], np.ndarray] = load_image,
) -> DecodedSet:
    """Decode samples in parallel threads into one ``uint8`` array (the in-memory cache).

    ``load(path, size)`` gives one ``(size, size, 1)`` array: the model's input
    (:func:`~pneumoscan.data.imaging.load_image`) unless another view of the files is wanted (the
    shortcut audit reads the films before the stretch). Bad files never stop the run: they are
    logged, and returned in ``skipped`` with the reason.
    """
    from tqdm.auto import tqdm

    workers = workers or decode_workers()
    x = np.zeros((len(samples), size, size, 1), dtype=np.uint8)
    ok = np.zeros(len(samples), dtype=bool)
    skipped: list[tuple[Sample, str]] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(load, s.path, size): i for i, s in enumerate(samples)}
        bar = tqdm(total=len(samples), desc="decoding", unit="img", disable=not progress, leave=False)
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                x[i] = future.result()
                ok[i] = True
            except ImageDecodeError as exc:
                log.warning("skipped %s", exc)
                skipped.append((samples[i], exc.reason))
            bar.update()
        bar.close()
    kept = [s for s, good in zip(samples, ok, strict=True) if good]
    y = np.array([s.label for s in kept], dtype=np.int64)
    skipped.sort(key=lambda item: str(item[0].path))
    return DecodedSet(x[ok], y, kept, skipped)


# --------------------------------------------------------------------------- tf.data pipelines


def make_dataset(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    augment: AugmentConfig | None = None,
    balanced: bool = False,
    seed: int = DEFAULT_SEED,
    drop_remainder: bool = False,
    sample_weight: np.ndarray | None = None,
):
    """A ``tf.data.Dataset`` of ``(images, labels)`` batches from an in-memory cache.

    Parameters
    ----------
    x : ndarray of shape (n, s, s, 1), uint8
    y : ndarray of shape (n,), optional
        Without labels the dataset yields images only.
    shuffle : bool
        Reshuffle every epoch, seeded.
    augment : AugmentConfig, optional
        Apply :func:`pneumoscan.data.augment.build_augmenter` to each batch (sequential map, so
        that the same seed gives the same batches).
    balanced : bool
        Sample both classes equally (infinite dataset; pass ``steps_per_epoch`` to ``fit``).
    drop_remainder : bool
        Drop the last incomplete batch, so every batch splits evenly over the replicas of a
        ``tf.distribute`` strategy.
    sample_weight : ndarray of shape (n,), optional
        Yield ``(images, labels, weights)``, shuffled together; not with ``balanced``.

    Images come out as ``float32`` in 0..255; labels as ``float32`` 0/1.
    """
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    if y is None:
        ds = tf.data.Dataset.from_tensor_slices(x)
        return ds.batch(batch_size).map(lambda a: tf.cast(a, tf.float32)).prefetch(autotune)
    y = np.asarray(y, dtype=np.float32)
    if balanced:
        per_class = [
            tf.data.Dataset.from_tensor_slices((x[y == c], y[y == c]))
            .shuffle(int((y == c).sum()), seed=seed + c, reshuffle_each_iteration=True)
            .repeat()
            for c in (0, 1)
        ]
        ds = tf.data.Dataset.sample_from_datasets(per_class, weights=[0.5, 0.5], seed=seed)
    else:
        columns = (x, y) if sample_weight is None else (x, y, np.asarray(sample_weight, dtype=np.float32))
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if shuffle:
            ds = ds.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda a, *rest: (tf.cast(a, tf.float32), *rest), num_parallel_calls=autotune)
    if augment is not None:
        from pneumoscan.data.augment import build_augmenter  # Keras: only when augmenting

        augmenter = build_augmenter(augment, seed=seed)
        # Sequential on purpose: the augmenter draws from stateful seed generators, and parallel
        # calls would race for that state, so the same seed would not give the same batches.
        ds = ds.map(lambda a, *rest: (augmenter(a, training=True), *rest))
    return ds.prefetch(autotune)
