"""Simulated CT acquisition of a phantom through :mod:`hybrid.physics`."""

from __future__ import annotations

from typing import Any

import numpy as np

from hybrid.phantom.patient import Phantom
from hybrid.volume import Provenance, Volume

__all__ = ["scan_phantom"]


def scan_phantom(
    phantom: Phantom,
    *,
    dose_fraction: float = 1.0,
    kernel: str = "standard",
    rng: np.random.Generator | int | None = None,
    **scan_options: Any,
) -> Volume:
    """Simulate a CT acquisition of a phantom with :func:`hybrid.physics.scan`.

    Parameters
    ----------
    phantom : Phantom
        From :func:`make_patient`.
    dose_fraction : float, keyword-only
        Fraction of the normal dose (e.g. 0.02 for ultra-low dose).
    kernel : str, keyword-only
        Reconstruction kernel name understood by :func:`hybrid.physics.scan`.
    rng : numpy Generator or int, optional
        Noise seed; default: derived from the phantom seed (reproducible).
    **scan_options
        Passed on to :func:`hybrid.physics.scan` (e.g. ``i0``).

    Returns
    -------
    Volume
        The reconstructed noisy image in HU with the phantom's spacing.
    """
    if not isinstance(phantom, Phantom):
        raise TypeError(
            f"Expected a hybrid.phantom.Phantom; received {type(phantom).__name__}. "
            "Create one with hybrid.phantom.make_patient(seed)."
        )
    from hybrid.physics.scan import scan  # late import: physics is optional for the phantom itself

    if rng is None:
        rng = np.random.default_rng([phantom.seed, 0x5CA7])
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    img = scan(
        phantom.truth,
        dose_fraction=dose_fraction,
        kernel=kernel,
        pixel_size_mm=phantom.spacing[2],
        rng=rng,
        **scan_options,
    )
    prov = Provenance(
        source=None,
        modality="CT",
        kernel=kernel,
        description=f"hybrid.phantom seed={phantom.seed} scan dose_fraction={dose_fraction}",
        derived_from=(
            f"hybrid.phantom.make_patient(seed={phantom.seed})",
            f"hybrid.physics.scan(dose_fraction={dose_fraction}, kernel={kernel!r})",
        ),
    )
    return Volume(np.asarray(img, dtype=np.float32), phantom.spacing, prov)
