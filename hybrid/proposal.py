"""The common call shape of every proposer (CNN pair, dictionary, baselines).

Each proposer turns a low-dose image into a proposed normal-dose image and,
where it can, a per-pixel confidence or distance map, so that the blender and
the evaluation treat them alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Proposal"]


@dataclass(frozen=True, eq=False)
class Proposal:
    """A proposed normal-dose image.

    Parameters
    ----------
    image : ndarray of shape (Z, Y, X) or (Y, X)
        Proposed normal-dose image in HU, float32.
    confidence : ndarray of the same shape, or None
        Per-pixel confidence or distance map; its meaning is documented by the
        proposer that made it (the dictionary returns a normalised
        nearest-neighbour distance: low means a close match).
    name : str
        Short name of the proposer ("cnn", "dictionary", "nlm", ...).
    """

    image: np.ndarray
    confidence: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        image = np.asarray(self.image, dtype=np.float32)
        object.__setattr__(self, "image", image)
        if self.confidence is not None:
            conf = np.asarray(self.confidence, dtype=np.float32)
            if conf.shape != image.shape:
                raise ValueError(
                    f"Expected a confidence map of the image's shape {image.shape}; "
                    f"received {conf.shape}."
                )
            object.__setattr__(self, "confidence", conf)
