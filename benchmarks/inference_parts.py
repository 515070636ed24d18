"""The measurements of ``benchmarks/inference.py``, one function each: the machine, the stock
MobileNetV2 yardstick, the traced Keras baseline, the shipped path (one image end to end, the
whole ``pneumoscan predict`` job) and the out-of-scope guard's cost.

This module owns how each figure is taken; ``inference.py`` owns which run, the report and the
verdicts. Every function returns plain numbers (seconds as lists, rates in images/s) so the caller
can print them beside each other and write them to JSON.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: Threads of the yardstick's interpreter (the issue's definition: 2 threads, one image at a time).
YARDSTICK_THREADS = 2
#: Batch of the traced Keras baseline (the Predictor's own batch size).
BASELINE_BATCH = 64


def ms(times: list[float], q: float = 50) -> float:
    """Percentile ``q`` of ``times`` (seconds) in milliseconds."""
    return float(np.percentile(np.asarray(times) * 1000.0, q))


def machine() -> dict:
    """The CPU (lscpu's model name), its AVX2 and AVX-512 flags, the cores this process may use and
    the load average when measured: printed with every absolute figure."""
    from pneumoscan.runtime import available_cpus

    name = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        name = found.group(1).strip() if found else name
    except OSError:
        pass
    try:
        flags = set(re.findall(r"\S+", Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n")[0]))
    except (OSError, IndexError):
        flags = set()
    return {
        "cpu": name,
        "avx2": "avx2" in flags,
        "avx512": sorted(f for f in flags if f.startswith("avx512")),
        "cores": available_cpus(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def machine_words(m: dict) -> str:
    avx512 = ", ".join(m["avx512"][:3]) + ("..." if len(m["avx512"]) > 3 else "") if m["avx512"] else "no"
    return (
        f"{m['cpu']}, {m['cores']} cores for this process, AVX2 {'yes' if m['avx2'] else 'no'}, "
        f"AVX-512 {avx512}; load average {m['load_average_1min']} at the start"
    )


def yardstick_interpreter():
    """Stock MobileNetV2 (``include_top=False, pooling="avg"``, ImageNet weights, 224 x 224 x 3)
    converted to a float32 LiteRT file, on an interpreter of :data:`YARDSTICK_THREADS` threads."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from pneumoscan.training.export import convert_keras_model

    model = keras.applications.MobileNetV2(
        include_top=False, pooling="avg", weights="imagenet", input_shape=(224, 224, 3)
    )
    interpreter = Interpreter(model_content=convert_keras_model(model), num_threads=YARDSTICK_THREADS)
    interpreter.allocate_tensors()
    return interpreter


def time_yardstick(interpreter, reps: int) -> dict:
    """One image at a time, model only (one seeded random image, set and invoked each call):
    p50/p95 and images/s over ``reps`` calls after 10 warm-up calls."""
    index = interpreter.get_input_details()[0]["index"]
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    for _ in range(10):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    times = []
    start = time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        times.append(time.perf_counter() - t0)
    rate = reps / (time.perf_counter() - start)
    return {"p50_ms": ms(times), "p95_ms": ms(times, 95), "images_per_s": rate, "reps": reps}


def traced_keras(keras_path: Path, files: list[Path], reps: int) -> dict:
    """The best plain Keras way on the same ``.keras`` model: ``keras.saving.load_model``, one
    ``tf.function`` of ``model(x, training=False)``; the pipeline's own decoding
    (:func:`pneumoscan.data.imaging.load_image`, so the inputs are the same), on a thread pool of
    :func:`~pneumoscan.data.imaging.decode_workers` for the batch. No calibration, decision or
    guard. Single image: e2e (file -> raw output) and model only, p50; batch: images/s over all
    ``files`` in batches of :data:`BASELINE_BATCH`, file reading and decoding included, after the
    batch shapes were traced."""
    import keras
    import tensorflow as tf

    from pneumoscan.data.imaging import decode_workers, load_image
    from pneumoscan.models.artifacts import ModelMetadata

    size = ModelMetadata.read(keras_path).image_size
    model = keras.saving.load_model(keras_path, compile=False)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    for shape in {1, BASELINE_BATCH, len(files) % BASELINE_BATCH or BASELINE_BATCH}:
        call(np.zeros((shape, size, size, 1), np.float32))
    e2e, model_only = [], []
    for path in files[:reps]:
        t0 = time.perf_counter()
        x = load_image(path, size)[None].astype(np.float32)
        t1 = time.perf_counter()
        np.asarray(call(x))
        t2 = time.perf_counter()
        e2e.append(t2 - t0)
        model_only.append(t2 - t1)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(decode_workers()) as pool:
        x = np.stack(list(pool.map(lambda p: load_image(p, size), files))).astype(np.float32)
    for start in range(0, len(x), BASELINE_BATCH):
        np.asarray(call(x[start : start + BASELINE_BATCH]))
    rate = len(files) / (time.perf_counter() - t0)
    return {
        "e2e_p50_ms": ms(e2e),
        "e2e_p95_ms": ms(e2e, 95),
        "model_p50_ms": ms(model_only),
        "images_per_s": rate,
        "reps": len(e2e),
        "n": len(files),
    }


def predictor_figures(predictor, files: list[Path], reps: int) -> dict:
    """A Predictor in process: one image end to end (file bytes read -> ``predict_bytes``: decode,
    pixel checks, preprocess, model, calibration, decision, guard), model only
    (``predict_details`` on one preprocessed image), p50/p95; ``predict_paths`` over all ``files``
    (images/s, after a warm-up on the first 64)."""
    from pneumoscan.data.imaging import load_image

    for path in files[:3]:
        predictor.predict_bytes(path.read_bytes(), name=str(path))
    xs = [load_image(p, predictor.image_size)[None] for p in files[:reps]]
    e2e, model_only = [], []
    for path, x in zip(files[:reps], xs, strict=True):
        t0 = time.perf_counter()
        predictor.predict_bytes(path.read_bytes(), name=str(path))
        t1 = time.perf_counter()
        predictor.predict_details(x)
        t2 = time.perf_counter()
        e2e.append(t1 - t0)
        model_only.append(t2 - t1)
    predictor.predict_paths(files[:64], progress=False)
    t0 = time.perf_counter()
    result = predictor.predict_paths(files, progress=False)
    rate = len(files) / (time.perf_counter() - t0)
    return {
        "e2e_p50_ms": ms(e2e),
        "e2e_p95_ms": ms(e2e, 95),
        "model_p50_ms": ms(model_only),
        "model_p95_ms": ms(model_only, 95),
        "in_process_images_per_s": rate,
        "failed": sum(e is not None for e in result.errors),
        "reps": len(e2e),
        "n": len(files),
    }


def cli_job(files: list[Path], tmp: Path, model: Path | None) -> dict:
    """The whole job as a user runs it: ``pneumoscan predict FOLDER --csv OUT -q`` in a new process
    (interpreter start, imports, model load, every file, the CSV), over a folder holding copies of
    ``files``, and once over a folder of one file (the job's fixed cost). ``model`` None: the
    default model, what ships. Wall times; raises RuntimeError naming the command when it fails."""
    exe = Path(sys.executable).with_name("pneumoscan")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "pneumoscan"]
    extra = [] if model is None else ["--model", str(model)]
    out = {}
    for name, chosen in (("one_file", files[:1]), ("job", files)):
        folder = tmp / f"cli-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(chosen):
            shutil.copyfile(path, folder / f"{i:05d}-{path.name}")
        csv = tmp / f"cli-{name}.csv"
        argv = [*command, "predict", str(folder), "--csv", str(csv), "-q", *extra]
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
        if done.returncode not in (0, 1) or not csv.is_file():
            raise RuntimeError(f"{' '.join(argv[:3])} ... failed ({done.returncode}): {done.stderr[-800:]}")
        rows = csv.read_text().count("\n") - 1
        out[name] = {
            "files": len(chosen),
            "rows": rows,
            "seconds": seconds,
            "images_per_s": len(chosen) / seconds,
        }
    return out


