"""Which recipe holds on a new intake? Recipes compared on a validation that sees the shift.

    python benchmarks/recipe_proxy.py --recipes A,B,C,D --seeds 0,1,2 [--splits proxy,random]
                                      [--cache runs/proxy-cache] [--stress]

The official test split differs from the training folder mostly in its *normal* children (their
features lie further from the training normals than held-out training normals do). The proxy
validation imitates that: the 20 % of normal patients who are most atypical (cross-fitted
Mahalanobis distance, PCA-64 + Ledoit-Wolf, of the frozen ImageNet features to the other folds'
normals) plus a random 20 % of pneumonia patients are held out; every recipe trains on the rest.
``--splits random`` gives the ordinary random patient split (20 %) beside it.

Recipes, all on the cached frozen stem (MobileNetV2 to ``block_13``, clean + 1 augmented view):

- A: frozen backbone, head only (GAP of ``out_relu`` -> Dense(128) -> Dropout -> sigmoid), 15 epochs;
- B: ``Conv_1`` + head fine-tuned, 4 epochs; C: ``block_16`` too, 3 epochs;
- D: ``block_14``..``block_16`` + ``Conv_1`` + head, 3 epochs (the released recipe's member).

For each recipe and seed it prints ROC AUC, specificity at recall 0.98 (threshold set on the same
split: a measure of separability), and ECE/Brier of the raw output; then the mean over seeds and the
ensemble (mean probability) of the seeds. ``--stress`` also scores every model on the held-out images
under each acquisition shift of :mod:`pneumoscan.evaluation.robustness`.

Machine-dependent only in its run time (CPU: about 20 s per A model, 1-4 min per D model on 2 cores,
plus about 4 min to build the cache once). Needs ``../shared`` (training data, ImageNet weights).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if (SHARED / "keras" / "models").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))

CUTS = {"B": "block_16_project_BN", "C": "block_15_add", "D": "block_13_project_BN"}
EPOCHS = {"A": 15, "B": 4, "C": 3, "D": 3}
STEM_CUT = "block_13_project_BN"


def run_stem(x: np.ndarray, augmenter=None) -> np.ndarray:
    """MobileNetV2 (ImageNet) features after ``block_13``: (n, 224, 224, 1) -> (n, 7, 7, 160) float16."""
    import keras
    import tensorflow as tf

    from pneumoscan.models.architectures import build_mobilenetv2

    model = build_mobilenetv2(224)
    stem = keras.Model(model.input, model.get_layer(STEM_CUT).output)

    @tf.function(reduce_retracing=True)
    def f(b):
        b = tf.cast(b, tf.float32)
        return stem(augmenter(b, training=True) if augmenter is not None else b, training=False)

    return np.concatenate([f(x[i : i + 64]).numpy().astype(np.float16) for i in range(0, len(x), 64)])


def build_cache(data_dir: Path, cache: Path) -> None:
    """Decode every training image and run the frozen stem once, clean and with one augmented view."""
    from pneumoscan.config import AugmentConfig
    from pneumoscan.data.augment import build_augmenter
    from pneumoscan.data.dataset import decode_samples, discover_split

    cache.mkdir(parents=True, exist_ok=True)
    data = decode_samples(discover_split(data_dir, prefer="train"), 224, progress=False)
    np.save(cache / "x.npy", data.x)
    np.save(cache / "y.npy", data.y)
    samples = [[str(s.path), s.patient_id, s.subtype] for s in data.samples]
    (cache / "samples.json").write_text(json.dumps(samples))
    np.save(cache / "stem_clean.npy", run_stem(data.x))
    np.save(cache / "stem_aug1.npy", run_stem(data.x, build_augmenter(AugmentConfig(), seed=1438)))


class Features:
    """The cache, plus the frozen top's pooled features (computed once, kept in the cache)."""

    def __init__(self, cache: Path):
        import keras

        from pneumoscan.models.architectures import build_mobilenetv2

        self.cache = cache
        self.y = np.load(cache / "y.npy")
        self.patients = np.array([s[1] for s in json.loads((cache / "samples.json").read_text())])
        self.model = build_mobilenetv2(224)
        self.clean = np.load(cache / "stem_clean.npy")
        self.aug = np.load(cache / "stem_aug1.npy")
        gap = cache / "gap_clean.npy"
        if not gap.exists():
            top = self.sub(STEM_CUT, "avg_pool")
            np.save(gap, top.predict(self.clean.astype(np.float32), batch_size=256, verbose=0))
            np.save(
                cache / "gap_aug1.npy", top.predict(self.aug.astype(np.float32), batch_size=256, verbose=0)
            )
        self.gap, self.gap_aug = np.load(gap), np.load(cache / "gap_aug1.npy")
        self.keras = keras

    def sub(self, start: str, end: str):
        return self.keras.Model(self.model.get_layer(start).output, self.model.get_layer(end).output)

    def shifted(self, k: int, held: np.ndarray, split: str) -> np.ndarray:
        """Stem features of the held-out images under shift ``k``, computed once per split."""
        from pneumoscan.evaluation.robustness import SHIFTS

        path = self.cache / f"stem_{split}_shift{k}.npy"
        if not path.exists():
            x = np.load(self.cache / "x.npy", mmap_mode="r")[held]
            np.save(path, run_stem(list(SHIFTS.values())[k](np.ascontiguousarray(x))))
        return np.load(path)


