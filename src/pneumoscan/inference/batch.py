"""Score an archive on Ray: ``pneumoscan predict --engine ray PATH... --out results.parquet``.

For hundreds of thousands to millions of images, on one machine or a Ray cluster:

1. Ray Data reads the files (``ray.data.read_binary_files``: local or shared filesystems, and the
   object stores pyarrow supports, e.g. ``s3://``, ``gs://``).
2. An actor pool holds one :class:`~pneumoscan.inference.predictor.Predictor` per actor, loaded
   once; each file goes through :meth:`Predictor.predict_bytes
   <pneumoscan.inference.predictor.Predictor.predict_bytes>` (the decoder and model call of
   ``pneumoscan predict``) and becomes a :func:`~pneumoscan.inference.results.prediction_row`.
3. The driver commits the rows as they arrive, a Parquet part file at a time, atomically
   (written aside, then renamed), into ``<out>.parts/``.
4. At the end the parts become ``<out>`` (and the CSV on request): exactly one row per input
   file, in input order, with the columns of ``pneumoscan predict --csv``.

Nothing is lost to a crash or Ctrl-C: a rerun of the same command reads the rows already in
``<out>`` and ``<out>.parts/``, skips those files and scores the rest. A file that failed (an error
row) counts as scored; delete its row's part, or the output, to try it again.

Rows travel from the actors as JSON text, so this module never lists the columns or their types:
they are whatever :func:`~pneumoscan.inference.results.prediction_row` makes (floats survive JSON
exactly). This module lives in the inference stage, beside ``Predictor.predict_paths``, as the other
engine of the same job: the CLI expands the paths and calls :func:`score_archive`, and later stages
(evaluation of a large labelled set) may call it too. Ray and pyarrow are imported only when used
(``pip install "pneumoscan[ray]"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.config import default_serving_model_path
from pneumoscan.data.imaging import MAX_FILE_BYTES, ImageDecodeError, read_file_bytes
from pneumoscan.inference.results import PREDICTION_COLUMNS, prediction_row, write_rows
from pneumoscan.runtime import available_cpus

log = logging.getLogger(__name__)

#: Folder of committed part files beside the output: ``results.parquet`` -> ``results.parquet.parts``.
PARTS_SUFFIX = ".parts"
#: Rows per committed part file: what a crash can cost at most, besides the work in flight.
DEFAULT_COMMIT_ROWS = 1000
#: Object store of a local Ray started by :func:`score_archive` (Ray's default is 30 % of RAM).
LOCAL_OBJECT_STORE_BYTES = 1 * 2**30
#: CPU reserved for each Ray read task (reading is mostly I/O) and for each Predictor actor (decoding
#: and the model). Together they fit one core: with a whole core per actor, a pool of one actor
#: per core leaves the reads no CPU budget, and Ray Data waits forever.
READ_TASK_CPUS = 0.25
ACTOR_CPUS = 1.0 - READ_TASK_CPUS
#: Files per call of a Predictor actor (a call costs Ray a few milliseconds; 64 against 16 took
#: benchmarks/batch_engine.py from 0.56x to 0.70x the local engine's throughput on 2 cores).
ACTOR_BATCH_ROWS = 64


def _missing_extra(exc: ImportError) -> ImportError:
    return ImportError(
        f"the Ray engine needs the 'ray' extra ({exc.name} is not installed): pip install 'pneumoscan[ray]'"
    )


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise _missing_extra(exc) from exc
    return pa, pq


def is_uri(path: str | Path) -> bool:
    """True for ``scheme://...`` (``s3://bucket/key``, ``file:///data``); False for local paths."""
    return "://" in str(path)


# --------------------------------------------------------------------------- Parquet rows


def rows_table(rows: Sequence[Mapping[str, Any]]):
    """A ``pyarrow.Table`` of prediction rows, columns in :data:`PREDICTION_COLUMNS` order.

    Types follow the values (a float column of failed rows only is of type ``null``; reading
    several tables back promotes it, see :func:`read_rows`).
    """
    pa, _ = _pyarrow()
    return pa.Table.from_pylist([{c: row.get(c) for c in PREDICTION_COLUMNS} for row in rows])


