"""Training speed of the default MobileNetV2 recipe against a plain ``model.fit`` of the same recipe.

    python benchmarks/train_speed.py [--data ../shared/data/chest_xray/train] [--plain-steps 20]

1. Runs ``pneumoscan train`` with the default options on the whole training folder and reads the
   per-stage wall times the run records in ``timings.json`` (decode, stem features, head phase,
   fine-tune phase, finalise).
2. Measures, in the same process and on the same data, the plain recipe: the full model fitted on
   images with on-the-fly augmentation, backbone recomputed every epoch (frozen for the head
   phase, top blocks trainable for the fine-tune phase). It times ``--plain-steps`` batches of each
   phase after a warm-up and extrapolates to the same number of images the cached recipe saw
   (epochs x images x views).
3. Prints wall time and images/s for each phase, the totals and the ratio, and checks the 20-minute
   target. Needs KERAS_HOME pointing at the ImageNet weights (set automatically when ../shared/keras
   exists).
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
    from pneumoscan.training.engine import _compile

    model = build_model(cfg)
    if phase == "finetune":
        set_finetune_trainable(model, mobilenet_cut_layer(model, cfg.unfreeze_blocks))
        lr = cfg.finetune_learning_rate
    else:
        lr = cfg.head_learning_rate
    _compile(model, lr, cfg.label_smoothing)
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

    from pneumoscan.config import TrainConfig
    from pneumoscan.training.engine import Trainer

    cfg = TrainConfig()
    if args.run_dir is None:
        run_dir = Path(tempfile.mkdtemp(prefix="pneumoscan-train-speed-"))
        start = time.perf_counter()
        trainer = Trainer(cfg, args.data, run_dir, progress=False)
        trainer.run()
        total = time.perf_counter() - start
        train, _ = Trainer(cfg, args.data, run_dir / "unused", progress=False).load_data()
    else:
        run_dir = args.run_dir
        total = None
        # Load the same split through a scratch folder, so the finished run's timings stay intact.
        scratch = Path(tempfile.mkdtemp(prefix="pneumoscan-train-speed-")) / "unused"
        train, _ = Trainer(cfg, args.data, scratch, progress=False).load_data()
    timings = json.loads((run_dir / "timings.json").read_text())
    if total is None:
        total = sum(v["seconds"] for k, v in timings.items() if k != "total_after_decode")
        print("(total = the sum of the run's recorded stages; the run itself took that plus start-up)")

    views = 1 + cfg.augmented_views
    head_images = len(train.y) * views * cfg.head_epochs
    ft_images = len(train.y) * views * cfg.finetune_epochs
    plain_head = plain_fit_rate(cfg, train.x, train.y, phase="head", steps=args.plain_steps)
    plain_ft = plain_fit_rate(cfg, train.x, train.y, phase="finetune", steps=args.plain_steps)
    plain_total = (
        head_images / plain_head
        + ft_images / plain_ft
        + timings["decode"]["seconds"]
        + timings["finalise"]["seconds"]
    )

    print(f"data: {args.data} ({len(train.y)} training images after the patient split), run: {run_dir}")
    print(
        f"recipe: {views} views/image, head {cfg.head_epochs} epochs, fine-tune {cfg.finetune_epochs} epochs "
        f"({cfg.unfreeze_blocks} blocks), batch {cfg.batch_size}, {cfg.image_size} px\n"
    )
    print(f"{'stage':<22}{'wall s':>10}{'images/s':>12}")
    for name, t in timings.items():
        rate = f"{t['images_per_s']:.1f}" if t.get("images_per_s") else ""
        print(f"{name:<22}{t['seconds']:>10.1f}{rate:>12}")
    print(f"{'total (cached recipe)':<22}{total:>10.1f}")
    print()
    print(
        f"plain model.fit, head phase      {plain_head:8.1f} images/s -> {head_images / plain_head:8.1f} s "
        f"for {head_images} images"
    )
    print(
        f"plain model.fit, fine-tune phase {plain_ft:8.1f} images/s -> {ft_images / plain_ft:8.1f} s "
        f"for {ft_images} images"
    )
    print(f"plain recipe total (extrapolated from {args.plain_steps} batches/phase): {plain_total:.1f} s")
    print(f"\nspeed-up of the cached recipe over plain model.fit: {plain_total / total:.2f}x")
    rates = matmul_dtype_rates()
    print(
        f"\nmatmul float32 {rates['float32']:.1f} ms, bfloat16 {rates['bfloat16']:.1f} ms "
        f"(bfloat16/float32 = {rates['bfloat16'] / rates['float32']:.2f}; below 1 means bfloat16 would help)"
    )
    verdict = "PASS" if total <= 20 * 60 else "FAIL"
    print(f"target: default recipe end to end <= 1200 s: {total:.0f} s -> {verdict}")


if __name__ == "__main__":
    main()
