"""The ``pneumoscan`` command line: argparse subcommands that build options, then call the library.

Only this module and :mod:`pneumoscan.interfaces.app` print. Exit codes: 0 success, 1 the job ran but some
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
from pneumoscan.config import DISCLAIMER, DISTRIBUTE_MODES, IMBALANCE_MODES, AugmentConfig, TrainConfig

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
    from pneumoscan.inference.predictor import Predictor

    try:
        return Predictor(args.model, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


# --------------------------------------------------------------------------- data-report


def cmd_data_report(args) -> int:
    from pneumoscan.data.report import build_report, format_report

    report = build_report(args.data_dir, out_dir=args.out, progress=not args.quiet)
    print(format_report(report))
    print(f"\nreport.json and figures written to {args.out}")
    return 0


# --------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    from pneumoscan.training import engine

    if args.resume:
        metrics = engine.resume(args.resume, progress=not args.quiet)
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
        metrics = engine.train(cfg, args.data, args.out, progress=not args.quiet)
    from pneumoscan.evaluation.metrics import format_metrics_table

    print(format_metrics_table(metrics))
    print(f"\nrun written to {run_dir} (model.keras, validation.json, learning_curves.png, ...)")
    return 0


# --------------------------------------------------------------------------- evaluate / compare


def cmd_evaluate(args) -> int:
    from pneumoscan.data.dataset import discover_split
    from pneumoscan.evaluation.evaluate import evaluate_folder
    from pneumoscan.evaluation.metrics import format_metrics_table

    samples = discover_split(args.data, prefer="test")
    if not samples:
        raise CommandError(f"{args.data}: no images found under NORMAL/ and PNEUMONIA/")
    predictor = _load_predictor(args, threshold=args.threshold)
    metrics = evaluate_folder(
        samples,
        predictor,
        out_dir=args.out,
        tta=args.tta,
        progress=not args.quiet,
        allow_training_data=args.allow_training_data,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_metrics_table(metrics))
    scope = metrics.get("scope") or {}
    print(
        f"\nOut-of-scope guard: {scope.get('flagged', 0)} of {len(samples)} image(s) flagged "
        f"({scope.get('not_radiograph', 0)} not radiographs); decisions: "
        + ", ".join(f"{k} {v}" for k, v in sorted((scope.get("decisions") or {}).items()))
    )
    if scope.get("in_scope"):
        print("Metrics on the in-scope images only:")
        print(format_metrics_table(scope["in_scope"]))
    if metrics.get("skipped"):
        print(f"\n{len(metrics['skipped'])} file(s) could not be read and were skipped:")
        for item in metrics["skipped"]:
            print(f"  {item['path']}: {item['error']}")
    print(f"\nmetrics.json and figures written to {args.out}")
    return 1 if metrics.get("skipped") else 0  # some input failed: the report holds the rest


def cmd_compare(args) -> int:
    from pneumoscan.evaluation.comparison import compare_runs

    print(compare_runs(args.run_dirs, out_dir=args.out))
    print(f"\ncomparison.md and comparison.png written to {args.out}")
    return 0


# --------------------------------------------------------------------------- predict / explain / export


def _expand_inputs(inputs: list[Path]) -> list[Path]:
    from pneumoscan.data.imaging import list_input_files

    files = []
    for item in inputs:
        if item.is_dir():
            files += list_input_files(item)  # every file, whatever its suffix: each gets a row
        else:
            files.append(item)  # a missing or odd file is reported as an error row, not dropped
    return files


def cmd_predict(args) -> int:
    from pneumoscan.inference.results import PREDICTION_COLUMNS, prediction_row, write_rows

    if args.engine == "ray":
        return _predict_on_ray(args)
    if args.ray_address is not None or args.ray_actors is not None:
        raise CommandError("--ray-address and --ray-actors need --engine ray")
    files = _expand_inputs([Path(p) for p in args.paths])
    if not files:
        raise CommandError("no image files found in the given paths")
    predictor = _load_predictor(args, threshold=args.threshold)
    if args.csv:  # before predicting, so a CSV path that cannot be made fails fast
        args.csv.parent.mkdir(parents=True, exist_ok=True)
    results = predictor.predict_paths(files, tta=args.tta, progress=not args.quiet)
    predictions = results.predictions(predictor.threshold, band=predictor.band)
    rows = [
        prediction_row(path, pred or err, threshold=predictor.threshold)
        for path, pred, err in zip(files, predictions, results.errors, strict=True)
    ]
    if args.csv:
        write_rows(args.csv, PREDICTION_COLUMNS, rows, digits=4)
    if args.out:
        _write_parquet(args.out, rows)
    width = min(60, max(len(r["path"]) for r in rows))
    print(f"{'file':<{width}}  {'P(normal)':>9}  {'P(pneum.)':>9}  {'decision':<21}  {'confidence':>10}")
    for r in rows:
        name = r["path"] if len(r["path"]) <= width else "..." + r["path"][-(width - 3) :]
        if r["error"]:
            print(f"{name:<{width}}  ERROR: {r['error']}")
        elif r["p_pneumonia"] is None:  # not a radiograph: no probabilities
            print(f"{name:<{width}}  OUT OF SCOPE: {r['scope_reason']}")
        else:
            # Rounded as in the CSV first, so the screen and the file never disagree.
            p_normal, p_pneum = (round(r[k], 4) for k in ("p_normal", "p_pneumonia"))
            confidence = "" if r["confidence"] is None else f"{round(r['confidence'], 4):.1%}"
            print(
                f"{name:<{width}}  {p_normal:>9.1%}  {p_pneum:>9.1%}  {r['decision']:<21}  {confidence:>10}"
            )
            if not r["in_scope"]:
                print(f"{'':<{width}}  WARNING: {r['scope_reason']}")
    failed = sum(1 for r in rows if r["error"])
    print(
        f"\n{len(rows) - failed} predicted, {failed} failed; "
        f"threshold {predictor.threshold:.3f} on P(pneumonia)"
    )
    if args.csv:
        print(f"CSV written to {args.csv}")
    if args.out:
        print(f"Parquet written to {args.out}")
    print(DISCLAIMER)
    return 1 if failed else 0


def _write_parquet(out: Path, rows: list[dict]) -> None:
    from pneumoscan.inference.batch import write_parquet

    try:
        write_parquet(out, rows)
    except ImportError as exc:
        raise CommandError(str(exc)) from exc


def _predict_on_ray(args) -> int:
    """``predict --engine ray``: the same rows, scored by Ray actors, committed as they come."""
    from pneumoscan.inference.batch import expand_uris, is_uri, parts_dir, score_archive

    if args.out is None:
        raise CommandError(
            "--engine ray needs --out RESULTS.parquet: rows are committed beside it as they are "
            "scored, so that an interrupted run resumes"
        )
    files: list[str] = []
    for item in args.paths:
        files += expand_uris(item) if is_uri(item) else [str(p) for p in _expand_inputs([Path(item)])]
    if not files:
        raise CommandError("no image files found in the given paths")
    try:
        summary = score_archive(
            files,
            args.out,
            model_path=args.model,
            threshold=args.threshold,
            tta=args.tta,
            csv=args.csv,
            ray_address=args.ray_address,
            actors=args.ray_actors,
            commit_rows=args.commit_rows,
            progress=not args.quiet,
            verbose=args.verbose,
        )
    except ImportError as exc:
        raise CommandError(str(exc)) from exc
    except KeyboardInterrupt:
        print(
            f"interrupted: the rows scored so far are kept in {parts_dir(args.out)}; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130
    rate = summary.n_scored / summary.seconds if summary.seconds > 0 else 0.0
    print(
        f"{summary.n_files} files: {summary.n_scored} scored in this run ({rate:.1f} files/s, Ray start "
        f"included), {summary.n_resumed} already scored by an earlier run; {summary.n_failed} failed"
    )
    print(f"Parquet written to {summary.out}" + (f", CSV to {summary.csv}" if summary.csv else ""))
    print(DISCLAIMER)
    return 1 if summary.n_failed else 0


def cmd_explain(args) -> int:
    from pneumoscan.inference.explain import explain_file

    predictor = _load_predictor(args)
    prediction = explain_file(predictor, args.image, out=args.out)
    print(
        f"{args.image}: {prediction.decision} (P(pneumonia) {prediction.p_pneumonia:.1%}, "
        f"threshold {prediction.threshold:.3f}); Grad-CAM overlay written to {args.out}"
    )
    if not prediction.in_scope:
        print(f"WARNING: {prediction.scope_reason}")
    print(DISCLAIMER)
    return 0


def cmd_export(args) -> int:
    from pneumoscan.training.export import EXPORT_FORMATS

    predictor = _load_predictor(args)
    export = EXPORT_FORMATS[args.format]
    report = export(
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


# --------------------------------------------------------------------------- serve


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _api_key(args) -> str | None:
    """The API key from ``--api-key-file`` or ``$PNEUMOSCAN_API_KEY`` (never from the command line,
    where other users of the machine could read it in the process list)."""
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.read_text().strip()
        except OSError as exc:
            raise CommandError(
                f"cannot read the API key file {args.api_key_file}: {exc.strerror or exc}"
            ) from exc
        if not key:
            raise CommandError(f"the API key file {args.api_key_file} is empty")
        return key
    return os.environ.get("PNEUMOSCAN_API_KEY") or None


def cmd_serve(args) -> int:
    import signal
    import socket

    import uvicorn

    from pneumoscan.config import default_app_model_path
    from pneumoscan.interfaces.service import API_KEY_HEADER, ServiceLimits, create_app
    from pneumoscan.models.artifacts import ModelMetadata

    model = args.model if args.model is not None else default_app_model_path()
    if not model.is_file():
        raise CommandError(f"model file not found: {model}; pass --model PATH to a .keras or .tflite file")
    ModelMetadata.read(model)  # a missing or bad sidecar fails here, before the server starts
    key = _api_key(args)
    if args.insecure_no_auth and key:
        raise CommandError("an API key was given together with --insecure-no-auth; choose one")
    if not _is_loopback(args.host) and not key and not args.insecure_no_auth:
        raise CommandError(
            f"--host {args.host} makes the service reachable from other machines: set an API key "
            "($PNEUMOSCAN_API_KEY or --api-key-file FILE), or pass --insecure-no-auth to serve "
            "without one"
        )
    limits = ServiceLimits(max_files=args.max_files, max_body_bytes=int(args.max_body_mb * 2**20))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from exc
    port = sock.getsockname()[1]
    app = create_app(model, limits=limits, api_key=key)
    config = uvicorn.Config(
        app, log_config=None, access_log=not args.no_access_log, timeout_graceful_shutdown=10
    )
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    auth = f"API key required in {API_KEY_HEADER}" if key else "no API key"
    print(f"pneumoscan serve on http://{shown}:{port} ({auth}; docs at /docs; Ctrl+C to stop)", flush=True)
    # uvicorn finishes the requests in flight on Ctrl+C or SIGTERM, then raises the signal again
    # for the handler it found: these ones make that a clean exit 0 instead of 130 or a kill.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("pneumoscan serve stopped", flush=True)
    return 0


# --------------------------------------------------------------------------- parser


def _quiet_arg(parser: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=what)


def _out_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path(default), help="output folder (default: %(default)s)"
    )


def _prediction_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--threshold`` and ``--tta``, shared by evaluate and predict."""
    _model_arg(parser)
    parser.add_argument(
        "--threshold", type=float, help="operating threshold (default: the model's stored one)"
    )
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (4 views)")