def patient_folds(patients: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    fold: dict[str, int] = {}
    for label in (0, 1):
        ps = sorted({p for p, lab in zip(patients, y, strict=True) if lab == label})
        rng.shuffle(ps)
        for i, p in enumerate(ps):
            fold.setdefault(p, i % k)
    return np.array([fold[p] for p in patients])


def atypical_normal_split(f: Features, *, seed: int = 0, share: float = 0.2) -> np.ndarray:
    """Held-out mask: the most atypical normal patients and random pneumonia patients."""
    from sklearn.covariance import LedoitWolf
    from sklearn.decomposition import PCA

    folds = patient_folds(f.patients, f.y, 5, seed)
    distance = np.full(len(f.y), np.nan)
    for j in range(5):
        fit, score = (folds != j) & (f.y == 0), (folds == j) & (f.y == 0)
        pca = PCA(64, random_state=0).fit(f.gap[fit])
        lw = LedoitWolf().fit(pca.transform(f.gap[fit]))
        z = pca.transform(f.gap[score]) - lw.location_
        distance[score] = np.einsum("ij,jk,ik->i", z, lw.precision_, z)
    held: set[str] = set()
    normal = {p: float(np.mean(distance[(f.patients == p)])) for p in set(f.patients[f.y == 0])}
    taken, target = 0, share * (f.y == 0).sum()
    for p in sorted(normal, key=lambda p: -normal[p]):
        if taken >= target:
            break
        held.add(p)
        taken += int((f.patients == p).sum())
    pneumonia = sorted(set(f.patients[f.y == 1]))
    np.random.default_rng(seed).shuffle(pneumonia)
    taken, target = 0, share * (f.y == 1).sum()
    for p in pneumonia:
        if taken >= target:
            break
        held.add(p)
        taken += int((f.patients == p).sum())
    return np.isin(f.patients, list(held))


def fit_recipe(f: Features, recipe: str, train: np.ndarray, seed: int):
    """Train one model of ``recipe``; returns a function: stem features (n,7,7,160) -> P(pneumonia)."""
    keras = f.keras
    from pneumoscan.data.dataset import class_weights
    from pneumoscan.models.architectures import build_mobilenetv2, set_finetune_trainable

    keras.utils.set_random_seed(seed)
    to_gap = f.sub(STEM_CUT, "avg_pool")
    if recipe == "A":
        x_train = np.concatenate([f.gap[train], f.gap_aug[train]])
        inputs = keras.Input(x_train.shape[1:])
        pre = None
    else:
        fresh = build_mobilenetv2(224)
        set_finetune_trainable(fresh, CUTS[recipe])
        pre = None if recipe == "D" else f.sub(STEM_CUT, CUTS[recipe])
        to_input = (
            (lambda s: s.astype(np.float32))
            if pre is None
            else (lambda s: pre.predict(s.astype(np.float32), batch_size=256, verbose=0))
        )
        x_train = np.concatenate([to_input(f.clean[train]), to_input(f.aug[train])])
        top = keras.Model(fresh.get_layer(CUTS[recipe]).output, fresh.get_layer("out_relu").output)
        inputs = keras.Input(x_train.shape[1:])
    x = inputs if recipe == "A" else keras.layers.GlobalAveragePooling2D()(top(inputs))
    x = keras.layers.Dense(128, activation="relu")(x)
    x = keras.layers.Dropout(0.5, seed=seed)(x)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(x))
    y_train = np.tile(f.y[train], 2)
    model.compile(
        keras.optimizers.Adam(1e-3 if recipe == "A" else 1e-4),
        keras.losses.BinaryCrossentropy(label_smoothing=0.05),
    )
    model.fit(
        x_train, y_train, batch_size=32, epochs=EPOCHS[recipe], class_weight=class_weights(y_train), verbose=0
    )

    def predict(stem_features: np.ndarray) -> np.ndarray:
        s = stem_features.astype(np.float32)
        x = (
            to_gap.predict(s, batch_size=256, verbose=0)
            if recipe == "A"
            else (s if pre is None else to_input(s))
        )
        return model.predict(x, batch_size=256, verbose=0).reshape(-1)

    return predict


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    from sklearn.metrics import roc_auc_score

    from pneumoscan.evaluation.metrics import expected_calibration_error

    positives = np.sort(p[y == 1])
    t = positives[int(np.floor(0.02 * len(positives)))]
    return {
        "auc": round(float(roc_auc_score(y, p)), 4),
        "spec_at_recall_0.98": round(float((p[y == 0] < t).mean()), 3),
        "ece": round(float(expected_calibration_error(y, p)), 3),
        "brier": round(float(np.mean((p - y) ** 2)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "chest_xray" / "train")
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "proxy-cache")
    parser.add_argument("--recipes", default="A,D")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--splits", default="proxy")
    parser.add_argument("--stress", action="store_true", help="also score each model under every shift")
    args = parser.parse_args()

    from pneumoscan.evaluation.robustness import SHIFTS

    if not (args.cache / "stem_clean.npy").exists():
        start = time.perf_counter()
        build_cache(args.data, args.cache)
        print(f"cache built in {time.perf_counter() - start:.0f} s", flush=True)
    f = Features(args.cache)
    seeds = [int(s) for s in args.seeds.split(",")]
    for split in args.splits.split(","):
        held = atypical_normal_split(f) if split == "proxy" else patient_folds(f.patients, f.y, 5, 0) == 0
        y = f.y[held]
        print(
            f"\n== {split} split: {held.sum()} held-out images ({(y == 0).sum()} normal), trained on the rest"
        )
        for recipe in args.recipes.split(","):
            by_seed = []
            for seed in seeds:
                start = time.perf_counter()
                predict = fit_recipe(f, recipe, ~held, seed)
                clean = predict(f.clean[held])
                shifted = (
                    [predict(f.shifted(k, held, split)) for k in range(len(SHIFTS))] if args.stress else []
                )
                by_seed.append((clean, shifted))
                print(
                    json.dumps(
                        {
                            "recipe": recipe,
                            "seed": seed,
                            "secs": round(time.perf_counter() - start),
                            **scores(y, clean),
                        }
                    ),
                    flush=True,
                )
            for name, rows in (("clean", [scores(y, c) for c, _ in by_seed]),):
                mean = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}
                sd = (
                    {k: round(float(np.std([r[k] for r in rows], ddof=1)), 4) for k in rows[0]}
                    if len(rows) > 1
                    else {}
                )
                print(f"  {recipe} single model over {len(rows)} seeds, {name}: mean {mean} sd {sd}")
            if len(by_seed) > 1:
                ensemble = scores(y, np.mean([c for c, _ in by_seed], 0))
                print(f"  {recipe} ensemble of the {len(by_seed)} seeds, clean: {ensemble}")
            for k, shift in enumerate(SHIFTS if args.stress else []):
                singles = [scores(y, s[k]) for _, s in by_seed]
                mean = {m: round(float(np.mean([r[m] for r in singles])), 4) for m in singles[0]}
                ens = scores(y, np.mean([s[k] for _, s in by_seed], 0))
                print(f"  {recipe} {shift}: single mean {mean} | ensemble {ens}")


if __name__ == "__main__":
    main()
