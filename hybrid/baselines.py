"""Classical denoisers with the proposers' call shape, to compare against.

Each baseline is a small class with a ``name``, keyword-only tunable
parameters (``params``), a default search grid (``default_grid``) and
``propose(volume_or_array, *, lung_mask=None, body_mask=None) -> Proposal``,
like the CNN pair and the patch dictionary.  They work slice by slice (2-D,
in-plane) on a (z, y, x) volume or one (y, x) slice in HU, and never modify
their input.

============  =============================================  ==================================
name          method                                         tunable parameters
============  =============================================  ==================================
``input``     the ULD image itself (no-op)                   none
``gaussian``  scipy.ndimage.gaussian_filter                  sigma_px
``nlm``       skimage.restoration.denoise_nl_means, fast     h_factor, patch_size, patch_distance
``tv``        skimage.restoration.denoise_tv_chambolle       weight
``bm3d``      bm3d.bm3d (PyPI ``bm3d`` 4.x, optional)        sigma_factor, profile
============  =============================================  ==================================

HU scaling
----------
The denoisers see ``HU / 1000`` (:data:`HU_SCALE`; water 0, air -1, so a
70 HU noise is 0.07) and their output is multiplied back; no clipping, no
offset.  Parameters that are intensities are stated in those units
(``TotalVariationBaseline.weight``) or relative to the noise level σ
(``NonLocalMeansBaseline.h_factor``, ``BM3DBaseline.sigma_factor``).  σ is
given in HU (``sigma_hu``) or, by default, estimated per slice inside the
body by :func:`estimate_noise_sigma`.

Masks
-----
``body_mask`` (optional): σ is estimated inside it and, outside it, the
input is returned unchanged (the dictionary's convention).  ``lung_mask`` is
accepted so that all proposers are called alike; the baselines ignore it.

Tuning
------
:func:`tune` picks a baseline's parameters by grid search on *training*
pairs (ULD, ND, body mask), minimising the body RMSE by default, so that an
evaluation tunes on its training folds and never on the test patient.

Licence of BM3D
---------------
``bm3d`` (PyPI, 4.0.3, by Y. Mäkinen, L. Azzari and A. Foi, Tampere
University, which wraps the binary library of the ``bm4d`` package) is
**free for non-commercial use only**: its PyPI classifier is "License :: Free
for non-commercial use" and its LICENSE file authorises reproduction, use
and modification "for informational and having non-commercial scope only",
requires the original copyright notices to be kept, forbids posting copies
on a network without Tampere University's consent, and asks that the
original authors be cited whenever results obtained with it are published
(K. Dabov, A. Foi, V. Katkovnik, K. Egiazarian, "Image Denoising by Sparse
3-D Transform-Domain Collaborative Filtering", IEEE TIP 16, 2007; Y.
Mäkinen, L. Azzari, A. Foi, "Collaborative Filtering of Correlated Noise:
Exact Transform-Domain Variance for Improved Shrinkage and Patch Matching",
IEEE TIP 29, 2020).  It is therefore an *optional* dependency, imported
only when the ``bm3d`` baseline runs; hybrid itself does not ship it.
BM3D here assumes white noise (a scalar σ); the streaky, correlated noise
of real ULD CT would call for its noise-PSD input.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hybrid.proposal import Proposal
from hybrid.volume import as_mask, as_stack, check_pairs

__all__ = [
    "HU_SCALE",
    "Baseline",
    "InputBaseline",
    "GaussianBaseline",
    "NonLocalMeansBaseline",
    "TotalVariationBaseline",
    "BM3DBaseline",
    "BASELINES",
    "estimate_noise_sigma",
    "tune",
]

#: HU per denoiser unit: denoisers see ``HU / HU_SCALE``.
HU_SCALE = 1000.0

# Immerkær's noise-estimation kernel (second differences; sum of squares 36).
_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


# ------------------------------------------------------------------ helpers


def estimate_noise_sigma(image: Any, *, mask: Any = None) -> float:
    """Robust estimate of the standard deviation of white noise in one slice.

    Immerkær's second-difference operator (which cancels constant and linear
    intensity) is applied to the slice; σ is the median absolute response
    over the mask, scaled to a Gaussian standard deviation
    (``1.4826 * median(|r|) / 6``).  The median keeps it robust to edges.

    Parameters
    ----------
    image : ndarray of shape (Y, X)
        One slice in HU (any units work: σ is in the image's units).
    mask : ndarray of bool, shape (Y, X), optional
        Pixels to estimate from (e.g. the body: CT air outside it is often
        clipped and less noisy).  Default: all pixels.  If fewer than 64
        responses fall inside the mask, all pixels are used.

    Returns
    -------
    float
        Estimated σ, in the units of ``image`` (HU).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = estimate_noise_sigma(rng.normal(0, 70, (256, 256)))
    >>> bool(abs(s - 70) < 5)
    True
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 3:
        raise ValueError(
            f"Expected one 2-D slice (y, x) of at least 3 x 3 pixels; received shape {img.shape}."
        )
    resp = np.abs(ndimage.correlate(img, _IMMERKAER, mode="reflect"))[1:-1, 1:-1]
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != img.shape:
            raise ValueError(
                f"Expected `mask` of the slice's shape {img.shape}; received {m.shape}."
            )
        inner = m[1:-1, 1:-1]
        if np.count_nonzero(inner) >= 64:
            resp = resp[inner]
    return float(1.4826 * np.median(resp) / 6.0)


def _slice_sigma(sigma_hu: float | None, slice_hu: np.ndarray, mask: np.ndarray | None) -> float:
    """σ in HU: the given one, or the estimate inside the mask (floored at 1 HU)."""
    if sigma_hu is not None:
        return float(sigma_hu)
    return max(estimate_noise_sigma(slice_hu, mask=mask), 1.0)


def _check_positive(value: Any, name: str, *, integer: bool = False) -> Any:
    ok = (
        isinstance(value, (int, np.integer))
        if integer
        else isinstance(value, (int, float, np.number))
    )
    if not ok or isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"Invalid value for `{name}`. Expected {kind}; received {value!r}.")
    return int(value) if integer else float(value)


