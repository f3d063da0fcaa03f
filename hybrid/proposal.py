"""The one contract of every proposer (CNN pair, dictionary, baselines) and their registry.

A *proposer* turns a low-dose image into a proposed normal-dose image::

    proposer.propose(volume, *, lung_mask=None, body_mask=None) -> Proposal

``volume`` is a :class:`~hybrid.volume.Volume` or an HU array of shape
(Z, Y, X) or (Y, X); the masks are optional boolean arrays of its shape (a
proposer that needs one and is given none computes it with
:mod:`hybrid.lung`).  Settings (stride, neighbours, batch size, ...) belong
to the proposer's constructor, never to ``propose``.  The input is never
modified; a 2-D slice gives the same image as a one-slice volume.

The :class:`Proposal` says what its per-pixel map holds (``kind``), so that
the blender and the evaluation never guess.  Every proposer is registered by
name in :mod:`hybrid.proposers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Proposal", "Proposer", "UNCERTAINTY_KINDS"]

#: What a proposal's ``uncertainty`` map can hold.  Every kind: low = trustworthy.
UNCERTAINTY_KINDS = {
    "nn_distance": "normalised nearest-neighbour distance of the dictionary match "
                   "(about 1 or below: as close as the noise allows; inf: no match)",
    "flip_disagreement_hu": "|f(x) - mirror(f(mirror(x)))| in HU between the proposer's "
                            "estimates of the image and of its left-right mirror",
    "noise_ratio": "estimated noise of the slice over that of a normal-dose scan of its "
                   "noise texture (about 1 or below: normal dose; 1/sqrt(f) at dose fraction f)",
}


@dataclass(frozen=True, eq=False)
class Proposal:
    """A proposed normal-dose image.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X) or (Y, X)
        Proposed normal-dose image in HU, float32.
    uncertainty : ndarray of the same shape, or None
        Per-pixel map of how far to trust ``image`` (low = trustworthy).
    kind : str or None
        What ``uncertainty`` holds: a key of :data:`UNCERTAINTY_KINDS`
        (required with a map, None without one).
    name : str
        Short name of the proposer ("cnn", "dictionary", "nlm", ...).
    """

    image: np.ndarray
    uncertainty: np.ndarray | None = None
    kind: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        image = np.asarray(self.image, dtype=np.float32)
        object.__setattr__(self, "image", image)
        if self.uncertainty is None:
            if self.kind is not None:
                raise ValueError(
                    f"Expected kind=None for a proposal without an uncertainty map; "
                    f"received kind={self.kind!r}."
                )
            return
        if self.kind not in UNCERTAINTY_KINDS:
            raise ValueError(
                f"Invalid value for argument `kind`. Expected one of {sorted(UNCERTAINTY_KINDS)} "
                f"with an uncertainty map. Received kind={self.kind!r}."
            )
        unc = np.asarray(self.uncertainty, dtype=np.float32)
        if unc.shape != image.shape:
            raise ValueError(
                f"Expected an uncertainty map of the image's shape {image.shape}; "
                f"received {unc.shape}."
            )
        object.__setattr__(self, "uncertainty", unc)


@runtime_checkable
class Proposer(Protocol):
    """What every proposer offers (see the module docstring)."""

    name: str

    def propose(self, volume: Any, *, lung_mask: Any = None, body_mask: Any = None) -> Proposal:
        ...
