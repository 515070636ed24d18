"""Optional dependencies in tests: skip where they are missing, fail in CI.

``make test`` installs every extra (``.[dev,ray]``), so in CI (``CI`` set to a true value) a test
that needs fastapi or ray must fail when it is missing, not pass by skipping; on a developer's
machine without the extra it is skipped with the command that installs it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def in_ci() -> bool:
    """True when ``$CI`` is set to anything but an empty string, ``0``, ``false`` or ``no``."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


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
