"""``make bench``: speed and memory of the whole hybrid on this machine (a benchmark, never a test).

What it measures (issue #8; the default path since issue 17: the CNN pair and the blender,
no dictionary), on a realistic 512×512 chest volume: the real
A0001 series (kernel B, 64 slices of ../shared/data/ct) with a simulated 2 %
dose, repeated back and forth along z (64 → 250 slices, mirrored so the
anatomy stays continuous) where that series exists, a phantom patient
otherwise.  For 16, 64 and 250 slices, each in a fresh process (so the peak
resident memory is that size's own):

- seconds per stage: ``load`` (``hybrid.load`` of the DICOM series),
  ``segment`` (body + lungs), ``cnn``, ``dictionary``, ``blend`` (from
  ``Enhancer.last_info``), ``write`` (``hybrid.save`` as a derived DICOM
  series); the hybrid itself = segment + cnn + dictionary + blend;
- slices/s, peak RSS, model loading time, and the hybrid's body RMSE (HU)
  against the normal-dose image at those settings;
- the same at the largest size with the opt-in dictionary (``--dictionary shipped``), in
  its own fresh process: what turning it on costs.

Reference points timed in the same run (the machine is shared: read ratios,
not absolute times), on the opt-in dictionary: exact (flat) FAISS search and the stored IVF index
against the shipped search on the same query keys (recall@1, L2 excess);
building the CPU search graph from scratch; BM3D (tuned σ) on one slice; the
unhurried settings (dictionary query stride 1, nprobe 16), the previous
defaults (stride 2, nprobe 16) and the square query grid of stride 2 (the
shipped grid is (2, 3)) on the 16-slice volume, with their RMSE.  The dictionary stage's throughput
is given in body pixel-centred patches/s (issue #5).

    python experiments/bench.py [--sizes 16 64 250]

Writes experiments/results/bench.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "experiments" / "results" / "bench.json"
#: The square query grid of stride 2 (the default until the (2, 3) grid; 1.5x the queries).
SQUARE_GRID = "square query grid (stride 2)"
#: What the original MATLAB system needed per patient (article): CNN 20 min, dictionary 2 h.
ORIGINAL_S = {"cnn": 20 * 60.0, "dictionary": 2 * 3600.0}


def _base_case(cache: Path) -> dict:
    """ULD/ND volumes (64 real slices or a phantom) cached as .npz for the child runs."""
    f = cache / "base.npz"
    if f.exists():
        z = np.load(f, allow_pickle=False)
        return {k: z[k] for k in z.files}
    import hybrid
    from hybrid.data import default_ct_root
    from hybrid.physics import simulate_low_dose

    src = default_ct_root() / "lung-pet-ct-dx-a0001/kernel-B-5mm"
    if src.exists():
        nd = hybrid.load(src)
        what = "real A0001 kernel B (64 slices, mirrored along z), simulated 2 % dose"
    else:
        from hybrid.phantom import make_patient, scan_phantom

        nd = scan_phantom(make_patient(7, shape=(64, 512, 512)), dose_fraction=1.0, rng=1)
        what = "phantom seed 7 (64 slices, mirrored along z), simulated 2 % dose"
    t = time.perf_counter()
    uld = simulate_low_dose(nd, 0.02, rng=5, progress=False)
    sim = (time.perf_counter() - t) / len(nd)
    case = {"uld": uld.array, "nd": nd.array, "spacing": np.asarray(uld.spacing),
            "what": np.asarray(what), "simulate_s_per_slice": np.asarray(sim)}
    np.savez(f, **case)
    return case


def _tile(arr: np.ndarray, n: int) -> np.ndarray:
    """``n`` slices of ``arr`` going back and forth along z (continuous anatomy)."""
    idx, step, z = [], 1, 0
    for _ in range(n):
        idx.append(z)
        if not 0 <= z + step < len(arr):
            step = -step
        z += step
    return arr[np.asarray(idx)]


def _child(n: int, cache: Path, dictionary: bool = False) -> dict:
    """One size in this process: load, enhance, write; stage times, RSS, RMSE (with the
    opt-in shipped dictionary when ``dictionary``)."""
    import hybrid
    from hybrid.lung import body_mask
    from hybrid.metrics import rmse
    from hybrid.pipeline import Enhancer
    from hybrid.volume import Provenance, Volume

    base = _base_case(cache)
    uld = Volume(_tile(base["uld"], n), tuple(base["spacing"]),
                 Provenance(source="bench", modality="CT"))
    nd = _tile(base["nd"], n)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        series = Path(tmp) / "uld"
        hybrid.save(uld, series, format="dicom", description="bench ULD")
        t = time.perf_counter()
        vol = hybrid.load(series)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        enh = Enhancer(dictionary="shipped" if dictionary else None).prepare(progress=False)
        t_models = time.perf_counter() - t
        enh.enhance(vol.array[:2], progress=False)  # warm-up: graph tracing, index to memory
        t = time.perf_counter()
        out = enh.enhance(vol, progress=False)
        t_enh = time.perf_counter() - t
        stages = dict(enh.last_info["seconds_by_stage"])
        t = time.perf_counter()
        hybrid.save(out, Path(tmp) / "out", format="dicom", description="bench enhanced")
        t_write = time.perf_counter() - t
    body = body_mask(nd, spacing=uld.spacing)
    queried = body_mask(vol.array, spacing=vol.spacing)  # what the pipeline restores
    return {
        "body_pixels": int(queried.sum()),
        "dictionary": bool(dictionary),
        "dictionary_body_patches_per_s": (float(queried.sum() / stages["dictionary"])
                                          if dictionary else None),
        "slices": n,
        "load_s": t_load, **{f"{k}_s": v for k, v in stages.items()}, "write_s": t_write,
        "hybrid_s": t_enh, "slices_per_s": n / t_enh, "model_load_s": t_models,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rmse_body_hu": float(rmse(out.array, nd, mask=body)),
        "rmse_input_hu": float(rmse(vol.array, nd, mask=body)),
        "cnn_precision": enh.cnn.active_precision,
        "stride": enh.stride,
        "search_params": enh.dictionary.meta.get("search_params") if dictionary else None,
    }


def _references(cache: Path, n: int = 16) -> dict:
    """Reference points on the base volume, in this run."""
    import faiss

    from hybrid.baselines import BASELINES
    from hybrid.lung import body_mask
    from hybrid.metrics import rmse
    from hybrid.patches import extract_patches, grid_centers
    from hybrid.pipeline import Enhancer

    base = _base_case(cache)
    mid = len(base["uld"]) // 2
    uld, nd = base["uld"][mid - n // 2: mid + n // 2], base["nd"][mid - n // 2: mid + n // 2]
    sp = tuple(base["spacing"])
    body = body_mask(uld, spacing=sp)
    enh = Enhancer(dictionary="shipped")
    ref: dict = {"what": str(base["what"]),
                 "simulate_low_dose_s_per_slice": float(base["simulate_s_per_slice"])}

    # shipped index vs exact flat search, same keys (the body patches of the calibrated grid)
    keys = []
    for z in range(len(uld)):
        c = grid_centers(uld[z].shape, stride=enh.stride, mask=body[z], size=7)
        keys.append(extract_patches(uld[z], c, size=7))
    keys = enh.dictionary.keys_of(np.concatenate(keys))
    enh.dictionary._search(keys[:2000], 1)
    t = time.perf_counter()
    _, ids = enh.dictionary._search(keys, 1)
    ref["index_queries_per_s"] = len(keys) / (time.perf_counter() - t)
    stored = enh.dictionary.stored_keys()
    flat = faiss.IndexFlatL2(keys.shape[1])
    flat.add(stored)
    sample = keys[:20_000]
    t = time.perf_counter()
    exact_d2, exact_ids = flat.search(sample, 1)
    ref["exact_queries_per_s"] = len(sample) / (time.perf_counter() - t)
    ref["index_recall_at_1"] = float((ids[: len(sample), 0] == exact_ids[:, 0]).mean())
    found = np.linalg.norm(sample - stored[ids[: len(sample), 0]], axis=1)
    ref["index_l2_excess"] = float(found.sum() / np.sqrt(np.maximum(exact_d2[:, 0], 0)).sum() - 1)
    # the stored IVF index (what cpu_graph=None searches), same keys
    graph = enh.dictionary.config.cpu_graph
    enh.dictionary.set_cpu_graph(None)
    enh.dictionary._search(keys[:2000], 1)
    t = time.perf_counter()
    enh.dictionary._search(keys, 1)
    ref["ivf_queries_per_s"] = len(keys) / (time.perf_counter() - t)
    ref["ivf_search_params"] = enh.dictionary.meta.get("search_params")
    # building the CPU graph from scratch (what a first use on a new machine pays, then cached)
    enh.dictionary.set_cpu_graph(graph)
    cache_env = os.environ.get("HYBRID_CACHE_DIR")
    os.environ["HYBRID_CACHE_DIR"] = ""  # cache off: a real build
    try:
        t = time.perf_counter()
        enh.dictionary._cpu_graph()
        ref["graph_build_s"] = time.perf_counter() - t
    finally:
        if cache_env is None:
            del os.environ["HYBRID_CACHE_DIR"]
        else:
            os.environ["HYBRID_CACHE_DIR"] = cache_env
    enh.dictionary.set_cpu_graph(graph)
    ref["dictionary_build"] = enh.dictionary.meta.get("build", {})
    ref["body_pixels_per_slice"] = float(body.sum() / len(body))
    ref["queries_per_slice"] = len(keys) / len(uld)

    # the shipped settings, the previous defaults and the unhurried settings: whole enhance,
    # same slices.  Previous: IVF2048,Flat nprobe 16 at stride 2, float32 CNN; unhurried: the
    # same at stride 1 (every body pixel queried).
    shipped = (enh.stride, enh.dictionary.config.cpu_graph, enh.cnn.precision)
    runs = {"shipped": shipped, "previous (stride 2, IVF nprobe 16, float32 CNN)": (2, None, "float32"),
            "unhurried (stride 1, IVF nprobe 16, float32 CNN)": (1, None, "float32"),
            SQUARE_GRID: (2, shipped[1], shipped[2])}
    for name, (stride, graph, precision) in runs.items():
        enh.dictionary.set_cpu_graph(graph)
        enh.cnn.precision = precision
        enh.stride = stride
        enh.enhance(uld[:2], progress=False)  # warm-up (graph build or load, tracing)
        t = time.perf_counter()
        out = enh.enhance(uld, progress=False)
        sec = (time.perf_counter() - t) / len(uld)
        ref[name] = {"stride": enh.stride, "cpu_graph": graph, "cnn_precision": enh.cnn.active_precision,
                     "search_params": enh.dictionary.meta.get("search_params"), "s_per_slice": sec,
                     "s_by_stage_per_slice": {k: v / len(uld) for k, v in
                                              enh.last_info["seconds_by_stage"].items()},
                     "rmse_body_hu": float(rmse(out, nd, mask=body))}
    enh.dictionary.set_cpu_graph(shipped[1])
    enh.cnn.precision = shipped[2]
    enh.stride = shipped[0]

    # BM3D on one slice (sigma estimated in the body, both cores)
    try:
        bm3d = BASELINES["bm3d"](num_threads=0)
        t = time.perf_counter()
        bm3d.propose(uld[n // 2], body_mask=body[n // 2])
        ref["bm3d_s_per_slice"] = time.perf_counter() - t
    except Exception as exc:  # the optional dependency may be missing
        ref["bm3d_s_per_slice"] = None
        ref["bm3d_error"] = f"{type(exc).__name__}: {exc}"
    return ref


def _markdown(res: dict) -> str:
    rows = res["sizes"]
    precision = sorted({r.get("cnn_precision", "?") for r in rows})
    lines = [
        f"`make bench`, {res['date']}, {res['machine']}, CNN in {' / '.join(precision)}; "
        f"volume: {res['references']['what']}.",
        "",
        "| slices | load | segment | CNN | dictionary | blend | **hybrid** | write | slices/s | peak RSS | RMSE body (input) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        what = f"{r['slices']} with `--dictionary shipped`" if r["dictionary"] else str(r["slices"])
        dic = f"{r['dictionary_s']:.1f} s" if r["dictionary"] else "–"
        lines.append(
            f"| {what} | {r['load_s']:.1f} s | {r['segment_s']:.1f} s | {r['cnn_s']:.1f} s | "
            f"{dic} | {r['blend_s']:.1f} s | **{r['hybrid_s']:.1f} s** | "
            f"{r['write_s']:.1f} s | {r['slices_per_s']:.2f} | {r['peak_rss_mib'] / 1024:.2f} GiB | "
            f"{r['rmse_body_hu']:.1f} HU ({r['rmse_input_hu']:.1f}) |")
    ref = res["references"]
    sh = ref["shipped"]
    lines += ["", "| reference, same run | value | ratio |", "|---|---:|---:|",
              f"| shipped search (HNSW{sh['cpu_graph']}, {sh['search_params']}) vs exact flat search | "
              f"{ref['index_queries_per_s'] / 1e3:.0f} k vs {ref['exact_queries_per_s'] / 1e3:.0f} k queries/s "
              f"(recall@1 {ref['index_recall_at_1']:.3f}, L2 excess {100 * ref['index_l2_excess']:.2f} %) | "
              f"{ref['index_queries_per_s'] / ref['exact_queries_per_s']:.1f}× |",
              f"| shipped search vs the stored IVF index ({ref['ivf_search_params']}) | "
              f"{ref['index_queries_per_s'] / 1e3:.0f} k vs {ref['ivf_queries_per_s'] / 1e3:.0f} k queries/s | "
              f"{ref['index_queries_per_s'] / ref['ivf_queries_per_s']:.1f}× |",
              f"| search graph built from scratch (first use on a machine, then cached) | "
              f"{ref['graph_build_s']:.0f} s | |"]
    for name in ("previous (stride 2, IVF nprobe 16, float32 CNN)",
                 "unhurried (stride 1, IVF nprobe 16, float32 CNN)"):
        r = ref[name]
        lines.append(f"| {name}: s/slice, RMSE | {r['s_per_slice']:.3f} s, {r['rmse_body_hu']:.2f} HU vs "
                     f"shipped {sh['s_per_slice']:.3f} s, {sh['rmse_body_hu']:.2f} HU | "
                     f"{r['s_per_slice'] / sh['s_per_slice']:.1f}× slower, RMSE "
                     f"{100 * (sh['rmse_body_hu'] / r['rmse_body_hu'] - 1):+.1f} % |")
    alt = ref.get(SQUARE_GRID)
    if alt:
        d_sh, d_alt = sh["s_by_stage_per_slice"]["dictionary"], alt["s_by_stage_per_slice"]["dictionary"]
        px = ref["body_pixels_per_slice"]
        lines.append(f"| {SQUARE_GRID}, dictionary stage: s/slice (body patches/s), hybrid RMSE | "
                     f"{d_alt:.3f} s ({px / d_alt / 1e6:.2f} M/s), {alt['rmse_body_hu']:.2f} HU vs shipped "
                     f"(stride {sh['stride']}) {d_sh:.3f} s ({px / d_sh / 1e6:.2f} M/s), "
                     f"{sh['rmse_body_hu']:.2f} HU | {d_alt / d_sh:.1f}× slower, RMSE "
                     f"{100 * (sh['rmse_body_hu'] / alt['rmse_body_hu'] - 1):+.2f} % |")
    if ref.get("bm3d_s_per_slice"):
        lines.append(f"| BM3D, one slice vs the hybrid per slice | {ref['bm3d_s_per_slice']:.1f} s vs "
                     f"{sh['s_per_slice']:.3f} s | {ref['bm3d_s_per_slice'] / sh['s_per_slice']:.0f}× |")
    big = max((r for r in rows if r["dictionary"]), key=lambda r: r["slices"], default=None)
    if big is not None:
        lines.append(f"| dictionary stage at {big['slices']} slices: body pixel-centred patches/s "
                     f"({big['body_pixels'] / big['slices'] / 1e3:.0f} k body pixels a slice, query "
                     f"grid {big['stride']}) | {big['dictionary_body_patches_per_s'] / 1e6:.2f} M/s, "
                     f"{big['dictionary_s'] / big['slices']:.3f} s/slice | |")
    big = max((r for r in rows if not r["dictionary"]), key=lambda r: r["slices"])
    orig = sum(ORIGINAL_S.values()) * big["slices"] / 250
    lines.append(f"| original MATLAB system (article: CNN 20 min + dictionary 2 h per ~250 slices) | "
                 f"{orig / 60:.0f} min vs {big['hybrid_s']:.0f} s | {orig / big['hybrid_s']:.0f}× |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 250])
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-dictionary", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-dictionary-run", action="store_true",
                   help="skip the run with the opt-in dictionary at the largest size")
    p.add_argument("--cache", type=Path, default=REPO / "out" / "bench")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(_child(args.child, args.cache, args.child_dictionary)))
        return
    _base_case(args.cache)
    rows = []
    runs = [(n, False) for n in args.sizes]
    if not args.no_dictionary_run:
        runs.append((max(args.sizes), True))
    for n, dictionary in runs:  # a fresh process per size: its own peak RSS
        r = subprocess.run([sys.executable, __file__, "--child", str(n), "--cache", str(args.cache)]
                           + (["--child-dictionary"] if dictionary else []),
                           capture_output=True, text=True, check=False)
        if r.returncode:
            sys.exit(f"bench for {n} slices failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"{n} slices{' with the dictionary' if dictionary else ''}: hybrid "
              f"{rows[-1]['hybrid_s']:.1f} s", flush=True)
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
        "git_revision": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                       text=True, cwd=REPO).stdout.strip(),
        "sizes": rows,
        "references": _references(args.cache),
    }
    plain = [r for r in rows if not r["dictionary"]]
    if len(plain) > 1:  # linear growth: seconds per slice at each size
        res["s_per_slice_by_size"] = {r["slices"]: r["hybrid_s"] / r["slices"] for r in plain}
    res["markdown"] = _markdown(res)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(res["markdown"])


if __name__ == "__main__":
    main()
