"""Train the shipped CNN pair (``make train``) and evaluate it on the held-out patients.

Training is the CNN stage of the one recipe, :func:`hybrid.recipe.train`, with the
split of ``experiments/splits.json`` and the settings of
``experiments/configs/shipped.json`` (``--config``); who sees which patient is the
table in :mod:`hybrid.recipe`: every case of the non-held-out patients at its nominal
ULD (2 % dose) and its ULD-aug (1-10 %), monitored on the calibration patients (also
trained on: this only drives the learning-rate schedule and the best checkpoint, it is
not a held-out score).

Writes
    hybrid/assets/cnn/                           the pair (``CNNPair.save``)
    experiments/results/cnn_training_progress.png  lung and body training curves
    experiments/results/cnn_heldout.json         held-out RMSE (HU, inside the body)

Run::

    .venv/bin/python experiments/train_default.py               # train + evaluate (~15 min, 2 cores)
    .venv/bin/python experiments/train_default.py --eval-only   # evaluate the shipped pair

The held-out evaluation runs ``CNNPair.propose(case.uld, lung_mask=...)`` with the lung
mask segmented from the ULD image (``hybrid.lung.segment``, as ``enhance`` does) and
compares with the ND image inside the case's body mask; the ULD input is scored the
same way.  The case's own lung mask is reported too, for reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

ASSET_DIR = REPO / "hybrid" / "assets" / "cnn"
RESULTS_DIR = REPO / "experiments" / "results"


# ---------------------------------------------------------------------------- training
def train(args) -> None:
    """``make train``: the recipe's CNN stage (:func:`hybrid.recipe.train`)."""
    from hybrid.recipe import Models, load_config, load_split
    from hybrid.recipe import train as run_recipe

    config = load_config(args.config).with_budget(epochs=args.epochs, steps_per_epoch=args.steps)
    config = config.with_cnn(**{k: v for k, v in (("reduce_lr_patience", args.reduce_lr_patience),
                                                  ("precision", args.precision)) if v is not None})
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    keep = None
    if set(args.regions) != {"lung", "body"}:  # the other region: the model in --keep-from
        from hybrid.cnn.infer import CNNPair

        keep = Models(cnn=CNNPair.load(args.keep_from))
    models = run_recipe(args.data, split=load_split(), config=config, stages=("cnn",),
                        out={"cnn": args.out}, keep=keep, regions=args.regions, work=args.work,
                        threads=args.threads)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"saved {args.out} ({size / 1e6:.2f} MB)", flush=True)
    results = models.training
    if len(results) == 2:
        _progress_png([results["lung"].files["figure"], results["body"].files["figure"]],
                      RESULTS_DIR / "cnn_training_progress.png")
    else:
        for k, r in results.items():
            _progress_png([r.files["figure"]], RESULTS_DIR / f"cnn_training_progress_{k}.png")


def _progress_png(pngs: list[Path], dest: Path) -> None:
    """Stack the lung and body progress figures into one PNG."""
    import matplotlib.image as mpimg

    imgs = [mpimg.imread(str(p)) for p in pngs if Path(p).exists()]
    if not imgs:
        return
    w = max(i.shape[1] for i in imgs)
    imgs = [np.pad(i, ((0, 0), (0, w - i.shape[1]), (0, 0)), constant_values=1.0) for i in imgs]
    dest.parent.mkdir(parents=True, exist_ok=True)
    if len(imgs) == 1:
        shutil.copyfile(pngs[0], dest)
    else:
        mpimg.imsave(str(dest), np.concatenate(imgs, axis=0))
    print(f"wrote {dest}")


# ---------------------------------------------------------------------------- evaluation
def held_out_cases(data_root: Path):
    """The held-out patients' cases (``experiments/splits.json``)."""
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import load_split

    want = set(load_split().held_out_patients)
    for entry, path in iter_cases(data_root):
        if entry["patient_id"] in want:
            yield load_case(path)


