"""Multi-dose, multi-kernel training patches from stored noise realisations (NumPy only).

Under the quantum (Poisson -> Gaussian) noise model the noise *added* to a normal-dose
scan to reach dose fraction ``f`` has variance proportional to ``1/f - 1`` at a fixed
kernel.  A paired case stores two realisations of it, ``uld - nd`` at ``f0 = 0.02`` and
``uld_aug - nd`` at ``f0 = aug_dose_fraction``; rescaling one by

    ``a(f) = sqrt((1/f - 1) / v0)``,  ``v0 = 1/f0 - 1``

gives the added noise of any dose ``f``: ``input = nd + a * n``, ``target = nd`` (so
``f = 1`` gives ``a = 0``, input = target: the model learns to leave a clean scan
alone, its own scanner noise included).  Phantom cases scan the normal and the low
dose independently, so their ``uld - nd`` has ``v0 = 1/f0 + 1``.  Where it breaks:
the electronic-noise term grows as ``1/f**2 - 1``, not ``1/f - 1``, and at the lowest
doses photon starvation (clipped counts, bias, streaks on long paths) is not Gaussian;
rescaling a 2 % realisation to 0.5 % (x2) underestimates both.

Kernel variety: filtered back-projection is linear and a kernel is a radial filter, so
:func:`hybrid.physics.convert_kernel` applied to ``nd`` *and* to the stored noise gives
exactly the pair a reconstruction with the other kernel would (the filter commutes with
the rescaling): no re-simulation is needed.  Not from a "smooth" source: its window
is zero at Nyquist (the ratio to a sharper kernel diverges).

The noise maps a sample carries are the ones :func:`hybrid.cnn.noise.estimate_noise`
would measure on its slice: per slice the median patch variances of ``nd`` and of the
noise in the soft tissue of ``nd`` (precomputed, cacheable), combined as
``sigma**2 = var_nd + a**2 var_n`` (and likewise the texture), with a small
log-normal jitter so the model tolerates the estimator's error.  Every batch is drawn
from ``numpy.random.default_rng([seed, epoch, step])``: stateless, so a resumed
training draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.cnn.config import NOISE_CHANNELS
from hybrid.cnn.noise import slice_noise_variances, tissue_mask
from hybrid.cnn.sampler import PatchSampler, TrainingPair, _augment

__all__ = ["NoiseSource", "make_sources", "MultiDoseSampler", "DOSE_RANGE", "noise_scale",
           "at_dose"]

#: Dose fractions of training patches (log-uniform), before the clean share (f = 1).
DOSE_RANGE = (0.005, 1.0)


def noise_scale(f: float | np.ndarray, f0: float, *, independent: bool) -> np.ndarray:
    """Factor taking a realisation of the added noise at dose ``f0`` to dose ``f``."""
    v0 = 1.0 / f0 + 1.0 if independent else 1.0 / f0 - 1.0
    return np.sqrt(np.maximum(1.0 / np.asarray(f, dtype=np.float64) - 1.0, 0.0) / v0)


def at_dose(nd: np.ndarray, noise: np.ndarray, f: float, f0: float, *,
            independent: bool) -> np.ndarray:
    """The scan at dose ``f`` made from a stored noise realisation at dose ``f0``:
    ``nd + noise_scale(f, f0) * noise`` in float32 (``nd`` itself at ``f = 1``)."""
    return (nd + float(noise_scale(f, f0, independent=independent)) * noise).astype(np.float32)


@dataclass(frozen=True, eq=False)
class NoiseSource:
    """One case (at one kernel) as a source of multi-dose patches.

    Attributes
    ----------
    source_id, patient_id, kernel : str
    nd : ndarray (Z, Y, X) float32
        The target (normal dose, with its own scanner noise).
    noise : tuple of ndarray (Z, Y, X) float32
        Stored realisations of the added noise.
    f0 : tuple of float
        Their dose fractions.
    independent : bool
        True for phantoms (low and normal dose scanned independently).
    lung_mask, body_mask : ndarray (Z, Y, X) bool
    var_nd, dvar_nd : ndarray (Z,)
        Median patch variance of ``nd`` and of its adjacent differences per slice.
    var_n, dvar_n : ndarray (R, Z)
        The same for each realisation.
    """

    source_id: str
    patient_id: str
    kernel: str
    nd: np.ndarray
    noise: tuple[np.ndarray, ...]
    f0: tuple[float, ...]
    independent: bool
    lung_mask: np.ndarray
    body_mask: np.ndarray
    var_nd: np.ndarray
    dvar_nd: np.ndarray
    var_n: np.ndarray
    dvar_n: np.ndarray


def _variances(nd: np.ndarray, noise: Sequence[np.ndarray], body: np.ndarray) -> np.ndarray:
    """(1 + R, 2, Z): median (variance, difference variance) of nd and each realisation."""
    out = np.full((1 + len(noise), 2, len(nd)), np.nan)
    for k in range(len(nd)):
        t = tissue_mask(nd[k], body[k])
        for r, img in enumerate((nd, *noise)):
            v, dv, n = slice_noise_variances(img[k], t)
            if n:
                out[r, :, k] = v, dv
    # slices without soft tissue: the case's median (such slices are rare as patch sources)
    med = np.nanmedian(out, axis=2, keepdims=True)
    med = np.where(np.isfinite(med), med, 1.0)
    return np.where(np.isfinite(out), out, med)


def _cached(cache_dir, name: str, make) -> np.ndarray:
    """``make()``, or its array from ``cache_dir/name`` when an earlier call saved it there
    (written atomically; no cache with ``cache_dir`` None)."""
    if cache_dir is None:
        return make()
    path = Path(cache_dir) / name
    if path.is_file():
        return np.load(path)
    from hybrid.io._atomic import atomic_file

    v = make()
    with atomic_file(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        np.save(fh, v)
    return v


def _cached_variances(key: str, nd, noise, body, cache_dir) -> np.ndarray:
    return _cached(cache_dir, f"variances-{key}.npy", lambda: _variances(nd, noise, body))


def _quieter_phantom(case: Any, scale: float, cache_dir) -> tuple[np.ndarray, list[np.ndarray]]:
    """A phantom case whose normal dose carries ``scale`` times its own noise.

    The phantom's noise-free scan ``c`` (:func:`hybrid.data.noise_free_scan`, cached in
    ``cache_dir``) gives each scan's own noise exactly: ``e = nd - c``, ``e_l = uld - c``.
    The quieter normal dose is ``c + scale * e`` (the dose ``1 / scale**2`` times higher)
    and the realisations of its added noise ``scale * e_l`` (variance ``scale**2 / f0``
    against the wanted ``scale**2 (1/f0 - 1)`` for "not independent": 2 % more at
    ``f0 = 0.02``, below the estimator's jitter).
    """
    from hybrid.data import noise_free_scan

    nd = np.asarray(case.nd, np.float32)
    key = hashlib.blake2b(np.ascontiguousarray(nd).data, digest_size=8).hexdigest()
    clean = _cached(cache_dir, f"clean-{case.case_id}-{key}.npy", lambda: noise_free_scan(case))
    s = np.float32(scale)
    quiet = clean + s * (nd - clean)
    noise = [s * (np.asarray(x, np.float32) - clean) for x in (case.uld.array, case.uld_aug)]
    return quiet.astype(np.float32), noise


def make_sources(
    cases: Sequence[Any],
    *,
    kernels: Sequence[str] = ("smooth", "standard", "sharp"),
    cache_dir: str | os.PathLike | None = None,
    phantom_noise_scale: float | None = None,
) -> list[NoiseSource]:
    """Noise sources of paired cases (:class:`hybrid.data.PairedCase`) at ``kernels``.

    Each case gives one source at its own kernel and, unless its kernel is "smooth", one
    per other kernel in ``kernels`` (``nd`` and the noise re-filtered, see the module
    docstring).  Per-slice variances are cached in ``cache_dir`` (keyed by content).

    ``phantom_noise_scale``: a phantom case's normal dose (the target) carries that share
    of its own scanner noise (:func:`_quieter_phantom`).  Why: the phantoms' normal dose
    holds about 20 HU of noise at the standard kernel, a real thin- or thick-slice normal
    dose 8-11 HU, and a noise-aware model learns to give back the noise its targets hold
    (``experiments/noise_texture_check.py``).  None: the stored scans as they are.
    """
    from hybrid.physics import convert_kernel

    if phantom_noise_scale is not None and not 0.0 <= float(phantom_noise_scale) <= 1.0:
        raise ValueError("Invalid value for argument `phantom_noise_scale`. Expected a share "
                         f"in [0, 1] or None. Received {phantom_noise_scale!r}.")
    out = []
    for case in cases:
        src = case.meta.get("kernel") or "standard"
        nd0 = np.asarray(case.nd, np.float32)
        independent = case.kind == "phantom"
        if independent and phantom_noise_scale is not None:
            nd0, noise0 = _quieter_phantom(case, float(phantom_noise_scale), cache_dir)
            independent = False  # the realisations are the added noise itself
        else:
            noise0 = [np.asarray(case.uld.array, np.float32) - nd0,
                      np.asarray(case.uld_aug, np.float32) - nd0]
        f0 = (float(case.meta["dose_fraction"]), float(case.meta["aug_dose_fraction"]))
        targets = [src] + [k for k in kernels if k != src and src != "smooth"]
        for k in targets:
            if k == src:
                nd, noise = nd0, noise0
            else:
                nd = convert_kernel(nd0, src, k)
                noise = [convert_kernel(n, src, k) for n in noise0]
            h = hashlib.blake2b(np.ascontiguousarray(nd).data, digest_size=8)
            for n in noise:
                h.update(np.ascontiguousarray(n).data)
            v = _cached_variances(f"{case.case_id}-{k}-{h.hexdigest()}", nd, noise,
                                  case.body_mask, cache_dir)
            out.append(NoiseSource(
                source_id=f"{case.case_id}@{k}", patient_id=case.patient_id, kernel=k, nd=nd,
                noise=tuple(noise), f0=f0, independent=independent,
                lung_mask=case.lung_mask, body_mask=case.body_mask, var_nd=v[0, 0],
                dvar_nd=v[0, 1], var_n=v[1:, 0], dvar_n=v[1:, 1]))
    return out


#: Source weightings of :class:`MultiDoseSampler`.
WEIGHTINGS = ("uniform", "slices")


class MultiDoseSampler:
    """Seeded, stateless multi-dose patches of one region from :class:`NoiseSource` s.

    Parameters
    ----------
    sources : sequence of NoiseSource
    region : {"lung", "body"}
        Patch admission as :class:`~hybrid.cnn.sampler.PatchSampler` (same thresholds).
    patch_size : int
    seed : int
        With the epoch and step, seeds each batch.
    dose_range : (float, float)
        Log-uniform dose fractions.
    clean_fraction : float
        Share of patches at ``f = 1`` (no added noise: target = input).
    augment : bool
        Flips and 90 degree rotations (exact pixel permutations).
    sigma_jitter : float
        Log-normal standard deviation of the noise level given to the model.
    noise_ref_hu : float
        Noise level that maps to 1 in the noise-level channel.
    weighting : {"uniform", "slices"}
        How often each source is drawn: "uniform" (the first runs), every source alike,
        so a one-slice series weighs as much as a 141-slice thorax; "slices", in
        proportion to its slices that hold admissible patches (every slice alike).
    """

    def __init__(self, sources: Sequence[NoiseSource], *, region: str, patch_size: int,
                 seed: int = 0, dose_range: tuple[float, float] = DOSE_RANGE,
                 clean_fraction: float = 0.1, augment: bool = True, sigma_jitter: float = 0.05,
                 noise_ref_hu: float = 100.0, weighting: str = "uniform",
                 **sampler_options: Any) -> None:
        lo, hi = (float(v) for v in dose_range)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"Invalid value for argument `dose_range`. Expected 0 < low <= high "
                             f"<= 1. Received dose_range={dose_range!r}")
        if not 0 <= clean_fraction <= 1:
            raise ValueError("Invalid value for argument `clean_fraction`. Expected a value in "
                             f"[0, 1]. Received clean_fraction={clean_fraction!r}")
        self.sources = list(sources)
        self.seed, self.region, self.patch_size = int(seed), region, int(patch_size)
        self.dose_range, self.clean_fraction = (lo, hi), float(clean_fraction)
        self.augment, self.sigma_jitter = bool(augment), float(sigma_jitter)
        self.noise_ref_hu = float(noise_ref_hu)
        pairs = [TrainingPair(s.nd, s.nd, s.lung_mask, s.body_mask, s.source_id)
                 for s in self.sources]
        finder = PatchSampler(pairs, region=region, patch_size=patch_size, seed=seed,
                              augment=False, **sampler_options)
        self._candidates = finder._candidates
        self._usable = [i for i, c in enumerate(self._candidates) if c]
        self._slices = {i: np.asarray(sorted(self._candidates[i])) for i in self._usable}
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Invalid value for argument `weighting`. Expected one of "
                             f"{WEIGHTINGS}. Received weighting={weighting!r}")
        self.weighting = weighting
        n = np.array([len(self._slices[i]) for i in self._usable], np.float64)
        self._p = None if weighting == "uniform" else n / n.sum()

    def doses(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` dose fractions: log-uniform in ``dose_range``, ``clean_fraction`` at 1."""
        lo, hi = np.log(self.dose_range[0]), np.log(self.dose_range[1])
        f = np.exp(rng.uniform(lo, hi, n))
        return np.where(rng.random(n) < self.clean_fraction, 1.0, f)

    def batch(self, n: int, *, epoch: int, step: int):
        """Batch ``step`` of ``epoch``: ``sample(n, rng=default_rng([seed, epoch, step]))``."""
        return self.sample(n, rng=np.random.default_rng([self.seed, int(epoch), int(step)]))

    def sample(self, n: int, *, rng: np.random.Generator, doses: Sequence[float] | None = None,
               return_info: bool = False):
        """Draw ``n`` patches.

        Returns
        -------
        uld, nd : ndarray (n, p, p) float32 HU
            Input (``nd`` plus the rescaled noise) and target.
        maps : ndarray (n, 2) float32
            Per patch :data:`~hybrid.cnn.config.NOISE_CHANNELS` (sigma / noise_ref_hu, texture).
        info : dict of arrays
            Only with ``return_info``: ``dose``, ``scale``, ``added_sigma_hu`` (expected std
            of the added noise in the patch's slice), ``sigma_hu``, ``source``, ``slice``.
        """
        p = self.patch_size
        f = self.doses(rng, n) if doses is None else np.broadcast_to(
            np.asarray(doses, np.float64), (n,))
        uld, nd = np.empty((n, p, p), np.float32), np.empty((n, p, p), np.float32)
        maps = np.empty((n, len(NOISE_CHANNELS)), np.float32)
        info = {k: np.empty(n) for k in ("dose", "scale", "added_sigma_hu", "sigma_hu")}
        info["source"], info["slice"] = np.empty(n, int), np.empty(n, int)
        if self._p is None:  # the first runs' draw, unchanged
            who = np.asarray(self._usable)[rng.integers(len(self._usable), size=n)]
        else:
            who = np.asarray(self._usable)[rng.choice(len(self._usable), size=n, p=self._p)]
        for j, i in enumerate(who):
            s = self.sources[i]
            k = int(self._slices[i][rng.integers(len(self._slices[i]))])
            cand = self._candidates[i][k]
            y0, x0 = divmod(int(cand[rng.integers(cand.size)]), s.nd.shape[2] - p + 1)
            r = int(rng.integers(len(s.noise)))
            a = float(noise_scale(f[j], s.f0[r], independent=s.independent))
            sl = (k, slice(y0, y0 + p), slice(x0, x0 + p))
            target = s.nd[sl]
            x = target + np.float32(a) * s.noise[r][sl] if a > 0 else target.copy()
            if self.augment:
                rot, flip = int(rng.integers(4)), bool(rng.integers(2))
                x, target = _augment(x, rot, flip), _augment(target, rot, flip)
            uld[j], nd[j] = x, target
            var = s.var_nd[k] + a * a * s.var_n[r, k]
            dvar = s.dvar_nd[k] + a * a * s.dvar_n[r, k]
            sigma = np.sqrt(var) * np.exp(self.sigma_jitter * rng.standard_normal())
            maps[j] = sigma / self.noise_ref_hu, np.sqrt(dvar / 2.0 / var)
            info["dose"][j], info["scale"][j], info["sigma_hu"][j] = f[j], a, np.sqrt(var)
            info["added_sigma_hu"][j] = a * np.sqrt(s.var_n[r, k])
            info["source"][j], info["slice"][j] = i, k
        if return_info:
            return uld, nd, maps, info
        return uld, nd, maps


def sources_manifest(sources: Sequence[NoiseSource]) -> list[dict[str, Any]]:
    """What a noise-aware model was trained on: per source its id, kernel, shape and hash."""
    out = []
    for s in sources:
        h = hashlib.blake2b(np.ascontiguousarray(s.nd).data, digest_size=16)
        out.append({"source_id": s.source_id, "patient_id": s.patient_id, "kernel": s.kernel,
                    "shape": list(s.nd.shape), "f0": list(s.f0), "nd_blake2b": h.hexdigest()})
    return json.loads(json.dumps(out))
