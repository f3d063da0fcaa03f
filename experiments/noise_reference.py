"""Measure the normal-dose noise references of ``hybrid.cnn.noise.NORMAL_DOSE_SIGMA_HU``.

For every normal-dose slice of the CNN training cases (neither held-out nor calibration
patients, ``experiments/splits.json``) the soft-tissue noise of
:func:`hybrid.cnn.noise.estimate_noise`; the reference of a kernel class is the median
over the slices of its cases (the case's kernel class).

    python experiments/noise_reference.py --data data

Writes ``experiments/results/noise_reference.json`` and prints the values to paste.
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
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "noise_reference.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from hybrid.cnn.noise import estimate_noise
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import load_split

    split = load_split()
    excluded = set(split.held_out_patients) | set(split.calibration)
    rows = []
    for entry, path in iter_cases(args.data):
        if entry["patient_id"] in excluded:
            continue
        case = load_case(path)
        est = estimate_noise(case.nd, case.body_mask)
        kernel = case.meta.get("kernel", "standard")
        for s, t, m in zip(est.sigma_hu, est.texture, est.measured):
            if m:
                rows.append({"case": entry["case_id"], "kernel": kernel, "sigma_hu": float(s),
                             "texture": float(t)})
    refs = {}
    for kernel in ("smooth", "standard", "sharp"):
        sel = [r["sigma_hu"] for r in rows if r["kernel"] == kernel]
        refs[kernel] = round(float(np.median(sel)), 1) if sel else None
    per_case = {}
    for r in rows:
        per_case.setdefault(r["case"], []).append(r["sigma_hu"])
    doc = {"normal_dose_sigma_hu": refs, "slices": len(rows),
           "cases": {k: {"slices": len(v), "median_sigma_hu": round(float(np.median(v)), 1)}
                     for k, v in per_case.items()},
           "excluded_patients": sorted(excluded)}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"NORMAL_DOSE_SIGMA_HU = {refs}  ({len(rows)} slices; {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
