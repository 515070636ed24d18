"""``pneumoscan serve``: every endpoint and error through FastAPI's test client, the rows against
``pneumoscan predict``, privacy (no temporary files, no patient data in logs), and one real server
in a subprocess."""

from __future__ import annotations

import io
import json
import logging
import signal
import tempfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pneumoscan.testing.optional import require

require("fastapi", extra="dev")
require("httpx", extra="dev")

from fastapi.testclient import TestClient  # noqa: E402

from pneumoscan.inference.predictor import Predictor  # noqa: E402
from pneumoscan.inference.results import PREDICTION_COLUMNS, prediction_row, write_rows  # noqa: E402
from pneumoscan.interfaces import cli, service  # noqa: E402
from pneumoscan.interfaces.service import ServiceLimits, create_app  # noqa: E402
from pneumoscan.testing.app_server import free_port, pneumoscan_serve, start_logged, wait_ready  # noqa: E402
from pneumoscan.testing.dicom import PATIENT_TAGS, dicom_bytes  # noqa: E402
from pneumoscan.testing.models import export_tiny_litert, make_tiny_model  # noqa: E402
from pneumoscan.testing.synthetic import xray_image, xray_like  # noqa: E402

SIZE = 64
URL = "/v1/predictions"


@pytest.fixture(scope="module")
def lite_model(tmp_path_factory) -> Path:
    """A tiny model's LiteRT export (float32; the bundled one the service serves by default is float16)."""
    keras_path = make_tiny_model(tmp_path_factory.mktemp("model"), image_size=SIZE, threshold=0.45)
    return export_tiny_litert(keras_path)


@pytest.fixture(scope="module")
def predictor(lite_model) -> Predictor:
    return Predictor(lite_model)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor=predictor, limits=ServiceLimits(max_files=6))) as c:
        yield c


def jpeg(seed: int = 0, size: int = 96, pneumonia: bool = False) -> bytes:
    out = io.BytesIO()
    xray_image(size, seed=seed, pneumonia=pneumonia).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png(seed: int = 0, size: int = 96) -> bytes:
    out = io.BytesIO()
    xray_image(size, seed=seed).save(out, format="PNG")
    return out.getvalue()


def files(*items: tuple[str, bytes] | tuple[str, bytes, str]) -> list[tuple[str, tuple]]:
    """httpx's ``files=`` for the field ``files``: (name, bytes[, content type])."""
    return [("files", (item[0], item[1], item[2] if len(item) > 2 else "image/jpeg")) for item in items]


# --------------------------------------------------------------------------- health and model


def test_healthz_and_readyz(client, predictor):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["model"] == predictor.model_path.name


def test_readyz_is_503_while_the_model_loads_then_200(monkeypatch, predictor):
    release = threading.Event()

    def slow_predictor(path):
        release.wait(30)
        return predictor

    monkeypatch.setattr(service, "Predictor", slow_predictor)
    with TestClient(create_app("unused.tflite")) as c:
        assert c.get("/healthz").status_code == 200
        loading = c.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        busy = c.post(URL, files=files(("a.jpeg", jpeg())))
        assert busy.status_code == 503 and "still loading" in busy.json()["detail"]
        release.set()
        app_slot = c.app.state.model_slot
        assert app_slot.ready.wait(30)
        assert c.get("/readyz").status_code == 200
        assert c.post(URL, files=files(("a.jpeg", jpeg()))).status_code == 200


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    with TestClient(create_app(tmp_path / "missing.tflite")) as c:
        assert c.app.state.model_slot.ready.wait(30)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "missing.tflite" in ready.json()["detail"]
        answer = c.get("/v1/model")
        assert answer.status_code == 503 and "could not be loaded" in answer.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_model_card(client, predictor):
    card = client.get("/v1/model").json()
    assert card["threshold"] == predictor.threshold == 0.45
    assert card["architecture"] == "regularized" and card["backend"] == "litert"
    assert card["image_size"] == SIZE
    assert card["held_out"]["roc_auc"] == 0.5 and "validation" not in card
    assert card["held_out"]["measured_on"] and "optimistic" in card["held_out"]
    assert card["ensemble"] is None and card["calibration"] is not None
    assert card["independent"] is None  # the tiny model's sidecar records no independent figures
    assert card["decision_band"] == predictor.band.to_dict() and card["scope_guard"] is False
    assert card["export"]["format"] == "tflite"
    assert card["version"]["model_pneumoscan_version"] == "test"
    assert card["columns"] == list(PREDICTION_COLUMNS)
    assert "not a medical device" in card["disclaimer"]


