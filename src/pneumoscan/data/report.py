"""The data report: what a dataset folder holds before any model sees it.

:func:`build_report` scans every image of every split once (read, sha256 of the bytes, decode with
the project's one decoder in :mod:`pneumoscan.data.imaging`), never stops on a bad file, and writes
``report.json`` plus figures. :func:`format_report` turns the report into a terminal summary.

Counting policy: ``splits`` counts the image *files found* (by suffix) in each class folder,
readable or not, so the numbers match a directory listing; files that cannot be decoded are
listed in ``unreadable`` with the reason, and ``readable`` gives the counts of decoded images.
Image sizes, modes, formats and colourfulness describe readable images only. Duplicates are found
on exact file bytes, so they include unreadable files too.

The report's keys (``report.json``, and the dict :func:`build_report` returns):

- ``version``, ``root`` (absolute), ``generated_at`` (UTC, ISO 8601), ``elapsed_s``
- ``splits``: split -> {class -> image files found, readable or not}
- ``readable``: split -> {class -> images that decode}
- ``n_files``, ``n_readable``, ``n_unreadable``: totals
- ``imbalance``: split -> PNEUMONIA / NORMAL file ratio (None without NORMAL files)
- ``patients``: split -> {class -> distinct patient ids}
- ``images_per_patient``: split -> {min, max, mean, median} (None when empty)
- ``patients_in_both_classes``: split -> sorted patient ids with NORMAL and PNEUMONIA files
- ``patient_overlap_between_splits``: patient id -> sorted splits, for ids in several splits
- ``subtypes``: split -> {"bacteria", "virus", "none" -> file count}
- ``image_sizes``: split -> {"n", "width": stats, "height": stats}, stats being
  {min, max, mean, median} of the original sizes in pixels (None when nothing decoded)
- ``modes``, ``formats``: decoded mode / format -> count (``"L"``, ``"RGB"``, ``"JPEG"``, ...)
- ``colourful``: [{"path", "colourfulness"}] readable images above
  :data:`pneumoscan.config.MAX_COLOURFULNESS`, likely not X-rays
- ``duplicates``: groups of byte-identical files, each {"hash", "files", "splits", "labels",
  "patients", "crosses_splits", "crosses_labels", "crosses_patients"}, files as paths
  relative to ``root``. A group crossing patients defeats a patient-level split.
- ``duplicate_counts``: {"groups", "files", "redundant_files", "groups_crossing_splits",
  "groups_crossing_labels", "groups_crossing_patients"}
- ``unreadable``: [{"path", "split", "label", "error"}], paths relative to ``root``
- ``data_fingerprint``: :func:`pneumoscan.data.fingerprint` of all files found;
  ``split_fingerprints``: the same per split
- ``figures``: names of the PNG files written
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pneumoscan._version import __version__
from pneumoscan.config import CLASS_NAMES, MAX_COLOURFULNESS
from pneumoscan.data.dataset import Sample, discover, fingerprint
from pneumoscan.data.imaging import ImageDecodeError, decode_bytes, read_file_bytes
from pneumoscan.plotting import CLASS_COLOURS, COLOURS, gallery_figure, message, new_figure, save
from pneumoscan.runtime import decode_workers

log = logging.getLogger(__name__)

REPORT_FILE = "report.json"
SUBTYPES = ("bacteria", "virus", "none")
#: Longest side of the thumbnails kept for the sample galleries.
THUMBNAIL_SIDE = 256
#: Seed of the (reproducible) choice of gallery images.
SAMPLE_SEED = 0


@dataclasses.dataclass
class _Scan:
    """What scanning one file found (internal)."""

    sample: Sample
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    colourfulness: float | None = None
    error: str | None = None
    thumbnail: np.ndarray | None = None


def _scan_file(sample: Sample, keep_thumbnail: bool) -> _Scan:
    """Read, hash and decode one file; every failure becomes ``error``, nothing is raised."""
    scan = _Scan(sample)
    path = sample.path
    try:
        data = read_file_bytes(path)
    except ImageDecodeError as exc:
        scan.error = exc.reason
        return scan
    scan.sha256 = hashlib.sha256(data).hexdigest()
    try:
        image = decode_bytes(data, name=str(path))
    except ImageDecodeError as exc:
        scan.error = exc.reason
        return scan
    except Exception as exc:  # a decoder bug must not stop a scan of thousands of files
        log.debug("unexpected error decoding %s", path, exc_info=True)
        scan.error = f"unexpected {type(exc).__name__} while decoding ({exc})"
        return scan
    scan.width, scan.height = image.width, image.height
    scan.mode, scan.format = image.mode, image.format
    scan.colourfulness = float(image.colourfulness)
    if keep_thumbnail:
        thumb = Image.fromarray(image.gray, "L")
        thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
        scan.thumbnail = np.asarray(thumb, dtype=np.uint8)
    return scan


def _stats(values: Sequence[float]) -> dict | None:
    """min, max, mean, median of ``values`` (None when empty)."""
    if len(values) == 0:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {
        "min": int(a.min()),
        "max": int(a.max()),
        "mean": round(float(a.mean()), 2),
        "median": float(np.median(a)),
    }


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _gallery_candidates(samples: Sequence[Sample], per_class: int) -> dict[int, list[Path]]:
    """Per class, a seeded choice of up to ``3 * per_class`` files from distinct patients.

    Three times as many as shown, so unreadable candidates can be replaced by the next ones.
    """
    rng = np.random.default_rng(SAMPLE_SEED)
    chosen: dict[int, list[Path]] = {}
    for label in range(len(CLASS_NAMES)):
        pool = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        picked, patients = [], set()
        for index in rng.permutation(len(pool)):
            if len(picked) >= 3 * per_class:
                break
            if pool[index].patient_id not in patients:
                patients.add(pool[index].patient_id)
                picked.append(pool[index].path)
        chosen[label] = picked
    return chosen


def build_report(
    data_dir: str | Path,
    *,
    out_dir: str | Path,
    sample_grid: int = 8,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Scan a dataset, write ``report.json`` and figures to ``out_dir``, and return the report.

    Parameters
    ----------
    data_dir : path
        A dataset root (``<root>/<split>/<CLASS>/``) or one split folder (``<split>/<CLASS>/``),
        as accepted by :func:`pneumoscan.data.discover`.
    out_dir : path
        Created if needed. Receives ``report.json``, ``class_balance.png``, ``image_sizes.png``
        and, when ``sample_grid > 0``, ``samples_NORMAL.png`` and ``samples_PNEUMONIA.png``.
    sample_grid : int
        Images per class in the sample galleries (a seeded choice, one per patient); 0 for none.
    progress : bool
        Show a tqdm progress bar.
    workers : int, optional
        Decoding threads (default: twice the CPU count, at most 8).

    Returns
    -------
    dict
        JSON-ready, the same as ``report.json``; its keys are listed in the module docstring.

    Raises
    ------
    FileNotFoundError, ValueError
        From :func:`pneumoscan.data.discover`: no such folder, or no class folders in it.
        Bad image files never raise; they are listed in ``unreadable``.
    """
    if sample_grid < 0:
        raise ValueError(f"sample_grid must be 0 or more, got {sample_grid}")
    start = time.perf_counter()
    root = Path(data_dir).resolve()
    out_dir = Path(out_dir)
    splits = discover(root)
    samples = [s for split_samples in splits.values() for s in split_samples]
    log.info("scanning %d files in %s (splits: %s)", len(samples), root, ", ".join(splits))

    candidates = _gallery_candidates(samples, sample_grid) if sample_grid else {}
    wanted = {p for paths in candidates.values() for p in paths}
    scans = _scan_all(samples, wanted, workers=workers or decode_workers(), progress=progress)

    report = _summarise(root, splits, scans)
    for item in report["unreadable"]:
        log.warning("unreadable image %s: %s", root / item["path"], item["error"])

    out_dir.mkdir(parents=True, exist_ok=True)
    report["figures"] = _write_figures(report, scans, candidates, out_dir, sample_grid)
    report["elapsed_s"] = round(time.perf_counter() - start, 2)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log.info("data report written to %s in %.1f s", out_dir / REPORT_FILE, report["elapsed_s"])
    return report


