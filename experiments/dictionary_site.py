"""Issue 17, idea 2: a site dictionary, built from another patient's series of the same
kernel, measured where the shipped CNN is weakest (the sharp kernel).

    python experiments/dictionary_site.py [--data data] [--slices 4] [--out experiments/results/dictionary_site]

A "site" here is one normal-dose series of another patient: the whole-thorax
``itkelastix-thorax`` case of ``make data`` (141 slices, kernel C, a dictionary-stage
training case, never held out), re-filtered to the target's kernel class
(:func:`hybrid.physics.convert_kernel`: sharp for A0001-L, standard for A0001-B) with
its 2 % dose simulated in that kernel (:func:`hybrid.physics.simulate_low_dose`, seed
17).  That is what ``hybrid dictionary build SERIES`` would do with a hospital's own
normal-dose series.  Dictionaries as in ``dictionary_ideas.py`` (shipped config, stored IVF
index, stride 2): ``uld->nd`` (the study's keys) and ``cnn->residual`` (keys from the
shipped CNN's output, values ND - CNN), k = 1 and 8.

Scored on the held-out A0001 cases of ``make data`` at 2 % (``--slices`` central
slices), body RMSE in HU against the normal-dose image, with the reference's own noise;
the dictionary alone and its best constant blend with the CNN (w chosen on these slices:
an upper bound).  Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dictionary_ideas import case_row, cell, write_results  # noqa: E402

TARGETS = {"A0001-L": "sharp", "A0001-B": "standard"}
SITE_CASE = "thorax"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("experiments/results/dictionary_site"))
    args = p.parse_args()

    from hybrid.cnn.infer import CNNPair
    from hybrid.data import iter_cases, load_case
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.lung import segment
    from hybrid.physics import convert_kernel, estimate_noise_hu, kernel_for, simulate_low_dose
    from hybrid.pipeline import default_asset_paths
    from hybrid.volume import Volume

    paths = {e["case_id"]: path for e, path in iter_cases(args.data)}
    site = load_case(paths[SITE_CASE])
    site_kernel = kernel_for(site.meta.get("kernel")) if site.meta.get("kernel") else "standard"
    cnn = CNNPair.load(default_asset_paths()["cnn"])
    cfg = dataclasses.replace(DictionaryConfig(), cpu_graph=None)
    rows = []
    for target, kernel in TARGETS.items():
        nd = (site.nd if kernel == site_kernel else
              convert_kernel(site.nd, site_kernel, kernel)).astype(np.float32)
        uld = simulate_low_dose(Volume(nd, site.uld.spacing), 0.02, rng=17, kernel=kernel,
                                progress=False).array
        lung = segment(uld, spacing=site.uld.spacing, body=site.body_mask)
        site_cnn = cnn.propose(uld, lung_mask=lung, body_mask=site.body_mask).image
        dicts = {
            "uld->nd": PatchDictionary.build([(uld, nd, site.body_mask)], config=cfg, name="site"),
            "cnn->residual": PatchDictionary.build([(site_cnn, nd - site_cnn, site.body_mask)],
                                                   config=cfg, name="site-residual"),
        }
        full = load_case(paths[target])
        lo = max(0, len(full.nd) // 2 - args.slices // 2)
        case = load_case(paths[target], slices=slice(lo, min(len(full.nd), lo + args.slices)))
        rows.append(case_row(case, cnn, dicts, kernel=kernel,
                             site=f"{SITE_CASE} ({site_kernel} -> {kernel})",
                             site_nd_noise_hu=float(estimate_noise_hu(nd, mask=site.body_mask))))
    names = list(rows[0]["variants"])
    lines = ["| case (ND own noise) | site series | input | CNN | " + " | ".join(names) + " |",
             "|---|---|---:|---:|" + "---:|" * len(names)]
    lines += [f"| {r['case']} ({r['nd_own_noise_hu']:.0f} HU) | {r['site']} | {r['input']:.1f} | "
              f"{r['cnn']:.1f} | " + " | ".join(cell(r["variants"][n]) for n in names) + " |"
              for r in rows]
    write_results(args.out, {"rows": rows},
                  "Dictionary idea 2 (issue 17): a site dictionary, body RMSE in HU at 2 % dose",
                  "dictionary_site.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
