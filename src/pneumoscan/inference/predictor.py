"""The one inference path: :class:`Predictor` turns files or arrays into calibrated probabilities.

The CLI (``predict``, ``evaluate``, ``explain``), the app, the export check and the tests all go
through it, so preprocessing (:mod:`pneumoscan.data.imaging`), calibration and the operating threshold
are applied in exactly one place.

A model is a ``.keras`` file (loaded in Keras safe mode) or a ``.tflite`` file (run by the LiteRT
runtime), each run by its :mod:`~pneumoscan.inference.backends` runtime, with a sidecar
``<stem>.meta.json`` beside it that says what the model needs and how to read its output
(:class:`~pneumoscan.models.artifacts.ModelMetadata`). The model's output is read through the
sidecar's :class:`~pneumoscan.models.artifacts.OutputLayout`, never by position alone. Answers
are :class:`~pneumoscan.inference.results.Prediction`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pneumoscan.config import DISCLAIMER, default_keras_model_path
from pneumoscan.data.imaging import (
    DecodedImage,
    ImageDecodeError,
    decode_bytes,
    preprocess,
    read_image,
)
from pneumoscan.inference.backends import Backend, CascadeBackend, load_backend
from pneumoscan.inference.decision import UncertaintyBand, band_distance
from pneumoscan.inference.results import Prediction, make_prediction
from pneumoscan.inference.scope import IN_SCOPE, ScopeCheck, ScopeGuard, check_image, combine
from pneumoscan.models.artifacts import ModelMetadata, OutputLayout
from pneumoscan.runtime import available_cpus, decode_workers

log = logging.getLogger(__name__)


def source_keras_model(model_path: str | Path, metadata: ModelMetadata) -> Path | None:
    """The ``.keras`` model a LiteRT export was made from (Grad-CAM needs its gradients), or None.

    Looked for at the path its sidecar records (``export.source``, relative to the export's
    folder, or absolute), then beside the export under that file name; a ``.keras`` model is its
    own source.
    """
    model_path = Path(model_path)
    if model_path.suffix.lower() == ".keras":
        return model_path
    source = metadata.export.source if metadata.export is not None else None
    if not source:
        return None
    for candidate in (model_path.parent / source, model_path.parent / Path(source).name):
        if candidate.suffix.lower() == ".keras" and candidate.is_file():
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class FastPath:
    """An ensemble export's fast path, as ``pneumoscan export --fast-path`` records it in the
    sidecar (``export.fast_path``): the averaged-body model that answers first (``file``), and how
    much of the ensemble's own answer is mixed in by the fast answer's distance to the uncertain
    band (:func:`~pneumoscan.inference.decision.band_distance`; 0 inside it): all of it below
    ``delta``, none from ``blend`` on, linearly in between, so that the answer has no jump where
    the rule hands over (the same film brought in by two paths may lie on either side). Above the
    band ``delta_above`` and ``blend_above`` take their place (the same as below when a sidecar
    names none): the averaged body errs upwards near the band, so it is trusted later there. So
    the fast path states only clear answers; every uncertain one is the ensemble's. ``check`` is
    the check that let it ship."""

    file: Path
    delta: float
    blend: float
    check: dict
    delta_above: float | None = None
    blend_above: float | None = None

    def __post_init__(self):
        if self.delta_above is None:
            object.__setattr__(self, "delta_above", self.delta)
        if self.blend_above is None:
            object.__setattr__(self, "blend_above", max(self.blend, self.delta_above))
        pairs = ((self.delta, self.blend, ""), (self.delta_above, self.blend_above, "_above"))
        for low, high, side in pairs:
            if not 0.0 <= low <= high < 0.5:
                raise ValueError(f"fast path: need 0 <= delta{side} <= blend{side} < 0.5, got {low}, {high}")

    def weight(self, distance: np.ndarray, above: np.ndarray | None = None) -> np.ndarray:
        """The ensemble's weight in the answer, by the fast answer's distance to a decision edge;
        ``above`` (bool, same shape) marks the answers above the band, which use ``delta_above``
        and ``blend_above``."""
        distance = np.asarray(distance, dtype=np.float64)
        below_w = _ramp(distance, self.delta, self.blend)
        if above is None:
            return below_w
        return np.where(np.asarray(above, bool), _ramp(distance, self.delta_above, self.blend_above), below_w)

    def ensemble_weight(
        self, p_pneumonia: np.ndarray, *, band: UncertaintyBand, spread: np.ndarray | None = None
    ) -> np.ndarray:
        """The ensemble's weight for fast answers ``p_pneumonia`` (calibrated, with their member
        ``spread``): :meth:`weight` of their :func:`~pneumoscan.inference.decision.band_distance`,
        the answers at or above ``band.high`` counted as above the band."""
        p = np.asarray(p_pneumonia, dtype=np.float64)
        return self.weight(band_distance(p, band=band, spread=spread), above=p >= band.high)

    @classmethod
    def of(cls, metadata: ModelMetadata, model_path: Path) -> FastPath | None:
        """The sidecar's fast path, with ``file`` beside ``model_path``; None without one."""
        record = metadata.export.extra.get("fast_path") if metadata.export is not None else None
        if not record:
            return None
        delta = float(record["delta"])
        above = [None if record.get(k) is None else float(record[k]) for k in ("delta_above", "blend_above")]
        return cls(
            model_path.parent / Path(str(record["file"])).name,
            delta,
            float(record.get("blend", delta)),
            dict(record.get("check", {})),
            *above,
        )


