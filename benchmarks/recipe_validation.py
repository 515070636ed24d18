"""Which recipe holds on a new intake? Recipes ranked on a validation where the set-up gives nothing away.

    python benchmarks/recipe_validation.py [--recipes frozen_lr,ensemble,single,reweighted,consistent,
                                                      path_consistent,adversarial]
                                           [--consistency 0.1] [--pair augmented|clean] [--relative]
                                           [--adversary 1.0]
                                           [--seeds 1337,7,42] [--split setup|earliest|random]
                                           [--input model|as-decoded|percentile-stretch|blur2]
                                           [--image-size 224] [--stem-cut block_13_project_BN]
                                           [--augment standard|recompress|resample|zoom-window]
                                           [--cache runs/proxy-cache] [--json OUT]

The protocol (issue 16). The shortcut audit (:mod:`pneumoscan.evaluation.shortcuts`) finds that
the border of a film alone predicts its label (ROC AUC about 0.97 out of fold): normal films of the
training folder are wide-field, pneumonia films tightly collimated with burnt-in marks. The new
intake's healthy children look like the second kind. So the validation holds out the 30 % of normal
images whose border looks most like a pneumonia film (the border model's out-of-fold score,
:func:`~pneumoscan.evaluation.shortcuts.setup_shift_split`) and a random 20 % of pneumonia
patients; every recipe trains on the rest. A recipe that scores the set-up calls the held-out
normals pneumonia.

``--split earliest`` holds out, instead of the most pneumonia-like normals, the lowest-numbered
normal patients of each naming series (:func:`~pneumoscan.data.dataset.earliest_intake_split`):
the training folder's normal numbers begin high (``IM-0115``, ``NORMAL2-IM-0383``), the lower
ones presumably the test split's, so, if numbers follow acquisition, these are the training
folder's films nearest in time to the new intake's healthy children. ``--split random`` holds out
a random 20 % of patients.

Before it chooses anything the protocol is checked against the independently measured test
figures of issue 16 (:data:`ground_truth.GROUND_TRUTH`): it prints each recipe's held-out ROC AUC
beside the test AUC and their Spearman rank correlation and pairwise agreement, over every pair and
over the pairs the test split itself resolves (:mod:`ground_truth`), for every view it scores
(clean, the crop, ``jpeg50`` and the other files of :data:`PATH_VIEWS`; until 2026-12-04 only the
first two). Seven views checked against two resolved pairs: one that agrees by chance is likely,
so a view that agrees is a hypothesis to test on other seeds and splits, not a chosen protocol.

Recipes, all on one cached frozen MobileNetV2 stem (ImageNet, to ``block_13``; clean and one
augmented view of every image, computed once):

- ``frozen_lr``: pooled ``out_relu`` features + logistic regression (C 0.1, class-balanced);
- ``single``: the previous single release's recipe -- head 5 epochs on pooled features, then
  ``block_14``..``Conv_1`` fine-tuned 3 epochs, each phase keeping its best epoch on an inner
  15 % patient split of the training part; one model per seed, and the mean of the seeds' models;
- ``ensemble``: the last release's recipe -- 3 members, each on 2 of 3 patient folds, fixed epochs,
  their mean;
- ``consistent``: ``single`` trained on pairs (a film's clean view, its augmented view), each
  phase's loss their mean cross-entropy plus ``--consistency`` times the squared difference of
  their logits: a penalty for answers that move when the film is changed a little (tried
  2026-12-03 as a cure for the spread over file paths); ``--consistency 0`` trains the same pairs
  without the penalty, the control;
- ``path_consistent``: ``consistent``, but the penalty falls between the augmented view and the same
  augmented view (the same draws) of the film resampled as ``--augment resample`` makes it, so it
  asks only that the answer not move with the path a film came by (the clean and augmented views
  keep their cross-entropy; tried 2026-12-03 evening, after ``consistent`` left the paths alone);
  ``--pair clean`` puts the penalty between the clean view and the film resampled, not augmented;
  ``--relative`` divides either penalty by the variance of the logits in the batch, so that
  shrinking every logit (which calibration stretches back) no longer lowers it;
- ``reweighted``: ``single`` with every image weighted so that, within the training part, the
  set-up (quintile of the border score) no longer predicts the label; and the mean of its seeds;
- ``adversarial``: ``single`` whose fine-tuning phase also trains an adversary to tell the set-up
  (the border score, a probability) from the pooled features and the label, through a gradient
  reversal of weight ``--adversary`` (:func:`with_adversary`): the features are pushed to carry
  no more of the set-up than the label itself does (issue 16's "an adversary that removes the
  set-up from the features"; tried 2026-12-04). The adversary is first fitted on the frozen
  pooled features, so that it pushes back from the first step of fine-tuning.

``--input as-decoded`` trains and scores every recipe on the films as decoded and resized, not
stretched or blurred: the input of every recipe in the test table, all measured before the input's
stretch and blur (2026-12-01). Checking the protocol against that table on today's input compares
recipes the test never saw; this option checks it on the ones it did (a cache of its own,
``<cache>-as-decoded``; the held-out images are the same).

``--input percentile-stretch`` stretches each resized film between the grey levels at its 0.5th
and 99.5th percentiles instead of its min and max (a thin bright mark sets those, and a resampling
dims it: between a 224-px file and its 1024-px copy the input moved by 3.7 grey levels on average
stretched from min..max, 0.5 between percentiles, on 40 training films in a one-off probe), and
``--input blur2`` blurs by 2 px instead of 1: two candidate cures for the spread over file paths
(below), each with a cache of its own.

``--image-size`` runs every recipe at another input side (the ImageNet weights of that size; a
cache of its own, ``<cache>-<size>``). The held-out images are the same at every size: the set-up
score that picks them is always computed on the 224-px decode.

Every held-out image is also scored as a JPEG of quality 50 (``jpeg50``: the film re-encoded,
decoded and made into the model's input as any file is), with each model's move from its clean
P(pneumonia) (mean, 95th percentile and largest ``|P(jpeg50) - P(clean)|``): the training files are
all JPEGs of one quality, and new compression artefacts move the released model by up to 0.1-0.2
(``benchmarks/input_paths.py``). ``--augment recompress`` tests a cure: the one augmented view of
every training image is made from the film re-encoded as a JPEG of a random quality in 30..95
(seeded) before the usual augmentation (a cache file of its own in the same cache).

Every held-out image is also scored as the files of :data:`PATH_VIEWS` (resampled to a 1024-px PNG
and a 2048-px JPEG, a colour JPEG of quality 95, a half-size copy; made by
:func:`pneumoscan.testing.variants.xray_variants`, decoded and preprocessed as any file is), and
each model's row gets ``paths``: per held-out image the spread of P(pneumonia) over the clean view
and the first three (issue 16's bound on one film is 0.05), its mean, 95th percentile, largest,
share above 0.05, the same over the images whose clean P is 0.2..0.8, and the half-size copy's
largest move. Since 2026-12-03 (afternoon) these spreads and the ``jpeg50`` moves are
measured after one Platt map per model (:func:`on_one_scale`), as the release's calibration would
read them; the raw figures stay in ``paths_uncalibrated``. Earlier JSON files hold raw ones only.
Since 2026-12-03 (evening) that map is the release's own fit (Platt's smoothed targets); the
afternoon's files used a plain logistic regression, which gives slightly different figures.

Every held-out image is also scored with test-time augmentation (``tta``: the mean raw P of the
clean view and the three 92 % crops of ``pneumoscan predict --tta``, added 2026-12-04; issue 16
lists it among the places to look), a view like the others, checked against the test table too.

``--augment resample`` tests a cure: the augmented view of every training image is
made from the film resampled to a random side of 112..2048 px (log-uniform, a random Lanczos,
bicubic or bilinear filter; half of them saved as a JPEG of quality 85..95 on the way) and
brought back to the model's side as any file is.

``--augment zoom-window`` tests set-up-breaking augmentation inside a fine-tuned network (issue 16
listed it; its test table has it for frozen features only, "frozen + LR, trained with extra
zoomed-in copies (a random 60-85 % window, no head and neck)": 0.955 against 0.954): the augmented
view of every training film, of both classes, is a random window of :data:`ZOOM_WINDOW` of its side
(:func:`zoom_window`: placed low enough to leave the head and neck out), cut from the film as
decoded and made into the model's input as any film is, then augmented as usual. A wide-field
normal film then looks tightly collimated, as the new intake's healthy children do, so collimation
no longer tells the classes apart in training.

``--feature-noise F`` trains every fine-tuned recipe's top with Gaussian noise of SD ``F`` times the
stem features' SD added to its input (:data:`FEATURE_NOISE`; the head phase on pooled features is
unchanged): a top that must give one answer for nearby features.

Cost on 2 CPU cores: about 4 min to build the cache once, 10 s per ``frozen_lr``, 1-3 min per
fine-tuned model (at 224 px). Needs ``../shared`` (training images, ImageNet weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ground_truth import agreement  # noqa: E402  (one definition of the check)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if (SHARED / "keras" / "models").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))

#: Where the cached frozen stem ends and the fine-tuned top begins (the release's members: after
#: ``block_13``); ``--stem-cut`` moves it (a cache of its own).
STEM_CUT = "block_13_project_BN"

#: The protocol's input side; ``--image-size`` changes it (set once, before anything is built).
IMAGE_SIZE = 224
#: The side the set-up score (which picks the held-out images) is always computed at.
SETUP_SIZE = 224
#: The input the recipes train and score on; ``--input as-decoded`` changes it.
INPUT = "model"
#: How the one augmented view of each training image is made; ``--augment recompress`` changes it.
AUGMENT = "standard"
#: The qualities a recompressed view draws from, and the quality of the held-out ``jpeg50`` view.
RECOMPRESS_QUALITY = (30, 95)
LOSSY_VIEW, LOSSY_QUALITY = "jpeg50", 50
#: The held-out images are also scored as these files of :func:`pneumoscan.testing.variants.xray_variants`
#: (resamplings to a larger original, a colour JPEG, a half-size copy): the paths that move the
#: released model most. The path spread is taken over the clean view and the first three.
PATH_VIEWS = ("up1024_png", "up2048_jpeg90", "rgb_jpeg95", "down_half_png")
SPREAD_VIEWS = ("clean", *PATH_VIEWS[:3])
#: ``--augment resample``: the side each training film is resampled to before it is brought back to
#: the model's side (log-uniform), and the chance that the resampled film is saved as a JPEG of
#: quality 85..95 on the way.
RESAMPLE_SIDES, RESAMPLE_JPEG = (112, 2048), 0.5
#: ``--augment zoom-window``: the window's side as a fraction of the film's (uniform), as in the zoomed
#: copies of issue 16's test table.
ZOOM_WINDOW = (0.60, 0.85)
#: ``path_consistent``'s penalty pairs (``--pair``): the augmented view and the augmented view of the
#: film resampled as ``--augment resample`` makes it, with the same augmentation draws; or the clean
#: view and the film resampled, not augmented (the cache file of each partner view).
PATH_PAIR_VIEWS = {"augmented": "aug1-resample", "clean": "clean-resample"}
#: Which of :data:`PATH_PAIR_VIEWS` ``path_consistent`` pairs; ``--pair`` changes it.
PATH_PAIR = "augmented"
#: ``--relative``: the consistency penalty divided by the variance of the logits in the batch. The
#: plain penalty is lowered by shrinking every logit, which calibration then stretches back (Platt
#: slopes of 6-8 with ``--pair clean`` at weight 1): steadier in raw P, no steadier once calibrated.
RELATIVE_PENALTY = False
#: ``--feature-noise``: while a fine-tuned recipe trains its top, Gaussian noise of this fraction of
#: the stem features' SD is added to them (0: none). Tried 2026-12-03 (late): quantizing the frozen
#: stem to int8 moved the release's answers as far as full int8 did (docs/speed.md), so the tops,
#: not the stem's precision, are what is rough; a top trained under feature noise might not be.
FEATURE_NOISE = 0.0
#: ``--adversary``: the weight of the gradient reversal in the ``adversarial`` recipe (how hard the
#: fine-tuned features are pushed to hide the set-up from its adversary).
ADVERSARY = 1.0

#: ``--input percentile-stretch``: the film's grey levels at these percentiles go to 0 and 255 (not
#: its min and max, which a thin bright mark sets and every resampling moves).
STRETCH_PERCENTILES = (0.5, 99.5)
#: ``--input blur2``: the model's input with a Gaussian blur of this radius instead of the package's.
STRONG_BLUR = 2.0
#: The blur of the 2026-12-01 release's input, on which the set-up score is always computed.
RELEASED_BLUR = 1.0


def model_input(image) -> np.ndarray:
    """A decoded film (a ``DecodedImage`` or a grey uint8 array) -> the protocol's input (``--input``):
    the model's (:func:`pneumoscan.data.imaging.preprocess`); the film as decoded and resized; or,
    resized, stretched between :data:`STRETCH_PERCENTILES` instead of min..max, or blurred by
    :data:`STRONG_BLUR`."""
    from pneumoscan.data.imaging import INPUT_BLUR, DecodedImage, preprocess, resize_gray
    from pneumoscan.data.imaging.pixels import stretch

    gray = image.gray if isinstance(image, DecodedImage) else np.asarray(image, dtype=np.uint8)
    if INPUT == "as-decoded":
        return resize_gray(gray, IMAGE_SIZE)[:, :, None]
    if INPUT == "percentile-stretch":
        return stretched_and_blurred(gray, IMAGE_SIZE, stretch_between_percentiles, INPUT_BLUR)
    if INPUT == "blur2":
        return stretched_and_blurred(gray, IMAGE_SIZE, stretch, STRONG_BLUR)
    return preprocess(gray, IMAGE_SIZE)


def stretched_and_blurred(gray: np.ndarray, size: int, stretch_fn, blur: float) -> np.ndarray:
    """The steps of :func:`pneumoscan.data.imaging.preprocess` with another stretch or blur: resized
    to ``size``, stretched by ``stretch_fn``, blurred by a Gaussian of ``blur`` px; (size, size, 1)."""
    from PIL import Image, ImageFilter

    from pneumoscan.data.imaging import resize_gray

    stretched = Image.fromarray(stretch_fn(resize_gray(gray, size)), "L")
    return np.asarray(stretched.filter(ImageFilter.GaussianBlur(blur)))[:, :, None]


def stretch_between_percentiles(gray: np.ndarray) -> np.ndarray:
    """8-bit grey levels mapped so that the levels at :data:`STRETCH_PERCENTILES` (order statistics)
    become 0 and 255, clipped beyond (min..max when fewer than two levels lie between)."""
    from pneumoscan.data.imaging.pixels import stretch

    cumulative = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    low = int(np.searchsorted(cumulative, STRETCH_PERCENTILES[0] / 100.0 * cumulative[-1], side="right"))
    high = int(np.searchsorted(cumulative, STRETCH_PERCENTILES[1] / 100.0 * cumulative[-1], side="left"))
    if high <= low:
        return stretch(gray)
    table = np.round((np.arange(256, dtype=np.float64) - low) * (255.0 / (high - low)))
    return np.clip(table, 0, 255).astype(np.uint8)[gray]


def load_input(path, size: int) -> np.ndarray:
    """The cache's loader: one file -> :func:`model_input` (``size`` is the protocol's side)."""
    from pneumoscan.data.imaging import read_image

    assert size == IMAGE_SIZE
    return model_input(read_image(path))


def as_jpeg(paths: list[str], qualities: np.ndarray) -> np.ndarray:
    """Each film re-encoded as a JPEG of its quality, then decoded and preprocessed as any file is."""
    from pneumoscan.data.imaging import decode_bytes, read_image
    from pneumoscan.testing.variants import jpeg_bytes

    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    for i, (path, quality) in enumerate(zip(paths, qualities, strict=True)):
        data = jpeg_bytes(read_image(path).gray, quality)
        out[i] = model_input(decode_bytes(data, name=Path(path).name))
    return out


def as_variant(paths: list[str], name: str) -> np.ndarray:
    """Each film as the file of the path ``name`` (:data:`PATH_VIEWS`), decoded and preprocessed."""
    from pneumoscan.data.imaging import decode_bytes, read_image
    from pneumoscan.testing.variants import xray_variants

    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    for i, path in enumerate(paths):
        data = xray_variants(read_image(path).gray, only=[name])[name]
        out[i] = model_input(decode_bytes(data, name=name))
    return out


def as_resampled(paths: list[str], seed: int) -> np.ndarray:
    """``--augment resample``: each film resampled to a random side in :data:`RESAMPLE_SIDES` with a
    random filter (and, with chance :data:`RESAMPLE_JPEG`, saved as a JPEG of quality 85..95), then
    decoded and preprocessed as any file is."""
    from PIL import Image

    from pneumoscan.data.imaging import decode_bytes, read_image
    from pneumoscan.testing.variants import jpeg_bytes

    rng = np.random.default_rng(seed)
    filters = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BILINEAR)
    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    low, high = np.log(RESAMPLE_SIDES)
    for i, path in enumerate(paths):
        side = int(round(np.exp(rng.uniform(low, high))))
        film = Image.fromarray(read_image(path).gray, "L").resize((side, side), filters[rng.integers(3)])
        pixels = np.asarray(film)
        if rng.random() < RESAMPLE_JPEG:  # decoded as any JPEG is (over 1024 px: at half scale)
            pixels = decode_bytes(jpeg_bytes(pixels, int(rng.integers(85, 96))), name=Path(path).name).gray
        out[i] = model_input(pixels)
    return out


def zoom_window(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random window ``(top, left, bottom, right)`` of a film: its sides a fraction drawn from
    :data:`ZOOM_WINDOW` of the film's, its top in the lower half of the room left above it (so the
    head and neck fall outside), centred horizontally up to a quarter of the room either way."""
    fraction = rng.uniform(*ZOOM_WINDOW)
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top = round((height - h) * rng.uniform(0.5, 1.0))
    left = round((width - w) * rng.uniform(0.25, 0.75))
    return top, left, top + h, left + w