def _scan_all(samples: Sequence[Sample], wanted: set[Path], *, workers: int, progress: bool) -> list[_Scan]:
    """:func:`_scan_file` on every sample, in ``workers`` threads; thumbnails of the ``wanted`` paths."""
    from tqdm.auto import tqdm

    scans: list[_Scan] = [None] * len(samples)  # type: ignore[list-item]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(_scan_file, s, s.path in wanted): i for i, s in enumerate(samples)}
        with tqdm(total=len(samples), desc="scanning", unit="img", disable=not progress) as bar:
            for future in concurrent.futures.as_completed(futures):
                scans[futures[future]] = future.result()
                bar.update()
    return scans


def _summarise(root: Path, splits: Mapping[str, list[Sample]], scans: Sequence[_Scan]) -> dict:
    """The report (``figures`` empty, ``elapsed_s`` None) from the scans of every file of ``splits``."""
    by_split: dict[str, list[_Scan]] = defaultdict(list)
    for scan in scans:
        by_split[scan.sample.split].append(scan)
    per_split = {split: _summarise_split(by_split.get(split, [])) for split in splits}

    def section(key: str) -> dict:
        return {split: summary[key] for split, summary in per_split.items()}

    ok = [s for s in scans if s.error is None]
    duplicates = _duplicates(scans, root)
    return {
        "version": __version__,
        "root": str(root),
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "elapsed_s": None,
        "splits": section("splits"),
        "readable": section("readable"),
        "n_files": len(scans),
        "n_readable": len(ok),
        "n_unreadable": len(scans) - len(ok),
        "imbalance": section("imbalance"),
        "patients": section("patients"),
        "images_per_patient": section("images_per_patient"),
        "patients_in_both_classes": section("patients_in_both_classes"),
        "patient_overlap_between_splits": _patient_overlap(splits, by_split),
        "subtypes": section("subtypes"),
        "image_sizes": section("image_sizes"),
        "modes": dict(Counter(s.mode for s in ok).most_common()),
        "formats": dict(Counter(s.format for s in ok).most_common()),
        "colourful": [
            {"path": _rel(s.sample.path, root), "colourfulness": round(s.colourfulness, 2)}
            for s in sorted(ok, key=lambda s: str(s.sample.path))
            if s.colourfulness > MAX_COLOURFULNESS
        ],
        "duplicates": duplicates,
        "duplicate_counts": _duplicate_counts(duplicates),
        "unreadable": [
            {
                "path": _rel(s.sample.path, root),
                "split": s.sample.split,
                "label": s.sample.class_name,
                "error": s.error,
            }
            for s in sorted(scans, key=lambda s: str(s.sample.path))
            if s.error is not None
        ],
        "data_fingerprint": fingerprint([s.sample for s in scans]),
        "split_fingerprints": {split: fingerprint(split_samples) for split, split_samples in splits.items()},
        "figures": [],
    }


