"""Tests of pneumoscan.evaluation: metrics against scikit-learn, threshold, calibration, bootstrap,
the report schema, evaluate_folder end to end (fake predictor) and compare_runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn import metrics as skm

from pneumoscan.data.dataset import discover_split
from pneumoscan.evaluation import comparison, evaluate
from pneumoscan.evaluation import metrics as ev
from pneumoscan.inference.results import LABELLED_COLUMNS
from pneumoscan.models.calibration import PlattCalibrator

Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0])
S = np.array([0.05, 0.2, 0.35, 0.6, 0.1, 0.9, 0.8, 0.4, 0.55, 0.97, 0.3, 0.7, 0.65, 0.45, 0.5, 0.5])
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _sharpened(n: int = 4000, *, sharpen: float = 4.0, seed: int = 0):
    """Labels drawn from a true probability, and an over-confident score: sigmoid(k * logit)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return y, 1 / (1 + np.exp(-sharpen * logit))


# --------------------------------------------------------------------------- point metrics


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.62, 1.0])
def test_binary_metrics_match_sklearn(threshold):
    m = ev.binary_metrics(Y, S, threshold=threshold)
    pred = (S >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(Y, pred, labels=[0, 1]).ravel()
    assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert m["n"] == len(Y)
    assert m["threshold"] == threshold
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(Y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(Y, pred, zero_division=0))
    assert m["recall"] == pytest.approx(skm.recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(Y, pred, pos_label=0))
    assert m["f1"] == pytest.approx(skm.f1_score(Y, pred, zero_division=0))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(Y, S))
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(Y, S))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(Y, S))
    for key, value in m.items():
        if key != "confusion_matrix":
            assert value is None or type(value) in (int, float), key
    assert all(type(v) is int for v in m["confusion_matrix"].values())


def test_binary_metrics_single_class_gives_none_not_nan():
    m = ev.binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], threshold=0.5)
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["specificity"] is None
    assert m["recall"] == pytest.approx(2 / 3)
    json.dumps(m, allow_nan=False)
    m = ev.binary_metrics([0, 0], [0.2, 0.6], threshold=0.5)
    assert m["recall"] is None and m["specificity"] == 0.5


@pytest.mark.parametrize(
    "y, s, match",
    [
        ([0, 2], [0.1, 0.2], "0 .NORMAL. and 1"),
        ([0, 1], [0.1], "shape"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 1], [0.1, 1.5], r"\[0, 1\]"),
        ([], [], "empty"),
    ],
)
def test_binary_metrics_rejects_bad_input(y, s, match):
    with pytest.raises(ValueError, match=match):
        ev.binary_metrics(y, s, threshold=0.5)


def test_ece_matches_manual_computation():
    y = np.array([0, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.55, 0.6, 0.95, 1.0])
    # 2 bins: [0, .5): acc 1/2 conf .1 ; [.5, 1]: acc 3/4 conf .775
    expected = (2 * abs(0.5 - 0.1) + 4 * abs(0.75 - 0.775)) / 6
    assert ev.expected_calibration_error(y, p, n_bins=2) == pytest.approx(expected)
    assert ev.expected_calibration_error([0, 1], [0.0, 1.0]) == pytest.approx(0.0)


def test_reliability_curve_matches_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    y, p = _sharpened(2000)
    curve = ev.reliability_curve(y, p, n_bins=10)
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    full = curve.counts > 0
    np.testing.assert_allclose(curve.accuracy[full], frac)
    np.testing.assert_allclose(curve.confidence[full], mean)
    assert curve.counts.sum() == len(y)
    assert curve.centers.shape == (10,) and curve.edges.shape == (11,)


def test_per_subtype_recall():
    y = [1, 1, 1, 1, 0, 1]
    pred = [1, 0, 1, 1, 1, 0]
    sub = ["bacteria", "bacteria", "virus", "virus", "none", "none"]
    assert ev.per_subtype_recall(y, pred, sub) == {"bacteria": 0.5, "virus": 1.0}
    assert ev.per_subtype_recall([0, 1], [0, 1], ["none", "bacteria"]) == {"bacteria": 1.0, "virus": None}
    with pytest.raises(ValueError, match="same length"):
        ev.per_subtype_recall([0, 1], [0, 1], ["none"])


