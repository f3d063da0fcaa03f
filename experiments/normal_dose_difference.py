"""What the hybrid does to a normal-dose scan: input, output and their difference (issue 16).

The held-out normal-dose slices (P12 phantom, A0001 kernel B and kernel L; never seen by
the models) go through the shipped ``hybrid.enhance`` as they are (dose 100 %); the
figure shows the central slice in the lung window (−600/1500), the difference
output − input at ±20 HU, and prints the RMS change inside the body against the scan's
own soft-tissue noise (``hybrid.physics.estimate_noise_hu``).

    python experiments/normal_dose_difference.py --data data

Writes ``experiments/results/normal_dose_difference.png`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid.data import iter_cases, load_case
    from hybrid.io._atomic import atomic_file
    from hybrid.physics import estimate_noise_hu
    from hybrid.pipeline import Enhancer
    from hybrid.recipe import load_split

    enhancer = Enhancer()
    held = set(load_split().held_out_patients)
    rows, panels = [], []
    for entry, path in iter_cases(args.data):
        if entry["patient_id"] not in held:
            continue
        n = int(entry["n_slices"])
        case = load_case(path, slices=slice(max(n // 2 - 3, 0), min(n // 2 + 3, n)))
        vol = case.uld.with_array(case.nd)
        out, maps = enhancer.enhance(vol, return_maps=True, progress=False)
        diff = out.array - case.nd
        body = case.body_mask
        change = float(np.sqrt(np.mean(diff[body] ** 2)))
        noise = float(estimate_noise_hu(case.nd, body))
        rows.append({"case": entry["case_id"], "rms_change_hu": change, "own_noise_hu": noise,
                     "ratio": change / noise,
                     "input_weight_mean_body": float(maps.input_weight[body].mean())})
        z = len(case.nd) // 2
        panels.append((entry["case_id"], case.nd[z], out.array[z], diff[z]))
        print(f"{entry['case_id']}: RMS change {change:.2f} HU in the body, own noise "
              f"{noise:.1f} HU ({change / noise:.2f} x); mean input weight "
              f"{rows[-1]['input_weight_mean_body']:.2f}")
    fig, axes = plt.subplots(len(panels), 3, figsize=(10.5, 3.6 * len(panels)), squeeze=False)
    for ax, (cid, nd, res, d) in zip(axes, panels):
        for a, img, title in ((ax[0], nd, f"{cid} normal dose (input)"),
                              (ax[1], res, "hybrid output")):
            a.imshow(img, cmap="gray", vmin=-1350, vmax=150)
            a.set_title(title + " — lung window −600/1500", fontsize=8)
        im = ax[2].imshow(d, cmap="RdBu_r", vmin=-20, vmax=20)
        ax[2].set_title("output − input (±20 HU)", fontsize=8)
        fig.colorbar(im, ax=ax[2], fraction=0.046)
        for a in ax:
            a.axis("off")
    out_dir = Path(args.out)
    fig.tight_layout()
    with atomic_file(out_dir / "normal_dose_difference.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    (out_dir / "normal_dose_difference.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
