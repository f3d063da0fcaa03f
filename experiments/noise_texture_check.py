"""Issue 16, a diagnosis: what the noise-texture channel does to a noise-aware pair at 2 % dose.

    python experiments/noise_texture_check.py [--pair experiments/checkpoints/noise_aware_warm/model]
        [--cases pancreas-chest P12 A0001-B] [--dose 0.02] [--data data]
        [--out experiments/results/noise_texture_check]

A noise-aware model is told two numbers per slice (:data:`hybrid.cnn.config.NOISE_CHANNELS`):
the noise level and its texture, both estimated from the input
(:func:`hybrid.cnn.noise.estimate_noise`).  For each case this runs the pair (CNN only,
whole slices, the 2 central slices) at one simulated dose with the texture as estimated
and with the texture forced to 0.4 ... 0.9, and reports body RMSE in HU against the
normal-dose slices.  A diagnosis only: nothing here sets a product setting, and the
held-out cases (P12, A0001) are read to explain a number already measured on them, not to
choose one.  It also tabulates the training sources of the noise-aware recipe
(:func:`hybrid.cnn.multidose.make_sources` of the training cases, every kernel variant): the
noise the normal-dose *target* itself carries, and its texture, per source.  Writes
``<out>/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from input_rule_2d import central_slices  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTURES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def source_rows(data: Path, cache: Path | None) -> list[dict]:
    """Per training source: kernel, slices, the target's own noise (HU) and texture (medians)."""
    from hybrid import recipe
    from hybrid.cnn.multidose import make_sources
    from hybrid.data import iter_cases, load_case

    split = recipe.load_split()
    skip = set(split.held_out_patients) | set(split.calibration)
    cases = [load_case(p) for e, p in iter_cases(data) if e["patient_id"] not in skip]
    rows = []
    for s in make_sources(cases, kernels=("smooth", "standard", "sharp"), cache_dir=cache):
        ok = s.var_nd > 0
        rows.append({"source": s.source_id, "kernel": s.kernel, "slices": len(s.nd),
                     "target_noise_hu": float(np.sqrt(np.median(s.var_nd[ok]))),
                     "target_texture": float(np.median(np.sqrt(s.dvar_nd[ok] / 2 / s.var_nd[ok])))})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", type=Path,
                    default=ROOT / "experiments" / "checkpoints" / "noise_aware_warm" / "model")
    ap.add_argument("--cases", nargs="+", default=["pancreas-chest", "P12", "A0001-B"])
    ap.add_argument("--dose", type=float, default=0.02)
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--out", type=Path,
                    default=ROOT / "experiments" / "results" / "noise_texture_check")
    ap.add_argument("--cache", type=Path, default=None,
                    help="variance cache of a training run, e.g. experiments/runs/warm/cache")
    args = ap.parse_args(argv)
    from hybrid.cnn.infer import CNNPair, blend_weight
    from hybrid.cnn.multidose import at_dose
    from hybrid.cnn.noise import estimate_noise
    from hybrid.data import iter_cases, load_case
    from hybrid.metrics import rmse

    pair = CNNPair.load(args.pair, precision="float32")
    rows = []
    for entry, path in iter_cases(args.data):
        if entry["case_id"] not in args.cases:
            continue
        case = load_case(path)
        nd, noise, body, lung_mask = central_slices(case)
        w = blend_weight(lung_mask)
        x = at_dose(nd, noise, args.dose, float(case.meta["dose_fraction"]),
                    independent=case.kind == "phantom")
        est = estimate_noise(x)
        row = {"case": case.case_id, "dose": args.dose, "input": rmse(x, nd, mask=body),
               "sigma_hu": est.sigma_hu.round(1).tolist(),
               "texture": est.texture.round(3).tolist()}
        for tex in (None, *TEXTURES):
            t = est.texture if tex is None else np.full_like(est.texture, tex)
            lung = pair.predict_region("lung", x, noise=(est.sigma_hu, t))
            bodyp = pair.predict_region("body", x, noise=(est.sigma_hu, t))
            row["estimated" if tex is None else f"{tex:g}"] = rmse(
                w * lung + (1 - w) * bodyp, nd, mask=body)
        rows.append(row)
        print(json.dumps({k: (round(v, 1) if isinstance(v, float) and k != "dose" else v)
                          for k, v in row.items()}), flush=True)
    cols = ["estimated", *(f"{t:g}" for t in TEXTURES)]
    lines = ["| case | texture estimated | input | " + " | ".join(
        f"texture {c}" for c in cols) + " |", "|---|---|---:|" + "---:|" * len(cols)]
    for r in rows:
        best = min(cols, key=lambda c: r[c])
        lines.append(f"| {r['case']} | {' / '.join(f'{t:.2f}' for t in r['texture'])} | "
                     f"{r['input']:.1f} | " + " | ".join(
                         (f"**{r[c]:.1f}**" if c == best else f"{r[c]:.1f}") for c in cols) + " |")
    sources = source_rows(args.data, args.cache)
    lines += ["", "Training sources: the noise of the normal-dose target itself (HU, soft tissue, "
              "median over slices) and its texture.", "",
              "| source | kernel | slices | target noise HU | target texture |",
              "|---|---|---:|---:|---:|"]
    lines += [f"| {r['source']} | {r['kernel']} | {r['slices']} | {r['target_noise_hu']:.1f} | "
              f"{r['target_texture']:.2f} |" for r in sources]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"pair": str(args.pair), "dose": args.dose, "rows": rows, "sources": sources},
        indent=1) + "\n")
    (args.out / "results.md").write_text(
        f"# The noise-texture channel at {100 * args.dose:g} % dose (issue 16, a diagnosis)\n\n"
        f"Pair `{args.pair.relative_to(ROOT) if args.pair.is_relative_to(ROOT) else args.pair}`,"
        " CNN only on the 2 central slices, body RMSE in HU against the normal dose; the "
        "noise level as estimated, the texture as estimated or forced.  Produced by "
        "`python experiments/noise_texture_check.py`.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
