"""The ``pneumoscan`` command line (:mod:`pneumoscan.interfaces.cli`): every subcommand's exit codes
(0 done, 1 done but some files failed, 2 bad usage or a fatal, explained error), ``--help``, the
files it writes and the rows of ``predict --csv``.

Commands run in-process through ``cli.main``; two run as ``python -m pneumoscan.interfaces.cli`` to
check the exit code a shell sees. The model is a tiny random CNN (:mod:`pneumoscan.testing.models`)
whose sidecar says it was trained on the synthetic tree's ``train/`` folder.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pneumoscan.config import CLASS_NAMES, DISCLAIMER, SplitConfig
from pneumoscan.data.dataset import discover_split, fingerprint, train_val_split
from pneumoscan.inference.results import PREDICTION_COLUMNS
from pneumoscan.interfaces import cli
from pneumoscan.models.artifacts import ModelMetadata
from pneumoscan.testing.synthetic import write_tree, xray_image

SPLIT = SplitConfig(val_fraction=0.3, seed=7)
SUBCOMMANDS = ["data-report", "train", "evaluate", "compare", "predict", "explain", "export", "app", "serve"]
#: A training folder big enough for a patient-level split with both classes on each side.
TRAIN_NAMES = {
    "train": {
        "NORMAL": [f"IM-{100 + i // 2:04d}-{i:04d}.jpeg" for i in range(12)],
        "PNEUMONIA": [f"person{i // 2}_{'bacteria' if i % 3 else 'virus'}_{i}.jpeg" for i in range(18)],
    }
}


def run(*args) -> int:
    """``pneumoscan ARGS`` in-process: its exit code (argparse's ``SystemExit`` included)."""
    try:
        return cli.main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A synthetic ``train/`` and ``test/`` tree (14 + 7 JPEGs)."""
    return write_tree(tmp_path_factory.mktemp("cli") / "data")


@pytest.fixture(scope="module")
def model(data, tmp_path_factory) -> Path:
    """A tiny Keras model whose sidecar records ``data/train``, split with ``SPLIT``."""
    from pneumoscan.testing.models import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("model"), image_size=64, threshold=0.5)
    train, val = train_val_split(discover_split(data / "train"), SPLIT)
    ModelMetadata.read(path).updated(
        data_dir=str(data / "train"), split=SPLIT.to_dict(), data_fingerprint=fingerprint(train + val)
    ).write(path)
    return path


@pytest.fixture
def bad_files(tmp_path) -> Path:
    """A folder of two X-rays and two files no image decoder accepts."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    xray_image(96, seed=1).save(folder / "a.png")
    xray_image(96, seed=2, pneumonia=True).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    return folder


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    assert run(command, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pneumoscan {command}")
    assert "--help" in out


def test_python_dash_m_runs_the_same_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "pneumoscan", "--version"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pneumoscan ")


def test_top_level_help_version_and_usage_errors(capsys):
    assert run("--help") == 0
    out = capsys.readouterr().out
    assert all(command in out for command in SUBCOMMANDS)
    assert DISCLAIMER.split()[0] in out
    assert run("--version") == 0
    assert capsys.readouterr().out.startswith("pneumoscan ")
    assert run() == 2  # a subcommand is required
    assert "required: COMMAND" in capsys.readouterr().err
    assert run("diagnose") == 2
    assert "invalid choice: 'diagnose'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["data-report", "{tmp}/absent"], "folder not found"),
        (["train", "--data", "{tmp}/absent", "--out", "{tmp}/run"], "folder not found"),
        (["train", "--data", "{tmp}"], "train needs --data DATA_DIR and --out RUN_DIR"),
        (["train", "--arch", "resnet", "--data", "{tmp}", "--out", "{tmp}/run"], "invalid choice: 'resnet'"),
        (["train", "--epochs", "two", "--data", "{tmp}", "--out", "{tmp}/run"], "invalid int value"),
        (["evaluate", "--out", "{tmp}/e"], "the following arguments are required: --data"),
        (["evaluate", "--data", "{tmp}/absent"], "folder not found"),
        (["evaluate", "--data", "{tmp}"], "no NORMAL/ or PNEUMONIA/ folders found"),
        (["compare", "--out", "{tmp}/c"], "the following arguments are required: run_dirs"),
        (["compare", "{tmp}", "--out", "{tmp}/c"], "is not a complete training run"),
        (["predict"], "the following arguments are required: paths"),
        (["predict", "{tmp}/empty-folder"], "no image files found"),
        (["predict", "{tmp}/x.png", "--model", "{tmp}/absent.keras"], "model file not found"),
        (["explain", "{tmp}/x.png", "--model", "{tmp}/absent.keras"], "model file not found"),
        (["export", "--model", "{tmp}/absent.keras", "--out", "{tmp}/m.tflite"], "model file not found"),
        (["export", "--quantize", "int4", "--out", "{tmp}/m.tflite"], "invalid choice: 'int4'"),
        (["app", "--model", "{tmp}/absent.keras"], "model file not found"),
        (["app", "--port", "http"], "invalid int value"),
    ],
)
def test_bad_usage_exits_2_with_a_message(args, message, tmp_path, capsys):
    (tmp_path / "empty-folder").mkdir()
    assert run(*[a.format(tmp=tmp_path) for a in args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err


# --------------------------------------------------------------------------- data-report


def test_data_report(data, tmp_path, capsys):
    out = tmp_path / "report"
    assert run("data-report", data, "--out", out, "-q") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["splits"] == {"test": {"NORMAL": 3, "PNEUMONIA": 4}, "train": {"NORMAL": 6, "PNEUMONIA": 8}}
    assert report["n_files"] == report["n_readable"] == 21
    assert all((out / name).is_file() for name in report["figures"])
    assert f"report.json and figures written to {out}" in capsys.readouterr().out


# --------------------------------------------------------------------------- predict


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == PREDICTION_COLUMNS
        return list(reader)


def test_predict_every_file_gets_a_row_and_a_failure_exits_1(model, bad_files, tmp_path, capsys):
    missing = tmp_path / "absent.png"
    out = tmp_path / "out" / "predictions.csv"
    assert run("predict", bad_files, missing, "--model", model, "--csv", out, "-q") == 1

    rows = read_csv(out)
    assert sorted(Path(r["path"]).name for r in rows) == [
        "a.png",
        "absent.png",
        "b.jpg",
        "empty.png",
        "notes.txt",
    ]
    good = [r for r in rows if not r["error"]]
    bad = {Path(r["path"]).name: r for r in rows if r["error"]}
    assert sorted(Path(r["path"]).name for r in good) == ["a.png", "b.jpg"]
    for r in good:
        p_normal, p_pneumonia, confidence = (float(r[k]) for k in ("p_normal", "p_pneumonia", "confidence"))
        assert p_normal + p_pneumonia == pytest.approx(1.0, abs=1e-4)
        assert r["label"] in CLASS_NAMES
        assert (r["label"] == "PNEUMONIA") == (p_pneumonia >= 0.5)
        assert confidence == (p_pneumonia if r["label"] == "PNEUMONIA" else p_normal)
        assert float(r["threshold"]) == 0.5
    assert "empty file" in bad["empty.png"]["error"]
    assert "not a recognised image" in bad["notes.txt"]["error"]
    assert "not found" in bad["absent.png"]["error"] or "No such file" in bad["absent.png"]["error"]
    for r in bad.values():
        assert r["p_normal"] == r["p_pneumonia"] == r["confidence"] == r["label"] == ""
        assert float(r["threshold"]) == 0.5

    stdout = capsys.readouterr().out
    assert "2 predicted, 3 failed; threshold 0.500 on P(pneumonia)" in stdout
    assert f"CSV written to {out}" in stdout
    assert DISCLAIMER in stdout


def test_predict_all_good_exits_0_and_the_threshold_flag_applies(model, data, tmp_path):
    out = tmp_path / "p.csv"
    assert run("predict", data / "test", "--model", model, "--csv", out, "--threshold", "0.01", "-q") == 0
    rows = read_csv(out)
    assert len(rows) == len(discover_split(data / "test"))
    assert {r["label"] for r in rows} == {"PNEUMONIA"}
    assert {float(r["threshold"]) for r in rows} == {0.01}


# --------------------------------------------------------------------------- evaluate


def test_evaluate_on_unseen_images(model, data, tmp_path, capsys):
    out = tmp_path / "eval"
    assert (
        run("evaluate", "--data", data, "--model", model, "--out", out, "--json", tmp_path / "m.json", "-q")
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 7 and metrics["skipped"] == []  # the root's test/ split
    assert metrics["overlaps_training_data"] == 0 and metrics["chose_the_model"] is False
    stdout = capsys.readouterr().out
    assert stdout.startswith("Images evaluated")
    assert f"metrics.json and figures written to {out}" in stdout


def test_evaluate_with_unreadable_files_exits_1_and_lists_them(model, data, tmp_path, capsys):
    split = tmp_path / "test"
    shutil.copytree(data / "test", split)
    (split / "PNEUMONIA" / "person7_virus_9.jpeg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    out = tmp_path / "eval"
    assert run("evaluate", "--data", split, "--model", model, "--out", out, "-q") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 7
    assert [Path(s["path"]).name for s in metrics["skipped"]] == ["person7_virus_9.jpeg"]
    stdout = capsys.readouterr().out
    assert "(1 unreadable, skipped)" in stdout
    assert "1 file(s) could not be read and were skipped:" in stdout
    assert "person7_virus_9.jpeg" in stdout


def test_evaluate_refuses_the_models_training_images(model, data, tmp_path, capsys):
    only_train = tmp_path / "root"
    only_train.mkdir()
    (only_train / "train").symlink_to(data / "train")  # a root holding only train/
    out = tmp_path / "eval"
    assert run("evaluate", "--data", only_train, "--model", model, "--out", out, "-q") == 2
    err = capsys.readouterr().err
    train, val = train_val_split(discover_split(data / "train"), SPLIT)
    assert err.startswith(f"error: {len(train)} of the 14 images to evaluate were used to train {model}")
    assert "--allow-training-data" in err
    assert not out.exists()

    assert (
        run("evaluate", "--data", only_train, "--model", model, "--out", out, "-q", "--allow-training-data")
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overlaps_training_data"] == len(train)
    assert metrics["chose_the_model"] is True and metrics["data_overlap"]["validation_images"] == len(val)
    stdout = capsys.readouterr().out
    assert stdout.startswith(f"WARNING: {len(train)} of the images evaluated were used to train this model")
    assert f"NOTE: {len(val)} of these images are the model's validation split" in stdout


def test_evaluate_says_when_the_training_data_cannot_be_checked(data, tmp_path, capsys):
    from pneumoscan.testing.models import make_tiny_model

    bare = make_tiny_model(tmp_path)  # its sidecar names no training data
    assert run("evaluate", "--data", data / "test", "--model", bare, "--out", tmp_path / "e", "-q") == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["overlaps_training_data"] is None and metrics["data_overlap"]["checked"] is False
    assert capsys.readouterr().out.startswith(
        "NOTE: could not check whether these images were used to train the model: "
        "the model's sidecar records no training data (data_dir)"
    )


# --------------------------------------------------------------------------- explain


def test_explain(model, data, tmp_path, capsys):
    image = data / "test" / "PNEUMONIA" / "person100_bacteria_475.jpeg"
    out = tmp_path / "figures" / "heatmap.png"
    assert run("explain", image, "--model", model, "--out", out) == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    stdout = capsys.readouterr().out
    assert f"{image}: " in stdout and f"Grad-CAM overlay written to {out}" in stdout


def test_explain_an_unreadable_image_exits_2(model, bad_files, tmp_path, capsys):
    assert run("explain", bad_files / "notes.txt", "--model", model, "--out", tmp_path / "h.png") == 2
    assert "not a recognised image" in capsys.readouterr().err
    assert not (tmp_path / "h.png").exists()


# --------------------------------------------------------------------------- export


def test_export_needs_a_keras_model_and_its_data(model, tmp_path, capsys):
    from pneumoscan.testing.models import make_tiny_model

    assert run("export", "--model", make_tiny_model(tmp_path), "--out", tmp_path / "m.tflite", "-q") == 2
    assert "its sidecar names no data_dir and none was given" in capsys.readouterr().err
    assert run("export", "--model", model, "--out", tmp_path / "m.onnx", "-q") == 2
    assert "out must be a .tflite file" in capsys.readouterr().err


@pytest.mark.slow
def test_export_writes_a_checked_litert_model(model, data, tmp_path, capsys):
    out = tmp_path / "tiny-litert.tflite"
    assert run("export", "--model", model, "--out", out, "-q") == 0  # data from the sidecar's data_dir
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and report["n_check"] > 0
    assert out.stat().st_size == report["size_bytes"]
    assert ModelMetadata.read(out).export.check["n_check"] == report["n_check"]
    assert run("predict", data / "test", "--model", out, "-q") == 0  # the export serves


# --------------------------------------------------------------------------- train and compare


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """``pneumoscan train`` of the baseline CNN, tiny: (run folder, its data, stdout)."""
    tmp = tmp_path_factory.mktemp("train")
    data = write_tree(tmp / "data", TRAIN_NAMES, size=(48, 48))
    run_dir = tmp / "run"
    args = ["train", "--data", data / "train", "--out", run_dir, "--arch", "baseline", "--image-size", "32"]
    args += [
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--limit",
        "26",
        "--val-fraction",
        "0.3",
        "--seed",
        "3",
        "-q",
    ]
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = run(*args)
    assert code == 0, stdout.getvalue()
    return run_dir, data, stdout.getvalue()


@pytest.mark.slow
def test_train_writes_a_run_and_prints_its_validation_metrics(trained_run):
    run_dir, data, stdout = trained_run
    for name in ("model.keras", "model.meta.json", "config.json", "history.csv", "validation.json"):
        assert (run_dir / name).is_file(), name
    meta = ModelMetadata.read(run_dir / "model.keras")
    assert meta.arch == "baseline" and meta.image_size == 32
    assert meta.split == SplitConfig(val_fraction=0.3, seed=3, limit=26)
    assert Path(meta.data_dir) == data / "train"
    validation = json.loads((run_dir / "validation.json").read_text())
    assert stdout.startswith("Images evaluated")
    assert f"run written to {run_dir}" in stdout
    assert validation["n"] + json.loads((run_dir / "config.json").read_text())["split"]["train_images"] == 26


@pytest.mark.slow
def test_compare_a_run(trained_run, tmp_path, capsys):
    run_dir, _, _ = trained_run
    out = tmp_path / "compare"
    assert run("compare", run_dir, "--out", out) == 0
    table = (out / "comparison.md").read_text()
    assert "| run |" in table and "baseline" in table
    assert (out / "comparison.png").is_file()
    assert f"comparison.md and comparison.png written to {out}" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_the_trained_run_on_its_training_folder_is_refused(trained_run, tmp_path, capsys):
    run_dir, data, _ = trained_run
    code = run(
        "evaluate", "--data", data / "train", "--model", run_dir / "model.keras", "--out", tmp_path / "e"
    )
    assert code == 2
    assert "were used to train" in capsys.readouterr().err


# --------------------------------------------------------------------------- as a shell runs it


def shell(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "pneumoscan.interfaces.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_the_process_exit_code_of_a_partly_failed_predict_is_1(model, bad_files, tmp_path):
    done = shell("predict", bad_files, "--model", model, "--csv", tmp_path / "p.csv", "-q")
    assert done.returncode == 1, done.stderr
    assert "2 predicted, 2 failed" in done.stdout
    assert len(read_csv(tmp_path / "p.csv")) == 4


def test_the_process_exit_code_of_bad_usage_is_2(tmp_path):
    done = shell("evaluate", "--data", tmp_path / "absent")
    assert done.returncode == 2
    assert "folder not found" in done.stderr and "Traceback" not in done.stderr
