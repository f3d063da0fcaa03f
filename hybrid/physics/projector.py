"""Parallel-beam projector with an exact adjoint and filtered back-projection."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from hybrid.physics.kernels import _check_kernel, _padded_size, _ramp_filter

__all__ = ["DEFAULT_PIXEL_SIZE_MM", "DEFAULT_N_VIEWS", "Projector"]

#: Default pixel size (mm) for plain arrays: a 40 cm field of view on 512 pixels.
DEFAULT_PIXEL_SIZE_MM = 0.8

#: Default number of views over 180 degrees (must be a multiple of 4).
DEFAULT_N_VIEWS = 360


def _detector_half(n: int) -> int:
    """Detector bins on each side of the centre bin for an ``n x n`` image (covers its diagonal)."""
    return int(math.ceil((n - 1) / math.sqrt(2.0) + 2.0))


@functools.lru_cache(maxsize=2)
def _system_matrix(n: int, n_views: int):
    """Transposed system matrix (pixels x rays) for the views in [0, 45) degrees.

    Pixel units (pixel side 1, bin width 1).  Entry (pixel, k * n_det + d) is the
    fraction of the pixel's projection at angle theta_k that falls in bin d: the
    pixel's footprint (box of width cos * box of width sin) convolved with the
    bin (box of width 1), i.e. the convolution of three unit-area boxes, which is
    a sum of eight shifted half-squares.
    """
    import scipy.sparse as sp

    nq = n_views // 4
    half = _detector_half(n)
    n_det = 2 * half + 1
    theta = (np.arange(nq) + 0.5) * np.pi / n_views
    c, s = np.cos(theta), np.sin(theta)
    coords = np.arange(n) - (n - 1) / 2.0
    offsets = np.arange(-1, 2)
    # corners of the three boxes: shifts (e1 c + e2 s + e3) / 2, signs e1 e2 e3
    corners = [
        (0.5 * (e1 * c + e2 * s + e3), 0.5 * e1 * e2 * e3)
        for e1 in (1, -1)
        for e2 in (1, -1)
        for e3 in (1, -1)
    ]
    inv_cs = 1.0 / (c * s)
    col0 = np.arange(nq) * n_det + half
    rows_per_chunk = max(1, 1_500_000 // (n * nq * 3))
    data, indices, counts = [], [], []
    for i0 in range(0, n, rows_per_chunk):
        ys = coords[i0 : i0 + rows_per_chunk]
        # (r, n, nq): pixel centres projected on the detector
        t = ys[:, None, None] * s + coords[None, :, None] * c
        d = np.rint(t)[..., None] + offsets  # (r, n, nq, 3) candidate bins (relative to centre)
        delta = d - t[..., None]
        w = np.zeros_like(delta)
        for shift, half_sign in corners:
            x = delta + shift[:, None]
            np.maximum(x, 0.0, out=x)
            w += half_sign * x * x
        w *= inv_cs[:, None]
        keep = w > 1e-9
        counts.append(keep.reshape(-1, nq * 3).sum(axis=1))
        indices.append((d + col0[:, None])[keep].astype(np.int32))
        data.append(w[keep].astype(np.float32))
    indptr = np.zeros(n * n + 1, np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    mt = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr), shape=(n * n, nq * n_det)
    )
    return mt, n_det


class Projector:
    """Parallel-beam projector, its exact adjoint and filtered back-projection.

    Parameters
    ----------
    shape : tuple of 2 int
        Image shape ``(ny, nx)`` in pixels.  Non-square images are padded with
        zeros (air) to a square internally.
    pixel_size_mm : float, optional
        Pixel side in mm (square pixels).  Line integrals are in units of
        (image unit) x mm, so an image in 1/mm gives dimensionless line integrals.
    n_views : int, optional
        Number of views over 180 degrees, a multiple of 4 (default 360).

    Attributes
    ----------
    angles : ndarray
        View angles in radians, ``(k + 1/2) * pi / n_views``.
    n_det : int
        Number of detector bins (bin width = ``pixel_size_mm``), enough to cover
        the image's diagonal.
    sinogram_shape : tuple of 2 int
        ``(n_views, n_det)``.

    Notes
    -----
    ``A`` integrates the exact footprint of each square pixel over each
    detector bin; ``A_adjoint`` is its exact transpose (see
    :meth:`adjointness_test`); ``fbp`` is ``pi / (n_views * pixel_size_mm**2)``
    times ``A_adjoint`` of the sinogram filtered with the band-limited ramp
    (Kak & Slaney, *Principles of Computerized Tomographic Imaging*, 1988,
    ch. 3) apodised by the kernel's window.  The sparse matrix is built on
    first use and cached per (square size, n_views) (build time and memory:
    ``experiments/results/bench_physics.md``).  Batched input ``(..., ny, nx)``
    is processed in one sparse product.

    Examples
    --------
    >>> import numpy as np
    >>> proj = Projector((64, 64), pixel_size_mm=1.0, n_views=64)
    >>> sino = proj.A(np.ones((64, 64), np.float32))
    >>> sino.shape == proj.sinogram_shape
    True
    >>> proj.adjointness_test(np.random.default_rng(0)) < 1e-4
    True
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        pixel_size_mm: float = DEFAULT_PIXEL_SIZE_MM,
        n_views: int = DEFAULT_N_VIEWS,
    ) -> None:
        ny, nx, pixel_size_mm = _check_geometry(shape, pixel_size_mm, n_views)
        self.shape = (ny, nx)
        self.pixel_size_mm = pixel_size_mm
        self.n_views = int(n_views)
        self._n = max(ny, nx)
        self._pad = ((self._n - ny) // 2, (self._n - nx) // 2)
        self.n_det = 2 * _detector_half(self._n) + 1
        self.angles = (np.arange(self.n_views) + 0.5) * np.pi / self.n_views

    def __repr__(self) -> str:
        return (
            f"Projector(shape={self.shape}, pixel_size_mm={self.pixel_size_mm}, "
            f"n_views={self.n_views}, n_det={self.n_det})"
        )

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        return (self.n_views, self.n_det)

    # -- internals -----------------------------------------------------------

    def _matrix(self):
        mt, n_det = _system_matrix(self._n, self.n_views)
        assert n_det == self.n_det
        return mt

    # -- public interface ----------------------------------------------------

    def A(self, image: Any) -> np.ndarray:
        """Forward projection: line integrals through ``image``.

        Parameters
        ----------
        image : array_like of shape (..., ny, nx)
            Values per pixel (e.g. attenuation in 1/mm).

        Returns
        -------
        ndarray of shape (..., n_views, n_det), float32
            Line integrals in (image unit) x mm.
        """
        imgs, lead = _as_batch(image, self.shape, "an image")
        (py, px), (ny, nx) = self._pad, self.shape
        sq = np.zeros((imgs.shape[0], self._n, self._n), np.float32)
        sq[:, py : py + ny, px : px + nx] = imgs
        sino = _project_square(self._matrix(), sq, self.n_views, self.n_det)
        sino *= np.float32(self.pixel_size_mm)
        return sino.reshape(lead + self.sinogram_shape)

    def A_adjoint(self, sinogram: Any) -> np.ndarray:
        """Exact adjoint (transpose) of :meth:`A`: unfiltered back-projection.

        Parameters
        ----------
        sinogram : array_like of shape (..., n_views, n_det)

        Returns
        -------
        ndarray of shape (..., ny, nx), float32
            ``A.T @ sinogram``, so that ``<A x, y> == <x, A_adjoint(y)>``.
        """
        sinos, lead = _as_batch(sinogram, self.sinogram_shape, "a sinogram")
        img = _backproject_square(self._matrix(), sinos, self._n)
        img *= np.float32(self.pixel_size_mm)
        (py, px), (ny, nx) = self._pad, self.shape
        out = np.ascontiguousarray(img[:, py : py + ny, px : px + nx])
        return out.reshape(lead + self.shape)

    def filter_sinogram(self, sinogram: Any, *, kernel: str = "standard") -> np.ndarray:
        """Ramp-filter a sinogram along the detector with the kernel's window.

        Parameters
        ----------
        sinogram : array_like of shape (..., n_views, n_det)
        kernel : {"smooth", "standard", "sharp", "ramp"}
            Window on the ramp; MTF50 of the whole scan (A then FBP) at
            0.8 mm pixels, and noise relative to "standard" at equal dose:

            - "smooth": Hann window (zero at Nyquist): 0.24 lp/mm, noise x0.5.
            - "standard": Hann window reaching zero at 1.4 x Nyquist, divided
              by the sinc^2 blur of the projector's footprints: 0.31 lp/mm.
              Noise texture like the Philips "B" kernel (ratio of
              adjacent-pixel to 7x7-patch noise: measured 0.79 on the A0001
              kernel-B series, 0.88 here on white sinogram noise / ~0.77
              inserted into that series).
            - "sharp": full ramp divided by sinc^2 with a high-frequency boost
              ``1 + 8 nu^2``: 0.50 lp/mm, noise x5.4, like the Philips "L" lung
              kernel (42 vs 8 HU on A0001).
            - "ramp": the band-limited ramp without window or compensation
              (only the projector's own footprint blur): a medium-sharp
              body kernel between "standard" and "sharp", whose noise power
              spectrum rises to ~0.3 cycles/pixel and stays high up to
              Nyquist, like the Mayo 2016 routine-dose body scans
              (``experiments/results/simulator_check.md``).

        Returns
        -------
        ndarray, float32, same shape
        """
        from scipy.fft import irfft, rfft

        _check_kernel(kernel)
        sinos, lead = _as_batch(sinogram, self.sinogram_shape, "a sinogram")
        response = _ramp_filter(self.n_det, kernel)
        size = _padded_size(self.n_det)
        spec = rfft(sinos, n=size, axis=-1)
        spec *= response.astype(np.complex64)
        out = irfft(spec, n=size, axis=-1)[..., : self.n_det].astype(np.float32, copy=False)
        return out.reshape(lead + self.sinogram_shape)

    def fbp(self, sinogram: Any, *, kernel: str = "standard") -> np.ndarray:
        """Filtered back-projection.

        Parameters
        ----------
        sinogram : array_like of shape (..., n_views, n_det)
            Line integrals (dimensionless for attenuation images).
        kernel : {"smooth", "standard", "sharp", "ramp"}
            Reconstruction kernel (see :meth:`filter_sinogram`).

        Returns
        -------
        ndarray of shape (..., ny, nx), float32
            The reconstructed image in the units of :meth:`A`'s input (1/mm for
            line integrals of attenuation).  Linear in ``sinogram``.
        """
        q = self.filter_sinogram(sinogram, kernel=kernel)
        img = self.A_adjoint(q)
        img *= np.float32(np.pi / (self.n_views * self.pixel_size_mm**2))
        return img

    def adjointness_test(self, rng: np.random.Generator | int | None = None) -> float:
        """Relative error of ``<A x, y>`` vs ``<x, A_adjoint y>`` for random x, y.

        Parameters
        ----------
        rng : numpy.random.Generator or int, optional
            Source of the random test vectors (uniform in [0, 1)).

        Returns
        -------
        float
            ``|<Ax, y> - <x, A^T y>| / |<Ax, y>|``; float32 round-off gives ~1e-7.
        """
        rng = np.random.default_rng(rng)
        x = rng.random(self.shape, dtype=np.float32)
        y = rng.random(self.sinogram_shape, dtype=np.float32)
        lhs = float(np.vdot(self.A(x).astype(np.float64), y.astype(np.float64)))
        rhs = float(np.vdot(x.astype(np.float64), self.A_adjoint(y).astype(np.float64)))
        return abs(lhs - rhs) / abs(lhs)


# -- module functions behind Projector -------------------------------------


def _check_geometry(shape: Any, pixel_size_mm: Any, n_views: Any) -> tuple[int, int, float]:
    """Validated ``(ny, nx, pixel_size_mm)``; ``n_views`` must be a positive multiple of 4."""
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"Expected shape as 2 positive ints (ny, nx); received {shape!r}."
        ) from exc
    if ny < 2 or nx < 2:
        raise ValueError(f"Expected an image of at least 2 x 2 pixels; received shape {shape!r}.")
    pixel_size_mm = float(pixel_size_mm)
    if not (np.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise ValueError(
            f"Expected a positive pixel_size_mm; received {pixel_size_mm!r}. "
            "Pass the in-plane pixel spacing in mm (e.g. 0.8)."
        )
    if isinstance(n_views, bool) or int(n_views) != n_views or n_views < 4 or n_views % 4:
        raise ValueError(
            f"Expected n_views to be a positive multiple of 4; received {n_views!r}. "
            "The projector uses the square grid's 8-fold symmetry; try 360."
        )
    return ny, nx, pixel_size_mm


def _as_batch(x: Any, expected: tuple[int, int], what: str) -> tuple[np.ndarray, tuple]:
    """``x`` as a contiguous float32 batch ``(b, *expected)`` and its leading shape."""
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.shape[-2:] != expected:
        raise ValueError(
            f"Expected {what} of shape (..., {expected[0]}, {expected[1]}); received shape "
            f"{arr.shape}. Build a Projector for this size or transpose/crop the input."
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"Expected a numeric {what}; received dtype {arr.dtype}.")
    lead = arr.shape[:-2]
    return np.ascontiguousarray(arr.reshape((-1,) + expected), dtype=np.float32), lead


def _project_square(mt, sq: np.ndarray, n_views: int, n_det: int) -> np.ndarray:
    """Sinograms ``(b, n_views, n_det)`` of square images ``(b, n, n)``, in pixel units.

    One sparse product with the [0, 45) degree matrix ``mt`` on four
    transposed/flipped copies of each image gives the four quarters of views.
    """
    b, n, nq = sq.shape[0], sq.shape[1], n_views // 4
    t = np.swapaxes(sq, 1, 2)
    x = np.stack([sq, t, t[:, ::-1, :], sq[:, :, ::-1]], axis=-1)  # (b, n, n, 4)
    x = np.ascontiguousarray(np.moveaxis(x, 0, -2)).reshape(n * n, b * 4)
    s = (mt.T @ x).reshape(nq, n_det, b, 4)
    s = np.moveaxis(s, 2, 0)  # (b, nq, n_det, 4)
    sino = np.empty((b, n_views, n_det), np.float32)
    sino[:, 0:nq] = s[..., 0]
    sino[:, nq : 2 * nq] = s[:, ::-1, :, 1]
    sino[:, 2 * nq : 3 * nq] = s[..., 2]
    sino[:, 3 * nq :] = s[:, ::-1, :, 3]
    return sino


def _backproject_square(mt, sinos: np.ndarray, n: int) -> np.ndarray:
    """Transpose of :func:`_project_square`: square images ``(b, n, n)`` from ``(b, n_views, n_det)``."""
    b, n_views, n_det = sinos.shape
    nq = n_views // 4
    y = np.empty((nq, n_det, b, 4), np.float32)
    s = np.moveaxis(sinos, 0, -1)  # (n_views, n_det, b)
    y[..., 0] = s[0:nq]
    y[..., 1] = s[nq : 2 * nq][::-1]
    y[..., 2] = s[2 * nq : 3 * nq]
    y[..., 3] = s[3 * nq :][::-1]
    z = (mt @ y.reshape(nq * n_det, b * 4)).reshape(n, n, b, 4)
    z = np.moveaxis(z, 2, 0)  # (b, n, n, 4)
    img = z[..., 0] + np.swapaxes(z[..., 1], 1, 2) + np.swapaxes(z[:, ::-1, :, 2], 1, 2)
    img += z[:, :, ::-1, 3]
    return img
