"""Distillation (``pneumoscan distill``) works: a tiny ensemble of random MobileNetV2 tops is
distilled on a tiny tree into a student whose output the Predictor reads through its sidecar
(calibrated probability, spread as uncertainty, the teacher's embedding and guard), from the
``.keras`` file and from a LiteRT export; the gate refuses a broken student, writes no model and
keeps its report.

These tests check that distillation *works*, not how well: the released student's figures come
from ``pneumoscan distill`` on the real data and ``benchmarks/distill.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.testing.models import TINY_NAMES, make_tiny_ensemble

SIZE = 64


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_ensemble(tmp_path_factory.mktemp("teacher"))


@pytest.fixture
def tree(make_tree):
    return make_tree(TINY_NAMES, size=(80, 72)) / "train"


def quick_config(**overrides):
    from pneumoscan.training.distill import DistillConfig

    options = dict(holdout_fraction=0.3, head_epochs=1, finetune_epochs=1, batch_size=8, seed=7)
    return DistillConfig(**{**options, **overrides})


@pytest.mark.slow
def test_distilled_student_keeps_probability_spread_embedding_and_guard(teacher, tree, tmp_path):
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.testing.models import export_tiny_litert
    from pneumoscan.training.distill import distill

    out = tmp_path / "student"
    # Random teachers are not worth matching closely: the gate's limits are opened here; the
    # refusal test below holds them.
    report = distill(
        teacher,
        tree,
        out,
        cfg=quick_config(max_auc_diff=1.0, min_agreement=0.0),
        export=False,
        progress=False,
    )
    assert (out / "model.keras").is_file() and (out / "distill.json").is_file()
    assert report["gate"]["passed"] and report["gate"]["serving_check"]["passed"]
    assert report["distilled_on"]["images"] + report["distilled_on"]["held_out_images"] == 25
    meta = ModelMetadata.read(out / "model.keras")
    student, teacher_meta = meta.student, ModelMetadata.read(teacher)
    assert student.outputs == {"p_pneumonia": 0, "spread": 1, "embedding": 2}
    assert student.width == 162 and student.extra["teacher"]["file"] == "teacher.keras"
    assert len(student.extra["teacher"]["sha256"]) == 64 and student.extra["seed"] == 7
    assert meta.threshold == teacher_meta.threshold and meta.scope == teacher_meta.scope
    assert json.loads((out / "distill.json").read_text())["gate"]["passed"]

    x = np.stack([np.full((SIZE, SIZE, 1), v, np.uint8) for v in (40, 120, 200)])
    x[:, 10:30, 20:40] = 255
    reference = Predictor(teacher).predict_details(x)
    keras_student = Predictor(out / "model.keras")
    lite_student = Predictor(export_tiny_litert(out / "model.keras"), num_threads=1)
    for predictor in (keras_student, lite_student):
        assert predictor.layout.calibrated and predictor.members == 0 and predictor.guard is not None
        details = predictor.predict_details(x)
        assert (
            details.p_pneumonia.shape == (3,)
            and ((details.p_pneumonia >= 0) & (details.p_pneumonia <= 1)).all()
        )
        assert details.spread.shape == (3,) and (details.spread >= 0).all() and details.members is None
        # Same stem: the embedding, and so the guard's verdict, is the teacher's.
        np.testing.assert_allclose(details.embedding, reference.embedding, atol=1e-3)
        files = sorted(tree.rglob("*.jpeg"))[:4]
        rows = predictor.predict_paths(files, progress=False).predictions(
            predictor.threshold, band=predictor.band
        )
        assert all(row.uncertainty is not None and row.in_scope in (True, False) for row in rows)
    np.testing.assert_allclose(
        lite_student.predict_details(x).p_pneumonia, keras_student.predict_details(x).p_pneumonia, atol=1e-4
    )


@pytest.mark.slow
def test_the_gate_refuses_a_broken_student_and_writes_only_its_report(teacher, tree, tmp_path, monkeypatch):
    from pneumoscan.training import distill as distill_module

    real_fit = distill_module.fit_student

    def broken_fit(*args, **kwargs):
        top, record = real_fit(*args, **kwargs)
        pred = top.get_layer("pred")
        kernel, bias = pred.get_weights()
        pred.set_weights([-kernel, -bias])  # the student answers the opposite of what it learnt
        return top, record

    monkeypatch.setattr(distill_module, "fit_student", broken_fit)
    out = tmp_path / "student"
    with pytest.raises(
        distill_module.GateError, match=r"no model written .*distill-refused.json.*more than the 0.005"
    ) as refused:
        distill_module.distill(teacher, tree, out, cfg=quick_config(), export=False, progress=False)
    assert not refused.value.report["passed"]
    assert not (out / "model.keras").exists() and not list(out.glob("*.meta.json"))
    assert not (out / "distill.json").exists()
    kept = json.loads((out / "distill-refused.json").read_text())
    assert kept["gate"]["passed"] is False and kept["gate"]["misses"] == refused.value.report["misses"]
    assert kept["teacher"]["sha256"] and kept["timings_s"]["student training"] > 0


def test_shared_body_of_identical_members_reproduces_the_ensemble_and_its_heads_are_the_models_own(teacher):
    """The shared-body layout gives the ensemble's output row: with members whose bodies are equal
    the averaged body is theirs, so every column matches the ensemble's; ``member_tops`` reads
    either layout, and setting a head's weights through it changes the model (``adapt`` relies
    on that)."""
    import keras

    from pneumoscan.models.architectures import (
        build_shared_ensemble,
        member_head,
        member_tops,
        mobilenet_cut_layer,
        shared_body,
    )

    model = keras.saving.load_model(teacher, safe_mode=True, compile=False)
    members = member_tops(model, 3)
    assert [m.name for m in members] == ["member_0", "member_1", "member_2"]
    body_weights = [w for layer in members[0].layers[:-3] for w in layer.get_weights()]
    for member in members[1:]:  # give every member member 0's body, keep their own heads
        for layer, source in zip(member.layers[:-3], members[0].layers[:-3], strict=True):
            layer.set_weights(source.get_weights())
    cut = mobilenet_cut_layer(model, 3)
    body = shared_body(members)
    averaged = [w for layer in body.layers for w in layer.get_weights()]
    assert len(averaged) == len(body_weights)
    for mean, own in zip(averaged, body_weights, strict=True):
        np.testing.assert_allclose(mean, own, rtol=1e-6, atol=1e-7)
    heads = [member_head(m, name=f"member_{k}_head") for k, m in enumerate(members)]
    shared = build_shared_ensemble(model, cut, body, heads)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(4, SIZE, SIZE, 1)).astype(np.float32)
    ensemble_row, shared_row = np.asarray(model(x)), np.asarray(shared(x))
    assert shared_row.shape == ensemble_row.shape == (4, 1 + 3 + 160)
    np.testing.assert_allclose(shared_row, ensemble_row, atol=1e-5)
    assert len({tuple(np.round(shared_row[:, k], 4)) for k in (1, 2, 3)}) == 3  # heads differ

    tops = member_tops(shared, 3)
    cut_features = keras.Model(shared.input, shared.get_layer(cut).output)(x)
    np.testing.assert_allclose(np.asarray(tops[2](cut_features))[:, 0], shared_row[:, 3], atol=1e-5)
    pred = tops[1].get_layer("member_1_head").get_layer("pred")
    kernel, bias = pred.get_weights()
    pred.set_weights([kernel, bias + 5.0])
    assert (np.asarray(shared(x))[:, 2] > shared_row[:, 2]).all()


@pytest.mark.slow
def test_shared_body_distillation_writes_an_ensemble_the_predictor_reads_unchanged(teacher, tree, tmp_path):
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.training.distill import distill

    out = tmp_path / "shared"
    report = distill(
        teacher,
        tree,
        out,
        cfg=quick_config(kind="shared-body", mixup_views=1, max_auc_diff=1.0, min_agreement=0.0),
        export=False,
        progress=False,
    )
    assert report["gate"]["passed"] and report["gate"]["serving_check"]["passed"]
    assert report["training"]["kind"] == "shared-body" and len(report["training"]["finetune_loss"]) == 1
    assert report["distilled_on"]["mixed_views_per_image"] == 1
    meta, teacher_meta = ModelMetadata.read(out / "model.keras"), ModelMetadata.read(teacher)
    assert meta.student is None and meta.ensemble.members == 3
    shared = meta.ensemble.extra["shared_body"]
    assert shared["teacher"]["file"] == "teacher.keras" and len(shared["teacher"]["sha256"]) == 64
    assert shared["gate"]["passed"] and shared["seed"] == 7
    assert meta.threshold == teacher_meta.threshold and meta.calibration == teacher_meta.calibration
    assert meta.scope == teacher_meta.scope

    x = np.stack([np.full((SIZE, SIZE, 1), v, np.uint8) for v in (40, 120, 200)])
    x[:, 10:30, 20:40] = 255
    reference = Predictor(teacher).predict_details(x)
    details = Predictor(out / "model.keras").predict_details(x)
    assert details.members.shape == (3, 3) and (details.spread >= 0).all()
    np.testing.assert_allclose(details.p_pneumonia, details.members.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(details.embedding, reference.embedding, atol=1e-3)


def test_gate_says_what_failed_and_by_how_much():
    from pneumoscan.training.distill_gate import GateSet, gate

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    teacher_p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    spread = rng.uniform(0, 0.1, 200)

    def sets(student_p):
        return [
            GateSet(
                "held out", np.zeros((200, 1)), y, np.zeros(200, bool), teacher_p, spread, student_p, spread
            ),
            GateSet(
                "darker (gamma 1.5)",
                np.zeros((200, 1)),
                y,
                np.ones(200, bool),
                teacher_p,
                spread,
                student_p,
                spread,
            ),
        ]

    meta = ModelMetadata(image_size=64, threshold=0.5, decision={"band": {"low": 0.4, "high": 0.6}})
    same = gate(sets(teacher_p.copy()), meta, max_auc_diff=0.005, min_agreement=0.99)
    assert same["passed"] and same["never_trained"]["decision_agreement"] == 1.0
    assert same["all"]["spread_correlation"] == pytest.approx(1.0)
    broken = gate(sets(1 - teacher_p), meta, max_auc_diff=0.005, min_agreement=0.99)
    assert not broken["passed"] and len(broken["misses"]) == 3
    assert "more than the 0.005 allowed" in broken["misses"][0] and "short" in broken["misses"][-1]


def test_student_sidecar_round_trips_and_is_checked():
    from pneumoscan.models.artifacts import OutputLayout

    ensemble = {"members": 3, "embedding_dim": 160}
    student = {"outputs": {"p_pneumonia": 0, "spread": 1, "embedding": 2}, "width": 162, "embedding_dim": 160}
    meta = ModelMetadata(image_size=64, threshold=0.5, ensemble=ensemble, student=student)
    assert ModelMetadata.from_json(json.loads(json.dumps(meta.to_json()))) == meta
    layout = OutputLayout.of(meta)
    assert (layout.width, layout.calibrated, layout.spread, layout.embedding) == (162, True, 1, 2)
    # An ensemble's sidecar (no student section) reads as before.
    old = OutputLayout.of(ModelMetadata(image_size=64, threshold=0.5, ensemble=ensemble))
    assert (old.width, old.members, old.embedding, old.calibrated) == (164, 3, 4, False)
    assert OutputLayout.of(ModelMetadata(image_size=64, threshold=0.5)).width == 1
    for bad in (
        {**student, "width": 100},
        {**student, "outputs": {"p_pneumonia": 0, "spread": 0, "embedding": 2}},
        {**student, "outputs": {"p_pneumonia": 0, "embedding": 2}},
    ):
        with pytest.raises(ValueError, match="student"):
            ModelMetadata(image_size=64, threshold=0.5, student=bad)


def test_member_heads_are_trainable_after_the_teacher_was_frozen(teacher):
    # build_shared_ensemble freezes its stem source (the teacher's model, members included); heads
    # copied from it afterwards (a second distillation in one process) must still train.
    from pneumoscan.models.architectures import build_shared_ensemble, member_head, shared_body
    from pneumoscan.training.distill import Teacher

    loaded = Teacher.load(teacher)
    heads = [member_head(top, name=f"member_{k}_head") for k, top in enumerate(loaded.tops)]
    build_shared_ensemble(loaded.model, loaded.cut, shared_body(loaded.tops), heads)
    assert not loaded.tops[0].get_layer("pred").trainable
    again = member_head(loaded.tops[0], name="member_0_head")
    assert len(again.trainable_weights) == 4  # head_dense and pred, kernel and bias each
    assert shared_body(loaded.tops).trainable_weights


def test_mixed_views_lie_between_two_distillation_views_and_carry_the_teachers_answers_there(teacher):
    from pneumoscan.training.distill import DistillConfig, Teacher, mixed_views

    loaded = Teacher.load(teacher)
    shape = tuple(loaded.tops[0].input.shape[1:])
    n = 6
    # Row i is the i-th basis vector: a mixture's non-zero entries name the two rows it mixes.
    features = np.zeros((n, int(np.prod(shape))), np.float32)
    features[np.arange(n), np.arange(n)] = 1.0
    features = features.reshape((n,) + shape)
    members = loaded.members(features)
    cfg = DistillConfig(mixup_views=2, seed=3)
    x, targets = mixed_views(loaded, features, members, cfg)
    assert x.shape == (3 * n,) + shape and targets.shape == (3 * n, 3)
    np.testing.assert_array_equal(x[:n], features)
    np.testing.assert_array_equal(targets[:n], members)
    weights = x[n:].reshape(2 * n, -1)[:, :n]
    assert (weights >= 0).all() and np.allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert (weights[np.arange(2 * n), np.tile(np.arange(n), 2)] > 0).all()  # each row mixes itself in
    assert not np.allclose(x[n : 2 * n], x[2 * n :])  # two views, two draws
    np.testing.assert_allclose(targets[n:], loaded.members(x[n:]), atol=1e-6)
    again, _ = mixed_views(loaded, features, members, cfg)
    np.testing.assert_array_equal(again, x)  # seeded
    assert mixed_views(loaded, features, members, DistillConfig())[0] is features


def test_distill_command_parses():
    from pneumoscan.interfaces.cli import build_parser

    args = build_parser().parse_args(
        ["distill", "--teacher", "t.keras", "--data", ".", "--out", "o", "--holdout-fraction", "0.2"]
    )
    assert args.holdout_fraction == 0.2 and args.func.__name__ == "cmd_distill"
    assert args.kind == "student"
    parsed = build_parser().parse_args(
        ["distill", "--teacher", "t", "--data", ".", "--out", "o", "--kind", "shared-body"]
    )
    assert parsed.kind == "shared-body" and parsed.mixup_views == 0
    mixed = build_parser().parse_args(
        ["distill", "--teacher", "t", "--data", ".", "--out", "o", "--mixup-views", "2"]
    )
    assert mixed.mixup_views == 2
