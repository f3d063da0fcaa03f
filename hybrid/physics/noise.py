"""Photon-counting detector noise: exposure, electronic noise, the noise model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_I0", "ULD_DOSE_FRACTION", "ELECTRONIC_NOISE_COUNTS", "NoiseModel"]

#: Incident photons per ray (one detector bin in one view of the simulated
#: geometry) at normal dose.  Simulation studies put a normal-dose adult scan at
#: 1e5 to 2e5 photons per detector reading; a simulated ray gathers about three
#: readings (a clinical scanner takes ~1160 fan views per 360 degrees, so every
#: line is measured ~3 times as often as in 360 parallel views over 180
#: degrees): 1.5e5 x 3.3 = 5e5.  Check, with 0.8 mm pixels and the "standard"
#: kernel, :func:`scan` gives (measured): 12 HU in the soft tissue of a
#: 32 x 22 cm chest phantom with lungs (73 HU at 2 % dose), 10 HU in the centre
#: of a 16 cm water cylinder, 15 HU at 20 cm and 40 HU at 30 cm.
DEFAULT_I0 = 5.0e5

#: Dose fraction of an ultra-low-dose chest scan relative to normal dose (2 %).
ULD_DOSE_FRACTION = 0.02

#: Standard deviation of the Gaussian electronic (detector read-out) noise, in
#: photon counts per ray: variance 10 counts^2, the value measured on a clinical
#: scanner by Wang, Lu, Liang et al. (Proc. SPIE 6913, 2008) and used in the
#: low-dose simulation literature (e.g. Zeng et al., IEEE TNS 62(5):2226, 2015).
ELECTRONIC_NOISE_COUNTS = math.sqrt(10.0)

#: Smallest number of photons a ray may record before the log (counts at or
#: below zero after electronic noise are set to this, as scanners do).
_MIN_COUNTS = 1.0


@dataclass(frozen=True)
class NoiseModel:
    """Photon-counting noise of a CT detector, with its parameters.

    A ray whose noise-free line integral is ``p`` records
    ``N ~ Poisson(f * i0 * exp(-p)) + Normal(0, electronic_noise**2)`` counts
    at dose fraction ``f``; the scanner clips ``N`` to at least ``min_counts``
    and takes ``p_hat = log(f * i0 / N)``.

    Parameters
    ----------
    i0 : float
        Incident photons per ray (detector bin x view) at normal dose
        (``f = 1``).  Default :data:`DEFAULT_I0` = 5e5.
    electronic_noise : float
        Standard deviation of the electronic noise in counts.  Default
        :data:`ELECTRONIC_NOISE_COUNTS` = sqrt(10) ~ 3.2 (variance 10 counts^2).
    min_counts : float
        Floor applied to the counts before the log (default 1).

    Notes
    -----
    To first order (delta method) the log data have variance
    ``exp(p) / (f i0) + sigma_e**2 exp(2p) / (f i0)**2``, so the extra variance
    that going from dose 1 to dose ``f`` adds is (Zeng et al. 2015, eq. 9)
    ``exp(p) / i0 * (1/f - 1) + sigma_e**2 * exp(2p) / i0**2 * (1/f**2 - 1)``
    (:meth:`extra_variance`).
    """

    i0: float = DEFAULT_I0
    electronic_noise: float = ELECTRONIC_NOISE_COUNTS
    min_counts: float = _MIN_COUNTS

    def __post_init__(self) -> None:
        if not (np.isfinite(self.i0) and self.i0 > 0):
            raise ValueError(
                f"Expected i0 (incident photons per ray) > 0; received {self.i0!r}. "
                f"A normal-dose scan has about {DEFAULT_I0:g}."
            )
        if not (np.isfinite(self.electronic_noise) and self.electronic_noise >= 0):
            raise ValueError(
                f"Expected electronic_noise (std in counts) >= 0; received {self.electronic_noise!r}."
            )
        if not (np.isfinite(self.min_counts) and self.min_counts > 0):
            raise ValueError(f"Expected min_counts > 0; received {self.min_counts!r}.")

    def expected_counts(self, line_integrals: Any, dose_fraction: float = 1.0) -> np.ndarray:
        """Mean transmitted counts ``f * i0 * exp(-p)`` per ray."""
        p = np.asarray(line_integrals, dtype=np.float64)
        return _check_dose(dose_fraction) * self.i0 * np.exp(-p)

    def sample_counts(
        self, line_integrals: Any, dose_fraction: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Noisy counts: Poisson photons plus Gaussian electronic noise (float64)."""
        lam = self.expected_counts(line_integrals, dose_fraction)
        counts = rng.poisson(lam).astype(np.float64)
        if self.electronic_noise > 0:
            counts += rng.normal(0.0, self.electronic_noise, size=counts.shape)
        return counts

    def log(self, counts: Any, dose_fraction: float = 1.0) -> np.ndarray:
        """Line integrals ``log(f * i0 / max(N, min_counts))`` (float32)."""
        n = np.maximum(np.asarray(counts, dtype=np.float64), self.min_counts)
        return np.log(_check_dose(dose_fraction) * self.i0 / n).astype(np.float32)

    def sample_line_integrals(
        self, line_integrals: Any, dose_fraction: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Noisy line integrals of one acquisition: counts, then the log."""
        return self.log(self.sample_counts(line_integrals, dose_fraction, rng), dose_fraction)

    def variance(self, line_integrals: Any, dose_fraction: float = 1.0) -> np.ndarray:
        """First-order variance of the log data at dose fraction ``f``."""
        ep = np.exp(np.asarray(line_integrals, dtype=np.float64))
        fi0 = _check_dose(dose_fraction) * self.i0
        return ep / fi0 + self.electronic_noise**2 * ep**2 / fi0**2

    def extra_variance(self, line_integrals: Any, dose_fraction: float) -> np.ndarray:
        """Variance to add to normal-dose log data to simulate dose fraction ``f``.

        ``exp(p)/i0 * (1/f - 1) + sigma_e**2 * exp(2p)/i0**2 * (1/f**2 - 1)``,
        the difference of :meth:`variance` at ``f`` and at 1.
        """
        f = _check_dose(dose_fraction)
        ep = np.exp(np.asarray(line_integrals, dtype=np.float64))
        return ep / self.i0 * (1.0 / f - 1.0) + (self.electronic_noise * ep / self.i0) ** 2 * (
            1.0 / f**2 - 1.0
        )


def _check_dose(dose_fraction: float, *, at_most_one: bool = False) -> float:
    try:
        f = float(dose_fraction)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"Expected dose_fraction as a number in (0, 1]; received {dose_fraction!r}."
        ) from exc
    if not (np.isfinite(f) and f > 0) or (at_most_one and f > 1):
        limit = "(0, 1]" if at_most_one else "> 0"
        hint = " Noise insertion can only lower the dose of a real scan." if at_most_one else ""
        raise ValueError(
            f"Expected dose_fraction {limit} (e.g. 0.02 for an ultra-low-dose scan); "
            f"received {dose_fraction!r}.{hint}"
        )
    return f