def write_parquet(out: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write prediction rows to ``out`` as Parquet, atomically (written aside, then renamed).

    Parameters
    ----------
    out : path
        The Parquet file; its folder is created.
    rows : sequence of mapping
        :func:`~pneumoscan.inference.results.prediction_row` results.

    Returns
    -------
    Path
        ``out``.
    """
    _, pq = _pyarrow()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(rows_table(rows), tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def read_rows(files: Iterable[str | Path], *, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of Parquet files written by :func:`write_parquet`, in file order."""
    _, pq = _pyarrow()
    rows: list[dict[str, Any]] = []
    for path in files:
        rows += pq.read_table(path, columns=list(columns) if columns else None).to_pylist()
    return rows


# --------------------------------------------------------------------------- one file's row


def bytes_row(predictor, data: bytes, *, name: str, tta: bool = False) -> dict[str, Any]:
    """The row of one in-memory file: its prediction, or why there is none. Never raises for bad
    input. The one bytes-to-row step of the HTTP service and the Ray actors.

    A file the decoder refuses gets the decoder's reason, as in ``pneumoscan predict``; any other
    failure (a bug, an exotic file) gets an error row too, and is logged by exception type and
    traceback only, since a message may quote the file (a DICOM tag, pixel bytes).

    Parameters
    ----------
    predictor : Predictor
    data : bytes
        The whole file.
    name : str
        The ``path`` of the row; its suffix helps recognise DICOM.
    tta : bool
        Test-time augmentation.

    Returns
    -------
    dict
        Exactly the keys of :data:`~pneumoscan.inference.results.PREDICTION_COLUMNS`, in order.
    """
    try:
        outcome: Any = predictor.predict_bytes(data, name=name, tta=tta)
    except ImageDecodeError as exc:
        outcome = exc.reason
    except Exception as exc:  # one odd file must not fail the others
        frames = "".join(traceback.format_tb(exc.__traceback__))
        log.error(
            "a file failed with %s (message withheld: it may quote the file)\n%s", type(exc).__name__, frames
        )
        outcome = f"could not process this file ({type(exc).__name__}); the failure was logged"
    row = prediction_row(name, outcome, threshold=predictor.threshold)
    return {column: row[column] for column in PREDICTION_COLUMNS}


# --------------------------------------------------------------------------- the actors


class PredictorActor:
    """A Ray Data actor: one Predictor, loaded once, turning ``{"path", "bytes"}`` batches into rows.

    Parameters
    ----------
    model_path : str or None
        The model; ``None`` is the bundled one of the worker's own installation.
    threshold : float, optional
        Override the model's operating threshold.
    tta : bool
        Test-time augmentation.
    num_threads : int
        LiteRT threads of this actor's Predictor (one actor per core: 1).
    """

    def __init__(self, model_path: str | None, *, threshold: float | None, tta: bool, num_threads: int = 1):
        from pneumoscan.inference.predictor import Predictor

        self.predictor = Predictor(
            model_path if model_path is not None else default_serving_model_path(),
            threshold=threshold,
            num_threads=num_threads,
        )
        self.tta = tta

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, list[str]]:
        rows = [
            json.dumps(bytes_row(self.predictor, bytes(data), name=str(path), tta=self.tta))
            for path, data in zip(batch["path"], batch["bytes"], strict=True)
        ]
        return {"row": rows}


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass
class ArchiveSummary:
    """What :func:`score_archive` did.

    Attributes
    ----------
    out : Path
        The consolidated Parquet file.
    csv : Path or None
        The CSV written beside it, when asked for.
    n_files : int
        Input files (one row each in ``out``).
    n_resumed : int
        Files already scored by an earlier run, skipped.
    n_scored : int
        Files scored by this run.
    n_failed : int
        Rows of ``out`` with an error.
    seconds : float
        Wall time of this run, Ray's start included.
    drift : dict or None
        The drift summary of every row of ``out`` (:func:`pneumoscan.inference.drift.batch_drift`);
        ``None`` when the model has no scope guard.
    """

    out: Path
    csv: Path | None
    n_files: int
    n_resumed: int
    n_scored: int
    n_failed: int
    seconds: float
    drift: dict | None = None


