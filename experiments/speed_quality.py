"""Dictionary search settings: speed against quality on held-out patients (issue #5/#8 evidence).

For each setting (query stride, index, search parameters) this measures, on
the held-out cases' central slices (the held-out patients of
experiments/splits.json; never in the shipped dictionary, CNN or calibration): seconds per slice of
``PatchDictionary.propose`` and the body RMSE (HU) of the dictionary
proposal and of the blended hybrid (CNN proposal computed once per case).
The CNN, masks and blender are the shipped ones; only the dictionary search
changes (the blender was calibrated on the 2 x 3 grid, so the other rows are
not recalibrated).  Times are per slice of the dictionary stage alone, on a shared
2-core machine.  Writes experiments/results/speed_quality.{json,md}.

    python experiments/speed_quality.py [--slices 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _variant(path: str, index_kind: str, params: str):
    """The dictionary at ``path`` searching another way over the same keys: "ivf" = the
    stored IVF index, "hnswM" = an HNSW graph with M links (cpu_graph=M).  Loaded afresh
    for each variant: search parameters live on the FAISS index, which copies share."""
    from hybrid.dictionary import PatchDictionary

    d = PatchDictionary.load(path)
    d.set_cpu_graph(None if index_kind == "ivf" else int(index_kind[4:]))
    d.set_search_params(params)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--data", default=str(REPO / "data"))
    ap.add_argument("--only", nargs="*", help="settings as stride:index:params:k")
    args = ap.parse_args()

    from hybrid.data import iter_cases, load_case
    from hybrid.metrics import rmse
    from hybrid.pipeline import Enhancer
    from hybrid.recipe import load_split

    enh = Enhancer()
    held_out = set(load_split().held_out_patients)
    cases = []
    for entry, path in iter_cases(args.data):
        if entry["patient_id"] not in held_out:
            continue
        name = f"{entry['kind']}/{entry['case_id']}"
        mid = len(load_case(path).nd) // 2
        c = load_case(path, slices=slice(mid - args.slices // 2, mid - args.slices // 2 + args.slices))
        cnn = enh.cnn.propose(c.uld.array, lung_mask=c.lung_mask)
        cases.append((name, c, cnn))

    settings = [  # (stride, index, search params, k): "ivf" = the stored IVF2048,Flat index
        (1, "ivf", "nprobe=16", 1),     # the unhurried setting
        (2, "ivf", "nprobe=16", 1),     # the previous default
        (2, "ivf", "nprobe=8", 1),
        (3, "ivf", "nprobe=16", 1),
        ((2, 3), "hnsw16", "efSearch=10", 1),  # shipped (cpu_graph=16, the 2 x 3 grid)
        (2, "hnsw16", "efSearch=10", 1),
        (2, "hnsw16", "efSearch=16", 1),
        (2, "hnsw16", "efSearch=8", 1),
        (3, "hnsw16", "efSearch=10", 1),
        (3, "hnsw16", "efSearch=10", 4),
    ]
    if args.only:
        settings = [s for s in settings if f"{s[0]}:{s[1]}:{s[2]}:{s[3]}" in args.only]
    rows = []
    cache = {}
    for stride, kind, params, k in settings:
        key = (kind, params)
        if key not in cache:
            cache[key] = _variant(enh.sources["dictionary"], kind, params)
        d = cache[key].with_settings(stride=stride, k=k)
        row = {"stride": stride, "index": kind, "params": params, "k": k}
        tot_t, tot_n = 0.0, 0
        for name, c, cnn in cases:
            d.propose(c.uld.array[:1], body_mask=c.body_mask[:1])  # warm
            t = time.perf_counter()
            p = d.propose(c.uld.array, body_mask=c.body_mask)
            tot_t += time.perf_counter() - t
            tot_n += len(c.nd)
            h = enh.blender.blend(cnn, p).image
            row[f"{name}_dict"] = float(rmse(p.image, c.nd, mask=c.body_mask))
            row[f"{name}_hybrid"] = float(rmse(h, c.nd, mask=c.body_mask))
        row["s_per_slice"] = tot_t / tot_n
        rows.append(row)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)
    out = REPO / "experiments/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed_quality.json").write_text(json.dumps(rows, indent=1))
    names = [n for n, _, _ in cases]
    lines = ["| stride | index | params | k | s/slice | " + " | ".join(f"{n} dict / hybrid" for n in names) + " |",
             "|---" * (5 + len(names)) + "|"]
    for r in rows:
        lines.append(f"| {r['stride']} | {r['index']} | {r['params']} | {r['k']} | {r['s_per_slice']:.3f} | "
                     + " | ".join(f"{r[n + '_dict']:.1f} / {r[n + '_hybrid']:.2f}" for n in names) + " |")
    (out / "speed_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
