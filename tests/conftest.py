"""Shared fixtures: synthetic X-ray-like images, generated dataset trees, the real data's path."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real training data, ``../shared/data/chest_xray`` beside the repository checkout, unless
#: ``$PNEUMOSCAN_SHARED_DATA`` names another folder. Absent on a user's machine: tests skip.
SHARED_DATA = Path(
    os.environ.get("PNEUMOSCAN_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data" / "chest_xray"
)

# Keras reads KERAS_HOME once, at import: point it at ../shared/keras (the offline ImageNet weights)
# before any test imports Keras, unless the caller chose another cache.
if (REPO_ROOT.parent / "shared" / "keras" / "models").is_dir():
    os.environ.setdefault("KERAS_HOME", str(REPO_ROOT.parent / "shared" / "keras"))

#: File names in the style of the Kermany dataset, per class.
DEFAULT_NAMES: dict[str, dict[str, list[str]]] = {
    "train": {
        "NORMAL": [
            "IM-0115-0001.jpeg",
            "IM-0117-0001.jpeg",
            "IM-0119-0001.jpeg",
            "IM-0119-0002.jpeg",
            "NORMAL2-IM-0007-0001.jpeg",
            "NORMAL2-IM-0012-0001.jpeg",
        ],
        "PNEUMONIA": [
            "person1_bacteria_1.jpeg",
            "person1_bacteria_2.jpeg",
            "person1_virus_6.jpeg",
            "person12_bacteria_40.jpeg",
            "person13_virus_44.jpeg",
            "person14_bacteria_51.jpeg",
            "person15_virus_46.jpeg",
            "person16_bacteria_53.jpeg",
        ],
    },
    "test": {
        "NORMAL": ["IM-0001-0001.jpeg", "NORMAL2-IM-0030-0001.jpeg", "NORMAL2-IM-0031-0001.jpeg"],
        "PNEUMONIA": [
            "person100_bacteria_475.jpeg",
            "person101_virus_187.jpeg",
            "person102_bacteria_487.jpeg",
            "person102_bacteria_488.jpeg",
        ],
    },
}


def xray_like(height: int = 96, width: int = 96, *, seed: int = 0, pneumonia: bool = False) -> np.ndarray:
    """A grey image that looks vaguely like a chest X-ray.

    Dark background, a brighter body, two darker-than-body but bright lung-shaped ellipses, a
    bright spine, and noise. With ``pneumonia`` a hazy bright patch sits in one lung.

    Returns
    -------
    ndarray of shape (height, width), uint8
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    y, x = yy / height, xx / width
    img = np.full((height, width), 20.0)
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    img[body] = 90.0
    for cx in (0.32, 0.68):
        lung = ((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
        img[lung] = 150.0 + 30.0 * rng.random()
    img[(np.abs(x - 0.5) < 0.03) & body] = 220.0
    if pneumonia:
        patch = ((x - 0.3) / 0.08) ** 2 + ((y - 0.6) / 0.1) ** 2 < 1
        img[patch] = 200.0
    img += rng.normal(0.0, 8.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_image(path: Path, array: np.ndarray, *, mode: str | None = None, **save_kwargs) -> Path:
    """Save ``array`` with PIL (format from the suffix), creating folders. Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **save_kwargs)
    return path


TreeFactory = Callable[..., Path]


@pytest.fixture
def make_tree(tmp_path: Path) -> TreeFactory:
    """Factory writing a dataset tree ``<root>/<split>/<CLASS>/<file>`` of X-ray-like JPEGs.

    ``make_tree(names=None, *, root=None, size=(64, 72), rgb=False)``: ``names`` maps split ->
    class -> file names (default :data:`DEFAULT_NAMES`); every file gets a different image. Returns
    the root (``tmp_path / "data"`` unless given).
    """

    def factory(
        names: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        *,
        root: Path | None = None,
        size: tuple[int, int] = (64, 72),
        rgb: bool = False,
    ) -> Path:
        root = root or tmp_path / "data"
        seed = 0
        for split, classes in (names or DEFAULT_NAMES).items():
            for cls, files in classes.items():
                for name in files:
                    seed += 1
                    gray = xray_like(size[0], size[1], seed=seed, pneumonia=cls.upper() == "PNEUMONIA")
                    array = np.repeat(gray[..., None], 3, axis=2) if rgb else gray
                    write_image(root / split / cls / name, array, quality=90)
        return root

    return factory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ``chest_xray`` folder; skips the test when it is not on this machine."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (set PNEUMOSCAN_SHARED_DATA to its chest_xray folder)"
        )
    return SHARED_DATA
