"""The notebooks never rot: each executes on the smoke preset with the venv's python; no
.ipynb is committed, and a generated one must match its jupytext source."""

import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def out_of_date(source: Path, ipynb: Path) -> bool:
    """Whether the generated ``ipynb`` differs from its jupytext ``source`` (cells and code)."""
    return cells(nbformat.read(ipynb, as_version=4)) != cells(jupytext.read(source))


@pytest.fixture(scope="module")
def out_root(tmp_path_factory):
    """One run folder for all notebooks: a later notebook reuses the runs an earlier one
    trained, as it reuses those of `make paper`."""
    return tmp_path_factory.mktemp("notebook_runs")


def test_there_are_the_five_tutorials():
    names = [p.stem.split("_", 1)[1] for p in NOTEBOOKS]
    assert names == ["quickstart", "probing", "cell_atlas", "causal", "architecture_contrasts"]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_the_smoke_preset(source, out_root, monkeypatch):
    notebook = jupytext.read(source)
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    monkeypatch.setenv("COGMAP_OUT_ROOT", str(out_root))
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()
    executable = notebook.cells[-1].outputs[0]["text"].strip()
    assert Path(executable).resolve() == Path(sys.executable).resolve()


def test_no_notebook_is_committed():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == [], "commit the jupytext .py source, not the .ipynb"


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_generated_notebook_matches_its_source(source):
    ipynb = source.with_suffix(".ipynb")
    if not ipynb.exists():
        pytest.skip(f"{ipynb.name} not generated (make notebooks)")
    assert not out_of_date(source, ipynb), f"{ipynb.name} is stale: run make notebooks"


def test_a_stale_notebook_is_caught(tmp_path):
    source = NOTEBOOKS[0]
    stale = jupytext.read(source)
    stale.cells[-1].source += "\nprint('edited in Jupyter, not in the source')"
    nbformat.write(stale, tmp_path / "stale.ipynb")
    assert out_of_date(source, tmp_path / "stale.ipynb")
    nbformat.write(jupytext.read(source), tmp_path / "fresh.ipynb")
    assert not out_of_date(source, tmp_path / "fresh.ipynb")
