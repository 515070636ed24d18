"""What the model costs by input side and member count, against the stock MobileNetV2 yardstick.

    python benchmarks/model_cost.py [--sizes 224,160,128] [--members 3] [--unfreeze-blocks 3]
                                    [--shared-body] [--rounds 30] [--json FILE]

Issue 18's targets leave the model about half a stock MobileNetV2 (README, "Inference"). This
script measures, model only, which shapes of this project's network fit: for each input side,
the single model (one MobileNetV2 with the project's head, 1 grey channel in) and an ensemble of
``--members`` tops on one frozen stem cut below the top ``--unfreeze-blocks`` blocks (3, the
released layout, cuts after ``block_13``; 11, what ``pneumoscan train --unfreeze-blocks 11`` trains,
after ``block_5``; a comma list measures each cut;
:func:`~pneumoscan.models.architectures.build_ensemble`), with ``--shared-body`` also the layout of
``pneumoscan distill --kind shared-body`` (ONE body above the cut, ``--members`` heads on it;
:func:`~pneumoscan.models.architectures.build_shared_ensemble`), each converted to float32 LiteRT and run
on an interpreter of 2 threads, one image at a time, beside the yardstick (stock MobileNetV2, 224 x
224 x 3, float32, 2 threads; :func:`inference_parts.yardstick_interpreter`).

The weights are random (a network's cost does not depend on its weights); nothing is trained and
no quality is measured here. The interpreters are timed in interleaved rounds (each round runs
every model ``--per-round`` times, in turn), so a change of load during the run moves all of them
alike; the ratio to the yardstick is computed on p50s of the same rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_parts import YARDSTICK_THREADS, machine, machine_words, ms, yardstick_interpreter  # noqa: E402


def interpreter_of(model):
    from ai_edge_litert.interpreter import Interpreter

    from pneumoscan.training.export import convert_keras_model

    interpreter = Interpreter(model_content=convert_keras_model(model), num_threads=YARDSTICK_THREADS)
    interpreter.allocate_tensors()
    return interpreter


def candidates(
    sizes: list[int], members: int, unfreeze: list[int] | None = None, *, shared: bool = False
) -> dict:
    """``{name: keras model}``: the single model and, per cut (top blocks fine-tuned), the ensemble
    at each side, and with ``shared`` the shared-body layout on the same cut (random weights)."""
    import keras

    from pneumoscan.models.architectures import (
        build_ensemble,
        build_mobilenetv2,
        build_shared_ensemble,
        member_head,
        mobilenet_cut_layer,
        shared_body,
    )

    unfreeze = unfreeze or [3]
    out = {}
    for size in sizes:
        single = build_mobilenetv2(size, weights=None)
        out[f"{size} px, single model"] = single
        for blocks in unfreeze:
            cut = mobilenet_cut_layer(single, blocks)
            tops = []
            for k in range(members):
                source = build_mobilenetv2(size, weights=None)
                tops.append(keras.Model(source.get_layer(cut).output, source.output, name=f"member_{k}"))
            name = f"{size} px, {members} tops on one stem"
            if unfreeze != [3]:  # the released layout keeps the name earlier runs printed
                name += f", top {blocks} blocks"
            out[name] = build_ensemble(build_mobilenetv2(size, weights=None), cut, tops)
            if shared:
                heads = [member_head(top, name=f"member_{k}_head") for k, top in enumerate(tops)]
                body = shared_body(tops)
                out[f"{size} px, one shared body, {members} heads"] = build_shared_ensemble(
                    build_mobilenetv2(size, weights=None), cut, body, heads
                )
    return out


def time_interleaved(interpreters: dict, rounds: int, per_round: int) -> dict[str, list[float]]:
    """Seconds of every call, per interpreter, over ``rounds`` rounds of ``per_round`` calls each."""
    rng = np.random.default_rng(0)
    feeds = {}
    for name, it in interpreters.items():
        detail = it.get_input_details()[0]
        x = rng.uniform(-1 if name == "yardstick" else 0, 1 if name == "yardstick" else 255, detail["shape"])
        feeds[name] = (detail["index"], x.astype(np.float32))
        for _ in range(10):  # warm-up
            it.set_tensor(*feeds[name])
            it.invoke()
    times: dict[str, list[float]] = {name: [] for name in interpreters}
    for _ in range(rounds):
        for name, it in interpreters.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                it.set_tensor(*feeds[name])
                it.invoke()
                times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,160,128")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument(
        "--unfreeze-blocks",
        default="3",
        help="top blocks each member owns, a comma list (default: 3, as released)",
    )
    parser.add_argument(
        "--shared-body",
        action="store_true",
        help="also measure one shared body with --members heads (distill --kind shared-body)",
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    measured_on = machine()
    print(f"machine: {machine_words(measured_on)}", flush=True)
    interpreters = {"yardstick": yardstick_interpreter()}
    sizes = [int(s) for s in args.sizes.split(",")]
    unfreeze = [int(b) for b in args.unfreeze_blocks.split(",")]
    for name, model in candidates(sizes, args.members, unfreeze, shared=args.shared_body).items():
        interpreters[name] = interpreter_of(model)
    times = time_interleaved(interpreters, args.rounds, args.per_round)
    base = ms(times["yardstick"])
    print(
        f"\nmodel only, float32 LiteRT, {YARDSTICK_THREADS} threads, one image;"
        f" {args.rounds} interleaved rounds"
    )
    print(f"{'':<44}{'p50 ms':>9}{'p95 ms':>9}{'x yardstick':>13}")
    rows = {}
    for name, t in times.items():
        rows[name] = {
            "p50_ms": ms(t),
            "p95_ms": ms(t, 95),
            "ratio_to_yardstick": ms(t) / base,
            "calls": len(t),
        }
        print(f"{name:<44}{ms(t):>9.2f}{ms(t, 95):>9.2f}{ms(t) / base:>12.2f}x")
    print(
        "\nA shape fits when its p50 is at most 1.3x the yardstick's p50 less what everything but the"
        " model takes (benchmarks/inference.py: one image end to end minus model only, on this machine)."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": measured_on, "args": vars(args) | {"json": str(args.json)}, "rows": rows},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
