"""Reconstruction kernels: ramp-filter windows, kernel conversion, DICOM kernel names."""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

__all__ = ["KERNELS", "convert_kernel", "kernel_for"]

#: Reconstruction kernels of :meth:`Projector.fbp` ("ramp" was added last so that
#: the first three keep their positions).
KERNELS = ("smooth", "standard", "sharp", "ramp")

_SHARP_NAMES = ("LUNG", "BONE", "EDGE", "DETAIL", "SHARP", "HIGH")
_SMOOTH_NAMES = ("SOFT", "SMOOTH")


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(
            f"Expected kernel to be one of {KERNELS}; received {kernel!r}. "
            "'smooth' for low noise, 'standard' for soft tissue, 'ramp' for a medium-sharp "
            "body kernel, 'sharp' for lung detail."
        )
    return kernel


@functools.lru_cache(maxsize=8)
def _ramp_filter(n_det: int, kernel: str) -> np.ndarray:
    """Frequency response (rfft layout) of the apodised ramp filter, padded length."""
    from scipy.fft import next_fast_len, rfftfreq

    size = next_fast_len(2 * n_det)
    # Spatial band-limited ramp (Ram-Lak) kernel, Kak & Slaney eq. 3.61, in
    # pixel units: h[0] = 1/4, h[odd k] = -1/(pi k)^2, h[even k] = 0.  Its DFT is
    # the ramp |nu| (cycles/sample) without the DC error of a sampled |nu|.
    k = np.concatenate([np.arange(0, size // 2 + 1), np.arange(-((size - 1) // 2), 0)])
    h = np.zeros(size)
    h[0] = 0.25
    odd = k % 2 == 1
    h[odd] = -1.0 / (np.pi * k[odd]) ** 2
    response = np.real(np.fft.rfft(h))
    return response * _kernel_window(kernel, rfftfreq(size))


@functools.lru_cache(maxsize=8)
def _padded_size(n_det: int) -> int:
    from scipy.fft import next_fast_len

    return next_fast_len(2 * n_det)


def _kernel_window(kernel: str, nu: np.ndarray) -> np.ndarray:
    """Apodisation window of a reconstruction kernel at frequencies ``nu`` (cycles/sample)."""
    # A and A_adjoint each blur by about a linear-interpolation footprint
    # (sinc^2 in frequency together); "standard" and "sharp" undo that.
    footprint = np.sinc(nu) ** 2
    if kernel == "smooth":
        return 0.5 * (1.0 + np.cos(2.0 * np.pi * nu))  # Hann, zero at Nyquist
    if kernel == "standard":
        cutoff = 0.7  # Hann reaching zero at 1.4 x Nyquist, footprint-compensated
        return 0.5 * (1.0 + np.cos(np.pi * nu / cutoff)) / footprint
    if kernel == "sharp":
        return (1.0 + 8.0 * nu**2) / footprint  # full ramp, high frequencies boosted
    if kernel == "ramp":
        return np.ones_like(nu)  # the band-limited ramp alone, no apodisation
    raise AssertionError(kernel)  # pragma: no cover - validated by the caller


def convert_kernel(image: Any, from_kernel: str, to_kernel: str) -> np.ndarray:
    """Re-filter an image as if it had been reconstructed with another kernel.

    Filtered back-projection is linear and its kernel acts as a radial filter
    on the image, so an image reconstructed with kernel A becomes one
    reconstructed with kernel B by multiplying its 2-D spectrum (per slice)
    by ``W_B(rho) / W_A(rho)``, the ratio of the kernels' windows
    (:func:`_kernel_window`, the ones :func:`scan` and :func:`simulate_low_dose`
    use) at radial frequency ``rho`` (capped at Nyquist, 0.5 cycles/pixel, in
    the spectrum's corners).  Structure and the scan's own noise are changed
    together, as a reconstruction with that kernel would: a real 11 HU
    standard-kernel chest scan becomes a ~40 HU sharp one.  Going to a
    smoother kernel is stable; to a sharper one it amplifies what the source
    kernel had attenuated (the ratio reaches ~16 at Nyquist from "standard"
    to "sharp"), which is the point.

    Parameters
    ----------
    image : Volume or ndarray (y, x) or (z, y, x)
        Image in HU.
    from_kernel, to_kernel : {"smooth", "standard", "sharp", "ramp"}

    Returns
    -------
    ndarray, float32, the input's shape (HU)
    """
    from scipy.fft import fftfreq, irfft2, rfft2

    from hybrid.volume import Volume

    _check_kernel(from_kernel)
    _check_kernel(to_kernel)
    arr = np.asarray(image.array if isinstance(image, Volume) else image, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"Expected a slice (y, x) or a volume (z, y, x); received shape {arr.shape}."
        )
    ny, nx = arr.shape[-2:]
    rho = np.minimum(np.hypot(fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :]), 0.5)
    ratio = _kernel_window(to_kernel, rho) / _kernel_window(from_kernel, rho)
    # filter the attenuation (HU + 1000, air = 0) so that the air around the patient stays air
    out = irfft2(rfft2(arr + 1000.0, axes=(-2, -1)) * ratio, s=(ny, nx), axes=(-2, -1)) - 1000.0
    return out.astype(np.float32)


def kernel_for(dicom_kernel: str | None) -> str:
    """Map a DICOM ConvolutionKernel name to one of :data:`KERNELS`.

    GE SOFT -> smooth, STANDARD -> standard, LUNG/BONE/DETAIL/EDGE -> sharp;
    Philips A -> smooth, B/C -> standard, D/E/L/Y* -> sharp; Siemens
    B/Br/I/Hr/Qr with number < 30 -> smooth, 30-49 -> standard, >= 50 ->
    sharp; Toshiba/Canon FC >= 50 -> sharp; anything else (or None) ->
    "standard".
    """
    if not dicom_kernel:
        return "standard"
    name = str(dicom_kernel).strip().upper()
    if any(word in name for word in _SHARP_NAMES):
        return "sharp"
    if any(word in name for word in _SMOOTH_NAMES):
        return "smooth"
    m = re.match(r"^(?:[BIHQD]R?|[BIHQ]F?)(\d{2})", name)
    if m:
        num = int(m.group(1))
        return "smooth" if num < 30 else ("standard" if num < 50 else "sharp")
    m = re.match(r"^FC(\d{2})", name)
    if m:
        return "sharp" if int(m.group(1)) >= 50 else "standard"
    if name in ("A",):
        return "smooth"
    if name in ("D", "E", "L") or re.match(r"^(Y[A-F]|E[ABC]?|L)$", name):
        return "sharp"
    return "standard"
