"""Training speed of the default recipe (three members on one stem) against a plain ``model.fit``.

    python benchmarks/train_speed.py [--data ../shared/data/chest_xray/train] [--plain-steps 20]
    python benchmarks/train_speed.py --run-dir runs/ens-1337     # reuse a finished default run

1. Runs ``pneumoscan train`` with the default options on the whole training folder (or reads a
   finished run) and prints the per-stage wall times it records in ``timings.json``: decode, stem
   features (clean, augmented and shifted views of every image), pooled features, each member's
   head and fine-tune phases, finalise (calibration, threshold, reports, saving).
2. Measures, in the same process and on the same data, a plain ``model.fit`` of *one* member: the
   full model fitted on images with on-the-fly augmentation, the backbone recomputed every epoch
   (frozen for the head phase, top blocks trainable for the fine-tune phase). It times
   ``--plain-steps`` batches of each phase after a warm-up and extrapolates to the image-passes one
   member makes (the images it trains on x views x epochs).
3. Prints two ratios: plain fit of one member / cached training of the whole ensemble, and the same
   for equal image-passes (plain rate extrapolated to every member's passes); then the verdict
   against the 25-minute target. Needs KERAS_HOME pointing at the ImageNet weights (set
   automatically when ../shared/keras exists).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if (SHARED / "keras" / "models").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))


def plain_fit_rate(cfg, train_x, train_y, *, phase: str, steps: int) -> float:
    """Images/s of a plain model.fit of the full model on augmented images, for one phase."""
    import keras

    from pneumoscan.data.dataset import class_weights, make_dataset
    from pneumoscan.models.architectures import build_model, mobilenet_cut_layer, set_finetune_trainable
    from pneumoscan.training.engine import compile_model

    model = build_model(cfg)
    if phase == "finetune":
        set_finetune_trainable(model, mobilenet_cut_layer(model, cfg.unfreeze_blocks))
        lr = cfg.finetune_learning_rate
    else:
        lr = cfg.head_learning_rate
    compile_model(model, lr, cfg.label_smoothing)
    ds = make_dataset(
        train_x, train_y, batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment, seed=cfg.seed
    ).repeat()
    weights = class_weights(train_y)
    model.fit(ds, steps_per_epoch=3, epochs=1, class_weight=weights, verbose=0)  # warm-up, tracing
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, class_weight=weights, verbose=0)
    del model
    keras.backend.clear_session()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def matmul_dtype_rates() -> dict[str, float]:
    """ms per matmul of the fine-tuned blocks' size (7x7x32 positions x 960 -> 1280) in float32 and
    bfloat16: bfloat16 only pays where the CPU has native support (AVX512-BF16, AMX)."""
    import tensorflow as tf

    out = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal((1568, 960), seed=1), dtype)
        b = tf.cast(tf.random.normal((960, 1280), seed=2), dtype)
        matmul = tf.function(tf.matmul)
        matmul(a, b)
        start = time.perf_counter()
        for _ in range(20):
            matmul(a, b).numpy()
        out[dtype.name] = (time.perf_counter() - start) / 20 * 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "chest_xray" / "train")
    parser.add_argument("--plain-steps", type=int, default=20, help="batches timed per plain phase")
    parser.add_argument("--run-dir", type=Path, help="reuse a finished default run instead of training")
    args = parser.parse_args()

    import numpy as np

    from pneumoscan.config import TrainConfig
    from pneumoscan.training.ensemble import EnsembleTrainer

    cfg = TrainConfig()
    if args.run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="pneumoscan-train-speed-"))
        start = time.perf_counter()
        EnsembleTrainer(cfg, args.data, run_dir, progress=False).run()
        total = time.perf_counter() - start
    else:
        run_dir, total = args.run_dir, None
    # The same images and held-out masks, through a scratch folder so a finished run's timings stay intact.
    scratch = Path(tempfile.mkdtemp(prefix="pneumoscan-train-speed-")) / "unused"
    data, held = EnsembleTrainer(cfg, args.data, scratch, progress=False).load_all()
    timings = json.loads((run_dir / "timings.json").read_text())
    if total is None:
        stages = [k for k in timings if k != "total_after_decode" and not k.startswith("fit_member")]
        total = sum(timings[k]["seconds"] for k in stages)
        print("(total = the sum of the run's recorded stages; the run itself took that plus start-up)")

    views = 1 + cfg.augmented_views
    # Each member trains on what it does not hold out (its folds' complement, or all but its
    # validation split); load_all returns the held-out masks.
    member_images = int(np.mean([(~mask).sum() for mask in held]))
    head_images = member_images * views * cfg.head_epochs
    ft_images = member_images * views * cfg.finetune_epochs
    plain_head = plain_fit_rate(cfg, data.x, data.y, phase="head", steps=args.plain_steps)
    plain_ft = plain_fit_rate(cfg, data.x, data.y, phase="finetune", steps=args.plain_steps)
    plain_member = head_images / plain_head + ft_images / plain_ft
    fixed = timings["decode"]["seconds"] + timings["finalise"]["seconds"]

    print(
        f"data: {args.data} ({len(data.y)} images, {cfg.members} members, {cfg.member_split}), run: {run_dir}"
    )
    print(
        f"recipe: {cfg.members} members, {views} training views/image (+1 shifted for calibration), head "
        f"{cfg.head_epochs} epochs, fine-tune {cfg.finetune_epochs} epochs ({cfg.unfreeze_blocks} blocks), "
        f"batch {cfg.batch_size}, {cfg.image_size} px\n"
    )
    print(f"{'stage':<22}{'wall s':>10}{'images/s':>12}")
    for name, t in timings.items():
        rate = f"{t['images_per_s']:.1f}" if t.get("images_per_s") else ""
        print(f"{name:<22}{t['seconds']:>10.1f}{rate:>12}")
    print(f"{'total (cached recipe)':<22}{total:>10.1f}")
    print()
    print(f"plain model.fit, head phase      {plain_head:8.1f} images/s")
    print(f"plain model.fit, fine-tune phase {plain_ft:8.1f} images/s")
    print(
        f"plain model.fit of ONE member ({head_images} head + {ft_images} fine-tune image-passes, "
        f"extrapolated from {args.plain_steps} batches/phase): {plain_member + fixed:.1f} s"
    )
    print(
        f"plain model.fit of all {cfg.members} members (same image-passes as the ensemble): "
        f"{cfg.members * plain_member + fixed:.1f} s"
    )
    print(f"\nratio plain one member / cached whole ensemble: {(plain_member + fixed) / total:.2f}x")
    equal = (cfg.members * plain_member + fixed) / total
    print(f"ratio at equal image-passes (plain all members / cached): {equal:.2f}x")
    rates = matmul_dtype_rates()
    print(
        f"\nmatmul float32 {rates['float32']:.1f} ms, bfloat16 {rates['bfloat16']:.1f} ms "
        f"(bfloat16/float32 = {rates['bfloat16'] / rates['float32']:.2f}; below 1 means bfloat16 would help)"
    )
    verdict = "PASS" if total <= 25 * 60 else "FAIL"
    print(f"target: default recipe end to end <= 1500 s: {total:.0f} s -> {verdict}")


if __name__ == "__main__":
    main()