def _ramp(distance: np.ndarray, delta: float, blend: float) -> np.ndarray:
    """1 below ``delta``, 0 from ``blend`` on, linear in between (a step when they are equal)."""
    if blend == delta:
        return (distance < delta).astype(np.float64)
    return np.clip((blend - distance) / (blend - delta), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Details:
    """Everything a model says about a batch of images, calibrated.

    Attributes
    ----------
    p_pneumonia : ndarray of shape (n,), float64
        Calibrated probability of pneumonia. For an ensemble, the mean of the members' calibrated
        probabilities.
    members : ndarray of shape (n, k), float64, or None
        Each ensemble member's calibrated probability; ``None`` for a single model or a student.
    spread : ndarray of shape (n,), float64, or None
        Standard deviation of ``members`` across members (0 when they agree), or a distilled
        student's prediction of it; ``None`` for a single model.
    embedding : ndarray of shape (n, e), float32, or None
        The shared frozen stem's pooled features, for the out-of-scope guard; ``None`` when the
        model has no embedding output.
    """

    p_pneumonia: np.ndarray
    members: np.ndarray | None = None
    spread: np.ndarray | None = None
    embedding: np.ndarray | None = None


@dataclasses.dataclass
class PathResults:
    """Results of :meth:`Predictor.predict_paths`, aligned with the input paths.

    Attributes
    ----------
    paths : list of Path
    p_pneumonia : ndarray of shape (n,), float64
        Calibrated; NaN where the file failed.
    errors : list of (str or None)
        ``None`` when the file was read, else why not.
    spread : ndarray of shape (n,), float64, or None
        Ensemble member spread (:class:`Details`); NaN where the file failed.
    embedding : ndarray of shape (n, e), float32, or None
        Stem embeddings (:class:`Details`); NaN rows where the file failed.
    scope : list of ScopeCheck
        The out-of-scope guard's verdict per file (:data:`~pneumoscan.inference.scope.IN_SCOPE`
        for failed files); a file that is not a radiograph has NaN probabilities and no error.
    """

    paths: list[Path]
    p_pneumonia: np.ndarray
    errors: list[str | None]
    spread: np.ndarray | None = None
    embedding: np.ndarray | None = None
    scope: list[ScopeCheck] | None = None

    def predictions(
        self, threshold: float, *, band: UncertaintyBand | None = None
    ) -> list[Prediction | ScopeCheck | None]:
        """Per file: a :class:`Prediction`, the :class:`ScopeCheck` refusing a non-radiograph, or
        ``None`` where the file failed (its reason is in :attr:`errors`)."""
        scope = self.scope or [IN_SCOPE] * len(self.paths)
        spread = self.spread if self.spread is not None else [None] * len(self.paths)
        out: list[Prediction | ScopeCheck | None] = []
        for p, err, check, sp in zip(self.p_pneumonia, self.errors, scope, spread, strict=True):
            if err is not None:
                out.append(None)
            elif not check.radiograph:
                out.append(check)
            else:
                out.append(make_prediction(p, threshold, band=band, spread=sp, scope=check))
        return out


def tta_views(x: np.ndarray) -> np.ndarray:
    """Test-time augmentation views of a batch: the image, a central 92 % crop and two shifted
    crops, each resized back. ``(n, s, s, 1)`` -> ``(4, n, s, s, 1)``, uint8."""
    from PIL import Image

    n, size = x.shape[0], x.shape[1]
    crop = int(round(size * 0.92))
    offsets = [((size - crop) // 2, (size - crop) // 2), (0, 0), (size - crop, size - crop)]
    views = [x]
    for top, left in offsets:
        view = np.empty_like(x)
        for i in range(n):
            patch = Image.fromarray(x[i, top : top + crop, left : left + crop, 0], "L")
            view[i, :, :, 0] = np.asarray(patch.resize((size, size), Image.Resampling.BILINEAR))
        views.append(view)
    return np.stack(views)


class Predictor:
    """Loads a model and its sidecar once; predicts calibrated pneumonia probabilities.

    Parameters
    ----------
    model_path : path, optional
        A ``.keras`` or ``.tflite`` file with its ``.meta.json`` sidecar. Default: the bundled
        model (:func:`pneumoscan.config.default_keras_model_path`).
    threshold : float, optional
        Override the stored operating threshold.
    num_threads : int, optional
        Threads for the LiteRT runtime (default: the cores this process may run on,
        :func:`pneumoscan.data.imaging.available_cpus`). A single image runs on one interpreter with
        all of them; a batch is shared out, whole images at a time, among ``num_threads``
        single-threaded interpreters.
    scope_guard : bool, default=True
        Run the out-of-scope guard (:mod:`pneumoscan.inference.scope`): the pixel checks that refuse
        images that are not radiographs, and the embedding distance that flags images unlike the
        training population. ``False`` skips both: every image is scored and reported in scope,
        whatever it is. Meant for measuring what the guard costs (``benchmarks/inference.py``
        times the two side by side); an answer given without the guard says nothing about scope.
    fast_path : bool, default=True
        Where the sidecar names a fast path (:class:`FastPath`; a LiteRT ensemble exported with
        ``--fast-path``), answer with it, and let the ensemble answer every image whose fast
        answer lies in the uncertain band or near it: alone within the fast path's ``delta`` of
        the band, mixed in up to its ``blend``. ``False``: the ensemble answers every
        image (the reference the fast path is checked against).

    Thread safety: one instance may serve several threads (the app shares one); each LiteRT
    interpreter is used by one thread at a time.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threshold: float | None = None,
        num_threads: int | None = None,
        scope_guard: bool = True,
        fast_path: bool = True,
    ):
        self.model_path = Path(model_path) if model_path is not None else default_keras_model_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"model file not found: {self.model_path}. Train one with `pneumoscan train`, or "
                "pass --model PATH to a .keras or .tflite file."
            )
        self.metadata: ModelMetadata = ModelMetadata.read(self.model_path)
        self.image_size = self.metadata.image_size
        self.threshold = float(self.metadata.threshold if threshold is None else threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        self.calibrator = self.metadata.calibration
        #: The three-outcome rule's band (:mod:`pneumoscan.inference.decision`): the fitted one when
        #: it covers the stretch between 0.5 and this threshold, else the minimal one.
        self.band = UncertaintyBand.minimal(self.threshold)
        if self.metadata.decision is not None:
            fitted = UncertaintyBand.from_dict(self.metadata.decision["band"])
            try:
                fitted.check(self.threshold)
                self.band = fitted
            except ValueError:
                log.warning(
                    "the stored uncertainty band does not fit threshold %.3f: using 0.5..threshold",
                    self.threshold,
                )
        #: Whether the out-of-scope guard runs at all (pixel checks and embedding distance).
        self.scope_guard = bool(scope_guard)
        #: The out-of-scope guard on the embedding (:mod:`pneumoscan.inference.scope`), or None
        #: (the model has none, or ``scope_guard=False``).
        self.guard = (
            ScopeGuard.from_dict(self.metadata.scope)
            if self.scope_guard and self.metadata.scope is not None
            else None
        )
        #: How to read the model's output row (:class:`OutputLayout`), from the sidecar.
        self.layout = OutputLayout.of(self.metadata)
        #: Ensemble member columns (0 for a single model or a student) and the embedding's width.
        self.members = self.layout.members
        self.embedding_dim = self.layout.embedding_dim
        self.disclaimer = DISCLAIMER
        #: The runtime that turns a float batch into raw output rows (:mod:`~pneumoscan.inference.backends`).
        threads = num_threads or available_cpus()
        self.runtime: Backend = load_backend(self.model_path, num_threads=threads)
        #: The fast path in use (:class:`FastPath`), or None: the model answers every image.
        self.fast_path = FastPath.of(self.metadata, self.model_path) if fast_path else None
        if self.fast_path is not None and not self.fast_path.file.is_file():
            log.warning(
                "%s: its fast path %s is missing; the whole model answers every image (slower, same answers)",
                self.model_path,
                self.fast_path.file,
            )
            self.fast_path = None
        if self.fast_path is not None:
            fast = load_backend(self.fast_path.file, num_threads=threads)
            self.runtime = CascadeBackend(fast, self.runtime, self._ensemble_weight)
        #: ``"keras"`` or ``"litert"``.
        self.backend = self.runtime.name
        #: The Keras model (export and Grad-CAM need it), or None for a LiteRT export.
        self.model = self.runtime.model

    # ------------------------------------------------------------------ arrays

    def predict_outputs(self, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """The model's whole raw output.

        Parameters
        ----------
        x : ndarray of shape (n, size, size, 1), uint8 or float in 0..255

        Returns
        -------
        ndarray of shape (n, width), float64
            Read by :attr:`layout`: ``width`` is 1 for a single model; for an ensemble
            ``1 + members + embedding_dim``: the mean raw probability, each member's raw
            probability, then the embedding; for a student the columns its sidecar names.
        """
        x = np.asarray(x)
        expected = (self.image_size, self.image_size, 1)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"expected images of shape (n, {expected}), got {x.shape}")
        width = self.layout.width
        out = []
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].astype(np.float32)
            out.append(self.runtime.run(batch))
        if not out:
            return np.zeros((0, width))
        outputs = np.concatenate(out).astype(np.float64)
        if outputs.shape[1] != width:
            raise ValueError(
                f"{self.model_path}: the model outputs {outputs.shape[1]} values per image but its sidecar "
                f"describes {width}; the sidecar does not belong to this model file"
            )
        return outputs

    def predict_raw(self, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
        """The model's probability column, shape ``(n,)``: uncalibrated (an ensemble's mean over
        members), except for a student, whose column is already calibrated (:class:`OutputLayout`)."""
        return self.predict_outputs(x, batch_size=batch_size)[:, self.layout.probability]

    def predict_details(self, x: np.ndarray, *, tta: bool = False, batch_size: int = 64) -> Details:
        """Calibrated probabilities, member spread and embedding of a batch (see :class:`Details`).

        ``tta`` averages the raw outputs over :func:`tta_views` before calibrating.
        """
        if tta:
            views = tta_views(np.asarray(x))
            outputs = np.mean([self.predict_outputs(v, batch_size=batch_size) for v in views], axis=0)
        else:
            outputs = self.predict_outputs(x, batch_size=batch_size)
        return self.details_of(outputs)

    def details_of(self, outputs: np.ndarray) -> Details:
        """:class:`Details` of raw output rows (:meth:`predict_outputs`)."""
        outputs = np.asarray(outputs, dtype=np.float64)
        layout = self.layout
        embedding = (
            outputs[:, layout.embedding : layout.embedding + layout.embedding_dim].astype(np.float32)
            if layout.embedding_dim
            else None
        )
        if layout.calibrated:  # a student: the teacher's calibrated mean and spread, as they are
            p = np.clip(outputs[:, layout.probability], 0.0, 1.0)
            spread = None if layout.spread is None else np.clip(outputs[:, layout.spread], 0.0, 0.5)
            return Details(p, None, spread, embedding)
        if not layout.members:
            return Details(np.asarray(self.calibrator.transform(outputs[:, 0]), dtype=np.float64))
        # Each member is calibrated by the map fitted on out-of-fold member predictions, then the
        # calibrated probabilities are averaged: the mean of calibrated forecasts errs on the
        # side of caution, never of overconfidence.
        members = np.asarray(self.calibrator.transform(outputs[:, layout.member_columns]), dtype=np.float64)
        return Details(members.mean(axis=1), members, members.std(axis=1), embedding)

    def _ensemble_weight(self, rows: np.ndarray) -> np.ndarray:
        """The ensemble's weight in the answer to each raw row of the fast path
        (:meth:`FastPath.weight` of :func:`~pneumoscan.inference.decision.band_distance`, with this
        Predictor's band)."""
        details = self.details_of(rows)
        return self.fast_path.ensemble_weight(details.p_pneumonia, band=self.band, spread=details.spread)

    def predict_proba(self, x: np.ndarray, *, tta: bool = False, batch_size: int = 64) -> np.ndarray:
        """Calibrated probability of PNEUMONIA, shape ``(n,)``; ``tta`` averages :func:`tta_views`."""
        return self.predict_details(x, tta=tta, batch_size=batch_size).p_pneumonia

    # ------------------------------------------------------------------ images and files

    def embedding_checks(self, embedding: np.ndarray | None, n: int) -> list[ScopeCheck]:
        """The guard's verdict on ``n`` embeddings; :data:`IN_SCOPE` each without a guard."""
        if self.guard is None or embedding is None:
            return [IN_SCOPE] * n
        return self.guard.check(embedding)

    def assess(self, image: DecodedImage | np.ndarray, *, tta: bool = False) -> Prediction | ScopeCheck:
        """The whole answer for one image: the out-of-scope guard, then the decision.

        Parameters
        ----------
        image : DecodedImage, or ndarray of shape (h, w), uint8
            A bare grey array skips the pixel checks (it has no colour to judge); so does a
            predictor made with ``scope_guard=False``.

        Returns
        -------
        Prediction or ScopeCheck
            The guard's refusal when the image is not a radiograph (no probabilities), else the
            prediction with its decision and scope verdict.
        """
        pixel_check = IN_SCOPE
        if self.scope_guard and isinstance(image, DecodedImage):
            pixel_check = check_image(image)
            if not pixel_check.radiograph:
                return pixel_check
        x = preprocess(image, self.image_size)[None]
        details = self.predict_details(x, tta=tta)
        scope = combine(pixel_check, self.embedding_checks(details.embedding, 1)[0])
        spread = None if details.spread is None else details.spread[0]
        return make_prediction(
            details.p_pneumonia[0], self.threshold, band=self.band, spread=spread, scope=scope
        )

    def predict_image(self, image: DecodedImage | np.ndarray, *, tta: bool = False) -> Prediction:
        """Predict one decoded image (or a 2-D uint8 grey array of any size), whatever it is.

        Prefer :meth:`assess`, which refuses images that are not radiographs; this method scores
        them anyway (marked out of scope), for callers that need a number.
        """
        outcome = self.assess(image, tta=tta)
        if isinstance(outcome, ScopeCheck):
            gray = image.gray if isinstance(image, DecodedImage) else image
            prediction = self.assess(gray, tta=tta)
            return dataclasses.replace(prediction, in_scope=False, scope_reason=outcome.reason)
        return outcome

    def predict_bytes(
        self, data: bytes, *, name: str = "<upload>", tta: bool = False
    ) -> Prediction | ScopeCheck:
        """Decode and :meth:`assess` an in-memory file; raises :class:`ImageDecodeError` for bad input."""
        return self.assess(decode_bytes(data, name=name), tta=tta)

    def predict_paths(
        self, paths: Sequence[str | Path], *, tta: bool = False, batch_size: int = 64, progress: bool = True
    ) -> PathResults:
        """Predict many files in batches; a bad file gets an error and NaN, the rest carry on."""
        import concurrent.futures

        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        probs = np.full(len(paths), np.nan)
        spread = np.full(len(paths), np.nan) if self.layout.has_spread else None
        embedding = (
            np.full((len(paths), self.embedding_dim), np.nan, np.float32) if self.embedding_dim else None
        )
        errors: list[str | None] = [None] * len(paths)
        scope: list[ScopeCheck] = [IN_SCOPE] * len(paths)
        bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress)

        def load(path: Path) -> tuple[np.ndarray, ScopeCheck] | str | ScopeCheck:
            """The model input and the pixel check's verdict; the reason it cannot be read; or the
            refusal of what is not a radiograph."""
            try:
                image = read_image(path)
            except ImageDecodeError as exc:
                return exc.reason
            pixel_check = check_image(image) if self.scope_guard else IN_SCOPE
            if not pixel_check.radiograph:
                return pixel_check
            return preprocess(image, self.image_size), pixel_check

        chunks = [list(range(s, min(s + batch_size, len(paths)))) for s in range(0, len(paths), batch_size)]
        with concurrent.futures.ThreadPoolExecutor(decode_workers()) as pool:
            # Decoding of the next chunk is queued before the current one is predicted, so file
            # reading and decoding overlap with inference.
            pending = [pool.submit(load, paths[i]) for i in chunks[0]] if chunks else []
            for k, chunk in enumerate(chunks):
                futures = pending
                if k + 1 < len(chunks):
                    pending = [pool.submit(load, paths[i]) for i in chunks[k + 1]]
                arrays, kept = [], []
                for i, result in zip(chunk, (f.result() for f in futures), strict=True):
                    if isinstance(result, str):
                        errors[i] = result
                        log.warning("skipped %s: %s", paths[i], result)
                    elif isinstance(result, ScopeCheck):
                        scope[i] = result
                        log.warning("not scored %s: %s", paths[i], result.reason)
                    else:
                        arrays.append(result[0])
                        scope[i] = result[1]  # the pixel check's; the embedding's joins it below
                        kept.append(i)
                if arrays:
                    details = self.predict_details(np.stack(arrays), tta=tta, batch_size=batch_size)
                    probs[kept] = details.p_pneumonia
                    if spread is not None:
                        spread[kept] = details.spread
                    if embedding is not None:
                        embedding[kept] = details.embedding
                    for i, check in zip(
                        kept, self.embedding_checks(details.embedding, len(kept)), strict=True
                    ):
                        scope[i] = combine(scope[i], check)
                bar.update(len(chunk))
        bar.close()
        return PathResults(paths, probs, errors, spread, embedding, scope)

    def __repr__(self) -> str:
        return (
            f"Predictor({str(self.model_path)!r}, backend={self.backend!r}, "
            f"image_size={self.image_size}, threshold={self.threshold:.4f})"
        )
