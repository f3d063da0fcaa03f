"""Evaluation against classical baselines: held-out comparison and leave-one-patient-out CV.

Two entry points, both honest about who sees which patient:

:func:`compare_on_heldout`
    The shipped hybrid (CNN pair + dictionary + blender in ``hybrid/assets``,
    trained without the held-out patients, see :mod:`hybrid.training`)
    against the baselines of :mod:`hybrid.baselines` on the held-out
    patients (P12 phantom, A0001 real, kernels B and L).  Every baseline's
    parameters are chosen by :func:`hybrid.baselines.tune` (body RMSE) on
    central slices of *training* cases of the same kind of data and the
    same kernel class (:func:`hybrid.physics.kernel_for`: smooth, standard,
    sharp), never on a held-out patient.  There is no real sharp-kernel
    training series (A0001-L is the only one), so the sharp class is tuned
    on the sharp-kernel phantom patients.  Every method is then scored on
    the same central slices of each held-out case (BM3D costs ~12 s per
    512² slice, so not all 64 slices of A0001): RMSE (HU) and SSIM in the
    lung (−600/1500) and soft-tissue (40/400) windows, in the body, the
    lungs and the body outside the lungs (:func:`hybrid.metrics.evaluate_image`).

:func:`cross_validate`
    Leave-one-patient-out over ``data/folds.json`` (phantom and real sets
    separately): per fold a CNN pair is trained (configurations of the
    shipped pair, short budget) on the training patients, a dictionary is
    built without the test patient and one calibration patient, the blender
    is calibrated on the calibration patient, the baselines are tuned on
    training slices, and every method is scored on the test patient.
    Writes a long CSV (patient × method × region × metric), a Markdown
    summary (mean ± sd over folds), box plots and an example-slice figure.

Command line::

    python -m hybrid.evaluate heldout [--data data] [--out experiments/results]
    python -m hybrid.evaluate cv [--data data] [--out experiments/results/cv] [--fast]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "HELDOUT_GRIDS",
    "CV_GRIDS",
    "FAST_GRIDS",
    "METHOD_ORDER",
    "central_slices",
    "default_tune_cases",
    "tune_baselines",
    "score_methods",
    "compare_on_heldout",
    "write_heldout_report",
    "cross_validate",
    "CVBudget",
]

#: Search grids used for the held-out comparison, wider than the classes' defaults: the
#: per-slice σ estimate (Immerkær, high frequencies) sees only part of CT noise, which is
#: correlated: on the central slices the true ULD−ND difference is ≈ 4.4× the estimate for
#: the smooth kernel, ≈ 2× for the standard and ≈ 1.2× for the sharp one, so the σ
#: multipliers (NLM ``h_factor``, BM3D ``sigma_factor``) must reach well above 1.
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
#: experiments/results/baselines_heldout.json: Gaussian 1.0 px, NLM h 1.5-7.5 with 5-7 px
#: patches, TV 0.1-0.5, BM3D σ factor 2.5-13.5), so that 21 folds fit in about an hour on
#: 2 cores; a best value on a grid edge is still extended by the tuner.  BM3D on both cores.
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
#: Methods in report order.
METHOD_ORDER = ("input", "gaussian", "nlm", "tv", "bm3d", "cnn", "dictionary", "hybrid")
_LABELS = {
    "input": "input (ULD)", "gaussian": "Gaussian", "nlm": "NLM", "tv": "TV", "bm3d": "BM3D",
    "cnn": "CNN only", "dictionary": "dictionary only", "hybrid": "**hybrid**",
}
_CLASSICAL = ("gaussian", "nlm", "tv", "bm3d")


# ------------------------------------------------------------------ helpers


def central_slices(n_total: int, n: int | None) -> list[int]:
    """Indices of the ``n`` central slices of a volume of ``n_total`` (all if n is None or larger).

    >>> central_slices(16, 4)
    [6, 7, 8, 9]
    >>> central_slices(3, 8)
    [0, 1, 2]
    """
    if n is None or n >= n_total:
        return list(range(n_total))
    if n < 1:
        raise ValueError(f"Expected a positive number of slices; received {n}.")
    start = (n_total - n) // 2
    return list(range(start, start + n))


def _by_centrality(n_total: int) -> list[int]:
    """Slice indices ordered by distance from the centre (centre first)."""
    mid = (n_total - 1) / 2
    return sorted(range(n_total), key=lambda i: (abs(i - mid), i))


def _entries(root: Path) -> list[dict[str, Any]]:
    from hybrid.data import load_manifest

    return list(load_manifest(root)["cases"])


def _case_path(root: Path, entry: Mapping[str, Any]) -> Path:
    return Path(root) / entry["file"]


def _kernel_of(entry: Mapping[str, Any]) -> str:
    """Kernel class (smooth / standard / sharp) of a manifest entry."""
    from hybrid.physics import kernel_for

    meta = entry.get("meta", {})
    k = meta.get("kernel")
    if k in ("smooth", "standard", "sharp"):
        return k
    return kernel_for(meta.get("dicom_kernel"))


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
    not in ``exclude_patients``; if there are none (the real sharp-kernel
    series A0001-L is the only one of its class), cases of the same kernel
    class of any kind (the sharp phantoms).  At most ``max_cases``, in
    manifest order.  With ``strict=False``, when no case of the kernel class
    is left, any training case of the same kind (then of any kind) is used
    instead of raising (small data sets in cross-validation).
    """
    entries = _entries(Path(data_root))
    by_id = {e["case_id"]: e for e in entries}
    if case_id not in by_id:
        raise ValueError(f"Expected case {case_id!r} in {data_root}; cases: {sorted(by_id)}.")
    me = by_id[case_id]
    drop = set(exclude_patients) | {me["patient_id"]}
    kernel = _kernel_of(me)
    pool = [e for e in entries if e["patient_id"] not in drop and _kernel_of(e) == kernel]
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

    by_id = {e["case_id"]: e for e in _entries(root)}
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
        case = load_case(_case_path(root, by_id[cid]))
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


def score_methods(
    images: Mapping[str, np.ndarray],
    nd: np.ndarray,
    lung_mask: np.ndarray,
    body_mask: np.ndarray,
) -> dict[str, Any]:
    """``{method: {"metrics": evaluate_image result, "slice_rmse_hu": [body RMSE per slice]}}``."""
    from hybrid.metrics import evaluate_image, rmse

    out = {}
    for name, img in images.items():
        m = evaluate_image(img, nd, lung_mask=lung_mask, body_mask=body_mask, on_empty="nan")
        per_slice = [rmse(img[z], nd[z], mask=body_mask[z]) if body_mask[z].any() else float("nan")
                     for z in range(len(nd))]
        out[name] = {"metrics": m, "slice_rmse_hu": per_slice}
    return out


