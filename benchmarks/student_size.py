"""Would one top at a smaller input give the release's answers? A student at ``--size`` px (default
160) distilled from the bundled ensemble, judged by ``pneumoscan distill``'s own gate.

    python benchmarks/student_size.py [--size 160] [--json runs/student_160.json]

Why (issue 18, tracker #21): one image end to end may take at most 1.3x a stock MobileNetV2's model
time, which leaves the model about 0.6-0.7x of it (README, Inference); ``model_cost.py`` puts one
top at 160 px at 0.57x and the release's three tops at 224 px at 1.55x. ``pneumoscan distill``
keeps the teacher's 224-px stem, so its student cannot fit. This measures the one shape that does,
before anyone builds it into the product:

- **teacher**: the bundled ensemble at its own 224 px: the mean of its members' calibrated
  probabilities and their spread (:class:`pneumoscan.training.distill.Teacher`);
- **student**: the same network at ``--size`` px. MobileNetV2 is convolutional, so the teacher's
  frozen ImageNet stem and the chosen member's top run at any input side with the same weights
  (copied layer by layer; the copy is checked at 224 px against the teacher's stem). One member's
  top (the one closest to the teacher, :func:`~pneumoscan.training.distill.choose_member`) with a
  spread unit, trained as ``pneumoscan distill`` trains (:func:`~pneumoscan.training.distill.
  fit_student`: the head on pooled features, then the blocks) on the teacher's answers;
- **what it learns from**: ``distill``'s patient-level split (:func:`~pneumoscan.training.distill.
  distillation_split`, :class:`~pneumoscan.config.DistillConfig` defaults), each image clean and,
  with ``--views shifted`` (default), under the gate's three shifts too (the shifted views of the
  *distillation* images; the gate's are of the held-out ones, so the student has seen the kinds of
  shift it is judged on: optimistic for shifts of other kinds). Each view is decoded twice from the
  same file by the same loader, at 224 px for the teacher and at ``--size`` for the student;
- **the gate**: :func:`pneumoscan.training.distill_gate.gate`, unchanged: ROC AUC within 0.005 of
  the teacher's on the held-out images and on their shifted views; three-outcome decisions (the
  teacher's threshold and band, each model with its own spread) agreeing on at least 99 % of the
  images no member trained on (shifted views, images every member held out, out-of-scope
  radiographs).

It writes nothing but ``--json``. The out-of-scope guard is not refitted on the student's
embedding: this measures the answers, not a model that could ship. Needs ``../shared`` (training
images, the out-of-scope set) and the ImageNet weights only for the architecture (weights are
copied from the teacher). About 10-15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if (SHARED / "keras" / "models").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))

TEACHER_SIZE = 224


def resized_stem(teacher, size: int):
    """The teacher's frozen stem rebuilt at ``size`` px with the teacher's weights, layer by layer."""
    import keras

    from pneumoscan.models.architectures import build_mobilenetv2

    full = build_mobilenetv2(size, weights=None)
    names = {layer.name for layer in teacher.model.layers}
    for layer in full.layers:
        if layer.name in names and layer.weights:
            layer.set_weights(teacher.model.get_layer(layer.name).get_weights())
    return keras.Model(full.input, full.get_layer(teacher.cut).output, name=f"stem_{size}")


def resized_tops(teacher, size: int) -> list:
    """The teacher's member tops rebuilt for the cut features of a ``size``-px input, same weights."""
    from pneumoscan.config import TrainConfig
    from pneumoscan.models.architectures import mobilenet_member

    tops = []
    for k, member in enumerate(teacher.tops):
        _, top = mobilenet_member(TrainConfig(image_size=size), teacher.cut, name=f"member_{k}", weights=None)
        source = member.get_weights()
        if [w.shape for w in top.get_weights()] != [w.shape for w in source]:
            raise RuntimeError(f"member {k}: the rebuilt top's weights do not line up with the teacher's")
        top.set_weights(source)
        tops.append(top)
    return tops


def stem_features(stem, x: np.ndarray) -> np.ndarray:
    return stem.predict(x.astype(np.float32), batch_size=64, verbose=0).astype(np.float16)