def add_data_report_parser(sub) -> None:
    p = sub.add_parser(
        "data-report",
        help="scan a dataset: counts, patients, sizes, duplicates, bad files",
        description="Scan a dataset (a root with train/ test/ or one split folder with NORMAL/ and "
        "PNEUMONIA/), print a summary and write report.json and figures.",
    )
    p.add_argument("data_dir", type=_existing_dir, help="dataset root or split folder")
    _out_arg(p, "out/data-report")
    _quiet_arg(p)
    p.set_defaults(func=cmd_data_report)


#: ``pneumoscan train`` options that set a TrainConfig field: flag -> (type, help). Every default
#: shown in the help is read from TrainConfig.
_TRAIN_OPTIONS: dict[str, tuple[type, str]] = {
    "image_size": (int, "input side in px"),
    "batch_size": (int, "images per batch"),
    "epochs": (int, "epochs of the plain CNNs"),
    "learning_rate": (float, "plain CNNs"),
    "head_epochs": (int, "MobileNetV2 phase 1"),
    "head_learning_rate": (float, "MobileNetV2 phase 1"),
    "finetune_epochs": (int, "MobileNetV2 phase 2, 0 to skip"),
    "finetune_learning_rate": (float, "MobileNetV2 phase 2"),
    "unfreeze_blocks": (int, "top MobileNetV2 blocks to fine-tune"),
    "augmented_views": (int, "augmented copies of each image in the feature cache"),
    "members": (
        int,
        "MobileNetV2: ensemble members, each cross-fitted on all patient folds but its own; 1 trains "
        "one model on a validation split",
    ),
    "val_fraction": (float, "share of each class's images held out for validation, by patient"),
    "target_recall": (float, "recall the operating threshold must reach on validation"),
    "seed": (int, "seed of the split, the augmentation and the weights"),
}


