"""``pneumoscan compare``: training runs side by side on their validation predictions."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.config import CLASS_NAMES
from pneumoscan.evaluation.metrics import fmt_metric
from pneumoscan.models.artifacts import RunFolder

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- compare runs


def _read_run(run_dir: Path) -> dict:
    run = RunFolder(run_dir)
    for path in (run.validation, run.config, run.validation_predictions):
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a complete training run: {path.name} is missing")
    metrics = json.loads(run.validation.read_text())
    config = json.loads(run.config.read_text())
    rows = list(csv.DictReader(run.validation_predictions.open(newline="")))
    missing = {"path", "label", "p_pneumonia"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{run.validation_predictions}: missing columns {sorted(missing)}")
    rows = [r for r in rows if r["p_pneumonia"] not in ("", None)]
    labels = np.array([_parse_label(r["label"]) for r in rows], dtype=np.int64)
    return {
        "name": str(config.get("name") or run_dir.name),
        "arch": str(config.get("arch", "?")),
        "metrics": metrics,
        "paths": [r["path"] for r in rows],
        "y_true": labels,
        "y_score": np.array([float(r["p_pneumonia"]) for r in rows]),
    }


def _parse_label(value: str) -> int:
    value = str(value).strip()
    if value.upper() in CLASS_NAMES:
        return CLASS_NAMES.index(value.upper())
    if value in ("0", "1"):
        return int(value)
    raise ValueError(
        f"unrecognised label {value!r} in {RunFolder.VALIDATION_PREDICTIONS} (expected 0/1 or a class name)"
    )


def _stress_table(runs: list[dict]) -> str:
    """Markdown: ROC AUC / recall / specificity of each run under each acquisition shift (if recorded)."""
    stressed = [r for r in runs if (r["metrics"].get("stress") or {}).get("shifts")]
    if not stressed:
        return ""
    shifts = list(stressed[0]["metrics"]["stress"]["shifts"])
    lines = [
        "",
        "Validation images under acquisition shifts (`pneumoscan.evaluation.robustness`): "
        "ROC AUC / recall / specificity at each run's own threshold.",
        "",
        "| shift | " + " | ".join(r["name"].replace("|", "\\|") for r in stressed) + " |",
        "|---|" + "---:|" * len(stressed),
    ]
    for shift in [*shifts, "worst"]:
        cells = []
        for r in stressed:
            stress = r["metrics"]["stress"]
            m = stress["worst"] if shift == "worst" else stress["shifts"].get(shift, {})
            cells.append(" / ".join(fmt_metric(m.get(k)) for k in ("roc_auc", "recall", "specificity")))
        label = "**worst case**" if shift == "worst" else shift
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _check_same_images(runs: list[dict], run_dirs: Sequence[str | Path]) -> None:
    """ValueError unless every run was validated on the first run's images."""
    reference = set(runs[0]["paths"])
    for run, d in zip(runs[1:], run_dirs[1:], strict=True):
        other = set(run["paths"])
        if other != reference:
            only_ref, only_other = sorted(reference - other), sorted(other - reference)
            example = (only_ref or only_other)[0]
            raise ValueError(
                f"runs {run_dirs[0]} and {d} were validated on different images "
                f"({len(only_ref)} only in the first, {len(only_other)} only in the second, e.g. "
                f"{example}); their metrics are not comparable. Train them with the same data, "
                "val_fraction and seed."
            )


def _metrics_table(runs: list[dict]) -> str:
    """Markdown: one row of validation metrics per run."""
    header = [
        "run",
        "arch",
        "n",
        "accuracy",
        "recall",
        "recall 95% CI",
        "specificity",
        "precision",
        "f1",
        "roc_auc",
        "pr_auc",
        "brier",
        "ece",
        "threshold",
    ]
    align = ["---"] * 2 + ["---:"] * (len(header) - 2)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for run in runs:
        m = run["metrics"]
        ci = (m.get("ci95") or {}).get("recall")
        cells = [
            run["name"].replace("|", "\\|"),
            run["arch"],
            str(m.get("n", len(run["paths"]))),
            fmt_metric(m.get("accuracy")),
            fmt_metric(m.get("recall")),
            "n/a" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]",
            fmt_metric(m.get("specificity")),
            fmt_metric(m.get("precision")),
            fmt_metric(m.get("f1")),
            fmt_metric(m.get("roc_auc")),
            fmt_metric(m.get("pr_auc")),
            fmt_metric(m.get("brier"), 4),
            fmt_metric(m.get("ece"), 4),
            fmt_metric(m.get("threshold"), 4),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: Sequence[str | Path], *, out_dir: str | Path) -> str:
    """Compare training runs on their (identical) validation sets.

    Parameters
    ----------
    run_dirs : sequence of path
        Run folders of ``pneumoscan train``, each with ``validation.json``, ``config.json`` and
        ``validation_predictions.csv``.
    out_dir : path
        Receives ``comparison.md`` and ``comparison.png``.

    Returns
    -------
    str
        The Markdown table written to ``comparison.md``.

    Raises
    ------
    ValueError
        No runs, or runs validated on different images (their metrics would not be comparable).
    FileNotFoundError
        A run folder lacks one of its files.
    """
    from pneumoscan import plotting
    from pneumoscan.evaluation import figures

    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    runs = [_read_run(Path(d)) for d in run_dirs]
    names = [r["name"] for r in runs]
    for run, d in zip(runs, run_dirs, strict=True):
        if names.count(run["name"]) > 1:
            run["name"] = str(d)
    _check_same_images(runs, run_dirs)
    markdown = _metrics_table(runs) + _stress_table(runs)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "comparison.md").write_text(markdown)
    fig = figures.comparison_figure(
        {r["name"]: {"y_true": r["y_true"], "y_score": r["y_score"], "metrics": r["metrics"]} for r in runs}
    )
    plotting.save(fig, out_dir / "comparison.png")
    log.info("comparison of %d runs written to %s", len(runs), out_dir)
    return markdown
