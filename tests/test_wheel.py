"""The built wheel carries the released model: installed into a fresh venv and run from another
folder, ``pneumoscan predict IMAGE`` and ``pneumoscan app`` work with no flags."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from pneumoscan.testing.app_server import running_app
from pneumoscan.testing.synthetic import xray_image

REPO = Path(__file__).resolve().parents[1]
BUNDLED = {
    "pneumoscan-mobilenetv2.keras",
    "pneumoscan-mobilenetv2.meta.json",
    "pneumoscan-mobilenetv2-litert.tflite",
    "pneumoscan-mobilenetv2-litert.meta.json",
    "pneumoscan-mobilenetv2-litert-fast.tflite",
    "MODEL_CARD.md",
}


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; the heavy dependencies are borrowed from this venv's
    site-packages through a ``.pth`` line (no download). Returns the venv's ``bin/``."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp, REPO)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp.glob("pneumoscan-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert BUNDLED <= {Path(n).name for n in zf.namelist() if n.startswith("pneumoscan/bundled/")}

    venv = tmp / "venv"
    assert run(sys.executable, "-m", "venv", venv).returncode == 0
    site = Path(
        run(
            venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
        ).stdout.strip()
    )
    # A plain path line: this venv's editable install of pneumoscan (a finder hook) is not run from
    # it, so the only pneumoscan the new venv can import is the wheel's.
    (site / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = run(venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel)
    assert install.returncode == 0, install.stderr
    where = run(venv / "bin" / "python", "-c", "import pneumoscan; print(pneumoscan.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(venv), where
    return venv / "bin"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PNEUMOSCAN_", "PYTHON"))}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.mark.slow
def test_installed_wheel_predicts_with_the_bundled_model(installed, tmp_path):
    image = tmp_path / "chest.png"
    xray_image(256, seed=3).save(image)
    result = run(installed / "pneumoscan", "predict", image, "-q", cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "chest.png" in result.stdout and "1 predicted, 0 failed" in result.stdout


@pytest.mark.slow
def test_installed_wheel_starts_the_app_with_no_flags(installed, tmp_path):
    def command(port: int) -> list[str]:
        return [str(installed / "pneumoscan"), "app", "--port", str(port), "--address", "127.0.0.1"]

    with running_app(command, tmp_path / "app.log", timeout=120, env=clean_env(), cwd=tmp_path) as (url, _):
        assert url.startswith("http://127.0.0.1:")
    assert "model file not found" not in (tmp_path / "app.log").read_text()
