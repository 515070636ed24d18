"""Teacher ensemble vs distilled student, on the shipped path (LiteRT files through the Predictor).

Quality: the images the student never distilled on, recovered from the student's sidecar (its
``student.config``: hold-out fraction, seed, limit): the held-out part of the training folder
clean, under each gate shift (:data:`pneumoscan.training.distill_gate.GATE_SHIFTS`), and the
out-of-scope set through ``predict_paths`` (the pixel checks refuse the same files for both). Both
models score every image end to end here, so this re-measures on the LiteRT files what
``pneumoscan distill`` gated on cached Keras features: ROC AUC of each, decision agreement, max
|dp|, spread correlation (:func:`pneumoscan.training.distill_gate.gate`).

Speed, in the same run: ``Predictor.predict_paths`` over ``--n-speed`` training files (decode,
preprocess, guard, model: what ``pneumoscan predict`` does, less the CSV), images/s, and the
single-image p50 end to end (one file per call), teacher and student alternating over ``--rounds``
rounds (median reported); beside them a stock ImageNet MobileNetV2 (224 px, no top, average
pooling) as a float32 LiteRT model called one image at a time on 2 threads (model only), the
yardstick of issue 21. The load average before and after is printed: on a shared machine every
figure is contended.

    python benchmarks/distill.py --teacher models/pneumoscan-mobilenetv2-litert.tflite \\
        --student runs/student/model-litert.tflite --data ../shared/data/chest_xray \\
        --ood ../shared/data/ood --json runs/student/benchmark.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def quality(teacher, student, data_dir: Path, ood_dir: Path | None) -> dict:
    """Both Predictors on the student's held-out images (clean, shifted) and the out-of-scope set."""
    from pneumoscan.data.dataset import decode_samples
    from pneumoscan.training.distill import DistillConfig, distillation_split
    from pneumoscan.training.distill_gate import GATE_SHIFTS, GateSet, gate

    meta = student.metadata
    cfg = DistillConfig(**meta.student.extra["config"])
    _, held, never = distillation_split(data_dir, meta, cfg)
    size = meta.image_size
    views = [("held out", decode_samples(held, size, progress=False), False)]
    views += [
        (name, decode_samples(held, size, progress=False, load=load), True)
        for name, load in GATE_SHIFTS.items()
    ]
    sets = []
    for name, data, shifted in views:
        t, s = teacher.predict_details(data.x), student.predict_details(data.x)
        never_mask = np.array([shifted or x.path in never for x in data.samples], bool)
        sets.append(
            GateSet(
                name,
                np.zeros((len(data.y), 0)),
                data.y,
                never_mask,
                t.p_pneumonia,
                t.spread,
                s.p_pneumonia,
                s.spread,
            )
        )
    if ood_dir is not None:
        files = sorted(p for p in ood_dir.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        t, s = teacher.predict_paths(files, progress=False), student.predict_paths(files, progress=False)
        ok = ~np.isnan(t.p_pneumonia) & ~np.isnan(s.p_pneumonia)
        sets.append(
            GateSet("out of scope", np.zeros((int(ok.sum()), 0)), None, np.ones(int(ok.sum()), bool),
                    t.p_pneumonia[ok], t.spread[ok], s.p_pneumonia[ok], s.spread[ok])
        )  # fmt: skip
    return gate(sets, meta, max_auc_diff=cfg.max_auc_diff, min_agreement=cfg.min_agreement)


def yardstick(image_size: int = 224, n: int = 100) -> dict:
    """Stock MobileNetV2 float32 LiteRT, one image at a time on 2 threads: model-only img/s, p50."""
    import tempfile

    import keras
    from ai_edge_litert.interpreter import Interpreter

    from pneumoscan.training.export import convert_keras_model

    model = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, pooling="avg", weights="imagenet"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobilenetv2.tflite"
        path.write_bytes(convert_keras_model(model))
        interpreter = Interpreter(model_path=str(path), num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = np.random.default_rng(0).uniform(-1, 1, (n, 1, image_size, image_size, 3)).astype(np.float32)
    times = []
    for i in range(n + 5):
        start = time.perf_counter()
        interpreter.set_tensor(inp["index"], x[i % n])
        interpreter.invoke()
        interpreter.get_tensor(out["index"])
        if i >= 5:
            times.append(time.perf_counter() - start)
    return {"images_per_s": len(times) / sum(times), "p50_ms": 1000 * statistics.median(times)}


def speed(predictors: dict, files: list[Path], *, rounds: int, n_single: int) -> dict:
    """Batched img/s over ``files`` and single-file p50, the models alternating each round."""
    for predictor in predictors.values():  # warm up: interpreters made, first batch traced
        predictor.predict_paths(files[:8], progress=False)
    rates = {name: [] for name in predictors}
    singles = {name: [] for name in predictors}
    for _ in range(rounds):
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict_paths(files, progress=False)
            rates[name].append(len(files) / (time.perf_counter() - start))
            for path in files[:n_single]:
                start = time.perf_counter()
                predictor.predict_paths([path], progress=False)
                singles[name].append(time.perf_counter() - start)
    return {
        name: {
            "batched_images_per_s": statistics.median(rates[name]),
            "batched_rounds": [round(r, 1) for r in rates[name]],
            "single_p50_ms": 1000 * statistics.median(singles[name]),
        }
        for name in predictors
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ood", type=Path)
    parser.add_argument("--n-speed", type=int, default=200)
    parser.add_argument("--n-single", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from pneumoscan.data.dataset import discover_split
    from pneumoscan.inference.predictor import Predictor

    load_before = os.getloadavg()
    teacher, student = Predictor(args.teacher), Predictor(args.student)
    result = {"teacher": str(args.teacher), "student": str(args.student), "cpus": os.cpu_count()}
    samples = discover_split(args.data, prefer="train")
    picked = np.random.default_rng(args.seed).permutation(len(samples))[: args.n_speed]
    files = [samples[i].path for i in sorted(picked)]
    result["speed"] = speed(
        {"teacher": teacher, "student": student}, files, rounds=args.rounds, n_single=args.n_single
    )
    result["yardstick"] = yardstick()
    t, s, y = result["speed"]["teacher"], result["speed"]["student"], result["yardstick"]
    result["ratios"] = {
        "student_over_teacher_batched": s["batched_images_per_s"] / t["batched_images_per_s"],
        "teacher_over_student_single_p50": t["single_p50_ms"] / s["single_p50_ms"],
        "student_batched_over_yardstick": s["batched_images_per_s"] / y["images_per_s"],
        "student_single_p50_over_yardstick_p50": s["single_p50_ms"] / y["p50_ms"],
    }
    if not args.skip_quality:
        result["quality"] = quality(teacher, student, args.data, args.ood)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
