"""notebooks/explore.ipynb runs end to end on a freshly produced output folder."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))

import make_explore  # noqa: E402


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_the_notebook_runs_on_a_fresh_output(transcribed, monkeypatch):
    monkeypatch.setenv("BULKSCRIBE_OUTPUT", str(transcribed))
    nb = make_explore.execute(nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert _images(nb) >= 3  # languages; throughput per node and per file; the two confidence histograms
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "jfk.flac" in text and "-->" in text  # the longest file's transcript, with timestamps


def test_the_committed_notebook_shows_its_plots_and_matches_its_source():
    committed = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    assert _images(committed) >= 3
    assert [c.source for c in committed.cells] == [c.source for c in make_explore.notebook().cells]