def paired_views(samples, loaders: dict, size: int):
    """Each named view of ``samples`` decoded twice from the same files, at the teacher's 224 px and
    at ``size`` px: ``(name, DecodedSet 224, DecodedSet size)``; RuntimeError when the two kept
    different files (a file that fails at one size only)."""
    from pneumoscan.data.dataset import decode_samples

    for name, load in loaders.items():
        big, small = (
            decode_samples(samples, side, progress=False, load=load) for side in (TEACHER_SIZE, size)
        )
        if [x.path for x in big.samples] != [x.path for x in small.samples]:
            raise RuntimeError(f"view {name!r}: the two sizes decoded different files")
        yield name, big, small


def distillation_views(teacher, teacher_stem, stem_s, distil, size: int, kind: str):
    """Student stem features of every distillation view at ``size`` px, the teacher members'
    calibrated answers on the same views at 224 px, and the images kept (clean view first)."""
    from pneumoscan.data.imaging import load_image
    from pneumoscan.training.distill_gate import GATE_SHIFTS

    loaders = {"clean": load_image} | (dict(GATE_SHIFTS) if kind == "shifted" else {})
    feats_t, feats_s, kept = [], [], None
    for _, big, small in paired_views(distil, loaders, size):
        kept = kept or big.samples
        feats_t.append(stem_features(teacher_stem, big.x))
        feats_s.append(stem_features(stem_s, small.x))
    return np.concatenate(feats_s), teacher.members(np.concatenate(feats_t)), kept


def gate_sets(teacher, teacher_stem, stem_s, held, never, size: int, ood: Path) -> list:
    """distill's gate sets (held out clean and shifted, the out-of-scope set when ``ood`` exists):
    the teacher's answers from 224 px, the student's features from ``size`` px of the same files."""
    from pneumoscan.data.imaging import load_image
    from pneumoscan.training.distill_gate import GATE_SHIFTS, GateSet, ood_images

    sets = []
    for name, big, small in paired_views(held, {"held out": load_image} | dict(GATE_SHIFTS), size):
        never_mask = np.array([name != "held out" or x.path in never for x in big.samples], bool)
        p, spread = teacher.targets(stem_features(teacher_stem, big.x))
        sets.append(GateSet(name, stem_features(stem_s, small.x), big.y, never_mask, p, spread))
    if ood.is_dir():
        x_big, names_big = ood_images(ood, TEACHER_SIZE)
        x_small, names_small = ood_images(ood, size)
        if names_big != names_small:
            raise RuntimeError("the out-of-scope set decoded differently at the two sizes")
        p, spread = teacher.targets(stem_features(teacher_stem, x_big))
        sets.append(
            GateSet("out of scope", stem_features(stem_s, x_small), None, np.ones(len(p), bool), p, spread)
        )
    return sets


def print_report(report: dict, size: int, kind: str) -> None:
    print(f"\nstudent at {size} px against the {TEACHER_SIZE}-px teacher ({kind} views):")
    for name, figures in [*report["sets"].items(), ("shifted, together", report["held_out_shifted"]),
                          ("never trained on", report["never_trained"])]:  # fmt: skip
        auc = (
            f"ROC AUC {figures['roc_auc_student']:.4f} vs {figures['roc_auc_teacher']:.4f}"
            if figures["roc_auc_teacher"] is not None
            else "no labels"
        )
        spread_r = float("nan") if figures["spread_correlation"] is None else figures["spread_correlation"]
        print(
            f"  {name:<30} n {figures['n']:>5}  {auc}  decisions agree {figures['decision_agreement']:.2%}  "
            f"max |dp| {figures['max_abs_p_diff']:.3f}  spread r {spread_r:.2f}"
        )
    print("  never trained on, teacher's outcome -> student's:", json.dumps(report["flips"]["counts"]))
    print(
        "  agreement with the student's probability and the teacher's spread "
        f"{report['flips']['agreement_teacher_spread']:.2%}; the teacher's probability and the student's "
        f"spread {report['flips']['agreement_student_spread']:.2%}"
    )


