"""Hounsfield units <-> linear attenuation coefficient at the effective energy."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MU_WATER_PER_MM", "hu_to_mu", "mu_to_hu"]

#: Linear attenuation coefficient of water (1/mm) at the effective energy of a
#: 120 kVp chest CT beam, about 70 keV.  NIST XCOM gives mu/rho = 0.2059 cm^2/g
#: at 60 keV and 0.1837 cm^2/g at 80 keV; log-log interpolation gives
#: 0.1937 cm^2/g at 70 keV, i.e. 0.0193 /mm for water of 1 g/cm^3.
MU_WATER_PER_MM = 0.0193


def hu_to_mu(hu: Any, *, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Convert Hounsfield units to linear attenuation coefficients.

    Parameters
    ----------
    hu : array_like
        Values in HU (air -1000, water 0).
    mu_water : float, optional
        Attenuation coefficient of water in 1/mm (default :data:`MU_WATER_PER_MM`).

    Returns
    -------
    ndarray
        ``mu_water * (1 + hu / 1000)`` in 1/mm, float32 for float32 or integer
        input, float64 for float64 input.  Values below -1000 HU give negative
        attenuation; clip first where that matters.
    """
    hu = np.asarray(hu)
    dtype = np.float64 if hu.dtype == np.float64 else np.float32
    return ((hu.astype(dtype, copy=False) + dtype(1000.0)) * dtype(mu_water / 1000.0)).astype(
        dtype, copy=False
    )


def mu_to_hu(mu: Any, *, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """Convert linear attenuation coefficients (1/mm) to Hounsfield units.

    Parameters
    ----------
    mu : array_like
        Attenuation coefficients in 1/mm.
    mu_water : float, optional
        Attenuation coefficient of water in 1/mm (default :data:`MU_WATER_PER_MM`).

    Returns
    -------
    ndarray
        ``1000 * (mu / mu_water - 1)`` in HU (float32 unless the input is float64).
    """
    mu = np.asarray(mu)
    dtype = np.float64 if mu.dtype == np.float64 else np.float32
    return (mu.astype(dtype, copy=False) * dtype(1000.0 / mu_water) - dtype(1000.0)).astype(
        dtype, copy=False
    )