def _baseline_images(uld: np.ndarray, body: np.ndarray, tuned: Mapping[str, Mapping[str, Any]],
                     timings: dict[str, float]) -> dict[str, np.ndarray]:
    from hybrid.baselines import BASELINES

    imgs = {}
    for name, t in tuned.items():
        t0 = time.perf_counter()
        imgs[name] = BASELINES[name](**t["params"]).propose(uld, body_mask=body).image
        timings[name] = (time.perf_counter() - t0) / len(uld)
    return imgs


# ------------------------------------------------------------ held-out comparison


def compare_on_heldout(
    data_root: str | os.PathLike = "data",
    *,
    patients: Sequence[str] = ("P12", "A0001"),
    baselines: Sequence[str] = ("gaussian", "nlm", "tv", "bm3d"),
    tune_cases: Mapping[str, Sequence[str]] | None = None,
    tune_slices: int = 4,
    slices: int | Mapping[str, Sequence[int]] | None = None,
    n_eval_slices: int = 8,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    enhancer: Any = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score the shipped hybrid, its parts and tuned classical baselines on held-out patients.

    Parameters
    ----------
    data_root : path
        The paired dataset (``make data``).
    patients : sequence of str
        Held-out patient ids; every case of each is scored (A0001: kernels B and L).
    baselines : sequence of str
        Names in :data:`hybrid.baselines.BASELINES` (``input`` is always scored).
    tune_cases : mapping, optional
        ``{held-out case id: [training case ids]}`` to tune on.  Default
        (:func:`default_tune_cases`): same kind and kernel class, excluding
        every held-out patient; the sharp-kernel real case falls back to the
        sharp phantoms.  Cases that share a tuning set share the tuning run.
    tune_slices : int
        Slices per tuning set, round-robin over its cases' central slices.
    slices : int or mapping, optional
        Slices of each held-out case to score: an int (that many central
        slices), ``{case id: [indices]}``, or None: ``n_eval_slices`` central
        slices.  Every method is scored on the same slices.
    grids : mapping, optional
        Search grids per baseline (default :data:`HELDOUT_GRIDS`).
    enhancer : hybrid.pipeline.Enhancer, optional
        Default: the shipped one.  It runs on the whole case (its lung
        segmentation is 3-D) and is cropped to the scored slices.
    out : path, optional
        Folder for ``baselines_heldout.json`` and ``.md`` (see
        :func:`write_heldout_report`).

    Returns
    -------
    dict
        ``tuning`` (per tuning set: cases, slices, chosen parameters and grid
        tables), ``cases`` (per held-out case: kernel, scored slices, and per
        method the metrics of :func:`hybrid.metrics.evaluate_image` and the
        per-slice body RMSE), ``seconds_per_slice`` per method.
    """
    from hybrid.data import load_case

    root = Path(data_root)
    entries = _entries(root)
    held = [e for e in entries if e["patient_id"] in set(patients)]
    if not held:
        raise ValueError(f"Expected cases of patients {list(patients)} in {root}; none found.")
    baselines = [b for b in baselines if b != "input"]
    t_start = time.perf_counter()

    # 1. tuning sets (never a held-out patient)
    plan: dict[str, tuple[str, ...]] = {}
    for e in held:
        cid = e["case_id"]
        if tune_cases is not None and cid in tune_cases:
            ids = tuple(tune_cases[cid])
        else:
            ids = tuple(default_tune_cases(root, cid, exclude_patients=patients))
        bad = [c for c in ids if next((x for x in entries if x["case_id"] == c), {}).get("patient_id")
               in set(patients)]
        if bad:
            raise ValueError(f"Tuning cases {bad} belong to held-out patients {list(patients)}.")
        plan[cid] = ids
    tuning: dict[str, dict[str, Any]] = {}
    for ids in dict.fromkeys(plan.values()):
        key = "+".join(ids)
        pairs, picked = _tune_pairs(root, ids, tune_slices)
        log.info("tuning on %s (%d slices)", picked, len(pairs))
        tuned = tune_baselines(pairs, ["input", *baselines], grids=grids)
        tuning[key] = {"cases": list(ids), "slices": picked,
                       "kernels": sorted({_kernel_of(next(x for x in entries if x["case_id"] == c))
                                          for c in ids}),
                       "baselines": tuned}

    # 2. scoring
    if enhancer is None:
        from hybrid.pipeline import Enhancer

        enhancer = Enhancer()
    cases: dict[str, Any] = {}
    timings: dict[str, list[float]] = {}
    for e in held:
        cid = e["case_id"]
        case = load_case(_case_path(root, e))
        n = len(case.uld)
        if isinstance(slices, Mapping):
            idx = list(slices.get(cid, central_slices(n, n_eval_slices)))
        else:
            idx = central_slices(n, slices if isinstance(slices, int) else n_eval_slices)
        t0 = time.perf_counter()
        enh, maps = enhancer.enhance(case.uld, return_maps=True, progress=False)
        timings.setdefault("hybrid (cnn+dictionary+blend)", []).append((time.perf_counter() - t0) / n)
        uld = case.uld.array[idx]
        nd, lung, body = case.nd[idx], case.lung_mask[idx], case.body_mask[idx]
        tuned = tuning["+".join(plan[cid])]["baselines"]
        t_b: dict[str, float] = {}
        imgs = {"input": uld}
        imgs.update(_baseline_images(uld, body, {k: v for k, v in tuned.items() if k != "input"}, t_b))
        for k, v in t_b.items():
            timings.setdefault(k, []).append(v)
        imgs.update({"cnn": maps.cnn[idx], "dictionary": maps.dictionary[idx], "hybrid": enh.array[idx]})
        scored = score_methods(imgs, nd, lung, body)
        cases[cid] = {
            "patient": case.patient_id, "kind": case.kind, "kernel": case.meta.get("kernel"),
            "dicom_kernel": case.meta.get("dicom_kernel"), "slices": idx, "n_slices_total": n,
            "tuning_set": "+".join(plan[cid]), "methods": scored,
        }
        log.info("scored %s on slices %s", cid, idx)
    result = {
        "what": "shipped hybrid vs classical baselines tuned on training cases; held-out patients",
        "data": str(root), "patients": list(patients), "dose_fraction": 0.02,
        "tune_metric": "rmse_hu (body)", "tuning": tuning, "cases": cases,
        "seconds_per_slice": {k: float(np.mean(v)) for k, v in timings.items()},
        "wall_seconds": time.perf_counter() - t_start,
    }
    if out is not None:
        write_heldout_report(result, out)
    return result


def _fmt(v: float, key: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if "ssim" in key else f"{v:.1f}"


#: Markdown columns of the held-out table: (region, metric, header).
_HELDOUT_COLS = (
    ("body", "rmse_hu", "RMSE HU (body)"),
    ("body", "ssim_lung", "SSIM lung window (−600/1500), body"),
    ("body", "ssim_soft_tissue", "SSIM soft-tissue window (40/400), body"),
    ("lung", "rmse_hu", "RMSE HU (lungs)"),
    ("lung", "ssim_lung", "SSIM lung window, lungs"),
    ("non_lung", "rmse_hu", "RMSE HU (body outside lungs)"),
    ("non_lung", "ssim_soft_tissue", "SSIM soft-tissue window, outside lungs"),
)


def _best_baseline(methods: Mapping[str, Any]) -> str | None:
    cands = [m for m in _CLASSICAL if m in methods]
    if not cands:
        return None
    return min(cands, key=lambda m: methods[m]["metrics"]["body"]["rmse_hu"])


def _verdict(methods: Mapping[str, Any]) -> dict[str, Any]:
    """Hybrid against the best classical baseline (by body RMSE) and against each, per metric."""
    best = _best_baseline(methods)
    if best is None or "hybrid" not in methods:
        return {}
    h, b = methods["hybrid"], methods[best]
    hs, bs = np.asarray(h["slice_rmse_hu"]), np.asarray(b["slice_rmse_hu"])
    ok = np.isfinite(hs) & np.isfinite(bs)
    wins = {}
    for region, key, _ in _HELDOUT_COLS:
        hv = h["metrics"][region][key]
        better = [m for m in _CLASSICAL if m in methods and not (
            hv < methods[m]["metrics"][region][key] if "rmse" in key
            else hv > methods[m]["metrics"][region][key])]
        wins[f"{region}_{key}"] = not better
    hr, br = h["metrics"]["body"]["rmse_hu"], b["metrics"]["body"]["rmse_hu"]
    return {
        "best_baseline": best,
        "rmse_body_hybrid": hr, "rmse_body_best_baseline": br,
        "rmse_reduction_pct": 100.0 * (1 - hr / br),
        "slices_hybrid_lower_rmse": int(np.sum(hs[ok] < bs[ok])), "slices": int(ok.sum()),
        "hybrid_beats_every_baseline": wins,
    }


def write_heldout_report(result: Mapping[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``baselines_heldout.json`` (everything) and ``baselines_heldout.md`` (the table)."""
    from hybrid.io._atomic import atomic_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    result["verdict"] = {cid: _verdict(c["methods"]) for cid, c in result["cases"].items()}
    jpath, mpath = out / "baselines_heldout.json", out / "baselines_heldout.md"
    with atomic_file(jpath, overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    lines = [
        "# Shipped hybrid against tuned classical baselines, held-out patients",
        "",
        f"Patients {', '.join(result['patients'])} (never seen by the CNN pair, the dictionary or "
        "the blender); simulated 2 % dose. Every method is scored on the **same slices** of each case "
        "(the central ones, listed per case: BM3D costs ≈ 12 s per 512² slice on this machine); the "
        "hybrid and its parts were run on the whole case (3-D lung segmentation) and cropped to them. "
        "SSIM in the window named in each header; region named too (body = body mask; lungs = "
        "lung mask ∩ body; outside lungs = body ∖ lungs). "
        "Produced by `hybrid.evaluate.compare_on_heldout` (`python -m hybrid.evaluate heldout`).",
        "",
    ]
    for cid, c in result["cases"].items():
        lines += [f"## {cid} ({c['kind']}, kernel {c['kernel']}"
                  + (f", DICOM {c['dicom_kernel']}" if c.get("dicom_kernel") else "")
                  + f"): slices {c['slices'][0]}–{c['slices'][-1]} of {c['n_slices_total']}",
                  "",
                  f"Baselines tuned on {c['tuning_set']}.", "",
                  "| method | " + " | ".join(h for _, _, h in _HELDOUT_COLS) + " |",
                  "|---|" + "---:|" * len(_HELDOUT_COLS)]
        for m in METHOD_ORDER:
            if m not in c["methods"]:
                continue
            met = c["methods"][m]["metrics"]
            lines.append(f"| {_LABELS.get(m, m)} | "
                         + " | ".join(_fmt(met[r][k], k) for r, k, _ in _HELDOUT_COLS) + " |")
        v = result["verdict"].get(cid)
        if v:
            lost = [k for k, ok in v["hybrid_beats_every_baseline"].items() if not ok]
            pct = v["rmse_reduction_pct"]
            lines += ["", f"Hybrid vs best baseline ({_LABELS[v['best_baseline']]}, by body RMSE): "
                      f"{v['rmse_body_hybrid']:.1f} vs {v['rmse_body_best_baseline']:.1f} HU "
                      f"(hybrid {abs(pct):.0f} % {'lower' if pct >= 0 else 'higher'}); hybrid's body RMSE lower on "
                      f"{v['slices_hybrid_lower_rmse']}/{v['slices']} slices. "
                      + ("Beats every baseline on every column." if not lost
                         else "Columns where some baseline is better than the hybrid: "
                         + ", ".join(lost) + ".")]
        lines.append("")
    lines += ["## Tuned parameters", "",
              "Grid search with `hybrid.baselines.tune`, minimising body RMSE (HU) on central slices "
              "of training cases (never a held-out patient) of the same kernel class. There is no "
              "real sharp-kernel training series, so the sharp class (A0001-L) is tuned on "
              "sharp-kernel phantoms.", "",
              "| tuning set | kernel | slices | method | parameters | tuning RMSE HU | s/slice |",
              "|---|---|---|---|---|---:|---:|"]
    for key, t in result["tuning"].items():
        sl = "; ".join(f"{k}: {v}" for k, v in t["slices"].items())
        for m, info in t["baselines"].items():
            if m == "input" or not info["table"]:
                continue
            row = next(r for r in info["table"] if all(r.get(k) == v for k, v in info["params"].items()))
            edge = f" (grid edge: {', '.join(info['grid_edge'])})" if info.get("grid_edge") else ""
            params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
            lines.append(f"| {key} | {', '.join(t['kernels'])} | {sl} | {_LABELS.get(m, m)} | "
                         f"{params}{edge} | {row['rmse_hu']:.1f} | {row['seconds_per_slice']:.2f} |")
    oc = result.get("oracle_check")
    if oc:
        lines += ["", f"## Sensitivity check (oracle, not a fair baseline): {oc['case']}", "",
                  oc["note"], "",
                  "| method, parameter | RMSE HU (body) |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in oc["body_rmse_hu"].items()]
    sps = result.get("seconds_per_slice", {})
    if sps:
        lines += ["", "Seconds per slice on this machine (2 shared cores): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sps.items()) + "."]
    with atomic_file(mpath, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return jpath, mpath


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ------------------------------------------------------------ cross-validation


from dataclasses import asdict, dataclass, field  # noqa: E402


@dataclass(frozen=True)
class CVBudget:
    """Budgets of one cross-validation run (per fold).

    The defaults are the full run of ``make cv`` (every fold of both sets),
    sized to finish in about 80 minutes on this project's 2-core machine: short
    CNN training (4 epochs x 100 steps per region; the shipped pair had 30 x
    150, so the CV's CNN, and with it the hybrid, is weaker than the shipped
    one), a 60 k-entry dictionary (shipped: 200 k), baselines tuned on 2
    training slices per kernel class with :data:`CV_GRIDS`, 4 central test
    slices per case.  :meth:`fast` is a smoke run.
    """

    epochs: int = 4
    steps_per_epoch: int = 100
    batch_size: int = 32
    val_slices: int = 4
    max_patches: int = 60_000
    n_heldout: int = 2000
    stride: int = 2
    tune_slices: int = 2
    eval_slices: int | None = 4
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: CV_GRIDS)
    #: also train on the other set's patients (the shipped pair saw phantoms and real cases)
    other_set: bool = True
    #: (lung, body) patch sizes replacing the shipped configurations' (48, 64): only for
    #: images too small for them (tests); None keeps the shipped ones
    patch_sizes: tuple[int, int] | None = None
    #: shown at the top of the summary
    note: str = ""

    @classmethod
    def fast(cls) -> CVBudget:
        """Tiny budgets for a smoke run (seconds per fold, numbers meaningless)."""
        return cls(epochs=1, steps_per_epoch=4, batch_size=8, val_slices=1, max_patches=20_000,
                   n_heldout=200, stride=3, tune_slices=1, eval_slices=2, grids=FAST_GRIDS,
                   other_set=False,
                   note="**FAST smoke run: tiny budgets; the numbers only show that the path works "
                        "end to end and say nothing about the methods.**")


def _shipped_cnn_configs(patch_sizes: tuple[int, int] | None = None):
    """The lung and body CNNConfig of the shipped pair (``hybrid/assets/cnn/*.config.json``),
    optionally with other patch sizes."""
    from hybrid.cnn.config import CNNConfig
    from hybrid.pipeline import default_assets_dir

    d = default_assets_dir() / "cnn"
    out = []
    for i, r in enumerate(("lung", "body")):
        cfg = json.loads((d / f"{r}.config.json").read_text())
        if patch_sizes is not None:
            cfg["patch_size"] = int(patch_sizes[i])
        out.append(CNNConfig.from_dict(cfg))
    return tuple(out)


def _pick_calibration(train_patients: Sequence[str], kind: str, root: Path | None = None,
                      entries: Sequence[Mapping[str, Any]] = ()) -> str:
    """Calibration patient of a fold: the shipped one of this set if it is training, else the
    training patient of this set with the most lung voxels (the CNN's validation needs lung
    patches: an abdomen-only series has none), else the last."""
    from hybrid.training import CALIBRATION_PATIENTS

    for p in CALIBRATION_PATIENTS:
        if p in train_patients:
            return p
    if root is not None and entries:
        import h5py

        lung: dict[str, int] = {}
        for e in entries:
            if e["patient_id"] in train_patients and e["kind"] == kind:
                with h5py.File(_case_path(root, e), "r") as f:
                    lung[e["patient_id"]] = lung.get(e["patient_id"], 0) + int(f["lung_mask"][...].sum())
        if lung:
            return max(sorted(lung), key=lambda p: lung[p])
    return sorted(train_patients)[-1]


_CSV_FIELDS = ("set", "fold", "patient", "case", "kernel", "method", "region", "metric", "value")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["value"] = float(r["value"])
    return rows


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    from hybrid.io._atomic import atomic_file

    with atomic_file(path, overwrite=True) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r[k] for k in _CSV_FIELDS})


def _run_fold(root: Path, kind: str, fold: Mapping[str, Any], entries: list[dict[str, Any]], *,
              budget: CVBudget, baselines: Sequence[str], work: Path, tune_cache: dict,
              seed: int, threads: int | None, keep_example: bool) -> tuple[list[dict], dict, Any]:
    """Train, build, calibrate, tune and score one leave-one-patient-out fold."""
    from hybrid.blend import calibrate
    from hybrid.cnn.sampler import TrainingPair
    from hybrid.cnn.train import train_pair
    from hybrid.data import load_case
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.pipeline import Enhancer
    from hybrid.training import calibration_samples

    test_patient = fold["test_patient"][0]
    by_id = {e["case_id"]: e for e in entries}
    train_ids = [c for c in fold["train"]]
    if budget.other_set:
        train_ids += [e["case_id"] for e in entries if e["kind"] != kind and e["patient_id"] != test_patient]
    train_patients = sorted({by_id[c]["patient_id"] for c in fold["train"]})
    calib = _pick_calibration(train_patients, kind, root, entries)
    info: dict[str, Any] = {"set": kind, "test_patient": test_patient, "calibration_patient": calib,
                            "train_cases": train_ids}
    t0 = time.perf_counter()
    cnn_pairs, dict_pairs, calib_cases, val = [], [], [], []
    for cid in train_ids:
        case = load_case(_case_path(root, by_id[cid]))
        for tag, uld in (("", case.uld.array), ("~aug", case.uld_aug)):
            cnn_pairs.append(TrainingPair(uld, case.nd, case.lung_mask, case.body_mask, cid + tag))
            if case.patient_id != calib:
                dict_pairs.append((uld, case.nd, case.body_mask))
        if case.patient_id == calib:
            calib_cases.append(case)
            val.append(TrainingPair(case.uld.array, case.nd, case.lung_mask, case.body_mask, cid))
    if not dict_pairs:
        raise ValueError(f"Fold {test_patient}: no training case left for the dictionary besides "
                         f"the calibration patient {calib}.")
    # 1. CNN pair: the shipped configurations, short budget; the calibration patient monitors
    lung_cfg, body_cfg = _shipped_cnn_configs(budget.patch_sizes)
    import keras

    keras.backend.clear_session()
    cnn, results = train_pair(
        lung_cfg, body_cfg, cnn_pairs, out_dir=work / "cnn", save=False, val_pairs=val,
        epochs=budget.epochs, steps_per_epoch=budget.steps_per_epoch, batch_size=budget.batch_size,
        val_slices=budget.val_slices, val_patches=min(512, 64 * budget.batch_size),
        patience=max(3, budget.epochs), seed=seed, threads=threads, tensorboard=False, verbose=0)
    info["cnn_seconds"] = time.perf_counter() - t0
    info["cnn_val_rmse_hu"] = {k: r.val_rmse_hu for k, r in results.items()}
    # 2. dictionary without the test and the calibration patient
    t = time.perf_counter()
    cfg = DictionaryConfig(max_patches=budget.max_patches, n_heldout=budget.n_heldout, seed=seed)
    dictionary = PatchDictionary.build(dict_pairs, config=cfg, name=f"cv-{test_patient}")
    info["dictionary_seconds"] = time.perf_counter() - t
    info["dictionary_entries"] = len(dictionary)
    # 3. blender on the calibration patient (nominal and other dose)
    t = time.perf_counter()
    samples, _ = calibration_samples(calib_cases, cnn, dictionary, stride=budget.stride)
    blender = calibrate(samples)
    info["blender"] = {"mode": blender.mode, "calibration": blender.calibration}
    info["blender_seconds"] = time.perf_counter() - t
    enhancer = Enhancer(cnn=cnn, dictionary=dictionary, blender=blender, stride=budget.stride)
    # 4. score every method on the test patient
    rows, example = [], None
    for cid in fold["test"]:
        e = by_id[cid]
        tune_ids = tuple(default_tune_cases(root, cid, exclude_patients=[test_patient], strict=False))
        key = ("+".join(tune_ids), budget.tune_slices)
        if key not in tune_cache:
            pairs, picked = _tune_pairs(root, tune_ids, budget.tune_slices)
            tune_cache[key] = {"slices": picked,
                               "baselines": tune_baselines(pairs, list(baselines), grids=budget.grids)}
        tuned = tune_cache[key]["baselines"]
        case = load_case(_case_path(root, e))
        idx = central_slices(len(case.uld), budget.eval_slices)
        enh, maps = enhancer.enhance(case.uld, return_maps=True, progress=False)
        uld = case.uld.array[idx]
        nd, lung, body = case.nd[idx], case.lung_mask[idx], case.body_mask[idx]
        imgs = {"input": uld}
        imgs.update(_baseline_images(uld, body, {k: v for k, v in tuned.items() if k != "input"}, {}))
        imgs.update({"cnn": maps.cnn[idx], "dictionary": maps.dictionary[idx], "hybrid": enh.array[idx]})
        scored = score_methods(imgs, nd, lung, body)
        for m, s in scored.items():
            for region, d in s["metrics"].items():
                for metric, v in d.items():
                    rows.append({"set": kind, "fold": test_patient, "patient": test_patient, "case": cid,
                                 "kernel": case.meta.get("kernel"), "method": m, "region": region,
                                 "metric": metric, "value": float(v)})
        info.setdefault("tuning", {})[cid] = {"cases": list(tune_ids), "slices": tune_cache[key]["slices"],
                                              "params": {k: v["params"] for k, v in tuned.items()}}
        info.setdefault("eval_slices", {})[cid] = idx
        if keep_example and example is None:
            z = len(idx) // 2
            example = {"case": cid, "slice": idx[z], "nd": nd[z], "lung": lung[z],
                       **{m: np.asarray(im[z]) for m, im in imgs.items()}}
    info["seconds"] = time.perf_counter() - t0
    info["revision"], info["date"] = _git_revision(), time.strftime("%Y-%m-%d", time.gmtime())
    return rows, info, example


def cross_validate(
    data_root: str | os.PathLike = "data",
    out: str | os.PathLike = "experiments/results/cv",
    *,
    sets: Sequence[str] = ("phantom", "real"),
    max_folds: int | Mapping[str, int] | None = None,
    test_patients: Sequence[str] | None = None,
    baselines: Sequence[str] = ("gaussian", "nlm", "tv", "bm3d"),
    budget: CVBudget | None = None,
    seed: int = 0,
    threads: int | None = None,
    resume: bool = True,
    figures: bool = True,
    work: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Leave-one-patient-out cross-validation of the hybrid and the baselines.

    For each fold of ``data_root/folds.json`` (per set): train a CNN pair with
    the shipped configurations on the fold's training patients (budget
    ``budget``), build a dictionary without the test patient and one
    calibration patient (the shipped one, P11 / pancreas, when it is training;
    else the last training patient), calibrate the blender on that patient,
    tune the baselines on training slices of the test case's kernel class
    (tunings are shared between folds whose tuning cases coincide), and score
    every method on the central ``budget.eval_slices`` slices of the test
    patient's cases.

    Parameters
    ----------
    data_root : path
        Paired dataset with ``folds.json``.
    out : path
        Output folder: ``cv_results.csv`` (one row per set x patient x case x
        method x region x metric), ``cv_summary.md`` (mean ± sd over patients),
        ``cv_folds.json`` (per fold: patients, timings, tuned parameters,
        blender), ``cv_boxplots.png`` and ``cv_example.png``.
    sets : sequence of {"phantom", "real"}
    max_folds : int or mapping, optional
        At most this many folds per set (in folds.json order); ``{set: n}`` per set.
    test_patients : sequence of str, optional
        Only the folds of these test patients.
    baselines : sequence of str
    budget : CVBudget, optional
        Default ``CVBudget()``; ``CVBudget.fast()`` for a smoke run.
    seed : int
    threads : int, optional
        TensorFlow CPU threads.
    resume : bool
        Skip folds whose rows are already in ``out/cv_results.csv`` (an
        interrupted run goes on where it stopped); results are written after
        every fold.
    figures : bool
        Write the PNGs.
    work : path, optional
        Keep each fold's CNN training folders (logs, checkpoints, progress
        figures) under ``work/<set>-<patient>``; default: a temporary folder,
        removed at the end.

    Returns
    -------
    list of dict
        The CSV rows (all folds in ``out``, old and new).
    """
    budget = budget or CVBudget()
    root, out = Path(data_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds_path = root / "folds.json"
    if not folds_path.exists():
        raise FileNotFoundError(f"Expected {folds_path} (leave-one-patient-out folds); run `make data` first.")
    all_folds = json.loads(folds_path.read_text())
    entries = _entries(root)
    csv_path, info_path = out / "cv_results.csv", out / "cv_folds.json"
    rows = _read_csv(csv_path) if resume else []
    infos = json.loads(info_path.read_text()).get("folds", []) if resume and info_path.exists() else []
    import tempfile

    tmp_work = None
    if work is None:
        tmp_work = tempfile.TemporaryDirectory(prefix="hybrid-cv-")
        work = tmp_work.name
    try:
        rows, infos, example = _cv_loop(
            root, out, all_folds, entries, rows, infos, sets=sets, max_folds=max_folds,
            test_patients=test_patients, baselines=baselines, budget=budget, seed=seed,
            threads=threads, work=Path(work), csv_path=csv_path, info_path=info_path)
    finally:
        if tmp_work is not None:
            tmp_work.cleanup()
    if figures and rows:
        _boxplots(rows, out / "cv_boxplots.png")
        if example is not None:
            _example_figure(example, out / "cv_example.png")
    if rows:
        _write_summary(out / "cv_summary.md", rows, infos, budget)
    return rows


def _fold_worker(args: tuple, kwargs: dict) -> tuple:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows, info, example = _run_fold(*args, **kwargs)
    return rows, info, example, kwargs["tune_cache"]


def _run_fold_isolated(args: tuple, kwargs: dict) -> tuple:
    """:func:`_run_fold` in a child process (spawned); returns its results and the tuning cache."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_fold_worker, args, kwargs).result()


def _cv_loop(root, out, all_folds, entries, rows, infos, *, sets, max_folds, test_patients, baselines,
             budget, seed, threads, work, csv_path, info_path):
    done = {(r["set"], r["patient"]) for r in rows}
    tune_cache: dict = {}
    example = None
    for kind in sets:
        folds = all_folds.get(kind, [])
        if test_patients is not None:
            folds = [f for f in folds if f["test_patient"][0] in set(test_patients)]
        n_max = max_folds.get(kind) if isinstance(max_folds, Mapping) else max_folds
        if n_max is not None:
            folds = folds[:n_max]
        for fold in folds:
            p = fold["test_patient"][0]
            if (kind, p) in done:
                log.info("fold %s/%s already in %s: skipped", kind, p, csv_path)
                continue
            log.info("fold %s/%s: start", kind, p)
            # each fold in a fresh process: TensorFlow and FAISS keep memory across folds (a
            # 21-fold run in one process grew to 24 GB and was killed at fold 18)
            new, info, ex, tune_cache = _run_fold_isolated(
                (root, kind, fold, entries),
                dict(budget=budget, baselines=baselines, work=work / f"{kind}-{p}",
                     tune_cache=tune_cache, seed=seed, threads=threads,
                     keep_example=example is None))
            example = example or ex
            rows = [r for r in rows if not (r["set"] == kind and r["patient"] == p)] + new
            infos = [i for i in infos if not (i["set"] == kind and i["test_patient"] == p)] + [info]
            _write_csv(csv_path, rows)
            _write_info(info_path, infos, budget)
            _write_summary(out / "cv_summary.md", rows, infos, budget)
            log.info("fold %s/%s: %.0f s", kind, p, info["seconds"])
    return rows, infos, example


def _write_info(path: Path, infos: list, budget: CVBudget) -> None:
    from hybrid.io._atomic import atomic_file

    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"budget": asdict(budget), "folds": infos}, indent=2,
                                  default=_json_default) + "\n")