def as_zoomed(paths: list[str], seed: int) -> np.ndarray:
    """``--augment zoom-window``: each film cut to a :func:`zoom_window` as decoded, then made into the
    model's input (resized, stretched, blurred) as any film is."""
    from pneumoscan.data.imaging import read_image

    rng = np.random.default_rng(seed)
    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    for i, path in enumerate(paths):
        gray = read_image(path).gray
        top, left, bottom, right = zoom_window(*gray.shape, rng)
        out[i] = model_input(np.ascontiguousarray(gray[top:bottom, left:right]))
    return out


def aug_view() -> str:
    """The cache's name for the augmented view of ``AUGMENT``."""
    return "aug1" if AUGMENT == "standard" else f"aug1-{AUGMENT}"


def partner_view() -> str:
    """The cache's name for ``path_consistent``'s penalty partner of :data:`PATH_PAIR`."""
    return PATH_PAIR_VIEWS[PATH_PAIR]


def run_stem(x: np.ndarray, augmenter=None) -> np.ndarray:
    """MobileNetV2 (ImageNet) features after ``block_13``: (n, s, s, 1) -> (n, s/32, s/32, 160) float16."""
    import keras
    import tensorflow as tf

    from pneumoscan.models.architectures import build_mobilenetv2

    model = build_mobilenetv2(IMAGE_SIZE)
    stem = keras.Model(model.input, model.get_layer(STEM_CUT).output)

    @tf.function(reduce_retracing=True)
    def f(b):
        b = tf.cast(b, tf.float32)
        return stem(augmenter(b, training=True) if augmenter is not None else b, training=False)

    return np.concatenate([f(x[i : i + 64]).numpy().astype(np.float16) for i in range(0, len(x), 64)])


