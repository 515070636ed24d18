"""A simulated new site made from the training folder, for the site-check, adapt and drift tests.

The new intake that broke the released model (issue 16) differs from the training folder in how the
films are framed: its healthy children are tightly collimated, like the training folder's pneumonia
films. :func:`write_simulated_site` re-frames training films the same way (a tight central crop,
then a resampling to a hospital-size film), keeping their labels and patients, and writes them as a
labelled folder (``NORMAL/``, ``PNEUMONIA/``) under new names, so that they are new files.

Honest labelling: the model has seen these patients' films uncropped; only the framing is new. The
simulation measures what a change of acquisition does, not a new population.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pneumoscan.config import CLASS_NAMES
from pneumoscan.data.dataset import Sample
from pneumoscan.data.imaging import read_image

#: Share of each side kept around the film's centre.
SITE_CROP = 0.75
#: Longer side of the written films, in pixels (the model sees 224; 512 keeps writing and decoding quick).
SITE_SIDE = 512


def pick_patients(samples: Sequence[Sample], per_class: int, *, seed: int) -> list[Sample]:
    """Every image of ``per_class`` random patients of each class (whole patients, seeded)."""
    rng = np.random.default_rng(seed)
    chosen: list[Sample] = []
    for label in (0, 1):
        patients = sorted({s.patient_id for s in samples if s.label == label})
        keep = set(rng.choice(patients, size=min(per_class, len(patients)), replace=False).tolist())
        chosen += [s for s in samples if s.label == label and s.patient_id in keep]
    return chosen


def reframe(gray: np.ndarray, *, crop: float = SITE_CROP, side: int = SITE_SIDE) -> np.ndarray:
    """The central ``crop`` of a film, resampled so that its longer side is ``side`` pixels."""
    h, w = gray.shape
    ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    top, left = (h - ch) // 2, (w - cw) // 2
    image = Image.fromarray(gray[top : top + ch, left : left + cw])
    scale = side / max(ch, cw)
    return np.asarray(image.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.LANCZOS))


def site_file_name(sample: Sample, i: int) -> str:
    """A new file name from which the data layer reads the same patient and subtype."""
    if sample.patient_id.lower().startswith("person"):
        return f"{sample.patient_id}_{sample.subtype}_site{i:04d}.png"
    return f"{sample.patient_id}-{i:04d}-site.png"  # IM-0115-0003-site.png: patient IM-0115


def write_simulated_site(
    samples: Sequence[Sample], out_dir: str | Path, *, crop: float = SITE_CROP, side: int = SITE_SIDE
) -> Path:
    """Write each sample re-framed (:func:`reframe`) as ``out_dir/<CLASS>/<new name>.png``.

    The patient id stays readable from the name (``pneumoscan.data.dataset.patient_id`` groups by
    it). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    for name in CLASS_NAMES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(samples):
        film = reframe(read_image(sample.path).gray, crop=crop, side=side)
        path = out_dir / CLASS_NAMES[sample.label] / site_file_name(sample, i)
        Image.fromarray(film).save(path)
    return out_dir
