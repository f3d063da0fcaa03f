"""Execute experiments/benchmark.ipynb headless (nbclient); the executed copy goes to out/notebook/.

    python experiments/run_notebook.py [--slices N] [--bm3d] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(slices: int = 2, bm3d: bool = False, out: Path = REPO / "out" / "notebook", timeout: int = 1200) -> Path:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "experiments" / "benchmark.ipynb", as_version=4)
    os.environ["HYBRID_NB_SLICES"] = str(slices)
    os.environ["HYBRID_NB_BM3D"] = "1" if bm3d else "0"
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "benchmark.ipynb"
    tmp = path.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--bm3d", action="store_true")
    p.add_argument("--out", type=Path, default=REPO / "out" / "notebook")
    a = p.parse_args()
    print("executed:", run(a.slices, a.bm3d, a.out))
