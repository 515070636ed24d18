"""A Streamlit app in a subprocess on a free localhost port, and the Chromium that drives it.

Shared by the browser test (``tests/test_browser.py``), the installed-wheel test and the app
benchmark (``benchmarks/app_latency.py``); :func:`start_logged` and :func:`wait_ready` also start
``pneumoscan serve`` for the service test and ``benchmarks/service_load.py``. Chromium is Debian's
(``/usr/bin/chromium``), since Playwright's own browser download needs the internet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

CHROMIUM = os.environ.get("PNEUMOSCAN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling out, refused by a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(
    command: Callable[[int], list[str]],
    log_path: Path,
    *,
    timeout: float = 60.0,
    env: dict | None = None,
    cwd: str | Path | None = None,
) -> Iterator[tuple[str, float]]:
    """Start ``command(port)`` (in ``cwd``, default the current folder) and wait for Streamlit's
    health endpoint.

    Yields ``(url, started)``, ``started`` being the ``time.monotonic()`` of the start; stops the
    whole process group on exit (``pneumoscan app`` runs Streamlit as a child).

    Raises
    ------
    RuntimeError
        The app exited, or did not answer within ``timeout`` seconds; the message ends with its log.
    """
    port = free_port()
    started = time.monotonic()
    proc = start_logged(command(port), log_path, env=env, cwd=cwd)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url + "/_stcore/health", proc, log_path, timeout)
        yield url, started
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def start_logged(
    command: list[str],
    log_path: Path,
    *,
    env: dict | None = None,
    cwd: str | Path | None = None,
    new_session: bool = True,
) -> subprocess.Popen:
    """Start ``command`` with its stdout and stderr going to ``log_path``, unbuffered and without
    TensorFlow's C++ chatter; ``new_session`` puts it in a process group of its own (so that a
    terminal's Ctrl+C does not reach it)."""
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
        )


def wait_ready(
    url: str, proc: subprocess.Popen, log_path: Path, timeout: float, *, what: str = "the app"
) -> None:
    """Poll ``url`` until it answers 200.

    Raises
    ------
    RuntimeError
        ``proc`` exited, or ``url`` did not answer within ``timeout`` seconds; the message names
        ``what`` and ends with the tail of ``log_path``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer within {timeout} s:\n{log_path.read_text()[-3000:]}")


def pneumoscan_app(model: str | Path | None = None) -> Callable[[int], list[str]]:
    """The command line of ``pneumoscan app`` on ``model`` (default: the app's default), by port."""
    import sys

    def command(port: int) -> list[str]:
        chosen = ["--model", str(model)] if model is not None else []
        return [sys.executable, "-m", "pneumoscan.interfaces.cli", "app", *chosen, "--port", str(port),
                "--address", "127.0.0.1"]  # fmt: skip

    return command


def pneumoscan_serve(model: str | Path, port: int, *options: str) -> list[str]:
    """The command line of ``pneumoscan serve`` on ``model`` at ``port``, then ``options``."""
    import sys

    cli = [sys.executable, "-m", "pneumoscan.interfaces.cli"]
    return [*cli, "serve", "--model", str(model), "--port", str(port), *options]
