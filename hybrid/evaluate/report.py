"""Writers of the evaluation's results: JSON helpers, the CV's CSV, fold log and Markdown summary.

The cross-validation writes ``cv_results.csv`` (one row per set x patient x
case x method x region x metric), ``cv_folds.json`` (per fold: patients,
timings, tuned parameters, blender) and ``cv_summary.md`` (mean ± sd over test
patients and per-fold win counts).  The held-out report lives with the
comparison, in :mod:`hybrid.evaluate.heldout`.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.evaluate.scoring import _LABELS, CLASSICAL, METHOD_ORDER

__all__: list[str] = []


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


def _write_info(path: Path, infos: list, settings: Mapping[str, Any]) -> None:
    """``cv_folds.json``: the run's ``settings`` (``{"recipe": ..., "cv": ...}``) and the folds."""
    from hybrid.io._atomic import atomic_file

    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"budget": settings, "folds": infos}, indent=2,
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
                    vals = [pp[(kind, m, region, metric, p)] for m in CLASSICAL
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


def _write_summary(path: Path, rows: Sequence[Mapping[str, Any]], infos: list,
                   settings: Mapping[str, Any]) -> None:
    """``cv_summary.md``; ``settings``: ``{"recipe": RecipeConfig.to_dict(), "cv": cv settings}``."""
    from hybrid.io._atomic import atomic_file

    pp = _per_patient(rows)
    revs = sorted({i["revision"] for i in infos if i.get("revision")})
    dates = sorted({i["date"] for i in infos if i.get("date")})
    n_unrec = sum(1 for i in infos if not i.get("revision"))
    when = (f"folds computed on {', '.join(dates)} at git revision(s) {', '.join(revs)}"
            if revs else "fold revisions not recorded")
    if revs and n_unrec:
        when += f" ({n_unrec} fold(s) not recorded)"
    cv = settings["cv"]
    shown = {"recipe": settings["recipe"],
             "cv": {k: v for k, v in cv.items() if k not in ("grids", "note")}}
    lines = ["# Leave-one-patient-out cross-validation", ""] + ([cv["note"], ""] if cv["note"] else []) + [
             "Per fold: CNN pair (shipped configurations) trained without the test patient, dictionary "
             "without the test and the calibration patient, blender calibrated on the calibration patient, "
             "baselines tuned (body RMSE) on training slices of the test case's kernel class. "
             f"Central {cv['eval_slices'] or 'all'} slices per test case; simulated 2 % dose. "
             "Mean ± sd over test patients (a patient's cases averaged first). "
             f"Settings: {json.dumps(shown)}. "
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
            b = [pp.get((kind, m, "body", "rmse_hu", p)) for m in CLASSICAL if (kind, m, "body", "rmse_hu", p) in pp]
            if h is not None and b:
                wins.append(h < min(b))
        if wins:
            lines += ["", f"Hybrid body RMSE below every baseline's in {sum(wins)}/{len(wins)} folds."]
        lines += [""] + _wins_table(pp, kind, patients)
        lines.append("")
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")