def flips(sets, metadata) -> dict:
    """On the images no member trained on: which three-outcome decisions change from the teacher's
    to the student's, and the agreement when one of the two inputs of the decision (probability,
    spread) is the teacher's: where the misses come from."""
    from pneumoscan.training.distill_gate import decider

    decide = decider(metadata)
    tp, ts, sp, ss = (
        np.concatenate([getattr(g, k)[g.never] for g in sets])
        for k in ("teacher_p", "teacher_spread", "student_p", "student_spread")
    )
    teacher, student = decide(tp, ts), decide(sp, ss)
    counts = Counter(f"{a} -> {b}" for a, b in zip(teacher, student, strict=True) if a != b)
    return {
        "n": len(tp),
        "counts": dict(counts.most_common()),
        "agreement_teacher_spread": float(np.mean(decide(sp, ts) == teacher)),
        "agreement_student_spread": float(np.mean(decide(tp, ss) == teacher)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=160, help="the student's input side in px (default 160)")
    parser.add_argument("--teacher", type=Path, default=REPO / "models" / "pneumoscan-mobilenetv2.keras")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "chest_xray" / "train")
    parser.add_argument("--ood", type=Path, default=SHARED / "data" / "ood")
    parser.add_argument("--views", choices=("clean", "shifted"), default="shifted")
    parser.add_argument("--limit", type=int, help="use at most this many images (a smoke run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import keras

    from pneumoscan.config import DistillConfig
    from pneumoscan.data.dataset import decode_samples
    from pneumoscan.training.distill import Teacher, distillation_split, fit_student
    from pneumoscan.training.distill_gate import gate, score_student

    started, timings = time.perf_counter(), {}

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 1)
        print(f"  {name}: {timings[name]:.0f} s", flush=True)

    cfg = DistillConfig(limit=args.limit)
    keras.utils.set_random_seed(cfg.seed)
    teacher = Teacher.load(args.teacher)
    if teacher.metadata.image_size != TEACHER_SIZE:
        raise SystemExit(f"expected a {TEACHER_SIZE}-px teacher, got {teacher.metadata.image_size}")
    teacher_stem, stem_s = teacher.stem(), resized_stem(teacher, args.size)
    distil, held, never = distillation_split(args.data, teacher.metadata, cfg)
    probe = decode_samples(held[:8], TEACHER_SIZE, progress=False).x
    copy = resized_stem(teacher, TEACHER_SIZE)  # the same copy at the teacher's size must be exact
    copy_error = float(np.abs(stem_features(copy, probe) - stem_features(teacher_stem, probe)).max())
    print(f"student at {args.size} px; stem copy checked at 224 px: max |diff| {copy_error:.2g}")
    print(f"distillation images {len(distil)}, held out {len(held)} ({len(never)} held out by every member)")
    lap("load")

    features, members, kept = distillation_views(teacher, teacher_stem, stem_s, distil, args.size, args.views)
    lap("distillation views: decode both sizes, stems, teacher")

    small_teacher = dataclasses.replace(teacher, tops=resized_tops(teacher, args.size))
    student, training = fit_student(small_teacher, features, members, cfg, n_clean=len(kept), progress=False)
    del features
    lap("student training")

    sets = gate_sets(teacher, teacher_stem, stem_s, held, never, args.size, args.ood)
    score_student(student, sets)
    report = gate(sets, teacher.metadata, max_auc_diff=cfg.max_auc_diff, min_agreement=cfg.min_agreement)
    lap("gate: decode both sizes, stems, scores")

    report["flips"] = flips(sets, teacher.metadata)
    print_report(report, args.size, args.views)
    verdict = "PASS" if report["passed"] else "FAIL: " + "; ".join(report["misses"])
    print(f"gate (ROC AUC within {cfg.max_auc_diff}, decisions >= {cfg.min_agreement:.0%}): {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"size": args.size, "views": args.views, "stem_copy_max_diff": copy_error, "gate": report,
               "training": training, "timings_s": timings, "config": dataclasses.asdict(cfg)}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
