"""Every notebook in examples/ runs top to bottom (nbclient, kernel python3) on the bundled models.

Each runs in its own temporary working copy (the notebook plus links to examples/models and to the family's
development package examples/postsvd_family), so what a notebook writes never lands in the repository.
POSTSVD_EXAMPLE_MODELS points the notebooks at another model family of the same layout (e.g. one trained
with ``PYTHONPATH=examples python -m postsvd_family.train --tiny``).
"""
import json
import os
import shutil
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
MODELS = Path(os.environ.get("POSTSVD_EXAMPLE_MODELS", EXAMPLES / "models"))
FAMILY = ("base", "base_alt", "instruct", "reasoning")
ADAPTERS = ("instruct_lora",)  # PEFT adapter folders of base (adapter_config.json)
#: Seconds one cell may take before the run fails.
CELL_TIMEOUT = int(os.environ.get("POSTSVD_NOTEBOOK_CELL_TIMEOUT", "600"))

#: Notebooks that show results through their rich display (``_repr_html_``), and at least how many times.
RICH_DISPLAYS = {"00_getting_started.ipynb": 1, "01_compare.ipynb": 1, "02_constructions.ipynb": 1,
                 "05_frontier_interactive.ipynb": 2}

pytestmark = pytest.mark.notebook  # each notebook runs in a kernel: slow (conftest.py)

nbclient = pytest.importorskip("nbclient", reason="needs nbclient, nbformat and ipykernel (requirements.txt)")
nbformat = pytest.importorskip("nbformat")


def test_there_are_notebooks():
    names = {p.name for p in NOTEBOOKS}
    assert {"00_getting_started.ipynb", "01_compare.ipynb", "02_constructions.ipynb",
            "03_attention_entropy.ipynb", "04_cka.ipynb", "05_frontier_interactive.ipynb",
            "06_lora_vs_full.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    """Notebooks are committed clean: no outputs, no execution counts (small diffs, small repository)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    missing = [name for name in FAMILY if not (MODELS / name / "config.json").is_file()]
    missing += [name for name in ADAPTERS if not (MODELS / name / "adapter_config.json").is_file()]
    if missing:
        pytest.fail(f"the bundled models are missing in {MODELS}: {missing} (train them with "
                    "`PYTHONPATH=examples python -m postsvd_family.train --out examples/models`)")
    shutil.copy(path, tmp_path / path.name)
    (tmp_path / "models").symlink_to(MODELS.resolve(), target_is_directory=True)
    (tmp_path / "postsvd_family").symlink_to(EXAMPLES / "postsvd_family", target_is_directory=True)
    # The frontier notebook builds the tests' tiny DeepSeek-V3 (it finds them beside itself or in tests/python).
    (tmp_path / "frontier_models.py").symlink_to(REPO / "tests" / "python" / "frontier_models.py")
    nb = nbformat.read(tmp_path / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
    seconds = time.perf_counter() - started
    errors = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert not errors
    figures = sum("image/png" in output.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
                  for output in cell.get("outputs", []))
    assert figures >= 1, f"{path.name} showed no figure"
    displays = [output["data"]["text/html"] for cell in nb.cells if cell.cell_type == "code"
                for output in cell.get("outputs", []) if "postsvd-display" in output.get("data", {}).get("text/html", "")]
    if path.name in RICH_DISPLAYS:  # the notebooks show results through their rich display
        assert len(displays) >= RICH_DISPLAYS[path.name], f"{path.name}: {len(displays)} rich displays"
    # Nothing was written beside the models.
    assert not any(p.name.startswith(("c1", "work")) for p in MODELS.iterdir())
    record = os.environ.get("POSTSVD_NOTEBOOK_TIMES")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps({"notebook": path.name, "seconds": round(seconds, 1), "figures": figures}) + "\n")
