"""``make bench``: speed and memory of the shipped pipeline on 2 CPU cores (a benchmark, not a test).

Reports, on a realistic 512×512 volume (the real A0001 chest series with
simulated 2 % dose where ../shared/data/ct exists, a phantom otherwise):

- the dose simulation per slice (hybrid.physics.simulate_low_dose);
- the CNN pair per slice (lung + body + composition);
- the dictionary: query throughput in patches/s with the shipped index and,
  in the same run, with exact (flat) search over the same keys, and seconds
  per slice at the calibrated stride;
- the whole ``Enhancer.enhance`` per slice and the peak resident memory.

Ratios are against baselines measured in the same run; the machine is
shared, so absolute times vary by ±25 %.  Writes experiments/results/bench.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _volume(n_slices: int):
    import hybrid
    from hybrid.data import default_ct_root
    from hybrid.physics import simulate_low_dose

    src = default_ct_root() / "lung-pet-ct-dx-a0001/kernel-B-5mm"
    if src.exists():
        v = hybrid.load(src)
        mid = len(v) // 2
        v = v.slab(mid - n_slices // 2, mid - n_slices // 2 + n_slices)
        what = f"real A0001 kernel B, {n_slices} slices"
    else:
        from hybrid.phantom import make_patient, scan_phantom

        v = scan_phantom(make_patient(7, shape=(n_slices, 512, 512)), dose_fraction=1.0, rng=1)
        what = f"phantom seed 7, {n_slices} slices"
    t = time.perf_counter()
    uld = simulate_low_dose(v, 0.02, rng=5, progress=False)
    sim = (time.perf_counter() - t) / len(v)
    return uld, what, sim


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slices", type=int, default=16)
    args = p.parse_args()

    from hybrid.lung import body_mask, segment
    from hybrid.pipeline import Enhancer

    uld, what, sim_s = _volume(args.slices)
    enh = Enhancer()
    n = len(uld)
    res: dict = {"volume": what, "shape": list(uld.shape), "simulate_low_dose_s_per_slice": sim_s}

    t = time.perf_counter()
    lung, body = segment(uld), body_mask(uld)
    res["segmentation_s_per_slice"] = (time.perf_counter() - t) / n

    enh.cnn.propose(uld.array[:1], lung[:1])  # warm-up (graph tracing)
    t = time.perf_counter()
    enh.cnn.propose(uld, lung)
    res["cnn_pair_s_per_slice"] = (time.perf_counter() - t) / n

    stride = enh.stride
    t = time.perf_counter()
    enh.dictionary.propose(uld, body_mask=body, stride=stride)
    res["dictionary_s_per_slice"] = (time.perf_counter() - t) / n
    res["dictionary_stride"] = stride

    # Throughput on a sample of body patches: the shipped index vs exact flat search, same keys.
    import faiss

    from hybrid.patches import extract_patches, grid_centers

    centers = grid_centers(uld.shape[1:], stride=1, mask=body[n // 2])
    patches = extract_patches(uld.array[n // 2], centers)[:200_000]
    t = time.perf_counter()
    enh.dictionary.search(patches)
    approx = len(patches) / (time.perf_counter() - t)
    stored = enh.dictionary.stored_keys()
    flat = faiss.IndexFlatL2(stored.shape[1])
    flat.add(stored)
    sample = enh.dictionary.keys_of(patches[:20_000])
    t = time.perf_counter()
    flat.search(sample, 1)
    exact = len(sample) / (time.perf_counter() - t)
    res.update({"dictionary_patches_per_s": approx, "exact_flat_patches_per_s": exact,
                "speedup_vs_exact": approx / exact,
                "dictionary_build_index_s": enh.dictionary.meta.get("build", {}).get("seconds_index")})

    t = time.perf_counter()
    enh.enhance(uld, progress=False)
    res["enhance_s_per_slice"] = (time.perf_counter() - t) / n
    res["enhance_250_slices_estimate_s"] = res["enhance_s_per_slice"] * 250
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = REPO / "experiments" / "results" / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    for k, v in res.items():
        print(f"{k:<34} {v:.4g}" if isinstance(v, float) else f"{k:<34} {v}")


if __name__ == "__main__":
    main()
