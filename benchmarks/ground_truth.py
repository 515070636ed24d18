"""The independently measured test figures a validation protocol is checked against, and how much
of their order the test split itself can tell apart.

    python benchmarks/ground_truth.py

Issue 16 (tracker #19) reported the official test split's ROC AUC for every recipe that has been
measured there (624 images: 234 normal, 390 pneumonia; held out, measured by others). A protocol
built from the training folder is trusted only if it ranks those recipes the same way
(:func:`agreement`: Spearman rho and pairwise order). But two test figures 0.01 apart on 624 images
may be in that order by chance, and a protocol should not be blamed for, or credited with, the
order of pairs the test cannot resolve. So each pair also gets the standard error of its difference:

- each figure's sampling error, by Hanley & McNeil's formula (1982) for the standard error of a ROC
  AUC from the class counts (checked below against the two patient-bootstrap intervals the issue
  reported);
- for the single recipe's mean over seeds, the seeds' spread as well (SD / sqrt(seeds)): ranking a
  recipe, its seed-to-seed variation is part of what is uncertain;
- the two errors' correlation: two models scored on the same images err together, which shrinks
  the difference's error. The test predictions that would measure it were not reported, so the
  difference is given under three assumed correlations (:data:`CORRELATIONS`).

A pair is *resolved* when the difference is at least :data:`RESOLVED_Z` of its standard errors.
Nothing is trained and nothing is read; the figures are the issue's.
"""

from __future__ import annotations

import argparse
import itertools
import math

import numpy as np

#: The official test split's classes (issue 16).
TEST_NORMAL, TEST_PNEUMONIA = 234, 390
#: The single recipe's test ROC AUC with seeds 1337, 7 and 42 (issue 16).
SINGLE_SEEDS = (0.967, 0.940, 0.938)
#: Test ROC AUC of each rerunnable recipe on the official test split, measured independently
#: (issue 16, tracker #19, read 2026-12-01): the ground truth the protocol must rank the same way.
GROUND_TRUTH = {
    "frozen_lr": 0.954,
    "single (mean over seeds)": float(np.mean(SINGLE_SEEDS)),
    "single, mean of the seeds' models": 0.963,
    "ensemble": 0.940,
}
#: The two patient-bootstrap 95 % intervals the issue reported: (AUC, low, high).
REPORTED_INTERVALS = {
    "released ensemble of 2026-11-28": (0.9395, 0.915, 0.959),
    "previous release, seed 1337": (0.967, 0.950, 0.979),
}
#: Correlations assumed between two models' AUC errors on the same images: none, moderate, high.
CORRELATIONS = (0.0, 0.5, 0.8)
#: A difference of this many standard errors counts as resolved by the test split.
RESOLVED_Z = 2.0


def auc_standard_error(auc: float, n_positive: int = TEST_PNEUMONIA, n_negative: int = TEST_NORMAL) -> float:
    """Hanley & McNeil's standard error of a ROC AUC from the class counts."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    variance = (auc * (1 - auc) + (n_positive - 1) * (q1 - auc**2) + (n_negative - 1) * (q2 - auc**2)) / (
        n_positive * n_negative
    )
    return math.sqrt(variance)


def standard_errors() -> dict[str, float]:
    """Each ground-truth row's standard error; the mean over seeds adds the seeds' SD / sqrt(n)."""
    out = {name: auc_standard_error(auc) for name, auc in GROUND_TRUTH.items()}
    seeds = np.asarray(SINGLE_SEEDS)
    out["single (mean over seeds)"] = math.hypot(
        auc_standard_error(float(seeds.mean())), float(seeds.std(ddof=1)) / math.sqrt(len(seeds))
    )
    return out


def pair_z(a: str, b: str, correlation: float) -> float:
    """(test AUC of ``a`` - that of ``b``) / the difference's standard error."""
    se = standard_errors()
    sa, sb = se[a], se[b]
    return (GROUND_TRUTH[a] - GROUND_TRUTH[b]) / math.sqrt(sa**2 + sb**2 - 2 * correlation * sa * sb)


def agreement(measured: dict[str, float]) -> dict:
    """Spearman rho and pairwise order agreement of ``measured`` against :data:`GROUND_TRUTH`, over
    every pair and over the pairs the test split resolves under each assumed correlation."""
    from scipy.stats import spearmanr

    names = [n for n in GROUND_TRUTH if n in measured]
    truth = [GROUND_TRUTH[n] for n in names]
    ours = [measured[n] for n in names]
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if truth[i] != truth[j]]

    def agrees(i: int, j: int) -> bool:
        return (truth[i] - truth[j]) * (ours[i] - ours[j]) > 0

    rho = float(spearmanr(truth, ours).statistic) if len(names) > 2 else float("nan")
    resolved = {}
    for r in CORRELATIONS:
        kept = [(i, j) for i, j in pairs if abs(pair_z(names[i], names[j], r)) >= RESOLVED_Z]
        resolved[f"correlation {r:g}"] = f"{sum(agrees(i, j) for i, j in kept)} of {len(kept)}"
    return {
        "rows": names,
        "spearman_rho": round(rho, 3),
        "pairs_agreeing": f"{sum(agrees(i, j) for i, j in pairs)} of {len(pairs)}",
        "resolved_pairs_agreeing": resolved,
    }


def report() -> str:
    """The test figures, their standard errors (with the check against the reported intervals) and
    every pair's difference in standard errors under each assumed correlation."""
    se = standard_errors()
    split = f"{TEST_NORMAL} normal, {TEST_PNEUMONIA} pneumonia"
    lines = [f"Official test split ({split}), measured independently:"]
    lines += [f"  {name:<36} ROC AUC {GROUND_TRUTH[name]:.3f}  SE {se[name]:.4f}" for name in GROUND_TRUTH]
    lines.append("Hanley-McNeil SE against the reported patient-bootstrap 95 % intervals (width / 3.92):")
    ratios = []
    for name, (auc, low, high) in REPORTED_INTERVALS.items():
        ratios.append(auc_standard_error(auc) / ((high - low) / 3.92))
        lines.append(f"  {name:<36} {auc_standard_error(auc):.4f} vs {(high - low) / 3.92:.4f}")
    lines.append(
        f"  (Hanley-McNeil is {1 - max(ratios):.0%}-{1 - min(ratios):.0%} below the bootstrap, which "
        "counts patients with several films: the ratios below, if anything, overstate what is resolved)"
    )
    header = " / ".join(f"r {r:g}" for r in CORRELATIONS)
    lines.append(f"Each pair: difference, and difference / its SE with the errors' correlation {header}:")
    for a, b in itertools.combinations(GROUND_TRUTH, 2):
        zs = [pair_z(a, b, r) for r in CORRELATIONS]
        flags = " ".join("resolved" if abs(z) >= RESOLVED_Z else "-" for z in zs)
        lines.append(
            f"  {a} vs {b}: {GROUND_TRUTH[a] - GROUND_TRUTH[b]:+.3f}; "
            + " / ".join(f"{z:+.2f}" for z in zs)
            + f"  ({flags})"
        )
    lines.append(f"(resolved: |difference| >= {RESOLVED_Z:g} SE)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
