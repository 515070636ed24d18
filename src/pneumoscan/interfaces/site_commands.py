"""The deployment subcommands: ``site-check``, ``adapt`` and ``drift`` (a new site's three steps).

1. ``pneumoscan drift PATH...``: unlabelled images of an intake against the training images (no
   labels needed): is the stored threshold likely to hold?
2. ``pneumoscan site-check --data SITE_DIR``: the model on the site's labelled images at its stored
   threshold, with a verdict.
3. ``pneumoscan adapt --data SITE_DIR --out SITE_MODEL_DIR``: last layers, calibration, threshold and
   band refitted on the site's sample; every other command then takes
   ``--model SITE_MODEL_DIR/model.keras`` (or ``model-litert.tflite``).

Same conventions as :mod:`pneumoscan.interfaces.commands`: returns are exit codes, a
:class:`~pneumoscan.interfaces.commands.CommandError` is a fatal error meant for the user.
"""

from __future__ import annotations

import json
from pathlib import Path

from pneumoscan.config import DISCLAIMER
from pneumoscan.interfaces.commands import CommandError, _expand_inputs, _load_predictor, _with_app_model


def _site_samples(data: Path):
    from pneumoscan.data.dataset import discover_split

    samples = discover_split(data, prefer="test")
    if not samples:
        raise CommandError(
            f"{data}: no images found under NORMAL/ and PNEUMONIA/ "
            "(the site folder holds one folder per class)"
        )
    return samples


def _write_json(path: Path | None, report: dict) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=float) + "\n")


def cmd_site_check(args) -> int:
    from pneumoscan.evaluation.metrics import format_metrics_table
    from pneumoscan.evaluation.site import ADAPT, SiteFloors, site_check

    samples = _site_samples(args.data)
    predictor = _load_predictor(_with_app_model(args))
    floors = SiteFloors(recall=args.min_recall, specificity=args.min_specificity, ece=args.max_ece)
    report = site_check(samples, predictor, out_dir=args.out, floors=floors, progress=not args.quiet)
    _write_json(args.json, report)
    print(format_metrics_table(report))
    scope = report.get("scope") or {}
    print(
        f"\nOut-of-scope guard: {scope.get('flagged', 0)} of {len(samples)} image(s) flagged; decisions: "
        + ", ".join(f"{k} {v}" for k, v in sorted((scope.get("decisions") or {}).items()))
    )
    for item in report.get("skipped") or []:
        print(f"skipped {item['path']}: {item['error']}")
    print(f"\nVerdict: {report['summary']}")
    print(f"site_check.json and figures written to {args.out}")
    print(DISCLAIMER)
    if report["verdict"] == ADAPT:
        return 3  # the check ran and the model failed it: scripts can tell this from success
    return 1 if report.get("skipped") else 0


def cmd_adapt(args) -> int:
    from pneumoscan.evaluation.site import floor_misses
    from pneumoscan.training.adapt import adapt_model

    samples = _site_samples(args.data)
    model = args.model
    if model is None:
        from pneumoscan.config import default_keras_model_path

        model = default_keras_model_path()
    report = adapt_model(
        samples,
        model,
        args.out,
        target_recall=args.target_recall,
        seed=args.seed,
        progress=not args.quiet,
        export=not args.no_export,
    )
    _write_json(args.json, report)
    base, nested = report["base"], report["nested"]
    print(
        f"Site sample: {report['site']['n']} images "
        f"({report['site']['counts']['NORMAL']['images']} NORMAL, "
        f"{report['site']['counts']['PNEUMONIA']['images']} PNEUMONIA)"
    )
    print(
        f"Base model at its stored threshold {report['base_threshold']:.3f}: ROC AUC {base['roc_auc']:.3f}, "
        f"recall {base['recall']:.3f}, specificity {base['specificity']:.3f}, ECE {base['ece']:.3f}"
    )
    print(
        f"Adapted (estimate: {nested['protocol']}): ROC AUC {nested['roc_auc']:.3f}, recall "
        f"{nested['recall']:.3f}, specificity {nested['specificity']:.3f}, ECE {nested['ece']:.3f}"
    )
    print(
        f"New threshold {report['threshold']:.3f}; prior strength {report['prior_strength']['chosen']:g}; "
        f"{report['seconds']:.0f} s"
    )
    missed = floor_misses(nested)
    if missed:
        print(
            "WARNING: the adapted model's estimate misses site-check's floors: "
            + ", ".join(missed)
            + ". Do not use it yet; a larger site sample (a few hundred images) usually helps."
        )
    for item in report.get("skipped") or []:
        print(f"skipped {item['path']}: {item['error']}")
    for kind, path in report["files"].items():
        print(f"{kind}: {path}")
    print(f"Use it with --model {report['files']['keras']} (predict, evaluate, explain, app, serve).")
    print(DISCLAIMER)
    return 1 if report.get("skipped") else 0


def cmd_drift(args) -> int:
    from pneumoscan.inference.drift import drift_summary, relative_distances

    files = _expand_inputs([Path(p) for p in args.paths])
    if not files:
        raise CommandError("no image files found in the given paths")
    predictor = _load_predictor(_with_app_model(args))
    if predictor.guard is None:
        raise CommandError(f"{predictor.model_path} has no scope guard: drift cannot be measured")
    results = predictor.predict_paths(files, progress=not args.quiet)
    distances = relative_distances(predictor.guard, results.embedding)
    if args.store_reference:
        return _store_reference(args, predictor, files, results)
    summary = drift_summary(distances, predictor.guard)
    failed = [(p, e) for p, e in zip(files, results.errors, strict=True) if e]
    summary["skipped"] = [{"path": str(p), "error": e} for p, e in failed]
    summary["not_radiographs"] = sum(1 for c in results.scope if not c.radiograph)
    _write_json(args.json, summary)
    for path, error in failed:
        print(f"skipped {path}: {error}")
    print(summary["summary"])
    return 1 if failed else 0


def _store_reference(args, predictor, files, results) -> int:
    """``drift --store-reference``: the given images are the model's training images."""
    import numpy as np

    from pneumoscan.data.dataset import patient_id
    from pneumoscan.inference.drift import reference_quantiles
    from pneumoscan.models.artifacts import ModelMetadata

    ok = np.all(np.isfinite(results.embedding), axis=1)
    groups = [patient_id(p.name) for p, good in zip(files, ok, strict=True) if good]
    reference = reference_quantiles(predictor.guard, results.embedding[ok], groups, seed=args.seed)
    from pneumoscan.inference.predictor import source_keras_model

    # The export and the .keras model it was made from share the stem, hence the guard: both get it.
    targets = {predictor.model_path, source_keras_model(predictor.model_path, predictor.metadata)} - {None}
    for target in sorted(targets):
        meta = ModelMetadata.read(target)
        scope = {**meta.to_json()["scope"], "reference": np.asarray(reference, np.float32).tolist()}
        meta.updated(scope=scope).write(target)
        print(f"drift reference of {int(ok.sum())} training images stored in {target}'s sidecar")
    return 0