def parts_dir(out: str | Path) -> Path:
    """Where :func:`score_archive` commits rows for ``out``: ``<out>.parts/``."""
    out = Path(out)
    return out.with_name(out.name + PARTS_SUFFIX)


def expand_uris(uri: str) -> list[str]:
    """Every file under an object-store or ``file://`` URI (recursively, sorted, hidden names
    skipped), as URIs; the URI itself when it names a file.

    Raises
    ------
    FileNotFoundError
        Nothing at ``uri``.
    """
    _pyarrow()
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    scheme = uri.split("://", 1)[0]
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        return [uri]
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"nothing found at {uri}")
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    prefix = root.rstrip("/") + "/"
    files = [
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and not any(part.startswith(".") for part in f.path[len(prefix) :].split("/"))
    ]
    return [f"{scheme}://{p}" for p in sorted(files)]  # file:// + /abs/path, s3:// + bucket/key


def _scored_paths(out: Path, parts: Path) -> tuple[set[str], list[Path]]:
    """Paths already in ``out`` and in committed parts; removes parts left half-written."""
    files = sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []
    for leftover in parts.glob(".*.tmp") if parts.is_dir() else []:
        leftover.unlink(missing_ok=True)
    sources = ([out] if out.is_file() else []) + files
    return {row["path"] for row in read_rows(sources, columns=["path"])}, files


def _precheck(paths: Sequence[str], threshold: float) -> tuple[list[str], list[dict[str, Any]]]:
    """Split local paths into files Ray can read and rows for those it cannot (missing, too
    large, unreadable), with the very error ``pneumoscan predict`` gives them."""
    readable, failed = [], []
    for path in paths:
        if is_uri(path):
            readable.append(path)
            continue
        try:
            ok = os.path.isfile(path) and os.access(path, os.R_OK) and os.path.getsize(path) <= MAX_FILE_BYTES
        except OSError:
            ok = False
        if ok:
            readable.append(path)
            continue
        try:
            read_file_bytes(path)  # raises the CLI's own error for this file
        except ImageDecodeError as exc:
            failed.append(prediction_row(path, exc.reason, threshold=threshold))
        else:
            readable.append(path)  # became readable meanwhile
    return readable, failed


def _ray_path(path: str) -> str:
    """How Ray Data names a file it read: local paths absolute, URIs without their scheme."""
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return "/" + rest.lstrip("/") if scheme == "file" else rest
    return os.path.abspath(path)


def _start_ray(address: str | None, num_cpus: int | None, *, verbose: bool) -> bool:
    """Join the cluster at ``address``, or start a small local Ray. Returns whether we started it."""
    try:
        import ray
    except ImportError as exc:
        raise _missing_extra(exc) from exc
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from an offline machine
    quiet = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.WARNING}
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its own logger, not ray.init's
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(
            num_cpus=num_cpus or available_cpus(),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            **quiet,
        )
    return True


