"""Build the shipped dictionary and blender, and report the models on the held-out patients.

    python experiments/build_defaults.py dictionary   # hybrid/assets/dictionary (make dictionary)
    python experiments/build_defaults.py calibrate    # hybrid/assets/blend.json (make calibrate)
    python experiments/build_defaults.py heldout      # experiments/results/hybrid_heldout.{json,md}

``dictionary`` and ``calibrate`` are the dictionary and blender stages of the one
recipe, :func:`hybrid.recipe.train` (the CNN stage: ``experiments/train_default.py``,
make train), with the split of ``experiments/splits.json`` and the settings of
``experiments/configs/shipped.json`` (``--config``).  Who sees which patient is the
table in :mod:`hybrid.recipe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "hybrid" / "assets"
RESULTS = REPO / "experiments" / "results"


def _config(args):
    from hybrid.recipe import load_config

    config = load_config(args.config)
    if getattr(args, "max_patches", None) is not None:
        d = config.dictionary
        config = dataclasses.replace(config, dictionary=dataclasses.replace(
            d, config={**d.config, "max_patches": args.max_patches}))
    if getattr(args, "stride", None) is not None:
        config = dataclasses.replace(config, blender=dataclasses.replace(
            config.blender, stride=args.stride))
    return config


def cmd_dictionary(args) -> None:
    from hybrid.recipe import load_split, train

    t = time.time()
    models = train(args.data, split=load_split(), config=_config(args), stages=("dictionary",),
                   out={"dictionary": args.out}, verbose=True)
    print(f"built {models.dictionary!r} in {time.time() - t:.1f} s")


def _stride(text: str):
    """``"2"`` -> 2, ``"2,3"`` -> (2, 3)."""
    parts = [int(v) for v in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def cmd_calibrate(args) -> None:
    """The blender stage, with the shipped CNN pair and dictionary (hybrid/assets)."""
    from hybrid.recipe import load_split, train

    models = train(args.data, split=load_split(), config=_config(args), stages=("blender",),
                   out={"blender": ASSETS / "blend.json"})
    b = models.blender
    print(f"blender: {b.info()}; calibration {json.dumps(b.calibration)}")


def heldout_report(root, enhancer, *, patients: Sequence[str], with_dictionary=None
                   ) -> list[dict[str, Any]]:
    """Per held-out case: RMSE (HU, body) and SSIM (lung and soft-tissue windows) per method.

    ``enhancer`` is the product's default (CNN pair + blender); ``with_dictionary``, an
    Enhancer with the opt-in dictionary, adds "dictionary" (its proposal alone) and
    "hybrid + dictionary" (issue 17: what taking it out of the default path costs)."""
    from hybrid.data import iter_cases, load_case
    from hybrid.metrics import evaluate_image

    rows = []
    for entry, path in iter_cases(root):
        if entry["patient_id"] not in set(patients):
            continue
        case = load_case(path)
        out, maps = enhancer.enhance(case.uld, return_maps=True, progress=False)
        methods = {"input": case.uld.array, "cnn": maps.cnn, "hybrid": out.array}
        if with_dictionary is not None:
            out_d, maps_d = with_dictionary.enhance(case.uld, return_maps=True, progress=False)
            methods.update({"dictionary": maps_d.dictionary, "hybrid + dictionary": out_d.array})
        for name, img in methods.items():
            m = evaluate_image(img, case.nd, lung_mask=case.lung_mask, body_mask=case.body_mask,
                               on_empty="nan")
            rows.append({"case": case.case_id, "patient": case.patient_id, "kind": case.kind,
                         "kernel": case.meta.get("kernel"), "method": name,
                         **{f"{r}_{k}": float(v) for r, d in m.items() for k, v in d.items()}})
    return rows


def cmd_heldout(args) -> None:
    from hybrid.pipeline import Enhancer
    from hybrid.recipe import load_split

    patients = load_split().held_out_patients
    rows = heldout_report(args.data, Enhancer(), patients=patients,
                          with_dictionary=Enhancer(dictionary="shipped").prepare())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hybrid_heldout.json").write_text(json.dumps(
        {"patients": list(patients), "region": "body", "rows": rows}, indent=2) + "\n")
    cols = [("body_rmse_hu", "RMSE HU"), ("body_ssim_lung", "SSIM lung (−600/1500)"),
            ("body_ssim_soft_tissue", "SSIM soft tissue (40/400)")]
    lines = ["# Held-out patients: every method, inside the body", "",
             "Shipped models (trained without these patients); nominal 2 % dose; "
             "`python experiments/build_defaults.py heldout`. `hybrid` is the default path "
             "(CNN pair + blender); `hybrid + dictionary` adds the opt-in shipped dictionary "
             "(`--dictionary shipped`), `dictionary` is its proposal alone.", "",
             "| case | kernel | method | " + " | ".join(c for _, c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['case']} | {r.get('kernel', '')} | {r['method']} | "
                     + " | ".join(f"{r[k]:.3f}" if "ssim" in k else f"{r[k]:.1f}" for k, _ in cols)
                     + " |")
    (RESULTS / "hybrid_heldout.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # Is the default hybrid within 0.5 % of the CNN alone, and what does the dictionary add?
    by: dict[str, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r["case"], {})[r["method"]] = r
    for case, m in by.items():
        c, h = m["cnn"]["body_rmse_hu"], m["hybrid"]["body_rmse_hu"]
        line = f"{case}: hybrid {100 * (1 - h / c):+.2f} % body RMSE vs the CNN alone"
        if "hybrid + dictionary" in m:
            hd = m["hybrid + dictionary"]["body_rmse_hu"]
            line += f"; with the dictionary {100 * (1 - hd / c):+.2f} %"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data")
    p.add_argument("--config", default="shipped",
                   help="recipe config: a name in experiments/configs or a path (default shipped)")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dictionary")
    d.add_argument("--max-patches", type=int, default=None,
                   help="dictionary entries (default: the config's)")
    d.add_argument("--out", type=Path, default=ASSETS / "dictionary",
                   help="where to write it (default: the shipped hybrid/assets/dictionary)")
    d.set_defaults(func=cmd_dictionary)
    c = sub.add_parser("calibrate")
    c.add_argument("--stride", type=_stride, default=None,
                   help="dictionary query grid: N or Y,X (default: the config's)")
    c.set_defaults(func=cmd_calibrate)
    sub.add_parser("heldout").set_defaults(func=cmd_heldout)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
