"""Archive scoring: the same files scored by the single-process Predictor (``pneumoscan predict``'s
local engine) and by Ray on this machine's cores (``--engine ray``), in one run.

Measured:

- local: ``Predictor.predict_paths`` over all files (reading, decoding and the model, one process,
  one single-threaded LiteRT interpreter per core), images/s;
- Ray: the start of a local Ray (``ray.init``), then :func:`pneumoscan.inference.batch.score_archive`
  (Ray Data reads the files, one Predictor actor per core, rows committed as Parquet parts and
  consolidated), images/s over the whole job including actor start-up, and per core;
- that both give the same rows (paths, probabilities bit for bit, errors).

Ray on one machine pays for its scheduler, the object store, the actors' start-up and the
committed output; that price buys scaling out and resuming, and this benchmark says what it is.

Verdict, on the whole job: PASS when the rows are identical and Ray's whole job, from ``ray.init``
to the consolidated Parquet file (Ray's start, planning, the actors' start-up and model loads,
every file, the output), runs at >= 0.7x the images/s of the plain baseline measured in the same
run (the local engine, model load included); otherwise FAIL, with the ratio that missed. A short
job of 50 files, run after it on the same Ray (its workers warm), gives the fixed cost per job and
from it the rate of each file once a job runs: secondary figures, labelled, never judged.

Images: ``--n`` (default 1000) real 224-px JPEGs from ``../shared/data/chest_xray/train``, else
generated ones in a temporary folder. Model: ``--model`` (default: the bundled LiteRT export, what
an archive run should use; the Keras model gives the same rows more slowly).

Run: ``python benchmarks/batch_engine.py [--n 1000] [--model M]``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_parts import machine, machine_words  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRAIN = REPO_ROOT.parent / "shared" / "data" / "chest_xray" / "train"
TARGET_RATIO = 0.7
#: Files of the short job that measures a job's fixed cost.
FEW = 50


def pick_files(n: int, tmp: Path) -> tuple[list[str], str]:
    files = sorted(SHARED_TRAIN.glob("*/*.jpeg")) if SHARED_TRAIN.is_dir() else []
    if len(files) >= n:
        return sorted(str(p) for p in random.Random(0).sample(files, n)), f"{n} real 224-px JPEGs"
    from pneumoscan.testing.synthetic import write_image, xray_like

    paths = [
        str(write_image(tmp / f"gen-{i:05d}.jpeg", xray_like(224, 224, seed=i, pneumonia=i % 2 == 1)))
        for i in range(n)
    ]
    return paths, f"{n} generated 224-px JPEGs (no real data at {SHARED_TRAIN})"


def same_rows(rows: list[dict], files: list[str], local) -> bool:
    """Ray's rows against the local engine's results: same paths in order, probabilities bit for
    bit (NaN for errors), same errors."""
    if [r["path"] for r in rows] != files:
        return False
    ray_p = np.array([np.nan if r["p_pneumonia"] is None else r["p_pneumonia"] for r in rows])
    same_values = np.array_equal(ray_p, local.p_pneumonia, equal_nan=True)
    return bool(same_values and [r["error"] or None for r in rows] == local.errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images (default: %(default)s)")
    parser.add_argument("--model", type=Path, help="default: the bundled LiteRT export")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray

    from pneumoscan.config import DEFAULT_LITERT_MODEL_PATH
    from pneumoscan.inference.batch import LOCAL_OBJECT_STORE_BYTES, read_rows, score_archive
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.runtime import available_cpus

    model = args.model or DEFAULT_LITERT_MODEL_PATH
    cores = available_cpus()
    with tempfile.TemporaryDirectory(prefix="pneumoscan-batch-") as tmp_name:
        tmp = Path(tmp_name)
        files, source = pick_files(args.n, tmp)
        print(f"machine: {machine_words(machine())}")
        print(f"model: {model}; images: {source}")

        t0 = time.perf_counter()
        predictor = Predictor(model)
        local = predictor.predict_paths(files, progress=False)
        local_s = time.perf_counter() - t0
        local_rate = len(files) / local_s
        print(f"local, one process: {local_s:.1f} s, {local_rate:.1f} images/s (model load included)")
        del predictor

        t0 = time.perf_counter()
        ray.init(
            num_cpus=cores,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            logging_level="warning",
            log_to_driver=False,
        )
        ray_start = time.perf_counter() - t0
        try:
            # The judged job first, on a fresh Ray (no warm workers); then a short job of FEW files,
            # for the secondary figures: what a job costs before its first file.
            summary = score_archive(files, tmp / "out.parquet", model_path=model, progress=False)
            few = score_archive(files[:FEW], tmp / "few.parquet", model_path=model, progress=False)
        finally:
            ray.shutdown()
        ray_rate = len(files) / summary.seconds
        marginal = (len(files) - FEW) / (summary.seconds - few.seconds)
        rows = read_rows([tmp / "out.parquet"])

    same = same_rows(rows, files, local)
    whole_s = ray_start + summary.seconds
    whole_rate = len(files) / whole_s
    ratio = whole_rate / local_rate
    print(
        f"Ray, local on {cores} cores, whole job of {len(files)} files: {whole_s:.1f} s = Ray's start "
        f"{ray_start:.1f} s + the job {summary.seconds:.1f} s (planning, actors' start-up, output) "
        f"= {whole_rate:.1f} images/s"
    )
    print(
        f"  secondary, not judged: a job of {FEW} files {few.seconds:.1f} s; each file beyond the first "
        f"{FEW} {marginal:.1f} images/s ({marginal / local_rate:.2f}x the local engine); the job "
        f"without Ray's start {ray_rate:.1f} images/s ({ray_rate / local_rate:.2f}x)"
    )
    print(
        f"rows: {len(rows)} for {len(files)} files; identical paths, probabilities (bit for bit) and "
        f"errors: {same}"
    )
    ok = same and ratio >= TARGET_RATIO
    missed = [] if same else ["the rows differ"]
    if ratio < TARGET_RATIO:
        missed.append(f"the whole job ran at {ratio:.2f}x the local engine, below the target {TARGET_RATIO}x")
    print(
        f"verdict on the whole job: {'PASS' if ok else 'FAIL'}: Ray {whole_rate:.1f} images/s vs the local "
        f"engine {local_rate:.1f} images/s in the same run = {ratio:.2f}x (target >= {TARGET_RATIO}x)"
        + ("" if ok else f"; MISSED: {'; '.join(missed)}")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
