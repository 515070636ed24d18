"""The out-of-scope guard (:mod:`pneumoscan.inference.scope`): each reason, the fitted threshold."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image, ImageDraw

from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH
from pneumoscan.data.imaging import decode_bytes, list_input_files, read_image
from pneumoscan.data.imaging.compression import jpeg_quality
from pneumoscan.inference.decision import OUT_OF_SCOPE
from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.results import Prediction, prediction_row
from pneumoscan.inference.scope import (
    IN_SCOPE,
    MIN_QUALITY,
    REASON_COLOUR,
    REASON_DOCUMENT,
    REASON_POPULATION,
    ScopeCheck,
    ScopeGuard,
    check_image,
    combine,
    patient_folds,
    pixel_statistics,
)
from pneumoscan.testing.synthetic import xray_image


def encoded(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """``img`` as a file of ``fmt``, saved with Pillow's ``options`` (e.g. ``quality``)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def document(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("L", (600, 800), 250)
    draw = ImageDraw.Draw(img)
    for row in range(40):
        draw.text(
            (30, 20 + 19 * row),
            "Discharge summary: patient seen, chest clear " * 2,
            fill=int(rng.integers(0, 60)),
        )
    return img


def drawing() -> Image.Image:
    img = Image.new("L", (500, 500), 255)
    draw = ImageDraw.Draw(img)
    draw.ellipse((100, 60, 400, 440), outline=0, width=3)  # a sketched chest
    draw.line((250, 60, 250, 440), fill=30, width=2)
    draw.rectangle((160, 150, 230, 350), outline=20, width=2)
    return img


# --------------------------------------------------------------------------- pixel checks


def test_colour_photograph_is_not_a_radiograph():
    rng = np.random.default_rng(0)
    photo = np.zeros((200, 300, 3), np.uint8)
    photo[..., 0] = rng.integers(150, 255, (200, 300))
    photo[..., 2] = rng.integers(0, 80, (200, 300))
    check = check_image(decode_bytes(encoded(Image.fromarray(photo, "RGB"), "JPEG")))
    assert not check.in_scope and not check.radiograph
    assert check.reason.startswith(REASON_COLOUR) and "colourfulness" in check.reason


@pytest.mark.parametrize("make", [document, drawing], ids=["document", "drawing"])
def test_document_or_drawing_is_not_a_radiograph(make):
    check = check_image(decode_bytes(encoded(make())))
    assert not check.radiograph and check.reason.startswith(REASON_DOCUMENT)
    assert "flat background" in check.reason


def test_xray_like_image_passes_the_pixel_checks():
    image = decode_bytes(encoded(xray_image(512, seed=3)), name="x.png")
    assert check_image(image) == IN_SCOPE


def test_pixel_statistics_of_flat_and_noisy_images():
    flat = np.full((50, 50), 200, np.uint8)
    assert pixel_statistics(flat) == (1.0, 1.0)
    noisy = np.random.default_rng(0).integers(0, 256, (100, 100)).astype(np.uint8)
    f, s = pixel_statistics(noisy)
    assert f < 0.1 and s < 0.05
    with pytest.raises(ValueError, match="2-D uint8"):
        pixel_statistics(np.zeros((4, 4, 3), np.uint8))


@pytest.mark.required
def test_real_radiographs_pass_the_pixel_checks(shared_data, ood_data):
    """Training X-rays and out-of-scope X-rays and CT slices are all radiographs (the embedding
    check, not the pixel check, must flag the latter)."""
    files = (
        list_input_files(shared_data / "train" / "NORMAL")[:40]
        + list_input_files(shared_data / "train" / "PNEUMONIA")[:40]
    )
    for sub in ("adult_frontal", "lateral", "ct"):
        files += list_input_files(ood_data / sub)[:30]
    refused = [(f.name, c.reason) for f in files if not (c := check_image(read_image(f))).radiograph]
    assert refused == []


# --------------------------------------------------------------------------- embedding guard


