"""The shortcut audit: how much of the label can be read from what is not lung.

A chest X-ray folder collected in one hospital often ties its labels to the way films were taken:
in the pediatric training folder most normal films are wide-field (head, neck and arms in view, a
small "R"), most pneumonia films tightly collimated with burnt-in timestamps, "KV" labels, a large
"R" and electrodes. A model can then score the acquisition set-up instead of the lungs, and fail
on a new intake whose healthy children were filmed like the sick ones (issue 16).

The audit measures that on any labelled folder, with nothing but the pixels:

- **region models**: a logistic regression on a 32-px thumbnail restricted to one region -- the
  film's *border* (everything outside a central ellipse), the *lungs* (a central box) or the whole
  film -- cross-fitted over patient-level folds. Its out-of-fold ROC AUC says how much of the label
  that region alone predicts (0.5: nothing);
- **cues**: per-image measurements of the set-up found automatically -- burnt-in marks (saturated
  pixels in the border and the size of the largest such mark), collimation (dark border), the head
  in view (a bright top centre), global contrast and fine texture (sharpening, JPEG grain) -- each
  with its ROC AUC for the label and a patient-bootstrap 95 % interval; a cue *carries label
  information* when its interval excludes 0.5 and its AUC is at least 0.1 from it;
- **set-up score**: the border model's out-of-fold P(pneumonia) of every image, the measure of
  "looks like a pneumonia film" that :func:`setup_shift_split` uses to build a validation on which
  the set-up no longer predicts the label.

Entry points: :func:`audit` on decoded images (used by ``pneumoscan audit`` and the benchmarks),
:func:`format_audit` for the terminal, :func:`audit_figure` for the report's figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumoscan.config import DEFAULT_SEED
from pneumoscan.data.dataset import fold_patients, hold_out_patients

#: Side, in pixels, of the thumbnails the region models read.
THUMBNAIL_SIDE = 32
#: Width of the border ring the cues measure, as a share of the image side.
RING = 0.12
#: The film's whitest pixels (burnt-in text and markers), on the film stretched over its own
#: range, and dark ones (collimation).
BRIGHT, DARK = 245, 25
#: |AUC - 0.5| from which a cue whose CI excludes 0.5 is said to carry label information.
CUE_STRENGTH = 0.1
#: What each cue measures, in the words the report prints.
CUES = {
    "burnt_in_marks": "share of the film's whitest pixels in the border ring (text, markers)",
    "largest_mark": "area of the largest blob of the film's whitest pixels in the border ring (marker size)",
    "dark_border": "share of dark pixels in the border ring (collimation, black margins)",
    "head_in_view": "brightness of the top centre (head and neck in the field)",
    "white_level": "brightest pixel of the film as decoded, before the model's stretch (processing)",
    "contrast": "standard deviation of the lung box (exposure, processing; also opacities)",
    "fine_texture": "mean absolute Laplacian of the lung box (sharpening, grain; also opacities)",
}
#: Cues measured inside the lungs: an opacity lowers contrast and blurs the rib edges, so these mix
#: the acquisition with the disease itself, and their AUC is no proof of a shortcut.
LUNG_CUES = ("contrast", "fine_texture")


def region_masks(side: int = THUMBNAIL_SIDE) -> dict[str, np.ndarray]:
    """Boolean masks of shape ``(side, side)``: ``border`` (outside a central ellipse whose
    semi-axes are 40 % of the side), ``lungs`` (rows 20-80 %, columns 15-85 %) and ``whole``."""
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side
    ellipse = ((xx - 0.5) / 0.4) ** 2 + ((yy - 0.52) / 0.4) ** 2 <= 1.0
    lungs = (yy >= 0.2) & (yy <= 0.8) & (xx >= 0.15) & (xx <= 0.85)
    return {"border": ~ellipse, "lungs": lungs, "whole": np.ones((side, side), bool)}


def thumbnails(x: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """Area-averaged ``(n, side, side)`` float32 thumbnails of ``x`` (n, s, s[, 1]) uint8 images."""
    x = np.asarray(x)
    if x.ndim == 4:
        x = x[..., 0]
    n, s = x.shape[0], x.shape[1]
    if s % side == 0:
        f = s // side
        return x.reshape(n, side, f, side, f).mean(axis=(2, 4), dtype=np.float32)
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BOX), np.float32) for img in x]
    )


def setup_cues(x: np.ndarray) -> dict[str, np.ndarray]:
    """Each :data:`CUES` measurement of every image of ``x`` (n, s, s[, 1]) uint8: name -> (n,)."""
    from scipy import ndimage

    x = np.asarray(x)
    if x.ndim == 4:
        x = x[..., 0]
    n, s = x.shape[0], x.shape[1]
    r = max(1, int(round(RING * s)))
    ring = np.ones((s, s), bool)
    ring[r:-r, r:-r] = False
    lo, hi = int(0.2 * s), int(0.8 * s)
    left, right = int(0.15 * s), int(0.85 * s)
    out = {name: np.zeros(n) for name in CUES}
    for i, raw in enumerate(x):
        # Marks are the brightest things on a film, but many films here never reach white: find
        # them on the film stretched over its own range, as the model sees it.
        lo_v, hi_v = float(raw.min()), float(raw.max())
        img = ((raw - lo_v) * (255.0 / max(hi_v - lo_v, 1.0))).astype(np.float32)
        border = img[ring]
        bright = (img >= BRIGHT) & ring
        out["burnt_in_marks"][i] = bright.mean() / ring.mean()
        if bright.any():
            labels, count = ndimage.label(bright)
            out["largest_mark"][i] = np.bincount(labels.ravel())[1:].max() / (s * s)
        out["dark_border"][i] = (border <= DARK).mean()
        out["head_in_view"][i] = img[:r, s // 3 : 2 * s // 3].mean() / 255.0
        out["white_level"][i] = hi_v / 255.0
        box = img[lo:hi, left:right]
        out["contrast"][i] = box.std() / 255.0
        out["fine_texture"][i] = np.abs(ndimage.laplace(box)).mean() / 255.0
    return out


def region_scores(
    thumbs: np.ndarray, y: np.ndarray, groups: Sequence, mask: np.ndarray, *, folds: int = 5, seed: int
) -> np.ndarray:
    """Out-of-fold P(label) of a logistic regression on the ``mask`` pixels of ``thumbs``.

    Standardised pixels, L2 (C 0.05), class-balanced; folds are patient-level, so a patient's films
    are always scored by a model that never saw that patient.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = thumbs[:, mask].astype(np.float64)
    fold = fold_patients(list(groups), list(y), folds, seed=seed)
    out = np.zeros(len(y))
    for k in range(folds):
        fit, score = fold != k, fold == k
        model = make_pipeline(
            StandardScaler(), LogisticRegression(C=0.05, class_weight="balanced", max_iter=2000)
        )
        model.fit(features[fit], y[fit])
        out[score] = model.predict_proba(features[score])[:, 1]
    return out


