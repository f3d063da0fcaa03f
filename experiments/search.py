"""Variant search for the lung and body CNNs (a harness, not a test).

Reads the variant families in ``experiments/variants/*.json`` (or ``*.toml``): each
family is one region's base :class:`~hybrid.cnn.CNNConfig`, a training budget and a
list of overrides (one per variant).  Every variant is trained with the same budget,
seed and split, scored on whole validation slices and timed, and the results are
written as a ranked table::

    experiments/results/variants.csv
    experiments/results/variants.md

The families of today's search (issue 16: plain stacks against U-Nets, the CNNs in the
deployment precision) are the top-level files; the first search's (2026-11-25, plain
stacks only, float32, 8 x 60-80 steps) are kept in ``experiments/variants/plain_2026-11-25``
with its table ``experiments/results/variants_plain_2026-11-25.md``.

Split (fixed, patient-level; every list in ``experiments/splits.json``)
    train:      every patient but the validation, held-out and unused ones
    validation: ``search_validation``
    unused:     the held-out patients of the shipped model and ``search_unused``,
                so that the README's held-out numbers never saw the search.
Every training case gives two :class:`~hybrid.cnn.TrainingPair`: its nominal ULD (2 %)
and its ``uld_aug`` copy (random dose 1-10 %), both with the ND target.  Validation
uses the nominal ULD only (what evaluation uses).

Scores
    ``val_rmse_hu``: RMSE in HU on whole validation slices over the region's pixels
    (lungs, or body outside the lungs) with the best checkpoint
    (``TrainResult.val_slice_rmse_hu``); ``uld_rmse_hu`` is the same for the ULD input.
    ``ms_per_slice``: median forward time of the region's model on one 512 x 512 slice
    on ``--threads`` TensorFlow threads (the lung model runs on a crop in deployment,
    so this is pessimistic for it).

Run::

    .venv/bin/python experiments/search.py --retime             # every family (make search)
    .venv/bin/python experiments/search.py --region lung        # one region
    .venv/bin/python experiments/search.py --only lung-unet-w16 --epochs 1 --steps 5  # smoke
    .venv/bin/python experiments/search.py --variants experiments/variants/plain_2026-11-25 \
        --precision float32 --out /tmp/plain_search               # the first search again

Results of finished variants are kept in ``<work>/results.jsonl`` and reused when the
same variant (same config, budget and split) is asked for again, so an interrupted
search resumes; ``--fresh`` ignores them.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
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

VARIANTS_DIR = REPO / "experiments" / "variants"
RESULTS_DIR = REPO / "experiments" / "results"


#: Speed target of each model on one 512 x 512 slice, 2 threads, in the deployment precision.
#: The bar is `make bench`: the whole hybrid <= 60 s per 250 slices.  With the shipped pair
#: (body U-Net 59 ms, lung 6 x 24 stack 26 ms here, timed round-robin on a quiet machine) it
#: takes 25.4 s, 17.1 s of it in the CNNs; at these targets (180 ms for the pair, 2.1x) it
#: would take about 44 s, a 1.35x margin for a slower machine.  The body model runs on the
#: whole body box; the lung model only on the lung crop (about half the slice), so a
#: full-slice time is pessimistic for it.  (The 2026-11-25 search of plain stacks, in
#: float32, used 60 ms body and 90 ms lung.)
SPEED_TARGET_MS = {"lung": 60.0, "body": 120.0}

COLUMNS = [
    "rank", "region", "variant", "architecture", "scales", "val_rmse_hu", "uld_rmse_hu", "reduction_pct",
    "ms_per_slice", "fits_speed", "params", "receptive_field", "patch_size", "depth",
    "width", "kernel_size", "dilation", "normalization", "loss", "residual",
    "val_patch_rmse_hu", "best_epoch", "epochs", "steps_per_epoch", "batch_size",
    "train_seconds",
]


# ---------------------------------------------------------------------------- variants
def _read_family(path: Path) -> dict[str, Any]:
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(path.read_text())
    return json.loads(path.read_text())


def load_families(directory: Path = VARIANTS_DIR) -> list[dict[str, Any]]:
    """Every family file, validated: each variant's config is built here (fails early)."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".json", ".toml"))
    if not files:
        raise FileNotFoundError(f"Expected variant families (*.json, *.toml) in {directory}.")
    families = []
    for path in files:
        fam = _read_family(path)
        region = fam.get("region")
        base = dict(fam.get("base", {}))
        budget = dict(fam.get("budget", {}))
        variants = []
        names = set()
        for i, ov in enumerate(fam.get("variants", [])):
            ov = dict(ov)
            name = ov.pop("name", f"{path.stem}-{i}")
            if name in names:
                raise ValueError(f"{path}: variant name {name!r} is used twice.")
            names.add(name)
            vbudget = {k: ov.pop(k) for k in ("epochs", "steps_per_epoch", "batch_size") if k in ov}
            cfg = CNNConfig.from_dict({**base, **ov, "region": region, "name": name})
            variants.append({"name": name, "config": cfg, "budget": {**budget, **vbudget}})
        families.append({"file": path.name, "region": region, "variants": variants})
    return families