# --------------------------------------------------------------------------- threshold


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 1), st.floats(0.0, 1.0, allow_nan=False)), min_size=1, max_size=60
    ).filter(lambda rows: any(label == 1 for label, _ in rows)),
    target=st.floats(0.01, 1.0, allow_nan=False),
)
def test_threshold_for_recall_reaches_target_and_is_largest(data, target):
    y = np.array([r[0] for r in data])
    s = np.array([r[1] for r in data])
    t = ev.threshold_for_recall(y, s, target_recall=target)
    positives = s[y == 1]
    assert np.sum(positives >= t) / positives.size >= target  # recall as binary_metrics counts it
    above = np.nextafter(t, np.inf)
    assert np.sum(positives >= above) / positives.size < target


def test_threshold_for_recall_examples_and_validation():
    y = np.array([1, 1, 1, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.95])
    assert ev.threshold_for_recall(y, s, target_recall=0.75) == 0.7
    assert ev.threshold_for_recall(y, s, target_recall=1.0) == 0.6
    assert ev.threshold_for_recall(y, s, target_recall=0.76) == 0.6
    with pytest.raises(ValueError, match="target_recall"):
        ev.threshold_for_recall(y, s, target_recall=0.0)
    with pytest.raises(ValueError, match="target_recall"):
        ev.threshold_for_recall(y, s, target_recall=1.01)
    with pytest.raises(ValueError, match="at least one PNEUMONIA"):
        ev.threshold_for_recall([0, 0], [0.1, 0.2])


# --------------------------------------------------------------------------- calibration


def test_platt_lowers_ece_of_overconfident_model():
    y, p = _sharpened(4000, seed=1)
    y_test, p_test = _sharpened(4000, seed=2)
    cal = PlattCalibrator.fit(y, p)
    assert 0.0 < cal.a < 1.0  # over-confident scores are softened (true slope is 1/4)
    assert cal.a == pytest.approx(0.25, abs=0.05)
    before = ev.expected_calibration_error(y_test, p_test)
    after = ev.expected_calibration_error(y_test, cal.transform(p_test))
    assert after < before / 2
    # Monotonic, so AUC is kept (up to ties made by clipping p to [1e-6, 1 - 1e-6]).
    auc = skm.roc_auc_score(y_test, p_test)
    assert skm.roc_auc_score(y_test, cal.transform(p_test)) == pytest.approx(auc, abs=1e-3)


def test_platt_identity_roundtrip_and_monotonic():
    p = np.linspace(0.001, 0.999, 50)
    np.testing.assert_allclose(PlattCalibrator().transform(p), p, atol=1e-9)
    cal = PlattCalibrator(a=0.7, b=-0.3)
    assert PlattCalibrator.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    assert np.all(np.diff(cal.transform(p)) > 0)
    assert np.isfinite(cal.transform(np.array([0.0, 1.0]))).all()
    with pytest.raises(ValueError, match="slope"):
        PlattCalibrator(a=-1.0, b=0.0)
    with pytest.raises(ValueError, match="'a' and 'b'"):
        PlattCalibrator.from_dict({"a": 1.0})


def test_platt_falls_back_to_identity_when_fit_is_decreasing(caplog):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.where(y == 1, rng.uniform(0.0, 0.4, 500), rng.uniform(0.6, 1.0, 500))  # anti-correlated
    cal = PlattCalibrator.fit(y, p)
    assert cal == PlattCalibrator()
    assert "identity" in caplog.text


