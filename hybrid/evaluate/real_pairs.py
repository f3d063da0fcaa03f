"""Real quarter-dose pairs: every method on real low-dose scanner noise, a check only.

The three slice pairs of ``../shared/data/real-pairs`` (2016 NIH-AAPM-Mayo Low
Dose CT Grand Challenge, McCollough et al., Med Phys 44(10), 2017,
doi:10.1002/mp.12345; see the folder's README) hold the same slice at quarter
dose (``ld``) and at routine dose (``nd``).  They are never used to train or
tune: the baselines (Gaussian, NLM, BM3D) are tuned on the project's
*training* patients at 25 % simulated dose (:data:`TUNE_DOSE`), then every
method runs on ``ld`` and is scored against ``nd`` inside the body (body and
lung masks from ``nd``): RMSE (HU) and SSIM in the lung (−600/1500) and
soft-tissue (40/400) windows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._paths import SHARED_DATA_DIR
from hybrid.evaluate.cases import case_entries, kernel_class
from hybrid.evaluate.dose_sweep import SWEEP_GRIDS, _tune_at, _tuning_slices
from hybrid.evaluate.report import _json_default
from hybrid.evaluate.scoring import _LABELS, score_methods
from hybrid.evaluate.tuning import FAST_GRIDS

log = logging.getLogger(__name__)

__all__ = ["REAL_PAIRS_METHODS", "TUNE_DOSE", "default_real_pairs_dir", "real_pairs",
           "score_on_pairs"]

#: Methods in report order.
REAL_PAIRS_METHODS = ("input", "gaussian", "nlm", "bm3d", "cnn", "hybrid")
#: The pairs are quarter dose: the baselines are tuned at this simulated dose.
TUNE_DOSE = 0.25
#: Voxel spacing (z, y, x) in mm given to the methods.  z: the pairs' slice thickness, "thin
#: (about 1 mm)" in their README, which the hybrid's input rule reads the noise ratio at
#: (:func:`hybrid.cnn.noise.thickness_factor`); y, x are not recorded in the source (~0.66–0.78).
SPACING = (1.0, 0.7, 0.7)
#: The data's citation (its README asks for it in every figure and report).
CITATION = ("Data: 2016 NIH-AAPM-Mayo Low Dose CT Grand Challenge (McCollough et al., Med Phys "
            "44(10), 2017, doi:10.1002/mp.12345), via eunh/low_dose_CT test_data")
_KEYS = ("rmse_hu", "ssim_lung", "ssim_soft_tissue")


def default_real_pairs_dir() -> Path:
    """``<workspace>/shared/data/real-pairs``, next to the project's checkout."""
    return SHARED_DATA_DIR / "real-pairs"


def score_on_pairs(restore: Any, folder: str | os.PathLike | None = None
                   ) -> dict[str, dict[str, dict[str, float]]]:
    """Body scores of the input and of what ``restore`` makes of each pair, no baselines
    (a quick check for experiments; :func:`real_pairs` is the report).

    ``restore(ld)`` takes one pair's low dose as a ``(1, Y, X)`` Volume (spacing
    :data:`SPACING`) and returns ``{method: image}``.  Scored against ``nd`` inside its body
    mask, lungs segmented on ``nd``: ``{pair: {method: {rmse_hu, ssim_lung, ...}}}``; empty
    where the folder (default :func:`default_real_pairs_dir`) is absent.
    """
    from hybrid.evaluate.scoring import score_methods
    from hybrid.lung import body_mask, segment
    from hybrid.volume import Volume

    folder = Path(folder) if folder is not None else default_real_pairs_dir()
    if not folder.exists():
        return {}
    out = {}
    for name, p in _load_pairs(folder).items():
        ld, nd = p["ld"][None], p["nd"][None]
        body = body_mask(nd, spacing=SPACING)
        lung = segment(nd, spacing=SPACING, body=body)
        images = {"input": ld, **restore(Volume(ld, SPACING))}
        s = score_methods(images, nd, lung, body)
        out[name] = {m: {k: float(v) for k, v in s[m]["metrics"]["body"].items()}
                     for m in images}
    return out


