"""Seeded patch sampling for the lung and body CNNs (NumPy only, no TensorFlow).

Lung patches (default 32x32) lie almost entirely inside the lung mask; body patches
(default 64x64) lie in the body outside the lungs.  Patients are drawn in equal shares
and, within a patient, the eligible slices in turn (a reshuffled cycle), so that neither
large patients nor slices with large lungs dominate.  Augmentations are exact pixel
permutations (flips and 90 degree rotations), applied identically to the ULD and ND
patch: no interpolation and no intensity change, so noise texture and HU stay physical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.cnn.config import DEFAULT_PATCH_SIZE, REGIONS
from hybrid.volume import Volume, as_mask, as_stack

__all__ = ["TrainingPair", "PatchSampler", "as_training_pairs", "split_pairs"]


@dataclass(frozen=True, eq=False)
class TrainingPair:
    """One patient's co-registered ULD and ND volumes with their masks.

    Parameters
    ----------
    uld, nd : ndarray (Z, Y, X) float32 HU
        Ultra-low-dose input and normal-dose target.
    lung_mask : ndarray of bool (Z, Y, X)
        Lungs.
    body_mask : ndarray of bool (Z, Y, X)
        Body (patient), lungs included.
    patient_id : str
        Identifier used in manifests and for splitting.
    """

    uld: np.ndarray
    nd: np.ndarray
    lung_mask: np.ndarray
    body_mask: np.ndarray
    patient_id: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.uld.shape  # type: ignore[return-value]


def as_training_pairs(pairs: Sequence[Any]) -> list[TrainingPair]:
    """Normalise a list of per-patient pairs to :class:`TrainingPair`.

    Each item is a :class:`TrainingPair`, or a tuple ``(uld, nd, lung_mask, body_mask)``
    (optionally with a fifth element, the patient id), where ``uld`` and ``nd`` are
    :class:`~hybrid.Volume` or arrays in HU (3-D, or 2-D for one slice) and
    ``body_mask`` may be None (whole image).
    """
    if isinstance(pairs, TrainingPair) or (
        isinstance(pairs, tuple)
        and len(pairs) in (4, 5)
        and isinstance(pairs[0], (np.ndarray, Volume))
    ):
        pairs = [pairs]  # a single patient
    if len(pairs) == 0:
        raise ValueError(
            "Invalid value for argument `pairs`. Expected at least one patient. Received pairs=[]"
        )
    out = []
    for i, item in enumerate(pairs):
        if isinstance(item, TrainingPair):
            out.append(item)
            continue
        if not isinstance(item, (tuple, list)) or len(item) not in (4, 5):
            raise ValueError(
                f"Invalid value for argument `pairs[{i}]`. Expected a TrainingPair or a tuple "
                f"(uld, nd, lung_mask, body_mask[, patient_id]). Received type {type(item).__name__}"
            )
        uld, _ = as_stack(item[0], name=f"pairs[{i}].uld")
        nd, _ = as_stack(item[1], name=f"pairs[{i}].nd")
        if nd.shape != uld.shape:
            raise ValueError(
                f"Expected pairs[{i}] ND of the ULD's shape {uld.shape}; received {nd.shape}."
            )
        lung = as_mask(item[2], uld.shape, name=f"pairs[{i}].lung_mask", fill=False)
        body = as_mask(item[3], uld.shape, name=f"pairs[{i}].body_mask", fill=True)
        pid = str(item[4]) if len(item) == 5 else f"patient{i:03d}"
        out.append(TrainingPair(uld, nd, lung, body, pid))
    return out


def split_pairs(
    pairs: Sequence[TrainingPair], *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """Split into training and validation sets without leakage.

    With two or more patients whole patients are held out (at least one on each side);
    with a single patient the last ``val_fraction`` of its slices (a contiguous block,
    at least one slice) is held out.
    """
    pairs = list(pairs)
    if not 0 < val_fraction < 1:
        raise ValueError(
            "Invalid value for argument `val_fraction`. Expected a value in (0, 1). "
            f"Received val_fraction={val_fraction}"
        )
    if len(pairs) >= 2:
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
        val = [pairs[i] for i in sorted(order[:n_val])]
        train = [pairs[i] for i in sorted(order[n_val:])]
        return train, val
    p = pairs[0]
    z = p.shape[0]
    if z < 2:
        raise ValueError(
            "Cannot make a validation split from one patient with one slice; pass more "
            "slices or patients, or explicit val_pairs."
        )
    n_val = min(z - 1, max(1, round(val_fraction * z)))
    cut = z - n_val

    def part(s: slice, tag: str) -> TrainingPair:
        return TrainingPair(
            p.uld[s], p.nd[s], p.lung_mask[s], p.body_mask[s], f"{p.patient_id}{tag}"
        )

    return [part(slice(0, cut), "[train]")], [part(slice(cut, z), "[val]")]


def _box_counts(mask2d: np.ndarray, p: int) -> np.ndarray:
    """Count of True pixels in every p x p window, indexed by the window's top-left corner."""
    s = np.zeros((mask2d.shape[0] + 1, mask2d.shape[1] + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask2d, axis=0, dtype=np.int32), axis=1, out=s[1:, 1:])
    return s[p:, p:] - s[:-p, p:] - s[p:, :-p] + s[:-p, :-p]