def clustered(n: int, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of ``n`` images from ``n // 2`` patients: a correlated Gaussian cloud."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim))
    return rng.normal(size=(n, dim)) @ mixing + 3.0, np.repeat(np.arange(n // 2), 2)[:n]


def test_guard_threshold_holds_its_false_alarm_rate_on_held_out_patients():
    x, groups = clustered(3000)
    fit, held = groups < 1000, groups >= 1000
    guard = ScopeGuard.fit(x[fit], groups=groups[fit], false_alarm_rate=0.02, seed=0)
    assert guard.false_alarm_rate == pytest.approx(0.02, abs=0.002)
    flagged = np.mean([not c.in_scope for c in guard.check(x[held])])
    assert 0.005 < flagged < 0.05


def test_guard_flags_embeddings_from_elsewhere_with_the_population_reason():
    x, groups = clustered(2000)
    guard = ScopeGuard.fit(x, groups=groups, seed=0)
    rng = np.random.default_rng(5)
    elsewhere = x[:200] + rng.normal(0, 4.0, size=(200, x.shape[1]))  # a shifted population
    checks = guard.check(elsewhere)
    assert np.mean([not c.in_scope for c in checks]) > 0.95
    flagged = next(c for c in checks if not c.in_scope)
    assert flagged.radiograph and flagged.reason == REASON_POPULATION and flagged.distance > 1.0
    assert "probabilities unreliable" in REASON_POPULATION


def test_guard_round_trips_through_json_and_scores_the_same():
    x, groups = clustered(600)
    guard = ScopeGuard.fit(x, groups=groups, seed=1, dims=8)
    again = ScopeGuard.from_dict(json.loads(json.dumps(guard.to_dict())))
    assert again.whitening.shape == (8, 12)
    np.testing.assert_allclose(again.score(x[:50]), guard.score(x[:50]), rtol=1e-4)
    with pytest.raises(ValueError, match="unknown scope guard method"):
        ScopeGuard.from_dict({**guard.to_dict(), "method": "knn"})


def test_guard_refuses_bad_input():
    x, groups = clustered(600)
    with pytest.raises(ValueError, match="one group per row"):
        ScopeGuard.fit(x, groups=groups[:-1], seed=0)
    with pytest.raises(ValueError, match="NaN"):
        ScopeGuard.fit(np.where(np.arange(600)[:, None] == 3, np.nan, x), groups=groups, seed=0)
    guard = ScopeGuard.fit(x, groups=groups, seed=0)
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        guard.score(np.zeros((2, 13)))


def test_patient_folds_keep_each_patient_in_one_fold():
    groups = np.repeat(np.arange(50), 3)
    folds = patient_folds(groups, 5, seed=0)
    for g in range(50):
        assert len(set(folds[groups == g])) == 1
    assert np.bincount(folds).tolist() == [30] * 5


def test_patient_folds_are_the_ones_the_released_guard_was_fitted_with():
    # Round robin over the shuffled, unstratified patients: pinned, since the bundled guard's
    # threshold was set on these folds (the ensemble's own folds are stratified and differ).
    groups = [f"person{(i * 7) % 13}" for i in range(30)]
    expected = [4, 4, 0, 3, 0, 1, 3, 2, 2, 1, 2, 1, 0, 4, 4, 0, 3, 0, 1, 3, 2, 2, 1, 2, 1, 0, 4, 4, 0, 3]
    assert patient_folds(groups, 5, seed=3).tolist() == expected


def test_pixel_refusal_wins_over_the_embedding():
    refusal = ScopeCheck(False, radiograph=False, reason=REASON_COLOUR)
    assert combine(refusal, ScopeCheck(True)) is refusal
    population = ScopeCheck(False, True, REASON_POPULATION, 3.0)
    assert combine(IN_SCOPE, population) is population
    assert combine(IN_SCOPE, None) is IN_SCOPE


def test_a_compressed_radiograph_keeps_both_reasons_and_the_embedding_distance():
    compressed = check_image(
        decode_bytes(encoded(xray_image(160, seed=2), "JPEG", quality=40), name="x.jpeg")
    )
    assert compressed.radiograph and not compressed.in_scope
    assert "JPEG quality about 40" in compressed.reason and compressed.distance is None
    population = ScopeCheck(False, True, REASON_POPULATION, 3.0)
    both = combine(compressed, population)
    assert not both.in_scope and both.radiograph and both.distance == 3.0
    assert both.reason == f"{compressed.reason}; {REASON_POPULATION}"
    alone = combine(compressed, ScopeCheck(True, distance=0.4))
    assert (alone.in_scope, alone.reason, alone.distance) == (False, compressed.reason, 0.4)


# --------------------------------------------------------------------------- invariants


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(2, 40), st.integers(2, 40))),
)
def test_pixel_statistics_are_shares_and_ignore_orientation(gray):
    flat, still = pixel_statistics(gray)
    assert 0.0 < flat <= 1.0 and 0.0 <= still <= 1.0
    assert pixel_statistics(gray.T) == pytest.approx((flat, still))
    assert pixel_statistics(gray[::-1, ::-1]) == pytest.approx((flat, still))


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(32, 64), st.integers(32, 64))))
def test_a_grey_image_is_never_refused_as_colour(gray):
    rgb = Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    check = check_image(decode_bytes(encoded(rgb)))
    assert not check.reason.startswith(REASON_COLOUR)