def _summarise_split(items: Sequence[_Scan]) -> dict:
    """One split's entries of the per-split report keys (``splits``, ``readable``, ``imbalance``, ...)."""
    counts = {c: sum(s.sample.label == i for s in items) for i, c in enumerate(CLASS_NAMES)}
    normal, pneumonia = counts[CLASS_NAMES[0]], counts[CLASS_NAMES[1]]
    ids_by_class = {
        c: {s.sample.patient_id for s in items if s.sample.label == i} for i, c in enumerate(CLASS_NAMES)
    }
    found = Counter(s.sample.subtype for s in items)
    ok = [s for s in items if s.error is None]
    return {
        "splits": counts,
        "readable": {
            c: sum(s.sample.label == i and s.error is None for s in items) for i, c in enumerate(CLASS_NAMES)
        },
        "imbalance": round(pneumonia / normal, 4) if normal else None,
        "patients": {c: len(ids) for c, ids in ids_by_class.items()},
        "images_per_patient": _stats(list(Counter(s.sample.patient_id for s in items).values())),
        "patients_in_both_classes": sorted(set.intersection(*ids_by_class.values())),
        "subtypes": {k: found.get(k, 0) for k in SUBTYPES},
        "image_sizes": {
            "n": len(ok),
            "width": _stats([s.width for s in ok]),
            "height": _stats([s.height for s in ok]),
        },
    }


