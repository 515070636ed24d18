"""The fast path of an ensemble export (``pneumoscan export --fast-path``): one averaged body with
the members' own heads answers, and the ensemble answers every image in or near the uncertain band.

These tests check that the cascade *works* on a tiny random-weight ensemble (which rows each model
answers, what the sidecar records, what happens when the check fails or the file is missing), not
how close the averaged body is to a trained ensemble: that is measured on the release by the
export's own check and by ``benchmarks/fast_path.py``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from pneumoscan.inference.backends import CascadeBackend, load_backend
from pneumoscan.inference.predictor import FastPath, Predictor
from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.testing.models import TINY_NAMES, make_tiny_ensemble
from pneumoscan.training import export, export_check

SIZE = 64


class _Rows:
    """A runtime whose answer for image i is row ``table[i]`` (images carry their index as pixels)."""

    name, model = "table", None

    def __init__(self, table):
        self.table, self.calls = np.asarray(table, np.float32), []

    def run(self, x):
        index = x[:, 0, 0, 0].astype(int)
        self.calls.append(index.tolist())
        return self.table[index]


def test_cascade_keeps_fast_rows_and_takes_the_full_models_rows_where_marked():
    fast, full = _Rows(np.arange(10)[:, None] * [1.0, 2.0]), _Rows(-np.arange(10)[:, None] * [1.0, 1.0])
    cascade = CascadeBackend(fast, full, lambda rows: rows[:, 0] % 3 == 0)
    x = np.arange(10, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    rows = cascade.run(x)
    marked = np.arange(10) % 3 == 0
    np.testing.assert_array_equal(rows[marked], full.table[marked])
    np.testing.assert_array_equal(rows[~marked], fast.table[~marked])
    assert full.calls == [[0, 3, 6, 9]]  # only the marked images went to the full model, once
    assert (cascade.rows, cascade.full_rows) == (10, 4)
    # Nothing marked: the full model is not called at all.
    cascade2 = CascadeBackend(fast, full, lambda rows: np.zeros(len(rows), bool))
    np.testing.assert_array_equal(cascade2.run(x[:4]), fast.table[:4])
    assert full.calls == [[0, 3, 6, 9]] and cascade2.full_rows == 0


def test_band_distance_is_zero_in_the_band_and_the_gap_to_it_outside():
    from pneumoscan.inference.decision import UncertaintyBand, band_distance

    band = UncertaintyBand(0.2, 0.7)
    p = np.array([0.0, 0.15, 0.2, 0.5, 0.6999, 0.7, 0.95])
    np.testing.assert_allclose(band_distance(p, band=band), [0.2, 0.05, 0, 0, 0, 0, 0.25], atol=1e-12)
    # Members that disagree past max_spread make the answer uncertain whatever p: distance 0;
    # below it, the spread's own gap counts when it is the smaller.
    capped = UncertaintyBand(0.2, 0.7, max_spread=0.1)
    spread = np.array([0.3, 0.08, 0.0, 0.0, 0.0, 0.0, 0.12])
    np.testing.assert_allclose(
        band_distance(p, band=capped, spread=spread), [0, 0.02, 0, 0, 0, 0, 0], atol=1e-12
    )


def test_the_ensembles_weight_falls_from_one_to_zero_between_delta_and_blend(tmp_path):
    fast = FastPath(tmp_path / "f.tflite", 0.05, 0.10, {})
    w = fast.weight(np.array([0.0, 0.049, 0.05, 0.075, 0.0999, 0.10, 0.3]))
    np.testing.assert_allclose(w, [1, 1, 1, 0.5, 0.002, 0, 0], atol=1e-9)
    hard = FastPath(tmp_path / "f.tflite", 0.05, 0.05, {})
    np.testing.assert_array_equal(hard.weight(np.array([0.0, 0.049, 0.05, 0.2])), [1, 1, 0, 0])
    with pytest.raises(ValueError, match="delta <= blend"):
        FastPath(tmp_path / "f.tflite", 0.1, 0.05, {})


def test_above_the_band_the_fast_path_hands_over_by_its_own_pair(tmp_path):
    """The averaged body errs upwards near the band, so above it the ensemble keeps a wider stretch;
    below it, and for a sidecar that names no pair above, the first pair holds."""
    rule = FastPath(tmp_path / "f.tflite", 0.10, 0.15, {}, 0.20, 0.25)
    distance = np.array([0.05, 0.125, 0.175, 0.225, 0.30])
    np.testing.assert_allclose(rule.weight(distance, above=np.zeros(5, bool)), [1, 0.5, 0, 0, 0], atol=1e-9)
    np.testing.assert_allclose(rule.weight(distance, above=np.ones(5, bool)), [1, 1, 1, 0.5, 0], atol=1e-9)
    np.testing.assert_allclose(rule.weight(distance), [1, 0.5, 0, 0, 0], atol=1e-9)
    old = FastPath(tmp_path / "f.tflite", 0.10, 0.15, {})
    assert (old.delta_above, old.blend_above) == (0.10, 0.15)
    with pytest.raises(ValueError, match="delta_above <= blend_above"):
        FastPath(tmp_path / "f.tflite", 0.10, 0.15, {}, 0.30, 0.20)


def test_cascade_mixes_the_rows_by_weight_and_runs_the_full_model_only_where_it_counts():
    fast, full = _Rows(np.zeros((4, 2))), _Rows(np.ones((4, 2)) * 10)
    cascade = CascadeBackend(fast, full, lambda rows: np.array([0.0, 0.25, 1.0, 0.0]))
    x = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((1, 2, 2, 1), np.float32)
    np.testing.assert_allclose(cascade.run(x), [[0, 0], [2.5, 2.5], [10, 10], [0, 0]])
    assert full.calls == [[1, 2]] and cascade.full_rows == 2


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    return make_tiny_ensemble(tmp_path_factory.mktemp("ensemble"), size=SIZE)


@pytest.fixture
def exported(ensemble, make_tree, tmp_path, monkeypatch):
    """The tiny ensemble exported with its fast path. Its random heads are no trained ensemble, so
    the gate is opened here; the refusal test holds it."""
    tree = make_tree(TINY_NAMES, size=(80, 72)) / "train"
    monkeypatch.setattr(export_check, "MIN_AGREEMENT", 0.0)
    monkeypatch.setattr(export_check, "MAX_ABS_PROB_DIFF", 1.0)
    monkeypatch.setattr(export_check, "FAST_PATH_MAX_AUC_DIFF", 1.0)
    out = tmp_path / "out" / "tiny-litert.tflite"
    report = export.export_tflite(Predictor(ensemble), out=out, data_dir=tree, progress=False, fast_path=True)
    return out, report


def _images(n=24, seed=3):
    """Films from black to white with noise of growing strength."""
    rng = np.random.default_rng(seed)
    level = np.linspace(0, 255, n)[:, None, None, None]
    noise = rng.normal(size=(n, SIZE, SIZE, 1)) * np.linspace(0, 80, n)[:, None, None, None]
    return np.clip(level + noise, 0, 255).astype(np.uint8)


def test_export_writes_the_fast_path_and_the_predictor_answers_with_it(exported):
    out, report = exported
    fast_file = out.with_name("tiny-litert-fast.tflite")
    assert fast_file.is_file() and report["fast_path"]["file"] == fast_file.name
    record = ModelMetadata.read(out).export.extra["fast_path"]
    assert (record["delta"], record["blend"]) == (export.FAST_PATH_DELTA, export.FAST_PATH_BLEND)
    above = (export.FAST_PATH_DELTA_ABOVE, export.FAST_PATH_BLEND_ABOVE)
    assert (record["delta_above"], record["blend_above"]) == above
    rule = Predictor(out).fast_path
    assert (rule.delta_above, rule.blend_above) == above
    assert record["check"]["passed"] is True
    assert record["check"]["n_check"] == report["n_check"]  # the export's own images
    assert 0.0 <= record["check"]["answered_by_the_ensemble"] <= 1.0
    assert record["size_bytes"] == fast_file.stat().st_size

    cascade, full = Predictor(out), Predictor(out, fast_path=False)
    assert isinstance(cascade.runtime, CascadeBackend)
    assert cascade.fast_path == FastPath.of(cascade.metadata, out)
    assert not isinstance(full.runtime, CascadeBackend) and full.fast_path is None
    # Which model answers is the rule's business (tested above on rows that differ); here the
    # wiring: delta 0 sends nothing to the ensemble, a delta past every edge sends everything.
    # (The tiny random stem answers every image alike, so only the counts tell the two apart.)
    x = _images()
    fast_rows = load_backend(fast_file, num_threads=1).run(x.astype(np.float32))
    full_rows = full.predict_outputs(x)
    for delta, expected_rows, expected_full in ((0.0, fast_rows, 0), (0.49, full_rows, len(x))):
        cascade = Predictor(out)
        object.__setattr__(
            cascade, "fast_path", dataclasses.replace(cascade.fast_path, delta=delta, blend=delta)
        )
        np.testing.assert_allclose(cascade.predict_outputs(x), expected_rows, atol=1e-6)
        assert (cascade.runtime.rows, cascade.runtime.full_rows) == (len(x), expected_full)
    # The embedding, so the scope guard, is the stem's in both: the same on every row.
    layout = cascade.layout
    emb = slice(layout.embedding, layout.embedding + layout.embedding_dim)
    np.testing.assert_allclose(fast_rows[:, emb], full_rows[:, emb], atol=1e-4)


def test_a_fast_path_that_fails_its_check_is_removed_and_the_export_stands(
    ensemble, make_tree, tmp_path, monkeypatch
):
    tree = make_tree(TINY_NAMES, size=(80, 72)) / "train"
    monkeypatch.setattr(export_check, "MAX_ABS_PROB_DIFF", 1.0)  # the export itself passes...
    monkeypatch.setattr(export_check, "MIN_AGREEMENT", 0.0)
    real_parity = export_check.parity

    def parity(reference, candidate, check):  # ...its fast path can never pass
        found = real_parity(reference, candidate, check)
        if candidate.fast_path is not None:
            monkeypatch.setattr(export_check, "MIN_AGREEMENT", 1.01)
        return found

    monkeypatch.setattr(export_check, "parity", parity)
    out = tmp_path / "tiny-litert.tflite"
    with pytest.raises(ValueError, match=r"fast path .* failed its check .* was removed"):
        export.export_tflite(Predictor(ensemble), out=out, data_dir=tree, progress=False, fast_path=True)
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert left == ["tiny-litert.meta.json", "tiny-litert.tflite"]
    assert "fast_path" not in ModelMetadata.read(out).export.extra
    assert Predictor(out).fast_path is None


def test_fast_path_needs_an_ensemble(tmp_path):
    from pneumoscan.testing.models import make_tiny_model

    single = make_tiny_model(tmp_path)
    with pytest.raises(ValueError, match="--fast-path needs an ensemble"):
        export.export_tflite(Predictor(single), out=tmp_path / "s.tflite", progress=False, fast_path=True)


def test_a_missing_fast_file_falls_back_to_the_ensemble_with_a_warning(exported, caplog):
    out, _ = exported
    out.with_name("tiny-litert-fast.tflite").unlink()
    with caplog.at_level(logging.WARNING):
        predictor = Predictor(out)
    assert predictor.fast_path is None and "fast path" in caplog.text and "missing" in caplog.text
    x = _images(4)
    np.testing.assert_allclose(predictor.predict_proba(x), Predictor(out, fast_path=False).predict_proba(x))


def test_export_cli_takes_fast_path():
    from pneumoscan.interfaces.cli import build_parser

    parsed = build_parser().parse_args(["export", "--out", "m.tflite", "--fast-path"])
    assert parsed.fast_path is True
    assert build_parser().parse_args(["export", "--out", "m.tflite"]).fast_path is False


@pytest.mark.slow
@pytest.mark.required
def test_the_bundled_fast_path_hands_every_uncertain_film_to_the_ensemble(shared_data):
    """On real films and the released files: where the averaged body's answer lies in the
    uncertain band or within delta of it (delta_above above it) the answer is the ensemble's,
    beyond blend (blend_above) it is the body's own, the scope guard reads the same embedding, and
    the sidecar records a passed check."""
    from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH
    from pneumoscan.data.imaging import load_image
    from pneumoscan.inference.decision import band_distance

    cascade = Predictor(DEFAULT_LITERT_MODEL_PATH)
    full = Predictor(DEFAULT_LITERT_MODEL_PATH, fast_path=False)
    assert cascade.fast_path is not None and cascade.fast_path.file.is_file()
    check = cascade.fast_path.check
    assert check["passed"] and check["agreement"] >= 0.99 and check["n_check"] >= 1000
    assert abs(check["auc_fast_path"] - check["auc_keras"]) <= 0.005

    files = [sorted((shared_data / "train" / c).glob("*.jpeg"))[::41][:40] for c in ("NORMAL", "PNEUMONIA")]
    x = np.stack([load_image(f, cascade.image_size) for f in files[0] + files[1]])
    fast = cascade.details_of(load_backend(cascade.fast_path.file, num_threads=1).run(x.astype(np.float32)))
    distance = band_distance(fast.p_pneumonia, band=cascade.band, spread=fast.spread)
    weight = cascade.fast_path.weight(distance, above=fast.p_pneumonia >= cascade.band.high)
    shipped, ensemble = cascade.predict_details(x), full.predict_details(x)
    alone, none = weight >= 1, weight == 0
    assert none.sum() >= len(x) // 2, "most training films lie far from the band"
    assert alone.any(), "these films include some in or near the band"
    np.testing.assert_allclose(shipped.p_pneumonia[alone], ensemble.p_pneumonia[alone], atol=1e-6)
    np.testing.assert_allclose(shipped.p_pneumonia[none], fast.p_pneumonia[none], atol=1e-6)
    # Mixed rows: each member's raw probability is mixed, so each calibrated member lies between
    # the two models' (the calibration is monotone); their mean need not, by a hair.
    mixed = ~alone & ~none
    low = np.minimum(fast.members, ensemble.members)[mixed] - 1e-6
    high = np.maximum(fast.members, ensemble.members)[mixed] + 1e-6
    assert np.all((shipped.members[mixed] >= low) & (shipped.members[mixed] <= high))
    np.testing.assert_allclose(shipped.embedding, ensemble.embedding, atol=1e-3)