# ---------------------------------------------------------------- baselines


class Baseline:
    """Base class: slice-by-slice denoising of HU images.

    Subclasses set ``name``, ``default_grid`` and implement
    ``_denoise_slice(slice_hu, body_slice) -> ndarray`` (HU in, HU out).
    """

    #: Short name, the key in :data:`BASELINES` and ``Proposal.name``.
    name: ClassVar[str] = ""
    #: Default search grid for :func:`tune`: ``{parameter: [values]}``.
    default_grid: ClassVar[dict[str, list[Any]]] = {}
    #: Outside the body mask the input is returned unchanged.
    outside_body: ClassVar[str] = "input"

    @property
    def params(self) -> dict[str, Any]:
        """The tunable parameters and their values (constructor keywords)."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def _denoise_slice(self, slice_hu: np.ndarray, body: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError

    def propose(
        self,
        volume_or_array: Any,
        *,
        lung_mask: Any = None,
        body_mask: Any = None,
    ) -> Proposal:
        """Denoise a slice or a volume, slice by slice.

        Parameters
        ----------
        volume_or_array : Volume or ndarray of shape (Z, Y, X) or (Y, X)
            The ULD image in HU.  Not modified.
        lung_mask : ndarray of bool, same shape, optional
            Accepted for a common call shape with the other proposers; unused.
        body_mask : ndarray of bool, same shape, optional
            Where to denoise and estimate the noise; outside it the input is
            returned unchanged.  Default: the whole image.

        Returns
        -------
        Proposal
            ``image``: float32 HU, same shape as the input; ``confidence``:
            None; ``name``: this baseline's name.
        """
        stack, squeeze = as_stack(volume_or_array, name="volume_or_array")
        as_mask(lung_mask, stack.shape, name="lung_mask")  # validated, unused
        body = as_mask(body_mask, stack.shape, name="body_mask")
        out = np.array(stack, dtype=np.float32, copy=True)
        for z in range(stack.shape[0]):
            bz = None if body is None else body[z]
            if bz is not None and not bz.any():
                continue
            den = self._denoise_slice(stack[z], bz)
            if bz is None:
                out[z] = den
            else:
                out[z][bz] = den[bz]
        return Proposal(image=out[0] if squeeze else out, name=self.name)


class InputBaseline(Baseline):
    """The ULD input itself: the floor every method must beat, and the blender's way
    to leave a scan that is not noisy alone.

    ``propose`` returns a float32 copy of the input with, as its uncertainty, each
    slice's :func:`hybrid.cnn.noise.noise_ratio` (kind "noise_ratio": the estimated
    noise over a typical normal-dose scan's of its kernel class, measured inside
    ``body_mask``) broadcast over the slice.  The shipped blender weighs the input
    against the restored image by it, so a normal-dose scan comes back nearly as it
    went in and a low-dose one restored.

    Parameters
    ----------
    kernel : {"smooth", "standard", "sharp"}, optional
        The scan's kernel class where known (a Volume's ``provenance.kernel`` is used
        when this is None); otherwise it is estimated per slice from the noise texture.
    reference_mm : float, optional
        Read the ratio at this slice thickness (:func:`hybrid.cnn.noise.thickness_factor`;
        the blender's input rule says which it was calibrated at).  None: the plain ratio.
    slice_mm : float, optional
        The scan's slice thickness (mm) where known; None: a Volume's
        :attr:`~hybrid.volume.Volume.slice_thickness_mm` (an array has none, and its ratio
        is the plain one).
    """

    name = "input"
    default_grid: ClassVar[dict[str, list[Any]]] = {}

    def __init__(self, *, kernel: str | None = None, reference_mm: float | None = None,
                 slice_mm: float | None = None) -> None:
        from hybrid.cnn.noise import check_kernel_class, thickness_factor

        self.kernel = check_kernel_class(kernel)
        thickness_factor(slice_mm, reference_mm)  # a clear error now, not at propose
        self.reference_mm, self.slice_mm = reference_mm, slice_mm

    @property
    def params(self) -> dict[str, Any]:
        out = {"kernel": self.kernel, "reference_mm": self.reference_mm,
               "slice_mm": self.slice_mm}
        return {k: v for k, v in out.items() if v is not None}

    def _denoise_slice(self, slice_hu, body):
        return slice_hu

    def propose(self, volume_or_array: Any, *, lung_mask: Any = None,
                body_mask: Any = None) -> Proposal:
        p = super().propose(volume_or_array, lung_mask=lung_mask, body_mask=body_mask)
        return self.with_ratio(p.image, self.noise_ratio(volume_or_array, body_mask))

    def noise_ratio(self, volume_or_array: Any, body_mask: Any = None) -> np.ndarray:
        """Per-slice :func:`hybrid.cnn.noise.noise_ratio` with this proposer's kernel class
        (or the Volume's ``provenance.kernel``, or the noise texture's guess), read at
        ``reference_mm`` where that is set."""
        from hybrid.cnn.noise import ratio_of

        est, kernel = self.noise_estimate(volume_or_array, body_mask)
        slice_mm = self.slice_mm
        if slice_mm is None and hasattr(volume_or_array, "slice_thickness_mm"):
            slice_mm = volume_or_array.slice_thickness_mm
        return ratio_of(est, kernel, slice_mm=slice_mm, reference_mm=self.reference_mm)

    def noise_estimate(self, volume_or_array: Any, body_mask: Any = None):
        """The input's :class:`hybrid.cnn.noise.NoiseEstimate` and the kernel class used
        for its ratio (this proposer's, or the Volume's ``provenance.kernel``, or None for
        each slice's texture class): :meth:`noise_ratio` is ``ratio_of`` these."""
        from hybrid.cnn.noise import estimate_noise
        from hybrid.physics import kernel_for

        stack, _ = as_stack(volume_or_array, name="volume_or_array")
        body = as_mask(body_mask, stack.shape, name="body_mask")
        kernel = self.kernel
        dicom_kernel = getattr(getattr(volume_or_array, "provenance", None), "kernel", None)
        if kernel is None and dicom_kernel:
            kernel = kernel_for(dicom_kernel)
        return estimate_noise(stack, body), kernel

    @classmethod
    def with_ratio(cls, image: np.ndarray, ratio: np.ndarray) -> Proposal:
        """The input proposal of ``image`` (Z, Y, X) or (Y, X) with per-slice noise ratios
        measured beforehand (the Enhancer measures them once on the whole volume, so that
        the result does not depend on how it batches slices)."""
        image = np.asarray(image, np.float32)
        r = np.asarray(ratio, np.float32).reshape(-1)
        shape3 = image.shape if image.ndim == 3 else (1, *image.shape)
        if len(r) != shape3[0]:
            raise ValueError(f"Expected one noise ratio per slice ({shape3[0]}); received {len(r)}.")
        unc = np.broadcast_to(r[:, None, None], shape3).reshape(image.shape).copy()
        return Proposal(image=image, uncertainty=unc, kind="noise_ratio", name=cls.name)


class GaussianBaseline(Baseline):
    """In-plane Gaussian smoothing.

    Parameters
    ----------
    sigma_px : float, optional
        Standard deviation of the Gaussian in pixels (in-plane, per slice).
        The default is light: blurring the 1000 HU air/tissue edges costs
        more RMSE than it removes noise beyond about 0.75 px (tune it).
    """

    name = "gaussian"
    default_grid: ClassVar[dict[str, list[Any]]] = {"sigma_px": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0]}

    def __init__(self, *, sigma_px: float = 0.5) -> None:
        self.sigma_px = _check_positive(sigma_px, "sigma_px")

    @property
    def params(self) -> dict[str, Any]:
        return {"sigma_px": self.sigma_px}

    def _denoise_slice(self, slice_hu, body):
        from scipy import ndimage

        return ndimage.gaussian_filter(
            slice_hu.astype(np.float32), self.sigma_px, mode="nearest", truncate=4.0
        )


class NonLocalMeansBaseline(Baseline):
    """Non-local means (scikit-image, ``fast_mode=True``).

    Parameters
    ----------
    h_factor : float, optional
        Filtering strength relative to the noise: ``h = h_factor * σ``
        (σ also passed to scikit-image so that it subtracts the expected noise
        distance).  Larger is smoother.
    patch_size : int, optional
        Side of the compared patches in pixels (5 or 7).
    patch_distance : int, optional
        Search radius in pixels (search window ``2 * patch_distance + 1``);
        cost grows with its square.
    sigma_hu : float or None, optional
        Noise σ in HU; None (default) estimates it per slice inside the body
        with :func:`estimate_noise_sigma`.
    """

    name = "nlm"
    default_grid: ClassVar[dict[str, list[Any]]] = {
        "h_factor": [0.4, 0.6, 0.8, 1.0, 1.2],
        "patch_size": [5, 7],
        "patch_distance": [6, 11],
    }

    def __init__(
        self,
        *,
        h_factor: float = 0.8,
        patch_size: int = 5,
        patch_distance: int = 6,
        sigma_hu: float | None = None,
    ) -> None:
        self.h_factor = _check_positive(h_factor, "h_factor")
        self.patch_size = _check_positive(patch_size, "patch_size", integer=True)
        self.patch_distance = _check_positive(patch_distance, "patch_distance", integer=True)
        self.sigma_hu = None if sigma_hu is None else _check_positive(sigma_hu, "sigma_hu")

    @property
    def params(self) -> dict[str, Any]:
        return {
            "h_factor": self.h_factor,
            "patch_size": self.patch_size,
            "patch_distance": self.patch_distance,
            "sigma_hu": self.sigma_hu,
        }

    def _denoise_slice(self, slice_hu, body):
        from skimage.restoration import denoise_nl_means

        sigma = _slice_sigma(self.sigma_hu, slice_hu, body) / HU_SCALE
        den = denoise_nl_means(
            slice_hu.astype(np.float64) / HU_SCALE,
            patch_size=self.patch_size,
            patch_distance=self.patch_distance,
            h=self.h_factor * sigma,
            sigma=sigma,
            fast_mode=True,
            channel_axis=None,
        )
        return (den * HU_SCALE).astype(np.float32)


class TotalVariationBaseline(Baseline):
    """Total-variation denoising (Chambolle's algorithm, scikit-image).

    Parameters
    ----------
    weight : float, optional
        Denoising weight in units of ``HU / 1000`` (:data:`HU_SCALE`): about
        the σ of the noise it removes; larger is smoother (and flatter).
    max_num_iter : int, optional
        Maximum iterations of Chambolle's algorithm.
    """

    name = "tv"
    default_grid: ClassVar[dict[str, list[Any]]] = {
        "weight": [0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15]
    }

    def __init__(self, *, weight: float = 0.05, max_num_iter: int = 200) -> None:
        self.weight = _check_positive(weight, "weight")
        self.max_num_iter = _check_positive(max_num_iter, "max_num_iter", integer=True)

    @property
    def params(self) -> dict[str, Any]:
        return {"weight": self.weight, "max_num_iter": self.max_num_iter}

    def _denoise_slice(self, slice_hu, body):
        from skimage.restoration import denoise_tv_chambolle

        den = denoise_tv_chambolle(
            slice_hu.astype(np.float32) / np.float32(HU_SCALE),
            weight=self.weight,
            max_num_iter=self.max_num_iter,
            channel_axis=None,
        )
        return (den * HU_SCALE).astype(np.float32)


class BM3DBaseline(Baseline):
    """BM3D (the ``bm3d`` package, 4.x; free for non-commercial use only).

    Seconds per 512 x 512 slice.  See the module docstring for its licence.

    Parameters
    ----------
    sigma_factor : float, optional
        Multiplies the noise σ given to BM3D (1 = the estimated or given σ).
    profile : {"np", "refilter", "lc", "high", "vn"}, optional
        BM3D profile: "np" (normal), "refilter" (slightly better, slower),
        "lc" (low complexity, faster), "high", "vn" (very noisy).
    sigma_hu : float or None, optional
        Noise σ in HU; None (default) estimates it per slice inside the body
        with :func:`estimate_noise_sigma`.
    num_threads : int, optional
        Threads of the BM3D library.  1 (default) is deterministic; 0 (all
        cores) or more is faster but, per the library, may vary very slightly
        from run to run.
    """

    name = "bm3d"
    default_grid: ClassVar[dict[str, list[Any]]] = {"sigma_factor": [0.75, 1.0, 1.25, 1.5]}
    _PROFILES = ("np", "refilter", "lc", "high", "vn")

    def __init__(
        self,
        *,
        sigma_factor: float = 1.0,
        profile: str = "np",
        sigma_hu: float | None = None,
        num_threads: int = 1,
    ) -> None:
        self.sigma_factor = _check_positive(sigma_factor, "sigma_factor")
        if profile not in self._PROFILES:
            raise ValueError(
                f"Invalid value for `profile`. Expected one of {self._PROFILES}; received {profile!r}."
            )
        self.profile = profile
        self.sigma_hu = None if sigma_hu is None else _check_positive(sigma_hu, "sigma_hu")
        if not (isinstance(num_threads, (int, np.integer)) and num_threads >= 0):
            raise ValueError(
                f"Invalid value for `num_threads`. Expected an integer >= 0 (0 = all cores); "
                f"received {num_threads!r}."
            )
        self.num_threads = int(num_threads)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "sigma_factor": self.sigma_factor,
            "profile": self.profile,
            "sigma_hu": self.sigma_hu,
            "num_threads": self.num_threads,
        }

    def _denoise_slice(self, slice_hu, body):
        try:
            import bm3d
        except ImportError as exc:
            raise ImportError(
                "The 'bm3d' baseline needs the optional package bm3d (free for non-commercial use "
                "only). Install it with: pip install 'bm3d>=4.0,<5'"
            ) from exc
        profile = {
            "np": bm3d.BM3DProfile,
            "refilter": bm3d.BM3DProfileRefilter,
            "lc": bm3d.BM3DProfileLC,
            "high": bm3d.BM3DProfileHigh,
            "vn": bm3d.BM3DProfileVN,
        }[self.profile]()
        profile.num_threads = self.num_threads
        sigma = self.sigma_factor * _slice_sigma(self.sigma_hu, slice_hu, body) / HU_SCALE
        den = bm3d.bm3d(slice_hu.astype(np.float64) / HU_SCALE, sigma_psd=sigma, profile=profile)
        return (np.asarray(den).reshape(slice_hu.shape) * HU_SCALE).astype(np.float32)


