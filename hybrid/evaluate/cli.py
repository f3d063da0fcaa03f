"""Command line of :mod:`hybrid.evaluate`: ``python -m hybrid.evaluate heldout|dose-sweep|cv``.

Command line::

    python -m hybrid.evaluate heldout [--data data] [--out experiments/results]
    python -m hybrid.evaluate dose-sweep [--data data] [--out experiments/results] [--fast]
    python -m hybrid.evaluate real-pairs [--data data] [--pairs DIR] [--out experiments/results]
    python -m hybrid.evaluate cv [--data data] [--out experiments/results/cv] [--fast]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hybrid.evaluate.cv import cross_validate
from hybrid.evaluate.dose_sweep import DOSE_SWEEP_FRACTIONS, SWEEP_METHODS, dose_sweep
from hybrid.evaluate.heldout import compare_on_heldout
from hybrid.evaluate.scoring import CLASSICAL

__all__ = ["main"]

#: The parser's description (the first line of the package's docstring).
DESCRIPTION = "Evaluation against classical baselines: held-out comparison and leave-one-patient-out CV."


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hybrid.evaluate", description=DESCRIPTION)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("heldout", help="shipped hybrid vs tuned baselines on the held-out patients")
    h.add_argument("--data", type=Path, default=Path("data"))
    h.add_argument("--out", type=Path, default=Path("experiments/results"))
    h.add_argument("--slices", type=int, default=8, help="central slices scored per held-out case")
    h.add_argument("--tune-slices", type=int, default=4, help="slices per tuning set")
    h.add_argument("--baselines", nargs="+", default=list(CLASSICAL))
    h.add_argument("--reuse-baselines", type=Path, default=None, metavar="JSON",
                   help="a previous baselines_heldout.json: reuse its tuning and baseline "
                        "scores where the input is exactly the same (new models, no BM3D re-run)")
    d = sub.add_parser("dose-sweep", help="the gate: quality against dose on the held-out "
                       "patients, input / CNN / hybrid / BM3D and NLM tuned per dose (make dose-sweep)")
    d.add_argument("--data", type=Path, default=Path("data"))
    d.add_argument("--out", type=Path, default=Path("experiments/results"))
    d.add_argument("--cases", nargs="+", default=None,
                   help="only these cases of the held-out patients (default: all)")
    d.add_argument("--doses", nargs="+", type=float, default=list(DOSE_SWEEP_FRACTIONS))
    d.add_argument("--methods", nargs="+", default=list(SWEEP_METHODS))
    d.add_argument("--slices", type=int, default=2, help="central slices scored per case")
    d.add_argument("--tune-slices", type=int, default=1,
                   help="training slices per tuning set and dose")
    d.add_argument("--fast", action="store_true",
                   help="smoke run: 1 slice per case, 1 tuning slice, tiny grids")
    d.add_argument("--views", type=int, default=1, choices=(1, 2, 4, 8),
                   help="the CNN over this many views (hybrid.Enhancer(views=...))")
    d.add_argument("--no-residual-guard", action="store_true",
                   help="the blender's rules alone (hybrid.Enhancer(residual_guard=False))")
    d.add_argument("--reuse-baselines", type=Path, default=None, metavar="JSON",
                   help="a previous dose_sweep.json: reuse its baseline rows where the "
                        "input is exactly the same (new models, no BM3D re-run)")
    r = sub.add_parser("real-pairs", help="every method on the real quarter-dose pairs (check "
                       "only; baselines tuned on training patients at 25 %% dose; make real-pairs)")
    r.add_argument("--data", type=Path, default=Path("data"), help="paired dataset, for tuning")
    r.add_argument("--pairs", type=Path, default=None,
                   help="folder of the pairs (default ../shared/data/real-pairs)")
    r.add_argument("--out", type=Path, default=Path("experiments/results"))
    r.add_argument("--tune-slices", type=int, default=2)
    r.add_argument("--fast", action="store_true", help="tiny grids, 1 tuning slice")
    r.add_argument("--views", type=int, default=1, choices=(1, 2, 4, 8),
                   help="the CNN over this many views (hybrid.Enhancer(views=...))")
    r.add_argument("--no-residual-guard", action="store_true",
                   help="the blender's rules alone (hybrid.Enhancer(residual_guard=False))")
    c = sub.add_parser("cv", help="leave-one-patient-out cross-validation (make cv)")
    c.add_argument("--data", type=Path, default=Path("data"))
    c.add_argument("--out", type=Path, default=None,
                   help="default experiments/results/cv (experiments/results/cv/fast with --fast)")
    c.add_argument("--fast", action="store_true",
                   help="smoke run (experiments/configs/cv-fast.json): tiny budgets, 2 phantom + 1 "
                        "real fold")
    c.add_argument("--sets", nargs="+", default=["phantom", "real"])
    c.add_argument("--max-folds", type=int, default=None)
    c.add_argument("--patients", nargs="+", default=None, help="only these test patients")
    c.add_argument("--baselines", nargs="+", default=list(CLASSICAL))
    c.add_argument("--epochs", type=int, default=None,
                   help="CNN epochs per region (default: the config file's)")
    c.add_argument("--steps", type=int, default=None,
                   help="CNN steps per epoch per region (default: the config file's)")
    c.add_argument("--eval-slices", type=int, default=None,
                   help="central slices scored per test case (default: the config file's)")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--no-resume", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "heldout":
        res = compare_on_heldout(args.data, baselines=args.baselines, tune_slices=args.tune_slices,
                                 n_eval_slices=args.slices, out=args.out,
                                 reuse_baselines=args.reuse_baselines)
        print((Path(args.out) / "baselines_heldout.md").read_text())
        print(f"wall {res['wall_seconds']:.0f} s")
    elif args.cmd == "dose-sweep":
        dose_sweep(args.data, cases=args.cases, doses=args.doses, methods=args.methods,
                   n_slices=args.slices, tune_slices=args.tune_slices, fast=args.fast, out=args.out,
                   reuse_baselines=args.reuse_baselines, enhancer=_enhancer(args.views, not args.no_residual_guard))
        print((Path(args.out) / "dose_sweep.md").read_text())
    elif args.cmd == "real-pairs":
        from hybrid.evaluate.real_pairs import real_pairs

        real_pairs(args.data, pairs_dir=args.pairs, tune_slices=args.tune_slices, fast=args.fast,
                   out=args.out, enhancer=_enhancer(args.views, not args.no_residual_guard))
        print((Path(args.out) / "real_pairs.md").read_text())
    elif args.cmd == "cv":
        from hybrid.recipe import load_config

        settings = "cv-fast" if args.fast else "cv"  # experiments/configs/<settings>.json
        config = load_config(settings).with_budget(epochs=args.epochs, steps_per_epoch=args.steps)
        cv = {"eval_slices": args.eval_slices} if args.eval_slices is not None else None
        out = args.out or Path("experiments/results/cv") / ("fast" if args.fast else "")
        max_folds: Any = args.max_folds
        if args.fast and args.max_folds is None:
            max_folds = {"phantom": 2, "real": 1}  # FAST: 2 phantom folds, 1 real fold
        t = time.perf_counter()
        rows = cross_validate(args.data, out, sets=args.sets, max_folds=max_folds,
                              test_patients=args.patients, baselines=args.baselines,
                              settings=settings, config=config, cv=cv, threads=args.threads,
                              resume=not args.no_resume)
        print((Path(out) / "cv_summary.md").read_text())
        print(f"{len(rows)} rows in {Path(out) / 'cv_results.csv'}; wall {time.perf_counter() - t:.0f} s")


def _enhancer(views: int, residual_guard: bool = True):
    """None (the evaluation's default, the shipped Enhancer) for its defaults, else the
    shipped Enhancer with these settings."""
    if views == 1 and residual_guard:
        return None
    from hybrid.pipeline import Enhancer

    return Enhancer(views=views, residual_guard=residual_guard)