def add_train_parser(sub) -> None:
    from pneumoscan.models.architectures import ARCHITECTURES

    d = TrainConfig()
    p = sub.add_parser(
        "train",
        help="train a model into a run folder",
        description=f"Train {', '.join(ARCHITECTURES)} on a training folder. MobileNetV2 (the default) "
        "trains a deep ensemble cross-fitted on patient-level folds, calibrated and thresholded on the "
        "out-of-fold predictions; the CNNs (and --members 1) use a patient-level validation split "
        "carved from the folder. Writes model.keras, its .meta.json, config.json, history.csv, "
        "learning_curves.png, validation.json.",
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
    p.add_argument("--arch", choices=list(ARCHITECTURES), help=f"model (default: {d.arch})")
    for name, (kind, what) in _TRAIN_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, dest=name, type=kind, help=f"{what} (default: {getattr(d, name)})")
    p.add_argument(
        "--imbalance",
        choices=IMBALANCE_MODES,
        help=f"how class imbalance is handled (default: {d.imbalance})",
    )
    p.add_argument(
        "--distribute",
        choices=DISTRIBUTE_MODES,
        help="mirrored: tf.distribute.MirroredStrategy over all GPUs (or all logical CPUs)",
    )
    p.add_argument("--limit", type=int, help="use at most this many images (smoke tests)")
    _quiet_arg(p, "no progress bars")
    p.set_defaults(func=cmd_train)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="metrics, confidence intervals and figures on a labelled folder",
        description="Evaluate a model on SPLIT_DIR (NORMAL/ and PNEUMONIA/, or a root with test/). "
        "Images the model was trained on are refused (compared by path and content with the training "
        "split its sidecar records); its validation images are scored and the report says so. Exit "
        "codes: 0 done, 1 done but some files could not be read (listed), 2 bad usage or refused.",
    )
    p.add_argument(
        "--data", type=_existing_dir, required=True, help="labelled split folder, or a root with test/"
    )
    _prediction_args(p)
    _out_arg(p, "out/evaluation")
    p.add_argument("--json", type=Path, help="also write metrics.json to this path")
    p.add_argument(
        "--allow-training-data",
        action="store_true",
        help="score images the model was trained on instead of refusing; the report is marked "
        "(overlaps_training_data)",
    )
    _quiet_arg(p)
    p.set_defaults(func=cmd_evaluate)


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="compare training runs on their common validation split")
    p.add_argument(
        "run_dirs", nargs="+", type=_existing_dir, help="run folders written by `pneumoscan train`"
    )
    _out_arg(p, "out/compare")
    p.set_defaults(func=cmd_compare)


