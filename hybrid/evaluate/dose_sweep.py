"""Dose sweep: quality against simulated dose on the held-out patients, the product's gate.

Every case of the held-out patients (``experiments/splits.json``) gets, at each
dose fraction, a simulated low-dose partner of its real normal-dose slices
(:func:`hybrid.physics.simulate_low_dose`, the case's kernel class); at
f = 1.00 the input *is* the normal-dose image.  Methods: the input, the CNN
pair alone, the hybrid, and BM3D and NLM tuned **per dose** on simulated
slices of *training* cases of the same kernel class (never a held-out
patient).  Scores in the body mask (:func:`hybrid.evaluate.scoring.score_methods`):
RMSE (HU) and SSIM in the lung (−600/1500) and soft-tissue (40/400) windows;
at f = 1.00 the RMS change inside the body against the scan's own noise
(:func:`hybrid.physics.estimate_noise_hu`).  The gate (:func:`sweep_gate`):
up to 50 % the RMSE below the input's and both SSIMs at least the input's; at
100 % the change at most half the scan's own noise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.evaluate.cases import case_entries, case_file, central_slices, kernel_class
from hybrid.evaluate.figures import _dose_sweep_figure
from hybrid.evaluate.heldout import _tuning_plan
from hybrid.evaluate.report import _json_default
from hybrid.evaluate.scoring import _LABELS, score_methods
from hybrid.evaluate.tuning import FAST_GRIDS, _tune_pairs, tune_baselines

log = logging.getLogger(__name__)

__all__ = ["DOSE_SWEEP_FRACTIONS", "SWEEP_GRIDS", "SWEEP_METHODS", "dose_sweep", "sweep_gate"]

DOSE_SWEEP_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.25, 0.50, 1.00)
#: Methods of the sweep, in report order (baselines: those with a grid in SWEEP_GRIDS).
SWEEP_METHODS = ("input", "cnn", "hybrid", "bm3d", "nlm")
#: Search grids of the sweep (and of the real pairs).  ``sigma_factor`` and ``h_factor``
#: multiply the per-slice, per-pixel noise estimate (Immerkær); CT noise is correlated, so
#: BM3D needs about 3–4× it: the grid spans 1–5× (extended by the tuner if 5 is best).
SWEEP_GRIDS: dict[str, dict[str, list[Any]]] = {
    "bm3d": {"sigma_factor": [1.0, 2.0, 3.0, 4.0, 5.0]},
    "nlm": {"h_factor": [0.6, 1.0, 1.5, 2.2, 3.3, 5.0], "patch_size": [5], "patch_distance": [6]},
    "gaussian": {"sigma_px": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]},
}
#: The gate's bar at f = 1.00: RMS change in the body at most this times the scan's own noise.
MAX_CHANGE_VS_NOISE = 0.5
#: Doses up to this one are held to "RMSE below the input's, both SSIMs at least the input's".
_GATE_MAX_DOSE = 0.5
_KEYS = ("rmse_hu", "ssim_lung", "ssim_soft_tissue")


def dose_sweep(
    data_root: str | os.PathLike = "data",
    *,
    patients: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    doses: Sequence[float] = DOSE_SWEEP_FRACTIONS,
    methods: Sequence[str] = SWEEP_METHODS,
    n_slices: int = 2,
    context: int = 2,
    tune_slices: int = 1,
    tune_cases: Mapping[str, Sequence[str]] | None = None,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    fast: bool = False,
    seed: int = 0,
    enhancer: Any = None,
    out: str | os.PathLike | None = None,
    reuse_baselines: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score input, CNN, hybrid and per-dose tuned baselines at every dose fraction.

    Parameters
    ----------
    data_root : path
        The paired dataset (``make data``); only its normal-dose images are used.
    patients : sequence of str, optional
        Held-out patients (default :func:`hybrid.recipe.load_split`'s).
    cases : sequence of str, optional
        Only these of their cases (default: all).
    doses : sequence of float
        Dose fractions in (0, 1]; 1.0 scores the normal-dose scan itself.
    methods : sequence of str
        Of ``input``, ``cnn``, ``hybrid`` and the baselines of :data:`SWEEP_GRIDS`.
    n_slices : int
        Central slices scored per case.
    context : int
        Extra slices on either side given to the hybrid (its lung segmentation is 3-D).
    tune_slices : int
        Training slices per tuning set and dose (round-robin over the tuning cases).
    tune_cases : mapping, optional
        ``{case id: [training case ids]}``; default :func:`default_tune_cases` (same
        kernel class, never a held-out patient).
    grids : mapping, optional
        Baseline grids (default :data:`SWEEP_GRIDS`; ``fast``: ``FAST_GRIDS``).
    fast : bool
        Smoke run: 1 slice, no context, 1 tuning slice, tiny grids.
    seed : int
        Seed of the simulated noise (per case and dose a derived stream).
    enhancer : hybrid.pipeline.Enhancer, optional
        Default: the shipped one.
    out : path, optional
        Folder for ``dose_sweep.json``, ``.md`` and ``.png``.
    reuse_baselines : path, optional
        A previous ``dose_sweep.json``: its baseline rows and tuning are reused for each
        (case, dose) whose simulated input scores exactly as before (input RMSE equal to
        1e-9 relative: same data, seed and slices, so the same input and the same
        baseline output), and computed anew elsewhere.  The baselines do not depend on
        the models, so a sweep of new models need not re-run BM3D (about 45 minutes
        here); ``result["reused_baselines"]`` lists what was reused.

    Returns
    -------
    dict
        ``rows`` (case × dose × method: body metrics, at 1.00 also ``noise_hu`` and
        ``change_vs_noise``), ``summary`` (means over cases), ``tuning`` (per
        tuning set and dose), ``gate`` (:func:`sweep_gate`).
    """
    from hybrid.data import load_case

    if fast:
        n_slices, context, tune_slices = 1, 0, 1
        grids = grids or {k: v for k, v in FAST_GRIDS.items() if k in SWEEP_GRIDS}
    grids = SWEEP_GRIDS if grids is None else grids
    doses = [float(f) for f in doses]
    if not doses or any(not (0 < f <= 1) for f in doses):
        raise ValueError(f"Expected dose fractions in (0, 1]; received {doses}.")
    baselines = [m for m in methods if m in grids]
    unknown = [m for m in methods if m not in ("input", "cnn", "hybrid") and m not in grids]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; expected input, cnn, hybrid or one of "
                         f"{sorted(grids)} (the baselines with a grid).")
    if patients is None:
        from hybrid.recipe import load_split

        patients = load_split().held_out_patients
    root = Path(data_root)
    entries = case_entries(root)
    held = [e for e in entries if e["patient_id"] in set(patients)
            and (cases is None or e["case_id"] in set(cases))]
    if not held:
        raise ValueError(f"Expected cases of patients {list(patients)} (cases {cases}) in {root}; "
                         "none found. Pass --data to the paired dataset (`make data`).")
    t_start = time.perf_counter()
    plan = _tuning_plan(root, entries, held, patients=patients, tune_cases=tune_cases)
    old = json.loads(Path(reuse_baselines).read_text()) if reuse_baselines else None
    old_rows = {(r["case"], round(r["dose_fraction"], 6), r["method"]): r
                for r in (old or {}).get("rows", [])}
    tuning = {"+".join(ids): _reused_tuning(old, "+".join(ids), doses, baselines)
              or _tune_per_dose(root, ids, doses, baselines=baselines, grids=grids,
                                n=tune_slices, seed=seed)
              for ids in dict.fromkeys(plan.values())}
    reused: list[str] = []
    if enhancer is None and ({"cnn", "hybrid"} & set(methods)):
        from hybrid.pipeline import Enhancer

        enhancer = Enhancer()
    rows: list[dict[str, Any]] = []
    case_info = {}
    for e in held:
        n_total = int(e["n_slices"])
        slab = central_slices(n_total, n_slices + 2 * context)
        case = load_case(case_file(root, e), slices=slice(slab[0], slab[-1] + 1))
        idx = [i for i, z in enumerate(slab) if z in set(central_slices(n_total, n_slices))]
        kernel = kernel_class(e)
        set_key = "+".join(plan[e["case_id"]])
        case_info[e["case_id"]] = {"patient": e["patient_id"], "kind": e["kind"], "kernel": kernel,
                                   "slices": [slab[i] for i in idx], "n_slices_total": n_total,
                                   "tuning_set": set_key}
        for f in doses:
            params = {b: _params_for(tuning[set_key], b, f) for b in baselines}
            prev = [old_rows.get((e["case_id"], round(f, 6), m)) for m in ("input", *baselines)]
            if old is not None and baselines and all(prev):
                new = _score_case_at(case, idx, f, kernel=kernel,
                                     methods=[m for m in methods if m not in baselines],
                                     params={}, enhancer=enhancer, rng=_rng(seed, e["case_id"], f))
                if _same_input(new, prev[0]):
                    rows += new + [dict(r) for r in prev[1:]]
                    reused.append(f"{e['case_id']}@{f:.2f}")
                    continue
                log.info("%s dose %.2f: input differs from the reused sweep's", e["case_id"], f)
            rows += _score_case_at(case, idx, f, kernel=kernel, methods=methods, params=params,
                                   enhancer=enhancer, rng=_rng(seed, e["case_id"], f))
            log.info("%s dose %.2f scored", e["case_id"], f)
    result = {
        "what": "dose sweep on the held-out patients: input, CNN only, hybrid, baselines tuned "
                "per dose on training patients", "data": str(root), "patients": list(patients),
        "doses": doses, "methods": list(methods),
        "seed": seed, "region": "body", "windows": {"ssim_lung": "lung −600/1500",
                                                     "ssim_soft_tissue": "soft tissue 40/400"},
        "tune_slices_per_dose": tune_slices, "context_slices": context, "fast": fast,
        "cases": case_info, "tuning": tuning, "rows": rows,
        "summary": _summary(rows), "wall_seconds": None,
        "reused_baselines": {"from": str(reuse_baselines), "case_doses": reused} if old else None,
    }
    result["gate"] = sweep_gate(result)
    result["wall_seconds"] = time.perf_counter() - t_start
    if out is not None:
        write_dose_sweep(result, out)
    return result


