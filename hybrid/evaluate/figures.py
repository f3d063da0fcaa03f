"""Figures of the evaluation (matplotlib, Agg): CV box plots and example slice, dose sweep."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.evaluate.report import _SUMMARY_COLS, _per_patient
from hybrid.evaluate.scoring import _LABELS, METHOD_ORDER

__all__: list[str] = []


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


def _dose_sweep_figure(result: Mapping[str, Any], path: Path) -> Path:
    """Means over cases against dose (RMSE, both SSIMs) and the change at 100 % vs own noise."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hybrid.io._atomic import atomic_file
    from hybrid.metrics import LUNG, SOFT_TISSUE

    rows = result["summary"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(18, 4.2), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    for ax, key, label in ((axes[0], "rmse_hu", "RMSE in the body (HU), doses < 100 %"),
                           (axes[1], "ssim_lung", f"SSIM, {LUNG} window, body"),
                           (axes[2], "ssim_soft_tissue", f"SSIM, {SOFT_TISSUE} window, body")):
        for m in methods:
            pts = [(r["dose_fraction"], r[key]) for r in rows if r["method"] == m
                   and not (key == "rmse_hu" and r["dose_fraction"] >= 1.0)]
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o",
                    label=_LABELS.get(m, m).strip("*"))
        ax.set_xscale("log")
        ax.set_xlabel("dose (% of normal)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    full = [r for r in rows if r["dose_fraction"] >= 1.0 and "change_vs_noise" in r]
    ax = axes[3]
    if full:
        ax.bar([_LABELS.get(r["method"], r["method"]).strip("*") for r in full],
               [r["change_vs_noise"] for r in full], color="0.5")
        ax.axhline(0.5, color="r", ls="--", lw=1, label="bar: 0.5")
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_title("100 %: RMS change in the body / the scan's own noise", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    cases = ", ".join(f"{c} ({v['kernel']})" for c, v in result["cases"].items())
    fig.suptitle(f"Held-out cases {cases}: quality against simulated dose, mean over cases "
                 "(TCIA Lung-PET-CT-Dx, CC BY 4.0; phantoms)", fontsize=10)
    fig.tight_layout()
    with atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png")
    return path
