"""Check the low-dose simulator against real quarter-dose noise (Mayo 2016 pairs).

For each real pair in ``../shared/data/real-pairs`` (``ld`` quarter dose, ``nd``
routine dose, same slice; see that folder's README) the routine-dose slice is
turned into a 25 % dose one with :func:`hybrid.physics.simulate_low_dose` and
the simulated noise ``sim - nd`` is compared with the real noise ``ld - nd``
inside the body (:func:`hybrid.lung.body_mask` of ``nd``):

- level: RMS (HU) over the body, per HU band of the (smoothed) ``nd`` image
  (lung, fat, soft tissue, bone), in the body's centre and periphery, and
  outside the body;
- texture: the radially averaged 2-D noise power spectrum (NPS) of 64 x 64
  ROIs lying in fat / soft tissue, its peak and mean frequency (cycles/pixel:
  the pixel spacing of these slices is not recorded);
- streaks: the angular distribution of the NPS energy over the whole body
  (12 sectors of 15 degrees, 0.05-0.5 cycles/pixel): anisotropy = largest
  sector / mean sector, and the energy near the vertical frequency axis
  (horizontal streaks) over that near the horizontal axis.

Which difference to compare: the Mayo quarter-dose data were made by inserting
noise into the routine-dose projections (McCollough et al. 2017), not by a
second scan, so ``ld - nd`` is the inserted noise alone, like ``sim - nd``.
The script checks this on the data: ``var(ld) ~ var(nd) + var(ld - nd)`` (an
independent rescan would give ``var(ld - nd) = var(ld) + var(nd)``), reported
under ``"decomposition"``.

Only a check: nothing is trained or tuned on these slices.
Data: AAPM / Mayo Clinic Low Dose CT Grand Challenge (McCollough et al., Med
Phys 44(10), 2017, doi:10.1002/mp.12345).

Run: ``python experiments/simulator_check.py [--spacing 0.7] [--seed 0]``;
writes ``experiments/results/simulator_check.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
PAIRS = REPO.parent / "shared" / "data" / "real-pairs"
RESULTS = REPO / "experiments" / "results"
DOSE = 0.25

#: HU bands of the smoothed (2-pixel Gaussian) routine-dose image, inside the body.
BANDS = {
    "lung": (-1000.0, -600.0),
    "fat": (-200.0, -40.0),
    "soft": (0.0, 120.0),
    "bone": (250.0, 4000.0),
}
ROI = 64
NPS_BAND = (0.05, 0.5)  # cycles/pixel, for the angular (streak) analysis


def load_pairs(root: Path = PAIRS) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, ld, nd), ...]`` float64 HU for the real pairs in ``root``."""
    out = []
    for path in sorted(root.glob("mayo2016-case*.npz")):
        with np.load(path) as d:
            out.append((path.stem, d["ld"].astype(np.float64), d["nd"].astype(np.float64)))
    return out