@pytest.fixture(scope="module")
def fitted_guard() -> ScopeGuard:
    x, groups = clustered(800)
    return ScopeGuard.fit(x, groups=groups, seed=0, dims=10)


@settings(max_examples=100, deadline=None)
@given(
    scale=st.floats(0.0, 6.0),
    seed=st.integers(0, 2**16),
)
def test_guard_verdict_is_the_distance_against_its_threshold(fitted_guard, scale, seed):
    x, _ = clustered(800)
    rng = np.random.default_rng(seed)
    e = x[rng.integers(0, len(x), 5)] + rng.normal(0, scale, (5, x.shape[1]))
    scores = fitted_guard.score(e)
    for check, score in zip(fitted_guard.check(e), scores, strict=True):
        assert check.radiograph  # the embedding never says "not a radiograph"
        assert check.distance == pytest.approx(score / fitted_guard.threshold)
        assert check.in_scope == (check.distance <= 1.0)
        assert check.reason == ("" if check.in_scope else REASON_POPULATION)
        assert combine(IN_SCOPE, check) is check
        refusal = ScopeCheck(False, radiograph=False, reason=REASON_DOCUMENT)
        assert combine(refusal, check) is refusal


# --------------------------------------------------------------------------- each reason, released model


@pytest.fixture(scope="module")
def released() -> Predictor:
    """The app's model: the bundled LiteRT export of the released ensemble, with its fitted guard."""
    return Predictor(DEFAULT_LITERT_MODEL_PATH, num_threads=1)


def colour_photo() -> Image.Image:
    x = np.linspace(0, 255, 320, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (240, 1)), np.tile(x[::-1], (240, 1)), np.full((240, 320), 90, np.uint8)], 2)
    return Image.fromarray(rgb, "RGB")


@pytest.mark.parametrize(
    ("make", "fmt", "reason"),
    [
        (colour_photo, "JPEG", REASON_COLOUR),
        (document, "PNG", REASON_DOCUMENT),
        (drawing, "PNG", REASON_DOCUMENT),
    ],
    ids=["colour", "document", "drawing"],
)
def test_released_model_refuses_non_radiographs_without_probabilities(released, make, fmt, reason):
    answer = released.predict_bytes(encoded(make(), fmt), name=f"x.{fmt.lower()}")
    assert isinstance(answer, ScopeCheck), answer
    assert not answer.in_scope and not answer.radiograph and answer.reason.startswith(reason)
    row = prediction_row("x", answer)
    assert row["decision"] == OUT_OF_SCOPE and row["p_pneumonia"] is None and row["confidence"] is None


