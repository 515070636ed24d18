"""Does the release's fast path give the release's answers, over several hold-outs?

    python benchmarks/fast_path.py [--seeds 1337,7,42] [--deltas 0.10:0.15,0.05:0.10,0:0]
        [--folder] [--cache runs/shared_body] [--json runs/fast_path.json]

Why (issue 18, tracker #21): ``pneumoscan export --fast-path`` ships one averaged body with the
members' own heads (:func:`pneumoscan.models.architectures.soup_ensemble`, untrained) that answers
first, at about one network's cost, and the ensemble, which answers instead wherever the fast
answer lies in the uncertain band or within ``delta`` of it, and is mixed in up to ``blend``
(:func:`pneumoscan.inference.decision.band_distance`, :class:`pneumoscan.inference.predictor.FastPath`).
The export checks the pair on the 1,239 images of its own check; this runs the same rule on
``pneumoscan distill``'s gate images of several distill seeds (each seed draws its own
patient-level hold-out: shifted views of the held-out films, films every member held out, the 632
out-of-scope radiographs), and judges it by distill's gate, unchanged (ROC AUC within 0.005;
three-outcome decisions agreeing on at least 99 % of the images no member trained on). It also
counts the ensemble's *uncertain* answers to which the fast path gives a stated outcome: the
band is the rule's safety net, and a gate of 99 % over mostly clear images can hide its loss.

Each ``--deltas`` entry is ``delta:blend`` or ``delta:blend:delta_above:blend_above`` (the pair used
above the band, where the averaged body errs upwards); ``0:0`` is the averaged body alone (nothing
handed to the ensemble). The fast path's rows are computed in Keras float32 on the gate's cached stem
features, mixed as :class:`~pneumoscan.inference.backends.CascadeBackend` mixes them (raw member
probabilities, then calibrated one by one), so figures may differ by an image or two from the
float16 LiteRT files.

``--folder`` adds the whole training folder through the shipped LiteRT files (``Predictor`` with
each rule): how the fast path's decisions cross the ensemble's. Most of its films were trained on
by two of the three members, so it is no held-out figure; it is where the export's values were
chosen (0.10 and 0.15; a first rule, 0.05 from a decision edge and 0.10, set before any figure was
seen, gave a stated outcome to 12 of the ensemble's 68 uncertain films; 0.20 and 0.25 above the
band were chosen on the file paths of ``benchmarks/input_paths.py``), and the gate images above
then measure them.

Also printed: the share of images the ensemble answered (wholly or in part), i.e. the fast path's
extra cost. Stem features are cached per seed in ``--cache`` (``distill``'s own cache, shared with
``benchmarks/shared_body.py``: about 3 minutes a seed to build on 2 cores). Needs ``../shared``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference_parts as parts  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def raw_members(tops: list, features: np.ndarray) -> np.ndarray:
    """Each member top's raw probability on cached stem features, ``(n, K)``."""
    from pneumoscan.training.distill import _predict

    return np.stack([_predict(top, features) for top in tops], axis=1)


def parse_rule(item: str):
    """``delta:blend[:delta_above:blend_above]`` -> a :class:`FastPath` with no file."""
    from pneumoscan.inference.predictor import FastPath

    values = [float(v) for v in item.split(":")]
    if len(values) not in (2, 4):
        raise SystemExit(f"--deltas: {item!r} is not delta:blend or delta:blend:delta_above:blend_above")
    return FastPath(Path("-"), values[0], values[1], {}, *values[2:])


def rule_fields(rule) -> dict:
    """The four numbers of a rule, as the JSON rows hold them."""
    return {k: getattr(rule, k) for k in ("delta", "blend", "delta_above", "blend_above")}


def rule_words(rule) -> str:
    words = f"delta {rule.delta}, blend {rule.blend}"
    if (rule.delta_above, rule.blend_above) != (rule.delta, rule.blend):
        words += f" (above the band {rule.delta_above}, {rule.blend_above})"
    return words


