"""The walkthrough notebook (``docs/walkthrough.ipynb``) and its jupytext twin (``docs/walkthrough.py``).

The twin is what reviews read and what drifts first; the ``.ipynb`` is what people open, with the
outputs of a full run. These tests check that the two hold the same cells, that the committed
outputs come from a full run without errors, that the prose types no result by hand, and (slow,
real data) that the whole notebook executes in quick mode.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pneumoscan.testing.models import mobilenet_weights_available
from pneumoscan.testing.optional import require

jupytext = require("jupytext", extra="dev")
nbformat = require("nbformat", extra="dev")

DOCS = Path(__file__).resolve().parents[1] / "docs"
NOTEBOOK = DOCS / "walkthrough.ipynb"
TWIN = DOCS / "walkthrough.py"

#: Numbers the prose may contain: names with digits (MobileNetV2, float16), the licence, the
#: confidence level, section and list numbers, and anything in a code span.
PROSE_ALLOWED = (
    re.compile(r"`[^`]*`"),
    re.compile(r"\b[A-Za-z][A-Za-z-]*\d\w*"),
    re.compile(r"CC BY 4\.0"),
    re.compile(r"95 %"),
    re.compile(r"section \d+"),
    re.compile(r"^#+ \d+\. ", re.MULTILINE),
    re.compile(r"^\d+\. ", re.MULTILINE),
)


def cells(notebook) -> list[tuple[str, str, tuple[str, ...]]]:
    """(type, source, tags) of every cell: what the twin must reproduce."""
    return [
        (cell.cell_type, cell.source.strip(), tuple(cell.metadata.get("tags", ()))) for cell in notebook.cells
    ]


def outputs(notebook, kind: str) -> list[str]:
    """Every output of ``kind`` ("image/png", "error", "stdout"...) of the code cells, in order."""
    found = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "error" and kind == "error":
                found.append(f"{out.ename}: {out.evalue}")
            elif out.output_type == "stream" and out.name == kind:
                found.append(out.text)
            elif kind in out.get("data", {}):
                found.append(out.data[kind])
    return found


def test_the_notebook_and_its_py_twin_hold_the_same_cells():
    notebook, twin = jupytext.read(NOTEBOOK), jupytext.read(TWIN)
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    mismatched = [i for i, (a, b) in enumerate(zip(cells(notebook), cells(twin), strict=False)) if a != b]
    assert len(notebook.cells) == len(twin.cells) and not mismatched, (
        f"docs/walkthrough.ipynb and docs/walkthrough.py differ (cells {mismatched[:5]}): edit one, then "
        "`.venv/bin/jupytext --sync docs/walkthrough.ipynb` (the pre-commit hook does it)"
    )
    assert any("parameters" in tags for _, _, tags in cells(twin)), "papermill needs a 'parameters' cell"


def test_the_committed_notebook_carries_the_outputs_of_a_full_run():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    assert None not in counts and counts == sorted(counts), "every code cell ran, top to bottom, once"
    assert outputs(notebook, "error") == []
    stdout = "".join(outputs(notebook, "stdout"))
    assert re.search(r"^setting +full$", stdout, re.MULTILINE), "the outputs must come from the full setting"
    assert re.search(r"^run at +\d{4}-\d\d-\d\d", stdout, re.MULTILINE) and "machine" in stdout
    # Every cell that displays figures holds them as PNG (shown on the repository's web page).
    no_figure = [
        cell.source.splitlines()[0]
        for cell in code
        if "display(" in cell.source and not any("image/png" in out.get("data", {}) for out in cell.outputs)
    ]
    assert no_figure == [], f"cells whose figures are missing: {no_figure}"


def test_the_prose_types_no_number_by_hand():
    typed = []
    for cell in jupytext.read(TWIN).cells:
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        for pattern in PROSE_ALLOWED:
            text = pattern.sub(" ", text)
        typed += [line.strip() for line in text.splitlines() if re.search(r"\d", line)]
    assert typed == [], f"numbers typed in the notebook's prose (print them from a cell): {typed}"


@pytest.mark.slow
@pytest.mark.skipif(
    not mobilenet_weights_available(),
    reason="MobileNetV2 ImageNet weights not in the Keras cache (set KERAS_HOME to ../shared/keras)",
)
@pytest.mark.required
def test_the_walkthrough_runs_in_quick_mode(shared_data, tmp_path):
    papermill = require("papermill", extra="dev")

    out = tmp_path / "walkthrough.ipynb"
    runs = tmp_path / "runs"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={"QUICK": True, "DATA_DIR": str(shared_data / "train"), "WORK_DIR": str(runs)},
        cwd=str(DOCS),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=600,
    )  # a cell that raises raises PapermillExecutionError here

    executed = nbformat.read(out, as_version=4)
    stdout = "".join(outputs(executed, "stdout"))
    assert re.search(r"^setting +QUICK", stdout, re.MULTILINE)
    assert outputs(executed, "error") == []
    # The same figures as the full run, and the steps left their runs behind.
    committed = nbformat.read(NOTEBOOK, as_version=4)
    assert len(outputs(executed, "image/png")) == len(outputs(committed, "image/png"))
    for run in ("baseline", "regularized", "mobilenetv2", "ensemble"):
        assert (runs / run / "model.keras").is_file(), f"{run} did not finish"
    assert (runs / "ensemble-float16.tflite").is_file()
    assert "'passed': True" in stdout and "refused" in stdout