#: Most the out-of-scope guard may add to single-image latency (p50, end to end).
MAX_GUARD_OVERHEAD = 0.15


def guard_cost(model_path: Path, files: list[Path], reps: int) -> dict | None:
    """Single-image ``predict_bytes`` p50 with the guard and without it (``scope_guard=False``),
    the two predictors alternating call by call over the same files (which goes first alternates
    too); None when the model has no embedding guard."""
    from pneumoscan.inference.predictor import Predictor

    guarded, bare = Predictor(model_path), Predictor(model_path, scope_guard=False)
    if guarded.guard is None:
        return None
    blobs = [p.read_bytes() for p in files[:reps]]
    for _ in range(3):
        guarded.predict_bytes(blobs[0])
        bare.predict_bytes(blobs[0])
    times: dict[bool, list[float]] = {True: [], False: []}
    for i, data in enumerate(blobs):
        for on in (True, False) if i % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            (guarded if on else bare).predict_bytes(data)
            times[on].append(time.perf_counter() - t0)
    on_ms, off_ms = ms(times[True]), ms(times[False])
    return {
        "with_guard_p50_ms": on_ms,
        "without_guard_p50_ms": off_ms,
        "overhead": on_ms / off_ms - 1.0,
        "target_max_overhead": MAX_GUARD_OVERHEAD,
        "met": on_ms / off_ms - 1.0 <= MAX_GUARD_OVERHEAD,
        "reps": len(blobs),
    }