def frozen_top():
    """The frozen ImageNet network from :data:`STEM_CUT` to the pooled ``out_relu`` features. Exits
    with a clear message unless the layers after the cut read nothing but its output (a cut inside a
    residual block leaves the block's skip input behind): :func:`main` builds it before the cache."""
    import keras

    from pneumoscan.models.architectures import build_mobilenetv2

    model = build_mobilenetv2(IMAGE_SIZE)
    try:
        return keras.Model(model.get_layer(STEM_CUT).output, model.get_layer("avg_pool").output)
    except ValueError as exc:  # no such layer, or the rest of the network is not fed by it alone
        raise SystemExit(
            f"--stem-cut {STEM_CUT}: the layers after it cannot run on its output alone ({exc}); cut at "
            "a block's last layer, its '_add' where it has one (block_5_add, block_12_add) and its "
            "'_project_BN' where not (block_10_project_BN, block_13_project_BN)"
        ) from exc


def pool(stem: np.ndarray) -> np.ndarray:
    """Stem features -> the frozen ImageNet top's pooled ``out_relu`` features (frozen + LR's input)."""
    return frozen_top().predict(stem.astype(np.float32), batch_size=256, verbose=0)


def cached_paths(cache: Path) -> list[str]:
    """Every image's path, in the cache's order."""
    return [s[0] for s in json.loads((cache / "samples.json").read_text())]


