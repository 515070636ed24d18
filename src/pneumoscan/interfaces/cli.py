"""The ``pneumoscan`` command line: argparse subcommands that build options, then call the library.

This module holds the parsers (one small ``add_*_parser`` function per subcommand) and :func:`main`;
what each subcommand does is in :mod:`pneumoscan.interfaces.commands`. Only these two modules and
:mod:`pneumoscan.interfaces.app` print. Exit codes: 0 success, 1 the job ran but some input failed
(e.g. unreadable files in ``predict``), 2 bad usage or a fatal, explained error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pneumoscan import __version__
from pneumoscan.config import DISCLAIMER, DISTRIBUTE_MODES, IMBALANCE_MODES, MEMBER_SPLITS, TrainConfig
from pneumoscan.interfaces.commands import (
    CommandError,
    cmd_app,
    cmd_audit,
    cmd_compare,
    cmd_data_report,
    cmd_distill,
    cmd_evaluate,
    cmd_explain,
    cmd_export,
    cmd_predict,
    cmd_serve,
    cmd_train,
)
from pneumoscan.interfaces.site_commands import cmd_adapt, cmd_drift, cmd_site_check

log = logging.getLogger("pneumoscan")


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {value}")
    return path


#: What commands that score images for a person use without --model (as predict, app and serve).
LITERT_DEFAULT = "the bundled model's LiteRT export models/pneumoscan-mobilenetv2-litert.tflite"


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


# --------------------------------------------------------------------------- parser


def _quiet_arg(parser: argparse.ArgumentParser, what: str = "no progress bar") -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=what)


def _out_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path(default), help="output folder (default: %(default)s)"
    )


def _prediction_args(parser: argparse.ArgumentParser, *bundled: str) -> None:
    """``--model`` (its default described by ``bundled``), ``--threshold``, ``--tta`` and
    ``--no-fast-path``, shared by evaluate and predict."""
    _model_arg(parser, *bundled)
    parser.add_argument(
        "--threshold", type=float, help="operating threshold (default: the model's stored one)"
    )
    parser.add_argument("--tta", action="store_true", help="test-time augmentation (4 views)")
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="let the ensemble answer every image, even where the model's sidecar names a fast path "
        "(the bundled LiteRT export does: one averaged body answers clear cases, the ensemble the "
        "rest; README, Developing)",
    )


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


def add_audit_parser(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="shortcut audit: how much of the label the film's border and set-up predict",
        description="Measure how much of the label can be read from what is not lung: region models "
        "(border only, lungs only, whole film; patient-level out-of-fold ROC AUC) and acquisition cues "
        "(burnt-in marks, marker size, collimation, head in view, contrast, texture), each with a "
        "patient-bootstrap 95%% interval. Writes audit.json, setup_scores.csv and audit.png.",
    )
    p.add_argument(
        "data_dir", type=_existing_dir, help="a labelled folder (NORMAL/, PNEUMONIA/) or a root with train/"
    )
    _out_arg(p, "out/audit")
    p.add_argument("--seed", type=int, default=TrainConfig().seed, help="seed of the folds and bootstrap")
    _quiet_arg(p)
    p.set_defaults(func=cmd_audit)


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
        "trains a deep ensemble on one frozen stem, calibrated and thresholded on the members' held-out "
        "predictions (--member-split validation: each member on all but its own patient-level validation "
        "split, best epoch kept there; folds: cross-fitted on patient folds, fixed epochs); the CNNs "
        "(and --members 1) use one patient-level validation split carved from the folder. Writes "
        "model.keras, its .meta.json, config.json, history.csv, learning_curves.png, validation.json.",
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
        "--member-split",
        dest="member_split",
        choices=MEMBER_SPLITS,
        help=f"what data each ensemble member sees (default: {d.member_split})",
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
    _prediction_args(p, "the bundled model's LiteRT export models/pneumoscan-mobilenetv2-litert.tflite")
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
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help="none: float32; float16: half-size weights, float arithmetic (what ships); dynamic: int8 "
        "weights, activations quantized per call; int8: weights and activations, calibrated on training "
        "images; int8-stem: the same for the shared stem only, the tops float (an ensemble or student). "
        "Any mode is written only if it passes the check (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        type=_existing_dir,
        help="training data for int8 calibration and the validation check "
        "(default: the data the model was trained on, when present)",
    )
    p.add_argument("--out", type=Path, required=True, help=".tflite file to write")
    p.add_argument(
        "--fast-path",
        action="store_true",
        help="an ensemble only: also write OUT-fast.tflite, one averaged body with the members' own heads "
        "at about one network's cost; the ensemble answers every image in or near the uncertain band. "
        "Recorded in the sidecar only if decisions agree on >= 99%% of the check images and ROC AUC "
        "stays within 0.005",
    )
    _quiet_arg(p)
    p.set_defaults(func=cmd_export)


def add_distill_parser(sub) -> None:
    from pneumoscan.config import DISTILL_KINDS, DistillConfig

    d = DistillConfig()
    p = sub.add_parser(
        "distill",
        help="distil an ensemble into one student on its stem (gated against the ensemble)",
        description="Distil a MobileNetV2 ensemble into one top on the same frozen stem that predicts "
        "the ensemble's calibrated probability and its members' spread; the embedding (and the "
        "out-of-scope guard) stays the teacher's. A patient-level part of the folder is held out; the "
        "student is written only if it matches the teacher's ROC AUC there and on shifted views "
        "within --max-auc-diff and its decisions agree on at least --min-agreement of the images no "
        "member trained on. Writes OUT/model.keras, its sidecar, OUT/model-litert.tflite (float16) "
        "and OUT/distill.json; a refused student leaves only its report, OUT/distill-refused.json.",
    )
    p.add_argument(
        "--teacher", type=Path, required=True, help="the ensemble's .keras file (with its sidecar)"
    )
    p.add_argument(
        "--data", type=_existing_dir, required=True, help="its training folder (or a root with train/)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--ood",
        type=_existing_dir,
        help="out-of-scope images for the gate (default: an ood/ folder beside the data, when present)",
    )
    p.add_argument("--holdout-fraction", type=float, default=d.holdout_fraction, help="default: %(default)s")
    p.add_argument("--augmented-views", type=int, default=d.augmented_views, help="default: %(default)s")
    p.add_argument(
        "--mixup-views",
        type=int,
        default=d.mixup_views,
        help="mixed views per distillation view: random pairs mixed in the stem's feature space, "
        "labelled by the teacher on the mixture (default: %(default)s)",
    )
    p.add_argument("--head-epochs", type=int, default=d.head_epochs, help="default: %(default)s")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs, help="default: %(default)s")
    p.add_argument(
        "--kind",
        choices=DISTILL_KINDS,
        default=d.kind,
        help="student: one top on the stem that also predicts the members' spread; shared-body: the "
        "members' weight-averaged body with their own heads, trained to match each member (the "
        "teacher's output row, calibration and spread at the cost of one network). Default: %(default)s",
    )
    p.add_argument(
        "--init-member", type=int, help="start from this member (default: the closest to the teacher)"
    )
    p.add_argument("--limit", type=int, help="use at most this many images (smoke runs)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--max-auc-diff", type=float, default=d.max_auc_diff, help="default: %(default)s")
    p.add_argument("--min-agreement", type=float, default=d.min_agreement, help="default: %(default)s")
    p.add_argument("--no-export", action="store_true", help="skip the float16 LiteRT export")
    p.add_argument(
        "--keep-cache",
        action="store_true",
        help="keep the stem features and the teacher's answers in OUT/.cache for reruns with other "
        "training options",
    )
    _quiet_arg(p)
    p.set_defaults(func=cmd_distill)


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
    _model_arg(p, LITERT_DEFAULT)
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


def add_site_check_parser(sub) -> None:
    from pneumoscan.evaluation.site import SiteFloors

    floors = SiteFloors()
    p = sub.add_parser(
        "site-check",
        help="check the model on a site's own labelled images, with a verdict",
        description="Evaluate the model on SITE_DIR (NORMAL/ and PNEUMONIA/, any supported format) at "
        "its stored threshold: metrics with patient-bootstrap CIs, reliability figure, decisions, scope "
        "flags, and a verdict (fit for use / not sure yet / adapt before use). Training images are "
        "refused as in evaluate. Exit codes: 0 done, 1 done but some files could not be read, 2 bad "
        "usage or refused, 3 the model failed the check (adapt before use).",
    )
    p.add_argument("--data", type=_existing_dir, required=True, help="the site's labelled folder")
    _model_arg(p, LITERT_DEFAULT)
    _out_arg(p, "out/site-check")
    p.add_argument("--json", type=Path, help="also write the report to this path")
    p.add_argument(
        "--min-recall", type=float, default=floors.recall, help="recall floor (default: %(default)s)"
    )
    p.add_argument(
        "--min-specificity",
        type=float,
        default=floors.specificity,
        help="specificity floor (default: %(default)s)",
    )
    p.add_argument(
        "--max-ece", type=float, default=floors.ece, help="calibration error ceiling (default: %(default)s)"
    )
    _quiet_arg(p)
    p.set_defaults(func=cmd_site_check)


def add_adapt_parser(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt the model to a site's labelled sample (last layers, calibration, threshold)",
        description="Refit the last layer of each ensemble member (pulled towards the base weights), the "
        "calibration, the threshold and the uncertainty band on SITE_DIR (NORMAL/ and PNEUMONIA/, at "
        "least 40 images from 20 patients of each class; a few hundred in all). Writes OUT/model.keras, "
        "its sidecar (with the site estimate from patient-grouped cross-fitting), OUT/model-litert.tflite "
        "and OUT/adapt_report.json. Every command then takes --model OUT/model.keras.",
    )
    p.add_argument("--data", type=_existing_dir, required=True, help="the site's labelled folder")
    _model_arg(p)
    p.add_argument("--out", type=Path, required=True, help="folder for the adapted model")
    p.add_argument(
        "--target-recall",
        type=float,
        default=None,
        help="recall the site threshold aims at (default: the model's)",
    )
    p.add_argument(
        "--seed", type=int, default=TrainConfig().seed, help="seed of the site folds (default: %(default)s)"
    )
    p.add_argument("--json", type=Path, help="also write the report to this path")
    p.add_argument("--no-export", action="store_true", help="skip the LiteRT export")
    _quiet_arg(p)
    p.set_defaults(func=cmd_adapt)


def add_drift_parser(sub) -> None:
    p = sub.add_parser(
        "drift",
        help="how far unlabelled images of an intake lie from the training images",
        description="Score PATH... (files or folders) with the scope guard's embedding distance and "
        "compare with the training images: the share beyond the guard's threshold (binomial test) and "
        "the whole distribution (one-sided KS test against the sidecar's reference). Verdict: no sign of "
        "drift / differs (run site-check before trusting the threshold) / unlike the training images.",
    )
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    _model_arg(p, LITERT_DEFAULT)
    p.add_argument("--json", type=Path, help="also write the summary to this path")
    p.add_argument(
        "--store-reference",
        action="store_true",
        help="PATH... are the model's training images: store their held-out distances in the model's "
        "sidecar as the drift reference (training does this for new models)",
    )
    p.add_argument(
        "--seed", type=int, default=TrainConfig().seed, help="fold seed of the guard (default: %(default)s)"
    )
    _quiet_arg(p)
    p.set_defaults(func=cmd_drift)


SUBCOMMANDS = (
    add_data_report_parser,
    add_audit_parser,
    add_train_parser,
    add_evaluate_parser,
    add_compare_parser,
    add_predict_parser,
    add_explain_parser,
    add_export_parser,
    add_distill_parser,
    add_app_parser,
    add_serve_parser,
    add_drift_parser,
    add_site_check_parser,
    add_adapt_parser,
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
