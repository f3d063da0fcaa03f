"""Issue 17, idea 3, the follow-ups: a guiding prior, with and without a change detector.

    python experiments/dictionary_prior_followups.py [--ct ../shared/data/ct] [--out experiments/results/dictionary_prior_followups]

The prior guides, as in ``dictionary_prior.py`` (ndiNLM: weights from the prior, values
from the current scan).  Two guides are compared:

* ``guided``: the prior itself (``dictionary_prior.guided_nlm``);
* ``guided+change``: a change detector first.  Where the current scan's CNN output and
  the prior differ, after a Gaussian of 1 pixel, by more than ``tau`` HU, the guide is the
  CNN output (the current anatomy); elsewhere the prior.  So a new nodule is averaged
  with what the *current* scan says is alike, not with the lung the prior had there.

Each is shown alone and in its best constant blend with the shipped CNN (w chosen on
these slices: an upper bound of what a blender could get).  Where a nodule changed, the
contrast and diameter of the result at the nodule (``dictionary_prior_nodule``'s
measures, on the best blend) are given against the current truth's.

Phantom follow-ups (patient seed 99, never trained on; 2 mm slices of 512 x 512; three
slices through the nodule site; the current scan at 2 % dose, the prior at normal dose;
RMSE against the noise-free current truth): a new 8 mm nodule; one grown from 5 to 8 mm;
one that has gone (8 mm in the prior, none now); the patient shifted by 4 mm and rotated
by 3 degrees; another breathing phase (approximated by an affine stretch of 6 % in z and
-3 % front to back: not a real breathing deformation).

Real proxies (RMSE against the normal-dose slice, whose own noise is a floor): the
neighbouring slice of ``pancreas-ct-cb-001`` and ``itkelastix-thorax`` (the proxies of
``dictionary_prior.py``), a slice 40 mm away in itkelastix-thorax (a prior that does not
match), and the COVID-19 patients' other date (an unregistered earlier scan of the same
patient, at whatever level it was taken).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dictionary_ideas import _rmse, blend_score, write_results  # noqa: E402
from dictionary_prior import guided_nlm  # noqa: E402
from dictionary_prior_nodule import _nodule_metrics  # noqa: E402

SEED, DOSE = 99, 0.02
H_VALUES = (40.0, 80.0)
TAUS = (60.0, 120.0)


def change_guide(cnn: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """The prior where the current CNN output agrees with it (within ``tau`` HU after a
    1-pixel Gaussian), the CNN output where it does not."""
    diff = ndimage.gaussian_filter(cnn.astype(np.float32) - prior, 1.0)
    return np.where(np.abs(diff) > tau, cnn, prior).astype(np.float32)


def methods(cur: np.ndarray, prior: np.ndarray, cnn: np.ndarray) -> dict[str, np.ndarray]:
    """Every guided variant of one stack (z, y, x), current values, prior or changed guide."""
    out = {}
    for h in H_VALUES:
        out[f"guided h={h:g}"] = np.stack([guided_nlm(c, p, h) for c, p in zip(cur, prior)])
        for tau in TAUS:
            out[f"guided+change h={h:g} tau={tau:g}"] = np.stack(
                [guided_nlm(c, change_guide(o, p, tau), h) for c, p, o in zip(cur, prior, cnn)])
    return out


def score(cur, prior, ref, body, cnn_img, nodule=None) -> dict:
    """Input, CNN and every variant: RMSE, best blend, and the nodule's measures."""
    row = {"input": _rmse(cur, ref, body), "cnn": _rmse(cnn_img, ref, body),
           "prior_vs_reference_hu": _rmse(prior, ref, body), "variants": {}}
    if nodule is not None:
        row["nodule_truth"] = _nodule_metrics(ref[1], *nodule)
        row["nodule_cnn"] = _nodule_metrics(cnn_img[1], *nodule)
    for name, img in methods(cur, prior, cnn_img).items():
        img = np.where(body, img, cur)
        v = blend_score(cnn_img, img, ref, body, row["cnn"])
        if nodule is not None:
            w = v["best_w"]
            v["nodule"] = _nodule_metrics(((1 - w) * cnn_img + w * img)[1], *nodule)
        row["variants"][name] = v
    return row


