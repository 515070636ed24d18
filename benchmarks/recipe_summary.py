"""The recipe validation's summaries over several runs: what the recipe table of docs/recipe_search.md prints.

    python benchmarks/recipe_summary.py runs/recipe_validation_*.json

Each run of :mod:`recipe_validation` writes one JSON file (``--json``): one row per model it
trained, each scored on the held-out images clean and under a tight crop. A summary over seeds
needs several runs (a recipe's seeds are spread over them), so this script reads every file given,
groups the rows by split (``--split``), input (``--input``), training view (``--augment``), input
size and recipe, and prints, for each view (clean, the tight crop, and, where a run has them, the
JPEG of quality 50 and the other files of the same film):

- ``frozen_lr``: its ROC AUC (deterministic; every run that has it should print the same);
- a fine-tuned recipe's single models (``single``, ``reweighted``, ``adversarial``, ``consistent``
  and ``path_consistent``, these two per penalty weight): mean ± SD [min, max] over every seed found,
  and how many;
- the mean of three models of one recipe (a run's "mean of the seeds' models" over exactly three
  seeds, and the single recipe's "ensemble of seeds [...]" rows): mean ± SD over the groups found;
- the cross-fitted ensemble: mean ± SD over the runs that trained one (one seed each);

and, for runs that scored the held-out images as other files of the same film (since
2026-12-03), the spread of P(pneumonia) over those paths; then the agreement of those summaries
with the independently measured test figures (:data:`ground_truth.GROUND_TRUTH`): Spearman rho
and pairwise order agreement, per view, split, input and size, over every pair and over the pairs
the test split itself resolves; last, how precise those
test figures are (:func:`ground_truth.report`). Nothing is trained; it reads the files only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ground_truth import agreement, report  # noqa: E402  (one definition of the check)

#: The views every run holds. Any other entry of a row that has a ROC AUC is a view too (runs since
#: 2026-12-03: the JPEG of quality 50 and the other files of the same film), read from the file, so
#: that a view :mod:`recipe_validation` adds is summarised and checked without a list kept here.
VIEWS = ("clean", "crop")
#: A row's spread of P over file paths, per scale: summarised apart from the views.
SPREADS = ("paths", "paths (raw P)")
SEED_ROW = re.compile(r"^(single|reweighted|consistent|path_consistent|adversarial) seed (\d+)$")
MEAN_ROW = re.compile(r"^(\w+), mean of the seeds' models$")
#: The stem cut of every run before ``--stem-cut`` (the release's members fine-tune after it).
RELEASED_CUT = "block_13_project_BN"
#: Recipes whose models differ with the penalty weight (``--consistency``): summarised per weight.
WEIGHTED = ("consistent", "path_consistent")
GROUP_ROW = re.compile(r"^single, ensemble of seeds \[([\d, ]+)\]$")


def recipe_label(recipe: str, run: dict) -> str:
    """A recipe's name in the summary; the penalised ones (:data:`WEIGHTED`) with their weight
    (``relative`` with ``--relative``), and ``path_consistent`` with the views its penalty pairs
    (``--pair``; runs before it: augmented); ``adversarial`` with its reversal weight."""
    if recipe == "adversarial":
        return f"{recipe} (weight {run.get('adversary')})"
    if recipe not in WEIGHTED:
        return recipe
    penalty = f"penalty {run.get('consistency')}{' relative' if run.get('relative_penalty') else ''}"
    if recipe == "path_consistent":
        return f"{recipe} ({penalty}, pair {run.get('pair') or 'augmented'})"
    return f"{recipe} ({penalty})"


def collect(
    paths: list[Path],
) -> dict[tuple[str, str, str, int, str, float], dict[str, dict[str, list[tuple[str, float]]]]]:
    """``{(split, input, augment, image size, stem cut, feature noise): {summary row: {view:
    [(source, auc), ...]}}}`` from every file.

    Runs of different splits hold out different images, runs on different inputs, training views,
    stem cuts or feature noise (``--feature-noise``) train different models: they are never
    summarised together."""
    found: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in paths:
        run = json.loads(path.read_text())
        kind = (run.get("split", "setup"), run.get("input", "model"), run.get("augment", "standard"))
        tuning = (run.get("stem_cut", RELEASED_CUT), float(run.get("feature_noise") or 0.0))
        rows = found[(*kind, int(run.get("image_size", 224)), *tuning)]
        seeds_of = defaultdict(int)  # recipe -> how many seeds' models this run trained
        for name in run:
            if seed := SEED_ROW.match(name):
                seeds_of[seed.group(1)] += 1
        for name, row in run.items():
            if not isinstance(row, dict) or not all(v in row for v in VIEWS):
                continue
            seed, group, mean = SEED_ROW.match(name), GROUP_ROW.match(name), MEAN_ROW.match(name)
            if name == "frozen_lr":
                key, source = "frozen_lr", path.name
            elif seed:
                key = f"{recipe_label(seed.group(1), run)}: single models"
                source = f"{path.name} seed {seed.group(2)}"
            elif group and len(group.group(1).split(",")) == 3:
                key, source = "single: mean of 3 models", f"{path.name} seeds [{group.group(1)}]"
            elif mean and seeds_of[mean.group(1)] == 3:
                key = f"{recipe_label(mean.group(1), run)}: mean of 3 models"
                source = f"{path.name} (its 3 seeds)"
            elif name == "ensemble":
                key, source = "ensemble (cross-fitted)", path.name
            else:
                continue
            for view, scored in row.items():
                if isinstance(scored, dict) and "auc" in scored:
                    rows[key][view].append((source, float(scored["auc"])))
            if "paths" in row:  # runs since 2026-12-03: the held-out images' spread over file paths
                # Since that afternoon on one calibrated scale (recipe_validation.on_one_scale), before
                # in raw P: the two are kept apart.
                scale = SPREADS[0] if "platt_slope" in row["paths"] else SPREADS[1]
                rows[key].setdefault(scale, []).append((source, row["paths"]))
    return found


def describe(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f} (1 run)"
    v = np.asarray(values, dtype=float)
    return (
        f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f} "
        f"[{v.min():.{digits}f}, {v.max():.{digits}f}] (n {len(v)})"
    )


#: Which summary row stands for which row of the independently measured test table.
TEST_ROWS = {
    "frozen_lr": "frozen_lr",
    "single: single models": "single (mean over seeds)",
    "single: mean of 3 models": "single, mean of the seeds' models",
    "ensemble (cross-fitted)": "ensemble",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="JSON files of recipe_validation.py --json")
    args = parser.parse_args(argv)
    for (split, kind, augment, size, cut, noise), rows in sorted(collect(args.runs).items()):
        tuned = ("" if cut == RELEASED_CUT else f", fine-tuned after {cut}") + (
            f", feature noise {noise}" if noise else ""
        )
        print(
            f"== {split} split, {kind} input, {augment} training view, {size} px{tuned}: "
            "held-out ROC AUC, mean ± SD [min, max] (n)"
        )
        views = [*VIEWS, *dict.fromkeys(v for k in rows for v in rows[k] if v not in (*VIEWS, *SPREADS))]
        measured: dict[str, dict[str, float]] = {view: {} for view in views}
        for key in sorted(rows):
            print(f"  {key}")
            for view in views:
                values = [auc for _, auc in rows[key].get(view, [])]
                if not values:
                    continue
                print(f"    {view:<13} {describe(values)}")
                if key in TEST_ROWS:
                    measured[view][TEST_ROWS[key]] = float(np.mean(values))
            for scale in SPREADS:
                paths = [row for _, row in rows[key].get(scale, [])]
                if not paths:
                    continue
                print(
                    f"    {scale}  spread of P over the file paths per held-out image: mean "
                    + ", share above 0.05 ".join(
                        describe([r[k] for r in paths]) for k in ("mean", "over_0.05")
                    )
                    + "; where the clean P is 0.2..0.8: images "
                    + describe([r["unsure_n"] for r in paths], digits=1)
                    + ", mean "
                    + describe([r["unsure_mean"] for r in paths])
                    + ", share above 0.05 "
                    + describe([r["unsure_over_0.05"] for r in paths])
                    + (
                        "; Platt slope " + describe([r["platt_slope"] for r in paths])
                        if scale == "paths"
                        else ""
                    )
                )
        if augment != "standard" or tuned:
            # The test table measured the recipes as they train by default (one row, frozen + LR
            # with zoomed copies, aside): these models were trained otherwise, so the figures
            # below say how this setting would rank recipes, not how these models would test.
            print("  (trained otherwise than the test table's recipes; the check below uses their figures)")
        for view in views:
            if len(measured[view]) > 2:
                found = agreement(measured[view])
                print(f"  agreement with the test split ({view}): {json.dumps(found)}")
    print(report())  # the test figures themselves, with their standard errors
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