def run_seed(args, seed: int, rules: list) -> list[dict]:
    """Every rule on one distill seed's gate images."""
    import keras

    from pneumoscan.config import DistillConfig
    from pneumoscan.inference.backends import mix_rows
    from pneumoscan.inference.decision import UNCERTAIN, UncertaintyBand
    from pneumoscan.models.architectures import member_head, shared_body
    from pneumoscan.training.distill import Teacher, distillation_split, prepare_views
    from pneumoscan.training.distill_gate import decider, gate

    teacher = Teacher.load(args.teacher)
    meta = teacher.metadata
    cfg = DistillConfig(seed=seed, kind="shared-body", keep_cache=True)
    distil, held, never = distillation_split(args.data, meta, cfg)
    _, _, _, sets = prepare_views(
        teacher, args.data, args.cache / f"seed{seed}", distil, held, never, args.ood, cfg, {}, False
    )
    body = shared_body(teacher.tops)
    heads = [member_head(top, name=f"member_{k}_head") for k, top in enumerate(teacher.tops)]
    soup_tops = []
    for head in heads:
        cut = keras.Input(sets[0].features.shape[1:])
        soup_tops.append(keras.Model(cut, head(body(cut))))
    band = UncertaintyBand.from_dict(meta.decision["band"])
    calibrate = meta.calibration.transform
    raw = {s.name: (raw_members(soup_tops, s.features), raw_members(teacher.tops, s.features)) for s in sets}
    out = []
    for rule in rules:
        answered = []
        for s in sets:
            fast, full = raw[s.name]
            calibrated = np.asarray(calibrate(fast), dtype=np.float64)
            w = rule.ensemble_weight(calibrated.mean(axis=1), band=band, spread=calibrated.std(axis=1))
            mixed = np.asarray(calibrate(mix_rows(fast, full, w)), dtype=np.float64)
            s.student_p, s.student_spread = mixed.mean(axis=1), mixed.std(axis=1)
            answered.append((w > 0)[s.never])
        report = gate(sets, meta, max_auc_diff=cfg.max_auc_diff, min_agreement=cfg.min_agreement)
        nt = report["never_trained"]
        decide = decider(meta)
        teacher_says = np.concatenate([decide(s.teacher_p, s.teacher_spread)[s.never] for s in sets])
        fast_says = np.concatenate([decide(s.student_p, s.student_spread)[s.never] for s in sets])
        uncertain = teacher_says == UNCERTAIN
        out.append(
            {
                "seed": seed,
                **rule_fields(rule),
                "passed": report["passed"],
                "agreement": nt["decision_agreement"],
                "n": nt["n"],
                "agreeing": int(round(nt["decision_agreement"] * nt["n"])),
                "answered_by_the_ensemble": float(np.concatenate(answered).mean()),
                "max_abs_p_diff": nt["max_abs_p_diff"],
                "roc_auc_diff_held_out": report["sets"]["held out"]["roc_auc_diff"],
                "roc_auc_diff_shifted": report["held_out_shifted"]["roc_auc_diff"],
                "per_set": {k: v["decision_agreement"] for k, v in report["sets"].items()},
                "uncertain": int(uncertain.sum()),
                "uncertain_given_a_stated_outcome": int((uncertain & (fast_says != UNCERTAIN)).sum()),
                "stated_outcome_changed": int((~uncertain & (fast_says != teacher_says)).sum()),
            }
        )
    return out


