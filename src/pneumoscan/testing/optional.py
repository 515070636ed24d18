"""Optional dependencies in tests: skip where they are missing, fail in CI.

``make test`` installs every extra (``.[dev,ray]``), so in CI (:func:`pneumoscan.testing.ci.in_ci`) a
test module that needs fastapi or ray fails to import when it is missing, rather than being skipped
at collection (which the CI plugin's per-test hook would not see); on a developer's machine without
the extra it is skipped with the command that installs it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pneumoscan.testing.ci import in_ci


def require(module: str, *, extra: str) -> ModuleType:
    """Import ``module`` for a test module; skip it (fail in CI) when it is not installed.

    Call at the top of a test module: ``fastapi = require("fastapi", extra="dev")``.

    Parameters
    ----------
    module : str
        The module to import.
    extra : str
        The pneumoscan extra that installs it, named in the skip reason.

    Returns
    -------
    module
    """
    import pytest

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if in_ci():
            raise ImportError(
                f"{module} is not installed, and CI must run these tests: pip install -e '.[{extra}]'"
            ) from exc
        pytest.skip(
            f"{module} not installed (pip install -e '.[{extra}]'; in CI this fails instead)",
            allow_module_level=True,
        )
