"""Lower-dose simulation of a real normal-dose scan by sinogram-domain noise insertion."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hybrid.physics._slices import _as_rng, _batches, _progress, _unpack
from hybrid.physics.estimate import (
    SOFT_TISSUE_HU,
    _local_variances,
    _soft_tissue_mask,
    estimate_noise_hu,
)
from hybrid.physics.hu import MU_WATER_PER_MM, hu_to_mu
from hybrid.physics.kernels import _check_kernel, kernel_for
from hybrid.physics.noise import ELECTRONIC_NOISE_COUNTS, ULD_DOSE_FRACTION, NoiseModel, _check_dose
from hybrid.physics.projector import DEFAULT_N_VIEWS, Projector

__all__ = ["simulate_low_dose"]


def simulate_low_dose(
    volume: Any,
    dose_fraction: float = ULD_DOSE_FRACTION,
    *,
    rng: np.random.Generator | int,
    i0: float | None = None,
    kernel: str | None = None,
    reference_noise_hu: float | None = None,
    electronic_noise: float = ELECTRONIC_NOISE_COUNTS,
    pixel_size_mm: float | None = None,
    resolution_fwhm_mm: float | None = None,
    n_views: int = DEFAULT_N_VIEWS,
    progress: bool = True,
) -> Any:
    """Simulate a lower-dose scan from a real normal-dose scan by noise insertion.

    The real image already carries normal-dose noise, so only the *extra* noise
    of the lower dose is added: per slice the image is re-projected to line
    integrals ``p``, zero-mean Gaussian noise with the extra variance per ray

        ``var(p) = exp(p) / I0 * (1/f - 1) + sigma_e**2 * exp(2p) / I0**2 * (1/f**2 - 1)``

    is drawn, reconstructed alone by FBP (linear) and added to the image.  This
    is the projection-domain noise insertion of Yu et al., "Development and
    validation of a practical lower-dose-simulation tool for optimizing
    computed tomography scan protocols", J Comput Assist Tomogr 36(4):477-487,
    2012, with the electronic-noise term of Zeng et al., "A simple low-dose
    x-ray CT simulation from high-dose scan", IEEE Trans Nucl Sci
    62(5):2226-2233, 2015.  Noise variance grows with ``exp(p)``, so long paths
    (shoulders, lateral chest) produce streaks.

    Parameters
    ----------
    volume : Volume or ndarray of shape (y, x) or (z, y, x)
        Normal-dose image in HU.  Values below -1000 HU (padding outside the
        field of view) are treated as air.
    dose_fraction : float, optional
        Target dose relative to the source, in (0, 1] (default 0.02).
    rng : numpy.random.Generator or int
        Random source (required).  Slice ``k`` uses the ``k``-th child of
        ``rng.spawn(n_slices)``: a given seed gives the same result whatever
        the batching.
    i0 : float or None, optional
        Exposure of the source in incident photons per ray.  ``None``
        (default): matched to the source's own noise, slice by slice -- I0 is
        chosen so that the normal-dose noise this model predicts in the
        slice's soft tissue (0..100 HU patches, :func:`estimate_noise_hu`)
        equals the noise measured there in the source (or
        ``reference_noise_hu``).  The added noise is then
        ``sigma * sqrt(1/f - 1)`` plus the electronic term, and the result has
        about ``sigma / sqrt(f)``: a 10 HU slice at f = 0.02 gets ~70 HU of
        extra noise, ~71 HU in total.  Since clinical normal-dose scans use
        tube-current modulation (noise similar across patient sizes and along
        z), so does the simulated low-dose scan; the exposure is also
        modulated over the views as those scanners do, in proportion to
        ``exp(max_p(view) / 2)`` (the square root of the view's largest
        attenuation, the noise-optimal rule of Gies et al., Med Phys
        26(11):2235, 1999), so lateral views get more photons and long lateral
        paths fewer streaks.  A number instead: a fixed exposure (e.g.
        :data:`DEFAULT_I0`) in every view, as without exposure control: the
        noise then grows with patient size (``exp(p)``).
    kernel : {"smooth", "standard", "sharp", "ramp"} or None, optional
        Kernel for the noise reconstruction; pick the one whose noise texture
        matches the source's.  ``None``: from the Volume's DICOM kernel name
        via :func:`kernel_for` ("standard" for arrays).
    reference_noise_hu : float or None, optional
        With ``i0=None``: the normal-dose soft-tissue noise (HU) to calibrate
        every slice to (a constant-noise exposure control).  ``None``
        (default): each slice's own measured noise; slices with too little
        soft tissue use the whole input's estimate (10 HU, with a warning,
        if that fails too).
    electronic_noise : float, optional
        Electronic noise std in counts per ray (default sqrt(10)).
    pixel_size_mm : float, optional
        In-plane pixel size (default: the Volume's spacing, 0.8 mm for arrays).
    resolution_fwhm_mm : float or None, optional
        If given, blur each slice with a Gaussian of this FWHM (mm) before
        adding noise, a crude model of the lower resolution of ultra-low-dose
        protocols.  It also lowers the source's own noise.
    n_views : int, optional
        Views over 180 degrees for the noise simulation (default 360).
    progress : bool, optional
        Show a tqdm progress bar over slices (default True).

    Returns
    -------
    Volume or ndarray
        Same kind and shape as the input, float32 HU.

    Notes
    -----
    Cost: one projection and one FBP of two noise sinograms per slice (two
    slices per sparse product); the first call for an image size also builds
    the projector's matrix.  Timings: ``experiments/results/bench_physics.md``.

    On three mid-chest slices of the A0001 kernel-B series (soft-tissue
    noise 8.0 HU), f = 0.02 gives 57.1 HU against 8.0 / sqrt(0.02) = 56.6 HU
    (56.5 HU without electronic noise), and the mean HU of the body moves by
    0.1 HU.  The inserted noise's texture (adjacent-pixel / patch noise ratio
    0.74) is close to the source's (0.79).
    """
    f = _check_dose(dose_fraction, at_most_one=True)
    gen = _as_rng(rng, where="simulate_low_dose")
    kernel = _check_kernel(_source_kernel(volume) if kernel is None else kernel)
    _check_noise_options(i0, electronic_noise)
    vol, px, wrap = _unpack(volume, pixel_size_mm, where="simulate_low_dose")
    _check_reference_and_resolution(reference_noise_hu, resolution_fwhm_mm)
    step = f"hybrid.physics.simulate_low_dose dose_fraction={f:g} kernel={kernel}"
    if resolution_fwhm_mm:
        step += f" resolution_fwhm_mm={resolution_fwhm_mm:g}"
    if f == 1.0 and not resolution_fwhm_mm:
        return wrap(vol.copy(), step)

    proj = Projector(vol.shape[1:], pixel_size_mm=px, n_views=n_views)
    children = gen.spawn(vol.shape[0])
    out = np.empty(vol.shape, np.float32)
    sigma_px = None
    if resolution_fwhm_mm:
        sigma_px = float(resolution_fwhm_mm) / (2.0 * math.sqrt(2.0 * math.log(2.0))) / px
    fallback_noise = _VolumeNoise(vol)  # volume-level fallback, measured only if needed
    bar = _progress(total=vol.shape[0], enabled=progress, desc="low dose")
    for start, stop in _batches(vol.shape[0], _SLICES_PER_PRODUCT):
        srcs = _blur(vol[start:stop], sigma_px)
        etas = _unit_noise_images(
            proj, srcs, children[start:stop], kernel=kernel, modulate=i0 is None
        )
        for j, src in enumerate(srcs):
            eta_q, eta_e = etas[2 * j], etas[2 * j + 1]
            if i0 is None:
                # Exposure matched to the source: the model's normal-dose noise in
                # this slice's soft tissue, measured like the source's, is
                # sq / sqrt(I0).
                target, sq = _calibration(src, eta_q, reference_noise_hu)
                if target is None:
                    target = fallback_noise()
                i0_k = (sq / target) ** 2
            else:
                i0_k = float(i0)
            noise = eta_q * math.sqrt((1.0 / f - 1.0) / i0_k)
            if electronic_noise > 0:
                noise += eta_e * (electronic_noise / i0_k * math.sqrt(1.0 / f**2 - 1.0))
            out[start + j] = src + noise
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return wrap(out, step)


#: Slices per sparse product: the projector's matrix is read once for both.
_SLICES_PER_PRODUCT = 2


def _source_kernel(volume: Any) -> str:
    """The kernel class of a Volume's DICOM kernel name ("standard" for arrays)."""
    from hybrid.volume import Volume

    return kernel_for(volume.provenance.kernel) if isinstance(volume, Volume) else "standard"