# ---------------------------------------------------------------------------- data
def load_split(data_root: Path) -> tuple[list[TrainingPair], list[TrainingPair], dict]:
    """Training pairs (ULD and ULD-aug per case) and validation pairs (nominal ULD)."""
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import load_split as read_split

    split = read_split()  # experiments/splits.json: the only patient lists
    excluded = set(split.search_excluded)  # never used by the search
    validation = set(split.search_validation)  # trained on: everyone else
    train, val, info = [], [], {"train_cases": [], "val_cases": []}
    for entry, path in iter_cases(data_root):
        pid = entry["patient_id"]
        if pid in excluded:
            continue
        is_val = pid in validation
        case = load_case(path)
        nd = np.asarray(case.nd, np.float32)
        uld = np.asarray(case.uld.array, np.float32)
        if is_val:
            val.append(TrainingPair(uld, nd, case.lung_mask, case.body_mask, case.case_id))
            info["val_cases"].append(case.case_id)
        else:
            aug = np.asarray(case.uld_aug, np.float32)
            train.append(TrainingPair(uld, nd, case.lung_mask, case.body_mask, case.case_id))
            train.append(
                TrainingPair(aug, nd, case.lung_mask, case.body_mask, f"{case.case_id}~aug")
            )
            info["train_cases"].append(case.case_id)
    if not train or not val:
        raise RuntimeError(f"Empty split from {data_root}: {info}. Run `make data` first.")
    return train, val, info


def uld_slice_rmse(pairs: list[TrainingPair], region: str, max_slices: int) -> float:
    """RMSE of the ULD input on the same slices and pixels ``slice_rmse_hu`` scores."""
    from hybrid.cnn.train import region_mask

    cands = [
        (i, k)
        for i, p in enumerate(pairs)
        for k in range(p.shape[0])
        if region_mask(p, region)[k].any()
    ]
    pick = np.unique(np.linspace(0, len(cands) - 1, min(max_slices, len(cands))).round().astype(int))
    se, n = 0.0, 0
    for j in pick:
        i, k = cands[j]
        m = region_mask(pairs[i], region)[k]
        d = pairs[i].uld[k][m].astype(np.float64) - pairs[i].nd[k][m]
        se += float(np.sum(d**2))
        n += int(m.sum())
    return float(np.sqrt(se / n))


# ---------------------------------------------------------------------------- timing
def time_model(model, size: int = 512, repeats: int = 5) -> float:
    """Median ms of one forward pass on a ``size`` x ``size`` slice."""
    import tensorflow as tf

    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)],
    )
    x = tf.random.normal((1, size, size, 1), seed=0)
    fn(x).numpy()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x).numpy()
        ts.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(ts))


def retime(
    configs: list[CNNConfig], rounds: int = 7, dtype: str | None = None
) -> dict[str, float]:
    """Median ms per 512 x 512 slice of each architecture (in the Keras dtype policy
    ``dtype``), timed round-robin."""
    import tensorflow as tf

    from hybrid.cnn.models import build_model

    fns = {}
    x = tf.random.normal((1, 512, 512, 1), seed=0)
    for cfg in configs:
        model = build_model(cfg, dtype=dtype)
        fns[cfg.name] = tf.function(
            lambda t, m=model: m(t, training=False),
            input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32)],
        )
        fns[cfg.name](x).numpy()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(x).numpy()
            ts[k].append(time.perf_counter() - t)
    return {k: 1000.0 * float(np.median(v)) for k, v in ts.items()}


# ---------------------------------------------------------------------------- search
def _dilations(cfg: CNNConfig) -> tuple[int, ...]:
    """The dilation rates the table shows: every layer's for a plain stack, the
    bottleneck's for a U-Net (its other convolutions are undilated)."""
    return cfg.bottleneck_dilations if cfg.architecture == "unet" else cfg.dilations