@pytest.mark.required
def test_released_model_flags_adults_and_keeps_children_in_scope(released, shared_data, ood_data):
    """Outside the population by the embedding distance (adult frontal, lateral, CT), with the
    probabilities kept and called unreliable; training X-rays in scope."""
    for sub in ("adult_frontal", "lateral", "ct"):
        files = list_input_files(ood_data / sub)[:10]
        answers = [released.predict_bytes(f.read_bytes(), name=f.name) for f in files]
        flagged = [a for a in answers if isinstance(a, Prediction) and not a.in_scope]
        assert len(flagged) >= 9, (sub, [(f.name, a) for f, a in zip(files, answers, strict=True)])
        for a in flagged:
            assert a.scope_reason == REASON_POPULATION and 0.0 <= a.p_pneumonia <= 1.0
            assert prediction_row("x", a)["in_scope"] is False
    files = list_input_files(shared_data / "train" / "NORMAL")[:10]
    files += list_input_files(shared_data / "train" / "PNEUMONIA")[:10]
    answers = [released.predict_bytes(f.read_bytes(), name=f.name) for f in files]
    assert all(isinstance(a, Prediction) for a in answers)
    kept = [a for a in answers if a.in_scope]
    assert len(kept) >= 18  # the guard's out-of-fold false alarms are 1 %
    assert all(a.scope_reason == "" for a in kept)


@pytest.mark.required
@pytest.mark.parametrize(
    ("codec", "fmt", "qualities"),
    [
        ("JPEG", "JPEG", (40, MIN_QUALITY["JPEG"] - 1, MIN_QUALITY["JPEG"], 75, 95)),
        ("WebP", "WEBP", (50, 70, 80, 90, 95)),
    ],
)
def test_a_heavily_compressed_film_keeps_its_answer_marked_unreliable(
    released, shared_data, tmp_path, codec, fmt, qualities
):
    """A real training film re-encoded below its codec's bound (JPEG 70, WebP 84; the training
    images are JPEGs of quality 75) keeps its probabilities and decision, flagged with the estimated
    quality; above the bound it is in scope. The file and the in-memory paths agree."""
    film = Image.fromarray(read_image(shared_data / "train" / "NORMAL" / "IM-0127-0001.jpeg").gray, "L")
    for quality in qualities:
        data = encoded(film, fmt, quality=quality)
        estimate = decode_bytes(data, name="q").lossy_quality
        assert abs(estimate - quality) <= (1 if fmt == "JPEG" else 3 if quality >= 80 else 10)
        answer = released.predict_bytes(data, name=f"q{quality}.{fmt.lower()}")
        assert isinstance(answer, Prediction) and 0.0 <= answer.p_pneumonia <= 1.0
        if quality < MIN_QUALITY[fmt] - (0 if fmt == "JPEG" else 3):
            assert not answer.in_scope, quality
            assert answer.scope_reason.startswith(
                f"compressed more heavily than the training images ({codec} quality about {estimate};"
            )
            assert answer.decision != OUT_OF_SCOPE and prediction_row("x", answer)["in_scope"] is False
        elif quality >= MIN_QUALITY[fmt] + (0 if fmt == "JPEG" else 3):
            assert answer.in_scope and answer.scope_reason == "", quality
        path = tmp_path / f"q{quality}.{fmt.lower()}"
        path.write_bytes(data)
        batch = released.predict_paths([path], progress=False)
        assert batch.scope[0].reason == answer.scope_reason and batch.p_pneumonia[0] == pytest.approx(
            answer.p_pneumonia
        )


@pytest.mark.required
def test_every_training_jpeg_is_of_the_quality_the_bound_is_set_against(shared_data):
    """The compression bound is set against the training images' quality, 75: all 5,216 of them."""
    files = list_input_files(shared_data / "train" / "NORMAL") + list_input_files(
        shared_data / "train" / "PNEUMONIA"
    )
    assert len(files) == 5216
    assert {jpeg_quality(Image.open(f)) for f in files} == {75}


def test_without_the_guard_every_image_is_scored_in_scope(released):
    bare = Predictor(DEFAULT_LITERT_MODEL_PATH, num_threads=1, scope_guard=False)
    assert bare.guard is None and released.guard is not None
    answer = bare.predict_bytes(encoded(colour_photo(), "JPEG"), name="photo.jpeg")
    assert isinstance(answer, Prediction) and answer.in_scope and answer.scope_reason == ""
