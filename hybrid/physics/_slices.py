"""Slice-by-slice driving shared by :func:`scan` and :func:`simulate_low_dose`.

Input unpacking (Volume or 2-D/3-D array), random generators, progress bar, batches.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hybrid.physics.projector import DEFAULT_PIXEL_SIZE_MM


def _as_rng(rng: Any, *, where: str) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"Expected rng to be a numpy.random.Generator or an int seed in {where}; "
        f"received {type(rng).__name__}. Pass e.g. rng=np.random.default_rng(0) so results "
        "are reproducible."
    )


def _unpack(data: Any, pixel_size_mm: float | None, *, where: str):
    """(3-D float32 array, pixel size, wrap-back function) for a Volume or 2-D/3-D array."""
    from hybrid.volume import Volume, as_hu_array

    if isinstance(data, Volume):
        sy, sx = data.spacing[1], data.spacing[2]
        if pixel_size_mm is None:
            if not math.isclose(sy, sx, rel_tol=1e-3):
                raise ValueError(
                    f"Expected square pixels; received spacing (y, x) = ({sy}, {sx}) mm. "
                    "Resample the volume or pass pixel_size_mm= explicitly."
                )
            pixel_size_mm = sy
        return data.array, float(pixel_size_mm), lambda arr, step: data.with_array(arr, step=step)
    arr = as_hu_array(data, name=f"{where} input")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"Expected a 2-D slice (y, x) or a 3-D volume (z, y, x) in HU for {where}; "
            f"received shape {arr.shape}."
        )
    squeeze = arr.ndim == 2
    if pixel_size_mm is None:
        pixel_size_mm = DEFAULT_PIXEL_SIZE_MM
    vol = arr[np.newaxis] if squeeze else arr
    return vol, float(pixel_size_mm), (lambda out, step: out[0] if squeeze else out)


def _progress(*, total: int, enabled: bool, desc: str):
    """A manual tqdm bar over ``total`` slices, or None when disabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="slice")


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)
