"""The notebook views, through a real Jupyter kernel (nbclient runs a notebook as Jupyter does): a ``Log`` and a
``ShardedLog`` show their run's summary card, ``sequence_view`` coloured tokens, ``sweep_view`` the sweep."""

from __future__ import annotations

import glob
import os
import re
import textwrap

import pytest
import torch

pytest.importorskip("nbclient", reason="needs nbclient (pip install asynclog[test])")
pytest.importorskip("ipykernel", reason="needs ipykernel (pip install asynclog[test])")

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402

import asynclog  # noqa: E402

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """A run folder of two ranks, each with a tokens stream."""
    out = tmp_path_factory.mktemp("ranks")
    for rank in range(2):
        with asynclog.start(out, name="job", rank=rank, world_size=2) as run:
            run.stream("tokens/E_batch").append(sequence_id=0, tokens=torch.tensor([5, 6]),
                                                token_texts=["five", "six"], rb_entropies=torch.tensor([1.0, 2.0]))
    return out / "job"


def html_outputs(cells: list[str], cwd) -> list[str]:
    """Run ``cells`` in a fresh kernel; the text/html each cell displayed (empty when none)."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c)) for c in cells])
    NotebookClient(notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return ["".join(o.get("data", {}).get("text/html", "") for o in cell.outputs) for cell in notebook.cells]


def test_a_notebook_shows_runs_sequences_and_the_sweep_as_html(debug_sweep, ranks, tmp_path, monkeypatch):
    # The kernel inherits the environment: it imports this worktree's asynclog.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    run = sorted(glob.glob(str(debug_sweep / "*" / "*.alog")))[0]
    card, tokens, by_logprob, table, folder_card = html_outputs([
        f"import asynclog\nlog = asynclog.open({run!r})\nlog",
        "from asynclog.tools.report import sequence_view, sweep_view\nsequence_view(log, limit=5)",
        "sequence_view(log, 'U_batch', limit=8, mode='logprob')",
        f"sweep_view({str(debug_sweep)!r})",
        f"asynclog.open({str(ranks)!r})",
    ], tmp_path)
    assert "asynclog-card" in card and "step_000" in card and "complete" in card and "δH₁" in card
    spans = re.findall(r"<span class='t' style='background:hsl\([^']+\)' title='entropy [^']+'>", tokens)
    assert len(spans) >= 5 and tokens.count("class='seq'") == 5
    assert "coloured by logprob" in by_logprob and "title='logprob " in by_logprob and "8 of 16" in by_logprob
    assert "<table class='sweep'>" in table and table.count("<tr data-path=") == 2
    assert "<svg class='chart'" in table
    assert "asynclog-card" in folder_card and "job" in folder_card