def score_archive(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    model_path: str | Path | None = None,
    threshold: float | None = None,
    tta: bool = False,
    csv: str | Path | None = None,
    ray_address: str | None = None,
    actors: int | None = None,
    num_cpus: int | None = None,
    commit_rows: int = DEFAULT_COMMIT_ROWS,
    progress: bool = True,
    verbose: bool = False,
) -> ArchiveSummary:
    """Score files on Ray, resumably, into one Parquet file with one row per file.

    Parameters
    ----------
    paths : sequence of str or Path
        Files (local paths or URIs; expand folders first, e.g. with
        :func:`~pneumoscan.data.imaging.list_input_files` or :func:`expand_uris`). Repeats are
        scored once.
    out : path
        The Parquet file to write; rows are committed to ``<out>.parts/`` on the way.
    model_path : path, optional
        A ``.keras`` or ``.tflite`` model with its sidecar, readable at this path on every node
        (a shared filesystem), or ``None`` for the bundled model of each node's installation.
    threshold : float, optional
        Override the model's operating threshold.
    tta : bool
        Test-time augmentation (4 views).
    csv : path, optional
        Also write the rows as CSV, like ``pneumoscan predict --csv``.
    ray_address : str, optional
        A Ray cluster to join (``ray://host:10001``, ``host:6379`` or ``auto``); without one a
        local Ray starts on this machine (``num_cpus`` cores) and stops at the end.
    actors : int, optional
        Predictor actors (default: the cluster's CPUs at start, one per core).
    num_cpus : int, optional
        Cores of a local Ray (default: those this process may use).
    commit_rows : int
        Rows per committed part file.
    progress : bool
        Show a progress bar.
    verbose : bool
        Show Ray's own logs and its workers' output.

    Returns
    -------
    ArchiveSummary
    """
    started = time.perf_counter()
    inputs, threshold_used = _checked_inputs(paths, model_path, threshold, commit_rows=commit_rows)
    out = Path(out)
    parts = parts_dir(out)
    # The bundled model is resolved by each worker in its own installation; others by path.
    actor_model = None if model_path is None else str(Path(model_path).resolve())
    todo = _unscored(inputs, out, parts)
    _score_into_parts(
        todo,
        parts,
        threshold_used,
        model=actor_model,
        threshold=threshold,
        tta=tta,
        ray_address=ray_address,
        actors=actors,
        num_cpus=num_cpus,
        commit_rows=commit_rows,
        progress=progress,
        verbose=verbose,
    )
    summary = _finish(inputs, out, parts, csv=csv, n_scored=len(todo), started=started)
    return dataclasses.replace(summary, drift=_drift(out, model_path))


def _drift(out: Path, model_path: str | Path | None) -> dict | None:
    """The drift summary of the consolidated rows, with the model's scope guard (None without one)."""
    from pneumoscan.inference.drift import batch_drift
    from pneumoscan.models.artifacts import ModelMetadata

    scope = ModelMetadata.read(model_path or default_serving_model_path()).scope
    if scope is None:
        return None
    return batch_drift(_pyarrow()[1].read_table(out, columns=["scope_distance"]).to_pylist(), scope)


def _finish(
    inputs: list[str], out: Path, parts: Path, *, csv: str | Path | None, n_scored: int, started: float
) -> ArchiveSummary:
    """The end of a run: the parts become ``out`` (and the CSV on request); what the run did."""
    table = _consolidate(inputs, out, parts)
    if csv is not None:
        rows = (row for batch in table.to_batches() for row in batch.to_pylist())
        write_rows(csv, PREDICTION_COLUMNS, rows, digits=4)
    return ArchiveSummary(
        out=out,
        csv=Path(csv) if csv is not None else None,
        n_files=len(inputs),
        n_resumed=len(inputs) - n_scored,
        n_scored=n_scored,
        n_failed=sum(1 for error in table.column("error").to_pylist() if error),
        seconds=time.perf_counter() - started,
    )


def _checked_inputs(
    paths: Sequence[str | Path], model_path: str | Path | None, threshold: float | None, *, commit_rows: int
) -> tuple[list[str], float]:
    """The distinct inputs, in order, and the threshold in use; the model's sidecar is read here, so a
    bad model fails early, before Ray starts."""
    from pneumoscan.models.artifacts import ModelMetadata

    if commit_rows < 1:
        raise ValueError(f"commit_rows must be at least 1, got {commit_rows}")
    inputs = list(dict.fromkeys(str(p) for p in paths))
    if not inputs:
        raise ValueError("no input files to score")
    meta = ModelMetadata.read(Path(model_path) if model_path is not None else default_serving_model_path())
    threshold_used = float(meta.threshold if threshold is None else threshold)
    if not 0.0 < threshold_used < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold_used}")
    return inputs, threshold_used


def _unscored(inputs: list[str], out: Path, parts: Path) -> list[str]:
    """The inputs an earlier run has not scored yet (in ``out`` or its committed parts)."""
    done, _ = _scored_paths(out, parts)
    todo = [p for p in inputs if p not in done]
    n_resumed = len(inputs) - len(todo)
    if n_resumed:
        log.info("resuming: %d of %d files already scored in %s", n_resumed, len(inputs), out)
    return todo