class PatchSampler:
    """Draws paired ULD/ND patches of one region from a list of patients.

    Parameters
    ----------
    pairs : sequence
        Per-patient pairs, see :func:`as_training_pairs`.
    region : {"lung", "body"}
        "lung": patch centre in the lung mask and at least ``min_lung_fraction`` of the
        patch pixels in the lungs.  "body": centre in the body outside the lungs, at most
        ``max_lung_fraction`` of the pixels in the lungs, at least ``min_body_fraction``
        in the body.
    patch_size : int, optional
        Patch side; default 32 for "lung", 64 for "body".
    seed : int
        Seed of every random choice (candidates, patients, slices, centres, augmentation).
    augment : bool
        Random flips and 90 degree rotations (same for ULD and ND).
    min_lung_fraction, max_lung_fraction, min_body_fraction : float
        Patch admission thresholds, see ``region``.
    max_centres_per_slice : int
        Candidate patch positions kept per slice (a seeded random subset), bounding memory.

    Examples
    --------
    >>> s = PatchSampler(pairs, region="lung", seed=0)          # doctest: +SKIP
    >>> uld, nd = s.sample(256)                                 # doctest: +SKIP
    >>> uld.shape                                               # doctest: +SKIP
    (256, 32, 32)
    """

    def __init__(
        self,
        pairs: Sequence[Any],
        *,
        region: str,
        patch_size: int | None = None,
        seed: int = 0,
        augment: bool = True,
        min_lung_fraction: float = 0.9,
        max_lung_fraction: float = 0.1,
        min_body_fraction: float = 0.5,
        max_centres_per_slice: int = 4096,
    ) -> None:
        if region not in REGIONS:
            raise ValueError(
                f"Invalid value for argument `region`. Expected one of {REGIONS}. Received region={region!r}"
            )
        p = DEFAULT_PATCH_SIZE[region] if patch_size is None else patch_size
        if not isinstance(p, (int, np.integer)) or p < 1:
            raise ValueError(
                "Invalid value for argument `patch_size`. Expected a strictly positive value. "
                f"Received patch_size={patch_size}"
            )
        for key, v in (
            ("min_lung_fraction", min_lung_fraction),
            ("max_lung_fraction", max_lung_fraction),
            ("min_body_fraction", min_body_fraction),
        ):
            if not 0 <= v <= 1:
                raise ValueError(
                    f"Invalid value for argument `{key}`. Expected a value in [0, 1]. Received {key}={v}"
                )
        if max_centres_per_slice < 1:
            raise ValueError(
                "Invalid value for argument `max_centres_per_slice`. Expected a strictly positive "
                f"value. Received max_centres_per_slice={max_centres_per_slice}"
            )
        self.pairs = as_training_pairs(pairs)
        self.region = region
        self.patch_size = int(p)
        self.augment = bool(augment)
        self.rng = np.random.default_rng(seed)
        self._area = self.patch_size**2
        self._lo = int(np.ceil(min_lung_fraction * self._area - 1e-9))
        self._hi = int(np.floor(max_lung_fraction * self._area + 1e-9))
        self._body_lo = int(np.ceil(min_body_fraction * self._area - 1e-9))
        self._cap = int(max_centres_per_slice)

        # candidates[i][z] = flat indices of admissible top-left corners in slice z
        self._candidates: list[dict[int, np.ndarray]] = []
        for pair in self.pairs:
            self._candidates.append(self._find_candidates(pair))
        self._patients = [i for i, c in enumerate(self._candidates) if c]
        if not self._patients:
            raise ValueError(
                f"No admissible {region} patch of size {self.patch_size} in any patient. "
                "Check the masks (are they empty or too small?) or lower patch_size / the fraction thresholds."
            )
        self._slice_cycle: dict[int, list[int]] = {i: [] for i in self._patients}

    # ------------------------------------------------------------------ set-up
    def _find_candidates(self, pair: TrainingPair) -> dict[int, np.ndarray]:
        p = self.patch_size
        z, h, w = pair.shape
        if h < p or w < p:
            return {}
        half = p // 2
        out: dict[int, np.ndarray] = {}
        for k in range(z):
            lung = pair.lung_mask[k]
            if self.region == "lung":
                if not lung.any():
                    continue
                counts = _box_counts(lung, p)
                ok = counts >= max(self._lo, 1)
                ok &= lung[half : half + ok.shape[0], half : half + ok.shape[1]]
            else:
                body = pair.body_mask[k]
                centre_ok = body & ~lung
                if not centre_ok.any():
                    continue
                ok = centre_ok[half : half + h - p + 1, half : half + w - p + 1].copy()
                if lung.any():
                    ok &= _box_counts(lung, p) <= self._hi
                if self._body_lo > 0:
                    ok &= _box_counts(body, p) >= self._body_lo
            idx = np.flatnonzero(ok).astype(np.int32)
            if idx.size == 0:
                continue
            if idx.size > self._cap:
                idx = np.sort(self.rng.choice(idx, self._cap, replace=False))
            out[k] = idx
        return out

    # ------------------------------------------------------------------ info
    @property
    def n_patients(self) -> int:
        """Patients with at least one admissible patch."""
        return len(self._patients)

    @property
    def n_slices(self) -> int:
        """Slices (over all patients) with at least one admissible patch."""
        return sum(len(c) for c in self._candidates)

    # ------------------------------------------------------------------ sampling
    def _next_slice(self, i: int) -> int:
        cycle = self._slice_cycle[i]
        if not cycle:
            cycle.extend(self.rng.permutation(sorted(self._candidates[i])).tolist())
        return cycle.pop()

    def sample(self, n: int, *, return_masks: bool = False):
        """Draw ``n`` patches.

        Parameters
        ----------
        n : int
            Number of patches.
        return_masks : bool
            Also return the lung- and body-mask patches (for checks).

        Returns
        -------
        uld, nd : ndarray (n, p, p) float32 HU
        lung, body : ndarray (n, p, p) bool
            Only if ``return_masks``.
        """
        if n < 0:
            raise ValueError(
                f"Invalid value for argument `n`. Expected a non-negative value. Received n={n}"
            )
        p = self.patch_size
        uld = np.empty((n, p, p), np.float32)
        nd = np.empty((n, p, p), np.float32)
        if return_masks:
            lung = np.empty((n, p, p), bool)
            body = np.empty((n, p, p), bool)
        for j, (pair, k, rows, cols) in enumerate(self.positions(n)):
            sl = (k, rows, cols)
            a, b = pair.uld[sl], pair.nd[sl]
            if return_masks:
                m1, m2 = pair.lung_mask[sl], pair.body_mask[sl]
            if self.augment:
                rot = int(self.rng.integers(4))
                flip = bool(self.rng.integers(2))
                a, b = _augment(a, rot, flip), _augment(b, rot, flip)
                if return_masks:
                    m1, m2 = _augment(m1, rot, flip), _augment(m2, rot, flip)
            uld[j], nd[j] = a, b
            if return_masks:
                lung[j], body[j] = m1, m2
        if return_masks:
            return uld, nd, lung, body
        return uld, nd

    def positions(self, n: int):
        """Yield ``n`` patch positions ``(pair, slice index, rows, cols)``: patients in equal
        shares (the remainder to a random subset), within a patient its slices in turn, a
        random admissible corner in the slice.  Lazy, so that a caller's own draws between
        items (the augmentation of :meth:`sample`) keep their place in the seeded stream."""
        p = self.patch_size
        n_pat = len(self._patients)
        per = np.full(n_pat, n // n_pat)
        per[self.rng.choice(n_pat, n % n_pat, replace=False)] += 1
        who = np.repeat(np.asarray(self._patients), per)
        who = who[self.rng.permutation(n)]
        for i in who:
            pair = self.pairs[i]
            k = self._next_slice(int(i))
            cand = self._candidates[i][k]
            y0, x0 = divmod(int(cand[self.rng.integers(cand.size)]), pair.shape[2] - p + 1)
            yield pair, k, slice(y0, y0 + p), slice(x0, x0 + p)


def _augment(x: np.ndarray, rot: int, flip: bool) -> np.ndarray:
    """One of the 8 symmetries of the square (dihedral group D4): exact pixel permutation."""
    if flip:
        x = x[:, ::-1]
    return np.rot90(x, rot)
