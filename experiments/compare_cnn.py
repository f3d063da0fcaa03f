"""Compare CNN pairs on the held-out dose sweep and the real quarter-dose pairs (CNN only).

    python experiments/compare_cnn.py hybrid/assets/cnn experiments/runs/shuffle/model \\
        [--doses 0.02 0.1 0.25] [--slices 2] [--views 1 2 4 8] [--out experiments/results/cnn_compare]

For each pair: :func:`hybrid.evaluate.dose_sweep.dose_sweep` with the methods input and
cnn (no baselines: their numbers are in ``experiments/results/dose_sweep.json``, made
from the same simulated inputs, seed 0), and the CNN on the three real pairs
(:mod:`hybrid.evaluate.real_pairs`: check only, never trained or tuned on).  The
blender is not involved, so a pair needs no calibration.  Scores inside the body: RMSE
(HU) and SSIM in the lung (−600/1500) and soft-tissue (40/400) windows.  ``--views``: each
pair also as a test-time self-ensemble of that many views (``CNNPair(views=...)``), a column
``PAIR@views=N`` each.  Writes
``<out>/compare.json`` and ``compare.md`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _real_pairs(pair) -> dict[str, dict[str, float]]:
    from hybrid.evaluate.real_pairs import SPACING, score_on_pairs
    from hybrid.lung import segment

    def restore(ld):
        return {"cnn": pair.propose(ld.array, lung_mask=segment(ld.array, spacing=SPACING)
                                    ).image}

    return score_on_pairs(restore)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="+", type=Path, help="CNN pair folders (CNNPair.save)")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--doses", nargs="+", type=float, default=[0.02, 0.1, 0.25])
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--views", nargs="+", type=int, default=[1],
                    help="self-ensemble sizes to score per pair (1, 2, 4, 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "cnn_compare")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from hybrid.cnn.infer import CNNPair
    from hybrid.evaluate.dose_sweep import dose_sweep
    from hybrid.pipeline import Enhancer

    result: dict[str, dict] = {}
    runs = [(folder, v) for folder in args.pairs for v in args.views]
    for folder, views in runs:
        t0 = time.perf_counter()
        pair = CNNPair.load(folder).with_settings(views=views)
        enh = Enhancer(cnn=pair, allow_uncalibrated=True)
        sweep = dose_sweep(args.data, doses=args.doses, methods=("input", "cnn"),
                           n_slices=args.slices, enhancer=enh)
        rows = [{k: r[k] for k in ("case", "dose_fraction", "method", "rmse_hu", "ssim_lung",
                                   "ssim_soft_tissue")} for r in sweep["rows"]]
        real = _real_pairs(pair)
        name = str(folder) if args.views == [1] else f"{folder}@views={views}"
        result[name] = {"rows": rows, "real_pairs": real, "seconds": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    md = _markdown(result)
    (args.out / "compare.md").write_text(md)
    print(md)
    return 0


def _markdown(result: dict[str, dict]) -> str:
    names = list(result)
    first = result[names[0]]
    keys = sorted({(r["case"], r["dose_fraction"]) for r in first["rows"]},
                  key=lambda t: (t[1], t[0]))
    lines = ["# CNN pairs compared (CNN only; body RMSE HU / SSIM lung / SSIM soft tissue)", "",
             "`python experiments/compare_cnn.py " + " ".join(names) + "`", "",
             "| case | dose | input | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]

    def cell(rows, case, f, method):
        r = next((r for r in rows if r["case"] == case and r["dose_fraction"] == f
                  and r["method"] == method), None)
        if r is None:
            return "–"
        return f"{r['rmse_hu']:.1f} / {r['ssim_lung']:.3f} / {r['ssim_soft_tissue']:.3f}"

    for case, f in keys:
        lines.append(f"| {case} | {f:g} | {cell(first['rows'], case, f, 'input')} | "
                     + " | ".join(cell(result[n]["rows"], case, f, "cnn") for n in names) + " |")
    if first["real_pairs"]:
        for p in first["real_pairs"]:
            def rp(n, m, p=p):
                s = result[n]["real_pairs"][p][m]
                return f"{s['rmse_hu']:.1f} / {s['ssim_lung']:.3f} / {s['ssim_soft_tissue']:.3f}"
            lines.append(f"| real pair {p} | real ¼ | {rp(names[0], 'input')} | "
                         + " | ".join(rp(n, "cnn") for n in names) + " |")
        means = [np.mean([v["cnn"]["rmse_hu"] for v in result[n]["real_pairs"].values()])
                 for n in names]
        lines.append("| real pairs, mean RMSE | | | " + " | ".join(f"{m:.1f}" for m in means)
                     + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
