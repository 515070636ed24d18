"""pneumoscan.data.dataset: names, discovery, patient splits, weights, fingerprints, decoding, tf.data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.config import CLASS_NAMES, AugmentConfig, SplitConfig
from pneumoscan.data.dataset import (
    Sample,
    class_weights,
    decode_samples,
    discover,
    discover_split,
    earliest_intake_split,
    fingerprint,
    make_dataset,
    patient_id,
    patient_split,
    pneumonia_subtype,
    series_position,
)
from pneumoscan.testing.synthetic import DEFAULT_NAMES, write_image, xray_like

# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person123_bacteria_456.jpeg", "person123"),  # the three documented examples
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-0007-0001.jpeg", "NORMAL2-IM-0007"),
        ("person1_virus_6.jpeg", "person1"),
        ("NORMAL2-IM-0587-0001-0001.jpeg", "NORMAL2-IM-0587"),  # real name with an extra suffix
        ("train/PNEUMONIA/person7_bacteria_29.jpeg", "person7"),  # a path: only the name counts
        ("PERSON9_BACTERIA_3.JPEG", "PERSON9"),
        ("scan_of_someone.png", "scan_of_someone"),  # unknown pattern: the stem
        ("person_without_number.jpeg", "person_without_number"),
        ("IM-abc-0001.jpeg", "IM-abc-0001"),
    ],
)
def test_patient_id(name, expected):
    assert patient_id(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("person1_bacteria_1.jpeg", "bacteria"),
        ("person1_virus_6.jpeg", "virus"),
        ("person1_VIRUS_6.jpeg", "virus"),
        ("IM-0115-0001.jpeg", "none"),
        ("bacteria.jpeg", "none"),  # the word alone is not the dataset's pattern
    ],
)
def test_pneumonia_subtype(name, expected):
    assert pneumonia_subtype(name) == expected


# --------------------------------------------------------------------------- discovery


def test_discover_dataset_root(make_tree):
    root = make_tree()
    (root / "train" / "NORMAL" / "notes.txt").write_text("not an image")
    (root / "train" / "NORMAL" / ".hidden.jpeg").write_bytes(b"")
    (root / "train" / "README.md").write_text("ignored")
    splits = discover(root)
    assert sorted(splits) == ["test", "train"]
    for split, classes in DEFAULT_NAMES.items():
        found = Counter(s.class_name for s in splits[split])
        assert found == {c: len(names) for c, names in classes.items()}
        assert all(s.split == split for s in splits[split])
        paths = [str(s.path) for s in splits[split]]
        assert paths == sorted(paths)
    by_name = {s.path.name: s for s in splits["train"]}
    assert by_name["person1_virus_6.jpeg"].label == 1
    assert by_name["person1_virus_6.jpeg"].subtype == "virus"
    assert by_name["person1_virus_6.jpeg"].patient_id == "person1"
    assert by_name["IM-0119-0002.jpeg"].label == 0 and by_name["IM-0119-0002.jpeg"].subtype == "none"
    assert by_name["IM-0119-0002.jpeg"].class_name == "NORMAL"


def test_discover_single_split_folder(make_tree):
    root = make_tree()
    splits = discover(root / "test")
    assert list(splits) == ["test"]
    assert len(splits["test"]) == sum(len(v) for v in DEFAULT_NAMES["test"].values())
    assert discover_split(root / "test") == splits["test"]
    assert discover_split(root) == discover(root)["test"]  # a root: its test split by default
    assert discover_split(root, prefer="train") == discover(root)["train"]
    with pytest.raises(ValueError, match="several splits"):
        discover_split(root, prefer="val")


def test_discover_is_case_insensitive(make_tree):
    root = make_tree({"TRAIN": {"normal": ["IM-0001-0001.jpeg"], "Pneumonia": ["person1_bacteria_1.JPG"]}})
    splits = discover(root)
    assert list(splits) == ["train"]
    assert [(s.path.name, s.label) for s in splits["train"]] == [
        ("IM-0001-0001.jpeg", 0),
        ("person1_bacteria_1.JPG", 1),
    ]


def test_discover_finds_nested_and_png_files(tmp_path):
    write_image(tmp_path / "val" / "NORMAL" / "sub" / "IM-0002-0001.png", xray_like(40, 40))
    write_image(tmp_path / "val" / "PNEUMONIA" / "person3_virus_9.jpeg", xray_like(40, 40))
    assert len(discover(tmp_path)["val"]) == 2


def test_discover_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        discover(tmp_path / "missing")
    (tmp_path / "train" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="no NORMAL/ or PNEUMONIA/ folders"):
        discover(tmp_path)


# --------------------------------------------------------------------------- patient split


def _synthetic_samples(n_patients: int = 300, seed: int = 0) -> list[Sample]:
    """Samples (no files) for many patients with 1-5 images each, about 1 normal in 4."""
    rng = np.random.default_rng(seed)
    samples = []
    for p in range(n_patients):
        label = int(rng.random() < 0.75)
        pid = f"person{p}" if label else f"IM-{p:04d}"
        for k in range(int(rng.integers(1, 6))):
            name = f"{pid}_bacteria_{k}.jpeg" if label else f"{pid}-{k:04d}.jpeg"
            samples.append(
                Sample(Path("train", CLASS_NAMES[label], name), label, pid, pneumonia_subtype(name), "train")
            )
    return samples


def test_patient_split_has_no_patient_on_both_sides():
    samples = _synthetic_samples()
    train, val = patient_split(samples, val_fraction=0.2, seed=1)
    assert {s.patient_id for s in train}.isdisjoint({s.patient_id for s in val})
    assert sorted(map(str, (s.path for s in train + val))) == sorted(str(s.path) for s in samples)
    assert [str(s.path) for s in train] == sorted(str(s.path) for s in train)


def test_patient_split_is_deterministic_and_order_independent():
    samples = _synthetic_samples()
    first = patient_split(samples, val_fraction=0.2, seed=7)
    shuffled = [samples[i] for i in np.random.default_rng(3).permutation(len(samples))]
    assert patient_split(samples, val_fraction=0.2, seed=7) == first
    assert patient_split(shuffled, val_fraction=0.2, seed=7) == first
    assert patient_split(samples, val_fraction=0.2, seed=8)[1] != first[1]


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3])
def test_patient_split_respects_fraction_per_class(fraction):
    samples = _synthetic_samples(400)
    _, val = patient_split(samples, val_fraction=fraction, seed=0)
    for label in (0, 1):
        total = sum(s.label == label for s in samples)
        in_val = sum(s.label == label for s in val)
        # Whole patients (at most 5 images) move, so overshoot is bounded by one patient.
        assert fraction * total <= in_val <= fraction * total + 5


def test_patient_split_rejects_bad_fraction():
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="val_fraction"):
            patient_split(_synthetic_samples(10), val_fraction=bad)


def test_series_position_orders_each_naming_series_by_number():
    ids = ["IM-0120", "IM-0115", "IM-0766", "NORMAL2-IM-1423", "NORMAL2-IM-0383"]
    ids += ["person9", "person10", "scan"]
    pos = series_position(ids)
    assert pos["IM-0115"] == 0.0 and pos["IM-0120"] == 0.5 and pos["IM-0766"] == 1.0
    assert pos["NORMAL2-IM-0383"] == 0.0 and pos["NORMAL2-IM-1423"] == 1.0
    assert pos["person9"] == 0.0 and pos["person10"] == 1.0  # by number, not as text
    assert pos["scan"] == 0.0  # no number: a series of its own


def test_earliest_intake_split_holds_out_the_lowest_numbered_normals_of_each_series():
    normals = [f"IM-{i:04d}" for i in range(115, 215)] + [f"NORMAL2-IM-{i:04d}" for i in range(383, 433)]
    groups = [p for p in normals for _ in range(2)] + [f"person{i}" for i in range(300) for _ in range(3)]
    y = np.array([0] * (2 * len(normals)) + [1] * 900)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(y))  # input order plays no part
    groups, y = np.array(groups)[order], y[order]
    held = earliest_intake_split(y, groups, normal_share=0.3, pneumonia_share=0.2, seed=0)
    assert 0.3 <= held[y == 0].mean() <= 0.32 and 0.2 <= held[y == 1].mean() <= 0.21
    assert not set(groups[held]) & set(groups[~held])  # whole patients
    held_normals = set(groups[held & (y == 0)])
    # The lowest 30 % of each series, not the lowest ids overall (IM- would fill it alone).
    assert {f"IM-{i:04d}" for i in range(115, 145)} <= held_normals
    assert {f"NORMAL2-IM-{i:04d}" for i in range(383, 397)} <= held_normals
    assert not held_normals & {f"IM-{i:04d}" for i in range(147, 215)}
    again = earliest_intake_split(y, groups, normal_share=0.3, pneumonia_share=0.2, seed=0)
    assert (again == held).all()
    assert (earliest_intake_split(y, groups, seed=1)[y == 0] == held[y == 0]).all()  # seed: pneumonia only


def test_class_weights():
    weights = class_weights([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert weights == pytest.approx({0: 12 / (2 * 3), 1: 12 / (2 * 9)})
    assert 3 * weights[0] == pytest.approx(9 * weights[1])  # each class weighs the same in total
    assert class_weights(np.array([0, 1])) == {0: 1.0, 1: 1.0}
    with pytest.raises(ValueError, match="every class"):
        class_weights([1, 1, 1])


def test_fingerprint_is_stable_and_tracks_changes(make_tree):
    root = make_tree()
    samples = [s for ss in discover(root).values() for s in ss]
    fp = fingerprint(samples)
    assert len(fp) == 16 and fp == fingerprint(list(reversed(samples)))
    assert fingerprint(samples[:-1]) != fp
    relabelled = [Sample(s.path, 1 - s.label, s.patient_id, s.subtype, s.split) for s in samples]
    assert fingerprint(relabelled) != fp
    with samples[0].path.open("ab") as f:
        f.write(b"\0" * 10)  # same name, different size
    assert fingerprint(samples) != fp


# --------------------------------------------------------------------------- decoding


def test_decode_samples_skips_bad_files(make_tree):
    root = make_tree()
    (root / "train" / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(b"")
    (root / "train" / "PNEUMONIA" / "person99_virus_1.jpeg").write_text("not an image")
    samples = discover(root)["train"]
    decoded = decode_samples(samples, 32, workers=2, progress=False)
    n_good = sum(len(v) for v in DEFAULT_NAMES["train"].values())
    assert decoded.x.shape == (n_good, 32, 32, 1) and decoded.x.dtype == np.uint8
    assert decoded.y.dtype == np.int64 and decoded.y.tolist() == [s.label for s in decoded.samples]
    assert [s.path.name for s, _ in decoded.skipped] == ["IM-0999-0001.jpeg", "person99_virus_1.jpeg"]
    reasons = dict((s.path.name, r) for s, r in decoded.skipped)
    assert "empty" in reasons["IM-0999-0001.jpeg"]
    assert "not a recognised image" in reasons["person99_virus_1.jpeg"]
    assert decoded.x.reshape(n_good, -1).std(axis=1).min() > 5  # real pictures, not blank slots


# --------------------------------------------------------------------------- tf.data


@pytest.fixture(scope="module")
def cache():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 32, 32, 1), dtype=np.uint8)
    y = np.array([1] * 32 + [0] * 8)
    return x, y


def test_make_dataset_shapes_and_dtypes(cache):
    x, y = cache
    images, labels = next(iter(make_dataset(x, y, batch_size=16)))
    assert tuple(images.shape) == (16, 32, 32, 1) and images.dtype.name == "float32"
    assert tuple(labels.shape) == (16,) and labels.dtype.name == "float32"
    np.testing.assert_array_equal(images.numpy(), x[:16].astype(np.float32))  # unshuffled: in order
    sizes = [int(b[0].shape[0]) for b in make_dataset(x, y, batch_size=16)]
    assert sizes == [16, 16, 8]
    only_images = next(iter(make_dataset(x, batch_size=8)))
    assert tuple(only_images.shape) == (8, 32, 32, 1) and only_images.dtype.name == "float32"


def test_make_dataset_shuffle_is_seeded(cache):
    x, y = cache

    def first(seed):
        return next(iter(make_dataset(x, y, batch_size=40, shuffle=True, seed=seed)))[1].numpy()

    np.testing.assert_array_equal(first(3), first(3))
    assert sorted(first(3)) == sorted(y)


def test_balanced_sampling_is_about_half_and_half(cache):
    x, y = cache  # 80% pneumonia
    ds = make_dataset(x, y, batch_size=50, balanced=True, seed=1)
    labels = np.concatenate([b[1].numpy() for b in ds.take(20)])
    assert labels.size == 1000
    assert 0.44 < labels.mean() < 0.56


def test_augmentation_is_seeded_and_keeps_shape_and_range(cache):
    x, y = cache
    cfg = AugmentConfig()

    def batches(seed):
        return [b[0].numpy() for b in make_dataset(x, y, batch_size=8, augment=cfg, seed=seed).take(3)]

    first, again, other = batches(5), batches(5), batches(6)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same batches
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], x[:8].astype(np.float32))  # it did augment
    for batch in first:
        assert batch.shape == (8, 32, 32, 1) and batch.dtype == np.float32
        assert batch.min() >= 0.0 and batch.max() <= 255.0


# --------------------------------------------------------------------------- the real data


@pytest.mark.required
def test_real_training_split(shared_data):
    splits = discover(shared_data)
    train = splits["train"]
    assert Counter(s.class_name for s in train) == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert {s.subtype for s in train if s.label == 0} == {"none"}
    assert {s.subtype for s in train if s.label == 1} == {"bacteria", "virus"}
    cfg = SplitConfig()
    tr, val = patient_split(train, val_fraction=cfg.val_fraction, seed=cfg.seed)
    assert {s.patient_id for s in tr}.isdisjoint({s.patient_id for s in val})
    assert len(tr) + len(val) == len(train)
    for label in (0, 1):
        share = sum(s.label == label for s in val) / sum(s.label == label for s in train)
        assert cfg.val_fraction <= share < cfg.val_fraction + 0.01


def test_patient_folds_keep_patients_together_and_both_classes_in_every_fold(make_tree):
    from pneumoscan.data.dataset import patient_folds

    samples = discover_split(make_tree(TINY_FOLD_NAMES) / "train", prefer="train")
    folds = patient_folds(samples, 3, seed=5)
    assert folds.shape == (len(samples),) and set(folds.tolist()) == {0, 1, 2}
    by_patient = {}
    for s, f in zip(samples, folds, strict=True):
        assert by_patient.setdefault(s.patient_id, f) == f, f"{s.patient_id} is in two folds"
    for k in range(3):
        assert {s.label for s, f in zip(samples, folds, strict=True) if f == k} == {0, 1}
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 3  # dealt to the emptiest fold: balanced in images
    assert (patient_folds(list(reversed(samples)), 3, seed=5)[::-1] == folds).all()
    assert not (patient_folds(samples, 3, seed=6) == folds).all()
    with pytest.raises(ValueError, match="at least 2"):
        patient_folds(samples, 1, seed=5)


TINY_FOLD_NAMES = {
    "train": {
        "NORMAL": [f"IM-{100 + i:04d}-0001.jpeg" for i in range(9)] + ["IM-0100-0002.jpeg"],
        "PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(1, 13)] + ["person1_virus_99.jpeg"],
    }
}