#: Every baseline by name.
BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (
        InputBaseline,
        GaussianBaseline,
        NonLocalMeansBaseline,
        TotalVariationBaseline,
        BM3DBaseline,
    )
}


# ------------------------------------------------------------------- tuning

_MAXIMISE = ("ssim_lung", "ssim_soft_tissue", "psnr_lung", "psnr_soft_tissue")


def tune(
    baseline_cls: type[Baseline] | str,
    pairs: Sequence[tuple[Any, Any, Any]],
    *,
    grid: Mapping[str, Iterable[Any]] | None = None,
    metric: str = "rmse_hu",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Pick a baseline's parameters by grid search on training pairs.

    Every combination of the grid is run on every pair; the score of a
    combination is the mean over pairs of ``metric`` in the body (see
    :func:`hybrid.metrics.evaluate_image`).  Use training slices only (a
    handful of 512 x 512 slices is enough), never the test patient.

    Parameters
    ----------
    baseline_cls : Baseline subclass or str
        A class from :data:`BASELINES` (or its name).
    pairs : sequence of (uld, nd, body_mask)
        Training pairs: ULD and ND images in HU (2-D or 3-D arrays or
        Volumes, same shape) and the body mask (bool, same shape).
    grid : mapping of str to sequence, optional
        ``{parameter: [values]}``; parameters left out keep their defaults.
        Default: ``baseline_cls.default_grid``.
    metric : str, optional
        ``"rmse_hu"`` (minimised, default) or one of ``"ssim_lung"``,
        ``"ssim_soft_tissue"``, ``"psnr_lung"``, ``"psnr_soft_tissue"``
        (maximised), all in the body.

    Returns
    -------
    best_params : dict
        The best combination (constructor keywords of ``baseline_cls``).
    table : list of dict
        One row per combination, in grid order: its parameters, ``metric``
        (mean over pairs) and ``seconds_per_slice``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> nd = np.zeros((32, 32), np.float32); nd[8:24, 8:24] = 100
    >>> uld = nd + rng.normal(0, 70, nd.shape).astype(np.float32)
    >>> best, table = tune(GaussianBaseline, [(uld, nd, np.ones_like(nd, bool))],
    ...                    grid={"sigma_px": [0.5, 1.5]})
    >>> best
    {'sigma_px': 1.5}
    """
    from hybrid.metrics import psnr, rmse, ssim

    if isinstance(baseline_cls, str):
        if baseline_cls not in BASELINES:
            raise ValueError(
                f"Unknown baseline {baseline_cls!r}; expected one of {sorted(BASELINES)}."
            )
        baseline_cls = BASELINES[baseline_cls]
    if not (isinstance(baseline_cls, type) and issubclass(baseline_cls, Baseline)):
        raise ValueError(
            f"Expected a baseline class from hybrid.baselines.BASELINES; received {baseline_cls!r}."
        )
    if metric != "rmse_hu" and metric not in _MAXIMISE:
        raise ValueError(
            f"Invalid value for `metric`. Expected 'rmse_hu' or one of {_MAXIMISE}; received {metric!r}."
        )
    checked = check_pairs(pairs, keep_rank=True)
    grid = dict(baseline_cls.default_grid if grid is None else grid)
    names = list(grid)
    values = [list(grid[n]) for n in names]
    if any(len(v) == 0 for v in values):
        raise ValueError(f"Expected at least one value per grid parameter; received {grid!r}.")
    n_slices = sum(1 if u.ndim == 2 else u.shape[0] for u, _, _ in checked)

    def score(img: np.ndarray, nd: np.ndarray, body: np.ndarray) -> float:
        if metric == "rmse_hu":
            return rmse(img, nd, mask=body)
        kind, window = metric.split("_", 1)
        fn = ssim if kind == "ssim" else psnr
        return fn(img, nd, window=window, mask=body)

    table: list[dict[str, Any]] = []
    for combo in itertools.product(*values):
        params = dict(zip(names, combo))
        baseline = baseline_cls(**params)
        scores, elapsed = [], 0.0
        for u, n, b in checked:
            t0 = time.perf_counter()
            proposed = baseline.propose(u, body_mask=b).image
            elapsed += time.perf_counter() - t0
            scores.append(score(proposed, n, b))
        table.append(
            {**params, metric: float(np.mean(scores)), "seconds_per_slice": elapsed / n_slices}
        )
    pick = min if metric == "rmse_hu" else max
    best_row = pick(table, key=lambda row: row[metric])
    best = {n: best_row[n] for n in names}
    return best, table
