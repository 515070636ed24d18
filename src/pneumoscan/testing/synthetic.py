"""Synthetic chest-X-ray-like images and dataset trees, for tests and benchmarks (no real data).

The images are not radiographs; they have the layout the pipeline expects (a dark field, a
brighter body, two lung fields, a bright spine, sensor noise) so that every code path runs on
them, and a pneumonia image carries a bright opacity that a model can learn to see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

#: File names in the style of the Kermany dataset, per split and class: patients with several
#: images, both ``IM-`` and ``NORMAL2-IM-`` normals, bacterial and viral pneumonia.
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

    Parameters
    ----------
    height, width : int
        Size in pixels.
    seed : int
        Seeds the lung brightness and the noise: same seed, same image.
    pneumonia : bool
        Add the opacity.

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


def xray_image(size: int = 512, *, seed: int = 0, pneumonia: bool = False) -> Image.Image:
    """:func:`xray_like` as a square grey PIL image (``mode "L"``), ready to ``.save``."""
    return Image.fromarray(xray_like(size, size, seed=seed, pneumonia=pneumonia), "L")


def write_image(path: Path, array: np.ndarray, *, mode: str | None = None, **save_kwargs) -> Path:
    """Save ``array`` with PIL (format from the suffix), creating folders. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    image.save(path, **save_kwargs)
    return path


def write_tree(
    root: Path,
    names: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    *,
    size: tuple[int, int] = (64, 72),
    rgb: bool = False,
    quality: int = 90,
) -> Path:
    """Write a dataset tree ``<root>/<split>/<CLASS>/<file>`` of :func:`xray_like` JPEGs.

    Parameters
    ----------
    root : Path
        Created if needed.
    names : mapping, optional
        Split -> class -> file names (default :data:`DEFAULT_NAMES`). Every file gets a different
        image (seeds 1, 2, ... in order); ``PNEUMONIA`` files get the opacity.
    size : (height, width)
    rgb : bool
        Save 3-channel copies of the grey images.
    quality : int
        JPEG quality.

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    seed = 0
    for split, classes in (names or DEFAULT_NAMES).items():
        for cls, files in classes.items():
            for name in files:
                seed += 1
                gray = xray_like(size[0], size[1], seed=seed, pneumonia=cls.upper() == "PNEUMONIA")
                array = np.repeat(gray[..., None], 3, axis=2) if rgb else gray
                write_image(root / split / cls / name, array, quality=quality)
    return root
