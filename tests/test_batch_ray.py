"""``pneumoscan predict --engine ray``: the rows of ``pneumoscan predict``, bit for bit, from Ray actors;
resume after a crash (a run killed midway) with exactly one row per input file; the consolidation
and skip logic on its own, without Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pneumoscan.testing.optional import require

pa = require("pyarrow", extra="ray")
pq = require("pyarrow.parquet", extra="ray")

from pneumoscan.inference import batch  # noqa: E402
from pneumoscan.inference.batch import parts_dir, read_rows, score_archive, write_parquet  # noqa: E402
from pneumoscan.inference.results import PREDICTION_COLUMNS, prediction_row  # noqa: E402
from pneumoscan.interfaces import cli  # noqa: E402
from pneumoscan.testing.models import export_tiny_litert, make_tiny_model  # noqa: E402
from pneumoscan.testing.synthetic import write_image, xray_like  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def lite_model(tmp_path_factory) -> Path:
    keras_path = make_tiny_model(tmp_path_factory.mktemp("model"), image_size=SIZE, threshold=0.45)
    return export_tiny_litert(keras_path)


def make_images(folder: Path, n: int, *, size: int = 96, bad: bool = True) -> Path:
    """``n`` X-ray-like files (JPEG and PNG, in subfolders), plus a broken and an empty one."""
    for i in range(n):
        suffix = ".png" if i % 3 == 0 else ".jpeg"
        write_image(
            folder / f"s{i % 4}" / f"img{i:04d}{suffix}", xray_like(size, size, seed=i, pneumonia=i % 2 == 1)
        )
    if bad:
        (folder / "broken.jpeg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        (folder / "empty.png").write_bytes(b"")
    return folder


def local_rows(paths: list[str], model: Path, tmp_path: Path) -> pa.Table:
    """What ``pneumoscan predict --out`` writes for these inputs (the local engine)."""
    out = tmp_path / "local.parquet"
    cli.main(["predict", *paths, "--model", str(model), "--out", str(out), "-q"])
    return pq.read_table(out)


# --------------------------------------------------------------------------- without Ray


def test_parquet_rows_round_trip_exactly(tmp_path):
    from pneumoscan.inference.results import make_prediction

    rows = [
        prediction_row("a.png", make_prediction(0.1234567890123456789, 0.3)),
        prediction_row("b.png", "bad"),
    ]
    out = write_parquet(tmp_path / "r.parquet", rows)
    assert read_rows([out]) == rows
    assert pq.read_table(out).column_names == list(PREDICTION_COLUMNS)
    assert not list(tmp_path.glob(".*tmp"))  # written aside, then renamed


def test_resume_skips_scored_files_and_consolidates_one_row_each(tmp_path, lite_model, monkeypatch):
    # An earlier run committed rows for a, b (twice: a crash between commit and rename of a later
    # part), a file no longer among the inputs, and left a half-written part.
    parts = parts_dir(tmp_path / "out.parquet")
    parts.mkdir()
    earlier = [prediction_row(p, "old error", threshold=0.45) for p in ("a.png", "b.png", "gone.png")]
    write_parquet(parts / "part-000000-x.parquet", earlier[:2])
    write_parquet(parts / "part-000001-y.parquet", earlier[1:])
    (parts / ".part-000002-z.parquet.tmp").write_bytes(b"half")
    scored = []
    monkeypatch.setattr(batch, "_run_on_ray", lambda paths, commit, **kw: scored.append(paths))
    summary = score_archive(
        ["a.png", "b.png", "missing.png", "a.png"],
        tmp_path / "out.parquet",
        model_path=lite_model,
        progress=False,
    )
    assert scored == []  # the only new file cannot be read: no Ray needed
    rows = read_rows([tmp_path / "out.parquet"])
    assert [r["path"] for r in rows] == ["a.png", "b.png", "missing.png"]
    assert rows[2] == prediction_row(
        "missing.png", "cannot read file (No such file or directory)", threshold=0.45
    )
    assert (summary.n_files, summary.n_resumed, summary.n_scored, summary.n_failed) == (3, 2, 1, 3)
    assert not parts.exists()
    # A rerun of a finished job scores nothing and rewrites the same output.
    again = score_archive(
        ["a.png", "b.png", "missing.png"], tmp_path / "out.parquet", model_path=lite_model, progress=False
    )
    assert (again.n_resumed, again.n_scored) == (3, 0) and read_rows([tmp_path / "out.parquet"]) == rows


def test_expand_uris_lists_files_under_a_file_uri(tmp_path):
    make_images(tmp_path / "arch", 3, bad=False)
    (tmp_path / "arch" / ".hidden").write_bytes(b"x")
    uris = batch.expand_uris((tmp_path / "arch").as_uri())
    assert uris == sorted(p.as_uri() for p in (tmp_path / "arch").rglob("img*"))
    assert batch.expand_uris(uris[0]) == [uris[0]]
    with pytest.raises(FileNotFoundError, match="nothing found"):
        batch.expand_uris((tmp_path / "nope").as_uri())


def test_engine_options_are_checked(tmp_path, capsys, lite_model):
    assert cli.main(["predict", str(tmp_path), "--engine", "ray", "--model", str(lite_model)]) == 2
    assert "--engine ray needs --out" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path), "--ray-address", "auto"]) == 2
    assert "need --engine ray" in capsys.readouterr().err


# --------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the in-process runs (score_archive reuses a running Ray)."""
    ray = require("ray", extra="ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.required
def test_ray_rows_equal_pneumoscan_predict_bit_for_bit(local_ray, lite_model, tmp_path):
    folder = make_images(tmp_path / "images", 20)
    inputs = [str(folder), str(tmp_path / "missing.jpeg")]
    expected = local_rows(inputs, lite_model, tmp_path)
    out = tmp_path / "ray.parquet"
    code = cli.main(
        [
            "predict",
            "--engine",
            "ray",
            *inputs,
            "--model",
            str(lite_model),
            "--out",
            str(out),
            "--csv",
            str(tmp_path / "ray.csv"),
            "--commit-rows",
            "5",
            "-q",
        ]
    )
    assert code == 1  # three files failed, as with the local engine
    got = pq.read_table(out)
    assert got.num_rows == 23 and got.column_names == list(PREDICTION_COLUMNS)
    assert got.equals(expected)  # same paths, order, values (float64, bit for bit) and errors
    csv_local = tmp_path / "local.csv"
    cli.main(["predict", *inputs, "--model", str(lite_model), "--csv", str(csv_local), "-q"])
    assert (tmp_path / "ray.csv").read_bytes() == csv_local.read_bytes()
    assert not parts_dir(out).exists()


@pytest.mark.slow
def test_ray_reads_file_uris(local_ray, lite_model, tmp_path):
    folder = make_images(tmp_path / "images", 6, bad=False)
    out = tmp_path / "uri.parquet"
    summary = score_archive(batch.expand_uris(folder.as_uri()), out, model_path=lite_model, progress=False)
    rows = read_rows([out])
    assert summary.n_failed == 0 and all(r["path"].startswith("file:///") for r in rows)
    expected = local_rows([str(folder)], lite_model, tmp_path)
    assert [r["p_pneumonia"] for r in rows] == expected.column("p_pneumonia").to_pylist()


@pytest.mark.slow
def test_ray_job_on_the_bundled_model_reports_its_drift(local_ray, tmp_path):
    # The bundled model has a scope guard: the job's drift summary reads its sidecar section.
    from pneumoscan.config import default_serving_model_path

    folder = make_images(tmp_path / "images", 6, bad=False)
    summary = score_archive(
        [str(p) for p in sorted(folder.iterdir())],
        tmp_path / "out.parquet",
        model_path=default_serving_model_path(),
        progress=False,
    )
    assert summary.drift is not None and summary.drift["verdict"] is not None, summary.drift


@pytest.mark.slow
@pytest.mark.required
def test_a_run_killed_midway_resumes_with_one_row_per_file(lite_model, tmp_path):
    folder = make_images(tmp_path / "images", 400, size=160)
    out = tmp_path / "archive.parquet"
    command = [
        sys.executable,
        "-m",
        "pneumoscan.interfaces.cli",
        "predict",
        "--engine",
        "ray",
        str(folder),
        "--model",
        str(lite_model),
        "--out",
        str(out),
        "--commit-rows",
        "4",
        "--ray-actors",
        "1",
        "-q",
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    parts = parts_dir(out)
    try:
        deadline = time.monotonic() + 180
        while not (parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3):
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no rows committed in time:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
        proc.wait(timeout=30)
        _kill_ray_workers_of(proc.pid)
    committed = read_rows(sorted(parts.glob("part-*.parquet")), columns=["path"])
    assert not out.exists() and 0 < len(committed) < 402, "the run was not killed midway"

    code = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert code.returncode == 1, code.stdout + code.stderr  # the broken and the empty file
    assert f"{len(committed)} already scored by an earlier run" in code.stdout
    table = pq.read_table(out)
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == 402
    assert table.equals(local_rows([str(folder)], lite_model, tmp_path))
    assert not parts.exists()


def _kill_ray_workers_of(driver_pid: int) -> None:
    """SIGKILL the Ray workers a killed driver left behind (they run in sessions of their own, and
    would linger for tens of seconds): the processes of the Ray session named after its pid."""
    marker = f"_{driver_pid}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.startswith(b"--session-name=session_") and a.endswith(marker) for a in args):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
