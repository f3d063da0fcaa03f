"""Issue 17, idea 3, a first measurement: a prior normal-dose scan that *guides* (ndiNLM).

    python experiments/dictionary_prior.py [--ct ../shared/data/ct] [--pairs 4] [--out experiments/results/dictionary_prior]

Proxy of a follow-up with a normal-dose baseline (real CT, same patient): the current
scan is an even slice of a thin-slice series, its 2 % dose simulated
(:func:`hybrid.physics.simulate_low_dose`, its kernel class, seed 3); the prior is the
neighbouring odd slice at normal dose (independent noise, anatomy 1.25-3 mm away).
The reference is the even slice at normal dose (its own noise is given beside it: a
floor for RMSE).

Guided non-local means (Ma et al., Med Phys 2011, "ndiNLM"): each pixel of the current
scan becomes the weighted mean of the current scan's pixels in an 11 x 11 search window,
the weights computed on the *prior*: ``exp(-SSD_prior(5 x 5 patches) / h^2)``, so the
prior says which pixels are alike and the current scan gives their values (no value is
copied from the prior).  ``h`` is swept; the table gives each h's body RMSE alone and
its best constant blend with the shipped CNN's output (w chosen on these slices: an upper
bound).  The CNN alone is the bar: the issue asks for >= 3 % on real proxies.

Series: ``pancreas-ct-cb-001`` (3 mm slices; its chest, the top of the series) and
``itkelastix-thorax`` (2 mm); ``--pairs`` even/odd pairs of each around the slice with
the most lung.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dictionary_ideas import _rmse, blend_score, cell, write_results  # noqa: E402

SERIES = ("pancreas-ct-cb-001", "itkelastix-thorax")
H_VALUES = (20.0, 40.0, 80.0, 160.0)


def guided_nlm(current: np.ndarray, prior: np.ndarray, h: float, *, search: int = 5,
               patch: int = 5) -> np.ndarray:
    """One slice: NLM of ``current`` with weights from ``prior`` (both 2-D, HU)."""
    cur = current.astype(np.float64)
    pri = prior.astype(np.float64)
    num = np.zeros_like(cur)
    den = np.zeros_like(cur)
    pad = search
    cur_p = np.pad(cur, pad, mode="reflect")
    pri_p = np.pad(pri, pad, mode="reflect")
    ny, nx = cur.shape
    for dy in range(-search, search + 1):
        for dx in range(-search, search + 1):
            sp = pri_p[pad + dy:pad + dy + ny, pad + dx:pad + dx + nx]
            ssd = uniform_filter((pri - sp) ** 2, size=patch, mode="reflect")
            w = np.exp(-ssd / (h * h))
            num += w * cur_p[pad + dy:pad + dy + ny, pad + dx:pad + dx + nx]
            den += w
    return (num / den).astype(np.float32)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", type=Path, default=None)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("experiments/results/dictionary_prior"))
    args = p.parse_args()

    import hybrid
    from hybrid.cnn.infer import CNNPair
    from hybrid.data import default_ct_root
    from hybrid.lung import body_mask, segment
    from hybrid.physics import estimate_noise_hu, kernel_for, simulate_low_dose
    from hybrid.pipeline import default_asset_paths

    root = args.ct or default_ct_root()
    cnn = CNNPair.load(default_asset_paths()["cnn"])
    rows = []
    for name in SERIES:
        folder = root / name
        vol = hybrid.load(folder)
        # centred on the slice with the most lung-like pixels (the pancreas series is
        # mostly abdomen: its lungs are in its top ~40 slices)
        lungish = ((vol.array > -950) & (vol.array < -500)).reshape(len(vol), -1).sum(1)
        mid = int(np.clip(np.argmax(lungish), args.pairs + 1, len(vol) - args.pairs - 2))
        mid -= mid % 2
        evens = list(range(mid - 2 * (args.pairs // 2), mid + 2 * (args.pairs - args.pairs // 2), 2))
        nd = vol.slab(min(evens), max(evens) + 2)  # even and odd slices
        kernel = kernel_for(vol.provenance.kernel)
        uld = simulate_low_dose(nd, 0.02, rng=3, kernel=kernel, progress=False).array
        cur_idx = np.arange(0, len(nd), 2)
        cur, ref, prior = uld[cur_idx], nd.array[cur_idx], nd.array[cur_idx + 1]
        body = body_mask(ref, spacing=vol.spacing)
        lung = segment(cur, spacing=vol.spacing, body=body)
        out = cnn.propose(cur, lung_mask=lung, body_mask=body).image
        row = {"series": name, "slices": [int(min(evens)), int(max(evens) + 1)],
               "slice_gap_mm": float(vol.spacing[0]), "kernel": kernel,
               "nd_own_noise_hu": float(estimate_noise_hu(ref, mask=body)),
               "prior_vs_reference_hu": _rmse(prior, ref, body),
               "input": _rmse(cur, ref, body), "cnn": _rmse(out, ref, body), "h": {}}
        for h in H_VALUES:
            g = np.stack([guided_nlm(c, pr, h) for c, pr in zip(cur, prior)])
            g = np.where(body, g, cur)
            row["h"][str(h)] = blend_score(out, g, ref, body, row["cnn"])
        rows.append(row)
        print(json.dumps(row, indent=1))
    lines = ["| series (gap, ND own noise) | prior vs reference | input | CNN | "
             + " | ".join(f"guided NLM h={h:g}" for h in H_VALUES) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(H_VALUES)]
    lines += [f"| {r['series']} ({r['slice_gap_mm']:.2f} mm, {r['nd_own_noise_hu']:.0f} HU) | "
              f"{r['prior_vs_reference_hu']:.1f} | {r['input']:.1f} | {r['cnn']:.1f} | "
              + " | ".join(cell(v) for v in r["h"].values()) + " |" for r in rows]
    write_results(args.out, {"rows": rows},
                  "Dictionary idea 3 (issue 17): a guiding prior (neighbouring normal-dose "
                  "slice), body RMSE in HU at 2 % dose", "dictionary_prior.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