def test_platt_fit_needs_both_classes_and_is_finite_on_separable_data():
    with pytest.raises(ValueError, match="both classes"):
        PlattCalibrator.fit([1, 1], [0.2, 0.9])
    cal = PlattCalibrator.fit([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert math.isfinite(cal.a) and cal.a > 0


# --------------------------------------------------------------------------- bootstrap


def _bootstrap_data(n=600, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    groups = [f"patient{i // 3}" for i in range(n)]
    return y, s, groups


def test_bootstrap_deterministic_per_seed_and_contains_estimate():
    y, s, g = _bootstrap_data()
    metrics = ("accuracy", "recall", "specificity", "roc_auc", "precision", "f1", "brier")
    a = ev.bootstrap_ci(y, s, g, threshold=0.5, n_boot=300, seed=7, metrics=metrics)
    b = ev.bootstrap_ci(y, s, g, threshold=0.5, n_boot=300, seed=7, metrics=metrics)
    c = ev.bootstrap_ci(y, s, g, threshold=0.5, n_boot=300, seed=8, metrics=metrics)
    assert a == b
    assert a != c
    point = ev.binary_metrics(y, s, threshold=0.5)
    for name in metrics:
        low, high = a[name]
        assert low < point[name] < high, name
        assert high - low < 0.2


def test_weighted_metrics_match_sklearn_sample_weight():
    y, s, _ = _bootstrap_data(200)
    s = np.round(s, 1)  # many ties, to exercise the half-credit rule
    pred = (s >= 0.5).astype(int)
    w = np.random.default_rng(0).integers(0, 4, size=(3, y.size))
    names = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc", "brier")
    got = ev._weighted_metrics(y, s, pred, w, names)
    for row in range(3):
        sw = w[row]
        assert got["accuracy"][row] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=sw))
        assert got["recall"][row] == pytest.approx(skm.recall_score(y, pred, sample_weight=sw))
        spec = skm.recall_score(y, pred, pos_label=0, sample_weight=sw)
        assert got["specificity"][row] == pytest.approx(spec)
        assert got["precision"][row] == pytest.approx(skm.precision_score(y, pred, sample_weight=sw))
        assert got["f1"][row] == pytest.approx(skm.f1_score(y, pred, sample_weight=sw))
        assert got["roc_auc"][row] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=sw))
        assert got["brier"][row] == pytest.approx(skm.brier_score_loss(y, s, sample_weight=sw))


def test_bootstrap_resamples_whole_patients():
    # Two patients with perfect, opposite predictions: every resample has accuracy 0, 0.5 or 1,
    # never the in-between values an image-level bootstrap would give.
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.9, 0.9, 0.8, 0.8, 0.8])
    ci = ev.bootstrap_ci(y, s, ["a"] * 3 + ["b"] * 3, threshold=0.5, n_boot=200, metrics=("accuracy",))
    assert ci["accuracy"] == [0.0, 1.0]
    single = ev.bootstrap_ci(y, s, ["a"] * 6, threshold=0.5, n_boot=50, metrics=("accuracy", "roc_auc"))
    assert single["accuracy"] == [0.5, 0.5]
    assert single["roc_auc"] == [1.0, 1.0]
    one_class = ev.bootstrap_ci([1, 1], [0.2, 0.9], ["a", "b"], threshold=0.5, n_boot=20)
    assert one_class["roc_auc"] is None and one_class["specificity"] is None


