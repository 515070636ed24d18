"""Every benchmark script still starts: its command line parses and ``--help`` says how to run it.

Benchmarks are run by hand, so nothing else in the suite runs them; a script that no longer
compiles (a ``global`` after its name is read is a SyntaxError that a linter does not report) would
stay unnoticed until someone needs its figures. Helper modules without a command line (imported by
a script) must at least compile. One script is also checked on what it computes: the recipe
summary's agreement with the test table, per view, on a run file written here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def has_command_line(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_the_benchmarks_folder_is_found():
    assert len(SCRIPTS) >= 10, f"expected the benchmark scripts in {BENCHMARKS}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_compiles(path):
    compile(path.read_text(), str(path), "exec")  # symtable errors included, unlike a parse alone


@pytest.mark.parametrize("path", [p for p in SCRIPTS if has_command_line(p)], ids=lambda p: p.name)
def test_every_benchmark_answers_help(path):
    done = subprocess.run(
        [sys.executable, str(path), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, f"{path.name} --help failed:\n{done.stderr[-2000:]}"
    assert done.stdout.startswith("usage:"), f"{path.name} --help printed no usage:\n{done.stdout[:500]}"


def test_recipe_summary_checks_every_view_against_the_test_table(tmp_path, capsys, monkeypatch):
    """A view that ranks recipes as the test split does is reported as agreeing, one that does not
    as disagreeing: the check runs per view, the texture views included, not only clean and crop."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # restored after the test
    import recipe_summary

    # clean: the training folder's order (ensemble first); down_half_png: the test split's order
    # (mean of three > frozen + LR > the single seeds' mean > ensemble, issue 16's table)
    def scored(clean: float, half: float) -> dict:
        return {"clean": {"auc": clean}, "crop": {"auc": clean - 0.01}, "down_half_png": {"auc": half}}

    run = {
        "split": "setup",
        "frozen_lr": scored(0.988, 0.960),
        "single seed 1337": scored(0.994, 0.955),
        "single seed 7": scored(0.993, 0.950),
        "single seed 42": scored(0.992, 0.949),
        "single, mean of the seeds' models": scored(0.9945, 0.970),
        "ensemble": scored(0.995, 0.940),
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(run))
    assert recipe_summary.main([str(path)]) == 0
    printed = capsys.readouterr().out
    lines = {
        view: next(line for line in printed.splitlines() if f"test split ({view})" in line)
        for view in ("clean", "crop", "down_half_png")
    }
    half = json.loads(lines["down_half_png"].split(": ", 1)[1])
    assert half["spearman_rho"] == pytest.approx(1.0)
    assert half["pairs_agreeing"] == "6 of 6"
    clean = json.loads(lines["clean"].split(": ", 1)[1])
    assert clean["pairs_agreeing"] != "6 of 6"
    assert clean["spearman_rho"] < 0.5


@pytest.mark.parametrize("shape", [(224, 224), (1858, 2090), (480, 311)])
def test_zoom_window_cuts_a_collimated_look_inside_the_film(shape, monkeypatch):
    """``--augment zoom-window``'s windows: inside the film, 60-85 % of each side, and low enough
    that the top of the film (head and neck of a wide-field film) is always cut away."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import numpy as np
    import recipe_validation

    height, width = shape
    rng = np.random.default_rng(0)
    windows = np.array([recipe_validation.zoom_window(height, width, rng) for _ in range(2000)])
    top, left, bottom, right = windows.T
    assert (top >= 0).all() and (left >= 0).all() and (bottom <= height).all() and (right <= width).all()
    low, high = recipe_validation.ZOOM_WINDOW
    for side, full in ((bottom - top, height), (right - left, width)):
        assert side.min() >= np.floor(low * full) and side.max() <= np.ceil(high * full)
        assert side.max() - side.min() > 0.15 * full  # the fractions are drawn, not fixed
    # at least half the room above the window is cut: 7.5 % of the film at the largest window
    assert (top >= np.floor(0.5 * (height - (bottom - top)))).all()
    assert top.min() >= np.floor(0.5 * (1 - high) * height)


def test_set_up_adversary_reverses_only_the_gradient_into_the_features(monkeypatch):
    """The ``adversarial`` recipe's gradient reversal: P(pneumonia) is the top's own, and the
    adversary's gradient reaches the top's weights multiplied by ``-ADVERSARY``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import keras
    import numpy as np
    import recipe_validation
    import tensorflow as tf

    monkeypatch.setattr(recipe_validation, "ADVERSARY", 0.3)
    keras.utils.set_random_seed(0)
    stem = keras.Input((7, 7, 16))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 1, activation="relu")(stem))
    top = keras.Model(stem, [keras.layers.Dense(1, activation="sigmoid")(pooled), pooled])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 32)
    model = recipe_validation.with_adversary(top, rng.random((32, 8)).astype("float32"), y, rng.random(32))
    x = tf.constant(rng.random((4, 7, 7, 16)).astype("float32"))
    label = tf.constant(y[:4, None].astype("float32"))
    p, _ = model([x, label])
    np.testing.assert_allclose(p.numpy(), top(x)[0].numpy(), rtol=1e-6)
    adversary = model.layers[-1]
    assert isinstance(adversary, keras.Model)
    conv = top.trainable_variables[0]  # the top's own weights, upstream of the pooled features
    with tf.GradientTape() as tape:
        reversed_guess = tf.reduce_sum(model([x, label])[1])
    with tf.GradientTape() as tape_plain:
        plain_guess = tf.reduce_sum(adversary([top(x)[1], label]))
    np.testing.assert_allclose(reversed_guess.numpy(), plain_guess.numpy(), rtol=1e-5)
    reversed_grad, plain_grad = tape.gradient(reversed_guess, conv), tape_plain.gradient(plain_guess, conv)
    assert float(tf.norm(plain_grad)) > 0
    np.testing.assert_allclose(reversed_grad.numpy(), -0.3 * plain_grad.numpy(), rtol=1e-4, atol=1e-7)
