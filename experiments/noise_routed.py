"""Issue 16: the shipped pair and a noise-aware pair, weighed by the blender's noise rule.

    python experiments/noise_routed.py experiments/checkpoints/noise_aware_warm/model \\
        [--doses 0.01 0.02 0.05 0.1 0.25 0.5 1.0] [--out experiments/results/noise_routed]

The blender is calibrated in memory on the calibration patients (the recipe's, never a
held-out one; :func:`hybrid.calibration.calibrate_blender` with ``noise_aware``): the
``"noise_aware"`` rule weighs the noise-aware pair's proposal against the shipped pair's
by the input's noise ratio, then the input rule is fitted over that.  Then the held-out
dose sweep (input, CNN only = the shipped pair, hybrid; :func:`hybrid.evaluate.dose_sweep
.dose_sweep`, the same simulated inputs as ``experiments/results/dose_sweep.json``,
seed 0) and the three real pairs (check only, never trained or tuned on).  Writes
``<out>/noise_routed.json``, ``noise_routed.md`` and the calibrated ``blend.json``; prints
the table next to the shipped hybrid's numbers from ``dose_sweep.json`` and
``real_pairs.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


def _real_pairs(enh) -> dict[str, dict[str, float]]:
    from hybrid.evaluate.real_pairs import score_on_pairs

    weights = {}

    def restore(ld):
        out = {"hybrid": enh.enhance(ld, progress=False).array}
        weights[len(weights)] = enh.last_info["input"]
        return out

    scores = score_on_pairs(restore)
    for i, name in enumerate(scores):
        scores[name]["weights"] = weights[i]
    return scores


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pair", type=Path, nargs="?",
                    help="the noise-aware CNN pair folder (CNNPair.save); omitted: the shipped "
                         "pair alone (only the input rule is calibrated)")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--doses", nargs="+", type=float,
                    default=[0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--out", type=Path, default=RESULTS / "noise_routed")
    ap.add_argument("--strength", type=float, default=1.0,
                    help="the noise-aware pair's strength setting (CNNPair.with_settings)")
    ap.add_argument("--calibrate-only", action="store_true",
                    help="stop after the calibration (its balanced RMSEs decide a setting "
                         "on the calibration patients, never on held-out ones)")
    ap.add_argument("--also-calibrate-on", nargs="*", default=[], metavar="CASE",
                    help="training cases (never held-out ones) added to the calibration "
                         "patients' for the blender's rules")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from hybrid.calibration import calibrate_blender
    from hybrid.cnn.infer import CNNPair
    from hybrid.data import iter_cases, load_case
    from hybrid.evaluate.dose_sweep import dose_sweep
    from hybrid.pipeline import Enhancer
    from hybrid.recipe import load_config, load_split

    t0 = time.perf_counter()
    split, config = load_split(), load_config("shipped")
    extra = set(args.also_calibrate_on)
    held = [e["case_id"] for e, _ in iter_cases(args.data)
            if e["case_id"] in extra and e["patient_id"] in split.held_out_patients]
    if held:
        raise SystemExit(f"refused: {held} belong to held-out patients")
    cases = [load_case(p) for e, p in iter_cases(args.data)
             if e["patient_id"] in split.calibration or e["case_id"] in extra]
    base = CNNPair.load(ROOT / "hybrid" / "assets" / "cnn")
    na = (None if args.pair is None
          else CNNPair.load(args.pair).with_settings(strength=args.strength))
    pair_name = None if args.pair is None else str(args.pair)
    blender = calibrate_blender(cases, base, None, patients=split.calibration, config=config,
                                noise_aware=na)
    args.out.mkdir(parents=True, exist_ok=True)
    blender.save(args.out / "blend.json")
    print("calibrated:", json.dumps({k: blender.calibration.get(k) for k in ("noise_aware", "input")}))
    if args.calibrate_only:
        (args.out / "calibration.json").write_text(json.dumps(
            {"pair": pair_name, "strength": args.strength,
             "calibration_cases": [c.case_id for c in cases],
             "calibration": blender.calibration}, indent=1) + "\n")
        return 0
    enh = Enhancer(cnn=base, blender=blender, noise_aware=na)
    sweep = dose_sweep(args.data, doses=args.doses, methods=("input", "cnn", "hybrid"),
                       enhancer=enh)
    rows = [{k: r[k] for k in ("case", "dose_fraction", "method", "rmse_hu", "ssim_lung",
                               "ssim_soft_tissue")} for r in sweep["rows"]]
    result = {"pair": pair_name, "strength": args.strength,
              "command": " ".join(argv if argv is not None else sys.argv[1:]),
              "calibration_cases": [c.case_id for c in cases],
              "rows": rows, "real_pairs": _real_pairs(enh),
              "calibration": blender.calibration, "seconds": time.perf_counter() - t0}
    (args.out / "noise_routed.json").write_text(json.dumps(result, indent=1) + "\n")
    md = _markdown(result)
    (args.out / "noise_routed.md").write_text(md)
    print(md)
    return 0


def _shipped() -> tuple[list[dict], dict]:
    sweep = json.loads((RESULTS / "dose_sweep.json").read_text())
    real = json.loads((RESULTS / "real_pairs.json").read_text())
    return sweep["rows"], real


def _markdown(result: dict) -> str:
    old_rows, old_real = _shipped()

    def find(rows, case, f, method):
        return next((r for r in rows if r["case"] == case and abs(r["dose_fraction"] - f) < 1e-9
                     and r["method"] == method), None)

    def cell(r):
        return "–" if r is None else (f"{r['rmse_hu']:.1f} / {r['ssim_lung']:.3f} / "
                                      f"{r['ssim_soft_tissue']:.3f}")

    command = result.get("command") or f"{result['pair']} --strength {result['strength']:g}"
    title = ("Shipped pair + noise-aware pair, weighed by the noise ratio" if result["pair"]
             else "Shipped pair, input rule calibrated on other patients")
    lines = [f"# {title} (issue 16)", "",
             f"`python experiments/noise_routed.py {command}`; blender calibrated on "
             f"{', '.join(result['calibration_cases'])}. Body RMSE HU (at 100 %: "
             "RMS change) / SSIM lung (−600/1500) / SSIM soft tissue (40/400), held-out "
             "patients, 2 central slices; shipped hybrid and BM3D from "
             "`experiments/results/dose_sweep.json` (same inputs, seed 0).", "",
             "| case | dose | input | shipped hybrid | BM3D | **this variant** | gate |",
             "|---|---:|---:|---:|---:|---:|---|"]
    keys = sorted({(r["case"], r["dose_fraction"]) for r in result["rows"]},
                  key=lambda t: (t[1], t[0]))
    for case, f in keys:
        inp, new = find(result["rows"], case, f, "input"), find(result["rows"], case, f, "hybrid")
        ok = (new["rmse_hu"] < inp["rmse_hu"] and new["ssim_lung"] >= inp["ssim_lung"]
              and new["ssim_soft_tissue"] >= inp["ssim_soft_tissue"]) if f < 1 else None
        lines.append(f"| {case} | {f:g} | {cell(inp)} | {cell(find(old_rows, case, f, 'hybrid'))} "
                     f"| {cell(find(old_rows, case, f, 'bm3d'))} | {cell(new)} | "
                     f"{'' if ok is None else ('pass' if ok else 'FAIL')} |")
    if result["real_pairs"]:
        for name, v in result["real_pairs"].items():
            old = old_real["cases"][name]["methods"]
            lines.append(f"| real pair {name} | real | {cell(v['input'])} | "
                         f"{cell(old['hybrid'])} | {cell(old['bm3d'])} | {cell(v['hybrid'])} | |")
        mean = np.mean([v["hybrid"]["rmse_hu"] for v in result["real_pairs"].values()])
        lines.append(f"| real pairs, mean RMSE | | | {old_real['mean']['hybrid']['rmse_hu']:.1f} | "
                     f"{old_real['mean']['bm3d']['rmse_hu']:.1f} | {mean:.1f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