def _key(cfg: CNNConfig, budget: dict, split: dict, seed: int, dtype: str | None) -> str:
    parts = [cfg.to_dict(), budget, split, seed] + ([dtype] if dtype else [])
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def run_variant(
    variant, train, val, *, work: Path, seed: int, threads: int, val_slices: int,
    dtype: str | None = None,
):
    import keras

    from hybrid.cnn.train import train_model

    cfg: CNNConfig = variant["config"]
    b = variant["budget"]
    keras.backend.clear_session()
    res = train_model(
        cfg,
        train,
        val_pairs=val,
        out_dir=work / cfg.name,
        epochs=int(b.get("epochs", 6)),
        steps_per_epoch=int(b.get("steps_per_epoch", 100)),
        batch_size=int(b.get("batch_size", 32)),
        val_patches=512,
        val_slices=val_slices,
        patience=100,  # fixed budget: no early stop (the best checkpoint is still kept)
        reduce_lr_patience=3,
        seed=seed,
        val_seed=0,
        threads=threads,
        tensorboard=False,
        dtype=dtype,
    )
    ms = time_model(res.model)
    return {
        "region": cfg.region,
        "variant": cfg.name,
        "val_rmse_hu": res.val_slice_rmse_hu,
        "val_patch_rmse_hu": res.val_rmse_hu,
        "ms_per_slice": ms,
        "params": int(res.model.count_params()),
        "receptive_field": cfg.receptive_field,
        "architecture": cfg.architecture,
        "scales": cfg.scales if cfg.architecture == "unet" else "",
        "patch_size": cfg.patch_size,
        "depth": cfg.depth,
        "width": cfg.width,
        "kernel_size": cfg.kernel_size,
        "dilation": "-".join(str(d) for d in _dilations(cfg)),
        "normalization": cfg.normalization,
        "loss": cfg.loss,
        "residual": cfg.residual,
        "best_epoch": res.best_epoch,
        "epochs": int(b.get("epochs", 6)),
        "steps_per_epoch": int(b.get("steps_per_epoch", 100)),
        "batch_size": int(b.get("batch_size", 32)),
        "train_seconds": res.seconds,
        "precision": dtype or "float32",
        "config": cfg.to_dict(),
    }


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank within each region by validation RMSE (lower is better)."""
    out = []
    for region in ("lung", "body"):
        mine = sorted(
            (r for r in rows if r["region"] == region),
            key=lambda r: (np.nan_to_num(r["val_rmse_hu"], nan=1e9), r["ms_per_slice"]),
        )
        for i, r in enumerate(mine, 1):
            r = dict(r, rank=i)
            r["fits_speed"] = bool(r["ms_per_slice"] <= SPEED_TARGET_MS[region])
            if r.get("uld_rmse_hu"):
                r["reduction_pct"] = 100.0 * (1 - r["val_rmse_hu"] / r["uld_rmse_hu"])
            out.append(r)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def write_tables(rows: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "variants.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()})
    md_cols = [
        ("rank", "rank"), ("region", "region"), ("variant", "variant"),
        ("architecture", "arch"), ("params", "params"), ("receptive_field", "RF px"),
        ("patch_size", "patch"), ("batch_size", "batch"), ("scales", "scales"), ("depth", "depth"),
        ("width", "width"), ("kernel_size", "k"), ("dilation", "dilations (U-Net: bottleneck)"),
        ("normalization", "norm"),
        ("loss", "loss"), ("val_rmse_hu", "val RMSE HU"), ("reduction_pct", "vs ULD %"),
        ("val_patch_rmse_hu", "val patch RMSE HU"), ("best_epoch", "best epoch"),
        ("ms_per_slice", "ms/slice"), ("fits_speed", "fits speed"),
        ("train_seconds", "train s"),
    ]
    lines = [
        "# CNN variant search",
        "",
        f"Generated by `experiments/search.py` on {meta['date']} ({meta['threads']} TF threads, "
        f"{meta['precision']}, seed {meta['seed']}).",
        "",
        f"* train cases ({len(meta['train_cases'])}, each as nominal ULD and ULD-aug 1-10 % dose): "
        + ", ".join(meta["train_cases"]),
        f"* validation cases (nominal 2 % ULD): {', '.join(meta['val_cases'])}",
        f"* val RMSE: whole-slice RMSE in HU over the region's pixels (at most {meta['val_slices']} "
        "slices), best checkpoint; `vs ULD %` is the reduction against the ULD input on the same pixels; "
        "`val patch RMSE HU`: on the 512 fixed validation patches of the region (what picks the "
        "checkpoint), `best epoch` counted from 0 "
        f"(ULD RMSE: lung {meta['uld_rmse_hu'].get('lung', float('nan')):.1f} HU, "
        f"body {meta['uld_rmse_hu'].get('body', float('nan')):.1f} HU).",
        f"* ms/slice ({meta['timing']}): median forward time of that model on one 512 x 512 slice "
        "on a shared 2-core machine (expect +-20 %); speed target "
        f"body {SPEED_TARGET_MS['body']:.0f} ms, lung {SPEED_TARGET_MS['lung']:.0f} ms on a full slice "
        "(the lung model runs on the lung crop only; SPEED_TARGET_MS in the script says why).",
        "* U-Net: `width` is the finest scale's filters (each coarser scale adds half of it), "
        "`depth` the convolutions per scale and side, `dilations` the bottleneck's; RF px is an "
        "upper bound.",
        "* budget per variant: see epochs x steps x batch in `variants.csv` (fixed per family).",
        "",
        "| " + " | ".join(h for _, h in md_cols) + " |",
        "|" + "|".join("---" for _ in md_cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k, _ in md_cols) + " |")
    (out_dir / "variants.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--variants", type=Path, default=VARIANTS_DIR)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--work", type=Path, default=Path("/tmp/hybrid_cnn_search"))
    ap.add_argument("--region", choices=("lung", "body"))
    ap.add_argument("--only", nargs="*", help="variant names to run")
    ap.add_argument("--epochs", type=int, help="override every family's epochs")
    ap.add_argument("--steps", type=int, help="override every family's steps_per_epoch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--precision", choices=("auto", "bfloat16", "float32"), default="auto",
        help="CNN precision (hybrid.recipe.dtype_policy): auto = bfloat16 where the CPU or GPU "
        "has it natively, as `make train` and deployment; float32 reproduces the 2026-11-25 search",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-slices", type=int, default=8)
    ap.add_argument("--fresh", action="store_true", help="ignore cached results")
    ap.add_argument("--dry-run", action="store_true", help="list the variants and exit")
    ap.add_argument(
        "--retime",
        action="store_true",
        help="re-time every variant's architecture round-robin in one process (the machine is "
        "shared, so timings taken during the search are noisy) and rewrite the tables",
    )
    args = ap.parse_args(argv)

    families = load_families(args.variants)
    todo = []
    for fam in families:
        if args.region and fam["region"] != args.region:
            continue
        for v in fam["variants"]:
            if args.only and v["name"] not in args.only:
                continue
            if args.epochs:
                v["budget"]["epochs"] = args.epochs
            if args.steps:
                v["budget"]["steps_per_epoch"] = args.steps
            todo.append(v)
    for v in todo:
        c = v["config"]
        print(
            f"{v['name']:<18} {c.region:<4} {c.architecture:<5} d{c.depth} w{c.width} "
            f"k{c.kernel_size} dil{'-'.join(map(str, _dilations(c)))} RF{c.receptive_field} "
            f"p{c.patch_size} "
            f"{c.normalization}/{c.loss}  budget {v['budget']}"
        )
    if args.dry_run:
        return 0

    from hybrid.cnn.models import set_threads
    from hybrid.recipe import dtype_policy

    set_threads(args.threads)
    dtype = dtype_policy(args.precision)
    t0 = time.perf_counter()
    train, val, info = load_split(args.data)
    print(f"loaded {len(train)} training pairs, {len(val)} validation pairs "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    uld_rmse = {r: uld_slice_rmse(val, r, args.val_slices) for r in ("lung", "body")}
    split = {"train": info["train_cases"], "val": info["val_cases"]}

    args.work.mkdir(parents=True, exist_ok=True)
    cache_path = args.work / "results.jsonl"
    cache: dict[str, dict] = {}
    if cache_path.exists() and not args.fresh:
        for line in cache_path.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                cache[rec["key"]] = rec
    rows = []
    for v in todo:
        key = _key(v["config"], v["budget"], split, args.seed, dtype)
        if key in cache:
            print(f"{v['name']}: cached", flush=True)
            row = cache[key]
        else:
            t = time.perf_counter()
            row = run_variant(
                v, train, val, work=args.work, seed=args.seed, threads=args.threads,
                val_slices=args.val_slices, dtype=dtype,
            )
            row["key"] = key
            with open(cache_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{v['name']}: val RMSE {row['val_rmse_hu']:.1f} HU (ULD "
                f"{uld_rmse[row['region']]:.1f}), {row['ms_per_slice']:.0f} ms/slice, "
                f"train {row['train_seconds']:.0f} s, total {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        row["uld_rmse_hu"] = uld_rmse[row["region"]]
        rows.append(row)
    if args.retime:
        ms = retime([v["config"] for v in todo], dtype=dtype)
        for row in rows:
            row["ms_per_slice"] = ms[row["variant"]]
    ranked = rank(rows)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "precision": dtype or "float32",
        "seed": args.seed,
        "val_slices": args.val_slices,
        "timing": "re-timed round-robin after training (--retime)" if args.retime
        else "timed right after each variant's training",
        "uld_rmse_hu": uld_rmse,
        **info,
    }
    write_tables(ranked, args.out, meta)
    print(f"wrote {args.out / 'variants.csv'} and {args.out / 'variants.md'}")
    for r in ranked:
        print(
            f"{r['rank']:>2} {r['region']:<4} {r['variant']:<18} {r['val_rmse_hu']:7.1f} HU "
            f"{r.get('reduction_pct', float('nan')):5.1f}%  {r['ms_per_slice']:6.1f} ms "
            f"{'ok' if r['fits_speed'] else 'slow'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
