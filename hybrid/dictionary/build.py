"""Building a dictionary from paired (uld, nd, body_mask) data: candidate centres in the
body, strata by HU band x local contrast, a water-filled budget, the Helmert/PCA key
projection, the index, and the noise scale of the distances (see the package docstring)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from typing import Any

import numpy as np

from hybrid._version import __version__
from hybrid.dictionary.config import (
    FORMAT_VERSION,
    NORMALISATION,
    DictionaryConfig,
    helmert_basis,
)
from hybrid.dictionary.index import (
    DictionaryIndex,
    index_space_distance2,
    make_index,
    pca_dim_of,
    resolve_factory,
)
from hybrid.dictionary.store import Payload
from hybrid.patches import extract_patches, grid_centers
from hybrid.volume import check_pairs

__all__ = ["build"]

Pairs = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- sampling


def _local_mean_std(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import uniform_filter

    img = image.astype(np.float64)
    m = uniform_filter(img, size, mode="reflect")
    m2 = uniform_filter(img * img, size, mode="reflect")
    return m, np.sqrt(np.maximum(m2 - m * m, 0.0))


def _strata(nd: np.ndarray, centers: np.ndarray, cfg: DictionaryConfig) -> np.ndarray:
    mean, std = _local_mean_std(nd, cfg.patch_size)
    cy, cx = centers[:, 0], centers[:, 1]
    band = np.searchsorted(cfg.hu_bands, mean[cy, cx])
    sbin = np.searchsorted(cfg.std_bins, std[cy, cx])
    return band * (len(cfg.std_bins) + 1) + sbin


def _n_strata(cfg: DictionaryConfig) -> int:
    return (len(cfg.hu_bands) + 1) * (len(cfg.std_bins) + 1)


def _water_fill(counts: np.ndarray, budget: int) -> np.ndarray:
    """Per-stratum quotas summing to <= budget: small strata whole, the rest equal shares."""
    quota = np.zeros_like(counts, dtype=np.float64)
    remaining = counts.astype(np.float64).copy()
    left = float(budget)
    active = remaining > 0
    while active.any() and left > 0.5:
        share = left / active.sum()
        small = active & (remaining <= share)
        if small.any():
            quota[small] += remaining[small]
            left -= remaining[small].sum()
            remaining[small] = 0
            active &= ~small
        else:
            quota[active] += share
            left = 0.0
    return quota


def _train_centers(mask2d: np.ndarray, cfg: DictionaryConfig) -> np.ndarray:
    # the same centres a query uses: every window that touches the body
    return grid_centers(mask2d.shape, stride=cfg.train_stride, mask=mask2d, size=cfg.patch_size)


def _survey(pairs: Pairs, cfg: DictionaryConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Pass 1: candidate centres per stratum, the ULD noise and the data manifest."""
    counts = np.zeros(_n_strata(cfg), dtype=np.int64)
    noise_samples = []
    manifest = hashlib.sha256()
    n_slices = 0
    for uld, nd, mask in pairs:
        manifest.update(np.asarray(uld.shape, np.int64).tobytes())
        manifest.update(hashlib.sha256(np.ascontiguousarray(uld).tobytes()).digest())
        manifest.update(hashlib.sha256(np.ascontiguousarray(nd).tobytes()).digest())
        manifest.update(hashlib.sha256(np.packbits(mask)).digest())
        for z in range(uld.shape[0]):
            if not mask[z].any():
                continue
            n_slices += 1
            c = _train_centers(mask[z], cfg)
            counts += np.bincount(_strata(nd[z], c, cfg), minlength=len(counts))
            diff = (uld[z] - nd[z])[mask[z]]
            noise_samples.append(rng.choice(diff, size=min(diff.size, 4096), replace=False))
    if counts.sum() == 0:
        raise ValueError(
            "Expected some body pixels to build a dictionary from; received empty body masks. "
            "Pass body masks that mark the patient (or None for whole images)."
        )
    diff = np.concatenate(noise_samples)
    sigma_hu = float(1.4826 * np.median(np.abs(diff - np.median(diff))))
    return {"counts": counts, "sigma_hu": sigma_hu, "manifest": manifest.hexdigest(),
            "n_slices": n_slices}