def _same_input(rows: Sequence[Mapping[str, Any]], prev_input: Mapping[str, Any]) -> bool:
    """Whether the input row among ``rows`` scores as the previous sweep's (1e-9 relative)."""
    inp = next(r for r in rows if r["method"] == "input")
    return abs(inp["rmse_hu"] - prev_input["rmse_hu"]) <= 1e-9 * max(prev_input["rmse_hu"], 1.0)


def _reused_tuning(old: Mapping[str, Any] | None, key: str, doses: Sequence[float],
                   baselines: Sequence[str]) -> dict[str, Any] | None:
    """A previous sweep's tuning of set ``key`` if it covers every dose below 1 and baseline."""
    prev = (old or {}).get("tuning", {}).get(key)
    if prev and all(f"{f:.2f}" in prev["per_dose"] and all(
            b in prev["per_dose"][f"{f:.2f}"] for b in baselines) for f in doses if f < 1):
        return prev
    return None


def _rng(seed: int, case_id: str, f: float) -> np.random.Generator:
    """An independent noise stream per (seed, case, dose)."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), int(round(f * 10000))])


def _low_dose(source: Any, f: float, *, kernel: str, rng: np.random.Generator) -> Any:
    """The simulated low-dose Volume at dose ``f`` (the source itself at f = 1)."""
    from hybrid.physics import simulate_low_dose

    if f >= 1.0:
        return source
    return simulate_low_dose(source, f, rng=rng, kernel=kernel, progress=False)


def _tuning_slices(root: Path, ids: Sequence[str], n: int) -> tuple[list[tuple[Any, Any, str]], dict]:
    """``n`` training slices (normal-dose 1-slice Volume, body mask, kernel class), and the picks.

    The slices are those of :func:`hybrid.evaluate.tuning._tune_pairs` (round-robin over the
    cases' central slices); their low-dose partners are simulated per dose by the caller.
    """
    from hybrid.data import load_case

    _, picked = _tune_pairs(root, ids, n)
    by_id = {e["case_id"]: e for e in case_entries(root)}
    out = []
    for cid, zs in picked.items():
        for z in zs:
            c = load_case(case_file(root, by_id[cid]), slices=slice(z, z + 1))
            if c.body_mask.any():
                out.append((c.uld.with_array(c.nd), c.body_mask, kernel_class(by_id[cid])))
    return out, picked


def _tune_at(slices: Sequence[tuple[Any, Any, str]], f: float, baselines: Sequence[str], *,
             grids: Mapping[str, Mapping[str, Sequence[Any]]], seed: int) -> dict[str, Any]:
    """Tune ``baselines`` on the training slices at simulated dose ``f`` (body RMSE)."""
    pairs = []
    for k, (src, body, kernel) in enumerate(slices):
        rng = np.random.default_rng([seed, 1, k, int(round(f * 10000))])
        pairs.append((_low_dose(src, f, kernel=kernel, rng=rng).array, src.array, body))
    return tune_baselines(pairs, baselines, grids=grids)


def _tune_per_dose(root: Path, ids: Sequence[str], doses: Sequence[float], *,
                   baselines: Sequence[str], grids: Mapping[str, Mapping[str, Sequence[Any]]],
                   n: int, seed: int) -> dict[str, Any]:
    """Per dose < 1 the tuned baselines of one tuning set; f = 1 uses the largest dose below it."""
    by_id = {e["case_id"]: e for e in case_entries(root)}
    slices, picked = _tuning_slices(root, ids, n) if baselines else ([], {})
    tune_doses = sorted({f for f in doses if f < 1.0} or {_GATE_MAX_DOSE})
    per_dose = {}
    for f in tune_doses:
        t = _tune_at(slices, f, baselines, grids=grids, seed=seed) if baselines else {}
        per_dose[f"{f:.2f}"] = {b: {"params": v["params"], "grid": v.get("grid"),
                                    "grid_edge": v.get("grid_edge", []),
                                    "tuning_rmse_hu": _best_score(v), "seconds": v["seconds"]}
                                for b, v in t.items()}
        log.info("tuned %s at dose %.2f: %s", "+".join(ids), f,
                 {b: v["params"] for b, v in per_dose[f"{f:.2f}"].items()})
    return {"cases": list(ids), "patients": sorted({by_id[c]["patient_id"] for c in ids}),
            "kernels": sorted({kernel_class(by_id[c]) for c in ids}), "slices": picked,
            "n_slices": len(slices), "per_dose": per_dose}


def _best_score(tuned: Mapping[str, Any]) -> float:
    rows = [r for r in tuned["table"] if all(r.get(k) == v for k, v in tuned["params"].items())]
    return float(rows[0]["rmse_hu"]) if rows else float("nan")


def _params_for(tuning_set: Mapping[str, Any], baseline: str, f: float) -> dict[str, Any]:
    """The parameters tuned at ``f`` (f = 1: at the largest tuned dose)."""
    per_dose = tuning_set["per_dose"]
    key = f"{f:.2f}" if f"{f:.2f}" in per_dose else max(per_dose, key=float)
    return dict(per_dose[key][baseline]["params"])


def _score_case_at(case: Any, idx: Sequence[int], f: float, *, kernel: str,
                   methods: Sequence[str], params: Mapping[str, Mapping[str, Any]],
                   enhancer: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Rows (one per method) of one case at dose ``f``, scored on slab slices ``idx``."""
    from hybrid.baselines import BASELINES
    from hybrid.physics import estimate_noise_hu

    source = case.uld.with_array(case.nd)
    uld = _low_dose(source, f, kernel=kernel, rng=rng)
    nd, lung, body = case.nd[idx], case.lung_mask[idx], case.body_mask[idx]
    imgs: dict[str, np.ndarray] = {"input": uld.array[idx]}
    secs: dict[str, float] = {"input": 0.0}
    if {"cnn", "hybrid"} & set(methods):
        t0 = time.perf_counter()
        enh, maps = enhancer.enhance(uld, return_maps=True, progress=False)
        secs["hybrid"] = secs["cnn"] = (time.perf_counter() - t0) / len(uld.array)
        imgs["cnn"] = np.asarray(maps.cnn)[idx]
        imgs["hybrid"] = np.asarray(getattr(enh, "array", enh))[idx]
    for b, p in params.items():
        t0 = time.perf_counter()
        imgs[b] = BASELINES[b](**p).propose(imgs["input"], body_mask=body).image
        secs[b] = (time.perf_counter() - t0) / len(idx)
    scored = score_methods({m: imgs[m] for m in methods}, nd, lung, body)
    noise = float("nan")
    if f >= 1.0:
        try:
            noise = float(estimate_noise_hu(nd, body))
        except ValueError as exc:  # little soft tissue in the scored slices (small images)
            log.warning("%s: %s; estimating from at least 25 patches", case.case_id, exc)
            try:
                noise = float(estimate_noise_hu(nd, body, min_patches=25))
            except ValueError:
                log.warning("%s: no noise estimate", case.case_id)
    rows = []
    for m in methods:
        met = scored[m]["metrics"]["body"]
        row = {"case": case.case_id, "dose_fraction": f, "method": m,
               "seconds_per_slice": secs.get(m, 0.0), **{k: float(v) for k, v in met.items()}}
        if m in params:
            row["params"] = dict(params[m])
        if f >= 1.0:
            row["noise_hu"] = noise
            row["change_vs_noise"] = row["rmse_hu"] / noise if noise > 0 else float("nan")
        rows.append(row)
    return rows


def _summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Means over cases per (dose, method)."""
    out = []
    for f, m in dict.fromkeys((r["dose_fraction"], r["method"]) for r in rows):
        sel = [r for r in rows if r["dose_fraction"] == f and r["method"] == m]
        row = {"dose_fraction": f, "method": m, "n_cases": len(sel)}
        for k in (*_KEYS, "seconds_per_slice", "noise_hu", "change_vs_noise"):
            vals = [r[k] for r in sel if k in r]
            if vals:
                row[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        out.append(row)
    return out


def sweep_gate(result: Mapping[str, Any], *, methods: Sequence[str] = ("hybrid", "cnn")
               ) -> dict[str, Any]:
    """The bars of the sweep, per method, per case and on the means over cases.

    Up to 50 %: body RMSE below the input's and both SSIMs at least the input's;
    at 100 %: RMS change in the body at most :data:`MAX_CHANGE_VS_NOISE` × the
    scan's own noise.  ``{method: {"passes": bool, "failures": [str]}}``.
    """
    gate = {}
    groups: dict[str, list[Mapping[str, Any]]] = {"mean": result["summary"]}
    for r in result["rows"]:
        groups.setdefault(r["case"], []).append(r)
    for m in methods:
        fails = []
        for name, rows in groups.items():
            by = {(r["dose_fraction"], r["method"]): r for r in rows}
            for f in sorted({r["dose_fraction"] for r in rows}):
                me, inp = by.get((f, m)), by.get((f, "input"))
                if me is None or inp is None:
                    continue
                if f <= _GATE_MAX_DOSE:
                    if not me["rmse_hu"] < inp["rmse_hu"]:
                        fails.append(f"{name} {f:.2f}: RMSE {me['rmse_hu']:.1f} ≥ input "
                                     f"{inp['rmse_hu']:.1f} HU")
                    for k in ("ssim_lung", "ssim_soft_tissue"):
                        if not me[k] >= inp[k]:
                            fails.append(f"{name} {f:.2f}: {k} {me[k]:.3f} < input {inp[k]:.3f}")
                elif f >= 1.0:
                    ratio = me.get("change_vs_noise", float("nan"))
                    if not ratio <= MAX_CHANGE_VS_NOISE:
                        fails.append(f"{name} 1.00: change {ratio:.2f} × own noise > "
                                     f"{MAX_CHANGE_VS_NOISE}")
        if any(r["method"] == m for r in result["rows"]):
            gate[m] = {"passes": not fails, "failures": fails}
    return gate


def _fmt(v: Any, key: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if "ssim" in key else f"{v:.2f}" if key == "change_vs_noise" else f"{v:.1f}"


_MD_COLS = (("rmse_hu", "RMSE HU (body; at 100 %: RMS change)"),
            ("ssim_lung", "SSIM lung window (−600/1500), body"),
            ("ssim_soft_tissue", "SSIM soft-tissue window (40/400), body"),
            ("change_vs_noise", "change / own noise (100 %)"),
            ("seconds_per_slice", "s/slice"))


def _table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| dose | method | " + " | ".join(h for _, h in _MD_COLS) + " |",
             "|---:|---|" + "---:|" * len(_MD_COLS)]
    for r in rows:
        lines.append(f"| {100 * r['dose_fraction']:g} % | {_LABELS.get(r['method'], r['method'])} | "
                     + " | ".join(_fmt(r.get(k), k) for k, _ in _MD_COLS) + " |")
    return lines


def write_dose_sweep(result: Mapping[str, Any], out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Write ``dose_sweep.json`` (everything), ``dose_sweep.md`` (tables) and ``dose_sweep.png``."""
    from hybrid.io._atomic import atomic_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath, fpath = out / "dose_sweep.json", out / "dose_sweep.md", out / "dose_sweep.png"
    with atomic_file(jpath, overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    cases = result["cases"]
    lines = [
        "# Dose sweep on the held-out patients" + (" (FAST smoke run)" if result["fast"] else ""),
        "",
        f"Patients {', '.join(result['patients'])}; cases "
        + ", ".join(f"{c} ({v['kernel']} kernel, slices {v['slices']})" for c, v in cases.items())
        + ". The low dose is simulated from each case's real normal-dose slices "
        "(`hybrid.physics.simulate_low_dose`, its kernel class); at 100 % the input is the "
        "normal-dose scan itself, and RMSE column is the RMS change inside the body, also "
        "given relative to the scan's own noise (`hybrid.physics.estimate_noise_hu`, soft "
        "tissue in the body). Every metric inside the body mask; SSIM in the window named in "
        f"each header. BM3D and NLM tuned per dose (body RMSE) on {result['tune_slices_per_dose']} "
        "simulated slice(s) per dose of training cases of the same kernel class (never a held-out "
        "patient); at 100 % they use the parameters tuned at the largest dose below. The hybrid "
        f"saw {result['context_slices']} extra slice(s) each side (3-D lung segmentation). "
        "Produced by `hybrid.evaluate.dose_sweep` (`make dose-sweep`).",
        "",
        "## Gate",
        "",
        "Bars: up to 50 % body RMSE below the input's and both SSIMs at least the input's; at "
        f"100 % RMS change ≤ {MAX_CHANGE_VS_NOISE} × own noise (per case and on the means).",
        "",
    ]
    for m, g in result["gate"].items():
        lines.append(f"- {_LABELS.get(m, m)}: " + ("**passes**" if g["passes"] else
                     "**fails**: " + "; ".join(g["failures"])))
    lines += ["", f"## Mean over {len(cases)} case(s)", "", *_table(result["summary"]), ""]
    for cid in cases:
        lines += [f"## {cid}", "", *_table([r for r in result["rows"] if r["case"] == cid]), ""]
    lines += ["## Tuned parameters (per dose)", "",
              "| tuning set (patients) | kernel | dose | method | parameters | tuning RMSE HU |",
              "|---|---|---:|---|---|---:|"]
    for key, t in result["tuning"].items():
        for d, tuned in t["per_dose"].items():
            for b, info in tuned.items():
                if b == "input":
                    continue
                edge = f" (grid edge: {', '.join(info['grid_edge'])})" if info["grid_edge"] else ""
                params = ", ".join(f"{k}={v}" for k, v in info["params"].items())
                lines.append(f"| {key} ({', '.join(t['patients'])}) | {', '.join(t['kernels'])} | "
                             f"{100 * float(d):g} % | {_LABELS.get(b, b)} | {params}{edge} | "
                             f"{info['tuning_rmse_hu']:.1f} |")
    reused = result.get("reused_baselines")
    if reused and reused["case_doses"]:
        lines += ["", f"Baseline rows and tuning reused from `{reused['from']}` for "
                  f"{len(reused['case_doses'])} (case, dose) pairs whose simulated input scored "
                  "exactly as there (`--reuse-baselines`): " + ", ".join(reused["case_doses"]) + "."]
    lines += ["", f"Wall time {result['wall_seconds']:.0f} s on this machine."]
    with atomic_file(mpath, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _dose_sweep_figure(result, fpath)
    return jpath, mpath, fpath