def _sphere(shape, spacing, centre, diameter_mm):
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    dz, dy, dx = spacing
    return (((zz - centre[0]) * dz) ** 2 + ((yy - centre[1]) * dy) ** 2
            + ((xx - centre[2]) * dx) ** 2 <= (diameter_mm / 2) ** 2)


def _affine(truth, *, zoom=(1.0, 1.0, 1.0), shift_px=(0.0, 0.0, 0.0), angle_deg=0.0):
    """The truth moved about its centre (air where nothing maps)."""
    c = (np.array(truth.shape) - 1) / 2
    a = np.deg2rad(angle_deg)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    m = rot @ np.diag(1 / np.asarray(zoom))
    offset = c - m @ (c + np.asarray(shift_px))
    return ndimage.affine_transform(truth, m, offset=offset, order=1, cval=-1000.0).astype(np.float32)


def phantom_rows(cnn) -> dict[str, dict]:
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(SEED, shape=(16, 512, 512), n_nodules=0, slice_mm=2.0)
    n = ph.shape[0]
    z = int(np.argmax(ph.lung_mask.reshape(n, -1).sum(1)))
    depth = ndimage.distance_transform_edt(ph.lung_mask[z], sampling=ph.spacing[1:])
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    z = int(np.clip(z, 1, n - 2))
    zs = slice(z - 1, z + 2)

    def with_nodule(truth, d_mm):
        return np.where(_sphere(truth.shape, ph.spacing, (z, cy, cx), d_mm), 40.0, truth)

    def scan(truth, dose, rng):
        return scan_phantom(dataclasses.replace(ph, truth=truth.astype(np.float32)),
                            dose_fraction=dose, rng=rng).array[zs]

    base = ph.truth
    dy = ph.spacing[1]
    scenarios = {
        "new nodule (8 mm)": (with_nodule(base, 8.0), base),
        "grown nodule (5 -> 8 mm)": (with_nodule(base, 8.0), with_nodule(base, 5.0)),
        "resolved nodule (8 mm -> none)": (base, with_nodule(base, 8.0)),
        "shifted 4 mm, rotated 3 deg": (base, _affine(base, shift_px=(0, 4 / dy, 0),
                                                      angle_deg=3.0)),
        "other breathing phase (affine)": (base, _affine(base, zoom=(1.06, 0.97, 1.0))),
    }
    body, lung = ph.body_mask[zs], ph.lung_mask[zs]
    ring_lung = lung & ~_sphere(base.shape, ph.spacing, (z, cy, cx), 8.0)[zs]
    rows = {}
    for name, (current, prior_truth) in scenarios.items():
        cur = scan(current, DOSE, 2)
        prior = scan(prior_truth, 1.0, 1)
        out = cnn.propose(cur, lung_mask=lung, body_mask=body).image
        nodule = ((cy, cx), dy, ring_lung[1]) if "nodule" in name else None
        rows[name] = {"kind": "phantom", "ref_own_noise_hu": 0.0,
                      **score(cur, prior, current[zs], body, out, nodule)}
        print(name, {k: v for k, v in rows[name].items() if k != "variants"}, flush=True)
    return rows


