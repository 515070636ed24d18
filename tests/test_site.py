"""Deploying at a new site: ``site-check``, ``adapt`` and ``drift`` on a site simulated from the
training folder (:mod:`pneumoscan.testing.site`: training films re-framed to a tight crop, the framing
that broke the released model on a new intake), the refusals, and an adapted model through every
command. The simulated site's patients were seen uncropped by the model: these tests measure what a
change of acquisition does, not a new population.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.config import default_keras_model_path, default_serving_model_path
from pneumoscan.data.dataset import discover_split
from pneumoscan.evaluation.overlap import TrainingDataOverlapError
from pneumoscan.evaluation.site import (
    ADAPT,
    FIT,
    TOO_FEW,
    UNSURE,
    SiteFloors,
    floor_misses,
    site_check,
    site_verdict,
)
from pneumoscan.inference.drift import (
    DIFFERS,
    OUT_OF_SCOPE,
    SIMILAR,
    _reference_cdf,
    batch_drift,
    distribution_p_value,
    drift_summary,
    relative_distances,
    share_p_value,
)
from pneumoscan.inference.scope import REFERENCE_QUANTILES, ScopeGuard
from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.training.adapt import (
    LITERT_FILE,
    MODEL_FILE,
    SiteSampleError,
    adapt_model,
    check_site_sample,
    fit_last_layer,
)

# --------------------------------------------------------------------------- without the data


def _guard(reference=None, false_alarm_rate=0.01) -> ScopeGuard:
    e = 4
    return ScopeGuard(np.zeros(e), np.ones(e), np.eye(e), 1.0, false_alarm_rate, 1000, 5, reference)


def test_drift_verdicts_follow_the_distances():
    rng = np.random.default_rng(0)
    # Held-out training distances: chi-square-like, 1 % beyond the threshold (1.0).
    train = rng.gamma(4.0, 1.0, 20000)
    train /= np.quantile(train, 0.99)
    guard = _guard(np.quantile(train, REFERENCE_QUANTILES))
    same = drift_summary(rng.choice(train, 300), guard)
    farther = drift_summary(rng.choice(train, 300) * 1.3, guard)
    unlike = drift_summary(rng.choice(train, 300) * 4.0, guard)
    few = drift_summary(train[:5], guard)
    assert same["verdict"] == SIMILAR, same["summary"]
    assert farther["verdict"] == DIFFERS, farther["summary"]
    assert unlike["verdict"] == OUT_OF_SCOPE, unlike["summary"]
    assert few["verdict"] == "too few images to judge"
    assert "site-check" in farther["summary"]
    # Without a stored reference only the share beyond the threshold is tested.
    assert drift_summary(rng.choice(train, 300) * 1.3, _guard())["p_distribution"] is None
    assert drift_summary(np.full(50, 0.5), None)["verdict"] is None


def test_drift_p_values_are_scipy_stats_binomtest_and_kstest():
    # drift.py computes them from scipy.special to spare predict the scipy.stats import; they must
    # stay the library's tests: intakes nearer, like and farther than the reference, with ties,
    # from the smallest judged batch up, and shares beyond the threshold from none to all.
    from scipy import stats

    rng = np.random.default_rng(3)
    train = rng.gamma(4.0, 1.0, 20000)
    train /= np.quantile(train, 0.99)
    cdf = _reference_cdf(np.quantile(train, REFERENCE_QUANTILES))
    for trial in range(120):
        n = int(rng.integers(20, 800))
        d = rng.choice(train, n) * rng.choice([0.7, 1.0, 1.1, 1.3, 3.0])
        if trial % 4 == 0:
            d = np.round(d, 1)
        expected = stats.kstest(d, cdf, alternative="less").pvalue
        assert distribution_p_value(d, cdf) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        beyond, rate = int(rng.integers(0, n + 1)), float(rng.choice([0.01, 0.05, 0.3]))
        expected = stats.binomtest(beyond, n, rate, alternative="greater").pvalue
        assert share_p_value(beyond, n, rate) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_batch_drift_reads_rows_with_a_guard_or_a_sidecar_scope_section(tmp_path):
    # The Ray engine passes the sidecar's scope section as ModelMetadata keeps it (read-only).
    rng = np.random.default_rng(1)
    train = rng.gamma(4.0, 1.0, 20000)
    train /= np.quantile(train, 0.99)
    guard = _guard(np.quantile(train, REFERENCE_QUANTILES))
    ensemble = {"members": 2, "embedding_dim": 4}
    meta = ModelMetadata(image_size=64, threshold=0.5, ensemble=ensemble, scope=guard.to_dict())
    path = tmp_path / "m.keras"
    meta.write(path)
    section = ModelMetadata.read(path).scope
    rows = [{"scope_distance": float(d)} for d in rng.choice(train, 300) * 4.0] + [{"scope_distance": None}]
    for given in (guard, section):
        summary = batch_drift(rows, given)
        assert summary["n"] == 300 and summary["verdict"] == OUT_OF_SCOPE, summary


def _report(recall, spec, lo_r, lo_s, ece=0.02, n=(100, 100)):
    return {
        "recall": recall,
        "specificity": spec,
        "ece": ece,
        "ci95": {"recall": [lo_r, 1.0], "specificity": [lo_s, 1.0]},
        "confusion_matrix": {"tn": n[0], "fp": 0, "fn": 0, "tp": n[1]},
    }


def test_site_verdict_reads_floors_and_intervals():
    floors = SiteFloors(recall=0.95, specificity=0.70, ece=0.10)
    assert site_verdict(_report(0.99, 0.51, 0.97, 0.44), floors)["verdict"] == ADAPT
    assert (
        "specificity 0.51 [0.44, 1.00]" in site_verdict(_report(0.99, 0.51, 0.97, 0.44), floors)["reasons"][0]
    )
    assert site_verdict(_report(0.99, 0.80, 0.97, 0.65), floors)["verdict"] == UNSURE
    assert site_verdict(_report(0.99, 0.80, 0.97, 0.75), floors)["verdict"] == FIT
    assert site_verdict(_report(0.99, 0.80, 0.97, 0.75, ece=0.2), floors)["verdict"] == ADAPT
    assert site_verdict(_report(0.99, 0.80, 0.97, 0.75, n=(10, 100)), floors)["verdict"] == TOO_FEW
    # adapt's warning reads its estimate against the same floors, by point estimate only.
    assert floor_misses({"recall": 0.96, "specificity": 0.29, "ece": 0.2}, floors) == [
        "specificity 0.29 (floor 0.70)",
        "ECE 0.20 (floor 0.10)",
    ]
    assert floor_misses({"recall": 0.98, "specificity": 0.85, "ece": 0.05}, floors) == []


def test_last_layer_fit_moves_with_the_prior_strength():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(200, 8))
    y = (f[:, 0] > 0).astype(float)
    w0 = np.zeros(8)
    w0[1] = 2.0  # the base model reads the wrong feature
    w_free, _ = fit_last_layer(f, y, w0, 0.0, 1e-4)
    w_held, _ = fit_last_layer(f, y, w0, 0.0, 1e4)
    assert w_free[0] > 1.0 and abs(w_free[1]) < 1.0  # the site's data win
    np.testing.assert_allclose(w_held, w0, atol=1e-3)  # the prior wins


def test_small_and_one_sided_samples_are_refused_with_the_counts(make_tree):
    from pneumoscan.data.dataset import discover_split

    root = make_tree(
        {
            "site": {
                "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(50)],
                "PNEUMONIA": ["person1_bacteria_1.jpeg"],
            }
        }
    )
    samples = discover_split(root / "site", prefer="test")
    with pytest.raises(SiteSampleError, match=r"PNEUMONIA: 1 image\(s\) from 1 patient") as info:
        check_site_sample(samples)
    assert "at least 40 images from at least 20 patients of EACH class" in str(info.value)
    with pytest.raises(SiteSampleError, match="PNEUMONIA: 0 image"):
        check_site_sample([s for s in samples if s.label == 0])


# --------------------------------------------------------------------------- the simulated site


@pytest.fixture(scope="module")
def site(shared_data, tmp_path_factory) -> dict[str, Path]:
    """Halves A (to adapt on) and B (to measure on) of a re-framed site: 100 patients per class."""
    from pneumoscan.testing.site import pick_patients, write_simulated_site

    train = discover_split(shared_data / "train", prefer="train")
    chosen = pick_patients(train, 100, seed=5)
    patients = sorted({s.patient_id for s in chosen})
    random.Random(0).shuffle(patients)
    half = set(patients[::2])
    root = tmp_path_factory.mktemp("site")
    b_originals = [s for s in chosen if s.patient_id not in half]
    a = write_simulated_site([s for s in chosen if s.patient_id in half], root / "A")
    b = write_simulated_site(b_originals, root / "B")
    return {"A": a, "B": b, "B_originals": b_originals, "train": shared_data / "train", "root": root}


@pytest.fixture(scope="module")
def adapted(site) -> dict:
    """``pneumoscan adapt`` on half A, through the command line; its JSON report."""
    from pneumoscan.interfaces.cli import main

    report = site["root"] / "adapt.json"
    out = site["root"] / "adapted"
    assert main(["adapt", "--data", str(site["A"]), "--out", str(out), "--json", str(report), "-q"]) == 0
    return json.loads(report.read_text())


@pytest.mark.required
def test_site_check_tells_the_reframed_site_to_adapt(site, tmp_path):
    from pneumoscan.inference.predictor import Predictor

    report = site_check(
        discover_split(site["B"], prefer="test"),
        Predictor(default_serving_model_path()),
        out_dir=tmp_path,
        progress=False,
    )
    assert report["verdict"] == ADAPT, report["summary"]
    assert report["specificity"] < 0.7
    assert "specificity" in report["summary"] and "adapt" in report["summary"]
    assert (tmp_path / "site_check.json").is_file() and (tmp_path / "reliability.png").is_file()


@pytest.mark.required
def test_adapt_gains_on_held_out_site_patients(site, adapted, tmp_path):
    from pneumoscan.evaluation.evaluate import evaluate_folder
    from pneumoscan.inference.predictor import Predictor

    b = discover_split(site["B"], prefer="test")
    base = evaluate_folder(
        b, Predictor(default_keras_model_path()), out_dir=tmp_path / "base", progress=False
    )
    new = evaluate_folder(
        b, Predictor(adapted["files"]["keras"]), out_dir=tmp_path / "adapted", progress=False, n_boot=200
    )
    # Patients of half B were never in the site sample: the gain is measured, not fitted.
    assert new["specificity"] >= base["specificity"] + 0.3, (base["specificity"], new["specificity"])
    assert new["recall"] >= 0.9
    assert new["roc_auc"] >= base["roc_auc"] - 0.01
    assert new["ece"] < base["ece"]
    # The estimate adapt recorded came from cross-fitting inside half A only.
    meta = json.loads(Path(adapted["files"]["keras"]).with_suffix("").with_suffix(".meta.json").read_text())
    site_meta = meta["site"]
    assert site_meta["n"] == len(discover_split(site["A"], prefer="test"))
    assert set(site_meta["counts"]) == {"NORMAL", "PNEUMONIA"}
    assert len(site_meta["base_model_sha256"]) == 64 and site_meta["sample_fingerprint"]
    assert 0.0 < site_meta["estimate"]["specificity"] <= 1.0
    # Its held-out figures are that estimate on the site, not the base model's training figures.
    held_out = meta["held_out"]
    assert held_out["measured_on"].startswith("the site's sample") and held_out["chose"] == ["prior strength"]
    assert held_out["metrics"]["n"] == site_meta["n"]
    assert held_out["metrics"]["specificity"] == site_meta["estimate"]["specificity"]
    assert meta["threshold"] == pytest.approx(adapted["threshold"])
    assert (
        meta["scope"]
        == json.loads(default_keras_model_path().with_suffix("").with_suffix(".meta.json").read_text())[
            "scope"
        ]
    )


def test_training_images_are_refused(site, tmp_path):
    train = discover_split(site["train"], prefer="train")
    sample = [s for s in train if s.label == 0][:45] + [s for s in train if s.label == 1][:45]
    with pytest.raises(TrainingDataOverlapError, match="were used to train"):
        adapt_model(sample, default_keras_model_path(), tmp_path, progress=False)


@pytest.mark.required
def test_drift_orders_training_split_site_and_out_of_scope(site, ood_data):
    """A random split of the training folder, a mildly re-framed intake (crop 0.85: specificity at
    the stored threshold still ~0.85, a few more images beyond the guard's threshold), the site the
    other tests adapt to (crop 0.75) and adult / lateral / CT images: distances grow in that order,
    and the first, second and last get three different verdicts."""
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.testing.site import write_simulated_site

    predictor = Predictor(default_serving_model_path())
    train = discover_split(site["train"], prefer="train")
    b = discover_split(site["B"], prefer="test")
    mild = write_simulated_site(site["B_originals"], site["root"] / "mild", crop=0.85)
    sets = {
        "train": [s.path for s in random.Random(3).sample(train, 100)],
        "mild": [s.path for s in discover_split(mild, prefer="test")],
        "site": [s.path for s in b],
        "ood": sorted(p for p in ood_data.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:100],
    }
    verdicts = {}
    for name, files in sets.items():
        results = predictor.predict_paths(files, progress=False)
        distances = relative_distances(predictor.guard, results.embedding)
        verdicts[name] = drift_summary(distances, predictor.guard)
    assert verdicts["train"]["verdict"] == SIMILAR, verdicts["train"]["summary"]
    assert verdicts["mild"]["verdict"] == DIFFERS, verdicts["mild"]["summary"]
    assert verdicts["ood"]["verdict"] == OUT_OF_SCOPE, verdicts["ood"]["summary"]
    medians = [verdicts[name]["median_distance"] for name in sets]
    assert medians == sorted(medians), dict(zip(sets, medians, strict=True))
    assert "site-check" in verdicts["mild"]["summary"]


@pytest.mark.required
def test_an_adapted_model_goes_through_every_command(site, adapted, tmp_path):
    from fastapi.testclient import TestClient

    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.interfaces.cli import main
    from pneumoscan.interfaces.service import create_app

    keras_file = Path(adapted["files"]["keras"])
    lite_file = Path(adapted["files"]["litert"])
    assert keras_file.name == MODEL_FILE and lite_file.name == LITERT_FILE
    assert keras_file.stat().st_size + lite_file.stat().st_size < 40e6
    from pneumoscan.models.artifacts import ModelMetadata

    check = ModelMetadata.read(lite_file).export.check  # the export's own gate, on the site images
    assert check["passed"] and check["kinds"]["site"] == check["n_check"] > 0
    assert check["agreement"] >= check["gate"]["min_agreement"]
    images = sorted((site["B"] / "NORMAL").iterdir())[:3] + sorted((site["B"] / "PNEUMONIA").iterdir())[:3]
    csv = tmp_path / "p.csv"
    assert main(["predict", *map(str, images), "--model", str(lite_file), "--csv", str(csv), "-q"]) == 0
    assert "pneumonia" in csv.read_text().lower()
    keras_p = Predictor(keras_file).predict_paths(images, progress=False).p_pneumonia
    lite_p = Predictor(lite_file).predict_paths(images, progress=False).p_pneumonia
    np.testing.assert_allclose(lite_p, keras_p, atol=0.05)
    assert (
        main(
            [
                "evaluate",
                "--data",
                str(site["B"]),
                "--model",
                str(keras_file),
                "--out",
                str(tmp_path / "e"),
                "-q",
            ]
        )
        == 0
    )
    assert (
        main(["explain", str(images[-1]), "--model", str(keras_file), "--out", str(tmp_path / "x.png")]) == 0
    )
    assert (tmp_path / "x.png").stat().st_size > 0
    with TestClient(create_app(predictor=Predictor(lite_file))) as client:
        card = client.get("/v1/model").json()
        assert card["threshold"] == pytest.approx(adapted["threshold"])
        response = client.post(
            "/v1/predictions", files=[("files", (images[0].name, images[0].read_bytes(), "image/png"))]
        )
        assert response.status_code == 200
        row = response.json()["predictions"][0]
        assert row["p_pneumonia"] == pytest.approx(lite_p[0], abs=1e-4)


def test_site_check_command_exits_3_with_the_verdict(site, tmp_path, capsys):
    from pneumoscan.interfaces.cli import main

    out = tmp_path / "sc"
    assert (
        main(["site-check", "--data", str(site["B"]), "--out", str(out), "--json", str(out / "r.json"), "-q"])
        == 3
    )
    printed = capsys.readouterr().out
    assert "Verdict:" in printed and ADAPT in printed and "not a medical device" in printed
    assert json.loads((out / "r.json").read_text())["verdict"] == ADAPT
