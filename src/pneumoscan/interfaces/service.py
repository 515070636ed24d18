"""``pneumoscan serve``: the model behind an HTTP API, for systems that call it (FastAPI on uvicorn).

Endpoints:

- ``POST /v1/predictions``: one or more images in the repeated multipart field ``files``; answers
  ``{"predictions": [row, ...]}``, one row per file, in upload order, with exactly the fields of
  ``pneumoscan predict --csv`` (:data:`~pneumoscan.inference.results.PREDICTION_COLUMNS`, made by
  :func:`~pneumoscan.inference.results.prediction_row`). A file that cannot be read is a row with
  its ``error``; the answer is 200 when at least one file was predicted, 422 (415 when every file
  had an unsupported media type) when none was, still with the rows.
- ``GET /v1/model``: the model card's data (architecture, threshold, the held-out training figures
  as ``held_out`` with what they were measured on, figures measured independently when the sidecar
  records them as ``independent``, versions).
- ``GET /healthz``: the process is up. ``GET /readyz``: the model is loaded (503 until then).
- ``GET /docs``: the OpenAPI documentation (``/openapi.json``).

Errors are JSON, ``{"detail": "<what went wrong and what to do>"}``: 400 malformed multipart,
401 missing or wrong API key, 413 body or file count over the limits, 415 not multipart (or no
file of a supported type), 422 no usable file, 503 model not loaded yet.

Privacy: uploads are parsed from the request stream into memory and never written to disk
(Starlette's own form parser spools files over 1 MB to a temporary file, so it is not used), and
nothing derived from an upload is logged: no file names, no DICOM tags, no pixels, no decoder
messages; a request is logged as counts and a duration.

One :class:`~pneumoscan.inference.predictor.Predictor` per process is loaded in the background at
start-up (``/healthz`` answers meanwhile); predictions run in a bounded thread pool, one file per
task, through :meth:`Predictor.predict_bytes <pneumoscan.inference.predictor.Predictor.predict_bytes>`,
the same decoder and model call as ``pneumoscan predict``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import threading
import time
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from pneumoscan import __version__
from pneumoscan.config import DISCLAIMER, default_serving_model_path
from pneumoscan.inference.batch import bytes_row
from pneumoscan.inference.drift import batch_drift
from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.results import PREDICTION_COLUMNS, prediction_row
from pneumoscan.interfaces.model_card import model_card
from pneumoscan.runtime import decode_workers

log = logging.getLogger(__name__)

#: The multipart field that carries the images (repeat it for several files).
FILES_FIELD = "files"
#: The request header that carries the API key.
API_KEY_HEADER = "X-API-Key"
#: Media types a file part may declare, per format the decoder reads
#: (:data:`~pneumoscan.data.imaging.SUPPORTED_FORMATS`).
MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "PNG": ("image/png", "image/x-png"),
    "TIFF": ("image/tiff", "image/tif"),
    "BMP": ("image/bmp", "image/x-bmp", "image/x-ms-bmp"),
    "WEBP": ("image/webp",),
    "DICOM": ("application/dicom", "image/dicom"),
}
#: What a file part may declare: a type of :data:`MEDIA_TYPES`, or nothing specific (no type,
#: ``application/octet-stream``), since the decoder recognises the format from the bytes.
ACCEPTED_MEDIA_TYPES = frozenset(
    {"", "application/octet-stream", *(t for ts in MEDIA_TYPES.values() for t in ts)}
)
_FORMATS = ", ".join(MEDIA_TYPES)


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    """What one request may carry.

    Attributes
    ----------
    max_files : int
        Files per request; more is answered 413.
    max_body_bytes : int
        Bytes of the whole request body; more is answered 413 (before reading it when the
        client sends ``Content-Length``).
    """

    max_files: int = 16
    max_body_bytes: int = 64 * 2**20

    def __post_init__(self):
        if self.max_files < 1:
            raise ValueError(f"max_files must be at least 1, got {self.max_files}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")


class RequestError(Exception):
    """A request the service refuses, with the HTTP status and a message a person can act on."""

    def __init__(self, status: int, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extra = extra


@dataclasses.dataclass
class Upload:
    """One file part of a request, held in memory."""

    name: str
    content_type: str
    data: bytearray = dataclasses.field(default_factory=bytearray)


class _ModelSlot:
    """The process's one Predictor, loaded in a background thread; ``error`` says why it is not."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.error: str | None = None
        self.seconds: float | None = None
        self.ready = threading.Event()

    def load(self, model_path: Path) -> None:
        started = time.perf_counter()
        try:
            predictor = Predictor(model_path)
            # One prediction on a blank image builds the runtime's kernels, so that the first
            # request is not the slow one; /readyz turns 200 only after it.
            predictor.predict_image(np.zeros((predictor.image_size,) * 2, np.uint8))
            self.predictor = predictor
        except Exception as exc:  # reported by /readyz and the prediction endpoint
            self.error = f"the model could not be loaded from {model_path}: {exc}"
            log.error("%s", self.error)
        else:
            self.seconds = time.perf_counter() - started
            log.info("model loaded in %.1f s: %r", self.seconds, self.predictor)
        finally:
            self.ready.set()