def _sample(pairs: Pairs, cfg: DictionaryConfig, counts: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pass 2: each candidate kept with its stratum's water-filled probability; returns the
    ULD patches, the ND patches and the stratum of each."""
    budget = cfg.max_patches + cfg.n_heldout
    # small margin: sampling is Bernoulli; the surplus is trimmed by the caller
    quota = np.minimum(_water_fill(counts, budget) * 1.02 + 8, counts)
    keep_p = np.divide(quota, counts, out=np.zeros_like(quota), where=counts > 0)
    uld_parts, nd_parts, strata_parts = [], [], []
    for uld, nd, mask in pairs:
        for z in range(uld.shape[0]):
            if not mask[z].any():
                continue
            c = _train_centers(mask[z], cfg)
            s = _strata(nd[z], c, cfg)
            keep = rng.random(len(c)) < keep_p[s]
            c = c[keep]
            uld_parts.append(extract_patches(uld[z], c, size=cfg.patch_size))
            nd_parts.append(extract_patches(nd[z], c, size=cfg.patch_size))
            strata_parts.append(s[keep])
    return np.concatenate(uld_parts), np.concatenate(nd_parts), np.concatenate(strata_parts)


# --------------------------------------------------------------------------- keys


def _projection(nd_p: np.ndarray, cfg: DictionaryConfig) -> tuple[np.ndarray, dict | None]:
    """The ``(patch_size**2, key_dim)`` float32 key projection: Helmert / hu_scale, then the
    leading principal components of the ND keys; and the PCA record of ``meta.json``."""
    helm = helmert_basis(cfg.patch_size**2).T / cfg.hu_scale  # (49, 48), float64
    if not cfg.pca_dim:
        return helm.astype(np.float32), None
    nk = nd_p @ helm
    cov = np.cov(nk, rowvar=False)
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1][:, : cfg.pca_dim]
    # fixed signs: the largest component of each axis is positive
    evecs *= np.sign(evecs[np.abs(evecs).argmax(axis=0), np.arange(cfg.pca_dim)])
    info = {
        "dim": int(cfg.pca_dim),
        "fitted_on": "nd keys",
        "explained_nd_variance": float(evals[: cfg.pca_dim].sum() / max(evals.sum(), 1e-12)),
    }
    return (helm @ evecs).astype(np.float32), info


def _noise(index: Any, keys: np.ndarray, nd_p: np.ndarray, proj: np.ndarray,
           sigma_hu: float) -> dict[str, float]:
    """Squared key distance between two noise realisations of one patch, in key space and
    in the space the index reports (the scale of the normalised distance)."""
    ndk = (nd_p[: min(len(keys), 20000)] @ proj).astype(np.float32)
    uk = keys[: len(ndk)]
    full = float(2.0 * np.mean(np.sum((uk - ndk) ** 2, axis=1)))
    return {"sigma_hu": sigma_hu, "distance2_full": full,
            "distance2_index": index_space_distance2(index, uk, ndk, full)}


def build(pairs: Any, cfg: DictionaryConfig, *, name: str, n_threads: int | None,
          device: str) -> tuple[DictionaryIndex, Payload]:
    """Sample, project and index ``pairs``; calibrate the distance on the held-out patches
    (see ``PatchDictionary.build``)."""
    import faiss

    pairs = check_pairs(pairs)
    rng = np.random.default_rng(cfg.seed)
    survey = _survey(pairs, cfg, rng)
    uld_p, nd_p, strata = _sample(pairs, cfg, survey["counts"], rng)
    order = rng.permutation(len(uld_p))
    n_held = min(cfg.n_heldout, len(order) // 10) if cfg.n_heldout else 0
    held, order = order[:n_held], order[n_held:]
    order = np.sort(order[: cfg.max_patches])  # sorted: entries keep slice order
    uld_e, nd_e = uld_p[order], nd_p[order]

    proj, pca_info = _projection(nd_e, cfg)
    heldout_keys = np.ascontiguousarray(uld_p[held] @ proj)
    del uld_p, nd_p
    keys = np.ascontiguousarray(uld_e @ proj)
    key_mean = uld_e.mean(axis=1, dtype=np.float64).astype(np.float32)
    payload = Payload(
        values=(nd_e - key_mean[:, None]).astype(cfg.value_dtype),
        key_mean=key_mean,
        key_norm=np.linalg.norm(uld_e - key_mean[:, None], axis=1).astype(np.float32),
        projection=proj,
    )
    factory = resolve_factory(cfg.factory, len(keys))
    t0 = time.perf_counter()
    index = make_index(keys, factory, n_threads)
    build_s = time.perf_counter() - t0

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "patch_size": cfg.patch_size,
        "key_dim": cfg.key_dim,
        "normalisation": {"type": NORMALISATION, "hu_scale": cfg.hu_scale},
        "factory": factory,
        "search_params": cfg.search_params,
        "pca": pca_info,
        "faiss_pca": pca_dim_of(factory),
        "config": cfg.to_dict(),
        "noise": _noise(index, keys, nd_e, proj, survey["sigma_hu"]),
        "distance": {
            "definition": "sqrt(squared key distance / expected squared key distance between two "
            "noise realisations of the same patch); ~1 = as close as the noise allows, "
            "overlap-added over the patches covering each pixel",
        },
        "counts": {
            "entries": len(keys),
            "candidates": int(survey["counts"].sum()),
            "heldout": int(n_held),
            "strata_candidates": survey["counts"].tolist(),
            "strata_entries": np.bincount(strata[order], minlength=_n_strata(cfg)).tolist(),
        },
        "source": {
            "manifest_sha256": survey["manifest"],
            "patients": len(pairs),
            "slices": survey["n_slices"],
        },
        "build": {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds_index": round(build_s, 3),
            "package_version": __version__,
            "faiss_version": faiss.__version__,
            "numpy_version": np.__version__,
        },
    }
    searcher = DictionaryIndex(index, config=cfg, meta=meta, device=device)
    if len(heldout_keys):  # the distances of patches kept out of the index
        dist, _ = searcher.search(heldout_keys, 1, n_threads)
        delta = searcher.normalise(dist[:, 0])
        meta["distance"]["heldout_median"] = float(np.median(delta))
        meta["distance"]["heldout_p90"] = float(np.percentile(delta, 90))
    return searcher, payload