def real_rows(cnn, root: Path) -> dict[str, dict]:
    import hybrid
    from hybrid.lung import body_mask, segment
    from hybrid.physics import estimate_noise_hu, kernel_for, simulate_low_dose

    def one(nd_slices: np.ndarray, prior: np.ndarray, spacing, kernel) -> dict:
        from hybrid.volume import Volume

        nd = Volume(nd_slices.astype(np.float32), spacing)
        cur = simulate_low_dose(nd, DOSE, rng=3, kernel=kernel, progress=False).array
        body = body_mask(nd.array, spacing=spacing)
        lung = segment(cur, spacing=spacing, body=body)
        out = cnn.propose(cur, lung_mask=lung, body_mask=body).image
        return {"kind": "real", "ref_own_noise_hu": float(estimate_noise_hu(nd.array, mask=body)),
                **score(cur, prior.astype(np.float32), nd.array, body, out)}

    rows = {}
    for name, gap in (("pancreas-ct-cb-001", 1), ("itkelastix-thorax", 1), ("itkelastix-thorax", 20)):
        vol = hybrid.load(root / name)
        lungish = ((vol.array > -950) & (vol.array < -500)).reshape(len(vol), -1).sum(1)
        mid = int(np.clip(np.argmax(lungish), 2, len(vol) - gap - 4))
        cur_idx = np.array([mid, mid + 2])
        label = (f"{name}, neighbouring slice ({gap * vol.spacing[0]:.0f} mm)" if gap == 1 else
                 f"{name}, slice {gap * vol.spacing[0]:.0f} mm away (no match)")
        rows[label] = one(vol.array[cur_idx], vol.array[cur_idx + gap], vol.spacing,
                          kernel_for(vol.provenance.kernel))
        print(label, {k: v for k, v in rows[label].items() if k != "variants"}, flush=True)
    covid = root / "covid19-ny-sbu"
    for patient in sorted(p for p in covid.iterdir() if p.is_dir()):
        dates = sorted(d for d in patient.iterdir() if d.is_dir())
        if len(dates) < 2:
            continue
        earlier, later = hybrid.load(dates[0]), hybrid.load(dates[-1])
        if earlier.array.shape[1:] != later.array.shape[1:]:
            continue
        label = f"covid19-ny-sbu {patient.name}, its other date"
        rows[label] = one(later.array[:1], earlier.array[:1], later.spacing,
                          kernel_for(later.provenance.kernel))
        print(label, {k: v for k, v in rows[label].items() if k != "variants"}, flush=True)
    return rows


def _cell(v: dict) -> str:
    s = f"{v['alone']:.1f} / {v['blend_at_best_w']:.1f} (w {v['best_w']:.2f}, {v['gain_over_cnn_pct']:+.1f} %)"
    if "nodule" in v:
        s += f"; nodule {v['nodule']['contrast_hu']:.0f} HU, {v['nodule']['diameter_mm']:.1f} mm"
    return s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("experiments/results/dictionary_prior_followups"))
    args = p.parse_args()
    from hybrid.cnn.infer import CNNPair
    from hybrid.data import default_ct_root
    from hybrid.pipeline import default_asset_paths

    cnn = CNNPair.load(default_asset_paths()["cnn"])
    rows = phantom_rows(cnn)
    rows.update(real_rows(cnn, args.ct or default_ct_root()))
    names = list(next(iter(rows.values()))["variants"])
    lines = ["| case (reference own noise) | prior vs reference | input | CNN | "
             + " | ".join(names) + " |", "|---|---:|---:|---:|" + "---|" * len(names)]
    for label, r in rows.items():
        cnn_cell = f"{r['cnn']:.1f}"
        if "nodule_truth" in r:
            t, c = r["nodule_truth"], r["nodule_cnn"]
            cnn_cell += (f"; nodule {c['contrast_hu']:.0f} HU, {c['diameter_mm']:.1f} mm "
                         f"(truth {t['contrast_hu']:.0f} HU, {t['diameter_mm']:.1f} mm)")
        lines.append(f"| {label} ({r['ref_own_noise_hu']:.0f} HU) | {r['prior_vs_reference_hu']:.1f} | "
                     f"{r['input']:.1f} | {cnn_cell} | "
                     + " | ".join(_cell(r["variants"][n]) for n in names) + " |")
    write_results(args.out, {"seed": SEED, "dose": DOSE, "rows": rows},
                  "A guiding prior on follow-ups, with and without a change detector (issue 17), "
                  "body RMSE in HU at 2 % dose", "dictionary_prior_followups.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
