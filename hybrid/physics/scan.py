"""Scan a noise-free HU image: project, add photon noise at a dose, reconstruct."""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid.physics._slices import _as_rng, _batches, _progress, _unpack
from hybrid.physics.hu import hu_to_mu, mu_to_hu
from hybrid.physics.kernels import _check_kernel
from hybrid.physics.noise import DEFAULT_I0, ELECTRONIC_NOISE_COUNTS, NoiseModel, _check_dose
from hybrid.physics.projector import DEFAULT_N_VIEWS, Projector

__all__ = ["scan"]


def scan(
    truth_hu: Any,
    *,
    dose_fraction: float = 1.0,
    i0: float = DEFAULT_I0,
    kernel: str = "standard",
    rng: np.random.Generator | int,
    pixel_size_mm: float | None = None,
    electronic_noise: float = ELECTRONIC_NOISE_COUNTS,
    n_views: int = DEFAULT_N_VIEWS,
    progress: bool = False,
) -> Any:
    """Scan a noise-free HU image: project, add photon noise at a dose, reconstruct.

    For phantoms: calling it twice with dose fractions 1 and 0.02 gives a
    normal-dose and an ultra-low-dose image of the same object "as if scanned
    twice".

    Parameters
    ----------
    truth_hu : ndarray of shape (y, x) or (z, y, x), or Volume
        Noise-free attenuation map in HU.  Values below -1000 HU are treated
        as air.  Slices are scanned independently.
    dose_fraction : float, optional
        Dose relative to normal dose (1.0); 0.02 for ultra-low dose.
    i0 : float, optional
        Incident photons per ray at normal dose (default 5e5, see
        :data:`DEFAULT_I0`); the scan uses ``dose_fraction * i0``.
    kernel : {"smooth", "standard", "sharp", "ramp"}, optional
        Reconstruction kernel (see :meth:`Projector.filter_sinogram`).
    rng : numpy.random.Generator or int
        Random source (required, for reproducibility).  Slice ``k`` uses the
        ``k``-th child of ``rng.spawn(n_slices)``, so results do not depend on
        how slices are batched.
    pixel_size_mm : float, optional
        In-plane pixel size in mm (default: the Volume's spacing, or
        :data:`DEFAULT_PIXEL_SIZE_MM` = 0.8 mm for arrays).  Line integrals,
        hence noise, depend on it.
    electronic_noise : float, optional
        Electronic noise std in counts per ray (default sqrt(10)).
    n_views : int, optional
        Views over 180 degrees (multiple of 4; default 360).
    progress : bool, optional
        Show a tqdm progress bar over slices.

    Returns
    -------
    ndarray (float32, same shape) or Volume
        The reconstructed image in HU.  With the defaults the noise (std) in
        the centre of a 16 cm water cylinder is 10 HU at normal dose and 75 HU
        at ``dose_fraction=0.02``; in the soft tissue of a 32 x 22 cm chest
        phantom with lungs 12 and 73 HU ("smooth": 5 and 35 HU, "sharp": 69
        and 390 HU).

    Notes
    -----
    Per ray: ``p = A(mu)``, ``N ~ Poisson(f i0 exp(-p)) + Normal(0, sigma_e^2)``,
    ``p_hat = log(f i0 / max(N, 1))``, image = ``fbp(p_hat)`` converted to HU
    (see :class:`NoiseModel`).  Photon starvation along long paths gives
    streaks and a small upward bias of ``p_hat`` at very low counts, as on
    a real scanner without pre-log correction.
    """
    f = _check_dose(dose_fraction)
    _check_kernel(kernel)
    gen = _as_rng(rng, where="scan")
    model = NoiseModel(i0=i0, electronic_noise=electronic_noise)
    vol, px, wrap = _unpack(truth_hu, pixel_size_mm, where="scan")
    proj = Projector(vol.shape[1:], pixel_size_mm=px, n_views=n_views)
    children = gen.spawn(vol.shape[0])
    out = np.empty(vol.shape, np.float32)
    batch = 4  # slices per sparse product
    bar = _progress(total=vol.shape[0], enabled=progress, desc="scan")
    for start, stop in _batches(vol.shape[0], batch):
        mu = hu_to_mu(np.maximum(vol[start:stop], -1000.0))
        p = proj.A(mu)
        noisy = np.stack(
            [model.sample_line_integrals(p[k], f, children[start + k]) for k in range(stop - start)]
        )
        out[start:stop] = mu_to_hu(proj.fbp(noisy, kernel=kernel))
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return wrap(out, f"hybrid.physics.scan dose_fraction={f:g} kernel={kernel}")