def _check_noise_options(i0: float | None, electronic_noise: float) -> None:
    if i0 is not None:
        NoiseModel(i0=i0, electronic_noise=electronic_noise)  # validates
    if not (np.isfinite(electronic_noise) and electronic_noise >= 0):
        raise ValueError(
            f"Expected electronic_noise (std in counts) >= 0; received {electronic_noise!r}."
        )


def _check_reference_and_resolution(
    reference_noise_hu: float | None, resolution_fwhm_mm: float | None
) -> None:
    if reference_noise_hu is not None and not (
        np.isfinite(reference_noise_hu) and reference_noise_hu > 0
    ):
        raise ValueError(
            f"Expected reference_noise_hu > 0 (HU), or None to measure it; "
            f"received {reference_noise_hu!r}."
        )
    if resolution_fwhm_mm is not None and not (
        np.isfinite(resolution_fwhm_mm) and resolution_fwhm_mm >= 0
    ):
        raise ValueError(
            f"Expected resolution_fwhm_mm >= 0 (mm) or None; received {resolution_fwhm_mm!r}."
        )


class _VolumeNoise:
    """The whole source volume's noise (HU), measured on first call only.

    Used for slices with too little soft tissue to measure their own; 10 HU,
    with a warning, if the volume has too little as well.
    """

    def __init__(self, vol: np.ndarray) -> None:
        self._vol = vol
        self._value: float | None = None

    def __call__(self) -> float:
        if self._value is None:
            try:
                self._value = estimate_noise_hu(self._vol)
            except ValueError:
                import warnings

                # stacklevel 3: the caller of simulate_low_dose
                warnings.warn(
                    "simulate_low_dose: too little soft tissue (0..100 HU) to measure the "
                    "source noise; assuming 10 HU. Pass reference_noise_hu= to set it.",
                    stacklevel=3,
                )
                self._value = 10.0
        return self._value


