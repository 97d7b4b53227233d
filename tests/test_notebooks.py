"""Every notebook in notebooks/ is stored without outputs and runs top to bottom.

Notebooks are found by globbing, so a new one is tested without touching this file.
Each runs with nbclient in a fresh kernel whose interpreter is this test process's
(``sys.executable``, i.e. the virtualenv's python, never a kernel spec found elsewhere
on the machine), with ``MPLBACKEND=Agg`` and a temporary working directory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "latentopt-test-python"
#: Seconds one cell may take (real FHE key generation included); a whole notebook
#: takes well under a minute.
CELL_TIMEOUT = 600


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "latency_search.ipynb", "deployment.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} keep outputs or execution counts; "
                       f"clear them (e.g. `jupyter nbconvert --clear-output --inplace`)")


def _kernel_dir(tmp_path: Path) -> Path:
    """A kernel spec that launches this interpreter, with a non-interactive matplotlib."""
    spec_dir = tmp_path / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "latentopt tests",
        "language": "python",
        "env": {"MPLBACKEND": "Agg"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return tmp_path / "kernels"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    probe = "import os, sys; print(sys.executable); print(os.environ.get('MPLBACKEND'))"
    nb.cells.append(nbformat.v4.new_code_cell(probe))
    specs = KernelSpecManager(kernel_dirs=[str(_kernel_dir(tmp_path))],
                              ensure_native_kernel=False)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    work = tmp_path / "cwd"
    work.mkdir()
    client = NotebookClient(nb, km=km, kernel_name=KERNEL, timeout=CELL_TIMEOUT,
                            startup_timeout=180, resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, on failure
    probe_out = "".join(o.get("text", "") for o in nb.cells[-1].outputs
                        if o.get("output_type") == "stream").split()
    assert probe_out == [sys.executable, "Agg"]
    assert not list(work.iterdir()), "the notebook wrote into its working directory"