def folder_crosstab(args, rules: list) -> list[dict]:
    """Every training film through the shipped LiteRT files, the ensemble alone and each rule:
    how the rule's decisions cross the ensemble's, and the share the ensemble answered."""
    import dataclasses

    from pneumoscan.data.imaging import list_input_files
    from pneumoscan.inference.decision import UNCERTAIN
    from pneumoscan.inference.predictor import Predictor

    files = list_input_files(args.data / "NORMAL") + list_input_files(args.data / "PNEUMONIA")
    ensemble = Predictor(args.export, fast_path=False)
    ensemble_says = np.array(
        [
            p.decision
            for p in ensemble.predict_paths(files, progress=False).predictions(
                ensemble.threshold, band=ensemble.band
            )
        ]
    )
    uncertain = ensemble_says == UNCERTAIN
    out = []
    for rule in rules:
        predictor = Predictor(args.export)
        if predictor.fast_path is None:
            raise SystemExit(f"{args.export} has no fast path (pneumoscan export --fast-path)")
        shipped = predictor.fast_path
        object.__setattr__(
            predictor, "fast_path", dataclasses.replace(rule, file=shipped.file, check=shipped.check)
        )
        says = np.array(
            [
                p.decision
                for p in predictor.predict_paths(files, progress=False).predictions(
                    predictor.threshold, band=predictor.band
                )
            ]
        )
        runtime = predictor.runtime
        out.append(
            {
                **rule_fields(rule),
                "films": len(files),
                "decisions_differ": int((says != ensemble_says).sum()),
                "uncertain": int(uncertain.sum()),
                "uncertain_given_a_stated_outcome": int((uncertain & (says != UNCERTAIN)).sum()),
                "stated_outcome_changed": int((~uncertain & (says != ensemble_says)).sum()),
                "answered_by_the_ensemble": runtime.full_rows / max(runtime.rows, 1),
            }
        )
        r = out[-1]
        print(
            f"training folder, {rule_words(rule)}: {r['decisions_differ']} of {r['films']} "
            f"decisions differ; of the ensemble's {r['uncertain']} uncertain films "
            f"{r['uncertain_given_a_stated_outcome']} get a stated outcome; stated outcomes changed "
            f"{r['stated_outcome_changed']}; the ensemble "
            f"answered {r['answered_by_the_ensemble']:.1%}",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teacher", type=Path, default=REPO / "models" / "pneumoscan-mobilenetv2.keras")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "chest_xray" / "train")
    parser.add_argument("--ood", type=Path, default=SHARED / "data" / "ood")
    parser.add_argument("--seeds", default="1337,7,42")
    parser.add_argument(
        "--deltas",
        default="0.10:0.15:0.20:0.25,0.10:0.15,0:0",
        help="delta:blend[:delta_above:blend_above], comma-separated (default: %(default)s)",
    )
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "shared_body")
    parser.add_argument(
        "--folder", action="store_true", help="also the whole training folder through the LiteRT files"
    )
    parser.add_argument(
        "--export", type=Path, default=REPO / "models" / "pneumoscan-mobilenetv2-litert.tflite"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"no training data at {args.data}: this benchmark needs ../shared", file=sys.stderr)
        return 2
    rules = [parse_rule(item) for item in args.deltas.split(",") if item]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(f"machine: {parts.machine_words(parts.machine())}", flush=True)
    rows, t0 = [], time.perf_counter()
    for seed in seeds:
        for rule, row in zip(rules, run_seed(args, seed, rules), strict=True):
            rows.append(row)
            print(
                f"seed {seed}, {rule_words(rule)}: decisions agree "
                f"{row['agreement']:.2%} ({row['agreeing']} of {row['n']}), "
                f"{'PASS' if row['passed'] else 'FAIL'}; the ensemble answered "
                f"{row['answered_by_the_ensemble']:.1%}; of its {row['uncertain']} uncertain answers "
                f"{row['uncertain_given_a_stated_outcome']} got a stated outcome, stated outcomes changed "
                f"{row['stated_outcome_changed']}; max |dp| {row['max_abs_p_diff']:.3f}; per set "
                + ", ".join(f"{k} {v:.2%}" for k, v in row["per_set"].items()),
                flush=True,
            )
    print("\nper rule, over the seeds (mean ± SD):")
    summary = []
    for rule in rules:
        chosen = [r for r in rows if all(r[k] == v for k, v in rule_fields(rule).items())]
        agree = np.array([r["agreement"] for r in chosen])
        share = np.array([r["answered_by_the_ensemble"] for r in chosen])
        sd = agree.std(ddof=1) if len(agree) > 1 else float("nan")
        summary.append(
            {
                **rule_fields(rule),
                "mean": agree.mean(),
                "sd": sd,
                "passed": sum(r["passed"] for r in chosen),
            }
        )
        print(
            f"  {rule_words(rule)}: decisions agree {agree.mean():.2%} ± {sd:.2%}, passed "
            f"{summary[-1]['passed']} of {len(chosen)}; the ensemble answered {share.mean():.1%}"
        )
    folder = folder_crosstab(args, rules) if args.folder else None
    print(f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"rows": rows, "summary": summary, "folder": folder}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
