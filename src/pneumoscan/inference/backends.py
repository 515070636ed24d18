"""Model runtimes behind one small interface: a model file in, raw output rows out.

A :class:`Backend` knows how to load one kind of model file and run a float batch through it; it
knows nothing of calibration, thresholds, the scope guard or files on disk, which
:class:`~pneumoscan.inference.predictor.Predictor` owns. How to read the rows it returns is the
sidecar's business (:class:`~pneumoscan.models.artifacts.OutputLayout`).

- :class:`KerasBackend`: a ``.keras`` file loaded in Keras safe mode, called through a traced
  function (several times faster than ``model.predict`` for small batches);
- :class:`LiteRTBackend`: a ``.tflite`` export run by the LiteRT runtime, one image on one
  interpreter with every core, a batch shared out among single-threaded interpreters;
- :class:`CascadeBackend`: two runtimes of one model, a fast approximation that answers and the
  model itself, which answers again the rows a rule given by the Predictor marks.

:func:`load_backend` picks one by the file's suffix.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """What a runtime gives :class:`~pneumoscan.inference.predictor.Predictor`.

    Attributes
    ----------
    name : str
        ``"keras"`` or ``"litert"``.
    model : keras.Model or None
        The Keras model, for callers that need its layers or gradients (export, Grad-CAM); None
        for a runtime without one.
    """

    name: str
    model: Any

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(n, s, s, 1)`` float32 in 0..255 -> ``(n, width)`` raw model output."""
        ...


class KerasBackend:
    """A ``.keras`` model, loaded in safe mode (no arbitrary code from the file)."""

    name = "keras"

    def __init__(self, model_path: Path):
        import keras
        import tensorflow as tf

        self.model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
        # A traced call is several times faster than model.predict for small batches.
        self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._call(x)).reshape(len(x), -1)


class _LiteRTSession:
    """One LiteRT interpreter with its tensors, resized to the batch it is given; not thread-safe."""

    def __init__(self, model_path: Path, num_threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch: int | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(n, s, s, 1)`` -> ``(n, width)`` raw model output."""
        if self.batch != len(x):
            self.interpreter.resize_tensor_input(self.input["index"], list(x.shape))
            self.interpreter.allocate_tensors()
            self.batch = len(x)
        self.interpreter.set_tensor(self.input["index"], x.astype(self.input["dtype"], copy=False))
        self.interpreter.invoke()  # releases the GIL: sessions in other threads run meanwhile
        return np.array(self.interpreter.get_tensor(self.output["index"])).reshape(len(x), -1)


class LiteRTBackend:
    """A ``.tflite`` export. One instance may serve several threads; each interpreter is used by one
    thread at a time.

    Parameters
    ----------
    model_path : Path
    num_threads : int
        One image runs on one interpreter with this many threads; a batch is shared out, whole
        images at a time, among this many single-threaded interpreters (made on the first batch).
    """

    name = "litert"
    model = None

    def __init__(self, model_path: Path, num_threads: int):
        import queue

        self.model_path = model_path
        self.num_threads = max(1, int(num_threads))
        self._lock = threading.Lock()
        # One image at a time runs fastest on one interpreter using every core...
        self._session = _LiteRTSession(model_path, self.num_threads)
        # ...many images on one single-threaded interpreter per core, each taking whole images:
        # 1.1-1.2 times the rate of one 2-thread interpreter given the whole batch, and of
        # single-thread interpreters given half a batch per call (`benchmarks/litert_batching.py`,
        # the bundled export, 2 cores; docs/speed.md has the runs).
        self._workers: queue.SimpleQueue[_LiteRTSession] | None = None
        self._pool = None

    def run(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 1 or self.num_threads == 1:
            with self._lock:
                return self._session.run(x)
        return self._run_parallel(x)

    def _run_parallel(self, x: np.ndarray) -> np.ndarray:
        import concurrent.futures
        import queue

        with self._lock:
            if self._pool is None:
                self._workers = queue.SimpleQueue()
                for _ in range(self.num_threads):
                    self._workers.put(_LiteRTSession(self.model_path, 1))
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.num_threads, thread_name_prefix="pneumoscan-litert"
                )

        def run_part(part: np.ndarray) -> np.ndarray:
            session = self._workers.get()
            try:
                return np.concatenate([session.run(part[i : i + 1]) for i in range(len(part))])
            finally:
                self._workers.put(session)

        parts = np.array_split(x, min(self.num_threads, len(x)))
        return np.concatenate(list(self._pool.map(run_part, parts)))


def mix_rows(fast: np.ndarray, full: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``fast + w * (full - fast)`` row by row, and ``full`` exactly where ``w`` is 1 (float64)."""
    fast, full = np.asarray(fast, dtype=np.float64), np.asarray(full, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64).reshape(-1, 1)
    return np.where(w >= 1.0, full, fast + w * (full - fast))


class CascadeBackend:
    """A fast approximation of a model that answers first, and the model itself, whose answer is
    mixed in wherever ``weight`` says the fast one is not good enough (in or near the uncertain band).

    Each row is the fast runtime's, ``fast + w * (full - fast)`` where the weight ``w`` of the row
    is above 0, and ``full``'s own where it is 1: so the caller reads the rows as either's, and a
    weight that changes smoothly with the input makes the answer change smoothly too. ``full``
    runs only for the rows with a weight above 0. ``rows`` and ``full_rows`` count what it
    answered and how much of it went to ``full`` (approximate under concurrent calls).

    Parameters
    ----------
    fast, full : Backend
        Runtimes with the same input and output row.
    weight : callable
        ``(n, width)`` raw rows of ``fast`` -> ``(n,)`` weights of ``full`` in [0, 1].
    """

    def __init__(self, fast: Backend, full: Backend, weight):
        self.fast, self.full, self.weight = fast, full, weight
        self.name = full.name
        self.model = full.model
        self.rows = 0
        self.full_rows = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        rows = np.array(self.fast.run(x), dtype=np.float32)
        w = np.clip(np.asarray(self.weight(rows), dtype=np.float64), 0.0, 1.0)
        again = w > 0
        if again.any():
            rows[again] = mix_rows(rows[again], self.full.run(x[again]), w[again])
        self.rows += len(x)
        self.full_rows += int(again.sum())
        return rows


def load_backend(model_path: Path, *, num_threads: int) -> Backend:
    """The runtime for ``model_path`` by its suffix: ``.keras`` or ``.tflite``."""
    suffix = model_path.suffix.lower()
    if suffix == ".keras":
        return KerasBackend(model_path)
    if suffix == ".tflite":
        return LiteRTBackend(model_path, num_threads)
    raise ValueError(f"{model_path}: unsupported model type {suffix!r} (use .keras or .tflite)")
