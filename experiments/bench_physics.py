"""Benchmark of the projector options and of the dose simulation (not a test).

Prints the time per 512 x 512 slice (360 views over 180 degrees) of:

- hybrid.physics.Projector (scipy sparse strip-integral matrix, 8-fold symmetry):
  A, A_adjoint, fbp, and the one-off matrix build;
- scikit-image radon / iradon (always installed);
- astra-toolbox CPU projectors "linear" and "strip" (only if ``import astra``
  works; ``pip install astra-toolbox`` to include them);
- hybrid.physics.scan and hybrid.physics.simulate_low_dose per slice.

Run: ``.venv/bin/python experiments/bench_physics.py [--size 512] [--views 360]``.
Each timing is the best of ``--repeat`` runs (default 3).  Keep the machine
otherwise idle; numbers are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def chest_phantom(n: int, pixel_mm: float) -> np.ndarray:
    """32 x 22 cm soft-tissue ellipse with two lungs and a spine, in HU."""
    yy, xx = (np.mgrid[:n, :n] - (n - 1) / 2) * pixel_mm
    img = np.full((n, n), -1000.0, np.float32)
    img[(xx / 160) ** 2 + (yy / 110) ** 2 < 1] = 40.0
    img[((np.abs(xx) - 70) / 55) ** 2 + ((yy + 5) / 80) ** 2 < 1] = -850.0
    img[(xx / 15) ** 2 + ((yy - 80) / 15) ** 2 < 1] = 700.0
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--views", type=int, default=360)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, nv, rep = args.size, args.views, args.repeat

    from hybrid import physics

    pixel_mm = 0.8
    img_hu = chest_phantom(n, pixel_mm)
    mu = physics.hu_to_mu(img_hu)
    rows = []

    proj = physics.Projector((n, n), pixel_size_mm=pixel_mm, n_views=nv)
    t0 = time.perf_counter()
    proj._matrix()
    build = time.perf_counter() - t0
    sino = proj.A(mu)
    rows.append(("hybrid.physics Projector: matrix build (once)", build))
    rows.append(("hybrid.physics Projector: A", best_of(lambda: proj.A(mu), rep)))
    rows.append(("hybrid.physics Projector: A_adjoint", best_of(lambda: proj.A_adjoint(sino), rep)))
    rows.append(("hybrid.physics Projector: fbp", best_of(lambda: proj.fbp(sino), rep)))
    rows.append(
        (
            "hybrid.physics Projector: A, 2 slices batched (per slice)",
            best_of(lambda: proj.A(np.stack([mu, mu])), rep) / 2,
        )
    )
    print(f"adjointness (relative error): {proj.adjointness_test(np.random.default_rng(0)):.2e}")

    from skimage.transform import iradon, radon

    theta = np.degrees(proj.angles)
    sk_sino = radon(mu, theta, circle=False)
    rows.append(("scikit-image radon", best_of(lambda: radon(mu, theta, circle=False), rep)))
    rows.append(
        (
            "scikit-image iradon (hann)",
            best_of(
                lambda: iradon(sk_sino, theta, output_size=n, circle=False, filter_name="hann"), rep
            ),
        )
    )

    try:
        import astra
    except ImportError:
        print("astra-toolbox not installed: skipped (pip install astra-toolbox to compare)")
    else:
        vg = astra.create_vol_geom(n, n)
        pg = astra.create_proj_geom("parallel", 1.0, proj.n_det, proj.angles)
        for kind in ("linear", "strip"):
            pid = astra.create_projector(kind, pg, vg)
            op = astra.OpTomo(pid)
            s = op.FP(mu)
            rows.append(
                (
                    f"astra-toolbox {astra.__version__} CPU {kind}: FP",
                    best_of(lambda op=op: op.FP(mu), rep),
                )
            )
            rows.append(
                (
                    f"astra-toolbox {astra.__version__} CPU {kind}: BP",
                    best_of(lambda op=op, s=s: op.BP(s), rep),
                )
            )
            rows.append(
                (
                    f"astra-toolbox {astra.__version__} CPU {kind}: FBP",
                    best_of(lambda op=op, s=s: op.reconstruct("FBP", s), rep),
                )
            )
            astra.projector.delete(pid)

    rng = np.random.default_rng(0)
    rows.append(
        (
            "hybrid.physics.scan (f=0.02), per slice",
            best_of(
                lambda: physics.scan(
                    img_hu, dose_fraction=0.02, rng=rng, pixel_size_mm=pixel_mm, n_views=nv
                ),
                rep,
            ),
        )
    )
    noisy = img_hu + rng.normal(0, 10, img_hu.shape).astype(np.float32)
    vol = np.stack([noisy] * 4)
    rows.append(
        (
            "hybrid.physics.simulate_low_dose (f=0.02, exposure matched), per slice",
            best_of(
                lambda: physics.simulate_low_dose(
                    vol, 0.02, rng=rng, pixel_size_mm=pixel_mm, n_views=nv, progress=False
                ),
                rep,
            )
            / len(vol),
        )
    )
    rows.append(
        (
            "hybrid.physics.simulate_low_dose (f=0.02, fixed i0), per slice",
            best_of(
                lambda: physics.simulate_low_dose(
                    vol,
                    0.02,
                    rng=rng,
                    i0=physics.DEFAULT_I0,
                    pixel_size_mm=pixel_mm,
                    n_views=nv,
                    progress=False,
                ),
                rep,
            )
            / len(vol),
        )
    )

    print(f"\n{n} x {n} pixels, {nv} views, best of {rep}:")
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"  {name:<{width}}  {seconds:7.3f} s")


if __name__ == "__main__":
    main()
