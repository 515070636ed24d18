"""Inference speed of what ships, against the best plain Keras way and a stock MobileNetV2, in one run.

This script owns the inference benchmark's run, report and verdicts; the measurements themselves
are in ``benchmarks/inference_parts.py``.

**What ships** is the model ``pneumoscan predict`` uses without ``--model``
(:func:`pneumoscan.config.default_serving_model_path`: ``$PNEUMOSCAN_MODEL``, else the bundled LiteRT
export), or ``--model``. Its figures come first:

- one image end to end, p50/p95: file bytes -> ``Predictor.predict_bytes`` (decode, pixel checks,
  preprocess, model, calibration, decision, guard); and the model alone (``predict_details``);
- the whole job: ``pneumoscan predict FOLDER --csv OUT -q`` over ``--n`` files in a new process
  (start-up, imports, model load, every file and the CSV), wall time -> images/s; also one file
  (the job's fixed cost) and ``predict_paths`` in process, as secondary figures.

**Baseline**, the best plain Keras way: the same ``.keras`` model (the shipped export's source),
``keras.saving.load_model`` and one traced ``tf.function`` call, batched by 64, decoding by the
pipeline's own loader on a thread pool (:func:`inference_parts.traced_keras`).

**Yardstick**, measured in the same run: ``keras.applications.MobileNetV2(include_top=False,
pooling="avg", weights="imagenet", input_shape=(224, 224, 3))`` converted to float32 LiteRT, 2
threads, one image at a time, model only; timed before and after the shipped path, and the faster
of the two taken (the stricter yardstick for the verdicts).

Targets, judged on what ships only: single-image p50 end to end <= 1.3x the yardstick's p50, and
the whole ``pneumoscan predict`` job >= 1.0x the yardstick's images/s; the shipped file must pass
its parity check against its Keras source; the out-of-scope guard must add <= 15 % to single-image
p50. A missed target is printed as MISSED and the exit status is 1.

**Parity**, every check on images the model never trained on
(:func:`pneumoscan.training.export_check.check_images`: images held out by every member, shifted views of
held-out films, the out-of-scope set ``../shared/data/ood`` when present), gated on three-outcome
decision agreement >= 99 % and max |dp| <= 0.05: the shipped file against its Keras source, and
each fresh export of ``--exports`` (timed in process as secondary backends).

Images for speed: ``--n`` (default 600) real training JPEGs (``../shared/data/chest_xray/train``,
224 px; fine for speed, not for quality), spread over both classes, else generated 224-px JPEGs.
Every figure is printed with the machine (lscpu's model name, AVX2/AVX-512) and the load average;
timings on shared cores are contended. ``--json FILE`` writes every figure.

Run: ``python benchmarks/inference.py [--n 600] [--reps 100] [--exports none,float16,int8,int8-stem]
[--check-images K] [--model M] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import inference_parts as parts  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
#: Single-image p50 end to end on the shipped path, at most this multiple of the yardstick's p50.
TARGET_E2E_RATIO = 1.3
#: Whole-job ``pneumoscan predict`` images/s, at least this multiple of the yardstick's images/s.
TARGET_JOB_RATIO = 1.0

log = logging.getLogger("benchmarks.inference")


def pick_images(data_dir: Path | None, n: int, tmp: Path) -> tuple[list[Path], str]:
    """``n`` files spread evenly over the sorted files of ``data_dir`` (both classes; all when fewer),
    else ``n`` generated 224-px JPEGs; and what they are, in words."""
    from pneumoscan.data.imaging import IMAGE_SUFFIXES
    from pneumoscan.testing.synthetic import write_image, xray_like

    if data_dir is not None and data_dir.is_dir():
        files = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            step = max(1.0, len(files) / n)
            picked = [files[int(i * step)] for i in range(min(n, len(files)))]
            return (
                picked,
                f"{len(picked)} real training JPEGs of {data_dir} (speed only), spread over both classes",
            )
    out = []
    for i in range(n):
        rgb = np.repeat(xray_like(224, 224, seed=i)[..., None], 3, axis=2)
        out.append(write_image(tmp / "images" / f"IM-{i:04d}-0001.jpeg", rgb, quality=90))
    return out, f"{n} generated 224-px RGB JPEGs (no data at {data_dir})"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="what ships (default: what `pneumoscan predict` uses)")
    parser.add_argument("--n", type=int, default=600, help="images for the whole job (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=100, help="single-image calls (default: %(default)s)")
    parser.add_argument(
        "--data",
        type=Path,
        default=SHARED / "data" / "chest_xray",
        help="training data: speed images and the parity checks (default: %(default)s)",
    )
    parser.add_argument(
        "--ood", type=Path, default=SHARED / "data" / "ood", help="out-of-scope set (default: %(default)s)"
    )
    parser.add_argument(
        "--check-images",
        type=int,
        default=None,
        help="held-out images and shifted-view films per parity check (default: as `pneumoscan export`)",
    )
    parser.add_argument(
        "--exports",
        default="none,float16,dynamic,int8",
        help="fresh exports to check and time, comma-separated quantize modes, '' for none "
        "(default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write every figure here")
    return parser.parse_args(argv)


def check_shipped(keras_predictor, shipped_path: Path, data_dir: Path | None, ood: Path | None, limit):
    """On images the model never trained on: the shipped file, its fast path off, against its Keras
    source (the export's gate), and, when it has one, the fast path against the same source (a
    student's gate: decisions and ROC AUC). Returns the two reports (the second None without a
    fast path)."""
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.training.export_check import check_images, fast_path_parity, parity

    if data_dir is None:
        return {"passed": False, "error": "no training data: the parity check could not run"}, None
    if shipped_path == keras_predictor.model_path:
        return {"passed": True, "note": "what ships is the Keras model itself: nothing to compare"}, None
    check = check_images(keras_predictor, data_dir, ood_dir=ood, max_images=limit)
    export = parity(keras_predictor, Predictor(shipped_path, fast_path=False), check)
    cascade = Predictor(shipped_path)
    return export, (fast_path_parity(keras_predictor, cascade, check) if cascade.fast_path else None)


def without_fast_path(shipped_path: Path, tmp: Path) -> Path:
    """A copy of the shipped export whose sidecar names no fast path: the ensemble answering every
    image, for ``pneumoscan predict --model`` to time beside what ships."""
    from pneumoscan.models.artifacts import ModelMetadata

    folder = tmp / "ensemble-alone"
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / shipped_path.name
    shutil.copyfile(shipped_path, copy)
    meta = ModelMetadata.read(shipped_path)
    export = {k: v for k, v in meta.export.to_dict().items() if k != "fast_path"}
    meta.updated(export=export).write(copy)
    return copy


def fresh_exports(keras_predictor, modes: list[str], args, ood: Path | None, tmp: Path, files, reps) -> dict:
    """Each mode exported by :func:`export_tflite` (its own check), then timed in process; a mode
    refused by its check is converted without it and timed anyway, marked refused."""
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.training.export import CALIBRATED_MODES, convert_keras_model, export_tflite

    out = {}
    for mode in modes:
        path = tmp / f"fresh-{mode}.tflite"
        print(
            f"  export {mode}: converting and checking on images the model never trained on ...", flush=True
        )
        try:
            check = export_tflite(
                keras_predictor,
                out=path,
                quantize=mode,
                data_dir=args.data,
                progress=False,
                max_check_images=args.check_images,
                ood_dir=ood,
            )
        except ValueError as exc:
            check = {"passed": False, "error": str(exc)}
            representative = None
            if mode in CALIBRATED_MODES:
                from pneumoscan.data.imaging import load_image

                representative = np.stack([load_image(p, keras_predictor.image_size) for p in files[:100]])
            path.write_bytes(
                convert_keras_model(keras_predictor.model, quantize=mode, representative=representative)
            )
            keras_predictor.metadata.write(path)
        out[mode] = {"check": check, **parts.predictor_figures(Predictor(path), files, reps)}
    return out


def measure(args, ood: Path | None, tmp: Path) -> dict:
    """Every figure of the run, in the order taken (yardstick, shipped, yardstick, baseline, checks)."""
    from pneumoscan.config import default_serving_model_path
    from pneumoscan.inference.predictor import Predictor, source_keras_model

    data_dir = args.data if args.data.is_dir() else None
    shipped_path = args.model or default_serving_model_path()
    shipped = Predictor(shipped_path)
    keras_path = source_keras_model(shipped_path, shipped.metadata)
    if keras_path is None:
        raise FileNotFoundError(f"{shipped_path}: its Keras source (sidecar export.source) was not found")
    files, source = pick_images(
        data_dir / "train" if data_dir and (data_dir / "train").is_dir() else data_dir, args.n, tmp
    )
    reps = min(args.reps, len(files))
    r = {"machine": parts.machine(), "images": source, "n": len(files), "reps": reps}
    r["shipped_model"], r["keras_model"] = str(shipped_path), str(keras_path)
    print(
        f"machine: {parts.machine_words(r['machine'])}\nimages: {source}\nshipped: {shipped_path}", flush=True
    )
    print("yardstick (stock MobileNetV2, float32 LiteRT, 2 threads, model only) ...", flush=True)
    interpreter = parts.yardstick_interpreter()
    before = parts.time_yardstick(interpreter, max(reps, 100))
    print("shipped path: single image, in-process batch ...", flush=True)
    r["shipped"] = parts.predictor_figures(shipped, files, reps)
    print(f"shipped path: `pneumoscan predict` over {len(files)} files in a new process ...", flush=True)
    r["shipped"]["cli"] = parts.cli_job(files, tmp, args.model)
    r["fast_path"] = None if shipped.fast_path is None else {"file": str(shipped.fast_path.file)}
    if shipped.fast_path is not None:
        print("the same export with its fast path off (the ensemble answers every image) ...", flush=True)
        alone = without_fast_path(Path(shipped_path), tmp)
        r["ensemble_alone"] = parts.predictor_figures(Predictor(alone), files, reps)
        r["ensemble_alone"]["cli"] = parts.cli_job(files, tmp / "ensemble-alone", alone)
        runtime = shipped.runtime
        r["fast_path"]["answered_by_the_ensemble_while_timed"] = runtime.full_rows / max(runtime.rows, 1)
    after = parts.time_yardstick(interpreter, max(reps, 100))
    best = min((before, after), key=lambda y: y["p50_ms"])
    r["yardstick"] = {**best, "before": before, "after": after, "taken": "the faster of before/after"}
    print("baseline: traced, batched Keras call of the same .keras model ...", flush=True)
    r["baseline"] = parts.traced_keras(keras_path, files, reps)
    keras_predictor = Predictor(keras_path)
    print("parity: the shipped file against its Keras source ...", flush=True)
    r["parity_shipped"], r["fast_path_check"] = check_shipped(
        keras_predictor, Path(shipped_path), data_dir, ood, args.check_images
    )
    modes = [m.strip() for m in args.exports.split(",") if m.strip()]
    r["exports"] = fresh_exports(keras_predictor, modes, args, ood, tmp, files, reps) if data_dir else {}
    print("out-of-scope guard: with and without, alternating ...", flush=True)
    r["guard"] = parts.guard_cost(shipped_path, files, reps)
    r["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return r


def verdicts(r: dict) -> dict:
    """The targets, judged on what ships."""
    s, y = r["shipped"], r["yardstick"]
    e2e_ratio = s["e2e_p50_ms"] / y["p50_ms"]
    job_ratio = s["cli"]["job"]["images_per_s"] / y["images_per_s"]
    guard = r["guard"]
    return {
        "e2e_p50_vs_yardstick": {
            "ratio": e2e_ratio,
            "target": f"<= {TARGET_E2E_RATIO}",
            "met": e2e_ratio <= TARGET_E2E_RATIO,
        },
        "job_vs_yardstick": {
            "ratio": job_ratio,
            "target": f">= {TARGET_JOB_RATIO}",
            "met": job_ratio >= TARGET_JOB_RATIO,
        },
        "parity": {
            "met": bool(r["parity_shipped"].get("passed"))
            and (r.get("fast_path_check") is None or bool(r["fast_path_check"]["passed"]))
        },
        "guard": {"met": True if guard is None else bool(guard["met"])},
    }


def print_parity(name: str, check: dict) -> None:
    if "agreement" not in check:
        verdict = "pass" if check.get("passed") else "FAIL"
        print(f"  {name}: {verdict} ({check.get('note') or check.get('error')})")
        return
    kinds = ", ".join(f"{v} {k}" for k, v in check["kinds"].items())
    per_kind = "; ".join(
        f"{k} {v['agreement']:.1%} / {v['max_abs_prob_diff']:.4f}" for k, v in check["per_kind"].items()
    )
    print(
        f"  {name}: {'PASS' if check['passed'] else 'FAIL'} on {check['n_check']} images never trained on "
        f"({kinds}): decisions agree {check['agreement']:.2%} ({check['decisions_changed']} changed; "
        f">= 99 %), max |dp| {check['max_abs_prob_diff']:.4f} (<= 0.05); per kind agreement / max |dp|: "
        f"{per_kind}; guard verdicts agree {check['scope_agreement']:.1%}"
    )


def mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def print_figures(r: dict) -> None:
    s, b, y = r["shipped"], r["baseline"], r["yardstick"]
    job, one = s["cli"]["job"], s["cli"]["one_file"]
    m = r["machine"]
    print(f"\n== machine: {parts.machine_words(m)}; load average {m['load_average_1min_at_end']} at the end")
    print(f"== images: {r['images']}; single-image figures over {r['reps']} files\n")
    print(f"WHAT SHIPS: {r['shipped_model']}")
    print(
        f"  one image, file -> answer (Predictor.predict_bytes): p50 {s['e2e_p50_ms']:.2f} ms, "
        f"p95 {s['e2e_p95_ms']:.2f} ms; model only p50 {s['model_p50_ms']:.2f} ms"
    )
    print(
        f"  `pneumoscan predict` over {job['files']} files, whole job in a new process: "
        f"{job['seconds']:.1f} s = {job['images_per_s']:.1f} img/s ({job['rows']} rows)"
    )
    print(
        f"  secondary: `pneumoscan predict` of one file {one['seconds']:.1f} s (the job's fixed cost); "
        f"predict_paths in process {s['in_process_images_per_s']:.1f} img/s"
    )
    if r.get("ensemble_alone"):
        a, share = r["ensemble_alone"], r["fast_path"]["answered_by_the_ensemble_while_timed"]
        alone_rate = a["cli"]["job"]["images_per_s"]
        print(f"  its fast path answered first; the ensemble answered {share:.1%} of the images timed again")
        print(
            f"THE SAME EXPORT, FAST PATH OFF (the ensemble answers every image): one image p50 "
            f"{a['e2e_p50_ms']:.2f} ms (model {a['model_p50_ms']:.2f} ms), `pneumoscan predict` "
            f"{alone_rate:.1f} img/s; what ships is {a['e2e_p50_ms'] / s['e2e_p50_ms']:.2f}x as fast one "
            f"image at a time, {job['images_per_s'] / alone_rate:.2f}x the job rate"
        )
    print(
        f"YARDSTICK (stock MobileNetV2, float32 LiteRT, 2 threads, model only): p50 {y['p50_ms']:.2f} ms, "
        f"{y['images_per_s']:.1f} img/s (p50 before {y['before']['p50_ms']:.2f}, after "
        f"{y['after']['p50_ms']:.2f} ms)"
    )
    print(
        f"BASELINE (traced, batched Keras call of {Path(r['keras_model']).name}): one image p50 "
        f"{b['e2e_p50_ms']:.2f} ms (model {b['model_p50_ms']:.2f} ms), batch {b['images_per_s']:.1f} img/s"
    )
    print(
        f"  shipped vs baseline: one image p50 {b['e2e_p50_ms'] / s['e2e_p50_ms']:.2f}x faster; the whole "
        f"CLI job runs at {job['images_per_s'] / b['images_per_s']:.2f}x the baseline's in-process batch rate"
    )
    if r["exports"]:
        print("FRESH EXPORTS of the same Keras model (secondary; timed in process):")
        for mode, e in r["exports"].items():
            print(
                f"  {mode}: one image p50 {e['e2e_p50_ms']:.2f} ms, model {e['model_p50_ms']:.2f} ms, "
                f"in process {e['in_process_images_per_s']:.1f} img/s"
            )


def print_verdicts(r: dict, v: dict) -> None:
    e, j, g = v["e2e_p50_vs_yardstick"], v["job_vs_yardstick"], r["guard"]
    print("\nVERDICTS (on what ships; ratios of figures from this run):")
    print(
        f"  single-image p50 end to end / yardstick p50 = {e['ratio']:.2f}x "
        f"(target {e['target']}): {mark(e['met'])}"
    )
    print(
        f"  `pneumoscan predict` img/s / yardstick img/s = {j['ratio']:.2f}x "
        f"(target {j['target']}): {mark(j['met'])}"
    )
    print_parity("parity of the shipped file (fast path off) with its Keras source", r["parity_shipped"])
    if r.get("fast_path_check"):
        c = r["fast_path_check"]
        print(
            f"  the fast path against the Keras ensemble: {'PASS' if c['passed'] else 'FAIL'} on "
            f"{c['n_check']} images never trained on: decisions agree {c['agreement']:.2%} "
            f"({c['decisions_changed']} changed; >= 99 %), ROC AUC {c['auc_fast_path']:.4f} vs "
            f"{c['auc_keras']:.4f} (within 0.005), max |dp| {c['max_abs_prob_diff']:.4f} (recorded, not "
            f"gated), {c['answered_by_the_ensemble']:.1%} answered by the ensemble"
        )
    if g is None:
        print("  out-of-scope guard: the model has no embedding guard; not compared")
    else:
        print(
            f"  the out-of-scope guard adds {g['overhead']:+.1%} to one-image p50 "
            f"({g['with_guard_p50_ms']:.2f} vs {g['without_guard_p50_ms']:.2f} ms; "
            f"target <= {g['target_max_overhead']:.0%}): {mark(g['met'])}"
        )
    for mode, e in r["exports"].items():
        print_parity(f"fresh {mode} export's own check (not what ships)", e["check"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if (SHARED / "keras" / "models").is_dir():
        os.environ.setdefault("KERAS_HOME", str(SHARED / "keras"))
    tmp = Path(tempfile.mkdtemp(prefix="pneumoscan-bench-"))
    atexit.register(shutil.rmtree, tmp, True)
    ood = args.ood if args.ood.is_dir() else None
    r = measure(args, ood, tmp)
    v = verdicts(r)
    print_figures(r)
    print_verdicts(r, v)
    missed = [k for k, x in v.items() if not x["met"]]
    print(f"\noverall: {'targets MISSED: ' + ', '.join(missed) if missed else 'all targets MET'}")
    ok = not missed
    if args.json:
        args.json.write_text(json.dumps({**r, "verdicts": v}, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
