"""The ``pneumoscan`` command line: argparse subcommands that build options, then call the library.

Only this module and :mod:`pneumoscan.app` print. Exit codes: 0 success, 1 the job ran but some
input failed (e.g. unreadable files in ``predict``), 2 bad usage or a fatal, explained error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from pneumoscan import __version__
from pneumoscan.config import ARCHITECTURES, DISCLAIMER, AugmentConfig, TrainConfig

log = logging.getLogger("pneumoscan")


class CommandError(Exception):
    """A fatal error with a message meant for the user (no traceback)."""


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {value}")
    return path


def _model_arg(
    parser: argparse.ArgumentParser, bundled: str = "the bundled models/pneumoscan-mobilenetv2.keras"
) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a .keras or .tflite model with its .meta.json sidecar "
        f"(default: {bundled}, or $PNEUMOSCAN_MODEL)",
    )


def _load_predictor(args, **kwargs):
    from pneumoscan.predictor import Predictor

    try:
        return Predictor(args.model, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


# --------------------------------------------------------------------------- data-report


def cmd_data_report(args) -> int:
    from pneumoscan.report import build_report, format_report

    report = build_report(args.data_dir, out_dir=args.out, progress=not args.quiet)
    print(format_report(report))
    print(f"\nreport.json and figures written to {args.out}")
    return 0


# --------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    from pneumoscan import training

    if args.resume:
        metrics = training.resume(args.resume, progress=not args.quiet)
        run_dir = args.resume
    else:
        if args.data is None or args.out is None:
            raise CommandError("train needs --data DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
        defaults = TrainConfig()
        options = {
            k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None
        }
        cfg = TrainConfig(**{**defaults.to_dict(), "augment": AugmentConfig(), **options})
        run_dir = args.out
        metrics = training.train(cfg, args.data, args.out, progress=not args.quiet)
    from pneumoscan.evaluation import format_metrics_table

    print(format_metrics_table(metrics))
    print(f"\nrun written to {run_dir} (model.keras, validation.json, learning_curves.png, ...)")
    return 0


# --------------------------------------------------------------------------- evaluate / compare


def cmd_evaluate(args) -> int:
    from pneumoscan.data import discover_split
    from pneumoscan.evaluation import evaluate_folder, format_metrics_table

    samples = discover_split(args.data, prefer="test")
    if not samples:
        raise CommandError(f"{args.data}: no images found under NORMAL/ and PNEUMONIA/")
    predictor = _load_predictor(args, threshold=args.threshold)
    metrics = evaluate_folder(samples, predictor, out_dir=args.out, tta=args.tta, progress=not args.quiet)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_metrics_table(metrics))
    if metrics.get("skipped"):
        print(f"\n{len(metrics['skipped'])} file(s) could not be read and were skipped:")
        for item in metrics["skipped"]:
            print(f"  {item['path']}: {item['error']}")
    print(f"\nmetrics.json and figures written to {args.out}")
    return 0


def cmd_compare(args) -> int:
    from pneumoscan.evaluation import compare_runs

    print(compare_runs(args.run_dirs, out_dir=args.out))
    print(f"\ncomparison.md and comparison.png written to {args.out}")
    return 0


# --------------------------------------------------------------------------- predict / explain / export


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    from pneumoscan.imaging import list_input_files

    files = []
    for item in inputs:
        if item.is_dir():
            files += list_input_files(item)  # every file, whatever its suffix: each gets a row
        else:
            files.append(item)  # a missing or odd file is reported as an error row, not dropped
    return files


def cmd_predict(args) -> int:
    import csv

    files = _expand_inputs(args.paths)
    if not files:
        raise CommandError("no image files found in the given paths")
    predictor = _load_predictor(args, threshold=args.threshold)
    results = predictor.predict_paths(files, tta=args.tta, progress=not args.quiet)
    rows = []
    for path, pred, err in zip(files, results.predictions(predictor.threshold), results.errors, strict=True):
        if pred is None:
            rows.append([str(path), "", "", "", "", f"{predictor.threshold:.4f}", err])
        else:
            rows.append(
                [
                    str(path),
                    f"{pred.p_normal:.4f}",
                    f"{pred.p_pneumonia:.4f}",
                    pred.label,
                    f"{pred.confidence:.4f}",
                    f"{pred.threshold:.4f}",
                    "",
                ]
            )
    header = ["path", "p_normal", "p_pneumonia", "label", "confidence", "threshold", "error"]
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    width = min(60, max(len(r[0]) for r in rows))
    print(f"{'file':<{width}}  {'P(normal)':>9}  {'P(pneum.)':>9}  {'prediction':<10}  {'confidence':>10}")
    for r in rows:
        name = r[0] if len(r[0]) <= width else "..." + r[0][-(width - 3) :]
        if r[6]:
            print(f"{name:<{width}}  ERROR: {r[6]}")
        else:
            print(
                f"{name:<{width}}  {float(r[1]):>9.1%}  {float(r[2]):>9.1%}  {r[3]:<10}  {float(r[4]):>10.1%}"
            )
    failed = sum(1 for r in rows if r[6])
    print(
        f"\n{len(rows) - failed} predicted, {failed} failed; "
        f"threshold {predictor.threshold:.3f} on P(pneumonia)"
    )
    if args.csv:
        print(f"CSV written to {args.csv}")
    print(DISCLAIMER)
    return 1 if failed else 0


def cmd_explain(args) -> int:
    from pneumoscan.explain import explain_file

    predictor = _load_predictor(args)
    prediction = explain_file(predictor, args.image, out=args.out)
    print(
        f"{args.image}: {prediction.label} (P(pneumonia) {prediction.p_pneumonia:.1%}, "
        f"threshold {prediction.threshold:.3f}); Grad-CAM overlay written to {args.out}"
    )
    print(DISCLAIMER)
    return 0


def cmd_export(args) -> int:
    from pneumoscan.export import export_tflite

    predictor = _load_predictor(args)
    report = export_tflite(
        predictor, out=args.out, quantize=args.quantize, data_dir=args.data, progress=not args.quiet
    )
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- app


def cmd_app(args) -> int:
    app_file = Path(__file__).with_name("app.py")
    env = dict(os.environ)
    if args.model is not None:
        if not args.model.is_file():
            raise CommandError(f"model file not found: {args.model}")
        env["PNEUMOSCAN_MODEL"] = str(args.model.resolve())
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_file),
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(args.max_upload_mb),
        "--browser.gatherUsageStats",
        "false",
    ]
    if args.address:
        command += ["--server.address", args.address]
    print(f"pneumoscan app on http://{args.address or 'localhost'}:{args.port}  (Ctrl+C to stop)", flush=True)
    # Replace this process with Streamlit so that signals (Ctrl+C, SIGTERM) reach the server itself.
    os.execve(sys.executable, command, env)
    return 0  # not reached


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumoscan",
        description="Pneumonia screening in chest X-rays. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "data-report",
        help="scan a dataset: counts, patients, sizes, duplicates, bad files",
        description="Scan a dataset (a root with train/ test/ or one split folder with NORMAL/ and "
        "PNEUMONIA/), print a summary and write report.json and figures.",
    )
    p.add_argument("data_dir", type=_existing_dir, help="dataset root or split folder")
    p.add_argument(
        "--out", type=Path, default=Path("out/data-report"), help="output folder (default: %(default)s)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_report)

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a model into a run folder",
        description="Train baseline, regularized or mobilenetv2 on a training folder, with a "
        "patient-level validation split carved from it. Writes model.keras, its "
        ".meta.json, config.json, history.csv, learning_curves.png, validation.json.",
    )
    p.add_argument(
        "--data", type=_existing_dir, help="training data: a split folder or a root holding train/"
    )
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument(
        "--resume",
        type=_existing_dir,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint (other options are read from it)",
    )
    p.add_argument("--arch", choices=ARCHITECTURES, help=f"model (default: {d.arch})")
    p.add_argument(
        "--image-size", dest="image_size", type=int, help=f"input side in px (default: {d.image_size})"
    )
    p.add_argument("--batch-size", dest="batch_size", type=int, help=f"default: {d.batch_size}")
    p.add_argument("--epochs", type=int, help=f"epochs of the plain CNNs (default: {d.epochs})")
    p.add_argument(
        "--learning-rate", dest="learning_rate", type=float, help=f"plain CNNs (default: {d.learning_rate})"
    )
    p.add_argument(
        "--head-epochs", dest="head_epochs", type=int, help=f"MobileNetV2 phase 1 (default: {d.head_epochs})"
    )
    p.add_argument(
        "--head-learning-rate", dest="head_learning_rate", type=float, help=f"default: {d.head_learning_rate}"
    )
    p.add_argument(
        "--finetune-epochs",
        dest="finetune_epochs",
        type=int,
        help=f"MobileNetV2 phase 2, 0 to skip (default: {d.finetune_epochs})",
    )
    p.add_argument(
        "--finetune-learning-rate",
        dest="finetune_learning_rate",
        type=float,
        help=f"default: {d.finetune_learning_rate}",
    )
    p.add_argument(
        "--unfreeze-blocks",
        dest="unfreeze_blocks",
        type=int,
        help=f"top MobileNetV2 blocks to fine-tune (default: {d.unfreeze_blocks})",
    )
    p.add_argument(
        "--augmented-views",
        dest="augmented_views",
        type=int,
        help=f"augmented copies of each image in the feature cache (default: {d.augmented_views})",
    )
    p.add_argument(
        "--imbalance",
        choices=("class_weight", "balanced_sampling", "none"),
        help=f"how class imbalance is handled (default: {d.imbalance})",
    )
    p.add_argument("--val-fraction", dest="val_fraction", type=float, help=f"default: {d.val_fraction}")
    p.add_argument(
        "--target-recall",
        dest="target_recall",
        type=float,
        help=f"recall the operating threshold must reach on validation (default: {d.target_recall})",
    )
    p.add_argument("--seed", type=int, help=f"default: {d.seed}")
    p.add_argument(
        "--distribute",
        choices=("none", "mirrored"),
        help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or all logical CPUs)",
    )
    p.add_argument("--limit", type=int, help="use at most this many images (smoke tests)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="metrics, confidence intervals and figures on a labelled folder",
        description="Evaluate a model on SPLIT_DIR (NORMAL/ and PNEUMONIA/, or a root with test/).",
    )
    p.add_argument(
        "--data", type=_existing_dir, required=True, help="labelled split folder, or a root with test/"
    )
    _model_arg(p)
    p.add_argument("--threshold", type=float, help="operating threshold (default: the model's stored one)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (4 views)")
    p.add_argument(
        "--out", type=Path, default=Path("out/evaluation"), help="output folder (default: %(default)s)"
    )
    p.add_argument("--json", type=Path, help="also write metrics.json to this path")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="compare training runs on their common validation split")
    p.add_argument(
        "run_dirs", nargs="+", type=_existing_dir, help="run folders written by `pneumoscan train`"
    )
    p.add_argument(
        "--out", type=Path, default=Path("out/compare"), help="output folder (default: %(default)s)"
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="predict files or folders (JPEG, PNG, DICOM)")
    p.add_argument("paths", nargs="+", type=Path, help="image files or folders (searched recursively)")
    _model_arg(p)
    p.add_argument("--csv", type=Path, help="write one row per file here")
    p.add_argument("--threshold", type=float, help="operating threshold (default: the model's stored one)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation (4 views)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="Grad-CAM heatmap of one image")
    p.add_argument("image", type=Path, help="an X-ray (JPEG, PNG or DICOM)")
    _model_arg(p)
    p.add_argument(
        "--out", type=Path, default=Path("heatmap.png"), help="PNG to write (default: %(default)s)"
    )
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("export", help="export to LiteRT (TFLite), checked against the Keras model")
    _model_arg(p)
    p.add_argument("--format", choices=("tflite",), default="tflite", help="only tflite for now")
    p.add_argument("--quantize", choices=("none", "float16", "int8"), default="none")
    p.add_argument(
        "--data",
        type=_existing_dir,
        help="training data for int8 calibration and the validation check "
        "(default: the data the model was trained on, when present)",
    )
    p.add_argument("--out", type=Path, required=True, help=".tflite file to write")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("app", help="start the Streamlit screening app")
    _model_arg(
        p,
        "the bundled model's LiteRT export models/pneumoscan-mobilenetv2-litert.tflite, with Grad-CAM "
        "from the .keras model it was exported from",
    )
    p.add_argument("--port", type=int, default=8501, help="default: %(default)s")
    p.add_argument("--address", default=None, help="address to listen on (default: Streamlit's)")
    p.add_argument(
        "--max-upload-mb",
        dest="max_upload_mb",
        type=int,
        default=50,
        help="largest upload accepted, in MB (default: %(default)s)",
    )
    p.set_defaults(func=cmd_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