def test_openapi_documents_the_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/predictions", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predictions"]["post"]["requestBody"]["content"]
    assert "files" in body["multipart/form-data"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200


# --------------------------------------------------------------------------- predictions


def test_rows_have_exactly_the_csv_columns_and_a_bad_file_is_an_error_row(client, predictor):
    answer = client.post(
        URL, files=files(("a.jpeg", jpeg(1)), ("broken.jpeg", b"not an image"), ("c.png", png(3)))
    )
    assert answer.status_code == 200
    rows = answer.json()["predictions"]
    assert [r["path"] for r in rows] == ["a.jpeg", "broken.jpeg", "c.png"]
    assert all(list(r) == list(PREDICTION_COLUMNS) for r in rows)
    good, bad, also_good = rows
    assert good["error"] == "" and also_good["error"] == ""
    assert good["p_normal"] + good["p_pneumonia"] == pytest.approx(1.0)
    assert good["label"] == ("PNEUMONIA" if good["p_pneumonia"] >= 0.45 else "NORMAL")
    assert bad["error"].startswith("not a recognised image")
    assert bad["p_pneumonia"] is None and bad["label"] == "" and bad["threshold"] == 0.45
    expected = predictor.predict_bytes(jpeg(1), name="a.jpeg")
    assert good == prediction_row("a.jpeg", expected)


@pytest.mark.required
def test_rows_equal_pneumoscan_predict_bit_for_bit(client, predictor, lite_model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    blobs = {
        "n1.jpeg": jpeg(11),
        "p1.jpeg": jpeg(12, pneumonia=True),
        "big.png": png(13, size=700),
        "scan.dcm": dicom_bytes(np.round(xray_like(80, 90, seed=14) * 16.0).astype(np.uint16)),
        "zero.png": b"",
    }
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    csv_path = tmp_path / "cli.csv"
    code = cli.main(["predict", str(folder), "--model", str(lite_model), "--csv", str(csv_path), "-q"])
    assert code == 1  # the empty file failed
    answer = client.post(
        URL, files=files(*((f"images/{n}", d, "application/octet-stream") for n, d in blobs.items()))
    )
    assert answer.status_code == 200
    served = {Path(r["path"]).name: r for r in answer.json()["predictions"]}
    # Full precision: the CLI's rows are prediction_row over Predictor.predict_paths.
    paths = sorted(folder.iterdir())
    results = predictor.predict_paths(paths, progress=False)
    predictions = results.predictions(predictor.threshold, band=predictor.band)
    for path, pred, err in zip(paths, predictions, results.errors, strict=True):
        row = prediction_row(f"images/{path.name}", pred or err, threshold=predictor.threshold)
        assert served[path.name] == row
    # The CSV the CLI wrote, byte for byte, from the served rows.
    out = io.StringIO(newline="")
    cli_rows = [dict(served[p.name], path=str(p)) for p in paths]
    write_rows(out, PREDICTION_COLUMNS, cli_rows, digits=4)
    assert out.getvalue().encode() == csv_path.read_bytes()


def test_dicom_upload_is_predicted(client):
    pixels = np.round(xray_like(80, 90, seed=5) * 16.0).astype(np.uint16)
    answer = client.post(URL, files=files(("x.dcm", dicom_bytes(pixels), "application/dicom")))
    assert answer.status_code == 200 and answer.json()["predictions"][0]["error"] == ""


def test_all_files_bad_is_422_with_the_rows(client):
    answer = client.post(URL, files=files(("a.jpeg", b"\xff\xd8\xff garbage"), ("b.dcm", dicom_bytes(None))))
    assert answer.status_code == 422
    body = answer.json()
    assert "none of the 2 file(s) could be read" in body["detail"]
    assert [r["error"] != "" for r in body["predictions"]] == [True, True]
    assert "no pixel data" in body["predictions"][1]["error"]


def test_every_decoded_format_has_media_types():
    from pneumoscan.data.imaging import SUPPORTED_FORMATS

    assert set(service.MEDIA_TYPES) == set(SUPPORTED_FORMATS)


def test_unsupported_media_types(client):
    # A part with an unsupported type is an error row beside good ones...
    mixed = client.post(URL, files=files(("a.jpeg", jpeg()), ("notes.txt", b"hello", "text/plain")))
    assert mixed.status_code == 200
    assert "unsupported media type 'text/plain'" in mixed.json()["predictions"][1]["error"]
    # ...415 when no part has a supported type, and when the body is not multipart at all.
    only = client.post(URL, files=files(("a.gif", b"GIF89a", "image/gif")))
    assert only.status_code == 415 and "JPEG, PNG, TIFF, BMP, WEBP, DICOM" in only.json()["detail"]
    raw = client.post(URL, content=jpeg(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 415
    assert "multipart/form-data" in raw.json()["detail"] and "files=@" in raw.json()["detail"]


def test_limits_answer_413(client):
    too_many = client.post(URL, files=files(*((f"{i}.jpeg", jpeg(i)) for i in range(7))))
    assert too_many.status_code == 413 and "at most 6 per request" in too_many.json()["detail"]


def test_body_limit_with_and_without_content_length(predictor):
    limits = ServiceLimits(max_files=4, max_body_bytes=64 * 1024)
    with TestClient(create_app(predictor=predictor, limits=limits)) as c:
        big = jpeg(1, size=2000)
        assert len(big) > 64 * 1024
        declared = c.post(URL, files=files(("big.jpeg", big)))
        assert declared.status_code == 413 and "limit 0.1 MB" in declared.json()["detail"]
        # Chunked, without Content-Length: counted while it streams in.
        body, content_type = _multipart([("big.jpeg", big)])
        streamed = c.post(
            URL,
            content=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
            headers={"content-type": content_type},
        )
        assert streamed.status_code == 413 and "over" in streamed.json()["detail"]
        assert c.post(URL, files=files(("small.jpeg", jpeg(2)))).status_code == 200


def test_missing_or_misnamed_field_is_422(client):
    misnamed = client.post(URL, files=[("file", ("a.jpeg", jpeg(), "image/jpeg"))])
    assert misnamed.status_code == 422 and "'file'" in misnamed.json()["detail"]
    assert "repeated field 'files'" in misnamed.json()["detail"]
    empty, content_type = _multipart([])
    none = client.post(URL, content=empty, headers={"content-type": content_type})
    assert none.status_code == 422 and "no files" in none.json()["detail"]


def test_malformed_multipart_is_400(client):
    no_boundary = client.post(URL, content=b"--x\r\n", headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["detail"]
    garbage = client.post(
        URL, content=b"\x00garbage\r\n--zz", headers={"content-type": "multipart/form-data; boundary=zz"}
    )
    assert garbage.status_code == 400 and "malformed multipart" in garbage.json()["detail"]
    body, content_type = _multipart([("a.jpeg", jpeg())])
    cut = client.post(URL, content=body[:-40], headers={"content-type": content_type})
    assert cut.status_code == 400 and "closing boundary" in cut.json()["detail"]


def test_an_unexpected_failure_is_an_error_row_not_a_500(client, predictor, monkeypatch):
    original = predictor.predict_bytes

    def flaky(data, *, name="<upload>", tta=False):
        if name == "odd.jpeg":
            raise RuntimeError("decoder bug")
        return original(data, name=name, tta=tta)

    monkeypatch.setattr(predictor, "predict_bytes", flaky)
    answer = client.post(URL, files=files(("odd.jpeg", jpeg(1)), ("fine.jpeg", jpeg(2))))
    assert answer.status_code == 200
    odd, fine = answer.json()["predictions"]
    assert odd["error"] == "could not process this file (RuntimeError); the failure was logged"
    assert fine["error"] == ""


def test_unknown_route_and_method_are_json(client):
    assert client.get("/v2/nothing").json() == {"detail": "Not Found"}
    assert client.get(URL).status_code == 405


# --------------------------------------------------------------------------- access and privacy


def test_api_key(predictor, monkeypatch):
    calls = []
    real = service.hmac.compare_digest
    monkeypatch.setattr(service.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    with TestClient(create_app(predictor=predictor, api_key="s3cret-key")) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        missing = c.post(URL, files=files(("a.jpeg", jpeg())))
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret-kez"}).status_code == 401
        good = c.post(URL, files=files(("a.jpeg", jpeg())), headers={"X-API-Key": "s3cret-key"})
        assert good.status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert len(calls) == 3  # every key check went through the constant-time comparison


def test_uploads_never_touch_the_disk(client, monkeypatch):
    from starlette.requests import Request

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    big = png(7, size=1500)
    assert len(big) > 1024 * 1024  # over the 1 MB at which Starlette's form parser spools to disk
    answer = client.post(URL, files=files(("big.png", big, "image/png"), ("small.jpeg", jpeg(8))))
    assert answer.status_code == 200 and [r["error"] for r in answer.json()["predictions"]] == ["", ""]
    # Control: the patch does catch spooling. Starlette's own form parsing of the same body hits it.
    body, content_type = _multipart([("big.png", big)])
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def parse():
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        await request.form()

    import anyio

    with pytest.raises(AssertionError, match="temporary file"):
        anyio.run(parse)


def test_logs_carry_no_patient_tags_names_or_pixels(client, predictor, caplog, monkeypatch):
    pixels = np.round(xray_like(80, 90, seed=21) * 16.0).astype(np.uint16)
    good = dicom_bytes(pixels)
    no_pixels = dicom_bytes(None)
    truncated = good[: len(good) // 2]
    patient_file = PATIENT_TAGS["PatientName"].replace("^", "_") + ".dcm"
    original = predictor.predict_bytes

    def leaky(data, *, name="<upload>", tta=False):
        if name == "crash.dcm":  # an unexpected failure whose message quotes the file
            raise ValueError(f"bad element PatientName={PATIENT_TAGS['PatientName']} {data[:64]!r}")
        return original(data, name=name, tta=tta)

    monkeypatch.setattr(predictor, "predict_bytes", leaky)
    caplog.set_level(logging.DEBUG)
    answer = client.post(
        URL,
        files=files(
            (patient_file, good, "application/dicom"),
            ("b.dcm", no_pixels, "application/dicom"),
            ("c.dcm", truncated, "application/dicom"),
            ("crash.dcm", good, "application/dicom"),
        ),
    )
    assert answer.status_code == 200
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "predictions: 4 file(s)" in text  # the request was logged...
    for secret in [*PATIENT_TAGS.values(), "Quixote", patient_file]:  # ...without what it carried
        assert secret not in text
    assert repr(good[:64])[2:40] not in text and pixels.tobytes()[:32].hex() not in text


# --------------------------------------------------------------------------- robustness


def test_random_bytes_never_make_a_500(client):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(data=st.binary(max_size=4096), as_multipart=st.booleans())
    def check(data: bytes, as_multipart: bool):
        if as_multipart:
            answer = client.post(URL, files=files(("f.jpeg", data, "application/octet-stream")))
            assert answer.status_code in (200, 422)
        else:
            answer = client.post(
                URL, content=data, headers={"content-type": "multipart/form-data; boundary=b"}
            )
            assert answer.status_code in (400, 422)
        assert "detail" in answer.json() or "predictions" in answer.json()

    check()


# --------------------------------------------------------------------------- the command


def _multipart(items: list[tuple[str, bytes]], boundary: str = "pneumoscanboundary") -> tuple[bytes, str]:
    chunks = []
    for name, data in items:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(chunks) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_serve_refuses_an_open_address_without_a_key(capsys, lite_model, monkeypatch):
    monkeypatch.delenv("PNEUMOSCAN_API_KEY", raising=False)
    assert cli.main(["serve", "--model", str(lite_model), "--host", "0.0.0.0"]) == 2
    assert "--insecure-no-auth" in capsys.readouterr().err
    assert cli.main(["serve", "--model", "nowhere.tflite"]) == 2
    assert "model file not found: nowhere.tflite" in capsys.readouterr().err
    monkeypatch.setenv("PNEUMOSCAN_API_KEY", "k")
    assert cli.main(["serve", "--model", str(lite_model), "--host", "0.0.0.0", "--insecure-no-auth"]) == 2
    assert "choose one" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--help"])
    assert exit_.value.code == 0 and "X-API-Key" in capsys.readouterr().out


@pytest.mark.required
def test_a_real_pneumoscan_serve_process(lite_model, predictor, tmp_path):
    port = free_port()
    key_file = tmp_path / "key"
    key_file.write_text("subprocess-key\n")
    log_path = tmp_path / "serve.log"
    proc = start_logged(pneumoscan_serve(lite_model, port, "--api-key-file", str(key_file)), log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/readyz", proc, log_path, 60, what="the server")
        body, content_type = _multipart([("Quixote_Dulcinea.jpeg", jpeg(31)), ("bad.png", b"\x89PNG\r\n")])
        request = urllib.request.Request(
            base + "/v1/predictions",
            data=body,
            method="POST",
            headers={"Content-Type": content_type, "X-API-Key": "subprocess-key"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
            rows = json.loads(resp.read())["predictions"]
        assert rows[0] == prediction_row("Quixote_Dulcinea.jpeg", predictor.predict_bytes(jpeg(31)))
        assert rows[1]["error"].startswith("not a recognised image")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/v1/model", timeout=10)
        assert refused.value.code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    log_text = log_path.read_text()
    assert code == 0 and "pneumoscan serve stopped" in log_text, log_text
    assert f"pneumoscan serve on http://127.0.0.1:{port}" in log_text
    assert (
        '"POST /v1/predictions HTTP/1.1" 200' in log_text and "predictions: 2 file(s), 1 failed" in log_text
    )
    assert "Quixote" not in log_text and "subprocess-key" not in log_text
