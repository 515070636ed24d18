"""CI strictness (:mod:`pneumoscan.testing.ci`): under ``CI=true`` a skip fails the run, and the
JUnit check of ``.ci/run`` refuses a report with a skip or without a required test."""

from __future__ import annotations

import pytest

from pneumoscan.testing.ci import check_junit, junit_outcomes, main

PROBE = """
import pytest

@pytest.mark.skipif(True, reason="Chromium not found")
def test_skipped_in_setup():
    pass

def test_skipped_in_the_body():
    pytest.skip("no real data")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

@pytest.mark.parametrize("arch", ["baseline"])
def test_passes(arch):
    pass

class TestGroup:
    def test_in_a_class(self):
        pass
"""


@pytest.fixture
def probe(pytester):
    pytester.makeconftest("from pneumoscan.testing.ci import pytest_runtest_makereport  # noqa: F401\n")
    pytester.makepyfile(test_probe=PROBE)
    return pytester


def test_under_ci_a_skip_fails_with_its_reason(probe, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = probe.runpytest("-ra")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=2, failed=1, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(
        [
            "*skipped under CI=true, where every test must run: Chromium not found*",
            "*skipped under CI=true, where every test must run: no real data*",
        ]
    )


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_outside_ci_a_skip_is_a_skip(probe, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    result = probe.runpytest()
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2, skipped=2, xfailed=1)


def test_junit_check_names_skips_and_missing_required_tests(probe, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    report = probe.path / "junit.xml"
    probe.runpytest(f"--junitxml={report}")

    assert junit_outcomes(report) == {
        "test_probe.py::test_skipped_in_setup": "skipped",
        "test_probe.py::test_skipped_in_the_body": "skipped",
        "test_probe.py::test_expected_failure": "xfailed",
        "test_probe.py::test_passes[baseline]": "passed",
        "test_probe.py::TestGroup::test_in_a_class": "passed",
    }
    problems = check_junit(
        report,
        required=[
            "test_probe.py::test_passes[baseline]",
            "test_probe.py::test_skipped_in_setup",
            "x.py::gone",
        ],
    )
    assert problems[0].startswith("2 test(s) skipped; CI must run every test")
    assert problems[1:] == [
        "test_probe.py::test_skipped_in_setup: required but skipped",
        "x.py::gone: required but not in the run (renamed, deselected or not collected?)",
    ]
    assert main([str(report)]) == 1


def test_junit_check_passes_a_clean_run_and_refuses_a_missing_report(pytester, tmp_path, capsys):
    pytester.makepyfile(test_ok="def test_ok():\n    pass\n")
    report = tmp_path / "junit.xml"
    pytester.runpytest(f"--junitxml={report}")

    assert check_junit(report, required=["test_ok.py::test_ok"]) == []
    assert main([str(report), "--require", "test_ok.py::test_ok"]) == 0
    assert main([str(tmp_path / "absent.xml")]) == 1
    assert "no JUnit report; pytest did not run" in capsys.readouterr().err