def setup_scores(x: np.ndarray, y: np.ndarray, groups: Sequence, *, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The set-up score of every image: the border model's out-of-fold P(pneumonia), shape (n,)."""
    thumbs = thumbnails(x)
    return region_scores(
        thumbs, np.asarray(y), list(groups), region_masks(thumbs.shape[1])["border"], seed=seed
    )


def setup_balanced_weights(
    setup: np.ndarray, y: np.ndarray, *, bins: int = 5, cap: float = 10.0
) -> np.ndarray:
    """Per-image weights under which the set-up and the label are independent, classes balanced.

    Images are put in ``bins`` quantile bins of their set-up score; every (bin, class) cell then
    gets the same total weight, so a normal film that looks like a pneumonia film counts as much as
    all the typical ones of its bin. A weight is capped at ``cap`` times the median (a handful of
    atypical images must not dominate), and the weights average 1. Shape (n,).
    """
    setup, y = np.asarray(setup, np.float64), np.asarray(y).astype(np.int64)
    edges = np.quantile(setup, np.linspace(0, 1, bins + 1)[1:-1])
    cell = np.digitize(setup, edges) * 2 + y
    counts = np.bincount(cell, minlength=2 * bins).astype(np.float64)
    w = len(y) / (2 * bins * counts[cell])
    w = np.minimum(w, cap * np.median(w))
    return w / w.mean()


def _auc_with_ci(y: np.ndarray, score: np.ndarray, groups: Sequence, *, seed: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from pneumoscan.evaluation.metrics import bootstrap_ci

    auc = float(roc_auc_score(y, score))
    # bootstrap_ci takes probabilities in 0..1: rank-transform the score (AUC only needs the order).
    from scipy.stats import rankdata

    ranks = (rankdata(score) - 0.5) / len(score)
    ci = bootstrap_ci(y, ranks, list(groups), threshold=0.5, n_boot=300, seed=seed, metrics=("roc_auc",))
    return {"roc_auc": auc, "roc_auc_95ci": ci["roc_auc"]}


def audit(x: np.ndarray, y: np.ndarray, groups: Sequence, *, seed: int = DEFAULT_SEED) -> dict:
    """The shortcut audit of decoded images: region models, cues and the set-up score.

    Parameters
    ----------
    x : ndarray of shape (n, s, s, 1) or (n, s, s), uint8
    y : ndarray of shape (n,), int 0/1 (1 = pneumonia)
    groups : sequence of length n
        Patient id of each image (folds and bootstrap are by patient).
    seed : int

    Returns
    -------
    dict
        ``regions``: name -> ``{roc_auc, roc_auc_95ci, pixels}``; ``cues``: a list of
        ``{name, what, roc_auc, roc_auc_95ci, direction, median_normal, median_pneumonia,
        carries_label}`` sorted by strength; ``setup_score``: (n,) out-of-fold border-model
        probabilities; ``n``, ``patients``, ``by_class``.
    """
    y = np.asarray(y).astype(np.int64)
    groups = list(groups)
    if len(set(y.tolist())) < 2:
        raise ValueError("the shortcut audit needs images of both classes")
    if len(set(groups)) < 10:
        raise ValueError(f"the shortcut audit needs at least 10 patients, got {len(set(groups))}")
    thumbs = thumbnails(x)
    regions, setup_score = {}, None
    for name, mask in region_masks(thumbs.shape[1]).items():
        scores = region_scores(thumbs, y, groups, mask, seed=seed)
        regions[name] = {**_auc_with_ci(y, scores, groups, seed=seed), "pixels": int(mask.sum())}
        if name == "border":
            setup_score = scores
    cues = []
    for name, values in setup_cues(x).items():
        stats = _auc_with_ci(y, values, groups, seed=seed)
        low, high = stats["roc_auc_95ci"] or (0.5, 0.5)
        cues.append(
            {
                "name": name,
                "what": CUES[name],
                **stats,
                "direction": "higher in pneumonia" if stats["roc_auc"] >= 0.5 else "higher in normal",
                "median_normal": float(np.median(values[y == 0])),
                "median_pneumonia": float(np.median(values[y == 1])),
                "carries_label": bool(
                    (low > 0.5 or high < 0.5) and abs(stats["roc_auc"] - 0.5) >= CUE_STRENGTH
                ),
                "measured_in": "lungs (confounded with the disease)"
                if name in LUNG_CUES
                else "border"
                if name != "white_level"
                else "whole film",
            }
        )
    cues.sort(key=lambda c: -abs(c["roc_auc"] - 0.5))
    return {
        "n": int(len(y)),
        "patients": len(set(groups)),
        "by_class": np.bincount(y, minlength=2).tolist(),
        "regions": regions,
        "cues": cues,
        "setup_score": setup_score,
    }


def setup_shift_split(
    setup_score: np.ndarray,
    y: np.ndarray,
    groups: Sequence,
    *,
    normal_share: float = 0.3,
    pneumonia_share: float = 0.2,
    seed: int = DEFAULT_SEED,
) -> np.ndarray:
    """A validation on which the acquisition set-up does not give the label away.

    Held out: the normal patients whose films look most like pneumonia films by their border
    (highest mean ``setup_score``) up to ``normal_share`` of the normal images, and a random
    ``pneumonia_share`` of the pneumonia images, whole patients. A model that reads the set-up
    calls those normals pneumonia, as the released ensemble did on the new intake's healthy
    children. Returns the held-out mask, shape (n,).
    """
    y = np.asarray(y)
    groups = np.asarray(list(groups))
    normal = {p: float(setup_score[(groups == p)].mean()) for p in set(groups[y == 0].tolist())}
    order = sorted(normal, key=lambda p: (-normal[p], p))
    return hold_out_patients(
        order, y, groups, normal_share=normal_share, pneumonia_share=pneumonia_share, seed=seed
    )


def format_audit(result: dict) -> str:
    """The audit as terminal text: region models, then each cue, strongest first."""
    n0, n1 = result["by_class"]
    lines = [
        f"Shortcut audit of {result['n']} images ({n0} normal, {n1} pneumonia; "
        f"{result['patients']} patients)",
        "",
        "How much of the label each region predicts (patient-level out-of-fold ROC AUC; 0.5 = nothing):",
    ]
    for name, r in result["regions"].items():
        ci = r["roc_auc_95ci"]
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"  {name:<7} {r['roc_auc']:.3f}{ci_text}  ({r['pixels']} of the thumbnail's pixels)")
    lines += ["", "Acquisition cues (ROC AUC of the cue alone for the label, patient-bootstrap 95 % CI):"]
    for c in result["cues"]:
        ci = c["roc_auc_95ci"]
        flag = "CARRIES LABEL" if c["carries_label"] else "weak"
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(
            f"  {c['name']:<15} {c['roc_auc']:.3f} {ci_text:<16} {flag:<13} {c['direction']}: {c['what']}"
        )
    lines.append("  (border cues describe the set-up alone; lung cues also respond to opacities)")
    border = result["regions"]["border"]["roc_auc"]
    lines += [
        "",
        (
            f"The film's border alone predicts the label with ROC AUC {border:.3f}: a model can score the "
            "acquisition set-up instead of the lungs. Validate on films whose set-up does not give the "
            "label away (pneumoscan.evaluation.shortcuts.setup_shift_split)."
            if border >= 0.5 + CUE_STRENGTH
            else f"The film's border alone predicts the label with ROC AUC {border:.3f}: "
            "no strong set-up shortcut."
        ),
    ]
    return "\n".join(lines)


def audit_figure(result: dict):
    """Bar chart of the region models' and the cues' ROC AUC with their intervals."""
    from pneumoscan.plotting import new_figure

    items = [(f"region: {k}", v) for k, v in result["regions"].items()] + [
        (f"cue: {c['name']}", c) for c in result["cues"]
    ]
    fig = new_figure(7.5, 0.45 * len(items) + 1.2)
    ax = fig.add_subplot()
    for i, (_, item) in enumerate(items):
        auc, ci = item["roc_auc"], item["roc_auc_95ci"]
        colour = "tab:red" if abs(auc - 0.5) >= CUE_STRENGTH else "tab:grey"
        ax.barh(i, auc - 0.5, left=0.5, color=colour, alpha=0.8)
        if ci:
            ax.plot(ci, [i, i], color="black", lw=1.2)
        ax.text(max(auc, ci[1] if ci else auc) + 0.01, i, f"{auc:.3f}", va="center", fontsize=8)
    ax.axvline(0.5, color="black", lw=0.8)
    ax.set_yticks(range(len(items)), [label for label, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.08)
    ax.set_xlabel("ROC AUC for the label (0.5 = carries nothing; red: |AUC - 0.5| >= 0.1)")
    ax.set_title(f"Shortcut audit: {result['n']} images")
    return fig


def film_as_decoded(path, size: int) -> np.ndarray:
    """One film resized to ``size`` but not stretched (:func:`~pneumoscan.data.imaging.resize_gray`):
    what :func:`audit_folder` reads, so that the brightest pixel is the file's own."""
    from pneumoscan.data.imaging import read_image, resize_gray

    return resize_gray(read_image(path), size)[:, :, None]


def audit_folder(
    data_dir, out_dir, *, size: int = 224, seed: int = DEFAULT_SEED, progress: bool = True
) -> dict:
    """Audit a labelled folder (``NORMAL/`` and ``PNEUMONIA/``, or a root with ``train/``) and write
    ``audit.json``, ``setup_scores.csv`` (each image's set-up score) and ``audit.png`` to ``out_dir``.

    Unreadable files are skipped and listed in ``audit.json`` under ``skipped``; the rest is audited.
    """
    import csv
    import json
    from pathlib import Path

    from pneumoscan.data.dataset import decode_samples, discover_split
    from pneumoscan.plotting import save

    out_dir = Path(out_dir)
    films = decode_samples(
        discover_split(data_dir, prefer="train"), size, progress=progress, load=film_as_decoded
    )
    kept = films.samples
    result = audit(films.x, films.y, [s.patient_id for s in kept], seed=seed)
    result["skipped"] = [{"path": str(s.path), "error": e} for s, e in films.skipped]
    result["data_dir"] = str(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup = result.pop("setup_score")
    (out_dir / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    with open(out_dir / "setup_scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "setup_score"])
        for s, score in zip(kept, setup, strict=True):
            writer.writerow([str(s.path), s.label, s.patient_id, f"{score:.6f}"])
    save(audit_figure(result), out_dir / "audit.png")
    result["setup_score"] = setup
    return result
