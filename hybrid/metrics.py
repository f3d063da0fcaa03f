"""Named HU windows (defined once, here) and image-quality metrics.

Every metric that depends on a window names it: numbers are meaningless
without the window they were computed in.

Conventions
-----------
- Images are CT in Hounsfield units (HU): a :class:`hybrid.Volume`, a 3-D
  array ``(z, y, x)`` or one 2-D slice ``(y, x)``.  Integers are converted to
  float as they are (never rescaled: do not use scikit-image's
  ``img_as_float`` on CT, it maps signed integers to [-1, 1]).
- :func:`rmse` is in HU, on the raw values.
- :func:`psnr` and :func:`ssim` are computed on *windowed* images: HU mapped
  to [0, 1] through a named :class:`Window` with :func:`apply_window`
  (values outside the window clip to 0 or 1), with a fixed data range of 1.0.
  So a difference between two values that are both below the window's low
  end (e.g. air in the soft-tissue window) counts for nothing.
- Every metric can be restricted to a region given as a boolean mask of the
  image's shape (``body``, ``lung``, ``non_lung = body & ~lung``; see
  :func:`evaluate_image`).
- SSIM is scikit-image's :func:`skimage.metrics.structural_similarity` with
  its defaults (7 x 7 uniform window, sample covariance, K1 = 0.01,
  K2 = 0.03), computed in 2-D slice by slice; its SSIM map is averaged over
  the mask pixels of all slices.  Like scikit-image, the pixels closer than 3
  (= (7 - 1) / 2) to the slice border are left out, so that with no mask the
  value of a 2-D slice is exactly scikit-image's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.volume import as_mask

__all__ = [
    "Window",
    "LUNG",
    "SOFT_TISSUE",
    "WINDOWS",
    "apply_window",
    "rmse",
    "psnr",
    "ssim",
    "evaluate_image",
    "REGIONS",
    "METRIC_KEYS",
]


@dataclass(frozen=True)
class Window:
    """A display window: centre and width in HU."""

    name: str
    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    @property
    def high(self) -> float:
        return self.center + self.width / 2

    def __str__(self) -> str:
        return f"{self.name} ({self.center:g}/{self.width:g})"


#: Chest (lung) window, centre −600 HU, width 1500 HU.
LUNG = Window("lung", -600.0, 1500.0)
#: Soft-tissue (mediastinal) window, centre 40 HU, width 400 HU.
SOFT_TISSUE = Window("soft tissue", 40.0, 400.0)
WINDOWS = {"lung": LUNG, "soft_tissue": SOFT_TISSUE}

#: Regions reported by :func:`evaluate_image`, in order.
REGIONS = ("body", "lung", "non_lung")
#: Metric keys reported by :func:`evaluate_image` for each region, in order.
METRIC_KEYS = ("rmse_hu", "ssim_lung", "ssim_soft_tissue", "psnr_lung", "psnr_soft_tissue")

#: Side of scikit-image's default SSIM window (pixels).
_SSIM_WIN = 7
#: Border (pixels) that scikit-image leaves out of the mean SSIM.
_SSIM_PAD = (_SSIM_WIN - 1) // 2


def apply_window(image: np.ndarray, window: Window) -> np.ndarray:
    """Map HU to [0, 1] through ``window`` (clipped), as float32.

    Parameters
    ----------
    image : ndarray of any shape
        Values in HU.
    window : Window
        ``window.low`` maps to 0 and ``window.high`` to 1; values outside
        clip to 0 or 1.

    Returns
    -------
    ndarray of float32, same shape
    """
    img = np.asarray(image, dtype=np.float32)
    return np.clip((img - window.low) / window.width, 0.0, 1.0)


# ----------------------------------------------------------------- validation


def _as_image(x: Any, name: str) -> np.ndarray:
    """A finite float array in HU from a Volume, Proposal or array."""
    from hybrid.volume import Volume

    if isinstance(x, Volume):
        x = x.array
    elif hasattr(x, "image") and hasattr(x, "confidence"):  # a Proposal
        x = x.image
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"Expected `{name}` as a numeric array in HU; received dtype {arr.dtype}. "
            "Pass a hybrid.Volume or a float array of HU values."
        )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"Expected `{name}` as a 2-D slice (y, x) or a 3-D volume (z, y, x); "
            f"received shape {arr.shape}."
        )
    if arr.size == 0:
        raise ValueError(f"Expected a non-empty `{name}`; received shape {arr.shape}.")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise ValueError(
                f"Expected finite HU values in `{name}`; received {bad} NaN/inf value(s) out of "
                f"{arr.size}. Replace them (e.g. np.nan_to_num(x, nan=-1000.0)) before measuring."
            )
    return arr


def _check_pair(image: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    img = _as_image(image, "image")
    ref = _as_image(reference, "reference")
    if img.shape != ref.shape:
        raise ValueError(
            f"Expected `image` and `reference` of the same shape; received {img.shape} and "
            f"{ref.shape}. Compare the same slices (crop or resample one of them first)."
        )
    return img, ref


def _as_mask(
    mask: Any, shape: tuple[int, ...], name: str = "mask", *, allow_empty: bool = False
) -> np.ndarray:
    """A boolean mask of ``shape`` (:func:`hybrid.volume.as_mask`; None -> all True) with at
    least one True pixel unless ``allow_empty``."""
    m = as_mask(mask, shape, name=name, fill=True)
    if not allow_empty and not m.any():
        raise ValueError(
            f"Expected `{name}` to select at least one pixel; received an empty mask "
            f"(shape {m.shape}). A metric over no pixels is undefined: check the segmentation "
            "or leave the region out."
        )
    return m


def _check_window(window: Any) -> Window:
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ValueError(
                f"Expected `window` as a hybrid.metrics.Window or one of {sorted(WINDOWS)}; "
                f"received {window!r}."
            )
        return WINDOWS[window]
    if not isinstance(window, Window):
        raise ValueError(
            "Expected `window` as a hybrid.metrics.Window (e.g. hybrid.metrics.LUNG) or one of "
            f"{sorted(WINDOWS)}; received {type(window).__name__}. The window is required: "
            "PSNR and SSIM are meaningless without it."
        )
    return window


# -------------------------------------------------------------------- metrics


def rmse(image: Any, reference: Any, *, mask: Any = None) -> float:
    """Root-mean-square error in HU, optionally inside a region.

    Parameters
    ----------
    image : Volume or ndarray of shape (Z, Y, X) or (Y, X)
        Image to assess, in HU.
    reference : Volume or ndarray, same shape
        Reference (normal-dose) image, in HU.
    mask : ndarray of bool, same shape, optional
        Region to measure (default: every pixel).  Must select at least one
        pixel.

    Returns
    -------
    float
        ``sqrt(mean((image - reference)**2))`` over the mask, in HU
        (accumulated in float64).

    Raises
    ------
    ValueError
        On a shape mismatch, a NaN/inf value, a non-boolean or empty mask.

    Examples
    --------
    >>> import numpy as np
    >>> rmse(np.full((4, 4), 10.0), np.zeros((4, 4)))
    10.0
    """
    img, ref = _check_pair(image, reference)
    m = _as_mask(mask, img.shape)
    diff = img[m].astype(np.float64) - ref[m].astype(np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def psnr(image: Any, reference: Any, *, window: Window | str, mask: Any = None) -> float:
    """Peak signal-to-noise ratio (dB) of the windowed images.

    Both images are mapped to [0, 1] through ``window`` with
    :func:`apply_window` (values outside the window clip), then
    ``PSNR = 10 log10(1 / MSE)`` with a fixed data range of 1.0, the MSE taken
    over ``mask``.

    Parameters
    ----------
    image : Volume or ndarray of shape (Z, Y, X) or (Y, X)
        Image to assess, in HU.
    reference : Volume or ndarray, same shape
        Reference (normal-dose) image, in HU.
    window : Window or {"lung", "soft_tissue"}
        Display window, e.g. :data:`LUNG` or :data:`SOFT_TISSUE`; required.
    mask : ndarray of bool, same shape, optional
        Region to measure (default: every pixel).

    Returns
    -------
    float
        PSNR in dB; ``inf`` where the windowed images are identical in the mask.

    Notes
    -----
    Without a mask this equals
    ``skimage.metrics.peak_signal_noise_ratio(apply_window(reference, w),
    apply_window(image, w), data_range=1.0)``.
    """
    img, ref = _check_pair(image, reference)
    w = _check_window(window)
    m = _as_mask(mask, img.shape)
    a = apply_window(img[m], w).astype(np.float64)
    b = apply_window(ref[m], w).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(1.0 / mse))


def ssim(image: Any, reference: Any, *, window: Window | str, mask: Any = None) -> float:
    """Structural similarity of the windowed images, averaged inside a region.

    Both images are mapped to [0, 1] through ``window`` with
    :func:`apply_window`; scikit-image's
    :func:`~skimage.metrics.structural_similarity` (defaults: 7 x 7 uniform
    window, ``data_range=1.0``) gives the SSIM map of each 2-D slice
    (``full=True``); the map is averaged over the mask pixels of all slices
    (each masked pixel counts once, so slices with more mask pixels weigh
    more; slices with none contribute nothing).

    Parameters
    ----------
    image : Volume or ndarray of shape (Z, Y, X) or (Y, X)
        Image to assess, in HU.  Slices must be at least 7 x 7.
    reference : Volume or ndarray, same shape
        Reference (normal-dose) image, in HU.
    window : Window or {"lung", "soft_tissue"}
        Display window, e.g. :data:`LUNG` or :data:`SOFT_TISSUE`; required.
    mask : ndarray of bool, same shape, optional
        Region to measure (default: every pixel).  Pixels within 3 pixels of
        a slice border are always left out, as scikit-image does, so that
        without a mask a 2-D result equals scikit-image's exactly.

    Returns
    -------
    float
        Mean SSIM in the region, in [-1, 1]; 1 for identical windowed images.

    Raises
    ------
    ValueError
        On a shape mismatch, NaN/inf, slices smaller than 7 x 7, or a mask
        with no pixel away from the slice borders.
    """
    img, ref = _check_pair(image, reference)
    w = _check_window(window)
    m = _as_mask(mask, img.shape)
    ((total, count),) = _ssim_sums(img, ref, w, [m])
    if count == 0:
        raise ValueError(
            f"Expected the mask to select at least one pixel {_SSIM_PAD} or more pixels away "
            "from the slice borders (SSIM is undefined there); received a mask only on the borders."
        )
    return total / count


def _ssim_sums(
    img: np.ndarray, ref: np.ndarray, window: Window, masks: list[np.ndarray]
) -> list[tuple[float, int]]:
    """Sum of the SSIM map and pixel count inside each mask (border pixels left out).

    The SSIM map of each slice is computed once, whatever the number of masks.
    """
    from skimage.metrics import structural_similarity

    if min(img.shape[-2:]) < _SSIM_WIN:
        raise ValueError(
            f"Expected slices of at least {_SSIM_WIN} x {_SSIM_WIN} pixels for SSIM (its window); "
            f"received shape {img.shape}."
        )
    pad = _SSIM_PAD
    inner = np.zeros(img.shape[-2:], dtype=bool)
    inner[pad : img.shape[-2] - pad, pad : img.shape[-1] - pad] = True
    if img.ndim == 2:
        img, ref = img[np.newaxis], ref[np.newaxis]
        masks = [m[np.newaxis] for m in masks]
    masks = [m & inner for m in masks]  # inner broadcasts over z
    sums = [0.0] * len(masks)
    counts = [0] * len(masks)
    for z in range(img.shape[0]):
        if not any(m[z].any() for m in masks):
            continue
        a = apply_window(img[z], window)
        b = apply_window(ref[z], window)
        _, smap = structural_similarity(b, a, data_range=1.0, win_size=_SSIM_WIN, full=True)
        for i, m in enumerate(masks):
            mz = m[z]
            n = int(np.count_nonzero(mz))
            if n:
                sums[i] += float(np.sum(smap[mz], dtype=np.float64))
                counts[i] += n
    return list(zip(sums, counts))


def evaluate_image(
    image: Any,
    reference: Any,
    *,
    lung_mask: Any,
    body_mask: Any,
    on_empty: str = "raise",
) -> dict[str, dict[str, float]]:
    """Every metric in every region: ``{region: {metric_window: value}}``.

    Parameters
    ----------
    image : Volume or ndarray of shape (Z, Y, X) or (Y, X)
        Image to assess (a proposal), in HU.
    reference : Volume or ndarray, same shape
        Reference (normal-dose) image, in HU.
    lung_mask : ndarray of bool, same shape
        Lungs (e.g. from :func:`hybrid.lung.segment`).
    body_mask : ndarray of bool, same shape
        Patient body (e.g. from :func:`hybrid.lung.body_mask`); must not be empty.
    on_empty : {"raise", "nan"}, optional
        What to do when the ``lung`` or ``non_lung`` region is empty (e.g. a
        slice below the lungs): raise a ValueError (default) or report NaN
        for that region's metrics.

    Returns
    -------
    dict
        Regions ``"body"``, ``"lung"`` (= lung & body) and ``"non_lung"``
        (= body & ~lung), each a dict with keys

        - ``"rmse_hu"``: :func:`rmse` in HU;
        - ``"ssim_lung"``, ``"ssim_soft_tissue"``: :func:`ssim` in the
          :data:`LUNG` (−600/1500) and :data:`SOFT_TISSUE` (40/400) windows;
        - ``"psnr_lung"``, ``"psnr_soft_tissue"``: :func:`psnr` in dB, same
          windows, data range 1.0.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.zeros((16, 16), np.float32)
    >>> body = np.ones((16, 16), bool)
    >>> lung = np.zeros((16, 16), bool); lung[4:12, 4:8] = True
    >>> r = evaluate_image(ref + 5, ref, lung_mask=lung, body_mask=body)
    >>> r["lung"]["rmse_hu"]
    5.0
    """
    if on_empty not in ("raise", "nan"):
        raise ValueError(f"Expected on_empty in {{'raise', 'nan'}}; received {on_empty!r}.")
    img, ref = _check_pair(image, reference)
    body = _as_mask(body_mask, img.shape, "body_mask")
    lung = _as_mask(lung_mask, img.shape, "lung_mask", allow_empty=True)
    regions = {"body": body, "lung": body & lung, "non_lung": body & ~lung}
    present = []
    for region in REGIONS:
        if regions[region].any():
            present.append(region)
        elif on_empty == "raise":
            raise ValueError(
                f"Expected a non-empty {region!r} region; received none of its pixels "
                f"(lung_mask has {int(lung.sum())} pixel(s), body_mask {int(body.sum())}). "
                "Check the masks, or pass on_empty='nan' to report NaN for empty regions."
            )
    out: dict[str, dict[str, float]] = {r: {k: float("nan") for k in METRIC_KEYS} for r in REGIONS}
    for region in present:
        m = regions[region]
        out[region]["rmse_hu"] = rmse(img, ref, mask=m)
        for key, w in WINDOWS.items():
            out[region][f"psnr_{key}"] = psnr(img, ref, window=w, mask=m)
    for key, w in WINDOWS.items():
        # one SSIM map per slice and window, averaged in every region
        sums = _ssim_sums(img, ref, w, [regions[r] for r in present])
        for region, (total, count) in zip(present, sums):
            out[region][f"ssim_{key}"] = total / count if count else float("nan")
    return out
