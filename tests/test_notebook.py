"""The benchmark notebook executes headless at a small size (as `make notebook` does)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_notebook_executes(tmp_path):
    from hybrid.artifacts import missing_shipped_assets

    if missing_shipped_assets():
        pytest.skip("shipped default models are absent (hybrid/assets)")
    spec = importlib.util.spec_from_file_location("run_notebook", REPO / "experiments" / "run_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.run(slices=1, bm3d=False, out=tmp_path, timeout=600)
    import nbformat

    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.output_type == "error"]
    assert not errors
    tables = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert tables and "| hybrid |" in tables[0] and "soft tissue (40/400)" in tables[0]
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 3  # the example figure, quality-versus-time, the CV per-fold ratios
    # the CV section shows both sets' per-fold win tables from experiments/results/cv
    assert any("## phantom set" in t and "## real set" in t and "| best classic" in t
               for t in tables[1:])
