"""Shared fixtures: generated dataset trees (:mod:`pneumoscan.testing.synthetic`), the real data's path;
and, under ``CI=true``, no skips: a test skipped for anything (no Chromium, no ``../shared`` data, no
ImageNet weights, a missing package) fails, since CI must run every test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from pneumoscan.testing.ci import pytest_runtest_makereport  # noqa: F401  (the CI=true no-skip hook)
from pneumoscan.testing.synthetic import write_tree

pytest_plugins = ["pytester"]  # tests/test_ci.py runs pytest on generated test files

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real training data, ``../shared/data/chest_xray`` beside the repository checkout, unless
#: ``$PNEUMOSCAN_SHARED_DATA`` names another folder. Absent on a user's machine: tests skip (fail in CI).
SHARED_DATA = Path(
    os.environ.get("PNEUMOSCAN_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data" / "chest_xray"
)

# Keras reads KERAS_HOME once, at import: point it at ../shared/keras (the offline ImageNet weights)
# before any test imports Keras, unless the caller chose another cache.
if (REPO_ROOT.parent / "shared" / "keras" / "models").is_dir():
    os.environ.setdefault("KERAS_HOME", str(REPO_ROOT.parent / "shared" / "keras"))

TreeFactory = Callable[..., Path]


@pytest.fixture
def make_tree(tmp_path: Path) -> TreeFactory:
    """Factory writing a dataset tree ``<root>/<split>/<CLASS>/<file>`` of X-ray-like JPEGs.

    ``make_tree(names=None, *, root=None, size=(64, 72), rgb=False)``:
    :func:`pneumoscan.testing.synthetic.write_tree` into ``root`` (``tmp_path / "data"`` unless
    given). Returns the root.
    """

    def factory(
        names: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        *,
        root: Path | None = None,
        size: tuple[int, int] = (64, 72),
        rgb: bool = False,
    ) -> Path:
        return write_tree(root or tmp_path / "data", names, size=size, rgb=rgb)

    return factory


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real ``chest_xray`` folder; skips the test when it is not on this machine (a failure
    under ``CI=true``, :mod:`pneumoscan.testing.ci`)."""
    if not (SHARED_DATA / "train").is_dir():
        pytest.skip(
            f"real data not found at {SHARED_DATA} (set PNEUMOSCAN_SHARED_DATA to its chest_xray folder)"
        )
    return SHARED_DATA


#: The out-of-scope development set (adult frontal, lateral, CT), beside ``chest_xray``.
OOD_DATA = SHARED_DATA.parent / "ood"


@pytest.fixture(scope="session")
def ood_data() -> Path:
    """The ``ood`` development set (``adult_frontal/``, ``lateral/``, ``ct/``); skips when absent."""
    if not (OOD_DATA / "adult_frontal").is_dir():
        pytest.skip(f"out-of-scope development set not found at {OOD_DATA}")
    return OOD_DATA