def build_cache(data_dir: Path, cache: Path, *, path_pairs: bool = False) -> None:
    """Decode every training image, run the frozen stem (clean, one augmented view; with
    ``path_pairs`` also the resampled partner view of :data:`PATH_PAIR`), pool, and score each
    image's acquisition set-up (the shortcut audit's border model)."""

    from pneumoscan.config import AugmentConfig
    from pneumoscan.data.augment import build_augmenter
    from pneumoscan.data.dataset import decode_samples, discover_split
    from pneumoscan.evaluation.shortcuts import setup_scores

    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "x.npy").exists():
        data = decode_samples(
            discover_split(data_dir, prefer="train"), IMAGE_SIZE, progress=False, load=load_input
        )
        np.save(cache / "x.npy", data.x)
        np.save(cache / "y.npy", data.y)
        samples = [[str(s.path), s.patient_id, s.subtype] for s in data.samples]
        (cache / "samples.json").write_text(json.dumps(samples))
    x = np.load(cache / "x.npy")
    if not (cache / "stem_clean.npy").exists():
        np.save(cache / "stem_clean.npy", run_stem(x))
    views = [aug_view(), *([partner_view()] if path_pairs else [])]
    for view in views:
        if not (cache / f"stem_{view}.npy").exists():
            source = x  # the set-up score below must see the model input, never the re-encoded copies
            if view.endswith("recompress"):
                paths = cached_paths(cache)
                qualities = np.random.default_rng(1438).integers(
                    *RECOMPRESS_QUALITY, endpoint=True, size=len(paths)
                )
                source = as_jpeg(paths, qualities)
            elif view.endswith("resample"):
                source = as_resampled(cached_paths(cache), seed=1438)
            elif view.endswith("zoom-window"):
                source = as_zoomed(cached_paths(cache), seed=1438)
            # One augmenter seed for every view: the same draws (rotation, shift, zoom, noise ...)
            # in the same order, so two views of a film differ only in how it was made.
            augmenter = None if view.startswith("clean") else build_augmenter(AugmentConfig(), seed=1438)
            np.save(cache / f"stem_{view}.npy", run_stem(source, augmenter))
    for view in ("clean", *views):
        if not (cache / f"gap_{view}.npy").exists():
            np.save(cache / f"gap_{view}.npy", pool(np.load(cache / f"stem_{view}.npy")))
    if not (cache / "setup_score.npy").exists():
        y = np.load(cache / "y.npy")
        groups = [s[1] for s in json.loads((cache / "samples.json").read_text())]
        # The same held-out images at every input, size and preprocessing: the set-up score is always
        # computed on the 224-px input of the release of 2026-12-01 (:func:`setup_input`).
        x = decode_samples(
            discover_split(data_dir, prefer="train"), SETUP_SIZE, progress=False, load=setup_input
        ).x
        np.save(cache / "setup_score.npy", setup_scores(x, y, groups))


def setup_input(path, size: int) -> np.ndarray:
    """The input the set-up score, which picks the held-out images, is computed on: the model's
    input of the release of 2026-12-01 (resized, stretched from its min..max, blurred by
    :data:`RELEASED_BLUR`), whatever the package's preprocessing is now, so that every run of the
    protocol holds out the same images."""
    from pneumoscan.data.imaging import read_image
    from pneumoscan.data.imaging.pixels import stretch

    return stretched_and_blurred(read_image(path).gray, size, stretch, RELEASED_BLUR)


#: The acquisition shift every held-out image is also scored under: the new intake's healthy
#: children are tightly collimated like the training folder's pneumonia films (issue 16), and a
#: tight crop turns a wide-field normal film into one.
STRESS_SHIFT = "tight crop (85 %)"


def held_out_views(cache: Path, c: Cache, held: np.ndarray) -> dict[str, dict]:
    """Stem and pooled features of the held-out images, clean, under :data:`STRESS_SHIFT`, as JPEGs
    of :data:`LOSSY_QUALITY` and as the files of :data:`PATH_VIEWS`; and, under ``"tta"``, the
    ``parts`` that test-time augmentation averages with the clean view (the three crops of
    :func:`pneumoscan.inference.predictor.tta_views`, as ``pneumoscan predict --tta`` makes them).
    Computed once per split and kept in the cache."""

    from pneumoscan.evaluation.robustness import SHIFTS

    key = f"{int(held.sum())}-{int(np.flatnonzero(held)[:50].sum())}"
    views = {"clean": {"stem": c.stem["clean"][held], "gap": c.gap["clean"][held]}}
    every_path = cached_paths(cache)
    held_paths = [every_path[i] for i in np.flatnonzero(held)]
    for view in ("crop", LOSSY_VIEW, *PATH_VIEWS):
        path = cache / f"held_{key}_{view}.npz"
        if not path.exists():
            if view == "crop":
                x = SHIFTS[STRESS_SHIFT](np.ascontiguousarray(np.load(cache / "x.npy", mmap_mode="r")[held]))
            elif view == LOSSY_VIEW:
                x = as_jpeg(held_paths, np.full(len(held_paths), LOSSY_QUALITY))
            else:
                x = as_variant(held_paths, view)
            stem = run_stem(x)
            np.savez(path, stem=stem, gap=pool(stem))
        saved = np.load(path)
        views[view] = {"stem": saved["stem"], "gap": saved["gap"]}
    path = cache / f"held_{key}_tta.npz"
    if not path.exists():
        from pneumoscan.inference.predictor import tta_views

        crops = tta_views(np.ascontiguousarray(np.load(cache / "x.npy", mmap_mode="r")[held]))[1:]
        stems = [run_stem(x) for x in crops]
        np.savez(path, stem=np.stack(stems), gap=np.stack([pool(s) for s in stems]))
    saved = np.load(path)
    views["tta"] = {
        "parts": [{"stem": s, "gap": g} for s, g in zip(saved["stem"], saved["gap"], strict=True)]
    }
    return views