def _patient_overlap(splits: Mapping[str, list[Sample]], by_split: Mapping[str, list[_Scan]]) -> dict:
    """Patient id -> sorted splits, for the ids found in more than one split."""
    splits_of_patient: dict[str, set[str]] = defaultdict(set)
    for split in splits:
        for scan in by_split.get(split, []):
            splits_of_patient[scan.sample.patient_id].add(split)
    return {pid: sorted(found) for pid, found in sorted(splits_of_patient.items()) if len(found) > 1}


def _duplicates(scans: Sequence[_Scan], root: Path) -> list[dict]:
    """Groups of byte-identical files (same sha256), in order of their first path."""
    groups: dict[str, list[_Scan]] = defaultdict(list)
    for scan in scans:
        if scan.sha256 is not None:
            groups[scan.sha256].append(scan)
    duplicates = []
    for digest, members in sorted(groups.items(), key=lambda kv: min(str(s.sample.path) for s in kv[1])):
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda s: str(s.sample.path))
        dup_splits = sorted({s.sample.split for s in members})
        labels = sorted({s.sample.class_name for s in members})
        dup_patients = sorted({s.sample.patient_id for s in members})
        duplicates.append(
            {
                "hash": digest,
                "files": [_rel(s.sample.path, root) for s in members],
                "splits": dup_splits,
                "labels": labels,
                "patients": dup_patients,
                "crosses_splits": len(dup_splits) > 1,
                "crosses_labels": len(labels) > 1,
                "crosses_patients": len(dup_patients) > 1,
            }
        )
    return duplicates


def _duplicate_counts(duplicates: Sequence[dict]) -> dict:
    return {
        "groups": len(duplicates),
        "files": sum(len(g["files"]) for g in duplicates),
        "redundant_files": sum(len(g["files"]) - 1 for g in duplicates),
        "groups_crossing_splits": sum(g["crosses_splits"] for g in duplicates),
        "groups_crossing_labels": sum(g["crosses_labels"] for g in duplicates),
        "groups_crossing_patients": sum(g["crosses_patients"] for g in duplicates),
    }


def _write_figures(
    report: dict,
    scans: Sequence[_Scan],
    candidates: Mapping[int, list[Path]],
    out_dir: Path,
    sample_grid: int,
) -> list[str]:

    written = []
    fig = class_balance_figure(report["splits"], title="Image files per class and split")
    written.append(save(fig, out_dir / "class_balance.png").name)
    ok = [s for s in scans if s.error is None]
    fig = size_distribution_figure(
        [s.width for s in ok],
        [s.height for s in ok],
        title="Original image sizes (readable images, all splits)",
    )
    written.append(save(fig, out_dir / "image_sizes.png").name)
    if sample_grid:
        by_path = {s.sample.path: s for s in scans}
        for label, paths in candidates.items():
            shown = [by_path[p] for p in paths if by_path[p].thumbnail is not None][:sample_grid]
            captions = [
                f"{s.sample.path.name}\n{s.sample.split}, {s.width}x{s.height} {s.mode}" for s in shown
            ]
            title = f"{CLASS_NAMES[label]}: {len(shown)} random images, one per patient"
            fig = gallery_figure([s.thumbnail for s in shown], captions, ncols=4, title=title)
            written.append(save(fig, out_dir / f"samples_{CLASS_NAMES[label]}.png").name)
    return written


def format_report(report: Mapping) -> str:
    """A readable terminal summary of a report from :func:`build_report`.

    Parameters
    ----------
    report : mapping
        As returned by :func:`build_report` (or loaded from its ``report.json``).

    Returns
    -------
    str
        Several lines, no trailing newline.
    """
    lines = [f"Data report for {report['root']} (pneumoscan {report.get('version', '?')})", ""]
    lines += _format_splits(report)
    lines += _format_images(report)
    lines += _format_duplicates(report)
    unreadable = report.get("unreadable", [])
    lines += ["", f"Unreadable files: {len(unreadable)}"]
    lines += _first(unreadable, 20, lambda item: f"  {item['path']}: {item['error']}")
    lines += ["", f"Data fingerprint: {report.get('data_fingerprint', '?')}"]
    if report.get("elapsed_s") is not None:
        lines.append(f"Scanned in {report['elapsed_s']:.1f} s.")
    return "\n".join(lines)


