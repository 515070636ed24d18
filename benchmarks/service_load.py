"""``pneumoscan serve`` under load: an async client with N concurrent connections against a real
server process, on real 224-px and full-size images, with 10 % malformed requests mixed in.

Measured, in one run:

- the baseline: the in-process Predictor (``predict_bytes``) on the same 224-px files, from N
  threads, the same concurrency as the client (and from one thread, for reference);
- the service: N connections (a minimal asyncio HTTP/1.1 client; ``--client httpx`` for httpx)
  sending one image per request (``POST /v1/predictions``), every tenth request malformed (a
  corrupt image, a body that is not multipart, a misnamed field, too many files, a truncated
  multipart body, a text file); then full-size images (upscaled to about 2000 px, PNG and JPEG)
  the same way;
- for good requests: failures (anything but a 200 with the row the in-process Predictor gives for
  that file, bit for bit), latency p50/p95/p99, throughput and its ratio to the baseline;
- for malformed ones: answers other than the expected 4xx (a 5xx or a dropped connection fails);
- the server's resident memory (``/proc/PID/status``) after a warm-up and at the end;
- degradation: the 224-px phase runs in 10 blocks, each right after an in-process run on the same
  good images; the service's ratio to the Predictor in the last three blocks against the first
  three (a ratio, so that other work on the machine, which comes and goes, hits both sides).

Verdict: PASS when no good request failed, every malformed one got its 4xx, throughput is >= 0.7x
the in-process Predictor at batch-1 requests, RSS grew <= 50 MB over >= 5,000 requests, and the last
three blocks kept >= 75 % of the first three's ratio to the Predictor. Client and server share
this machine's cores.

Images: ``../shared/data/chest_xray/train`` (read-only; full-size copies are made in memory), else
generated X-ray-like images. Model: ``--model`` (default: what ``pneumoscan serve`` serves, the
bundled LiteRT export).

Run: ``python benchmarks/service_load.py [--requests 5000] [--full-size 300] [--concurrency 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_parts import machine, machine_words  # noqa: E402  (the benchmarks' one machine record)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_TRAIN = REPO_ROOT.parent / "shared" / "data" / "chest_xray" / "train"
TARGET_RATIO = 0.7
TARGET_RSS_MB = 50.0
TARGET_LAST_BLOCKS = 0.75
BLOCKS = 10
BOUNDARY = "pneumoscanbenchboundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# --------------------------------------------------------------------------- inputs


def multipart(parts: list[tuple[str, str, bytes, str]]) -> bytes:
    """A multipart body of (field, filename, data, content type) parts."""
    chunks = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{fld}"; filename="{name}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n".encode()
        + data
        + b"\r\n"
        for fld, name, data, ctype in parts
    ]
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


@dataclass
class Request:
    """One request to send: body, content type, and what must come back."""

    kind: str  # "good" or the malformed kind
    body: bytes
    content_type: str = CONTENT_TYPE
    expected: int = 200
    name: str = ""  # good requests: the file, whose row must match the baseline


def load_images(n: int, n_full: int) -> tuple[dict[str, bytes], dict[str, bytes], str]:
    """``n`` 224-px JPEGs and ``n_full`` full-size (~2000 px) PNG/JPEG images, by name."""
    from PIL import Image

    files = sorted(SHARED_TRAIN.glob("*/*.jpeg")) if SHARED_TRAIN.is_dir() else []
    if files:
        rng = random.Random(0)
        chosen = rng.sample(files, min(n, len(files)))
        small = {f"{p.parent.name}-{p.name}": p.read_bytes() for p in chosen}
        source = f"{len(small)} real 224-px JPEGs from {SHARED_TRAIN}"
    else:
        from pneumoscan.testing.synthetic import xray_image

        small = {}
        for i in range(n):
            out = io.BytesIO()
            xray_image(224, seed=i, pneumonia=i % 2 == 1).save(out, format="JPEG", quality=90)
            small[f"gen-{i:04d}.jpeg"] = out.getvalue()
        source = f"{n} generated 224-px JPEGs (no real data at {SHARED_TRAIN})"
    full = {}
    for i, (name, data) in enumerate(list(small.items())[:n_full]):
        img = Image.open(io.BytesIO(data)).convert("L")
        side = 1900 + 25 * (i % 8)
        big = np.asarray(img.resize((side, side + 100), Image.Resampling.BICUBIC), dtype=np.float32)
        # Sensor-like grain, so that files compress like real radiographs rather than smooth upscales.
        grain = np.random.default_rng(i).normal(0.0, 4.0, big.shape)
        big = Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8), "L")
        out = io.BytesIO()
        if i % 2:
            big.save(out, format="PNG")
            full[f"full-{Path(name).stem}.png"] = out.getvalue()
        else:
            big.save(out, format="JPEG", quality=92)
            full[f"full-{name}"] = out.getvalue()
    return small, full, source


def malformed(i: int, image: bytes) -> Request:
    """The i-th malformed request, cycling through six kinds."""
    kinds = [
        lambda: Request(
            "corrupt image",
            multipart([("files", "x.jpeg", image[: len(image) // 3], "image/jpeg")]),
            expected=422,
        ),
        lambda: Request("not multipart", image, content_type="image/jpeg", expected=415),
        lambda: Request("misnamed field", multipart([("file", "x.jpeg", image, "image/jpeg")]), expected=422),
        lambda: Request(
            "too many files",
            multipart([("files", f"{k}.jpeg", b"x", "image/jpeg") for k in range(17)]),
            expected=413,
        ),
        lambda: Request(
            "truncated body", multipart([("files", "x.jpeg", image, "image/jpeg")])[:-40], expected=400
        ),
        lambda: Request(
            "text file", multipart([("files", "notes.txt", b"hello", "text/plain")]), expected=415
        ),
    ]
    return kinds[i % len(kinds)]()


def request_mix(images: dict[str, bytes], total: int, seed: int) -> list[Request]:
    """``total`` requests, every tenth malformed, good ones cycling through ``images``."""
    names = list(images)
    rng = random.Random(seed)
    out = []
    for i in range(total):
        name = names[rng.randrange(len(names))]
        if i % 10 == 9:
            out.append(malformed(i // 10, images[name]))
        else:
            body = multipart([("files", name, images[name], "application/octet-stream")])
            out.append(Request("good", body, name=name))
    return out


# --------------------------------------------------------------------------- the client


@dataclass
class Result:
    kind: str
    ok: bool
    status: int
    seconds: float
    done_at: float
    problem: str = ""


@dataclass
class Phase:
    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0

    def good(self) -> list[Result]:
        return [r for r in self.results if r.kind == "good"]


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client connection on asyncio streams.

    The load generator shares this machine's cores with the server; httpx spent about 3 ms of CPU
    per request here (against the server's ~13), so the default client is this one (~0.3 ms):
    the benchmark then measures the server, not the client. ``--client httpx`` uses httpx.
    """

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError):
            await self.close()
            raise
        if headers.get("connection") == "close":
            await self.close()
        return int(status_line.split()[1]), data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def run_phase(
    url: str, requests: list[Request], concurrency: int, expected_rows: dict, *, client: str = "raw"
) -> Phase:
    """Send ``requests`` over ``concurrency`` connections; check every answer."""
    import urllib.parse

    import httpx

    queue: asyncio.Queue[Request] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    phase = Phase()
    parsed = urllib.parse.urlsplit(url)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as shared:

        async def worker():
            raw = RawConnection(parsed.hostname, parsed.port)
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    await raw.close()
                    return
                t0 = time.perf_counter()
                try:
                    if client == "raw":
                        status, body = await raw.post(parsed.path, req.body, req.content_type)
                    else:
                        resp = await shared.post(
                            url, content=req.body, headers={"content-type": req.content_type}
                        )
                        status, body = resp.status_code, resp.content
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
                    status, body = 0, repr(exc).encode()
                t1 = time.perf_counter()
                ok, problem = check(req, status, body, expected_rows)
                phase.results.append(Result(req.kind, ok, status, t1 - t0, t1, problem))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.seconds = time.perf_counter() - started
    return phase


def check(req: Request, status: int, body: bytes, expected_rows: dict) -> tuple[bool, str]:
    """Whether the answer is right (a good request: the in-process row, bit for bit), and if not, why."""
    import json

    if status != req.expected:
        return False, f"{req.kind}: HTTP {status}, expected {req.expected}: {body[:200]!r}"
    if req.kind != "good":
        return "detail" in json.loads(body), f"{req.kind}: no JSON detail"
    rows = json.loads(body)["predictions"]
    if len(rows) != 1 or rows[0] != expected_rows[req.name]:
        return False, f"row differs from the in-process Predictor's for {req.name}: {rows}"
    return True, ""


# --------------------------------------------------------------------------- the server


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(model: Path, port: int, log_path: Path) -> subprocess.Popen:
    from pneumoscan.testing.app_server import pneumoscan_serve, start_logged, wait_ready

    proc = start_logged(pneumoscan_serve(model, port), log_path, new_session=False)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log_path, 120, what="the server")
    except RuntimeError:
        proc.terminate()
        raise
    return proc


# --------------------------------------------------------------------------- baseline and report


def reference_rows(predictor, images: dict[str, bytes]) -> dict[str, dict]:
    """The row the in-process Predictor gives each file (a good answer must equal it)."""
    from pneumoscan.inference.batch import bytes_row

    return {name: bytes_row(predictor, data, name=name) for name, data in images.items()}


def in_process(predictor, images: dict[str, bytes], names: list[str], threads: int) -> tuple[int, float]:
    """``predict_bytes`` on ``names`` from ``threads`` threads: (images, seconds)."""
    t0 = time.perf_counter()
    if threads == 1:
        for name in names:
            predictor.predict_bytes(images[name], name=name)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda name: predictor.predict_bytes(images[name], name=name), names))
    return len(names), time.perf_counter() - t0


@dataclass
class Block:
    """One stretch of the run: the service on some requests, and the in-process Predictor on the
    same good images just before it, so that a change in the machine's load hits both."""

    phase: Phase
    base_images: int
    base_seconds: float

    @property
    def service_rate(self) -> float:
        return len(self.phase.good()) / self.phase.seconds

    @property
    def base_rate(self) -> float:
        return self.base_images / self.base_seconds

    @property
    def ratio(self) -> float:
        return self.service_rate / self.base_rate


def run_blocks(url, predictor, images, requests, n_blocks, concurrency, rows, client) -> list[Block]:
    size = -(-len(requests) // n_blocks)
    blocks = []
    for start in range(0, len(requests), size):
        chunk = requests[start : start + size]
        base_n, base_s = in_process(
            predictor, images, [r.name for r in chunk if r.kind == "good"], concurrency
        )
        phase = asyncio.run(run_phase(url, chunk, concurrency, rows, client=client))
        blocks.append(Block(phase, base_n, base_s))
    return blocks


def merged(blocks: list[Block]) -> Phase:
    return Phase([r for b in blocks for r in b.phase.results], sum(b.phase.seconds for b in blocks))


def percentiles(results: list[Result]) -> str:
    ms = np.asarray([r.seconds for r in results]) * 1000
    return " / ".join(f"{np.percentile(ms, q):.0f}" for q in (50, 95, 99)) + " ms"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="default: the bundled LiteRT export (what serve serves)")
    parser.add_argument("--requests", type=int, default=5000, help="224-px requests (default: %(default)s)")
    parser.add_argument(
        "--full-size", type=int, default=300, help="full-size requests (default: %(default)s)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="connections (default: %(default)s)")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="raw: a minimal asyncio HTTP/1.1 client (default; light on the shared cores); httpx",
    )
    parser.add_argument(
        "--warmup", type=int, default=100, help="224-px and full-size requests each, before RSS is first read"
    )
    return parser.parse_args(argv)


@dataclass
class LoadRun:
    """What one run against the server process measured."""

    warmups: list[Result]
    main_blocks: list[Block]
    full_blocks: list[Block]
    rss_start: float
    rss_end: float
    rss_peak: float
    server_log: str

    def problems(self) -> list[Result]:
        """Every request answered wrongly, warm-up included: a failure there is a failure."""
        phases = (merged(self.main_blocks), merged(self.full_blocks))
        return [r for r in self.warmups if not r.ok] + [r for ph in phases for r in ph.results if not r.ok]

    def server_5xx(self) -> int:
        return len(re.findall(r'"POST /v1/predictions HTTP/1.1" 5[0-9][0-9]', self.server_log))