def add_predict_parser(sub) -> None:
    from pneumoscan.inference.batch import DEFAULT_COMMIT_ROWS

    p = sub.add_parser(
        "predict",
        help="predict files or folders (JPEG, PNG, DICOM, ...)",
        description="Predict files or folders: one row per file. --engine ray scores an archive on "
        "Ray (a local one, or the cluster at --ray-address), resumably: rerun the same command after "
        "a crash or Ctrl+C and the files already in --out are skipped.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        help="image files or folders (searched recursively); with --engine ray also URIs pyarrow "
        "reads (s3://bucket/prefix, gs://..., file:///...)",
    )
    _prediction_args(p)
    p.add_argument("--csv", type=Path, help="write one row per file here")
    p.add_argument("--out", type=Path, help="write one row per file here as Parquet (needed by --engine ray)")
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process (default); ray: Ray actors, pip install 'pneumoscan[ray]'",
    )
    p.add_argument(
        "--ray-address",
        help="Ray cluster to join (e.g. ray://head:10001 or auto); default: start Ray on this machine",
    )
    p.add_argument("--ray-actors", type=int, help="Predictor actors (default: one per CPU of the cluster)")
    p.add_argument(
        "--commit-rows",
        type=int,
        default=DEFAULT_COMMIT_ROWS,
        help="--engine ray: rows per committed part file, at most what a crash loses (default: %(default)s)",
    )
    _quiet_arg(p)
    p.set_defaults(func=cmd_predict)