def _first(items: Sequence, limit: int, line) -> list[str]:
    """``line(item)`` for the first ``limit`` items, then how many more report.json lists."""
    lines = [line(item) for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more (see report.json)")
    return lines


def _some(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, with `` ...`` when there are more."""
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def _format_splits(report: Mapping) -> list[str]:
    """The table of files per split and class, the totals, and patients across classes or splits."""
    normal, pneumonia = CLASS_NAMES
    lines = [
        f"{'split':<10} {normal:>8} {pneumonia:>10} {'total':>7}  "
        f"{'PNEU/NORM':>9}  {'patients N/P':>13}  {'bacteria':>8} {'virus':>6}"
    ]
    for split, c in report["splits"].items():
        ratio = report.get("imbalance", {}).get(split)
        pat = report.get("patients", {}).get(split, {})
        sub = report.get("subtypes", {}).get(split, {})
        ratio_text = f"{ratio:.2f}" if ratio is not None else "n/a"
        lines.append(
            f"{split:<10} {c.get(normal, 0):>8} {c.get(pneumonia, 0):>10} {sum(c.values()):>7}  "
            f"{ratio_text:>9}  {str(pat.get(normal, 0)) + '/' + str(pat.get(pneumonia, 0)):>13}  "
            f"{sub.get('bacteria', 0):>8} {sub.get('virus', 0):>6}"
        )
    lines.append(
        f"{report.get('n_files', 0)} files, {report.get('n_readable', 0)} readable, "
        f"{report.get('n_unreadable', 0)} unreadable."
    )
    for split, ids in report.get("patients_in_both_classes", {}).items():
        if ids:
            lines.append(
                f"WARNING: {len(ids)} patient(s) of {split} have NORMAL and PNEUMONIA images: {_some(ids)}"
            )
    overlap = report.get("patient_overlap_between_splits", {})
    if overlap:
        shown = _some([f"{pid} ({'/'.join(s)})" for pid, s in overlap.items()])
        lines.append(f"Patient ids found in more than one split: {len(overlap)} ({shown})")
    else:
        lines.append("No patient id is found in more than one split.")
    return lines


def _format_images(report: Mapping) -> list[str]:
    """Image sizes per split, modes and formats, and the colour images."""
    lines = ["", "Original image sizes (pixels, readable images):"]
    for split, s in report.get("image_sizes", {}).items():
        if not s.get("width"):
            lines.append(f"  {split}: no readable images")
            continue
        w, h = s["width"], s["height"]
        lines.append(
            f"  {split}: width {w['min']}-{w['max']} (median {w['median']:g}), "
            f"height {h['min']}-{h['max']} (median {h['median']:g}), n = {s['n']}"
        )
    modes = ", ".join(f"{k} {v}" for k, v in report.get("modes", {}).items()) or "none"
    formats = ", ".join(f"{k} {v}" for k, v in report.get("formats", {}).items()) or "none"
    lines.append(f"Modes: {modes}. Formats: {formats}.")
    colourful = report.get("colourful", [])
    if colourful:
        shown = _some([c["path"] for c in colourful])
        lines.append(f"WARNING: {len(colourful)} colour image(s), probably not X-rays: {shown}")
    return lines


def _format_duplicates(report: Mapping) -> list[str]:
    """The duplicate counts and the groups that cross splits, labels or patients."""
    dc = report.get("duplicate_counts", {})
    lines = [
        "",
        f"Exact duplicates: {dc.get('groups', 0)} group(s) of byte-identical files "
        f"({dc.get('files', 0)} files, {dc.get('redundant_files', 0)} redundant); "
        f"{dc.get('groups_crossing_splits', 0)} cross splits, "
        f"{dc.get('groups_crossing_labels', 0)} cross labels, "
        f"{dc.get('groups_crossing_patients', 0)} cross patients.",
    ]
    kinds = ("splits", "labels", "patients")
    flagged = [g for g in report.get("duplicates", []) if any(g.get(f"crosses_{k}") for k in kinds)]

    def crossing(g: Mapping) -> str:
        what = " and ".join(k for k in kinds if g.get(f"crosses_{k}"))
        return f"  crosses {what}: " + ", ".join(g["files"])

    return lines + _first(flagged, 10, crossing)


# --------------------------------------------------------------------------- data report


def class_balance_figure(
    counts: Mapping[str, Mapping[str, int]], *, title: str = "Images per class and split"
) -> Figure:
    """Grouped bars of image counts per split and class, labelled with counts and shares.

    Parameters
    ----------
    counts : mapping
        Split name -> {class name -> number of images}, e.g.
        ``{"train": {"NORMAL": 1341, "PNEUMONIA": 3875}, "test": {...}}``.
    """
    splits = list(counts)
    classes = list(CLASS_NAMES) + sorted({c for d in counts.values() for c in d} - set(CLASS_NAMES))
    fig = new_figure(max(5.5, 1.8 * len(splits) + 2), 4.5)
    ax = fig.add_subplot()
    if not splits:
        message(ax, "No images found")
        return fig
    x = np.arange(len(splits))
    width = 0.8 / len(classes)
    for k, cls in enumerate(classes):
        values = [int(counts[split].get(cls, 0)) for split in splits]
        totals = [max(1, sum(counts[split].values())) for split in splits]
        bars = ax.bar(
            x + (k - (len(classes) - 1) / 2) * width,
            values,
            width,
            color=CLASS_COLOURS.get(cls, COLOURS[(k + 2) % len(COLOURS)]),
            label=cls,
        )
        ax.bar_label(
            bars,
            labels=[f"{v}\n({100 * v / t:.0f}%)" for v, t in zip(values, totals, strict=True)],
            fontsize=8,
            padding=2,
        )
    ax.set_xticks(x, splits)
    ax.set_xlabel("Split")
    ax.set_ylabel("Number of images")
    ax.set_title(title)
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="Class")
    return fig


def size_distribution_figure(widths, heights, *, title: str = "Image sizes") -> Figure:
    """Original image sizes: width vs height scatter and a histogram of aspect ratios.

    Parameters
    ----------
    widths, heights : array-like of shape (n,), int
        Sizes in pixels.
    """
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    if w.shape != h.shape or w.ndim != 1:
        raise ValueError(f"widths and heights must be 1-D of the same length, got {w.shape} and {h.shape}")
    fig = new_figure(11.0, 4.5)
    scatter_ax, hist_ax = fig.subplots(1, 2)
    if w.size == 0:
        message(scatter_ax, "No images")
        message(hist_ax, "No images")
        return fig
    scatter_ax.scatter(w, h, s=6, alpha=0.4, color=COLOURS[0], edgecolors="none")
    top = float(max(w.max(), h.max())) * 1.05
    scatter_ax.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="square (width = height)")
    scatter_ax.set_xlim(0, top)
    scatter_ax.set_ylim(0, top)
    scatter_ax.set_xlabel("Width (pixels)")
    scatter_ax.set_ylabel("Height (pixels)")
    scatter_ax.set_title(f"Width vs height (n = {w.size}; median {np.median(w):.0f} x {np.median(h):.0f} px)")
    scatter_ax.grid(alpha=0.3)
    scatter_ax.legend(fontsize=8, loc="upper left")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = w / h
    ratio = ratio[np.isfinite(ratio)]
    hist_ax.hist(ratio, bins=40, color=COLOURS[2], alpha=0.85)
    hist_ax.axvline(1.0, ls="--", color="grey", lw=1, label="square")
    hist_ax.set_xlabel("Aspect ratio (width / height)")
    hist_ax.set_ylabel("Number of images")
    hist_ax.set_title("Aspect ratios (models see a square, stretched)")
    hist_ax.grid(alpha=0.3)
    hist_ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig
