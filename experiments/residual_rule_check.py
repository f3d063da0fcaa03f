"""Issue 16, the gate at 25-50 %: does the CNN's own residual tell where it removes structure?
(a diagnosis: no setting of the product is taken from it)

    python experiments/residual_rule_check.py [--data data] [--out experiments/results/residual_rule_check]

Per slice, with ``x`` the input, ``c`` the shipped CNN's restoration and ``nd`` the normal
dose: the input's estimated noise ``sigma`` (:func:`hybrid.cnn.noise.estimate_noise`), the
residual's mean square over the body ``|c - x|^2``, their ratio ``q = |c - x|^2 /
sigma^2`` (about 1 where the CNN removes the input's noise and nothing else, more where it
also removes structure), the CNN weight the shipped input rule gives, and the CNN weight
that would have been best in hindsight, ``w* = <x - nd, x - c> / |x - c|^2`` clipped to
[0, 1] (``(1 - w) x + w c`` closest to the normal dose).  If ``w*`` followed ``1 / q``
closely on every case, a rule ``w = min(1, k / q)`` would need no normal-dose knowledge.

Cases: the calibration patients (P11, pancreas-chest), the unseen whole thorax and the
held-out P12 / A0001-B / A0001-L; 2 central slices each at 2, 10, 25, 50 % dose (doses
made from each case's stored noise, as :mod:`hybrid.calibration` makes them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DOSES = (0.02, 0.1, 0.25, 0.5)
CASES = ("P11", "pancreas-chest", "thorax", "P12", "A0001-B", "A0001-L")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("experiments/results/residual_rule_check"))
    p.add_argument("--fresh-phantoms", nargs="*", type=int, default=[13, 14, 15, 16, 17, 18],
                   help="also phantom patients of these seeds, drawn here (4 slices of 512², "
                        "the kernel by seed as in make data): in no set, never seen by a model")
    p.add_argument("--cases", nargs="*", default=list(CASES),
                   help="cases of make data to include (default: the calibration patients, "
                        "thorax and the held-out cases)")
    args = p.parse_args()
    from hybrid.baselines import InputBaseline
    from hybrid.blend import Blender
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.multidose import at_dose
    from hybrid.cnn.noise import estimate_noise
    from hybrid.data import iter_cases, load_case
    from hybrid.pipeline import default_asset_paths

    cnn = CNNPair.load(default_asset_paths()["cnn"])
    blender = Blender.load(default_asset_paths()["blender"])
    rule = blender.modes["input"]
    rows = []
    from hybrid.data import make_phantom_case

    def cases():
        for _, path in iter_cases(args.data):
            case = load_case(path)
            if case.case_id in args.cases:
                yield case
        for seed in args.fresh_phantoms:
            yield make_phantom_case(seed, shape=(4, 512, 512))

    for case in cases():
        z = np.array([len(case.nd) // 2 - 1, len(case.nd) // 2])
        nd = np.asarray(case.nd[z], np.float32)
        noise = np.asarray(case.uld.array[z], np.float32) - nd
        body, lung = np.asarray(case.body_mask[z], bool), np.asarray(case.lung_mask[z], bool)
        kernel = case.meta.get("kernel") or "standard"
        f0 = float(case.meta["dose_fraction"])
        for f in DOSES:
            x = at_dose(nd, noise, f, f0, independent=case.kind == "phantom")
            c = cnn.propose(x, lung_mask=lung, body_mask=body).image
            ratio = InputBaseline(kernel=kernel).noise_ratio(x, body)
            sigma = estimate_noise(x, body).sigma_hu
            for i in range(len(z)):
                b = body[i]
                d = (c[i] - x[i])[b].astype(np.float64)
                e = (x[i] - nd[i])[b].astype(np.float64)
                w_star = float(np.clip(-np.dot(e, d) / max(np.dot(d, d), 1e-9), 0, 1))
                w_rule = 1.0 - float(rule.weight(np.array([ratio[i]], np.float32))[0])
                rows.append({"case": case.case_id, "dose": f, "slice": int(z[i]),
                             "sigma_hu": float(sigma[i]), "ratio": float(ratio[i]),
                             "q": float(np.mean(d * d) / sigma[i] ** 2),
                             "w_best": w_star, "w_rule": w_rule,
                             "e2": float(np.mean(e * e)), "ed": float(np.mean(e * d)),
                             "d2": float(np.mean(d * d))})
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                  for k, v in rows[-1].items()}), flush=True)
    lines = ["| case | dose | noise HU | noise ratio | q = residual² / noise² | 1/q | "
             "CNN weight, shipped rule | CNN weight, best |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {100 * r['dose']:g} % | {r['sigma_hu']:.1f} | "
                     f"{r['ratio']:.2f} | {r['q']:.2f} | {1 / r['q']:.2f} | {r['w_rule']:.2f} | "
                     f"{r['w_best']:.2f} |")
    lines += ["", "Body RMSE (HU, the 2 slices pooled) of ``x + w (c - x)`` for each CNN weight "
              "``w``: the input (0), the CNN (1), the shipped rule, the residual rule "
              "``w = min(shipped, max(0, 1 - 1 / ratio^2) / q)`` (the CNN's share if it removed "
              "only noise and the scan's own normal-dose noise were a typical one's), and the "
              "hindsight best:", "",
              "| case | dose | input | CNN | shipped rule | residual rule | the product's guard | best |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        for f in DOSES:
            sel = [r for r in rows if r["case"] == case and r["dose"] == f]
            cols = [_pooled(sel, lambda r: 0.0), _pooled(sel, lambda r: 1.0),
                    _pooled(sel, lambda r: r["w_rule"]), _pooled(sel, residual_rule),
                    _pooled(sel, guarded),
                    _pooled(sel, lambda r: r["w_best"])]
            lines.append(f"| {case} | {100 * f:g} % | " + " | ".join(f"{v:.2f}" for v in cols) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "results.md").write_text(
        "# Does the CNN's residual tell where it removes structure? (issue 16, a diagnosis)\n\n"
        "Produced by `python experiments/residual_rule_check.py " + " ".join(sys.argv[1:]) + "`; per slice, inside the body.\n\n"
        + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def residual_rule(r: dict) -> float:
    """The CNN weight if the CNN removed only noise (``q`` = 1 then) and the scan's own
    normal-dose noise were a typical scan's (the noise ratio 1 at normal dose): the share of
    the input's noise variance a low dose added, over ``q``; never above the shipped rule."""
    added = max(0.0, 1.0 - 1.0 / r["ratio"] ** 2)
    return min(r["w_rule"], added / r["q"])


def guarded(r: dict) -> float:
    """The CNN weight the product gives: the shipped rule's, bounded by
    :func:`hybrid.blend.residual_guard` (chosen with this script's first run)."""
    from hybrid.blend import residual_guard

    return min(r["w_rule"], float(residual_guard(np.array([r["ratio"]]), np.array([r["q"]]))[0]))


def _pooled(rows: list[dict], weight) -> float:
    """Body RMSE of ``x + w (c - x)`` over ``rows`` (equal body sizes assumed per case)."""
    ms = [r["e2"] + 2 * weight(r) * r["ed"] + weight(r) ** 2 * r["d2"] for r in rows]
    return float(np.sqrt(np.mean(ms)))


if __name__ == "__main__":
    raise SystemExit(main())