def _rmse(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    d = a[m].astype(np.float64) - b[m]
    return float(np.sqrt(np.mean(d**2)))


def evaluate(args) -> dict[str, Any]:
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.models import set_threads
    from hybrid.lung import segment

    set_threads(args.threads)
    pair = CNNPair.load(args.out)
    cases: dict[str, Any] = {}
    timings = []
    agg: dict[str, dict[str, float]] = {}
    for case in held_out_cases(args.data):
        uld = case.uld.array.astype(np.float32)
        nd = np.asarray(case.nd, np.float32)
        body = case.body_mask
        seg = segment(case.uld)
        pair.propose(uld[:1], lung_mask=seg[:1])  # warm-up (tracing)
        t = time.perf_counter()
        prop = pair.propose(uld, lung_mask=seg).image
        sec = time.perf_counter() - t
        timings.append((sec, len(uld), uld.shape[1:]))
        prop_true = pair.propose(uld, lung_mask=case.lung_mask).image
        lung, soft = body & case.lung_mask, body & ~case.lung_mask
        rec = {
            "patient_id": case.patient_id,
            "kind": case.kind,
            "kernel": case.meta.get("kernel"),
            "slices": int(len(uld)),
            "shape": list(uld.shape),
            "uld_rmse_hu": _rmse(uld, nd, body),
            "cnn_rmse_hu": _rmse(prop, nd, body),
            "cnn_rmse_hu_true_lung_mask": _rmse(prop_true, nd, body),
            "uld_rmse_lung_hu": _rmse(uld, nd, lung),
            "cnn_rmse_lung_hu": _rmse(prop, nd, lung),
            "uld_rmse_body_outside_lung_hu": _rmse(uld, nd, soft),
            "cnn_rmse_body_outside_lung_hu": _rmse(prop, nd, soft),
            "lung_mask_dice_seg_vs_case": float(
                2 * np.sum(seg & case.lung_mask) / max(1, seg.sum() + case.lung_mask.sum())
            ),
            "propose_seconds_per_slice": sec / len(uld),
        }
        rec["reduction_pct"] = 100 * (1 - rec["cnn_rmse_hu"] / rec["uld_rmse_hu"])
        # the same case at its other (augmentation) dose: robustness to the dose level
        aug = np.asarray(case.uld_aug, np.float32)
        seg_aug = segment(aug, spacing=case.uld.spacing)
        prop_aug = pair.propose(aug, lung_mask=seg_aug).image
        rec["other_dose"] = {
            "dose_fraction": case.meta.get("aug_dose_fraction"),
            "uld_rmse_hu": _rmse(aug, nd, body),
            "cnn_rmse_hu": _rmse(prop_aug, nd, body),
        }
        rec["other_dose"]["reduction_pct"] = 100 * (
            1 - rec["other_dose"]["cnn_rmse_hu"] / rec["other_dose"]["uld_rmse_hu"]
        )
        cases[case.case_id] = rec
        a = agg.setdefault(case.kind, {"se_uld": 0.0, "se_cnn": 0.0, "n": 0})
        n = int(body.sum())
        a["se_uld"] += rec["uld_rmse_hu"] ** 2 * n
        a["se_cnn"] += rec["cnn_rmse_hu"] ** 2 * n
        a["n"] += n
        print(f"{case.case_id}: ULD {rec['uld_rmse_hu']:.1f} HU -> CNN {rec['cnn_rmse_hu']:.1f} HU "
              f"({rec['reduction_pct']:.1f} % lower; true-mask {rec['cnn_rmse_hu_true_lung_mask']:.1f}), "
              f"{1000 * sec / len(uld):.0f} ms/slice; at dose {rec['other_dose']['dose_fraction']:.3f}: "
              f"{rec['other_dose']['uld_rmse_hu']:.1f} -> {rec['other_dose']['cnn_rmse_hu']:.1f} HU", flush=True)
    summary = {}
    for kind, a in agg.items():
        u, c = np.sqrt(a["se_uld"] / a["n"]), np.sqrt(a["se_cnn"] / a["n"])
        summary[kind] = {"uld_rmse_hu": float(u), "cnn_rmse_hu": float(c),
                         "reduction_pct": float(100 * (1 - c / u))}
    n512 = [s / n for s, n, shp in timings if tuple(shp) == (512, 512)]
    out = {
        "model": str(Path(args.out).relative_to(REPO)) if Path(args.out).is_relative_to(REPO) else str(args.out),
        "command": "python experiments/train_default.py --eval-only",
        "metric": "RMSE in HU vs the normal-dose image, over the case's body mask (lungs included)",
        "lung_mask": "hybrid.lung.segment(case.uld) (as enhance does); *_true_lung_mask uses the case's mask",
        "input": "case.uld, nominal 2 % dose",
        "target_reduction_pct": 40.0,
        "summary": summary,
        "cases": cases,
        "threads": args.threads,
        "propose_ms_per_512_slice": float(1000 * np.median(n512)) if n512 else None,
        "lung_config": pair.lung_config.to_dict(),
        "body_config": pair.body_config.to_dict(),
        "size_bytes": int(sum(p.stat().st_size for p in Path(args.out).iterdir())),
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "cnn_heldout.json").write_text(json.dumps(out, indent=2) + "\n")
    for kind, s in summary.items():
        print(f"{kind}: ULD {s['uld_rmse_hu']:.1f} -> CNN {s['cnn_rmse_hu']:.1f} HU "
              f"({s['reduction_pct']:.1f} % lower)")
    print(f"propose: {out['propose_ms_per_512_slice']} ms per 512x512 slice on {args.threads} threads")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--out", type=Path, default=ASSET_DIR)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hybrid_cnn_default"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default="shipped",
                    help="recipe config: a name in experiments/configs or a path (default shipped)")
    ap.add_argument("--epochs", type=int, help="epochs of both regions (default: the config's)")
    ap.add_argument("--steps", type=int, help="steps per epoch of both regions (default: the config's)")
    ap.add_argument("--seed", type=int, help="default: the config's")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--regions", nargs="+", choices=["lung", "body"], default=["lung", "body"],
                    help="regions to train; the other one is copied from --keep-from")
    ap.add_argument("--keep-from", type=Path, default=ASSET_DIR,
                    help="pair whose model is kept for the regions not trained")
    ap.add_argument("--reduce-lr-patience", type=int,
                    help="epochs without a better monitor loss before the learning rate is halved "
                         "(default: the config's; 3 stalled the body model at 119 HU monitor RMSE, "
                         "8 reached 112)")
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"],
                    help="training arithmetic (default: the config's); auto = bfloat16 where the "
                         "CPU has it natively")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from hybrid.cnn.models import set_threads

    set_threads(args.threads)
    if not args.eval_only:
        train(args)
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
