"""The package's import graph runs one way, down the pipeline: no module imports a later stage.

Stages, in the order data flows (README, "How the code is laid out"): the leaves ``config``,
``runtime`` (the machine's cores) and ``plotting`` -> ``data`` -> ``models`` -> ``inference`` ->
``evaluation`` -> ``training`` -> ``interfaces``. ``testing`` serves tests and benchmarks and may
import anything; nothing in the package imports it. Imports inside functions count too: a lazy
import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pneumoscan

PACKAGE = Path(pneumoscan.__file__).parent
STAGES = (
    "config",
    "runtime",
    "plotting",
    "data",
    "models",
    "inference",
    "evaluation",
    "training",
    "interfaces",
)
#: Stage rank: a module may import ranks <= its own. The leaves share rank 0.
RANK = {"_version": 0, "config": 0, "runtime": 0, "plotting": 0, "data": 1, "models": 2, "inference": 3}
RANK |= {"evaluation": 4, "training": 5, "interfaces": 6, "__main__": 6, "testing": 7}  # __main__: the CLI


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str | None:
    """``pneumoscan.data.dataset`` -> ``data``; the package root itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def is_submodule(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every ``pneumoscan`` module ``path`` imports, anywhere in it, with the line number."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from pneumoscan import training`` imports the submodule ``pneumoscan.training``.
            if target == "pneumoscan":
                found += [(node.lineno, f"pneumoscan.{a.name}") for a in node.names if is_submodule(a.name)]
    return [(line, name) for line, name in found if name == "pneumoscan" or name.startswith("pneumoscan.")]


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_stage():
    for path in MODULES:
        stage = stage_of(module_name(path))
        assert stage is None or stage in RANK, f"{path}: no stage for {stage!r}; add it to RANK"


#: The modules the rule applies to: every one but the test helpers (``testing`` may use every stage).
PIPELINE_MODULES = [p for p in MODULES if stage_of(module_name(p)) != "testing"]


def test_only_the_test_helpers_are_exempt():
    exempt = {module_name(p) for p in MODULES} - {module_name(p) for p in PIPELINE_MODULES}
    assert exempt and all(name.startswith("pneumoscan.testing") for name in exempt)


@pytest.mark.parametrize("path", PIPELINE_MODULES, ids=lambda p: module_name(p))
def test_no_import_runs_back_up_the_pipeline(path):
    module = module_name(path)
    stage = stage_of(module)
    bad = []
    for line, target in imported_modules(path):
        target_stage = stage_of(target)
        if target_stage is None:
            continue  # ``pneumoscan`` itself: its __init__ is cheap (a lazy Predictor only)
        if target_stage == "testing":
            bad.append(f"line {line}: {target} (the package must not depend on its test helpers)")
        elif stage is not None and RANK[target_stage] > RANK[stage]:
            bad.append(f"line {line}: {target} ({target_stage} comes after {stage})")
    assert not bad, f"{module} imports a later stage:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(monkeypatch):
    fake = PACKAGE / "data" / "_probe_for_test.py"  # never written: parse a string at that path
    source = "def f():\n    from pneumoscan.training import engine\n\nfrom ..interfaces import cli\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else "")
    assert sorted(name for _, name in imported_modules(fake)) == [
        "pneumoscan.interfaces",
        "pneumoscan.training",
    ]


def test_the_package_root_stays_free_of_tensorflow():
    import subprocess
    import sys

    code = (
        "import sys, pneumoscan, pneumoscan.interfaces.cli as cli; cli.build_parser();"
        "import pneumoscan.models.architectures, pneumoscan.models.artifacts, pneumoscan.inference.results;"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