def _blur(srcs: np.ndarray, sigma_px: float | None) -> np.ndarray:
    """The slices blurred with a Gaussian of ``sigma_px`` pixels (unchanged if None/0)."""
    if not sigma_px:
        return srcs
    from scipy import ndimage

    return np.stack([ndimage.gaussian_filter(s, sigma_px) for s in srcs])


def _unit_noise_images(
    proj: Projector, srcs: np.ndarray, children: list, *, kernel: str, modulate: bool = False
) -> np.ndarray:
    """Reconstructed quantum and electronic noise images (HU) for I0 = 1, f factors left out.

    Returns ``(2 * len(srcs), ny, nx)`` float64: for slice ``j``, ``[2j]`` the
    quantum part and ``[2j + 1]`` the electronic part, both drawn from
    ``children[j]``; both are linear in the noise, so they are reconstructed
    together and scaled by the caller.  ``modulate``: the exposure of each
    view is ``exp(max_p / 2)`` times a constant (mean 1 over the views), the
    angular tube-current modulation of :func:`simulate_low_dose`.
    """
    p_all = proj.A(hu_to_mu(np.maximum(srcs, -1000.0))).astype(np.float64)
    np.maximum(p_all, 0.0, out=p_all)
    pairs = []
    for j, p in enumerate(p_all):
        ep = np.exp(p)
        if modulate:
            exposure = np.exp(0.5 * (p.max(axis=1, keepdims=True) - p.max()))
            ep /= exposure / exposure.mean()
        child = children[j]
        z1 = child.standard_normal(p.shape)
        z2 = child.standard_normal(p.shape)
        pairs += [z1 * np.sqrt(ep), z2 * ep]
    etas = proj.fbp(np.stack(pairs).astype(np.float32), kernel=kernel).astype(np.float64)
    etas *= 1000.0 / MU_WATER_PER_MM
    return etas


def _calibration(
    source: np.ndarray, noise_image: np.ndarray, reference_noise_hu: float | None
) -> tuple[float | None, float]:
    """(target normal-dose noise, noise of the unit-I0 noise image), same patches.

    The target is ``reference_noise_hu`` or, if None, the source slice's own
    noise (None where the slice has too little soft tissue).
    """
    mask = _soft_tissue_mask(source, SOFT_TISSUE_HU)
    v_noise = _local_variances(noise_image, mask, 7)
    target = reference_noise_hu
    if v_noise.size >= 200:
        if target is None:
            target = float(np.sqrt(np.median(_local_variances(source, mask, 7))))
        return target, float(np.sqrt(np.median(v_noise)))
    # Little soft tissue (lung apex, outside the body): measure the model's
    # noise in the body instead and leave the target to the caller.
    for region in (_soft_tissue_mask(source, (-950.0, 3000.0)), np.ones(source.shape, bool)):
        v = _local_variances(noise_image, region, 7)
        if v.size >= 200:
            return target, float(np.sqrt(np.median(v)))
    return target, float(np.std(noise_image))
