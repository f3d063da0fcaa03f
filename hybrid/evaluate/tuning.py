"""Tuning the classical baselines on training cases, never on a test or held-out patient.

Which training cases tune the baselines for a given case (same kind and kernel
class), which of their slices (round-robin over their central slices), the
search grids, and the grid search itself (:func:`hybrid.baselines.tune`,
extending a grid whose best value is its largest).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybrid.evaluate.cases import _by_centrality, case_entries, case_file, kernel_class

log = logging.getLogger(__name__)

__all__ = [
    "HELDOUT_GRIDS",
    "CV_GRIDS",
    "FAST_GRIDS",
    "default_tune_cases",
    "tune_baselines",
]

#: Search grids used for the held-out comparison, wider than the classes' defaults: the
#: per-slice σ estimate (Immerkær, high frequencies) sees only part of CT noise, which is
#: correlated (the true ULD−ND difference is several times the estimate for the smooth
#: kernel, see experiments/results/evaluate_notes.md), so the σ multipliers (NLM
#: ``h_factor``, BM3D ``sigma_factor``) must reach well above 1.
HELDOUT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "gaussian": {"sigma_px": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]},
    "nlm": {
        "h_factor": [0.6, 1.0, 1.5, 2.2, 3.3, 5.0, 7.5, 10.0, 14.0],
        "patch_size": [5, 7],
        "patch_distance": [6, 11],
    },
    "tv": {"weight": [0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5]},
    "bm3d": {"sigma_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0]},
}
#: Cross-validation grids: around the optima the held-out tuning found (HELDOUT_GRIDS,
#: experiments/results/baselines_heldout.json), small enough for the full CV run on a
#: 2-core machine (timings: experiments/results/evaluate_notes.md); a best value on a grid
#: edge is still extended by the tuner.  BM3D on both cores.
CV_GRIDS: dict[str, dict[str, list[Any]]] = {
    "gaussian": {"sigma_px": [0.75, 1.0, 1.5]},
    "nlm": {"h_factor": [1.5, 3.3, 7.5], "patch_size": [5], "patch_distance": [6]},
    "tv": {"weight": [0.05, 0.1, 0.2, 0.5]},
    "bm3d": {"sigma_factor": [2.5, 6.0, 13.5], "num_threads": [0]},
}
#: Tiny grids for smoke runs and tests.
FAST_GRIDS: dict[str, dict[str, list[Any]]] = {
    "gaussian": {"sigma_px": [0.75, 1.5]},
    "nlm": {"h_factor": [0.8, 1.5], "patch_size": [5], "patch_distance": [6]},
    "tv": {"weight": [0.05, 0.15]},
    "bm3d": {"sigma_factor": [1.0], "profile": ["lc"]},
}


def default_tune_cases(
    data_root: str | os.PathLike,
    case_id: str,
    *,
    exclude_patients: Iterable[str],
    max_cases: int = 4,
    strict: bool = True,
) -> list[str]:
    """Training cases to tune the baselines for held-out case ``case_id``.

    Cases of the same kind (phantom / real) and kernel class, whose patient is
    not in ``exclude_patients``; if there are none (the held-out real
    patient's sharp-kernel series is the only real one of its class), cases
    of the same kernel class of any kind (the sharp phantoms).  At most ``max_cases``, in
    manifest order.  With ``strict=False``, when no case of the kernel class
    is left, any training case of the same kind (then of any kind) is used
    instead of raising (small data sets in cross-validation).
    """
    entries = case_entries(Path(data_root))
    by_id = {e["case_id"]: e for e in entries}
    if case_id not in by_id:
        raise ValueError(f"Expected case {case_id!r} in {data_root}; cases: {sorted(by_id)}.")
    me = by_id[case_id]
    drop = set(exclude_patients) | {me["patient_id"]}
    kernel = kernel_class(me)
    pool = [e for e in entries if e["patient_id"] not in drop and kernel_class(e) == kernel]
    same_kind = [e for e in pool if e["kind"] == me["kind"]]
    chosen = same_kind or pool
    if not chosen and not strict:
        rest = [e for e in entries if e["patient_id"] not in drop]
        chosen = [e for e in rest if e["kind"] == me["kind"]] or rest
    if not chosen:
        raise ValueError(
            f"Expected training cases with kernel class {kernel!r} to tune the baselines for "
            f"{case_id}; none outside {sorted(drop)}. Pass tune_cases= explicitly."
        )
    return [e["case_id"] for e in chosen[:max_cases]]


def _tune_pairs(root: Path, case_ids: Sequence[str], n_slices: int) -> tuple[list, dict[str, list[int]]]:
    """``n_slices`` (ULD, ND, body) 2-D pairs, round-robin over the cases' central slices."""
    from hybrid.data import load_case

    by_id = {e["case_id"]: e for e in case_entries(root)}
    orders = {}
    for cid in case_ids:
        if cid not in by_id:
            raise ValueError(f"Expected tuning case {cid!r} in {root}; cases: {sorted(by_id)}.")
        orders[cid] = _by_centrality(int(by_id[cid]["n_slices"]))
    picks: dict[str, list[int]] = {cid: [] for cid in case_ids}
    total, rnd = 0, 0
    while total < n_slices and any(rnd < len(o) for o in orders.values()):
        for cid in case_ids:
            if total < n_slices and rnd < len(orders[cid]):
                picks[cid].append(orders[cid][rnd])
                total += 1
        rnd += 1
    pairs = []
    for cid, idx in picks.items():
        if not idx:
            continue
        case = load_case(case_file(root, by_id[cid]))
        for z in sorted(idx):
            if case.body_mask[z].any():
                pairs.append((case.uld.array[z], case.nd[z], case.body_mask[z]))
    return pairs, {k: sorted(v) for k, v in picks.items() if v}


def tune_baselines(
    pairs: Sequence[tuple[Any, Any, Any]],
    baselines: Sequence[str],
    *,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    metric: str = "rmse_hu",
    extend: int = 3,
) -> dict[str, dict[str, Any]]:
    """Tune each baseline on ``pairs``: ``{name: {"params", "table", "seconds", "grid_edge"}}``.

    ``grids`` defaults to :data:`HELDOUT_GRIDS` (a baseline missing there uses
    its class's ``default_grid``).  When the best value of a numeric
    parameter with at least three grid values is the grid's largest, the grid
    is extended geometrically (ratio of its last two values; other parameters
    fixed at their best) up to ``extend`` times until the best lies inside;
    ``grid_edge`` lists the parameters still at an edge afterwards.
    """
    from hybrid.baselines import BASELINES, tune

    grids = HELDOUT_GRIDS if grids is None else grids
    out = {}
    for name in baselines:
        if name not in BASELINES:
            raise ValueError(f"Unknown baseline {name!r}; expected one of {sorted(BASELINES)}.")
        if name == "input":
            out[name] = {"params": {}, "table": [], "seconds": 0.0}
            continue
        t = time.perf_counter()
        grid = grids.get(name, BASELINES[name].default_grid)
        best, table = tune(name, pairs, grid=grid, metric=metric)
        grid = {k: list(v) for k, v in grid.items()}
        for _ in range(extend):
            top = [k for k, v in best.items() if len(grid[k]) > 2 and v == grid[k][-1]
                   and isinstance(v, (int, float)) and not isinstance(v, bool) and grid[k][-2] > 0]
            if not top:
                break
            k = top[0]
            nxt = best[k] * best[k] / grid[k][-2]
            nxt = int(round(nxt)) if isinstance(best[k], int) else float(f"{nxt:.3g}")
            grid[k].append(nxt)
            more_best, more = tune(name, pairs, grid={**{p: [v] for p, v in best.items()}, k: [nxt]},
                                   metric=metric)
            table += more
            pick = min if metric == "rmse_hu" else max
            best_row = pick(table, key=lambda r: r[metric])
            best = {p: best_row[p] for p in best}
            log.info("extended %s grid of %s to %s", name, k, nxt)
        out[name] = {"params": best, "table": table, "seconds": time.perf_counter() - t,
                     "grid": grid}
        best_row = next(r for r in table if all(r[k] == v for k, v in best.items()))
        edge = [k for k, v in best.items() if len(grid[k]) > 2 and v in (grid[k][0], grid[k][-1])]
        out[name]["grid_edge"] = edge
        log.info("tuned %s: %s (%s %.1f) in %.0f s%s", name, best, metric, best_row[metric],
                 out[name]["seconds"], f"; at grid edge: {edge}" if edge else "")
    return out

