"""Every benchmark script still starts: its command line parses and ``--help`` says how to run it.

Benchmarks are run by hand, so nothing else in the suite runs them; a script that no longer
compiles (a ``global`` after its name is read is a SyntaxError that a linter does not report) would
stay unnoticed until someone needs its figures. Helper modules without a command line (imported by
a script) must at least compile.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def has_command_line(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_the_benchmarks_folder_is_found():
    assert len(SCRIPTS) >= 10, f"expected the benchmark scripts in {BENCHMARKS}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_compiles(path):
    compile(path.read_text(), str(path), "exec")  # symtable errors included, unlike a parse alone


@pytest.mark.parametrize("path", [p for p in SCRIPTS if has_command_line(p)], ids=lambda p: p.name)
def test_every_benchmark_answers_help(path):
    done = subprocess.run(
        [sys.executable, str(path), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, f"{path.name} --help failed:\n{done.stderr[-2000:]}"
    assert done.stdout.startswith("usage:"), f"{path.name} --help printed no usage:\n{done.stdout[:500]}"