def _per_patient(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str, str, str], float]:
    """(set, method, region, metric, patient) -> mean over the patient's cases."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        acc.setdefault((r["set"], r["method"], r["region"], r["metric"], r["patient"]), []).append(r["value"])
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in acc.items()}


_SUMMARY_COLS = (
    ("body", "rmse_hu", "RMSE HU (body)"),
    ("body", "ssim_lung", "SSIM lung window (−600/1500), body"),
    ("body", "ssim_soft_tissue", "SSIM soft-tissue window (40/400), body"),
    ("lung", "rmse_hu", "RMSE HU (lungs)"),
    ("non_lung", "rmse_hu", "RMSE HU (body outside lungs)"),
)


def _git_revision() -> str:
    """Short git revision of the package's checkout ("unknown" outside one)."""
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() or "unknown"


def _wins_table(pp: Mapping[tuple, float], kind: str, patients: Sequence[str]) -> list[str]:
    """Per fold, is the hybrid better than each comparator? (lower RMSE, higher SSIM)."""
    checks = [("body", "rmse_hu", "RMSE body"), ("lung", "rmse_hu", "RMSE lungs"),
              ("non_lung", "rmse_hu", "RMSE outside the lungs"),
              ("body", "ssim_lung", "SSIM lung window"), ("body", "ssim_soft_tissue", "SSIM soft-tissue window")]
    comparators = [("cnn", "CNN only"), ("dictionary", "dictionary only"), ("bm3d", "BM3D"),
                   ("best classic", "best classic (per fold and metric)")]
    lines = ["| hybrid better than … in n / folds | " + " | ".join(h for _, _, h in checks) + " |",
             "|---|" + "---:|" * len(checks)]
    for comp, label in comparators:
        cells = []
        for region, metric, _ in checks:
            better = lower = 0
            for p in patients:
                h = pp.get((kind, "hybrid", region, metric, p))
                if comp == "best classic":
                    vals = [pp[(kind, m, region, metric, p)] for m in _CLASSICAL
                            if (kind, m, region, metric, p) in pp and np.isfinite(pp[(kind, m, region, metric, p)])]
                    o = (min(vals) if "rmse" in metric else max(vals)) if vals else None
                else:
                    o = pp.get((kind, comp, region, metric, p))
                if h is None or o is None or not (np.isfinite(h) and np.isfinite(o)):
                    continue
                lower += 1
                better += (h < o) if "rmse" in metric else (h > o)
            cells.append(f"{better} / {lower}" if lower else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _write_summary(path: Path, rows: Sequence[Mapping[str, Any]], infos: list, budget: CVBudget) -> None:
    from hybrid.io._atomic import atomic_file

    pp = _per_patient(rows)
    revs = sorted({i["revision"] for i in infos if i.get("revision")})
    dates = sorted({i["date"] for i in infos if i.get("date")})
    n_unrec = sum(1 for i in infos if not i.get("revision"))
    when = (f"folds computed on {', '.join(dates)} at git revision(s) {', '.join(revs)}"
            if revs else "fold revisions not recorded")
    if revs and n_unrec:
        when += f" ({n_unrec} fold(s) not recorded)"
    lines = ["# Leave-one-patient-out cross-validation", ""] + ([budget.note, ""] if budget.note else []) + [
             "Per fold: CNN pair (shipped configurations) trained without the test patient, dictionary "
             "without the test and the calibration patient, blender calibrated on the calibration patient, "
             "baselines tuned (body RMSE) on training slices of the test case's kernel class. "
             f"Central {budget.eval_slices or 'all'} slices per test case; simulated 2 % dose. "
             "Mean ± sd over test patients (a patient's cases averaged first). "
             f"Budget: {json.dumps({k: v for k, v in asdict(budget).items() if k not in ('grids', 'note')})}. "
             f"Produced by `hybrid.evaluate.cross_validate` (`make cv`); {when}; summary written "
             f"at {_git_revision()} on {time.strftime('%Y-%m-%d', time.gmtime())}.", ""]
    for kind in sorted({r["set"] for r in rows}):
        patients = sorted({k[4] for k in pp if k[0] == kind})
        lines += [f"## {kind} set: {len(patients)} fold(s) ({', '.join(patients)})", "",
                  "| method | " + " | ".join(h for _, _, h in _SUMMARY_COLS) + " |",
                  "|---|" + "---:|" * len(_SUMMARY_COLS)]
        methods = [m for m in METHOD_ORDER if any(k[0] == kind and k[1] == m for k in pp)]
        for m in methods:
            cells = []
            for region, metric, _ in _SUMMARY_COLS:
                v = np.array([pp.get((kind, m, region, metric, p), np.nan) for p in patients])
                v = v[np.isfinite(v)]
                if not len(v):
                    cells.append("–")
                    continue
                f = "{:.3f}" if "ssim" in metric else "{:.1f}"
                sd = (" ± " + f.format(v.std(ddof=1))) if len(v) > 1 else ""
                cells.append(f.format(v.mean()) + sd)
            lines.append(f"| {_LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        wins = []
        for p in patients:
            h = pp.get((kind, "hybrid", "body", "rmse_hu", p))
            b = [pp.get((kind, m, "body", "rmse_hu", p)) for m in _CLASSICAL if (kind, m, "body", "rmse_hu", p) in pp]
            if h is not None and b:
                wins.append(h < min(b))
        if wins:
            lines += ["", f"Hybrid body RMSE below every baseline's in {sum(wins)}/{len(wins)} folds."]
        lines += [""] + _wins_table(pp, kind, patients)
        lines.append("")
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _boxplots(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per set, one panel per metric (body region), one box per method over test patients."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hybrid.io._atomic import atomic_file

    pp = _per_patient(rows)
    kinds = sorted({r["set"] for r in rows})
    cols = _SUMMARY_COLS[:3]
    fig = Figure(figsize=(5 * len(cols), 3.6 * len(kinds)), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(kinds), len(cols), squeeze=False))
    for i, kind in enumerate(kinds):
        patients = sorted({k[4] for k in pp if k[0] == kind})
        methods = [m for m in METHOD_ORDER if any(k[0] == kind and k[1] == m for k in pp)]
        for j, (region, metric, title) in enumerate(cols):
            ax = axes[i, j]
            data = []
            for m in methods:
                v = np.array([pp.get((kind, m, region, metric, p), np.nan) for p in patients])
                data.append(v[np.isfinite(v)])
            ax.boxplot(data, showmeans=True)
            ax.set_xticks(range(1, len(methods) + 1), [_LABELS[m].strip("*") for m in methods],
                          rotation=40, ha="right", fontsize=8)
            ax.set_title(f"{kind} ({len(patients)} folds): {title}", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


def _example_figure(ex: Mapping[str, Any], path: Path) -> Path:
    """ND, ULD, baselines, CNN, dictionary and hybrid of one test slice, lung and soft-tissue windows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hybrid.io._atomic import atomic_file
    from hybrid.metrics import LUNG, SOFT_TISSUE, apply_window, rmse

    panels = [("nd", "normal dose")] + [(m, _LABELS[m].strip("*")) for m in METHOD_ORDER if m in ex]
    fig = Figure(figsize=(2.2 * len(panels), 4.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False)
    for j, (key, label) in enumerate(panels):
        for i, w in enumerate((LUNG, SOFT_TISSUE)):
            ax = axes[i, j]
            ax.imshow(apply_window(ex[key], w), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                err = "" if key == "nd" else f"\nRMSE {rmse(ex[key], ex['nd']):.0f} HU"
                ax.set_title(label + err, fontsize=8)
            if j == 0:
                ax.set_ylabel(str(w), fontsize=8)
    fig.suptitle(f"{ex['case']} slice {ex['slice']} (test patient of its fold; RMSE over the whole slice)",
                 fontsize=9)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path


# ------------------------------------------------------------------ command line


# ------------------------------------------------------------ dose sweep

DOSE_SWEEP_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.25)


def dose_sweep(
    data_root: str | os.PathLike,
    *,
    case_id: str = "A0001-B",
    doses: Sequence[float] = DOSE_SWEEP_FRACTIONS,
    baseline: str = "bm3d",
    baseline_params: Mapping[str, Any] | None = None,
    n_slices: int = 4,
    seed: int = 0,
    enhancer: Any = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Quality against dose fraction for the input, the hybrid and one tuned baseline.

    The case's real normal-dose slices (its ``nd``) get simulated low-dose
    partners at each dose fraction (:func:`hybrid.physics.simulate_low_dose`,
    one seed); each method is scored inside the body mask (RMSE HU, SSIM in the
    lung and soft-tissue windows).  ``baseline_params`` default: the parameters
    tuned on training cases in ``experiments/results/baselines_heldout.json``
    for the case's kernel class, if that file exists, else the baseline's
    defaults.  Writes ``dose_sweep.json`` and ``dose_sweep.png`` under ``out``.
    """
    from hybrid.baselines import BASELINES
    from hybrid.data import iter_cases, load_case
    from hybrid.physics import simulate_low_dose
    from hybrid.pipeline import Enhancer

    root = Path(data_root)
    path = next((p for e, p in iter_cases(root) if e["case_id"] == case_id), None)
    if path is None:
        raise ValueError(f"Expected case {case_id!r} in {root}; run `make data` first.")
    case = load_case(path)
    sl = central_slices(len(case.nd), n_slices)
    nd = case.nd[sl]
    lung, body = case.lung_mask[sl], case.body_mask[sl]
    # central_slices is a contiguous run: the slab keeps the source's provenance (kernel, headers).
    source = case.uld.slab(sl[0], sl[-1] + 1).with_array(nd)
    if baseline_params is None:
        baseline_params = {}
        tuned = Path(__file__).resolve().parents[1] / "experiments" / "results" / "baselines_heldout.json"
        if tuned.exists():
            info = json.loads(tuned.read_text())
            for t in info.get("tuning", {}).values():
                if case.meta.get("kernel") in t.get("kernels", ()) and baseline in t.get("baselines", {}):
                    baseline_params = t["baselines"][baseline]["params"]
                    break
    enhancer = enhancer or Enhancer()
    rows = []
    for f in doses:
        uld = simulate_low_dose(source, f, rng=seed, progress=False)
        t0 = time.perf_counter()
        hyb = enhancer.enhance(uld, progress=False).array
        t_h = (time.perf_counter() - t0) / len(nd)
        t0 = time.perf_counter()
        base = BASELINES[baseline](**baseline_params).propose(uld, body_mask=body).image
        t_b = (time.perf_counter() - t0) / len(nd)
        for name, img, secs in (("input", uld.array, 0.0), ("hybrid", hyb, t_h), (baseline, base, t_b)):
            m = score_methods({name: img}, nd, lung, body)[name]["metrics"]["body"]
            rows.append({"dose_fraction": f, "method": name, "seconds_per_slice": secs,
                         **{k: float(v) for k, v in m.items()}})
        log.info("dose %.2f done", f)
    result = {"case": case_id, "kernel": case.meta.get("kernel"), "slices": sl, "seed": seed,
              "baseline": baseline, "baseline_params": dict(baseline_params), "region": "body",
              "rows": rows}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "dose_sweep.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        _dose_sweep_figure(result, out / "dose_sweep.png")
    return result


def _dose_sweep_figure(result: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid.metrics import LUNG, SOFT_TISSUE

    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, label in ((axes[0], "rmse_hu", "RMSE in the body (HU)"),
                           (axes[1], "ssim_lung", f"SSIM, {LUNG} window"),
                           (axes[2], "ssim_soft_tissue", f"SSIM, {SOFT_TISSUE} window")):
        for m in methods:
            pts = [(r["dose_fraction"], r[key]) for r in result["rows"] if r["method"] == m]
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log")
        ax.set_xlabel("dose (% of normal)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"{result['case']} ({result['kernel']} kernel), slices {result['slices'][0]}–"
                 f"{result['slices'][-1]}: quality against simulated dose "
                 "(TCIA Lung-PET-CT-Dx, CC BY 4.0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m hybrid.evaluate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("heldout", help="shipped hybrid vs tuned baselines on the held-out patients")
    h.add_argument("--data", type=Path, default=Path("data"))
    h.add_argument("--out", type=Path, default=Path("experiments/results"))
    h.add_argument("--slices", type=int, default=8, help="central slices scored per held-out case")
    h.add_argument("--tune-slices", type=int, default=4, help="slices per tuning set")
    h.add_argument("--baselines", nargs="+", default=["gaussian", "nlm", "tv", "bm3d"])
    d = sub.add_parser("dose-sweep", help="quality against dose for the hybrid and a tuned baseline")
    d.add_argument("--data", type=Path, default=Path("data"))
    d.add_argument("--out", type=Path, default=Path("experiments/results"))
    d.add_argument("--case", default="A0001-B")
    d.add_argument("--baseline", default="bm3d")
    d.add_argument("--slices", type=int, default=4)
    c = sub.add_parser("cv", help="leave-one-patient-out cross-validation (make cv)")
    c.add_argument("--data", type=Path, default=Path("data"))
    c.add_argument("--out", type=Path, default=None,
                   help="default experiments/results/cv (experiments/results/cv/fast with --fast)")
    c.add_argument("--fast", action="store_true", help="smoke run: tiny budgets, 2 phantom + 1 real fold")
    c.add_argument("--sets", nargs="+", default=["phantom", "real"])
    c.add_argument("--max-folds", type=int, default=None)
    c.add_argument("--patients", nargs="+", default=None, help="only these test patients")
    c.add_argument("--baselines", nargs="+", default=["gaussian", "nlm", "tv", "bm3d"])
    c.add_argument("--epochs", type=int, default=None)
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--eval-slices", type=int, default=None)
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--no-resume", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.cmd == "heldout":
        res = compare_on_heldout(args.data, baselines=args.baselines, tune_slices=args.tune_slices,
                                 n_eval_slices=args.slices, out=args.out)
        print((Path(args.out) / "baselines_heldout.md").read_text())
        print(f"wall {res['wall_seconds']:.0f} s")
    elif args.cmd == "dose-sweep":
        res = dose_sweep(args.data, case_id=args.case, baseline=args.baseline, n_slices=args.slices,
                         out=args.out)
        for r in res["rows"]:
            print(f"{r['dose_fraction']:>5.2f} {r['method']:<8} RMSE {r['rmse_hu']:7.1f} HU  "
                  f"SSIM lung {r['ssim_lung']:.3f}  soft {r['ssim_soft_tissue']:.3f}")
    elif args.cmd == "cv":
        from dataclasses import replace

        budget = CVBudget.fast() if args.fast else CVBudget()
        over = {k: v for k, v in (("epochs", args.epochs), ("steps_per_epoch", args.steps),
                                  ("eval_slices", args.eval_slices)) if v is not None}
        budget = replace(budget, **over)
        out = args.out or Path("experiments/results/cv") / ("fast" if args.fast else "")
        max_folds: Any = args.max_folds
        if args.fast and args.max_folds is None:
            max_folds = {"phantom": 2, "real": 1}  # FAST: 2 phantom folds, 1 real fold
        t = time.perf_counter()
        rows = cross_validate(args.data, out, sets=args.sets, max_folds=max_folds,
                              test_patients=args.patients, baselines=args.baselines, budget=budget,
                              threads=args.threads, resume=not args.no_resume)
        print((Path(out) / "cv_summary.md").read_text())
        print(f"{len(rows)} rows in {Path(out) / 'cv_results.csv'}; wall {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