# --------------------------------------------------------------------------- request parsing


async def read_uploads(request: Request, limits: ServiceLimits) -> list[Upload]:
    """Parse a ``multipart/form-data`` request into in-memory :class:`Upload` objects.

    The body is streamed through python-multipart's parser; no byte reaches the disk.

    Parameters
    ----------
    request : starlette.requests.Request
    limits : ServiceLimits

    Returns
    -------
    list of Upload
        In the order of the body, at least one.

    Raises
    ------
    RequestError
        415 not multipart, 400 malformed, 413 over a limit, 422 no files or an unexpected field.
    """
    boundary = _multipart_boundary(request, limits)
    parts = _PartCollector(limits)
    parser = MultipartParser(boundary, parts.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise RequestError(413, _too_large(received, limits, at_least=True))
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise RequestError(
            400, f"malformed multipart body ({exc}); let the HTTP client build it (e.g. curl -F)"
        ) from None
    return parts.result()


def _multipart_boundary(request: Request, limits: ServiceLimits) -> bytes:
    """The request's multipart boundary, once its headers show a multipart body within the limit."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        shown = content_type.decode("latin-1") or "none"
        raise RequestError(
            415,
            f"expected a multipart/form-data body (got content type {shown}): send images in the "
            f"repeated field '{FILES_FIELD}', e.g. curl -F {FILES_FIELD}=@xray.jpeg URL",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestError(
            400,
            "the multipart Content-Type has no boundary parameter; let the HTTP "
            "client build the multipart body (e.g. curl -F, requests' files=)",
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, _too_large(int(declared), limits))
    return boundary


class _PartCollector:
    """python-multipart's parser callbacks: the parts of the field :data:`FILES_FIELD` become
    :class:`Upload` objects, the bytes of any other field are dropped (and the field reported)."""

    def __init__(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self.unexpected: list[str] = []
        self.ended = False
        self.part: Upload | None = None
        self.field, self.value = b"", b""
        self.headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        """The callbacks :class:`MultipartParser` takes, by name."""
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, disposition = parse_options_header(self.headers.get(b"content-disposition", b""))
        field = disposition.get(b"name", b"").decode("utf-8", "replace")
        if field != FILES_FIELD:
            self.unexpected.append(field)
            self.part = None  # its bytes are dropped
            return
        if len(self.uploads) >= self.limits.max_files:
            raise RequestError(
                413,
                f"too many files: at most {self.limits.max_files} per request; split them across requests",
            )
        filename = disposition.get(b"filename", b"").decode("utf-8", "replace")
        part_type, _ = parse_options_header(self.headers.get(b"content-type", b""))
        upload = Upload(filename or f"{FILES_FIELD}[{len(self.uploads)}]", part_type.decode("latin-1"))
        self.uploads.append(upload)
        self.part = upload

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part is not None:
            self.part.data += data[start:end]

    def on_end(self) -> None:
        self.ended = True

    def result(self) -> list[Upload]:
        """The uploads of a whole body; a :class:`RequestError` for a truncated body, another field
        or no file."""
        if not self.ended:
            raise RequestError(
                400,
                "the multipart body ended before its closing boundary (a truncated upload?); send the "
                "whole request again",
            )
        if self.unexpected:
            names = ", ".join(sorted({repr(n) for n in self.unexpected}))
            raise RequestError(
                422, f"unexpected form field(s) {names}: send images in the repeated field '{FILES_FIELD}'"
            )
        if not self.uploads:
            raise RequestError(
                422, f"no files: send one or more images in the repeated field '{FILES_FIELD}'"
            )
        return self.uploads


def _too_large(size: int, limits: ServiceLimits, *, at_least: bool = False) -> str:
    return (
        f"request body too large ({'over ' if at_least else ''}{size / 2**20:.1f} MB; limit "
        f"{limits.max_body_bytes / 2**20:.1f} MB): send fewer or smaller files per request"
    )


# --------------------------------------------------------------------------- predictions


def predict_upload(predictor: Predictor, upload: Upload) -> dict[str, Any]:
    """The row of one upload: its prediction, or why there is none. Never raises for bad input.

    Parameters
    ----------
    predictor : Predictor
    upload : Upload

    Returns
    -------
    dict
        Exactly the keys of :data:`~pneumoscan.inference.results.PREDICTION_COLUMNS`, in order.
    """
    if upload.content_type in ACCEPTED_MEDIA_TYPES:
        return bytes_row(predictor, bytes(upload.data), name=upload.name)
    refusal = (
        f"unsupported media type {upload.content_type!r}: send {_FORMATS} files (declared as "
        "their image/... or application/dicom type, or as application/octet-stream)"
    )
    row = prediction_row(upload.name, refusal, threshold=predictor.threshold)
    return {column: row[column] for column in PREDICTION_COLUMNS}


# --------------------------------------------------------------------------- the routes

#: The routes of every app :func:`create_app` makes; what differs between apps (the model slot,
#: limits, key and decode limiter) is in ``app.state`` and reaches the routes through dependencies.
router = APIRouter()
_KEY_HEADER = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the service's API key")
_PREDICTIONS = "/v1/predictions"


def check_key(request: Request, given: Annotated[str | None, Depends(_KEY_HEADER)]) -> None:
    """Dependency of every ``/v1`` route: the API key, when the app has one (constant-time compare)."""
    api_key = request.app.state.api_key
    if api_key is None:
        return
    if given is None or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise RequestError(401, f"missing or wrong API key: send it in the {API_KEY_HEADER} header")


def loaded_predictor(request: Request) -> Predictor:
    """Dependency: the loaded model, or 503 while it loads or after it failed to."""
    slot = request.app.state.model_slot
    if slot.predictor is not None:
        return slot.predictor
    if slot.error:
        raise RequestError(503, slot.error)
    raise RequestError(503, "the model is still loading; retry in a few seconds (see GET /readyz)")


LoadedPredictor = Annotated[Predictor, Depends(loaded_predictor)]


@router.get("/healthz", tags=["operations"], summary="the process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    tags=["operations"],
    summary="the model is loaded",
    responses={503: {"description": "the model is not loaded (yet)"}},
)
async def readyz(request: Request) -> JSONResponse:
    slot = request.app.state.model_slot
    if slot.predictor is not None:
        ready = {"status": "ready", "model": slot.predictor.model_path.name, "load_seconds": slot.seconds}
        return JSONResponse(ready)
    status, detail = (
        ("loading", "the model is still loading") if slot.error is None else ("failed", slot.error)
    )
    return JSONResponse({"status": status, "detail": detail}, status_code=503)


@router.get("/v1/model", tags=["model"], summary="the model card's data", dependencies=[Depends(check_key)])
async def get_model(model: LoadedPredictor) -> dict[str, Any]:
    return model_card(model)


_ROW_SCHEMA = {"type": "object", "properties": {c: {} for c in PREDICTION_COLUMNS}}
_UPLOAD_SCHEMA = {
    "type": "object",
    "required": [FILES_FIELD],
    "properties": {
        FILES_FIELD: {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "description": f"images: {_FORMATS}",
        }
    },
}
_DRIFT_SCHEMA = {
    "type": "object",
    "description": "the batch's drift summary: its images' distance to the training images (verdict, "
    "share beyond the scope guard's threshold, tests); needs 20 or more images for a verdict",
}


#: How :func:`create_app` registers :func:`predictions` (its description states the app's limits).
_PREDICTIONS_ROUTE: dict[str, Any] = {
    "methods": ["POST"],
    "tags": ["predictions"],
    "summary": "predict one or more images",
    "dependencies": [Depends(check_key)],
    "openapi_extra": {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": _UPLOAD_SCHEMA}}}
    },
    "responses": {
        200: {
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "predictions": {"type": "array", "items": _ROW_SCHEMA},
                            "drift": _DRIFT_SCHEMA,
                        },
                    }
                }
            }
        },
        400: {"description": "malformed multipart body"},
        401: {"description": "missing or wrong API key"},
        413: {"description": "too many files or too large a body"},
        415: {"description": "not multipart/form-data, or no file of a supported type"},
        422: {"description": "no file could be read (the rows say why)"},
        503: {"description": "the model is not loaded (yet)"},
    },
}


async def predictions(request: Request, model: LoadedPredictor) -> JSONResponse:
    started = time.perf_counter()
    uploads = await read_uploads(request, request.app.state.limits)
    limiter = request.app.state.decode_limiter
    rows = await asyncio.gather(
        *(anyio.to_thread.run_sync(predict_upload, model, u, limiter=limiter) for u in uploads)
    )
    failed = sum(1 for row in rows if row["error"])
    log.info(
        "predictions: %d file(s), %d failed, %.0f ms",
        len(rows),
        failed,
        1000 * (time.perf_counter() - started),
    )
    body = {"predictions": rows, "drift": batch_drift(rows, model.guard), "disclaimer": DISCLAIMER}
    if failed < len(rows):
        return JSONResponse(body)
    unsupported = all(u.content_type not in ACCEPTED_MEDIA_TYPES for u in uploads)
    detail = (
        f"none of the {len(rows)} file(s) is a supported image: send {_FORMATS}"
        if unsupported
        else f"none of the {len(rows)} file(s) could be read; each row's error says why"
    )
    return JSONResponse({"detail": detail, **body}, status_code=415 if unsupported else 422)


async def request_error(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail, **exc.extra}, status_code=exc.status)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    trace = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s %s failed with %s\n%s", request.method, request.url.path, type(exc).__name__, trace)
    return JSONResponse({"detail": "internal error; the server logged it"}, status_code=500)


# --------------------------------------------------------------------------- the app


def create_app(
    model_path: str | Path | None = None,
    *,
    predictor: Predictor | None = None,
    limits: ServiceLimits | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI application of ``pneumoscan serve``: :data:`router`'s routes over this app's
    model slot, limits, key and decode limiter (``app.state``).

    Parameters
    ----------
    model_path : path, optional
        Model to load at start-up (default :func:`pneumoscan.config.default_serving_model_path`, the
        bundled LiteRT export). Ignored when ``predictor`` is given.
    predictor : Predictor, optional
        An already loaded predictor (tests, embedding); the app is ready at once.
    limits : ServiceLimits, optional
        Request limits (default :class:`ServiceLimits`).
    api_key : str, optional
        When set, every ``/v1`` endpoint needs it in the ``X-API-Key`` header (compared in
        constant time); ``/healthz``, ``/readyz`` and the docs stay open.

    Returns
    -------
    fastapi.FastAPI
    """
    limits = limits or ServiceLimits()
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty (use None for no key)")
    slot = _ModelSlot()
    path = Path(model_path) if model_path is not None else default_serving_model_path()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if predictor is not None:
            slot.predictor = predictor
            slot.ready.set()
        else:
            threading.Thread(
                target=slot.load, args=(path,), name="pneumoscan-model-load", daemon=True
            ).start()
        yield

    app = FastAPI(
        title="pneumoscan",
        version=__version__,
        summary="Pneumonia screening in chest X-rays. " + DISCLAIMER,
        lifespan=lifespan,
    )
    app.state.model_slot = slot
    app.state.limits = limits
    app.state.api_key = api_key
    # Bounds the files decoded at once (memory of full-size images) across all requests.
    app.state.decode_limiter = anyio.CapacityLimiter(decode_workers())
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(Exception, server_error)
    app.include_router(router)
    description = (
        f"One row per file in the multipart field `{FILES_FIELD}`, with the columns of `pneumoscan "
        f"predict --csv`: {', '.join(PREDICTION_COLUMNS)}. At most {limits.max_files} files and "
        f"{limits.max_body_bytes / 2**20:.0f} MB per request. " + DISCLAIMER
    )
    app.add_api_route(_PREDICTIONS, predictions, description=description, **_PREDICTIONS_ROUTE)
    return app