def add_explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="Grad-CAM heatmap of one image")
    p.add_argument("image", type=Path, help="an X-ray (JPEG, PNG or DICOM)")
    _model_arg(p)
    p.add_argument(
        "--out", type=Path, default=Path("heatmap.png"), help="PNG to write (default: %(default)s)"
    )
    p.set_defaults(func=cmd_explain)


def add_export_parser(sub) -> None:
    from pneumoscan.training.export import EXPORT_FORMATS, QUANTIZE_MODES

    p = sub.add_parser("export", help="export to LiteRT (TFLite), checked against the Keras model")
    _model_arg(p)
    p.add_argument("--format", choices=list(EXPORT_FORMATS), default="tflite", help="default: %(default)s")
    p.add_argument("--quantize", choices=QUANTIZE_MODES, default="none")
    p.add_argument(
        "--data",
        type=_existing_dir,
        help="training data for int8 calibration and the validation check "
        "(default: the data the model was trained on, when present)",
    )
    p.add_argument("--out", type=Path, required=True, help=".tflite file to write")
    _quiet_arg(p)
    p.set_defaults(func=cmd_export)


def add_app_parser(sub) -> None:
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


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP (FastAPI): POST /v1/predictions",
        description="Serve the model over HTTP: POST /v1/predictions (multipart field 'files'), "
        "GET /v1/model, GET /healthz, GET /readyz, docs at /docs. Listens on 127.0.0.1 unless --host "
        "says otherwise; another address needs an API key ($PNEUMOSCAN_API_KEY or --api-key-file), "
        "sent by clients in the X-API-Key header, or an explicit --insecure-no-auth.",
    )
    _model_arg(p, "the bundled model's LiteRT export models/pneumoscan-mobilenetv2-litert.tflite")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="default: %(default)s; 0 picks a free port")
    p.add_argument(
        "--api-key-file",
        type=Path,
        help="file holding the API key clients must send (default: $PNEUMOSCAN_API_KEY; none)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve on a non-loopback --host without an API key (anyone who can reach it can use it)",
    )
    p.add_argument("--max-files", type=int, default=16, help="files per request (default: %(default)s)")
    p.add_argument(
        "--max-body-mb", type=float, default=64, help="request body limit in MB (default: %(default)s)"
    )
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per HTTP request")
    p.set_defaults(func=cmd_serve)


SUBCOMMANDS = (
    add_data_report_parser,
    add_train_parser,
    add_evaluate_parser,
    add_compare_parser,
    add_predict_parser,
    add_explain_parser,
    add_export_parser,
    add_app_parser,
    add_serve_parser,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``pneumoscan`` parser: global flags, then one ``add_*_parser`` per subcommand."""
    parser = argparse.ArgumentParser(
        prog="pneumoscan",
        description="Pneumonia screening in chest X-rays. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"pneumoscan {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(sub)
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