def _score_into_parts(todo: list[str], parts: Path, threshold_used: float, **ray_options) -> None:
    """Commit a row for every file of ``todo`` into ``parts``: first the files Ray could not read
    (:func:`_precheck`), then the rest as :func:`_run_on_ray` (given ``ray_options``) scores them."""
    parts.mkdir(parents=True, exist_ok=True)
    readable, failed = _precheck(todo, threshold_used)
    commit = _part_committer(parts)
    commit(failed)
    if readable:
        _run_on_ray(readable, commit, **ray_options)


def _part_committer(parts: Path):
    """A function that writes a list of rows as the next part file in ``parts`` (nothing for none)."""
    sequence = len(list(parts.glob("part-*.parquet")))

    def commit(rows: list[dict[str, Any]]) -> None:
        nonlocal sequence
        if rows:
            write_parquet(parts / f"part-{sequence:06d}-{uuid.uuid4().hex[:8]}.parquet", rows)
            sequence += 1

    return commit


def _run_on_ray(
    paths: list[str],
    commit,
    *,
    model: str | None,
    threshold: float | None,
    tta: bool,
    ray_address: str | None,
    actors: int | None,
    num_cpus: int | None,
    commit_rows: int,
    progress: bool,
    verbose: bool,
) -> None:
    import ray
    import ray.data
    from tqdm.auto import tqdm

    started_here = _start_ray(ray_address, num_cpus, verbose=verbose)
    try:
        n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = verbose
        context.print_on_execution_start = verbose
        original = {_ray_path(p): p for p in paths}
        ds = ray.data.read_binary_files(
            [_ray_path(p) if not is_uri(p) else p for p in paths],
            include_paths=True,
            num_cpus=READ_TASK_CPUS,
        )
        ds = ds.map_batches(
            PredictorActor,
            fn_constructor_kwargs={"model_path": model, "threshold": threshold, "tta": tta},
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            batch_size=ACTOR_BATCH_ROWS,
            num_cpus=ACTOR_CPUS,
            # TensorFlow (a .keras model) would start one thread per core in every actor.
            runtime_env={
                "env_vars": {
                    "TF_NUM_INTRAOP_THREADS": "1",
                    "TF_NUM_INTEROP_THREADS": "1",
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                }
            },  # fmt: skip
        )
        bar = tqdm(total=len(paths), desc="scoring", unit="img", disable=not progress)
        for batch in ds.iter_batches(batch_size=commit_rows, batch_format="numpy"):
            rows = [json.loads(text) for text in batch["row"]]
            for row in rows:
                row["path"] = original.get(row["path"], row["path"])
            commit(rows)
            bar.update(len(rows))
        bar.close()
    finally:
        if started_here:
            ray.shutdown()


def _consolidate(inputs: list[str], out: Path, parts: Path):
    """Write ``out`` from the earlier output and the parts: one row per input (its first row), in
    input order, rows for paths no longer among the inputs dropped; then remove the parts.
    Columnar throughout, for millions of rows. Returns the written ``pyarrow.Table``."""
    import shutil

    pa, pq = _pyarrow()
    import pyarrow.compute as pc

    sources = ([out] if out.is_file() else []) + sorted(parts.glob("part-*.parquet"))
    table = pa.concat_tables([pq.read_table(s) for s in sources], promote_options="default")
    order = pc.index_in(table.column("path"), value_set=pa.array(inputs, pa.string()))
    table = table.append_column("_order", order).filter(pc.is_valid(order))
    table = table.take(pc.sort_indices(table.column("_order")))  # a stable sort: first rows first
    position = table.column("_order").to_numpy()
    first = np.ones(len(position), dtype=bool)
    first[1:] = position[1:] != position[:-1]
    table = table.filter(pa.array(first)).drop_columns(["_order"])
    if table.num_rows != len(inputs):
        have = set(table.column("path").to_pylist())
        missing = [p for p in inputs if p not in have]
        raise RuntimeError(
            f"{len(missing)} file(s) have no row after the run (first: {missing[0]}); rerun the same "
            "command to score them"
        )
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    return table