class Cache:
    def __init__(self, cache: Path, *, path_pairs: bool = False):
        self.y = np.load(cache / "y.npy")
        self.patients = np.array([s[1] for s in json.loads((cache / "samples.json").read_text())])
        # "aug1" is the training view of --augment, whichever it is.
        self.stem = {
            v: np.load(cache / f"stem_{f}.npy") for v, f in (("clean", "clean"), ("aug1", aug_view()))
        }
        self.gap = {v: np.load(cache / f"gap_{f}.npy") for v, f in (("clean", "clean"), ("aug1", aug_view()))}
        if path_pairs:  # path_consistent's penalty partner; read only when a run trains it
            self.stem["path"] = np.load(cache / f"stem_{partner_view()}.npy")
            self.gap["path"] = np.load(cache / f"gap_{partner_view()}.npy")
        self.setup = np.load(cache / "setup_score.npy")


def fit_frozen_lr(c: Cache, train: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([c.gap["clean"][train], c.gap["aug1"][train]])
    model = LogisticRegression(C=0.1, class_weight="balanced", max_iter=3000, random_state=seed)
    model.fit(x, np.tile(c.y[train], 2))
    return lambda view: model.predict_proba(view["gap"])[:, 1]


def fit_finetuned(
    c: Cache,
    train: np.ndarray,
    seed: int,
    *,
    inner_val: bool,
    weights=None,
    consistency: float | None = None,
    path_pairs: bool = False,
    adversary: bool = False,
):
    """The single recipe's two phases on the cache; ``inner_val`` keeps each phase's best epoch on
    15 % of the training part's patients (else fixed epochs on all of it). With a ``consistency`` (0 too),
    each phase trains on (clean, augmented) pairs of views instead (:func:`paired`); with
    ``path_pairs`` too, the penalty falls between a view and its resampled twin
    (:data:`PATH_PAIR`), not between the clean and augmented views. With ``adversary``, the
    fine-tuning phase trains against a set-up adversary (:func:`with_adversary`)."""
    import keras

    from pneumoscan.data.dataset import class_weights, fold_patients
    from pneumoscan.models.architectures import build_mobilenetv2, set_finetune_trainable

    keras.utils.set_random_seed(seed)
    idx = np.flatnonzero(train)
    val = np.zeros(len(idx), bool)
    if inner_val:
        val = fold_patients(list(c.patients[idx]), list(c.y[idx]), 7, seed=seed) == 0
    fit_idx, val_idx = idx[~val], idx[val]
    y_fit = np.tile(c.y[fit_idx], 2)
    if weights is None:
        cw = class_weights(y_fit)
        sw = np.array([cw[int(v)] for v in y_fit])
    else:
        sw = np.tile(weights[fit_idx], 2)
    full = build_mobilenetv2(IMAGE_SIZE)
    pooled, cut = full.get_layer("avg_pool").output, full.get_layer(STEM_CUT).output

    def phase(model, x, xv, epochs, lr, x_path=None, adversarial=None):
        """One phase; the best epoch by ROC AUC on the inner validation split is kept. Plainly, the
        model fits ``x`` (clean views, then augmented ones) and Keras's AUC metric scores the
        epoch; with a ``consistency``, a pair model (:func:`paired`) fits the two halves of ``x``
        side by side (and ``x_path``, the penalty's partner of the second half, with
        ``path_pairs``) and ``model`` itself is scored (the pair model has no single validation);
        with an ``adversarial`` model (:func:`with_adversary`), that model fits the label and the
        set-up score side by side and ``model`` itself is scored."""
        if adversarial is not None:
            from sklearn.metrics import roc_auc_score

            fitted, inputs, targets, weights = (
                adversarial,
                [x, y_fit[:, None].astype(np.float32)],
                [y_fit, setup_fit],
                [sw, sw],
            )
            fitted.compile(
                keras.optimizers.Adam(lr),
                [keras.losses.BinaryCrossentropy(label_smoothing=0.05), keras.losses.BinaryCrossentropy()],
            )
            validation = None

            def epoch_auc(logs):
                return roc_auc_score(c.y[val_idx], model.predict(xv, batch_size=256, verbose=0).ravel())
        elif consistency is None:
            fitted, inputs, targets, weights = model, x, y_fit, sw
            fitted.compile(
                keras.optimizers.Adam(lr),
                keras.losses.BinaryCrossentropy(label_smoothing=0.05),
                metrics=[keras.metrics.AUC(name="auc")],
            )
            validation = (xv, c.y[val_idx]) if inner_val else None

            def epoch_auc(logs):
                return logs["val_auc"]
        else:
            from sklearn.metrics import roc_auc_score

            n = len(fit_idx)
            fitted, inputs, targets, weights = (
                paired(model, consistency, path_pairs=path_pairs),
                [x[:n], x[n:], *([x_path] if path_pairs else [])],
                [y_fit[:n]] * 2,
                [sw[:n]] * 2,
            )
            fitted.compile(
                keras.optimizers.Adam(lr),
                [keras.losses.BinaryCrossentropy(label_smoothing=0.05)] * 2,
                loss_weights=[0.5, 0.5],
            )
            validation = None

            def epoch_auc(logs):
                return roc_auc_score(c.y[val_idx], model.predict(xv, batch_size=256, verbose=0).ravel())

        best = {"auc": -1.0, "w": None}

        class Keep(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if inner_val:
                    auc = epoch_auc(logs)
                    if auc > best["auc"]:
                        best["auc"], best["w"] = auc, model.get_weights()

        fitted.fit(
            inputs,
            targets,
            sample_weight=weights,
            batch_size=32,
            epochs=epochs,
            validation_data=validation,
            callbacks=[Keep()],
            verbose=0,
        )
        if best["w"] is not None:
            model.set_weights(best["w"])

    head = keras.Model(pooled, full.output)
    gap = np.concatenate([c.gap["clean"][fit_idx], c.gap["aug1"][fit_idx]])
    gap_path = c.gap["path"][fit_idx] if path_pairs else None
    phase(head, gap, c.gap["clean"][val_idx], 5, 1e-3, gap_path)
    set_finetune_trainable(full, STEM_CUT)
    top = keras.Model(cut, full.output)
    stem = np.concatenate([c.stem["clean"][fit_idx], c.stem["aug1"][fit_idx]]).astype(np.float32)
    stem_path = c.stem["path"][fit_idx].astype(np.float32) if path_pairs else None
    trained = top
    if FEATURE_NOISE:
        # Noise on the stem's output while the top trains (Keras's GaussianNoise is off at
        # inference), SD a fraction of the features' own: a top that must answer alike for
        # features a little apart, as an int8 stem or another path to the same film leaves them.
        # (GaussianNoise takes an SD of at most 1: the noise is added in units of the features' SD.)
        sd = float(stem.std())
        features = keras.Input(top.input.shape[1:])
        noisy = keras.layers.GaussianNoise(FEATURE_NOISE, seed=seed)(keras.layers.Rescaling(1 / sd)(features))
        trained = keras.Model(features, top(keras.layers.Rescaling(sd)(noisy)))
    adversarial, setup_fit = None, np.tile(c.setup[fit_idx], 2)  # the adversary's target, as y_fit
    if adversary:
        adversarial = with_adversary(keras.Model(cut, [full.output, pooled]), gap, y_fit, setup_fit)
    phase(trained, stem, c.stem["clean"][val_idx].astype(np.float32), 3, 1e-4, stem_path, adversarial)
    return lambda view: top.predict(view["stem"].astype(np.float32), batch_size=256, verbose=0).reshape(-1)


def with_adversary(top, gap: np.ndarray, y: np.ndarray, setup: np.ndarray):
    """``top`` (stem features -> P(pneumonia), pooled features) with a set-up adversary: a model of
    (stem features, label) -> (P(pneumonia), the adversary's guess of the set-up score).

    The adversary reads the pooled features through a gradient reversal of weight
    :data:`ADVERSARY` (forward the identity, backward the gradient times ``-ADVERSARY``), together
    with the label, so what it can learn beyond the label is the set-up the features still carry,
    and what the features learn from it is to carry less. It is fitted first on the frozen pooled
    features ``gap`` (5 epochs), so that it pushes back from the first step of fine-tuning.
    Its target, the set-up score, is out of fold over the whole folder: the border models that
    scored a training film also saw held-out films. That steers the adversary only, never a score.
    """
    import keras
    from keras import ops

    class GradientReversal(keras.layers.Layer):
        def call(self, x):
            # (1 + w) x - w x is x going forward; backward only the -w x term has a gradient.
            return ops.stop_gradient((1.0 + ADVERSARY) * x) - ADVERSARY * x

    pooled, label = keras.Input(gap.shape[1:]), keras.Input((1,))
    hidden = keras.layers.Dense(64, activation="relu")(keras.layers.Concatenate()([pooled, label]))
    adversary = keras.Model([pooled, label], keras.layers.Dense(1, activation="sigmoid")(hidden))
    adversary.compile(keras.optimizers.Adam(1e-3), keras.losses.BinaryCrossentropy())
    labels = y[:, None].astype(np.float32)
    adversary.fit([gap, labels], setup, batch_size=64, epochs=5, verbose=0)
    features, label_in = keras.Input(top.inputs[0].shape[1:]), keras.Input((1,))
    p, pooled_out = top(features)
    guess = adversary([GradientReversal()(pooled_out), label_in])
    return keras.Model([features, label_in], [p, guess])


def paired(model, weight: float, *, path_pairs: bool = False):
    """A model of two inputs (a film's clean and augmented views) that shares ``model``'s layers:
    its outputs are the two views' P(pneumonia), and it adds ``weight`` times the squared
    difference of their logits to the loss (with :data:`RELATIVE_PENALTY`, divided by the variance
    of the first view's logits in the batch). With ``path_pairs`` a third input, the film resampled,
    is the penalty's partner of the augmented view (``--pair augmented``: resampled and augmented
    with the same draws) or of the clean one (``--pair clean``), and has no loss of its own."""
    import keras
    from keras import ops

    shape = model.inputs[0].shape[1:]
    views = [keras.Input(shape) for _ in range(3 if path_pairs else 2)]
    p_clean, p_augmented, *p_path = [model(v) for v in views]

    def logit(p):
        p = ops.clip(p, 1e-6, 1 - 1e-6)
        return ops.log(p) - ops.log(1 - p)

    class Consistency(keras.layers.Layer):
        def call(self, a, b):
            za, zb = logit(a), logit(b)
            penalty = ops.mean(ops.square(za - zb))
            if RELATIVE_PENALTY:  # scale-free: shrinking every logit no longer lowers it
                penalty = penalty / (ops.var(za) + 1e-3)
            self.add_loss(weight * penalty)
            return a

    if path_pairs and PATH_PAIR == "clean":
        return keras.Model(views, [Consistency()(p_clean, p_path[0]), p_augmented])
    if path_pairs:
        return keras.Model(views, [p_clean, Consistency()(p_augmented, p_path[0])])
    return keras.Model(views, [Consistency()(p_clean, p_augmented), p_augmented])


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    positives = np.sort(p[y == 1])
    t = positives[int(np.floor(0.02 * len(positives)))]
    return {
        "auc": round(float(roc_auc_score(y, p)), 4),
        "spec_at_recall_0.98": round(float((p[y == 0] < t).mean()), 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; sets the protocol's input side and kind, and names the cache after them."""
    global IMAGE_SIZE, INPUT, AUGMENT, PATH_PAIR, RELATIVE_PENALTY, STEM_CUT, FEATURE_NOISE, ADVERSARY
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "chest_xray" / "train")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "proxy-cache")
    parser.add_argument("--recipes", default="frozen_lr,ensemble,single,reweighted")
    parser.add_argument("--seeds", default="1337,7,42")
    parser.add_argument(
        "--consistency", type=float, default=0.1, help="the consistent recipe's penalty weight"
    )
    parser.add_argument("--split", choices=("setup", "earliest", "random"), default="setup")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument(
        "--group", type=int, default=0, help="also score ensembles of this many consecutive seeds' models"
    )
    parser.add_argument("--image-size", type=int, default=224, help="input side in px (default 224)")
    parser.add_argument(
        "--input",
        choices=("model", "as-decoded", "percentile-stretch", "blur2"),
        default="model",
        help="the model's input (stretched, blurred; default), the film as decoded (before 2026-12-01), "
        f"or the model's input stretched between percentiles {STRETCH_PERCENTILES} / blurred by "
        f"{STRONG_BLUR} px instead",
    )
    parser.add_argument(
        "--augment",
        choices=("standard", "recompress", "resample", "zoom-window"),
        default="standard",
        help="the augmented training view: the usual augmentation, or it after a random JPEG re-encoding "
        "(recompress), a random resampling round trip (resample) or a random 60-85 %% window without the "
        "head and neck (zoom-window)",
    )
    parser.add_argument(
        "--pair",
        choices=tuple(PATH_PAIR_VIEWS),
        default="augmented",
        help="path_consistent's penalty pairs: the augmented view and its resampled twin (same draws), "
        "or the clean view and the film resampled",
    )
    parser.add_argument(
        "--relative",
        action="store_true",
        help="divide the consistency penalty by the variance of the logits in the batch (scale-free)",
    )
    parser.add_argument(
        "--stem-cut",
        default=STEM_CUT,
        help=f"the last frozen layer; every layer after it is fine-tuned (default {STEM_CUT}; "
        "block_10_project_BN fine-tunes three blocks more)",
    )
    parser.add_argument(
        "--adversary",
        type=float,
        default=ADVERSARY,
        help=f"the adversarial recipe's gradient reversal weight (default {ADVERSARY})",
    )
    parser.add_argument(
        "--feature-noise",
        type=float,
        default=0.0,
        help="Gaussian noise on the stem's output while the fine-tuned recipes train their top, SD this "
        "fraction of the features' SD (default 0: none)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.feature_noise <= 1:
        parser.error("--feature-noise must be in 0..1")
    IMAGE_SIZE, INPUT, AUGMENT, PATH_PAIR = args.image_size, args.input, args.augment, args.pair
    FEATURE_NOISE = args.feature_noise
    ADVERSARY = args.adversary
    RELATIVE_PENALTY = args.relative
    if args.stem_cut != STEM_CUT:
        STEM_CUT = args.stem_cut
        args.cache = args.cache.with_name(f"{args.cache.name}-{STEM_CUT}")
    if IMAGE_SIZE != 224:
        args.cache = args.cache.with_name(f"{args.cache.name}-{IMAGE_SIZE}")
    if INPUT != "model":
        args.cache = args.cache.with_name(f"{args.cache.name}-{INPUT}")
    return args


def held_out_mask(split: str, c: Cache) -> np.ndarray:
    """The images the protocol holds out (``--split``)."""
    from pneumoscan.data.dataset import earliest_intake_split, fold_patients
    from pneumoscan.evaluation.shortcuts import setup_shift_split

    if split == "setup":
        return setup_shift_split(c.setup, c.y, c.patients, seed=0)
    if split == "earliest":
        return earliest_intake_split(c.y, c.patients, seed=0)
    return fold_patients(list(c.patients), list(c.y), 5, seed=0) == 0


class Protocol:
    """One run of the protocol: trains each recipe on ``train``, scores the held-out ``views``, and
    keeps every row (``out``, the JSON file) and the figures checked against the test table
    (``measured``)."""

    def __init__(self, c: Cache, held: np.ndarray, views: dict, out: dict, *, consistency: float):
        self.c, self.train, self.y, self.views, self.out = c, ~held, c.y[held], views, out
        self.consistency = consistency
        # Every view is checked against the test table, not only the two the protocol was built
        # around: a view that ranks recipes as the new intake does is the finding this is for.
        self.measured: dict[str, dict[str, float]] = {view: {} for view in views}

    def predict_views(self, predict) -> dict[str, np.ndarray]:
        """Every view's P(pneumonia); ``"tta"`` is the mean of the clean view's and its crops' raw
        P, as the Predictor's test-time augmentation averages them before calibrating."""
        preds = {name: predict(view) for name, view in self.views.items() if name != "tta"}
        if "tta" in self.views:
            parts = [preds["clean"], *(predict(part) for part in self.views["tta"]["parts"])]
            preds["tta"] = np.mean(parts, axis=0)
        return preds

    def report(self, name: str, preds: dict[str, np.ndarray], secs: float) -> dict:
        row = {view: scores(self.y, p) for view, p in preds.items()}
        raw_paths = path_spread(preds)
        preds, slope = on_one_scale(self.y, preds)
        move = np.abs(preds[LOSSY_VIEW] - preds["clean"])
        row[LOSSY_VIEW] |= {
            "mean_move": round(float(move.mean()), 4),
            "p95_move": round(float(np.percentile(move, 95)), 4),
            "max_move": round(float(move.max()), 4),
        }
        row["paths"] = path_spread(preds) | {"platt_slope": round(slope, 3)}
        row["paths_uncalibrated"] = raw_paths
        print(json.dumps({"recipe": name, "secs": round(secs), **row}), flush=True)
        self.out[name] = row
        return row

    def record(self, key: str, row: dict) -> None:
        for view in self.measured:
            self.measured[view][key] = row[view]["auc"]

    def mean_of(self, preds: list[dict]) -> dict[str, np.ndarray]:
        return {view: np.mean([p[view] for p in preds], 0) for view in self.views}

    def frozen_lr(self) -> None:
        t = time.perf_counter()
        preds = self.predict_views(fit_frozen_lr(self.c, self.train, 0))
        self.record("frozen_lr", self.report("frozen_lr", preds, time.perf_counter() - t))

    def ensemble(self, seed: int) -> None:
        """The cross-fitted ensemble: 3 members, each on 2 of 3 patient folds, fixed epochs."""
        from pneumoscan.data.dataset import fold_patients

        c, t = self.c, time.perf_counter()
        idx = np.flatnonzero(self.train)
        fold = fold_patients(list(c.patients[idx]), list(c.y[idx]), 3, seed=seed)
        members = []
        for k in range(3):
            part = np.zeros(len(c.y), bool)
            part[idx[fold != k]] = True
            members.append(self.predict_views(fit_finetuned(c, part, seed + 1000 * (k + 1), inner_val=False)))
            self.report(f"ensemble member {k}", members[-1], time.perf_counter() - t)
        self.record("ensemble", self.report("ensemble", self.mean_of(members), time.perf_counter() - t))

    def seeded(self, recipe: str, seeds: list[int], group: int) -> None:
        """One model of ``recipe`` (``single``, ``reweighted``, ``consistent``, ``adversarial``) per
        seed, their spread and mean, and the means of ``group`` consecutive seeds' models."""
        from pneumoscan.evaluation.shortcuts import setup_balanced_weights

        c, weights = self.c, None
        consistency = self.consistency if recipe in ("consistent", "path_consistent") else None
        if recipe == "reweighted":
            weights = np.zeros(len(c.y))
            weights[self.train] = setup_balanced_weights(c.setup[self.train], c.y[self.train])
        preds, path_rows = [], []
        for seed in seeds:
            t = time.perf_counter()
            preds.append(
                self.predict_views(
                    fit_finetuned(
                        c,
                        self.train,
                        seed,
                        inner_val=True,
                        weights=weights,
                        consistency=consistency,
                        path_pairs=recipe == "path_consistent",
                        adversary=recipe == "adversarial",
                    )
                )
            )
            row = self.report(f"{recipe} seed {seed}", preds[-1], time.perf_counter() - t)
            path_rows.append(row["paths"])
        summary = {view: spread([scores(self.y, p[view])["auc"] for p in preds]) for view in self.views}
        print(
            f"  {recipe}: single models' ROC AUC over {len(seeds)} seeds: {json.dumps(summary)}", flush=True
        )
        self.out[f"{recipe} seeds"] = summary
        paths = {
            k: spread([r[k] for r in path_rows], extremes=False)
            for k in ("mean", "p95", "over_0.05", "unsure_mean")
        }
        print(f"  {recipe}: path spread over {len(seeds)} seeds: {json.dumps(paths)}", flush=True)
        self.out[f"{recipe} seeds paths"] = paths
        mean = self.report(f"{recipe}, mean of the seeds' models", self.mean_of(preds), 0)
        if group and len(preds) > group:
            # Several ensembles of ``group`` consecutive seeds: the spread of the ensemble recipe itself.
            rows = [
                self.report(
                    f"{recipe}, ensemble of seeds {seeds[i : i + group]}",
                    self.mean_of(preds[i : i + group]),
                    0,
                )
                for i in range(0, len(preds) - group + 1, group)
            ]
            groups = {view: spread([r[view]["auc"] for r in rows], extremes=False) for view in self.views}
            print(
                f"  {recipe}: ensembles of {group} over {len(rows)} seed groups: {json.dumps(groups)}",
                flush=True,
            )
            self.out[f"{recipe} ensembles of {group}"] = groups
        if recipe == "single":
            for view in self.measured:
                self.measured[view]["single (mean over seeds)"] = summary[view]["mean"]
            self.record("single, mean of the seeds' models", mean)


def on_one_scale(y: np.ndarray, preds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """Every view's P(pneumonia) through one Platt map fitted to the clean view's held-out
    predictions, and the map's slope.

    Moves and spreads are compared on this scale. A model whose logits are merely shrunk (a penalty,
    a blurrier input, weaker features) moves less in raw P, but the release calibrates its members
    (Platt on held-out predictions), which stretches them back: in raw P such a model looks steadier
    than it will be once shipped. The map is the release's own (:meth:`PlattCalibrator.fit`, with
    Platt's smoothed targets), fitted here on the held-out images themselves, which is fine for
    putting models on one scale and says nothing of their calibration. ROC AUC and specificity at a
    recall do not depend on it; they are computed before it.
    """
    from pneumoscan.models.calibration import PlattCalibrator

    platt = PlattCalibrator.fit(y, preds["clean"])
    return {view: platt.transform(p) for view, p in preds.items()}, platt.a


def path_spread(preds: dict[str, np.ndarray]) -> dict:
    """Per held-out image, the spread (max - min) of P(pneumonia) over :data:`SPREAD_VIEWS`: its
    mean, 95th percentile and largest, the share above issue 16's bound of 0.05, the same over the
    images whose clean P lies in 0.2..0.8 (where the slope is steepest), and the half-size copy's
    largest move."""
    stacked = np.stack([preds[v] for v in SPREAD_VIEWS])
    spreads = stacked.max(0) - stacked.min(0)
    unsure = (preds["clean"] >= 0.2) & (preds["clean"] <= 0.8)
    return {
        "mean": round(float(spreads.mean()), 4),
        "p95": round(float(np.percentile(spreads, 95)), 4),
        "max": round(float(spreads.max()), 4),
        "over_0.05": round(float((spreads > 0.05).mean()), 4),
        "unsure_n": int(unsure.sum()),
        "unsure_mean": round(float(spreads[unsure].mean()), 4) if unsure.any() else None,
        "unsure_over_0.05": round(float((spreads[unsure] > 0.05).mean()), 4) if unsure.any() else None,
        "half_max_move": round(float(np.abs(preds[PATH_VIEWS[3]] - preds["clean"]).max()), 4),
    }


def spread(aucs: list[float], *, extremes: bool = True) -> dict:
    """Mean and SD (ddof 1; 0 for one value) of some ROC AUCs, and their min and max."""
    row = {
        "mean": round(float(np.mean(aucs)), 4),
        "sd": round(float(np.std(aucs, ddof=1)) if len(aucs) > 1 else 0.0, 4),
    }
    return {**row, "min": min(aucs), "max": max(aucs)} if extremes else row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    recipes = args.recipes.split(",")
    if "path_consistent" in recipes and AUGMENT != "standard":
        raise SystemExit(
            "path_consistent pairs the usual augmented view with its resampled twin: drop --augment"
        )
    path_pairs = "path_consistent" in recipes
    frozen_top()  # a bad --stem-cut fails here, before minutes of cache building
    build_cache(args.data, args.cache, path_pairs=path_pairs)
    c = Cache(args.cache, path_pairs=path_pairs)
    print(f"cache ready in {time.perf_counter() - start:.0f} s", flush=True)
    held = held_out_mask(args.split, c)
    y = c.y[held]
    print(
        f"== {args.split} split: {held.sum()} held-out images ({(y == 0).sum()} normal), trained on the rest"
    )
    print(
        f"   each scored clean, under '{STRESS_SHIFT}' (the crop column) and as a JPEG of quality "
        f"{LOSSY_QUALITY} ({LOSSY_VIEW}); training view: {AUGMENT}",
        flush=True,
    )
    out: dict = {
        "image_size": IMAGE_SIZE,
        "input": INPUT,
        "augment": AUGMENT,
        "consistency": args.consistency if {"consistent", "path_consistent"} & set(recipes) else None,
        "pair": PATH_PAIR if "path_consistent" in recipes else None,
        "relative_penalty": RELATIVE_PENALTY,
        "stem_cut": STEM_CUT,
        "feature_noise": FEATURE_NOISE,
        "adversary": ADVERSARY if "adversarial" in recipes else None,
        "split": args.split,
        "held_out": int(held.sum()),
        "held_out_normal": int((y == 0).sum()),
    }
    run = Protocol(c, held, held_out_views(args.cache, c, held), out, consistency=args.consistency)
    seeds = [int(s) for s in args.seeds.split(",")]
    for recipe in recipes:
        if recipe == "frozen_lr":
            run.frozen_lr()
        elif recipe == "ensemble":
            run.ensemble(seeds[0])
        else:
            run.seeded(recipe, seeds, args.group)
    out["agreement_with_the_test_split"] = {view: agreement(m) for view, m in run.measured.items()}
    for view, a in out["agreement_with_the_test_split"].items():
        print(f"agreement with the independent test figures ({view}):", json.dumps(a))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
