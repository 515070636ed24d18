"""How a batch should run on the LiteRT runtime: the comparison behind ``LiteRTBackend``'s design.

    python benchmarks/litert_batching.py [--model M] [--batch 64] [--rounds 6] [--json FILE]

:class:`pneumoscan.inference.backends.LiteRTBackend` runs one image on one interpreter with every
core, and shares a batch out, whole images at a time, among one single-threaded interpreter per
core. This script times that against the other ways of running the same batch on the same file,
model only (the inputs are random 0..255 arrays of the model's shape; no decoding):

- ``per image, 1-thread interpreter per core`` (what the backend does with a batch);
- ``half-batch per call, 1-thread interpreter per core`` (each interpreter sized to its share);
- ``whole batch per call, one interpreter of all cores``;
- ``per image, one interpreter of all cores`` (what the backend does with one image, in a loop).

The modes run in interleaved rounds (the first round is a warm-up and is not counted), so a
change of load moves them alike; each is given as images/s (median over rounds) and as a ratio to
the backend's own mode, with the largest difference of its outputs from that mode's (the same
arithmetic should give the same numbers). The machine and its load are printed with the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_parts import machine, machine_words  # noqa: E402


def modes(model: Path, batch: int, cores: int) -> dict:
    """The four ways to run a batch (module docstring), each a function of the batch: the first and
    last are the backend itself (a batch, and one image at a time), the others its sessions
    (:class:`~pneumoscan.inference.backends._LiteRTSession`) used the other ways."""
    from pneumoscan.inference.backends import LiteRTBackend, _LiteRTSession

    backend = LiteRTBackend(model, cores)
    pool = concurrent.futures.ThreadPoolExecutor(cores)
    shares = np.array_split(np.arange(batch), cores)
    sized = [_LiteRTSession(model, 1) for _ in shares]
    whole = _LiteRTSession(model, cores)

    def share_per_core(x):
        return np.concatenate(list(pool.map(lambda k: sized[k].run(x[shares[k]]), range(cores))))

    return {
        "per image, 1-thread interpreter per core (the backend)": backend.run,
        "half-batch per call, 1-thread interpreter per core": share_per_core,
        "whole batch per call, one interpreter of all cores": whole.run,
        "per image, one interpreter of all cores": lambda x: np.concatenate(
            [backend.run(x[i : i + 1]) for i in range(len(x))]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.config import default_serving_model_path
    from pneumoscan.runtime import available_cpus

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a .tflite file (default: what `pneumoscan predict` uses)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds, after one warm-up (default: 6)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    model = args.model or default_serving_model_path()
    if model.suffix != ".tflite":
        parser.error(f"{model}: not a LiteRT (.tflite) file")
    cores = max(1, available_cpus())
    about = machine()
    from ai_edge_litert.interpreter import Interpreter

    shape = Interpreter(model_path=str(model)).get_input_details()[0]["shape"]
    x = np.random.default_rng(0).uniform(0, 255, (args.batch, *shape[1:])).astype(np.float32)
    runs = modes(model, args.batch, cores)
    reference = next(iter(runs.values()))(x)
    seconds = {name: [] for name in runs}
    largest = {}
    for r in range(args.rounds + 1):
        for name, run in runs.items():
            t0 = time.perf_counter()
            out = run(x)
            if r:  # the first round warms up
                seconds[name].append(time.perf_counter() - t0)
            largest[name] = float(np.abs(out - reference).max())
    rates = {name: args.batch / float(np.median(s)) for name, s in seconds.items()}
    base = next(iter(rates.values()))
    print(f"== machine: {machine_words(about)}")
    print(f"== {model}: a batch of {args.batch}, {cores} cores, {args.rounds} rounds (model only)")
    for name, rate in rates.items():
        print(f"  {name:<56} {rate:7.1f} img/s  {rate / base:5.2f}x  max |diff| {largest[name]:.1e}")
    if args.json:
        record = {"machine": about, "model": str(model), "batch": args.batch, "cores": cores}
        record["modes"] = {n: {"images_per_s": rates[n], "max_abs_diff": largest[n]} for n in runs}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
