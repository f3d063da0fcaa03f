"""How much does each training source contribute to the body model? (issue 16, an experiment)

The CNN stage trains on two sources: the procedural phantoms (``hybrid.phantom``, 12 patients,
11 of them in training: P12 is held out) and the real CT of ``../shared/data/ct`` (the rest).  This
script trains the shipped body U-Net (its configuration, from scratch, seed 0) at one short
budget on every source, on the phantoms only, on the real cases only, and on the real cases
with their re-filtered smooth and sharp variants, alone and with the phantoms (every real
training case has the standard kernel); a second seed of the first run measures the spread.
It scores each (the shipped lung model kept, so that only the body model differs) on the
held-out patients and on the real quarter-dose pairs (check only, never trained or tuned on).
The same budget for every run: the comparison is between data, not a claim about the shipped
model.

    python experiments/data_sources.py train --sources all --out experiments/runs/sources/all
    python experiments/data_sources.py train --sources phantom --out experiments/runs/sources/phantom
    python experiments/data_sources.py train --sources real --out experiments/runs/sources/real
    python experiments/data_sources.py train --sources real --kernel-variants \\
        --out experiments/runs/sources/real+kernels
    python experiments/data_sources.py train --sources all --kernel-variants \\
        --out experiments/runs/sources/all+kernels
    python experiments/data_sources.py train --sources all --seed 1 --out experiments/runs/sources/all-seed1
    python experiments/data_sources.py score experiments/runs/sources/{all,phantom,real} \\
        experiments/runs/sources/{real,all}+kernels experiments/runs/sources/all-seed1 \\
        --out experiments/results/data_sources

``train`` logs each source's share of the training data (the sampler draws training pairs in equal
shares, so a source's share of the patches is its share of the training cases).  ``score`` writes
``scores.json`` and ``scores.md``: CNN only, nominal 2 % inputs of ``make data``, 8 central
slices per held-out case, body RMSE (HU) over the body, inside the lungs and outside them
(the pixels routed as the product does: the lung mask segmented from the input), and the real
pairs' body RMSE and SSIMs (lung −600/1500, soft tissue 40/400).  Nothing here touches
``hybrid/assets``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"all": ("phantom", "real"), "phantom": ("phantom",), "real": ("real",)}
VARIANT_KERNELS = ("smooth", "sharp")  # --kernel-variants: the real cases re-filtered to these


def _train(args) -> None:
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.train import train_model
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import assign_cases, dtype_policy, load_split, training_pairs

    split = load_split()
    held = set(split.held_out_patients)
    cases = [load_case(p) for e, p in iter_cases(args.data) if e["patient_id"] not in held]
    groups = assign_cases(cases, split)
    kinds = SOURCES[args.sources]
    groups = dict(groups, cnn=[c for c in groups["cnn"] if c.kind in kinds])
    variants = VARIANT_KERNELS if args.kernel_variants else ()
    shares = _shares(groups["cnn"], variants)
    logging.info("training data by source: %s", json.dumps(shares))
    pairs, monitor = training_pairs(groups)
    if variants:
        sys.path.insert(0, str(ROOT / "experiments"))
        from continue_body import kernel_variants

        for kernel in variants:
            pairs += kernel_variants(groups["cnn"], kernel, kinds=("real",))
    init = CNNPair.load(args.init)
    config = dataclasses.replace(init.body_config, name=f"body-unet-{args.sources}")
    result = train_model(
        config, pairs, val_pairs=monitor, out_dir=args.out.parent / (args.out.name + "-work"),
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, val_slices=8,
        val_patches=512, patience=args.epochs, reduce_lr_patience=args.epochs, seed=args.seed,
        threads=args.threads, tensorboard=False, dtype=dtype_policy("auto"))
    metadata = dict(init.metadata)
    metadata["trained_by"] = "experiments/data_sources.py train " + " ".join(sys.argv[2:])
    metadata["kept_from_previous_pair"] = ["lung"]
    metadata["sources"] = shares
    metadata["monitor"] = {"body": {"val_slice_rmse_hu": result.val_slice_rmse_hu,
                                    "best_epoch": result.best_epoch, "train_seconds": result.seconds}}
    CNNPair(init.lung_model, result.model, lung_config=init.lung_config, body_config=config,
            metadata=metadata).save(args.out)
    logging.info("%s: monitor slice RMSE %.1f HU (best epoch %d, %.0f s)", args.sources,
                 result.val_slice_rmse_hu, result.best_epoch, result.seconds)


def _shares(cases, variant_kernels: tuple[str, ...] = ()) -> dict:
    """Patients, cases and slices of each source among ``cases``, and its share of the patches
    (the sampler draws each training pair, a case at one dose, in equal shares: a one-slice
    case weighs as much as a 141-slice series).  With ``variant_kernels`` each standard-kernel
    real case also counts once per re-filtered variant (:func:`continue_body.kernel_variants`)."""
    out: dict = {}
    for kind in ("phantom", "real"):
        mine = [c for c in cases if c.kind == kind]
        out[kind] = {"patients": len({c.patient_id for c in mine}), "cases": len(mine),
                     "slices": int(sum(c.nd.shape[0] for c in mine)),
                     "case_ids": [c.case_id for c in mine]}
        if kind == "real" and variant_kernels:
            out[kind]["kernel_variants"] = list(variant_kernels)
    refiltered = sum(c.kind == "real" and c.meta.get("kernel") == "standard" for c in cases)
    weight = {k: v["cases"] + (len(variant_kernels) * refiltered if k == "real" else 0)
              for k, v in out.items()}
    n = sum(weight.values())
    for k, v in out.items():
        v["patch_share"] = round(weight[k] / n, 3) if n else 0.0
    return out


def _score(args) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    from compare_cnn import _real_pairs
    from lung_model_check import region_rmse

    from hybrid.cnn.infer import CNNPair
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import load_split

    held = set(load_split().held_out_patients)
    cases = [load_case(p) for e, p in iter_cases(args.data) if e["patient_id"] in held]
    result: dict = {}
    for folder in args.pairs:
        pair = CNNPair.load(folder)
        name = folder.name
        rows = {c.case_id: region_rmse(pair, c, args.slices) for c in cases}
        result[name] = {"heldout_2pct": rows, "real_pairs": _real_pairs(pair),
                        "sources": pair.metadata.get("sources"),
                        "monitor": pair.metadata.get("monitor")}
        logging.info("%s scored", name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.json").write_text(json.dumps(result, indent=1))
    md = _markdown(result)
    (args.out / "scores.md").write_text(md)
    print(md)


def _markdown(result: dict) -> str:
    names = list(result)
    cases = list(next(iter(result.values()))["heldout_2pct"])
    lines = ["| case, 2 %: body / lungs / outside the lungs (HU) | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for c in cases:
        lines.append(f"| {c} | " + " | ".join(
            "{body:.2f} / {lungs:.2f} / {outside:.2f}".format(**result[n]["heldout_2pct"][c])
            for n in names) + " |")
    rp = {n: result[n]["real_pairs"] for n in names}
    key = next(iter(rp.values()))
    mean = {n: {m: float(np.mean([rp[n][case]["cnn"][m] for case in rp[n]]))
                for m in next(iter(key.values()))["cnn"]} for n in names}
    for m in next(iter(mean.values())):
        lines.append(f"| real pairs, mean {m} | " + " | ".join(f"{mean[n][m]:.3f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--sources", choices=sorted(SOURCES), required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--data", type=Path, default=ROOT / "data")
    t.add_argument("--init", type=Path, default=ROOT / "hybrid" / "assets" / "cnn",
                   help="the pair whose body configuration is trained and whose lung model is kept")
    t.add_argument("--kernel-variants", action="store_true",
                   help="also train on every real (standard-kernel) training case re-filtered to the "
                        "smooth and the sharp kernel (hybrid.physics.convert_kernel), nominal and aug dose")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--steps", type=int, default=250)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--seed", type=int, default=0,
                   help="weights and patch seed (a second seed of one source measures the spread)")
    t.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("score")
    s.add_argument("pairs", nargs="+", type=Path)
    s.add_argument("--data", type=Path, default=ROOT / "data")
    s.add_argument("--slices", type=int, default=8)
    s.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "data_sources")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    {"train": _train, "score": _score}[args.cmd](args)


if __name__ == "__main__":
    main()
