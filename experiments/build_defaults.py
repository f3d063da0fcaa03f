"""Build the shipped defaults and report them on the held-out patients.

    python experiments/build_defaults.py dictionary   # hybrid/assets/dictionary (make dictionary)
    python experiments/build_defaults.py calibrate    # hybrid/assets/blend.json (make calibrate)
    python experiments/build_defaults.py heldout      # experiments/results/hybrid_heldout.{json,md}

The CNN pair is trained by ``experiments/train_default.py`` (make train).
Who sees which patient is documented in :mod:`hybrid.training`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "hybrid" / "assets"
RESULTS = REPO / "experiments" / "results"


def cmd_dictionary(args) -> None:
    from hybrid.training import build_dictionary

    t = time.time()
    d = build_dictionary(args.data, args.out, max_patches=args.max_patches, overwrite=True)
    print(f"built {d!r} in {time.time() - t:.1f} s")


def _stride(text: str):
    """``"2"`` -> 2, ``"2,3"`` -> (2, 3)."""
    parts = [int(v) for v in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def cmd_calibrate(args) -> None:
    from hybrid.cnn.infer import CNNPair
    from hybrid.dictionary import PatchDictionary
    from hybrid.training import calibrate_blender

    b = calibrate_blender(args.data, CNNPair.load(ASSETS / "cnn"), PatchDictionary.load(ASSETS / "dictionary"),
                          stride=args.stride, out=ASSETS / "blend.json")
    print(f"blender: {b.mode}; calibration {json.dumps(b.calibration)}")


def cmd_heldout(args) -> None:
    from hybrid.pipeline import Enhancer
    from hybrid.training import HELD_OUT_PATIENTS, heldout_report

    rows = heldout_report(args.data, Enhancer())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hybrid_heldout.json").write_text(json.dumps(
        {"patients": list(HELD_OUT_PATIENTS), "region": "body", "rows": rows}, indent=2) + "\n")
    cols = [("body_rmse_hu", "RMSE HU"), ("body_ssim_lung", "SSIM lung (−600/1500)"),
            ("body_ssim_soft_tissue", "SSIM soft tissue (40/400)")]
    lines = ["# Held-out patients: every method, inside the body", "",
             "Shipped models (trained without these patients); nominal 2 % dose; "
             "`python experiments/build_defaults.py heldout`.", "",
             "| case | kernel | method | " + " | ".join(c for _, c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['case']} | {r.get('kernel', '')} | {r['method']} | "
                     + " | ".join(f"{r[k]:.3f}" if "ssim" in k else f"{r[k]:.1f}" for k, _ in cols) + " |")
    (RESULTS / "hybrid_heldout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # Does the hybrid beat each of its parts on every held-out case and metric?
    by = {}
    for r in rows:
        by.setdefault(r["case"], {})[r["method"]] = r
    for case, m in by.items():
        wins = {k: bool(m["hybrid"][k] < min(m["cnn"][k], m["dictionary"][k])) if "rmse" in k
                else bool(m["hybrid"][k] > max(m["cnn"][k], m["dictionary"][k])) for k, _ in cols}
        print(case, "hybrid beats both parts:", wins)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dictionary")
    d.add_argument("--max-patches", type=int, default=200_000)
    d.add_argument("--out", type=Path, default=ASSETS / "dictionary",
                   help="where to write it (default: the shipped hybrid/assets/dictionary)")
    d.set_defaults(func=cmd_dictionary)
    c = sub.add_parser("calibrate")
    c.add_argument("--stride", type=_stride, default=(2, 3),
                   help="dictionary query grid: N or Y,X (default 2,3)")
    c.set_defaults(func=cmd_calibrate)
    sub.add_parser("heldout").set_defaults(func=cmd_heldout)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