def regions(nd: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
    """Boolean masks: body, HU bands, centre / periphery of the body, outside air."""
    from hybrid.lung import body_mask

    body = body_mask(nd.astype(np.float32), spacing=(1.0, spacing, spacing))
    inner = ndimage.binary_erosion(body, iterations=5)  # away from the skin edge
    smooth = ndimage.gaussian_filter(nd, 2.0)
    out = {"body": inner}
    for name, (lo, hi) in BANDS.items():
        out[name] = inner & (smooth >= lo) & (smooth < hi)
    depth = ndimage.distance_transform_edt(body)
    half = np.median(depth[inner])
    out["centre"] = inner & (depth >= half)
    out["periphery"] = inner & (depth < half)
    yy, xx = np.mgrid[: nd.shape[0], : nd.shape[1]]
    c = (np.array(nd.shape) - 1) / 2
    fov = np.hypot(yy - c[0], xx - c[1]) < 0.48 * nd.shape[0]
    out["air"] = fov & ~ndimage.binary_dilation(body, iterations=10)
    return out


def nps_rois(nd: np.ndarray, inner: np.ndarray) -> list[tuple[int, int]]:
    """Top-left corners of ROI x ROI squares in the body, >= 80 % fat / soft tissue."""
    smooth = ndimage.gaussian_filter(nd, 2.0)
    flat = (smooth >= -200) & (smooth < 200)
    out = []
    for y in range(0, nd.shape[0] - ROI + 1, ROI // 2):
        for x in range(0, nd.shape[1] - ROI + 1, ROI // 2):
            if inner[y : y + ROI, x : x + ROI].all() and flat[y : y + ROI, x : x + ROI].mean() >= 0.8:
                out.append((y, x))
    return out


def nps_2d(noise: np.ndarray, corners: list[tuple[int, int]]) -> np.ndarray:
    """Mean 2-D NPS (HU^2 pixel^2, fftshifted) of the ROIs, each mean- and plane-detrended."""
    yy, xx = np.mgrid[:ROI, :ROI]
    design = np.stack([np.ones(ROI * ROI), yy.ravel(), xx.ravel()], axis=1)
    acc = np.zeros((ROI, ROI))
    for y, x in corners:
        roi = noise[y : y + ROI, x : x + ROI].ravel()
        coef, *_ = np.linalg.lstsq(design, roi, rcond=None)
        r = (roi - design @ coef).reshape(ROI, ROI)
        acc += np.abs(np.fft.fft2(r)) ** 2 / (ROI * ROI)
    return np.fft.fftshift(acc / max(len(corners), 1))


def radial(nps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radial average of a fftshifted square NPS: (frequency cycles/pixel, NPS)."""
    n = nps.shape[0]
    f = np.fft.fftshift(np.fft.fftfreq(n))
    rho = np.hypot(f[:, None], f[None, :])
    edges = np.arange(0, 0.5 + 1e-9, 1.0 / n)
    idx = np.digitize(rho.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < len(edges) - 1)
    sums = np.bincount(idx[ok], nps.ravel()[ok], minlength=len(edges) - 1)
    counts = np.bincount(idx[ok], minlength=len(edges) - 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    return centres, sums / np.maximum(counts, 1)


def spectrum_summary(freq: np.ndarray, curve: np.ndarray) -> dict[str, float]:
    """Peak frequency (parabola through the top bin) and mean frequency of a radial NPS."""
    weights = curve * freq  # the 2-D integral's ring area
    k = int(np.argmax(curve))
    peak = float(freq[k])
    if 0 < k < len(curve) - 1:
        a, b, c = curve[k - 1], curve[k], curve[k + 1]
        denom = a - 2 * b + c
        if denom < 0:
            peak += 0.5 * (a - c) / denom * (freq[1] - freq[0])
    return {"peak_cyc_per_px": peak, "mean_cyc_per_px": float((weights * freq).sum() / weights.sum())}


def angular(noise: np.ndarray, body: np.ndarray) -> dict[str, float]:
    """Streak measures of the NPS of the whole body's noise (Hann-tapered at the mask edge)."""
    taper = ndimage.gaussian_filter(body.astype(float), 4.0)
    x = (noise - noise[body].mean()) * taper
    spec = np.fft.fftshift(np.abs(np.fft.fft2(x)) ** 2)
    n0, n1 = spec.shape
    fy = np.fft.fftshift(np.fft.fftfreq(n0))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(n1))[None, :]
    rho = np.hypot(fy, fx)
    ang = np.degrees(np.arctan2(fy, fx)) % 180.0
    band = (rho >= NPS_BAND[0]) & (rho <= NPS_BAND[1])
    sectors = np.array(
        [spec[band & (ang >= a) & (ang < a + 15.0)].mean() for a in np.arange(0.0, 180.0, 15.0)]
    )
    near_v = spec[band & (np.abs(ang - 90.0) < 15.0)].mean()  # horizontal streaks
    near_h = spec[band & ((ang < 15.0) | (ang > 165.0))].mean()  # vertical streaks
    return {
        "anisotropy": float(sectors.max() / sectors.mean()),
        "horizontal_streak_ratio": float(near_v / near_h),
        "sectors": [float(s / sectors.mean()) for s in sectors],
    }


def texture_ratio(image: np.ndarray, mask: np.ndarray) -> float:
    """Adjacent-pixel over 7 x 7 patch noise (the ratio ``filter_sinogram`` documents)."""
    from hybrid.physics.estimate import _local_variances

    patch = math.sqrt(np.median(_local_variances(image, mask, 7)))
    ok = mask[:, 1:] & mask[:, :-1]
    adj = np.median(np.abs(np.diff(image, axis=1)[ok])) / 0.6745 / math.sqrt(2.0)
    return float(adj / patch)


def noise_stats(noise: np.ndarray, nd: np.ndarray, masks: dict, corners: list) -> dict:
    """Level, NPS and streak measures of one noise image."""
    rms = {k: float(np.sqrt(np.mean(noise[m] ** 2))) for k, m in masks.items() if m.sum() > 500}
    freq, curve = radial(nps_2d(noise, corners))
    out = {"rms_hu": rms, "nps": spectrum_summary(freq, curve), "streaks": angular(noise, masks["body"])}
    out["nps"]["freq"] = [float(f) for f in freq]
    out["nps"]["curve"] = [float(c) for c in curve]
    return out


def decomposition(ld: np.ndarray, nd: np.ndarray, soft: np.ndarray) -> dict[str, float]:
    """Median 7 x 7 patch variances of nd, ld and ld - nd in soft tissue (HU^2)."""
    from hybrid.physics.estimate import _local_variances

    v = {k: float(np.median(_local_variances(x, soft, 7))) for k, x in (("nd", nd), ("ld", ld), ("diff", ld - nd))}
    v["insertion_residual"] = (v["ld"] - v["nd"] - v["diff"]) / v["ld"]  # ~0: ld = nd + noise
    v["rescan_residual"] = (v["diff"] - v["ld"] - v["nd"]) / v["diff"]  # ~0: independent scans
    v["diff_over_nd"] = v["diff"] / v["nd"]  # 1/f - 1 = 3 for quantum noise at 25 %
    return v


def simulate(nd: np.ndarray, spacing: float, *, seed: int, kernel: str, **kw) -> np.ndarray:
    from hybrid import Volume
    from hybrid.physics import simulate_low_dose

    vol = Volume(nd[None].astype(np.float32), (1.0, spacing, spacing))
    out = simulate_low_dose(vol, DOSE, rng=np.random.default_rng(seed), kernel=kernel, progress=False, **kw)
    return out.array[0].astype(np.float64)


def hf_ratio(image: np.ndarray, corners: list) -> float:
    """NPS in 0.44-0.50 over NPS in 0.32-0.40 cycles/pixel of the ROIs (the noise texture).

    Works on the ``nd`` image itself: anatomy has little power this close to Nyquist.
    """
    freq, curve = radial(nps_2d(image, corners))
    return float(curve[freq >= 0.44].mean() / curve[(freq >= 0.32) & (freq <= 0.40)].mean())


def choose_kernel(nd: np.ndarray, corners: list, spacing: float, seed: int) -> tuple[str, dict]:
    """The kernel class whose simulated noise NPS shape (:func:`hf_ratio`) is nearest nd's."""
    from hybrid.physics import KERNELS

    target = hf_ratio(nd, corners)
    ratios = {k: hf_ratio(simulate(nd, spacing, seed=seed, kernel=k) - nd, corners) for k in KERNELS}
    best = min(ratios, key=lambda k: abs(math.log(ratios[k] / target)))
    return best, {"nd": target, **ratios}


def run(spacing: float, seed: int, kernel: str | None, sim_kw: dict | None = None) -> dict:
    sim_kw = sim_kw or {}
    results = {"dose_fraction": DOSE, "pixel_spacing_mm_assumed": spacing, "seed": seed, "pairs": {}}
    for i, (name, ld, nd) in enumerate(load_pairs()):
        masks = regions(nd, spacing)
        soft = masks["soft"]
        corners = nps_rois(nd, masks["body"])
        entry = {"n_nps_rois": len(corners), "decomposition": decomposition(ld, nd, soft)}
        entry["sigma_nd_hu"] = math.sqrt(entry["decomposition"]["nd"])
        if kernel is None:
            k, ratios = choose_kernel(nd, corners, spacing, seed + i)
            entry["nps_hf_ratios"] = ratios
        else:
            k = kernel
        entry["kernel"] = k
        sim = simulate(nd, spacing, seed=seed + i, kernel=k, **sim_kw)
        entry["real"] = noise_stats(ld - nd, nd, masks, corners)
        entry["sim"] = noise_stats(sim - nd, nd, masks, corners)
        entry["_images"] = (ld - nd, sim - nd)
        results["pairs"][name] = entry
    return results


def ratios_table(res: dict) -> list[str]:
    rows = [
        "| pair | kernel | region | real RMS (HU) | sim RMS (HU) | sim / real |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, e in res["pairs"].items():
        for reg in ("body", *BANDS, "centre", "periphery", "air"):
            r, s = e["real"]["rms_hu"].get(reg), e["sim"]["rms_hu"].get(reg)
            if r is None or s is None:
                continue
            rows.append(f"| {name} | {e['kernel']} | {reg} | {r:.1f} | {s:.1f} | {s / r:.2f} |")
    return rows


def texture_table(res: dict) -> list[str]:
    rows = [
        "| pair | NPS ROIs | peak real | peak sim | sim/real | mean f real | mean f sim | "
        "anisotropy real | sim | H-streak ratio real | sim |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in res["pairs"].items():
        nr, ns = e["real"]["nps"], e["sim"]["nps"]
        sr, ss = e["real"]["streaks"], e["sim"]["streaks"]
        rows.append(
            f"| {name} | {e['n_nps_rois']} | {nr['peak_cyc_per_px']:.3f} | {ns['peak_cyc_per_px']:.3f} | "
            f"{ns['peak_cyc_per_px'] / nr['peak_cyc_per_px']:.2f} | {nr['mean_cyc_per_px']:.3f} | "
            f"{ns['mean_cyc_per_px']:.3f} | {sr['anisotropy']:.2f} | {ss['anisotropy']:.2f} | "
            f"{sr['horizontal_streak_ratio']:.2f} | {ss['horizontal_streak_ratio']:.2f} |"
        )
    return rows


def figure(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = res["pairs"]
    fig, ax = plt.subplots(len(pairs), 3, figsize=(13, 4.2 * len(pairs)))
    for i, (name, e) in enumerate(pairs.items()):
        real, sim = e["_images"]
        for j, (img, title) in enumerate(((real, "real ld - nd"), (sim, "simulated sim - nd"))):
            ax[i, j].imshow(img, cmap="gray", vmin=-150, vmax=150)
            ax[i, j].set_title(f"{name}: {title} (window ±150 HU)", fontsize=9)
            ax[i, j].axis("off")
        for key, style in (("real", "k-"), ("sim", "r--")):
            n = e[key]["nps"]
            ax[i, 2].plot(n["freq"], n["curve"], style, label=f"{key} (peak {n['peak_cyc_per_px']:.3f})")
        ax[i, 2].set_xlabel("cycles / pixel")
        ax[i, 2].set_ylabel("NPS (HU² px²)")
        ax[i, 2].set_title(f"radial NPS, {e['n_nps_rois']} ROIs {ROI}² in fat/soft tissue", fontsize=9)
        ax[i, 2].legend(fontsize=8)
    fig.suptitle(
        f"25 % dose: real (Mayo 2016, McCollough et al. 2017) vs simulate_low_dose, "
        f"spacing {res['pixel_spacing_mm_assumed']} mm assumed",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def strip_images(res: dict) -> dict:
    out = dict(res)
    out["pairs"] = {k: {kk: vv for kk, vv in v.items() if kk != "_images"} for k, v in res["pairs"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacing", type=float, default=0.7, help="assumed pixel spacing (mm)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernel", default=None, help="kernel class (default: nearest nd NPS shape)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tag", default="simulator_check")
    args = ap.parse_args()
    res = run(args.spacing, args.seed, args.kernel)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(strip_images(res), indent=1) + "\n")
    figure(res, args.out / f"{args.tag}.png")
    print("\n".join(ratios_table(res)))
    print()
    print("\n".join(texture_table(res)))
    for name, e in res["pairs"].items():
        print(name, "decomposition", {k: round(v, 3) for k, v in e["decomposition"].items()},
              "nps hf ratios", e.get("nps_hf_ratios"))


if __name__ == "__main__":
    main()
