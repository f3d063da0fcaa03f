"""The demo: enhance a phantom and a real chest CT with the shipped models, and score them.

``make demo`` (or ``python -m hybrid.demo [--fast]``):

1. draws phantom patient 99 (a seed no model was trained on) as 8 slices of
   512 x 512, and "scans" it twice (:func:`hybrid.phantom.scan_phantom`):
   normal dose and 2 % dose;
2. where ``../shared/data/ct`` is present, takes 8 central slices of the
   real series ``lung-pet-ct-dx-a0001/kernel-B-5mm`` as the normal dose and
   simulates its 2 % dose by projection-domain noise insertion
   (:func:`hybrid.physics.simulate_low_dose`);
3. enhances each low-dose volume with the shipped default models
   (:func:`hybrid.enhance`), keeping the CNN's proposal and the source map;
4. prints RMSE (HU) and SSIM in the lung (-600/1500) and soft-tissue
   (40/400) windows, all inside the body, for the input, the CNN alone (and
   the dictionary alone, for an Enhancer with one) and the hybrid, and writes
   ``out/demo/metrics.json`` and the figure ``out/demo/demo.png``.

``--fast`` uses 2 slices per case instead of 8.  Research software, no
diagnostic claim.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NOTICE = "hybrid demo: research software, no diagnostic claim."
REAL_SERIES = "lung-pet-ct-dx-a0001/kernel-B-5mm"
ATTRIBUTION = "TCIA Lung-PET-CT-Dx, CC BY 4.0"
PHANTOM_SEED = 99
DOSE = 0.02
#: What the demo scores with the default models ("dictionary only" joins them for an Enhancer
#: with a dictionary).
METHODS = ("input", "CNN only", "hybrid")


def _case_phantom(n_slices: int, seed: int) -> dict:
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(seed, shape=(n_slices, 512, 512))
    rng = np.random.default_rng([seed, 2026])
    nd = scan_phantom(ph, dose_fraction=1.0, kernel="standard", rng=rng.spawn(1)[0])
    uld = scan_phantom(ph, dose_fraction=DOSE, kernel="standard", rng=rng.spawn(1)[0])
    return {
        "name": "phantom",
        "title": f"phantom patient {seed}",
        "source": f"hybrid.phantom.make_patient(seed={seed}, shape={tuple(ph.truth.shape)})",
        "uld": uld, "nd": nd.array, "body": ph.body_mask, "lung": ph.lung_mask,
        "attribution": None, "z0": 0,
    }


def _case_real(n_slices: int, seed: int, ct_root: Path) -> dict | None:
    import hybrid
    from hybrid.lung import body_mask, segment
    from hybrid.physics import kernel_for, simulate_low_dose

    folder = ct_root / REAL_SERIES
    if not folder.is_dir():
        print(f"real series not found ({folder} absent): phantom only")
        return None
    vol = hybrid.load(folder)
    start = max((len(vol) - n_slices) // 2, 0)
    nd = vol.slab(start, start + n_slices)
    uld = simulate_low_dose(nd, DOSE, rng=np.random.default_rng([seed, 7]),
                            kernel=kernel_for(nd.provenance.kernel), progress=False)
    body = body_mask(nd)
    return {
        "name": "real",
        "title": "real chest CT (Lung-PET-CT-Dx A0001)",
        "source": f"{REAL_SERIES} slices {start}..{start + n_slices - 1} of {len(vol)}",
        "uld": uld, "nd": nd.array, "body": body, "lung": segment(nd, body=body),
        "attribution": ATTRIBUTION, "z0": start,
    }


def _scores(images: dict[str, np.ndarray], nd: np.ndarray, body: np.ndarray) -> dict:
    from hybrid.metrics import LUNG, SOFT_TISSUE, rmse, ssim

    return {
        m: {
            "rmse_hu_body": rmse(img, nd, mask=body),
            "ssim_lung_window_body": ssim(img, nd, window=LUNG, mask=body),
            "ssim_soft_tissue_window_body": ssim(img, nd, window=SOFT_TISSUE, mask=body),
        }
        for m, img in images.items()
    }


def _table(results: dict) -> str:
    head = (f"{'case':<9} {'method':<16} {'RMSE HU':>8} {'vs input':>9} "
            f"{'SSIM lung':>10} {'SSIM soft':>10}")
    lines = [head, "-" * len(head)]
    for case, r in results.items():
        base = r["metrics"]["input"]["rmse_hu_body"]
        for i, m in enumerate(r["metrics"]):
            s = r["metrics"][m]
            change = "" if m == "input" else f"{100 * (s['rmse_hu_body'] / base - 1):+.0f} %"
            lines.append(
                f"{case if i == 0 else '':<9} {m:<16} {s['rmse_hu_body']:8.1f} {change:>9} "
                f"{s['ssim_lung_window_body']:10.3f} {s['ssim_soft_tissue_window_body']:10.3f}"
            )
    lines.append("RMSE in HU and SSIM in the lung (-600/1500) and soft-tissue (40/400) windows, "
                 "all inside the body, against the normal-dose image; 'input' is the 2 % dose scan.")
    return "\n".join(lines)


def _figure(cases: list[dict], out: Path, blender_label: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid.io._atomic import atomic_file
    from hybrid.metrics import LUNG, SOFT_TISSUE

    # one sub-figure per case, its name once as the heading; two-line panel titles; the
    # constrained layout keeps every title clear of the images above it
    fig = plt.figure(figsize=(16, 8.8 * len(cases)), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(cases), 1))
    for c, sub in zip(cases, subfigs):
        z = int(np.argmax(c["lung"].reshape(len(c["nd"]), -1).sum(1)))
        maps = c["maps"]
        sub.suptitle(f"{c['title']}, slice {c['z0'] + z}", fontsize=11, fontweight="bold")
        axes = sub.subplots(2, 4)
        for w_i, win in enumerate((LUNG, SOFT_TISSUE)):
            row = axes[w_i]
            panels = [
                (c["uld"].array[z], f"input: {DOSE:.0%} dose"),
                (c["enhanced"].array[z], "enhanced (hybrid)"),
                (c["nd"][z], "normal dose (reference)"),
            ]
            for ax, (img, what) in zip(row, panels):
                ax.imshow(img, cmap="gray", vmin=win.low, vmax=win.high)
                ax.set_title(f"{what}\n{win} window", fontsize=9)
            ax = row[3]
            if w_i == 0 and maps.dictionary is None:
                im = ax.imshow(maps.input_weight[z], cmap="viridis", vmin=0, vmax=1)
                ax.set_title("source map: the input's share\n(1 = input kept, 0 = CNN)",
                             fontsize=9)
            elif w_i == 0:
                im = ax.imshow(maps.dictionary_weight[z], cmap="viridis", vmin=0, vmax=1)
                ax.set_title("source map: dictionary weight\n(1 = dictionary, 0 = CNN)",
                             fontsize=9)
            elif maps.distance is None:
                im = ax.imshow(c["enhanced"].array[z] - c["nd"][z], cmap="RdBu_r", vmin=-150,
                               vmax=150)
                ax.set_title("enhanced \u2212 normal dose (HU, \u00b1150)\nnoise of both, "
                             "and what was lost", fontsize=9)
            else:
                d = np.where(np.isfinite(maps.distance[z]), maps.distance[z], np.nan)
                top = float(np.nanpercentile(d, 99)) if np.isfinite(d).any() else 1.0
                im = ax.imshow(d, cmap="magma", vmin=0, vmax=max(top, 1e-6))
                ax.set_title(f"dictionary distance \u03b4 (low = close match)\n{blender_label}",
                             fontsize=9)
            sub.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            for a in row:
                a.set_axis_off()
            if c["attribution"]:
                row[0].text(0.01, 0.01, c["attribution"], transform=row[0].transAxes,
                            color="yellow", fontsize=8, va="bottom")
    notes = ["hybrid demo: research software, no diagnostic claim."]
    if any(c["attribution"] for c in cases):
        notes.append(f"Real CT: {ATTRIBUTION} (Clark et al., J Digit Imaging 2013); "
                     "its 2 % dose simulated by hybrid.physics.simulate_low_dose.")
    fig.get_layout_engine().set(rect=(0, 0.012, 1, 0.988))
    fig.text(0.01, 0.003, "  ".join(notes), fontsize=9)
    with atomic_file(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)
    return out


def run(
    *, fast: bool = False, out_dir: Path = Path("out/demo"), real: bool = True,
    seed: int = PHANTOM_SEED, ct_root: Path | None = None, progress: bool = True,
    enhancer=None,
) -> dict:
    """Run the demo; returns what ``metrics.json`` holds.

    ``enhancer``: an :class:`hybrid.Enhancer` to use instead of the shipped defaults.
    """
    import hybrid
    from hybrid._progress import working
    from hybrid.data import default_ct_root
    from hybrid.io._atomic import atomic_file

    t0 = time.perf_counter()
    n = 2 if fast else 8
    if enhancer is None:  # after=0: TensorFlow's import silences stderr a while (hybrid._logs)
        with working("hybrid demo: loading the models (TensorFlow, CNN pair)",
                     enabled=progress, after=0):
            enhancer = hybrid.Enhancer()  # the shipped defaults; a clear error if absent
    enhancer.prepare(progress=progress)  # one-off work, so that the timings below are speed
    print(f"models: {enhancer!r}")
    with working(f"hybrid demo: phantom patient {seed}: drawing {n} slices, scanning them at "
                 f"normal and {DOSE:.0%} dose", enabled=progress):
        cases = [_case_phantom(n, seed)]
    if real:
        with working(f"hybrid demo: reading {REAL_SERIES}, simulating its {DOSE:.0%} dose",
                     enabled=progress):
            rc = _case_real(n, seed, Path(ct_root) if ct_root else default_ct_root())
        if rc is not None:
            cases.append(rc)
    results = {}
    for c in cases:
        t = time.perf_counter()
        enhanced, maps = enhancer.enhance(c["uld"], dose_fraction=DOSE, return_maps=True,
                                          progress=progress)
        secs = time.perf_counter() - t
        c["enhanced"], c["maps"] = enhanced, maps
        images = {"input": c["uld"].array, "CNN only": maps.cnn,
                  "dictionary only": maps.dictionary, "hybrid": enhanced.array}
        images = {m: img for m, img in images.items() if img is not None}
        body = np.asarray(c["body"], bool)
        results[c["name"]] = {
            "source": c["source"],
            "attribution": c["attribution"],
            "shape_zyx": list(c["uld"].shape),
            "spacing_zyx_mm": [round(s, 4) for s in c["uld"].spacing],
            "dose_fraction": DOSE,
            "enhance_seconds": round(secs, 2),
            **{f"{name}_body": {
                "mean": float(w[body].mean()),
                "p1": float(np.percentile(w[body], 1)),
                "p99": float(np.percentile(w[body], 99)),
            } for name, w in (("input_weight", maps.input_weight),
                              ("dictionary_weight", maps.dictionary_weight))},
            "metrics": _scores(images, c["nd"], body),
        }
        print(f"{c['name']}: enhanced {len(c['nd'])} slice(s) in {secs:.1f} s")
    print()
    print(_table(results))
    out_dir = Path(out_dir)
    label = None
    if enhancer.dictionary is not None:
        mode = enhancer.blender.modes["dictionary"]
        label = (f"blender: {mode.name}, threshold {mode.threshold:.3g}"
                 if mode.name in ("hard", "soft")
                 else f"blender: {mode.name} weight over \u03b4 (and |dict \u2212 CNN|)")
    with working("hybrid demo: drawing the figure", enabled=progress):
        png = _figure(cases, out_dir / "demo.png", label)
    total = time.perf_counter() - t0
    report = {
        "notice": "research software, no diagnostic claim",
        "hybrid_version": hybrid.__version__,
        "python": platform.python_version(),
        "fast": fast,
        "models": enhancer.sources,
        "blender": enhancer.blender.info(),
        "stride": enhancer.stride,
        "metrics_definition": {
            "rmse_hu_body": "RMSE in HU inside the body mask, against the normal-dose image",
            "ssim_lung_window_body": "SSIM in the lung window (-600/1500), inside the body",
            "ssim_soft_tissue_window_body": "SSIM in the soft-tissue window (40/400), inside the body",
            "methods": "input = the 2 % dose scan; CNN only = the CNN pair's proposal "
                       "(dictionary only, with a dictionary: its proposal); hybrid = the "
                       "calibrated blend (hybrid.enhance)",
        },
        "cases": results,
        "seconds_total": round(total, 1),
    }
    with atomic_file(out_dir / "metrics.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigure: {png}\nmetrics: {out_dir / 'metrics.json'}\ntotal: {total:.0f} s")
    print(NOTICE)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hybrid.demo",
        description="Enhance a phantom and a real chest CT (simulated 2 %% dose) with the shipped "
                    "models; print RMSE/SSIM; write out/demo/demo.png and metrics.json. "
                    "Research software, no diagnostic claim.",
    )
    p.add_argument("--fast", action="store_true", help="2 slices per case instead of 8")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--no-real", action="store_true", help="phantom only")
    p.add_argument("--seed", type=int, default=PHANTOM_SEED,
                   help=f"phantom patient seed (default {PHANTOM_SEED}, unused in training)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    print(NOTICE)
    try:
        run(fast=args.fast, out_dir=args.out, real=not args.no_real, seed=args.seed,
            progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"hybrid demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    from hybrid._progress import exit_now

    exit_now(main())  # no 2 s of silence while TensorFlow is torn down