def _load_pairs(folder: Path) -> dict[str, dict[str, np.ndarray]]:
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise FileNotFoundError(
            f"Expected the real quarter-dose pairs (*.npz with ld and nd) in {folder}; none found. "
            "Pass pairs_dir= (--pairs) to the folder of ../shared/data/real-pairs.")
    out = {}
    for p in files:
        with np.load(p) as z:
            if "ld" not in z or "nd" not in z:
                raise ValueError(f"Expected arrays ld and nd in {p}; found {sorted(z.files)}.")
            out[p.stem] = {"ld": np.asarray(z["ld"], np.float32), "nd": np.asarray(z["nd"], np.float32)}
    return out


def _training_cases(root: Path, exclude: Sequence[str], max_cases: int = 4) -> list[str]:
    """Training cases for the tuning: real standard-kernel cases outside ``exclude`` (else any)."""
    pool = [e for e in case_entries(root) if e["patient_id"] not in set(exclude)]
    for keep in (lambda e: e["kind"] == "real" and kernel_class(e) == "standard",
                 lambda e: kernel_class(e) == "standard", lambda e: True):
        chosen = [e["case_id"] for e in pool if keep(e)]
        if chosen:
            return chosen[:max_cases]
    raise ValueError(f"Expected training cases outside {list(exclude)} in {root}; none found.")