def load_server(args, model: Path, predictor, small, full, rows) -> LoadRun:
    """Start ``pneumoscan serve``, warm it up on both kinds of image, then run the 224-px and the
    full-size blocks while a thread samples its resident memory; stop it and keep its log."""
    from pneumoscan.testing.app_server import free_port

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pneumoscan-load-") as tmp:
        log_path = Path(tmp) / "serve.log"
        proc = start_server(model, port, log_path)
        url = f"http://127.0.0.1:{port}/v1/predictions"
        peak = [0.0]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.5):
                peak[0] = max(peak[0], rss_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        try:
            # Warm-up on both kinds of image, so that RSS growth afterwards means a leak, not the
            # allocator's first reach for full-size buffers.
            warmups = []
            for images, seed in ((small, 1), (full, 4)):
                mix = request_mix(images, args.warmup, seed=seed)
                warmups += asyncio.run(
                    run_phase(url, mix, args.concurrency, rows, client=args.client)
                ).results
            rss_start = rss_mb(proc.pid)
            sampler.start()
            blocks = []
            for images, n, seed, n_blocks in (
                (small, args.requests, 2, BLOCKS),
                (full, args.full_size, 3, 2),
            ):
                mix = request_mix(images, n, seed=seed)
                blocks.append(
                    run_blocks(url, predictor, images, mix, n_blocks, args.concurrency, rows, args.client)
                )
            rss_end = rss_mb(proc.pid)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(timeout=30)
        server_log = log_path.read_text()
    return LoadRun(warmups, *blocks, rss_start, rss_end, max(peak[0], rss_end), server_log)


def summary(blocks: list[Block]) -> tuple[float, float, float]:
    """Service images/s, in-process images/s, ratio: totals over the blocks."""
    good = sum(len(b.phase.good()) for b in blocks)
    service = good / sum(b.phase.seconds for b in blocks)
    base = sum(b.base_images for b in blocks) / sum(b.base_seconds for b in blocks)
    return service, base, service / base


def report(args, run: LoadRun) -> dict[str, bool]:
    """Print the run's figures; return the verdict's checks, each passed or not."""
    main_phase, full_phase = merged(run.main_blocks), merged(run.full_blocks)
    total = 2 * args.warmup + args.requests + args.full_size
    problems = run.problems()
    failed_good = [r for r in problems if r.kind == "good"]
    wrong_malformed = [r for r in problems if r.kind != "good"]
    rate, base_rate, ratio = summary(run.main_blocks)
    full_rate, full_base, full_ratio = summary(run.full_blocks)
    # Degradation: the service's standing against the Predictor at the end against the start.
    blocks = run.main_blocks
    last_vs_first = np.mean([b.ratio for b in blocks[-3:]]) / np.mean([b.ratio for b in blocks[:3]])
    growth = run.rss_end - run.rss_start
    print(
        f"service: {total} requests over {args.concurrency} connections ({2 * args.warmup} warm-up), "
        f"10 % malformed, {args.client} client; each block of requests follows an in-process run "
        f"({args.concurrency} threads) on the same good images"
    )
    for label, phase, service, base, r in (
        ("224 px", main_phase, rate, base_rate, ratio),
        ("full  ", full_phase, full_rate, full_base, full_ratio),
    ):
        good = phase.good()
        print(
            f"  {label}: {len(good)} good requests, {sum(not x.ok for x in good)} failed; latency "
            f"p50/p95/p99 {percentiles(good)}; {service:.1f} images/s vs {base:.1f} in-process = {r:.2f}x"
        )
    print(
        "  224-px blocks, service/in-process: "
        + ", ".join(f"{b.ratio:.2f}" for b in blocks)
        + f"; last 3 / first 3 = {last_vs_first:.2f}"
    )
    print(
        f"  malformed: {sum(r.kind != 'good' for ph in (main_phase, full_phase) for r in ph.results)} sent, "
        f"{len(wrong_malformed)} answered other than their expected 4xx; "
        f"5xx answers to predictions in the server log: {run.server_5xx()}"
    )
    print(
        f"  server RSS: {run.rss_start:.0f} MB after warm-up, {run.rss_end:.0f} MB after "
        f"{args.requests + args.full_size} more requests (growth {growth:+.1f} MB, "
        f"peak {run.rss_peak:.0f} MB)"
    )
    for r in problems[:5]:
        print(f"  problem: {r.problem}")
    error_lines = [
        ln
        for ln in run.server_log.splitlines()
        if re.search(r'"POST /v1/predictions HTTP/1.1" 5[0-9][0-9]|ERROR', ln)
    ]
    for line in error_lines[:10]:
        print(f"  server log: {line}")
    return {
        "0 failed good requests": not failed_good,
        "no 5xx": run.server_5xx() == 0,
        "every malformed request got its 4xx": not wrong_malformed,
        f"throughput >= {TARGET_RATIO}x in-process": ratio >= TARGET_RATIO,
        f"RSS growth <= {TARGET_RSS_MB:.0f} MB": growth <= TARGET_RSS_MB,
        f"no degradation (last 3 blocks' ratio >= {TARGET_LAST_BLOCKS:.0%} of the first 3's)": last_vs_first
        >= TARGET_LAST_BLOCKS,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from pneumoscan.config import default_serving_model_path
    from pneumoscan.inference.predictor import Predictor

    model = args.model or default_serving_model_path()
    small, full, source = load_images(512, 24)
    print(f"machine: {machine_words(machine())} (other work on the machine counts against both sides)")
    print(f"model: {model}")
    print(
        f"images: {source}; {len(full)} full-size copies ({min(len(d) for d in full.values()) / 2**20:.1f}-"
        f"{max(len(d) for d in full.values()) / 2**20:.1f} MB, ~2000 px, PNG and JPEG)"
    )

    predictor = Predictor(model)
    rows = reference_rows(predictor, small) | reference_rows(predictor, full)  # also warms it up
    one_n, one_s = in_process(predictor, small, list(small)[:200], 1)
    print(f"in-process Predictor.predict_bytes, one thread: {one_n / one_s:.1f} images/s (224 px)")

    checks = report(args, load_server(args, model, predictor, small, full, rows))
    missed = [name for name, ok in checks.items() if not ok]
    print(
        ("verdict: PASS (" + "; ".join(checks) + ")")
        if not missed
        else ("verdict: FAIL: " + "; ".join(missed))
    )
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
