"""What each ``pneumoscan`` subcommand does: one ``cmd_*`` function per subcommand, called by
:func:`pneumoscan.interfaces.cli.main` with the parsed arguments (the parsers live in
:mod:`~pneumoscan.interfaces.cli`). Each builds options, calls the library and prints the outcome.

Returns are exit codes (0 success, 1 some input failed); a :class:`CommandError` is a fatal error
with a message meant for the user, which ``main`` prints without a traceback (exit code 2).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from pneumoscan.config import DISCLAIMER, AugmentConfig, TrainConfig


class CommandError(Exception):
    """A fatal error with a message meant for the user (no traceback)."""


def _load_predictor(args, **kwargs):
    from pneumoscan.inference.predictor import Predictor

    if getattr(args, "no_fast_path", False):
        kwargs.setdefault("fast_path", False)
    try:
        return Predictor(args.model, **kwargs)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc


def _with_app_model(args):
    """``args`` with ``--model`` defaulting to what ``predict``, ``drift`` and ``site-check`` score
    with: the bundled LiteRT export (parity-checked against the Keras model at export), the same
    answers as the app and the service without importing TensorFlow, at a fraction of the memory
    and start-up time (``benchmarks/decode_memory.py`` measures the memory)."""
    if args.model is None:
        from pneumoscan.config import default_serving_model_path

        args.model = default_serving_model_path()
    return args


# --------------------------------------------------------------------------- data-report


def cmd_data_report(args) -> int:
    from pneumoscan.data.report import build_report, format_report

    report = build_report(args.data_dir, out_dir=args.out, progress=not args.quiet)
    print(format_report(report))
    print(f"\nreport.json and figures written to {args.out}")
    return 0


def cmd_audit(args) -> int:
    from pneumoscan.evaluation.shortcuts import audit_folder, format_audit

    result = audit_folder(args.data_dir, args.out, seed=args.seed, progress=not args.quiet)
    print(format_audit(result))
    for item in result["skipped"]:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)
    print(f"\naudit.json, setup_scores.csv and audit.png written to {args.out}")
    return 1 if result["skipped"] else 0


# --------------------------------------------------------------------------- train


def cmd_train(args) -> int:
    from pneumoscan.training import recipes

    if args.resume:
        metrics = recipes.resume(args.resume, progress=not args.quiet)
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
        metrics = recipes.train(cfg, args.data, args.out, progress=not args.quiet)
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
    from pneumoscan.inference.results import PREDICTION_COLUMNS, percent, prediction_row, write_rows

    _with_app_model(args)
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
            # percent(): a probability short of 1 never reads 100.0% (">99.9%").
            p_normal, p_pneum = (percent(round(r[k], 4), 1, space="") for k in ("p_normal", "p_pneumonia"))
            confidence = "" if r["confidence"] is None else percent(round(r["confidence"], 4), 1, space="")
            print(f"{name:<{width}}  {p_normal:>9}  {p_pneum:>9}  {r['decision']:<21}  {confidence:>10}")
            if not r["in_scope"]:
                print(f"{'':<{width}}  WARNING: {r['scope_reason']}")
    failed = sum(1 for r in rows if r["error"])
    print(
        f"\n{len(rows) - failed} predicted, {failed} failed; "
        f"threshold {predictor.threshold:.3f} on P(pneumonia)"
    )
    if predictor.fast_path is not None and predictor.runtime.rows:
        runtime = predictor.runtime
        print(
            f"Fast path: the averaged body answered first; the ensemble answered {runtime.full_rows} of "
            f"{runtime.rows} images, those in or near the uncertain band (--no-fast-path: all)"
        )
    if predictor.guard is not None and len(rows) > 1:
        from pneumoscan.inference.drift import batch_drift

        print(f"Drift check: {batch_drift(rows, predictor.guard)['summary']}")
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
    if summary.drift is not None:
        print(f"Drift check: {summary.drift['summary']}")
    print(DISCLAIMER)
    return 1 if summary.n_failed else 0


def cmd_explain(args) -> int:
    from pneumoscan.inference.explain import explain_file
    from pneumoscan.inference.results import percent

    predictor = _load_predictor(args)
    prediction = explain_file(predictor, args.image, out=args.out)
    print(
        f"{args.image}: {prediction.decision} (P(pneumonia) {percent(prediction.p_pneumonia, 1, space='')}, "
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
        predictor,
        out=args.out,
        quantize=args.quantize,
        data_dir=args.data,
        progress=not args.quiet,
        fast_path=args.fast_path,
    )
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- distill


def cmd_distill(args) -> int:
    from pneumoscan.training.distill import DistillConfig, GateError, distill

    cfg = DistillConfig(
        holdout_fraction=args.holdout_fraction,
        augmented_views=args.augmented_views,
        mixup_views=args.mixup_views,
        head_epochs=args.head_epochs,
        finetune_epochs=args.finetune_epochs,
        init_member=args.init_member,
        limit=args.limit,
        seed=args.seed,
        max_auc_diff=args.max_auc_diff,
        min_agreement=args.min_agreement,
        keep_cache=args.keep_cache,
        kind=args.kind,
    )
    ood = args.ood
    if ood is None and (Path(args.data).parent / "ood").is_dir():
        ood = Path(args.data).parent / "ood"
    try:
        report = distill(
            args.teacher,
            args.data,
            args.out,
            cfg=cfg,
            ood_dir=ood,
            export=not args.no_export,
            progress=not args.quiet,
        )
    except GateError as exc:
        print(json.dumps({k: exc.report[k] for k in ("sets", "never_trained", "misses")}, indent=2))
        raise CommandError(str(exc)) from exc
    print(json.dumps(report["gate"], indent=2))
    print(f"{'shared-body ensemble' if cfg.kind == 'shared-body' else 'student'} written to {args.out}")
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

    from pneumoscan.config import default_serving_model_path
    from pneumoscan.interfaces.service import API_KEY_HEADER, ServiceLimits, create_app
    from pneumoscan.models.artifacts import ModelMetadata

    model = args.model if args.model is not None else default_serving_model_path()
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
