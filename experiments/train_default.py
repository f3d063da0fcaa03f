"""Train the shipped default CNN pair and evaluate it on the held-out patients.

Chosen from the variant search (``experiments/results/variants.md``); the
configurations are :data:`LUNG` and :data:`BODY` below.

Data (``data/manifest.json``)
    train:   every phantom patient except P12 and every real patient except A0001;
             each case as two pairs: nominal ULD (2 % dose) and ULD-aug (1-10 %).
    monitor: nominal ULD of P11 and pancreas (also trained on: this only drives the
             learning-rate schedule and the best checkpoint, it is not a held-out score).
    held out: P12 (phantom) and A0001 (real, kernels B and L), never seen in training
             nor in the variant search.

Writes
    hybrid/assets/cnn/                           the pair (``CNNPair.save``)
    experiments/results/cnn_training_progress.png  lung and body training curves
    experiments/results/cnn_heldout.json         held-out RMSE (HU, inside the body)

Run::

    .venv/bin/python experiments/train_default.py               # train + evaluate (~15 min, 2 cores)
    .venv/bin/python experiments/train_default.py --eval-only   # evaluate the shipped pair

The held-out evaluation runs ``CNNPair.propose(case.uld, lung_mask)`` with the lung
mask segmented from the ULD image (``hybrid.lung.segment``, as ``enhance`` does) and
compares with the ND image inside the case's body mask; the ULD input is scored the
same way.  The case's own lung mask is reported too, for reference.
"""

from __future__ import annotations

import argparse
import json
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

from hybrid.cnn.config import CNNConfig  # noqa: E402
from hybrid.cnn.sampler import TrainingPair  # noqa: E402

ASSET_DIR = REPO / "hybrid" / "assets" / "cnn"
RESULTS_DIR = REPO / "experiments" / "results"

HELD_OUT = {"phantom": ["P12"], "real": ["A0001"]}
MONITOR = ["P11", "pancreas"]

#: Default configurations (from the variant search, see the module docstring).
#: lung-dil1-p48-huber: best lung RMSE of the search, 44 ms on a full 512 x 512 slice.
LUNG = dict(
    region="lung", patch_size=48, depth=6, width=24, kernel_size=3, dilation=1,
    residual=True, normalization="linear", loss="huber", learning_rate=1e-3, name="lung",
)
#: Body: 10 layers of 32 3x3 filters (75 k parameters, receptive field 21 px).  The
#: variant search's winner (body-k5-d5-dil1-huber, 20 k parameters, 30 x 150 steps) was
#: chosen under a float32 time budget of 60 ms per slice and 1-2 min of training; with
#: bfloat16 inference (3-4x faster) and bfloat16 training, a model 3.7x larger trained
#: 2.2x longer fits the same time: BM3D beat the small one outside the lungs (README).
BODY = dict(
    region="body", patch_size=64, depth=10, width=32, kernel_size=3, dilation=1,
    residual=True, normalization="linear", loss="huber", learning_rate=1e-3, name="body",
)
#: Training budget per region: epochs x steps x batch.
BUDGET = {
    "lung": {"epochs": 30, "steps_per_epoch": 150, "batch_size": 32},
    "body": {"epochs": 40, "steps_per_epoch": 250, "batch_size": 32},
}


# ---------------------------------------------------------------------------- data
def load_training(data_root: Path) -> tuple[list[TrainingPair], list[TrainingPair], list[str]]:
    from hybrid.data import iter_cases, load_case

    held = set(HELD_OUT["phantom"]) | set(HELD_OUT["real"])
    train, monitor, ids = [], [], []
    for entry, path in iter_cases(data_root):
        if entry["patient_id"] in held:
            continue
        case = load_case(path)
        nd = np.asarray(case.nd, np.float32)
        uld = np.asarray(case.uld.array, np.float32)
        aug = np.asarray(case.uld_aug, np.float32)
        train.append(TrainingPair(uld, nd, case.lung_mask, case.body_mask, case.case_id))
        train.append(TrainingPair(aug, nd, case.lung_mask, case.body_mask, f"{case.case_id}~aug"))
        ids.append(case.case_id)
        if entry["patient_id"] in MONITOR:
            monitor.append(TrainingPair(uld, nd, case.lung_mask, case.body_mask, case.case_id))
    return train, monitor, ids


def held_out_cases(data_root: Path):
    from hybrid.data import iter_cases, load_case

    want = set(HELD_OUT["phantom"]) | set(HELD_OUT["real"])
    for entry, path in iter_cases(data_root):
        if entry["patient_id"] in want:
            yield load_case(path)


