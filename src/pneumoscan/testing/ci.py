"""A pytest plugin for CI: under ``CI=true`` a skipped test fails.

A skip means something the test needs was missing (Chromium, the real data in ``../shared``, the
ImageNet weights, a package). On a user's machine that is fine; in CI it means the run proved nothing
about that test, yet ``pytest`` would still exit 0. ``tests/conftest.py`` loads this plugin, and
``.ci/run`` checks pytest's JUnit report with :func:`check_junit` (``python -m pneumoscan.testing.ci
REPORT.xml --require NODEID ...``): no skip, and the tests that matter present and passed, so a test
renamed, deselected or skipped some new way cannot slip through either. The tests that matter are
marked ``@pytest.mark.required`` where they are written; ``.ci/run`` collects them
(``pytest --collect-only -q -m required``) and requires each.
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import pytest

#: Values of ``$CI`` that mean "this is a CI run" (CI services set ``CI=true``).
CI_VALUES = frozenset({"1", "true", "yes", "on"})


def in_ci() -> bool:
    """Whether ``$CI`` is set to a true value (``true``, ``1``, ``yes``, ``on``; any case)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def _skip_reason(longrepr) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under ``CI=true``, report a skipped test as failed, with the skip's reason and what to do.

    A skip in setup (``skipif``, a fixture that skips) shows as an error, one in the test body as a
    failure; either way pytest exits non-zero. Expected failures (``xfail``) are left alone, and
    tests left out with ``-m`` or ``-k`` are deselected, not skipped.
    """
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true, where every test must run: {_skip_reason(report.longrepr)}. "
            "Install what the test needs (`make test` installs Chromium; ../shared must hold "
            "data/chest_xray and keras/models), or run without CI=true to allow the skip."
        )
    return report


# --------------------------------------------------------------------------- the JUnit report check


def _node_id(case: ET.Element) -> str:
    """``tests/test_x.py::test_y[param]`` from a ``<testcase classname="tests.test_x" name=...>``
    (``tests/test_x.py::TestZ::test_y`` for a test class: a capitalised last part is the class)."""
    parts = case.get("classname", "").split(".")
    cls = [parts.pop()] if len(parts) > 1 and parts[-1][:1].isupper() else []
    return "::".join(["/".join(parts) + ".py", *cls, case.get("name", "")])


def junit_outcomes(report: str | Path) -> dict[str, str]:
    """Node id -> ``"passed"``, ``"failed"``, ``"error"``, ``"skipped"`` or ``"xfailed"`` for every
    test of a ``pytest --junitxml`` report.

    Raises
    ------
    FileNotFoundError
        No report: pytest did not run (or was not given ``--junitxml``).
    ValueError
        The file is not a JUnit XML report.
    """
    report = Path(report)
    if not report.is_file():
        raise FileNotFoundError(f"{report}: no JUnit report; pytest did not run, or ran without --junitxml")
    try:
        root = ET.parse(report).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{report}: not a JUnit XML report ({exc})") from exc
    outcomes = {}
    for case in root.iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"}
        outcome = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
        if outcome == "skipped" and case.find("skipped").get("type") == "pytest.xfail":
            outcome = "xfailed"  # JUnit has no expected failure: pytest writes it as a typed skip
        # A test can be reported twice (a teardown error after a pass): the worst outcome wins.
        previous = outcomes.get(_node_id(case))
        if previous is None or previous == "passed":
            outcomes[_node_id(case)] = "failed" if outcome == "failure" else outcome
    return outcomes


def check_junit(report: str | Path, required: Sequence[str] = ()) -> list[str]:
    """The problems of a CI run's JUnit report; an empty list when the run counts.

    A run counts when it ran at least one test, skipped none, and every ``required`` node id
    (``tests/test_browser.py::test_upload_in_a_real_browser``) is in it and passed. Failures of
    other tests are pytest's own exit code's business, not repeated here.
    """
    outcomes = junit_outcomes(report)
    problems = []
    if not outcomes:
        problems.append(f"{report}: no test ran")
    skipped = sorted(node for node, outcome in outcomes.items() if outcome == "skipped")
    if skipped:
        problems.append(f"{len(skipped)} test(s) skipped; CI must run every test: " + ", ".join(skipped))
    for node in required:
        outcome = outcomes.get(node)
        if outcome is None:
            problems.append(f"{node}: required but not in the run (renamed, deselected or not collected?)")
        elif outcome != "passed":
            problems.append(f"{node}: required but {outcome}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pneumoscan.testing.ci REPORT.xml [--require NODEID ...]``: exit 1 on any problem."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumoscan.testing.ci",
        description="Check a pytest --junitxml report of a CI run: no skips, required tests passed.",
    )
    parser.add_argument("report", type=Path, help="the pytest --junitxml file")
    parser.add_argument(
        "--require", action="append", default=[], metavar="NODEID", help="a test that must have passed"
    )
    args = parser.parse_args(argv)
    try:
        problems = check_junit(args.report, args.require)
    except (FileNotFoundError, ValueError) as exc:
        problems = [str(exc)]
    for problem in problems:
        print(f"CI check: {problem}", file=sys.stderr)
    if not problems:
        n = len(junit_outcomes(args.report))
        print(f"CI check: {n} tests in the report, none skipped; {len(args.require)} required tests passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