def test_bootstrap_is_fast_enough():
    import time

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 1000)
    s = rng.random(1000)
    start = time.perf_counter()
    ev.bootstrap_ci(y, s, [str(i // 2) for i in range(1000)], threshold=0.5, n_boot=1000)
    assert time.perf_counter() - start < 3.0


def test_bootstrap_rejects_unknown_metric():
    with pytest.raises(ValueError, match="cannot bootstrap"):
        ev.bootstrap_ci([0, 1], [0.1, 0.9], None, threshold=0.5, metrics=("sensitivity",))


# --------------------------------------------------------------------------- report schema

#: The report's scalar metrics: each a float in [0, 1], and each a column of the comparison table.
SCALAR_METRICS = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
    "threshold",
)


def test_metrics_report_schema():
    y, s, g = _bootstrap_data(300)
    subtypes = ["none" if v == 0 else ("virus" if i % 3 else "bacteria") for i, v in enumerate(y)]
    r = ev.metrics_report(y, s, threshold=0.4, groups=g, subtypes=subtypes, n_boot=200, seed=1)
    assert set(r) == {"n", *SCALAR_METRICS, "confusion_matrix", "ci95", "per_subtype"}
    assert type(r["n"]) is int and r["n"] == 300
    for key in SCALAR_METRICS:
        assert type(r[key]) is float, key
        assert 0.0 <= r[key] <= 1.0, key
    assert set(r["confusion_matrix"]) == {"tn", "fp", "fn", "tp"}
    assert all(type(v) is int for v in r["confusion_matrix"].values())
    assert sum(r["confusion_matrix"].values()) == 300
    assert set(r["ci95"]) == {"accuracy", "recall", "specificity", "roc_auc"}
    for key, (low, high) in r["ci95"].items():
        assert type(low) is float and type(high) is float and low <= r[key] <= high, key
    assert set(r["per_subtype"]) == {"bacteria", "virus"}
    assert all(type(v) is float for v in r["per_subtype"].values())
    assert json.loads(json.dumps(r, allow_nan=False)) == r
    table = ev.format_metrics_table(r)
    for word in ("Recall (sensitivity)", "Specificity", "ROC AUC", "Confusion matrix", "bacteria"):
        assert word in table


def test_format_metrics_table_handles_missing_values():
    r = ev.metrics_report(
        [1, 1, 1], [0.2, 0.6, 0.9], threshold=0.5, groups=None, subtypes=["virus"] * 3, n_boot=20
    )
    table = ev.format_metrics_table(r)
    assert "n/a" in table


# --------------------------------------------------------------------------- evaluate_folder


class FakeResults:
    def __init__(self, p, errors):
        self.p_pneumonia, self.errors = p, errors


class FakePredictor:
    """Reads each file; its 'probability' is the mean grey level / 255 (files are made to match)."""

    threshold = 0.5
    image_size = 64
    model_path = Path("models/fake.keras")

    def __init__(self):
        self.calls = []

    def predict_paths(self, paths, *, tta=False, progress=True):
        from pneumoscan.data.imaging import ImageDecodeError, read_image

        self.calls.append({"n": len(paths), "tta": tta, "progress": progress})
        p = np.full(len(paths), np.nan)
        errors = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                p[i] = read_image(path).gray.mean() / 255.0
            except ImageDecodeError as exc:
                errors[i] = exc.reason
        return FakeResults(p, errors)


def _write_png(path: Path, level: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(level, 3, (64, 48)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, "L").save(path)


def make_split(root: Path) -> Path:
    """A tiny test split with known 'probabilities' (grey level / 255) and one corrupt file."""
    split = root / "test"
    (split / "NORMAL").mkdir(parents=True)
    (split / "PNEUMONIA").mkdir(parents=True)
    normal_levels = [20, 40, 60, 90, 140, 180]  # two false positives at 0.5
    pneumonia_levels = [220, 200, 170, 150, 100, 30]  # two false negatives
    for i, level in enumerate(normal_levels):
        _write_png(split / "NORMAL" / f"IM-{i // 2:04d}-{i:04d}.png", level, i)
    for i, level in enumerate(pneumonia_levels):
        kind = "bacteria" if i % 2 else "virus"
        _write_png(split / "PNEUMONIA" / f"person{i // 2}_{kind}_{i}.png", level, 100 + i)
    (split / "PNEUMONIA" / "person9_virus_99.png").write_bytes(PNG_MAGIC + b"this is not a png")
    return split


EVAL_FIGURES = ("confusion_matrix", "roc", "pr", "reliability", "threshold_sweep", "worst_mistakes")


def test_evaluate_folder_end_to_end(tmp_path):
    samples = discover_split(make_split(tmp_path))
    assert len(samples) == 13
    predictor = FakePredictor()
    out = tmp_path / "eval"
    report = evaluate.evaluate_folder(samples, predictor, out_dir=out, tta=True, n_boot=100, progress=False)
    assert predictor.calls == [{"n": 13, "tta": True, "progress": False}]

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == report
    assert report["n"] == 12
    assert report["threshold"] == 0.5
    assert report["tta"] is True
    assert report["model"] == str(Path("models/fake.keras"))
    assert report["confusion_matrix"] == {"tn": 4, "fp": 2, "fn": 2, "tp": 4}
    assert len(report["skipped"]) == 1
    assert report["skipped"][0]["path"].endswith("person9_virus_99.png")
    assert "corrupt" in report["skipped"][0]["error"] or "not a recognised" in report["skipped"][0]["error"]
    assert set(report["per_subtype"]) == {"bacteria", "virus"}
    assert set(report["ci95"]) == {"accuracy", "recall", "specificity", "roc_auc"}

    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert list(rows[0]) == list(LABELLED_COLUMNS)
    assert len(rows) == 13
    bad = [r for r in rows if r["error"]]
    assert len(bad) == 1 and bad[0]["p_pneumonia"] == "" and bad[0]["predicted"] == ""
    good = [r for r in rows if not r["error"]]
    assert all(int(r["predicted"]) == (float(r["p_pneumonia"]) >= 0.5) for r in good)
    assert {r["patient_id"] for r in good} >= {"IM-0000", "person0"}

    for name in EVAL_FIGURES:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC), name
        with Image.open(out / f"{name}.png") as img:
            img.verify()


def test_evaluate_folder_threshold_override_and_no_mistakes(tmp_path):
    samples = discover_split(make_split(tmp_path))
    report = evaluate.evaluate_folder(
        samples, FakePredictor(), out_dir=tmp_path / "e", threshold=0.01, n_boot=20, progress=False
    )
    assert report["threshold"] == 0.01
    assert report["recall"] == 1.0 and report["specificity"] == 0.0
    assert (tmp_path / "e" / "worst_mistakes.png").is_file()


def test_evaluate_folder_all_unreadable_is_a_clear_error(tmp_path):
    split = tmp_path / "x"
    (split / "NORMAL").mkdir(parents=True)
    (split / "NORMAL" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="none of the 1 images"):
        evaluate.evaluate_folder(
            discover_split(split), FakePredictor(), out_dir=tmp_path / "o", n_boot=10, progress=False
        )
    with pytest.raises(ValueError, match="empty"):
        evaluate.evaluate_folder([], FakePredictor(), out_dir=tmp_path / "o")


def test_worst_mistakes_order():
    labels = np.array([1, 1, 1, 0, 0, 0])
    probs = np.array([0.3, 0.05, 0.9, 0.6, 0.99, 0.1])
    fn, fp = evaluate.worst_mistakes(labels, probs, 0.5)
    assert fn == [1, 0] and fp == [4, 3]
    fn, fp = evaluate.worst_mistakes(labels, probs, 0.5, limit=2)
    assert fn == [1] and fp == [4]


# --------------------------------------------------------------------------- compare_runs


def _fake_run(path: Path, *, name, arch, seed, paths=None, with_name=True):
    rng = np.random.default_rng(seed)
    paths = paths or [f"data/train/NORMAL/img{i}.jpeg" for i in range(30)] + [
        f"data/train/PNEUMONIA/person{i}_virus_{i}.jpeg" for i in range(30)
    ]
    y = np.array([0 if "/NORMAL/" in p else 1 for p in paths])
    s = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    path.mkdir(parents=True)
    subtypes = ["none" if v == 0 else "virus" for v in y]
    groups = [Path(p).stem for p in paths]
    report = ev.metrics_report(y, s, threshold=0.5, groups=groups, subtypes=subtypes, n_boot=50)
    (path / "validation.json").write_text(json.dumps(report))
    config = {"arch": arch, **({"name": name} if with_name else {})}
    (path / "config.json").write_text(json.dumps(config))
    with (path / "validation_predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "subtype", "label", "p_pneumonia"])
        for p, g, sub, label, prob in zip(paths, groups, subtypes, y, s, strict=True):
            w.writerow([p, g, sub, int(label), f"{prob:.6f}"])
    return report


def test_compare_runs(tmp_path):
    r1 = _fake_run(tmp_path / "run1", name="baseline-a", arch="baseline", seed=1)
    _fake_run(tmp_path / "run2", name=None, arch="mobilenetv2", seed=2, with_name=False)
    out = tmp_path / "cmp"
    md = comparison.compare_runs([tmp_path / "run1", tmp_path / "run2"], out_dir=out)
    assert (out / "comparison.md").read_text() == md
    lines = md.strip().splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["run", "arch", "n", "accuracy"]
    for column in ("recall 95% CI", *SCALAR_METRICS):
        assert column in header
    assert "baseline-a" in lines[2] and "| baseline |" in lines[2]
    assert "run2" in lines[3] and "mobilenetv2" in lines[3]
    assert f"{r1['accuracy']:.3f}" in lines[2]
    assert (out / "comparison.png").read_bytes().startswith(PNG_MAGIC)


def test_compare_runs_refuses_different_validation_sets(tmp_path):
    _fake_run(tmp_path / "a", name="a", arch="baseline", seed=1)
    other = [f"data/train/NORMAL/other{i}.jpeg" for i in range(30)] + [
        f"data/train/PNEUMONIA/person{i}_virus_{i}.jpeg" for i in range(30)
    ]
    _fake_run(tmp_path / "b", name="b", arch="baseline", seed=1, paths=other)
    with pytest.raises(ValueError, match="different images"):
        comparison.compare_runs([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "cmp")
    assert not (tmp_path / "cmp" / "comparison.md").exists()


def test_compare_runs_missing_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="validation.json"):
        comparison.compare_runs([tmp_path / "empty"], out_dir=tmp_path / "cmp")
