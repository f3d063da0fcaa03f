"""Fine-tune the shipped body CNN for more epochs at a lower learning rate (issue 16, an experiment).

The shipped body model (``experiments/train_default.py --regions body``: 40 epochs of 250
steps) was still improving on its monitor at its last epoch (best epoch 39 of 40,
``experiments/results/cnn_training_progress_body.png``).  This script starts from its
weights and trains on the same data (the recipe's CNN stage: every non-held-out case at its
nominal 2 % dose and its 1-10 % ULD-aug, monitored on the calibration patients), with a new
patch seed, at ``--lr``, and saves a pair (the shipped lung model kept) that
``experiments/compare_cnn.py`` can score against the shipped one.  Nothing here touches
``hybrid/assets``.

``--region lung`` fine-tunes a *lung* model instead, warm-started from the pair's body model
(same architecture, its config with ``region="lung"``), on lung patches of the body model's
patch size that may hold ``--min-lung-fraction`` of lung pixels and their surroundings; the
pair's body model is kept.  The body U-Net run inside the lungs restores them better than the
plain lung stack (docs/results.md, "The lung model warm-started from the body U-Net").

Run::

    .venv/bin/python experiments/continue_body.py --epochs 40 --lr 3e-4 \\
        --out experiments/runs/body_continued/model
    .venv/bin/python experiments/compare_cnn.py hybrid/assets/cnn \\
        experiments/runs/body_continued/model --doses 0.02 0.1 0.25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REDUCE_LR_PATIENCE = 8
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--init", type=Path, default=REPO / "hybrid" / "assets" / "cnn",
                    help="the pair whose body model is fine-tuned (its lung model is kept)")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "runs" / "body_continued" / "model")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch", type=int, default=32,
                    help="patches a step (the plain pair's 32; the U-Net body model was trained at 16)")
    ap.add_argument("--seed", type=int, default=1, help="patch seed (the shipped run used 0)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smooth-variants", action="store_true",
                    help="also train on every standard-kernel training case re-filtered to the "
                         "smooth kernel (hybrid.physics.convert_kernel: its normal dose and both "
                         "low doses), the smooth class having 3 phantoms of its own and no real case")
    ap.add_argument("--region", choices=("body", "lung"), default="body",
                    help="body: fine-tune the body model; lung: train a lung model from the "
                         "pair's body model (its other model kept)")
    ap.add_argument("--min-lung-fraction", type=float, default=0.6,
                    help="--region lung: the least share of lung pixels in a training patch")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.train import slice_rmse_hu, train_model
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import assign_cases, dtype_policy, load_split, training_pairs

    split = load_split()
    held = set(split.held_out_patients)
    cases = [load_case(p) for e, p in iter_cases(args.data) if e["patient_id"] not in held]
    groups = assign_cases(cases, split)
    pairs, monitor = training_pairs(groups)
    if args.smooth_variants:
        pairs += kernel_variants(groups["cnn"])
    init = CNNPair.load(args.init)
    config = dataclasses.replace(init.body_config, learning_rate=args.lr)
    sampler_options = None
    if args.region == "lung":
        config = dataclasses.replace(config, region="lung", name="lung-" + config.name)
        sampler_options = {"min_lung_fraction": args.min_lung_fraction}
        start = slice_rmse_hu(init.body_model, config, monitor, max_slices=8)
        logging.info("lung: the body model's monitor slice RMSE on the lungs %.1f HU "
                     "(the shipped lung model's %.1f)", start,
                     slice_rmse_hu(init.lung_model, init.lung_config, monitor, max_slices=8))
    result = train_model(
        config, pairs, val_pairs=monitor, out_dir=args.out.parent / args.region,
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, val_slices=8,
        val_patches=512, patience=args.epochs, reduce_lr_patience=REDUCE_LR_PATIENCE, seed=args.seed,
        threads=args.threads, tensorboard=False, dtype=dtype_policy("auto"),
        sampler_options=sampler_options, init_model=init.body_model)  # lung too
    logging.info("%s: monitor slice RMSE %.1f HU (best epoch %d of %d, %.0f s)", args.region,
                 result.val_slice_rmse_hu, result.best_epoch, result.epochs_run, result.seconds)
    metadata = dict(init.metadata)
    metadata["trained_by"] = ("experiments/continue_body.py " + " ".join(argv or sys.argv[1:])
                              + f" (from {args.init})")
    other = "body" if args.region == "lung" else "lung"
    metadata["kept_from_previous_pair"] = [other]
    metadata["budget"] = dict(metadata.get("budget", {}), **{args.region: {
        "epochs": args.epochs, "steps_per_epoch": args.steps, "batch_size": args.batch,
        "reduce_lr_patience": REDUCE_LR_PATIENCE}})
    metadata["monitor"] = dict(metadata.get("monitor", {}), **{args.region: {
        "val_rmse_hu": result.val_rmse_hu, "val_slice_rmse_hu": result.val_slice_rmse_hu,
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "train_seconds": result.seconds, "cases": list(split.calibration),
        "note": "monitor patients are also in training (not a held-out score)"}})
    if args.region == "lung":
        pair = CNNPair(result.model, init.body_model, lung_config=config,
                       body_config=init.body_config, metadata=metadata)
    else:
        pair = CNNPair(init.lung_model, result.model, lung_config=init.lung_config,
                       body_config=config, metadata=metadata)
    pair.save(args.out)
    print(json.dumps(metadata["monitor"][args.region], indent=1))


def kernel_variants(cases, to_kernel: str = "smooth", kinds: tuple[str, ...] | None = None) -> list:
    """Each standard-kernel case (of ``kinds``, default every kind) re-filtered to ``to_kernel``,
    nominal and aug dose (FBP is linear: the low dose's noise is re-filtered with its anatomy,
    as a reconstruction of the same projections with that kernel would make it)."""
    from hybrid.cnn.sampler import TrainingPair
    from hybrid.physics import convert_kernel

    out = []
    for case in cases:
        if case.meta.get("kernel") != "standard" or (kinds is not None and case.kind not in kinds):
            continue
        nd = convert_kernel(case.nd, "standard", to_kernel)
        for tag, uld in (("", case.uld.array), ("~aug", case.uld_aug)):
            out.append(TrainingPair(convert_kernel(uld, "standard", to_kernel), nd, case.lung_mask,
                                    case.body_mask, f"{case.case_id}~{to_kernel}{tag}"))
    logging.info("%s variants: %d pairs from %d standard-kernel cases", to_kernel, len(out), len(out) // 2)
    return out


if __name__ == "__main__":
    main()
