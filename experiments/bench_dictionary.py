"""Benchmark of the patch dictionary (a benchmark, not a test).

Builds dictionaries from the same synthetic paired slices with several FAISS
indexes (each searched itself, ``cpu_graph=None``, plus the CPU HNSW graph that a
default dictionary searches on CPU) and prints, in one table: build time, size on disk, query throughput
(patches/s), recall@1 against exact search in the same key space, seconds
per 512 x 512 slice (extraction + search + overlap-add) and the proposal's
RMSE against the normal-dose truth on a held-out slice.

Run::

    .venv/bin/python experiments/bench_dictionary.py            # ~2-4 min on 2 cores
    .venv/bin/python experiments/bench_dictionary.py --quick    # ~30 s

Synthetic data (no download): piecewise-constant chest-like 512 x 512 slices
(air, body 40 HU, fat rim, lungs -850 HU with vessels, spine 700 HU, soft
tissue blobs), ULD = ND + white Gaussian noise (``sigma_hu``).  Numbers on
real CT differ (correlated noise, texture): rerun there before deciding.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybrid._parallel import available_cores  # noqa: E402
from hybrid.dictionary import DictionaryConfig, PatchDictionary  # noqa: E402
from hybrid.patches import extract_patches, grid_centers  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    size: int = 512  # slice side (pixels)
    train_patients: int = 4
    slices_per_patient: int = 3
    sigma_hu: float = 40.0
    entries: int = 150_000
    n_queries: int = 40_000  # for throughput and recall
    threads: int | None = None
    seed: int = 0
    #: (label, pca_dim, factory, search_params, cpu_graph).  cpu_graph None: search the
    #: index itself (with the default 16 every index keeping exact keys would be searched
    #: through the same CPU graph, and the rows would not compare indexes)
    variants: tuple[tuple[str, int | None, str, str, int | None], ...] = (
        ("exact 16-d", 16, "Flat", "", None),
        ("default", 16, "IVF{nlist},Flat", "nprobe=16", None),
        ("ivf nprobe 8", 16, "IVF{nlist},Flat", "nprobe=8", None),
        ("fast-scan PQ", 16, "IVF{nlist},PQ16x4fs,RFlat", "nprobe=8,k_factor_rf=8", None),
        ("hnsw", 16, "HNSW32", "efSearch=32", None),
        ("cpu graph", 16, "IVF{nlist},Flat", "nprobe=16,efSearch=10", 16),
        ("exact 48-d", None, "Flat", "", None),
    )


QUICK = dict(size=256, train_patients=3, slices_per_patient=2, entries=40_000, n_queries=10_000)


def phantom_slice(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.full((n, n), -1000.0)
    body = ((y - 0.5) / 0.42) ** 2 + ((x - 0.5) / 0.47) ** 2 < 1
    img[body] = 40.0
    img[body & (((y - 0.5) / 0.44) ** 2 + ((x - 0.5) / 0.49) ** 2 > 0.85)] = -100.0
    for cx in (0.3, 0.7):
        lung = ((y - 0.5) / 0.3) ** 2 + ((x - cx) / 0.15) ** 2 < 1
        img[lung] = -850.0
        for _ in range(12):
            vy, vx, r = (
                rng.uniform(0.25, 0.75),
                cx + rng.uniform(-0.12, 0.12),
                rng.uniform(0.004, 0.015),
            )
            img[lung & ((y - vy) ** 2 + (x - vx) ** 2 < r * r)] = 40.0
    img[((y - 0.75) / 0.05) ** 2 + ((x - 0.5) / 0.06) ** 2 < 1] = 700.0
    for _ in range(4):
        vy, vx, r = rng.uniform(0.2, 0.8), rng.uniform(0.4, 0.6), rng.uniform(0.02, 0.06)
        img[body & ((y - vy) ** 2 + (x - vx) ** 2 < r * r)] = rng.uniform(-50, 150)
    return img.astype(np.float32), body


def patient(rng, z, n, sigma):
    nd, body = zip(*(phantom_slice(rng, n) for _ in range(z)))
    nd, body = np.stack(nd), np.stack(body)
    return nd + rng.normal(0, sigma, nd.shape).astype(np.float32), nd, body


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1e6


def main(cfg: BenchConfig) -> None:
    threads = cfg.threads or available_cores()
    rng = np.random.default_rng(cfg.seed)
    t = time.perf_counter()
    train = [
        patient(rng, cfg.slices_per_patient, cfg.size, cfg.sigma_hu)
        for _ in range(cfg.train_patients)
    ]
    uld, nd, body = patient(rng, 1, cfg.size, cfg.sigma_hu)
    print(
        f"data: {cfg.train_patients} x {cfg.slices_per_patient} slices {cfg.size}^2, noise {cfg.sigma_hu} HU, "
        f"{threads} FAISS threads ({time.perf_counter() - t:.1f} s)"
    )
    centers = grid_centers(body[0].shape, stride=1, mask=body[0])
    q = extract_patches(uld[0], centers)
    q = q[np.random.default_rng(1).permutation(len(q))[: cfg.n_queries]]

    rows = []
    exact_ids: dict[int | None, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, pca_dim, factory, params, graph in cfg.variants:
            dcfg = DictionaryConfig(
                pca_dim=pca_dim,
                factory=factory,
                search_params=params,
                cpu_graph=graph,
                max_patches=cfg.entries,
                n_heldout=1000,
            )
            t = time.perf_counter()
            d = PatchDictionary.build(train, config=dcfg, n_threads=threads)
            build_s = time.perf_counter() - t
            mb = dir_mb(d.save(Path(tmp) / label.replace(" ", "_")))
            d.search(q[:1000])  # warm up
            t = time.perf_counter()
            _, ids = d.search(q, k=1)
            qps = len(q) / (time.perf_counter() - t)
            if factory == "Flat":
                exact_ids[pca_dim] = ids[:, 0]
            recall = (
                float(np.mean(ids[:, 0] == exact_ids[pca_dim]))
                if pca_dim in exact_ids
                else float("nan")
            )
            per_slice = {}
            for stride in (1, 2, 3) if label in ("default", "fast-scan PQ") else (2,):
                t = time.perf_counter()
                p = d.with_settings(stride=stride).propose(uld, body_mask=body)
                per_slice[stride] = (time.perf_counter() - t) * (512 / cfg.size) ** 2
                rmse = float(np.sqrt(np.mean((p.image - nd)[body] ** 2)))
                per_slice[f"rmse{stride}"] = rmse
            rows.append((label, d.factory, params, build_s, mb, qps, recall, per_slice, d.meta))
            print(f"  done {label}: {d.factory} build {build_s:.1f} s, {qps:,.0f} q/s", flush=True)

    rmse_uld = float(np.sqrt(np.mean((uld - nd)[body] ** 2)))
    n_body = int(body[0].sum())
    print()
    print(
        f"entries {cfg.entries:,}; queries {len(q):,} ULD patches of a held-out slice; "
        f"ULD RMSE {rmse_uld:.1f} HU; body {n_body:,} px/slice; "
        f"s/slice scaled to 512^2"
    )
    head = (
        f"{'variant':<14} {'factory':<28} {'params':<24} {'build s':>7} {'MB':>6} {'patches/s':>10} "
        f"{'recall@1':>8} {'s/slice s2':>10} {'RMSE s2':>8}"
    )
    print(head)
    print("-" * len(head))
    for label, factory, params, build_s, mb, qps, recall, ps, _ in rows:
        print(
            f"{label:<14} {factory:<28} {params or '-':<24} {build_s:7.1f} {mb:6.1f} {qps:10,.0f} "
            f"{recall:8.3f} {ps[2]:10.2f} {ps['rmse2']:8.1f}"
        )
    default = next(r for r in rows if r[0] == "default")
    for label in ("default", "fast-scan PQ"):
        ps = next(r for r in rows if r[0] == label)[7]
        print()
        print(f"{label} index, per 512^2 slice:")
        for stride in (1, 2, 3):
            print(
                f"  stride {stride}: {ps[stride]:.2f} s/slice, RMSE {ps[f'rmse{stride}']:.1f} HU, "
                f"250 slices ~ {250 * ps[stride]:.0f} s"
            )
    meta = default[8]
    print(
        f"  noise sigma {meta['noise']['sigma_hu']:.1f} HU; held-out median distance "
        f"{meta['distance'].get('heldout_median', float('nan')):.2f}; PCA keeps "
        f"{meta['pca']['explained_nd_variance']:.3f} of ND variance"
    )


if __name__ == "__main__":
    cfg = BenchConfig()
    if "--quick" in sys.argv[1:]:
        cfg = dataclasses.replace(cfg, **QUICK)
    main(cfg)
