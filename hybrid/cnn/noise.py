"""Noise level and noise texture of a CT image, estimated from the image alone (NumPy only).

A user does not know the dose fraction of a scan, nor always its reconstruction kernel,
so the noise-aware CNNs (``CNNConfig(noise_input=True)``) are conditioned on what
:func:`estimate_noise` measures on the input itself, slice by slice:

* ``sigma_hu``: the noise standard deviation in soft tissue, the median over the
  7 x 7 patches lying wholly in 0..100 HU tissue of the patch variance
  (:func:`hybrid.physics.estimate_noise_hu`, which explains the choice);
* ``texture``: the ratio of the noise of adjacent-pixel differences to the noise
  itself, ``sqrt(median var(x[i] - x[i+1]) / 2) / sigma``, measured on the same
  patches.  It is ``sqrt(1 - rho)`` with ``rho`` the correlation of neighbouring
  pixels' noise: about 1 for white noise, smaller for a smooth kernel (noise
  correlated over several pixels), larger than a standard kernel's for a sharp one
  (high frequencies boosted);
* ``kernel_class``: "smooth", "standard" or "sharp" from ``texture`` by the
  thresholds :data:`TEXTURE_THRESHOLDS` (measured on simulated noise of the three
  kernels of :mod:`hybrid.physics.kernels`).

The soft tissue is selected on the image smoothed by 2 pixels, or by 5 where that finds
too little (very noisy slices).  Slices without enough soft tissue (air, lungs only)
get the median of the volume's
other slices (or, for a volume without any, :data:`FALLBACK_SIGMA_HU`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "NoiseEstimate",
    "estimate_noise",
    "slice_noise_variances",
    "kernel_class_of",
    "TEXTURE_THRESHOLDS",
    "FALLBACK_SIGMA_HU",
    "KERNEL_CODES",
    "NORMAL_DOSE_SIGMA_HU",
    "noise_ratio",
    "ratio_of",
    "thickness_factor",
    "MAX_SLICE_MM",
    "reading",
    "DOSE_READING_BOUNDS",
    "check_kernel_class",
]

#: Texture ratio below the first value: "smooth"; above the second: "sharp".
TEXTURE_THRESHOLDS = (0.55, 0.95)
#: sigma of a volume without soft tissue in any slice (a typical normal-dose chest scan).
FALLBACK_SIGMA_HU = 15.0
#: The value of each kernel class in the model's kernel channel.
KERNEL_CODES = {"smooth": 0.0, "standard": 0.5, "sharp": 1.0}
_WINDOW = 7
_MIN_PATCHES = 200
#: Gaussian smoothing (pixels) of the soft-tissue selection, tried in turn.
_SMOOTHING = (2.0, 5.0)
#: Their truncation (in standard deviations), and how far the widest reaches (scipy's
#: radius, plus one): the soft tissue inside a body mask, computed on the mask's box grown
#: by this, is exact.
_TRUNCATE = 4.0
_GAUSS_REACH = int(_TRUNCATE * max(_SMOOTHING) + 0.5) + 1


@dataclass(frozen=True, eq=False)
class NoiseEstimate:
    """What :func:`estimate_noise` measured, one value per slice.

    Attributes
    ----------
    sigma_hu : ndarray (Z,) float64
        Noise standard deviation in soft tissue (HU).
    texture : ndarray (Z,) float64
        Adjacent-difference noise over noise (see the module docstring).
    kernel_class : tuple of str
        "smooth", "standard" or "sharp" per slice.
    measured : ndarray (Z,) bool
        False where the slice had too little soft tissue and got the volume's median.
    """

    sigma_hu: np.ndarray
    texture: np.ndarray
    kernel_class: tuple[str, ...]
    measured: np.ndarray

    def __len__(self) -> int:
        return len(self.sigma_hu)


def kernel_class_of(texture: float) -> str:
    """The kernel class of a texture ratio (:data:`TEXTURE_THRESHOLDS`)."""
    lo, hi = TEXTURE_THRESHOLDS
    return "smooth" if texture < lo else ("sharp" if texture > hi else "standard")


def slice_noise_variances(
    image2d: np.ndarray, tissue: np.ndarray, *, window: int = _WINDOW
) -> tuple[float, float, int]:
    """Median patch variance of a slice and of its adjacent-pixel differences.

    Parameters
    ----------
    image2d : ndarray (Y, X)
        Image (or a pure noise image) in HU.
    tissue : ndarray of bool (Y, X)
        Where to measure (e.g. the soft tissue of the slice, inside the body).
    window : int
        Patch side (odd).

    Returns
    -------
    var, diff_var : float
        Median over the patches wholly in ``tissue`` of the image's variance and of the
        variance of ``x[:, i] - x[:, i + 1]`` (NaN where there are none).
    n : int
        Number of such patches.
    """
    from hybrid.physics.estimate import _local_variances

    x = np.asarray(image2d, dtype=np.float64)
    v = _local_variances(x, tissue, window)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    d = np.zeros_like(x)
    d[:, :-1] = x[:, 1:] - x[:, :-1]
    t = tissue.copy()
    t[:, -1] = False
    t[:, :-1] &= tissue[:, 1:]
    dv = _local_variances(d, t, window)
    return float(np.median(v)), float(np.median(dv)) if dv.size else float("nan"), int(v.size)


def tissue_mask(
    image2d: np.ndarray, body_mask2d: np.ndarray | None = None, *, smoothing: float = 2.0
) -> np.ndarray:
    """Soft tissue of a slice: HU smoothed by a ``smoothing``-pixel Gaussian in
    :data:`hybrid.physics.SOFT_TISSUE_HU`, inside the body."""
    from scipy import ndimage

    from hybrid.physics.estimate import SOFT_TISSUE_HU

    smooth = ndimage.gaussian_filter(np.asarray(image2d, dtype=np.float32), smoothing,
                                     truncate=_TRUNCATE)
    m = (smooth >= SOFT_TISSUE_HU[0]) & (smooth <= SOFT_TISSUE_HU[1])
    return m if body_mask2d is None else m & body_mask2d


def estimate_noise(image: Any, body_mask: Any = None) -> NoiseEstimate:
    """Estimate the noise level and texture of each slice from the image alone.

    Parameters
    ----------
    image : Volume or ndarray (Z, Y, X) or (Y, X)
        Image in HU.
    body_mask : ndarray of bool, same shape, optional
        Where to look (intersected with the soft tissue); default the whole slice.

    Returns
    -------
    NoiseEstimate
        One value per slice (one slice for a 2-D image).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> est = estimate_noise(40 + 20 * rng.standard_normal((2, 128, 128)))
    >>> np.round(est.sigma_hu), est.kernel_class
    (array([20., 20.]), ('sharp', 'sharp'))
    """
    from hybrid._parallel import thread_map
    from hybrid.volume import Volume, grown_bbox

    arr = np.asarray(image.array if isinstance(image, Volume) else image, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"Expected a 2-D (Y, X) or 3-D (Z, Y, X) image in HU; received shape {arr.shape}."
        )
    vol = arr[None] if arr.ndim == 2 else arr
    mask = None
    if body_mask is not None:
        mask = np.asarray(body_mask, dtype=bool)
        if mask.shape != arr.shape:
            raise ValueError(
                f"Expected a body_mask of the image's shape {arr.shape}; received {mask.shape}. "
                "Pass None to use the whole slice."
            )
        mask = mask[None] if arr.ndim == 2 else mask
    var = np.full(len(vol), np.nan)
    dvar = np.full(len(vol), np.nan)

    def one(k: int) -> None:  # slices are independent: on threads (scipy releases the GIL)
        img, m = vol[k], None if mask is None else mask[k]
        if m is not None:  # measured only in the body: work on its box (the same numbers)
            box = grown_bbox(m, _GAUSS_REACH)
            if box is None:
                return
            img, m = img[box], m[box]
        for smoothing in _SMOOTHING:  # stronger where noise hides the tissue (< 1 % dose)
            t = tissue_mask(img, m, smoothing=smoothing)
            v, dv, n = slice_noise_variances(img, t)
            if n >= _MIN_PATCHES:
                var[k], dvar[k] = v, dv
                return

    thread_map(one, range(len(vol)))
    return _estimate_from_variances(var, dvar)


def _estimate_from_variances(var: np.ndarray, dvar: np.ndarray) -> NoiseEstimate:
    """:class:`NoiseEstimate` of per-slice variances (NaN: not measured; filled by the median)."""
    measured = np.isfinite(var) & np.isfinite(dvar) & (var > 0)
    sigma = np.sqrt(np.where(measured, var, np.nan))
    texture = np.sqrt(np.where(measured, dvar / 2.0, np.nan)) / sigma
    if measured.any():
        sigma = np.where(measured, sigma, np.nanmedian(sigma))
        texture = np.where(measured, texture, np.nanmedian(texture))
    else:
        sigma = np.full(len(var), FALLBACK_SIGMA_HU)
        texture = np.full(len(var), float(np.mean(TEXTURE_THRESHOLDS)))
    return NoiseEstimate(
        sigma_hu=sigma.astype(np.float64),
        texture=texture.astype(np.float64),
        kernel_class=tuple(kernel_class_of(float(t)) for t in texture),
        measured=measured,
    )


# ------------------------------------------------- how far above a normal dose

#: Typical normal-dose soft-tissue noise (HU) per kernel class: the medians over the
#: normal-dose slices of the CNN training cases of that class (never a held-out or
#: calibration patient); measured by ``python experiments/noise_reference.py``
#: (``experiments/results/noise_reference.json``).  A sharp kernel's normal-dose noise is
#: several times a standard kernel's, so a noise level alone does not tell a low dose.
NORMAL_DOSE_SIGMA_HU = {"smooth": 9.3, "standard": 20.2, "sharp": 111.6}


def check_kernel_class(kernel: str | None) -> str | None:
    """``kernel`` if it is None or a key of :data:`NORMAL_DOSE_SIGMA_HU`; else a clear error."""
    if kernel is not None and kernel not in NORMAL_DOSE_SIGMA_HU:
        raise ValueError(f"Invalid value for argument `kernel`. Expected None or one of "
                         f"{sorted(NORMAL_DOSE_SIGMA_HU)} (a DICOM kernel name maps to one "
                         f"by hybrid.physics.kernel_for). Received kernel={kernel!r}")
    return kernel


def noise_ratio(image: Any, body_mask: Any = None, *, kernel: str | None = None,
                slice_mm: float | None = None, reference_mm: float | None = None) -> np.ndarray:
    """Per slice, the estimated noise over a typical normal-dose scan's of its kernel class.

    About 1 or below for a normal-dose scan, about ``1 / sqrt(f)`` times that at dose
    fraction ``f``: the dose-independent measure of how noisy a slice is that the
    blender's input rule (:class:`hybrid.baselines.InputBaseline`) is calibrated on.
    With ``slice_mm`` and ``reference_mm`` it is read at the reference thickness
    (times :func:`thickness_factor`): CT noise goes as ``1 / sqrt(dose * thickness)``, so
    a 5 mm scan at a low dose no longer reads like a thin one at a moderate dose.

    Parameters
    ----------
    image, body_mask
        As for :func:`estimate_noise`.
    kernel : {"smooth", "standard", "sharp"}, optional
        The kernel class when it is known (a DICOM series says it:
        :func:`hybrid.physics.kernel_for` of its ConvolutionKernel).  Default: each
        slice's :attr:`NoiseEstimate.kernel_class` from its noise texture, which is
        less reliable: a simulated low dose of a standard-kernel scan can read as sharp
        (its added noise is whiter than the scan's own).
    slice_mm, reference_mm : float, optional
        The scan's slice thickness and the thickness to read the noise at (both in mm;
        :func:`thickness_factor`).  Either None: the plain ratio.

    Returns
    -------
    ndarray (Z,) float64 (one value for a 2-D image).
    """
    check_kernel_class(kernel)
    return ratio_of(estimate_noise(image, body_mask), kernel, slice_mm=slice_mm,
                    reference_mm=reference_mm)


def ratio_of(est: NoiseEstimate, kernel: str | None = None, *, slice_mm: float | None = None,
             reference_mm: float | None = None) -> np.ndarray:
    """:func:`noise_ratio` of an estimate already made (arguments as there)."""
    check_kernel_class(kernel)
    classes = est.kernel_class if kernel is None else (kernel,) * len(est)
    return (est.sigma_hu / np.array([NORMAL_DOSE_SIGMA_HU[c] for c in classes])
            * thickness_factor(slice_mm, reference_mm))


#: The largest z spacing (mm) read as a slice thickness.  Above it the slices are taken
#: to be samples of a sparse series (thin slices far apart: the phantom's are 15-19 mm
#: apart with the noise of a thin scan, since ``hybrid.physics.scan`` does not scale
#: noise with thickness) and the thickness as unknown.
MAX_SLICE_MM = 6.0


def thickness_factor(slice_mm: float | None, reference_mm: float | None) -> float:
    """``sqrt(slice_mm / reference_mm)``: the factor that reads a scan's noise as that of
    the same scan at ``reference_mm`` (CT noise goes as ``1 / sqrt(thickness)``).  1 where
    either is None or ``slice_mm`` is above :data:`MAX_SLICE_MM` (unknown thickness).
    ``hybrid.Enhancer`` passes :attr:`hybrid.volume.Volume.slice_thickness_mm` (the
    slices' DICOM SliceThickness, else the z spacing)."""
    if slice_mm is None or reference_mm is None:
        return 1.0
    t, r = float(slice_mm), float(reference_mm)
    if not (np.isfinite(t) and t > 0 and np.isfinite(r) and r > 0):
        raise ValueError(f"Expected positive finite slice_mm and reference_mm (mm); received "
                         f"slice_mm={slice_mm!r}, reference_mm={reference_mm!r}.")
    return 1.0 if t > MAX_SLICE_MM else float(np.sqrt(t / r))


# ------------------------------------------------- what a user is told about the input

#: Noise ratio (:func:`noise_ratio`, median over the slices) up to which a scan's noise
#: reads as "normal-dose noise", then "low-dose noise"; above the second, "ultra-low-dose
#: noise".  It is a reading of the noise, not of the dose: the ratio is about 1/sqrt(f) at
#: dose fraction f of a *typical* normal-dose scan, but a thick-slice scan is far quieter
#: than the typical one (lung-pet-ct-dx A0001, 5 mm: 0.4 at normal dose, 2.9 at 2 %), so
#: no dose fraction is derived from it.
DOSE_READING_BOUNDS = (1.6, 4.5)


def reading(est: NoiseEstimate, kernel: str | None = None) -> dict[str, Any]:
    """What the input looks like, in words and numbers, for the log, the CLI summary and
    the derived series (``hybrid.Enhancer``): median soft-tissue noise, kernel class
    (``kernel`` when known, else the slices' most common texture class), the noise ratio
    over a typical normal-dose scan's of that class, and its class by
    :data:`DOSE_READING_BOUNDS`."""
    check_kernel_class(kernel)
    if kernel is None:
        names, counts = np.unique(np.asarray(est.kernel_class), return_counts=True)
        kernel_used, source = str(names[int(np.argmax(counts))]), "noise texture"
    else:
        kernel_used, source = kernel, "DICOM kernel"
    ratio = float(np.median(ratio_of(est, kernel)))
    lo, hi = DOSE_READING_BOUNDS
    verdict = "normal-dose noise" if ratio <= lo else "low-dose noise" if ratio <= hi else \
        "ultra-low-dose noise"
    return {
        "noise_hu": round(float(np.median(est.sigma_hu)), 1),
        "kernel_class": kernel_used,
        "kernel_class_from": source,
        "noise_ratio": round(ratio, 2),
        "reads_as": verdict,
        "slices_measured": int(np.count_nonzero(est.measured)),
    }