def real_pairs(
    data_root: str | os.PathLike = "data",
    *,
    pairs_dir: str | os.PathLike | None = None,
    exclude_patients: Sequence[str] | None = None,
    tune_cases: Sequence[str] | None = None,
    tune_slices: int = 2,
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    fast: bool = False,
    seed: int = 0,
    enhancer: Any = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score input, tuned Gaussian / NLM / BM3D, CNN only and the hybrid on the real pairs.

    Parameters
    ----------
    data_root : path
        The paired dataset (``make data``), for tuning the baselines only.
    pairs_dir : path, optional
        Folder of the pairs (default :func:`default_real_pairs_dir`).
    exclude_patients : sequence of str, optional
        Never tuned on (default: the held-out patients, :func:`hybrid.recipe.load_split`).
    tune_cases : sequence of str, optional
        Training cases to tune on (default: real standard-kernel training cases).
    tune_slices : int
        Training slices (round-robin over ``tune_cases``), simulated at :data:`TUNE_DOSE`.
    grids : mapping, optional
        Baseline grids (default :data:`hybrid.evaluate.dose_sweep.SWEEP_GRIDS`; ``fast``:
        ``FAST_GRIDS``).
    fast : bool
        Tiny grids and one tuning slice.
    enhancer : hybrid.pipeline.Enhancer, optional
        Default: the shipped one.
    out : path, optional
        Folder for ``real_pairs.json``, ``.md`` and ``.png``.
    """
    from hybrid.baselines import BASELINES
    from hybrid.lung import body_mask, segment
    from hybrid.volume import Volume

    if fast:
        tune_slices = 1
        grids = grids or {k: FAST_GRIDS[k] for k in ("gaussian", "nlm", "bm3d")}
    grids = {k: SWEEP_GRIDS[k] for k in ("gaussian", "nlm", "bm3d")} if grids is None else grids
    folder = Path(pairs_dir) if pairs_dir is not None else default_real_pairs_dir()
    pairs = _load_pairs(folder)
    if exclude_patients is None:
        from hybrid.recipe import load_split

        exclude_patients = load_split().held_out_patients
    root = Path(data_root)
    t_start = time.perf_counter()
    ids = list(tune_cases) if tune_cases is not None else _training_cases(root, exclude_patients)
    by_id = {e["case_id"]: e for e in case_entries(root)}
    bad = [c for c in ids if c not in by_id or by_id[c]["patient_id"] in set(exclude_patients)]
    if bad:
        raise ValueError(f"Expected training cases of {root} outside {list(exclude_patients)}; "
                         f"received {bad}.")
    baselines = [b for b in REAL_PAIRS_METHODS if b in grids]
    slices, picked = _tuning_slices(root, ids, tune_slices)
    tuned = _tune_at(slices, TUNE_DOSE, baselines, grids=grids, seed=seed)
    if enhancer is None:
        from hybrid.pipeline import Enhancer

        enhancer = Enhancer()
    cases, images = {}, {}
    for name, p in pairs.items():
        ld, nd = p["ld"], p["nd"]
        body = body_mask(nd[None], spacing=SPACING)
        lung = segment(nd[None], spacing=SPACING, body=body)
        imgs: dict[str, np.ndarray] = {"input": ld[None]}
        secs: dict[str, float] = {"input": 0.0}
        t0 = time.perf_counter()
        enh, maps = enhancer.enhance(Volume(ld[None], SPACING), return_maps=True, progress=False)
        secs["cnn"] = secs["hybrid"] = time.perf_counter() - t0
        imgs["cnn"], imgs["hybrid"] = np.asarray(maps.cnn), np.asarray(getattr(enh, "array", enh))
        for b in baselines:
            t0 = time.perf_counter()
            imgs[b] = BASELINES[b](**tuned[b]["params"]).propose(ld[None], body_mask=body).image
            secs[b] = time.perf_counter() - t0
        scored = score_methods(imgs, nd[None], lung, body)
        noise = float(np.std((ld - nd)[body[0]]))
        cases[name] = {"body_noise_ld_minus_nd_hu": noise, "lung_fraction_of_body":
                       float(lung.sum() / max(body.sum(), 1)),
                       "methods": {m: {**{k: float(v) for k, v in
                                          scored[m]["metrics"]["body"].items()},
                                       "seconds": secs[m]} for m in REAL_PAIRS_METHODS}}
        images[name] = {"nd": nd, **{m: imgs[m][0] for m in REAL_PAIRS_METHODS}}
        log.info("real pair %s scored", name)
    mean = {m: {k: float(np.nanmean([c["methods"][m][k] for c in cases.values()])) for k in _KEYS}
            for m in REAL_PAIRS_METHODS}
    result = {
        "what": "real quarter-dose pairs (check only, never trained or tuned on): every method on "
                "ld, scored against nd inside the body", "citation": CITATION,
        "pairs_dir": str(folder), "spacing_mm": SPACING, "region": "body",
        "windows": {"ssim_lung": "lung −600/1500", "ssim_soft_tissue": "soft tissue 40/400"},
        "tuning": {"dose_fraction": TUNE_DOSE, "cases": ids,
                   "patients": sorted({by_id[c]["patient_id"] for c in ids}),
                   "excluded_patients": list(exclude_patients), "slices": picked,
                   "n_slices": len(slices), "fast": fast,
                   "baselines": {b: {"params": t["params"], "grid": t.get("grid"),
                                     "grid_edge": t.get("grid_edge", [])}
                                 for b, t in tuned.items()}},
        "cases": cases, "mean": mean, "verdict": _verdict(mean),
        "wall_seconds": time.perf_counter() - t_start,
    }
    if out is not None:
        write_real_pairs(result, images, out)
    return result


def _verdict(mean: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The bar: hybrid's mean body RMSE below BM3D's and Gaussian's; both SSIMs above theirs
    and the input's."""
    h = mean["hybrid"]
    checks = {}
    for other in ("bm3d", "gaussian"):
        checks[f"rmse_below_{other}"] = h["rmse_hu"] < mean[other]["rmse_hu"]
    for other in ("bm3d", "gaussian", "input"):
        for k in ("ssim_lung", "ssim_soft_tissue"):
            checks[f"{k}_above_{other}"] = h[k] > mean[other][k]
    return {"passes": all(checks.values()), "checks": checks}


def _fmt(v: float, key: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if "ssim" in key else f"{v:.1f}"


def write_real_pairs(result: Mapping[str, Any], images: Mapping[str, Mapping[str, np.ndarray]],
                     out: str | os.PathLike) -> tuple[Path, Path, Path]:
    """Write ``real_pairs.json``, ``real_pairs.md`` (tables) and ``real_pairs.png`` (figure)."""
    from hybrid.io._atomic import atomic_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath, fpath = out / "real_pairs.json", out / "real_pairs.md", out / "real_pairs.png"
    with atomic_file(jpath, overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    cols = (("rmse_hu", "RMSE HU (body)"), ("ssim_lung", "SSIM lung window (−600/1500), body"),
            ("ssim_soft_tissue", "SSIM soft-tissue window (40/400), body"))
    t = result["tuning"]
    lines = ["# Real quarter-dose pairs (check only)", "", CITATION + ".", "",
             "Every method runs on the real quarter-dose slice (`ld`) and is scored against the "
             "routine-dose slice (`nd`) inside the body mask (made on `nd`); SSIM in the window "
             "named in each header. Never trained or tuned on: the baselines were tuned (body "
             f"RMSE) on {t['n_slices']} slice(s) of training cases {', '.join(t['cases'])} at "
             f"{100 * t['dose_fraction']:g} % simulated dose; held-out patients "
             f"{', '.join(t['excluded_patients'])} excluded. Spacing assumed "
             f"{result['spacing_mm']} mm. Produced by `hybrid.evaluate.real_pairs` "
             "(`make real-pairs`).", "",
             "## Mean over the pairs", "",
             "| method | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---:|" * len(cols)]
    for m, v in result["mean"].items():
        lines.append(f"| {_LABELS.get(m, m)} | " + " | ".join(_fmt(v[k], k) for k, _ in cols) + " |")
    v = result["verdict"]
    lost = [k for k, ok in v["checks"].items() if not ok]
    lines += ["", "Bar (hybrid: mean body RMSE below tuned BM3D's and Gaussian's, both SSIMs above "
              "theirs and the input's): " + ("**passes**." if v["passes"] else
                                              "**fails**: " + ", ".join(lost) + "."), ""]
    for name, c in result["cases"].items():
        lines += [f"## {name} (body noise of ld − nd {c['body_noise_ld_minus_nd_hu']:.0f} HU)", "",
                  "| method | " + " | ".join(h for _, h in cols) + " | s |",
                  "|---|" + "---:|" * (len(cols) + 1)]
        for m, mv in c["methods"].items():
            lines.append(f"| {_LABELS.get(m, m)} | " + " | ".join(_fmt(mv[k], k) for k, _ in cols)
                         + f" | {mv['seconds']:.1f} |")
        lines.append("")
    lines += ["## Tuned parameters (training patients, 25 % simulated dose)", "",
              "| method | parameters |", "|---|---|"]
    for b, info in t["baselines"].items():
        edge = f" (grid edge: {', '.join(info['grid_edge'])})" if info["grid_edge"] else ""
        lines.append(f"| {_LABELS.get(b, b)} | "
                     + ", ".join(f"{k}={x}" for k, x in info["params"].items()) + edge + " |")
    with atomic_file(mpath, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    _figure(result, images, fpath)
    return jpath, mpath, fpath


def _figure(result: Mapping[str, Any], images: Mapping[str, Mapping[str, np.ndarray]],
            path: Path) -> Path:
    """The pairs (rows), routine dose and every method side by side, soft-tissue window."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hybrid.io._atomic import atomic_file
    from hybrid.metrics import SOFT_TISSUE, apply_window

    cols = ["nd", *REAL_PAIRS_METHODS]
    fig = Figure(figsize=(2.3 * len(cols), 2.6 * len(images) + 0.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), len(cols), squeeze=False)
    for i, (name, imgs) in enumerate(images.items()):
        for j, key in enumerate(cols):
            ax = axes[i, j]
            ax.imshow(apply_window(imgs[key], SOFT_TISSUE), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            label = "routine dose" if key == "nd" else _LABELS.get(key, key).strip("*")
            if key != "nd":
                label += f"\nRMSE {result['cases'][name]['methods'][key]['rmse_hu']:.0f} HU (body)"
            ax.set_title(label, fontsize=8)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"Real quarter-dose pairs, {SOFT_TISSUE} window. {CITATION}", fontsize=8)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path
