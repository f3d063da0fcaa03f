"""Square patches of a 2-D image: extraction at centres and overlap-add back.

Shared by the patch dictionary and the CNN.  Everything works on one 2-D
image (a slice, HU, float32) at a time; loop over slices (or batch them) in
the caller so memory stays bounded.

A patch of odd ``size`` is indexed by its centre pixel ``(y, x)``.  Patches
that reach past the image border are filled by padding (``pad_mode``, numpy's
``np.pad`` modes, default ``"reflect"``); on the way back the parts of a patch
that fall outside the image are dropped.  Patches are flattened row-major into
vectors of length ``size * size``, so ``patches.reshape(-1, size, size)``
gives the 2-D patches back.

Examples
--------
>>> import numpy as np
>>> from hybrid.patches import grid_centers, extract_patches, overlap_add
>>> image = np.arange(64, dtype=np.float32).reshape(8, 8)
>>> centers = grid_centers(image.shape, stride=2)
>>> p = extract_patches(image, centers, size=3)
>>> p.shape
(25, 9)
>>> back, weight = overlap_add(p, centers, image.shape, size=3)
>>> bool(np.allclose(back, image)), bool((weight > 0).all())
(True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["grid_centers", "extract_patches", "overlap_add", "check_patch_size"]


def check_patch_size(size: int) -> int:
    """Return ``size`` as an int if it is a positive odd patch size, else raise."""
    if (
        isinstance(size, bool)
        or not isinstance(size, (int, np.integer))
        or size < 1
        or size % 2 == 0
    ):
        raise ValueError(
            f"Invalid value for argument `size`. Expected a positive odd integer "
            f"(e.g. 7 for 7x7 patches). Received size={size!r}."
        )
    return int(size)


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        raise ValueError(
            f"Expected a 2-D {name} (y, x); received shape {arr.shape} (rank {arr.ndim}). "
            "Loop over the slices of a volume (or index one with volume[z])."
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"Expected a numeric {name}; received dtype {arr.dtype}.")
    return arr


def _check_centers(centers: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    c = np.asarray(centers)
    if c.ndim != 2 or c.shape[1] != 2 or (c.size and c.dtype.kind not in "iu"):
        raise ValueError(
            f"Expected integer centres of shape (n, 2) holding (y, x); received "
            f"shape {c.shape}, dtype {c.dtype}. Use grid_centers(...) or np.argwhere(mask)."
        )
    c = c.astype(np.intp, copy=False)
    if c.size and (
        c[:, 0].min() < 0
        or c[:, 1].min() < 0
        or c[:, 0].max() >= shape[0]
        or c[:, 1].max() >= shape[1]
    ):
        raise ValueError(
            f"Expected centres inside the image of shape {shape}; received y in "
            f"[{c[:, 0].min()}, {c[:, 0].max()}], x in [{c[:, 1].min()}, {c[:, 1].max()}]."
        )
    return c


def _axis_grid(n: int, stride: int) -> np.ndarray:
    g = np.arange(0, n, stride)
    if g[-1] != n - 1:  # always include the last row/column so the grid spans the image
        g = np.append(g, n - 1)
    return g


def check_stride(stride: Any, *, patch_size: int | None = None) -> tuple[int, int]:
    """``(stride_y, stride_x)`` from a positive int or a pair of them; ValueError otherwise.

    With ``patch_size``, each step must also be at most the patch size, so that
    patches on that grid cover every pixel.
    """
    top = np.inf if patch_size is None else int(patch_size)
    pair = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
    if len(pair) != 2 or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= top
        for v in pair
    ):
        bound = "a positive integer" if patch_size is None else (
            f"an integer in [1, {top}] (the patch size, so that every pixel is covered)")
        raise ValueError(
            f"Invalid value for argument `stride`. Expected {bound}, or a pair (y, x) of them. "
            f"Received stride={stride!r}."
        )
    return int(pair[0]), int(pair[1])


def grid_centers(
    shape: tuple[int, int],
    *,
    stride: int = 1,
    mask: np.ndarray | None = None,
    size: int = 7,
) -> np.ndarray:
    """Patch centres on a regular grid, optionally only where they touch a mask.

    Parameters
    ----------
    shape : tuple of 2 int
        Image shape ``(Y, X)``.
    stride : int or (int, int), optional
        Grid step in pixels along y and x (one for both, or ``(y, x)``).  The last row and column are always
        included, so with ``stride <= size`` every pixel is covered by a patch.
    mask : ndarray of bool, shape (Y, X), optional
        Keep only the centres whose ``size`` x ``size`` window contains at
        least one mask pixel, so every mask pixel stays covered (for
        ``stride <= size``) while windows entirely outside the mask are skipped.
    size : int, optional
        Patch size (odd), used with ``mask``.

    Returns
    -------
    centers : ndarray of shape (n, 2), intp
        ``(y, x)`` of each centre, in row-major order.
    """
    if len(shape) != 2:
        raise ValueError(f"Expected a 2-D shape (Y, X); received {shape!r}.")
    sy, sx = check_stride(stride)
    size = check_patch_size(size)
    gy, gx = _axis_grid(shape[0], sy), _axis_grid(shape[1], sx)
    if mask is None:
        yy, xx = np.meshgrid(gy, gx, indexing="ij")
        return np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.intp)
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"Expected a mask of shape {tuple(shape)}; received {mask.shape}.")
    # window of `size` around each grid centre touches the mask <=> a box-dilated mask is set there
    touch = _box_sum(mask.astype(np.float32), size)[np.ix_(gy, gx)] > 0.5
    iy, ix = np.nonzero(touch)
    return np.stack([gy[iy], gx[ix]], axis=1).astype(np.intp)


def _box_sum(image: np.ndarray, size: int) -> np.ndarray:
    """Sum over a centred ``size`` x ``size`` window (zeros outside), float64."""
    r = size // 2
    p = np.pad(image.astype(np.float64), r)
    c = np.cumsum(np.cumsum(p, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    h, w = image.shape
    return (
        c[size : size + h, size : size + w]
        - c[:h, size : size + w]
        - c[size : size + h, :w]
        + c[:h, :w]
    )


def extract_patches(
    image: np.ndarray,
    centers: np.ndarray,
    *,
    size: int = 7,
    pad_mode: str = "reflect",
) -> np.ndarray:
    """Copy the ``size`` x ``size`` patches of a 2-D image around given centres.

    Parameters
    ----------
    image : ndarray of shape (Y, X)
        The image (HU); converted to float32.
    centers : ndarray of shape (n, 2), int
        ``(y, x)`` of each patch centre, inside the image.
    size : int, optional
        Odd patch size (default 7).
    pad_mode : str, optional
        ``np.pad`` mode used for the parts of patches beyond the border.

    Returns
    -------
    patches : ndarray of shape (n, size * size), float32, C-contiguous
        Row-major flattened patches.
    """
    image = _check_image(image)
    size = check_patch_size(size)
    centers = _check_centers(centers, image.shape)
    r = size // 2
    padded = np.pad(image.astype(np.float32, copy=False), r, mode=pad_mode)
    # window (i, j) of the padded image is the patch centred at (i, j) of the image
    windows = sliding_window_view(padded, (size, size))
    out = windows[centers[:, 0], centers[:, 1]]  # fancy indexing copies: (n, size, size)
    return np.ascontiguousarray(out.reshape(len(centers), size * size))


def overlap_add(
    patches: np.ndarray,
    centers: np.ndarray,
    shape: tuple[int, int],
    *,
    size: int = 7,
    patch_weights: np.ndarray | None = None,
    fill: float = np.nan,
) -> tuple[np.ndarray, np.ndarray]:
    """Put patches back into an image, averaging where they overlap.

    Each output pixel is the weighted mean of the values that the patches
    covering it give it: ``sum_i w_i p_i[pixel] / sum_i w_i``.  Per-pixel
    values with shape ``(n,)`` (one value per patch, e.g. a distance) are
    spread over the whole patch window.

    Parameters
    ----------
    patches : ndarray of shape (n, size * size) or (n,)
        Flattened patches (row-major), or one value per patch.
    centers : ndarray of shape (n, 2), int
        ``(y, x)`` centre of each patch.  Duplicated centres are allowed.
    shape : tuple of 2 int
        Output image shape ``(Y, X)``.
    size : int, optional
        Odd patch size (default 7).
    patch_weights : ndarray of shape (n,), optional
        Non-negative weight of each patch (default 1).
    fill : float, optional
        Value of pixels that no patch covers (weight 0).  Default NaN.

    Returns
    -------
    image : ndarray of shape (Y, X), float32
        Weighted mean of the overlapping patches.
    weight : ndarray of shape (Y, X), float32
        Sum of the weights of the patches covering each pixel (the number of
        patches for unit weights).

    Notes
    -----
    Accumulation is in float64, one scatter per patch offset (``size**2``
    vectorised scatters of n values), so unchanged patches give the image
    back exactly up to float32 rounding.
    """
    size = check_patch_size(size)
    if len(shape) != 2:
        raise ValueError(f"Expected a 2-D output shape (Y, X); received {shape!r}.")
    shape = (int(shape[0]), int(shape[1]))
    centers = _check_centers(centers, shape)
    n = len(centers)
    p = np.asarray(patches)
    per_patch_scalar = p.ndim == 1
    if per_patch_scalar:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] != n or (not per_patch_scalar and p.shape[1] != size * size):
        raise ValueError(
            f"Expected patches of shape ({n}, {size * size}) or ({n},) for {n} centres and size={size}; "
            f"received {np.asarray(patches).shape}."
        )
    w = None
    if patch_weights is not None:
        w = np.asarray(patch_weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"Expected patch_weights of shape ({n},); received {w.shape}.")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(
                "Expected finite non-negative patch_weights; received negative or NaN/inf values."
            )
    r = size // 2
    hp, wp = shape[0] + 2 * r, shape[1] + 2 * r
    # flat index of each patch's top-left corner in the padded canvas
    flat_c = centers[:, 0] * wp + centers[:, 1]
    counts = np.bincount(flat_c, minlength=hp * wp)
    unique = n == 0 or counts.max() <= 1
    # weight map: box sum of the per-centre weights (exact, float64)
    centre_w = (
        np.bincount(flat_c, weights=w, minlength=hp * wp)
        if w is not None
        else counts.astype(np.float64)
    )
    wmap = _box_sum(centre_w.reshape(hp, wp)[: shape[0], : shape[1]], size)
    vals = p.astype(np.float64) * w[:, None] if w is not None else p
    out = np.full(shape, fill, dtype=np.float64)
    covered = wmap > 0
    if per_patch_scalar:  # one value over the whole window: a box sum of the centre values
        centre_v = np.bincount(flat_c, weights=vals[:, 0], minlength=hp * wp)
        acc = _box_sum(centre_v.reshape(hp, wp)[: shape[0], : shape[1]], size)
        out[covered] = acc[covered] / wmap[covered]
        return out.astype(np.float32), wmap.astype(np.float32)
    acc = np.zeros(hp * wp, dtype=np.float64)
    cols = np.ascontiguousarray(vals.T, dtype=np.float64)  # one contiguous row per offset: 2x faster
    for dy in range(size):
        for dx in range(size):
            col = cols[dy * size + dx]
            idx = flat_c + (dy * wp + dx)
            # distinct centres -> distinct targets for a fixed offset: plain scatter is exact
            if unique:
                acc[idx] += col
            else:
                acc += np.bincount(idx, weights=col, minlength=hp * wp)
    acc = acc.reshape(hp, wp)[r : r + shape[0], r : r + shape[1]]
    out[covered] = acc[covered] / wmap[covered]
    return out.astype(np.float32), wmap.astype(np.float32)
