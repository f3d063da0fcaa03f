"""CT acquisition physics: attenuation, projection, photon noise, dose simulation.

What this package offers
------------------------
- :func:`hu_to_mu` / :func:`mu_to_hu` and :data:`MU_WATER_PER_MM`
  (:mod:`hybrid.physics.hu`): Hounsfield units <-> linear attenuation
  coefficient (1/mm) at the effective energy.
- :class:`Projector` (:mod:`hybrid.physics.projector`): a parallel-beam
  projector ``A``, its exact adjoint ``A_adjoint`` and filtered back-projection
  ``fbp`` with three kernels, behind one small interface, plus
  ``adjointness_test``.
- :data:`KERNELS`, :func:`convert_kernel` and :func:`kernel_for`
  (:mod:`hybrid.physics.kernels`): the reconstruction kernels, re-filtering an
  image to another kernel, DICOM kernel names.
- :class:`NoiseModel` (:mod:`hybrid.physics.noise`): transmitted photon counts
  ``Poisson(I0 * f * exp(-p)) + Normal(0, sigma_e**2)``, then the log.
- :func:`scan` (:mod:`hybrid.physics.scan`): "scan" a noise-free HU image (a
  phantom): project, add photon and electronic noise at a dose, log,
  reconstruct.
- :func:`simulate_low_dose` (:mod:`hybrid.physics.simulate`): turn a real
  normal-dose scan into a lower-dose one by inserting only the *extra* noise
  the lower dose adds (sinogram-domain noise insertion).
- :func:`estimate_noise_hu` (:mod:`hybrid.physics.estimate`): a robust
  soft-tissue noise estimate in HU.

Geometry
--------
Parallel-beam, ``n_views`` views (default 360) evenly spread over 180 degrees at
``(k + 1/2) * 180 / n_views`` degrees, detector bins as wide as a pixel.  Each
square pixel is projected with its exact footprint (a trapezoid) integrated over
the detector bin (a "strip-integral" model), so ``A`` is an accurate projector
and its transpose ``A_adjoint`` an accurate back-projector; the FBP is
``A_adjoint`` applied to the ramp-filtered sinogram, so the pair is consistent by
construction.  Clinical scanners are fan/helical-beam; for image noise and
streak texture a parallel-beam model is the usual approximation.

Implementation
--------------
The system matrix for the views in [0, 45) degrees is built once per
(image size, number of views) as a scipy sparse matrix (float32; cached for the
process, two sizes at most) and the other views follow from the eight-fold
symmetry of the square pixel grid (transposes and flips of the image), so one
sparse product with four right-hand sides per slice gives the whole sinogram.
The choice of this implementation over astra-toolbox and scikit-image's
``radon``/``iradon`` (no new dependency, an exact adjoint, faster here) was made
by measurement: ``python experiments/bench_physics.py``; the timings are in
``experiments/results/bench_physics.md``.
"""

from hybrid.physics.estimate import SOFT_TISSUE_HU, estimate_noise_hu
from hybrid.physics.hu import MU_WATER_PER_MM, hu_to_mu, mu_to_hu
from hybrid.physics.kernels import KERNELS, convert_kernel, kernel_for
from hybrid.physics.noise import DEFAULT_I0, ELECTRONIC_NOISE_COUNTS, ULD_DOSE_FRACTION, NoiseModel
from hybrid.physics.projector import DEFAULT_N_VIEWS, DEFAULT_PIXEL_SIZE_MM, Projector
from hybrid.physics.scan import scan
from hybrid.physics.simulate import simulate_low_dose

__all__ = [
    "MU_WATER_PER_MM",
    "DEFAULT_I0",
    "ULD_DOSE_FRACTION",
    "ELECTRONIC_NOISE_COUNTS",
    "DEFAULT_PIXEL_SIZE_MM",
    "DEFAULT_N_VIEWS",
    "KERNELS",
    "convert_kernel",
    "SOFT_TISSUE_HU",
    "hu_to_mu",
    "mu_to_hu",
    "Projector",
    "NoiseModel",
    "scan",
    "simulate_low_dose",
    "estimate_noise_hu",
    "kernel_for",
]