# ---------------------------------------------------------------------------- training
def train(args) -> None:
    import keras

    from hybrid.cnn.infer import CNNPair, native_bfloat16
    from hybrid.cnn.train import train_model

    t0 = time.perf_counter()
    pairs, monitor, ids = load_training(args.data)
    print(f"{len(ids)} training cases ({len(pairs)} pairs) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    configs = {"lung": CNNConfig(**LUNG), "body": CNNConfig(**BODY)}
    results = {}
    kept = None
    if set(args.regions) != {"lung", "body"}:  # the other region: the model in --keep-from
        kept = CNNPair.load(args.keep_from)
    dtype = None
    if args.precision == "bfloat16" or (args.precision == "auto" and native_bfloat16()):
        dtype = "mixed_bfloat16"
    print(f"training {', '.join(args.regions)} with dtype policy {dtype or 'float32'}", flush=True)
    for region in args.regions:
        b = dict(BUDGET[region])
        if args.epochs:
            b["epochs"] = args.epochs
        if args.steps:
            b["steps_per_epoch"] = args.steps
        keras.backend.clear_session()
        t = time.perf_counter()
        results[region] = train_model(
            configs[region],
            pairs,
            val_pairs=monitor,
            out_dir=args.work / region,
            epochs=b["epochs"],
            steps_per_epoch=b["steps_per_epoch"],
            batch_size=b["batch_size"],
            patience=100,
            reduce_lr_patience=args.reduce_lr_patience,
            seed=args.seed,
            threads=args.threads,
            tensorboard=False,
            verbose=0,
            dtype=dtype,
        )
        r = results[region]
        print(f"{region}: monitor slice RMSE {r.val_slice_rmse_hu:.1f} HU, best epoch "
              f"{r.best_epoch}/{r.epochs_run}, {time.perf_counter() - t:.0f} s", flush=True)
    old_meta = kept.metadata if kept is not None else {}
    metadata = {
        "data_manifest": next(iter(results.values())).manifest,
        "trained_by": "experiments/train_default.py",
        "held_out_patients": HELD_OUT,
        "training_cases": ids,
        "training_inputs": "nominal ULD (2 %) and ULD-aug (1-10 % dose) per case",
        "budget": {k: (dict(BUDGET[k], reduce_lr_patience=args.reduce_lr_patience) if k in results
                       else old_meta.get("budget", {}).get(k)) for k in BUDGET},
        "dtype_policy": {k: (dtype or "float32") if k in results
                         else old_meta.get("dtype_policy", {}).get(k, "float32") for k in BUDGET},
        "monitor": {**{k: v for k, v in old_meta.get("monitor", {}).items() if k not in results},
                    **{
            k: {
                "cases": MONITOR,
                "note": "monitor patients are also in training (not a held-out score)",
                "val_rmse_hu": r.val_rmse_hu,
                "val_slice_rmse_hu": r.val_slice_rmse_hu,
                "best_epoch": r.best_epoch,
                "epochs_run": r.epochs_run,
                "train_seconds": r.seconds,
            }
            for k, r in results.items()
        }},
    }
    if kept is not None:
        metadata["kept_from_previous_pair"] = sorted(set(BUDGET) - set(results))
        # the data manifest covers the same cases for both regions (same load_training)
    models = {k: r.model for k, r in results.items()}
    cfgs = dict(configs)
    if kept is not None:
        for k in set(BUDGET) - set(results):
            models[k] = getattr(kept, f"{k}_model")
            cfgs[k] = getattr(kept, f"{k}_config")
    pair = CNNPair(
        models["lung"], models["body"],
        lung_config=cfgs["lung"], body_config=cfgs["body"], metadata=metadata,
    )
    pair.save(args.out, overwrite=True)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir())
    print(f"saved {args.out} ({size / 1e6:.2f} MB)", flush=True)
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
        pair.propose(uld[:1], seg[:1])  # warm-up (tracing)
        t = time.perf_counter()
        prop = pair.propose(uld, seg).image
        sec = time.perf_counter() - t
        timings.append((sec, len(uld), uld.shape[1:]))
        prop_true = pair.propose(uld, case.lung_mask).image
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
        prop_aug = pair.propose(aug, seg_aug).image
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
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--regions", nargs="+", choices=["lung", "body"], default=["lung", "body"],
                    help="regions to train; the other one is copied from --keep-from")
    ap.add_argument("--keep-from", type=Path, default=ASSET_DIR,
                    help="pair whose model is kept for the regions not trained")
    ap.add_argument("--reduce-lr-patience", type=int, default=8,
                    help="epochs without a better monitor loss before the learning rate is halved "
                         "(3 stalled the body model at 119 HU monitor RMSE; 8 reached 112)")
    ap.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                    help="training arithmetic: auto = bfloat16 where the CPU has it natively")
    args = ap.parse_args(argv)
    from hybrid.cnn.models import set_threads

    set_threads(args.threads)
    if not args.eval_only:
        train(args)
    evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
