"""Issue 17, idea 1: a better general dictionary, measured against the CNN alone.

    python experiments/dictionary_ideas.py [--data data] [--slices 4] [--out experiments/results/dictionary_ideas]

Every dictionary is built from the recipe's dictionary cases (`assign_cases(...)["dictionary"]`
of `experiments/splits.json`: never a held-out or calibration patient) of the current
`make data`, with the shipped DictionaryConfig (200 000 entries, 7 x 7 patches, 16-d PCA
keys), queried on the stride-2 grid, searched on the stored IVF index (no HNSW graph: the same
neighbours up to its recall, and no build wait).  Variants:

* ``uld->nd``: the study's and the shipped design: keys from the low-dose patch, values
  its normal-dose patch (rebuilt on the current data, so that only the design differs);
* ``cnn->nd``: keys from the shipped CNN pair's output (a denoised image: the key is no
  longer mostly noise), values the normal-dose patch;
* ``cnn->residual``: keys from the CNN's output, values the normal-dose patch minus the
  CNN's (the dictionary proposes a correction of the CNN: result = CNN + correction);
* each with k = 1 and k = 8 neighbours (``propose``'s distance-weighted mean; for the
  residual a plain mean).

Scored on the held-out cases of `make data` (P12 phantom, A0001 kernels B and L, at
their nominal 2 % dose; ``--slices`` central slices each), body mask, RMSE in HU against
the normal-dose image; the normal-dose image's own noise (`hybrid.physics.estimate_noise_hu`)
is given beside each case: RMSE against a noisy reference has a floor near it.  For each
variant: the dictionary alone, and its best constant blend with the CNN
``(1 - w) CNN + w dict`` with w chosen on the same held-out slices (an upper bound of what
any blender can get from it: a real blender must choose w without the reference).
Writes ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

WEIGHTS = np.round(np.linspace(0.0, 1.0, 21), 2)


def _cnn_output(cnn, case) -> np.ndarray:
    return cnn.propose(case.uld.array, lung_mask=case.lung_mask,
                       body_mask=case.body_mask).image


def _residual_proposal(d, image: np.ndarray, body: np.ndarray, k: int) -> np.ndarray:
    """CNN image + the stored residuals (ND - CNN) of its patches' nearest entries (mean of
    k), overlap-added on the stride-2 grid inside the body.  Done here rather than by
    ``propose``, which adds the query patch's mean to values stored relative to their key's
    mean: right for ND values, not for a residual."""
    from hybrid.patches import extract_patches, grid_centers, overlap_add

    out = np.array(image, np.float32)
    values = d.values.astype(np.float32) + d.key_mean.astype(np.float32)[:, None]  # residuals
    for z in range(len(image)):
        centers = grid_centers(image[z].shape, stride=2, mask=body[z])
        _, ids = d.search(extract_patches(image[z], centers), k=k)
        patches = values[np.where(ids >= 0, ids, 0)].mean(axis=1)
        img, wsum = overlap_add(patches, centers, image[z].shape, fill=0.0)
        sel = body[z] & (wsum > 0)
        out[z][sel] += img[sel]
    return out


def _rmse(a, b, mask) -> float:
    d = (np.asarray(a, np.float64) - b)[mask]
    return float(np.sqrt(np.mean(d * d)))


def blend_score(cnn_img, prop, ref, body, cnn_rmse: float) -> dict[str, float]:
    """A proposal alone and its best constant blend with the CNN (w on these slices)."""
    curve = {float(w): _rmse((1 - w) * cnn_img + w * prop, ref, body) for w in WEIGHTS}
    best = min(curve, key=curve.get)
    return {"alone": _rmse(prop, ref, body), "best_w": best, "blend_at_best_w": curve[best],
            "gain_over_cnn_pct": 100 * (1 - curve[best] / cnn_rmse)}


def score_variants(dictionaries: dict, case, cnn_img, cnn_rmse: float,
                   ks: tuple[int, ...] = (1, 8)) -> dict[str, dict[str, float]]:
    """:func:`blend_score` of every dictionary at every k on one held-out case: "uld..."
    dictionaries are queried with the low-dose image, the others with the CNN's output,
    "...residual" ones add their correction to it (:func:`_residual_proposal`)."""
    body, scores = case.body_mask, {}
    for name, d in dictionaries.items():
        for k in ks:
            if name.endswith("residual"):
                prop = _residual_proposal(d, cnn_img, body, k)
            else:
                query = case.uld.array if name.startswith("uld") else cnn_img
                prop = d.with_settings(stride=2, k=k).propose(query, body_mask=body).image
            scores[f"{name} k={k}"] = blend_score(cnn_img, prop, case.nd, body, cnn_rmse)
    return scores


def case_row(case, cnn, dictionaries: dict, **extra) -> dict:
    """One held-out case's row: ``extra``, the reference's own noise, input and CNN RMSE,
    and :func:`score_variants` of ``dictionaries`` (printed as it is made)."""
    from hybrid.physics import estimate_noise_hu

    body = case.body_mask
    out = _cnn_output(cnn, case)
    row = {"case": case.case_id, **extra,
           "nd_own_noise_hu": float(estimate_noise_hu(case.nd, mask=body)),
           "input": _rmse(case.uld.array, case.nd, body), "cnn": _rmse(out, case.nd, body)}
    row["variants"] = score_variants(dictionaries, case, out, row["cnn"])
    print(json.dumps(row, indent=1))
    return row


def cell(v: dict[str, float]) -> str:
    """A table cell of :func:`blend_score`: alone / best blend (w, gain)."""
    return (f"{v['alone']:.1f} / {v['blend_at_best_w']:.1f} (w {v['best_w']:.2f}, "
            f"{v['gain_over_cnn_pct']:+.1f} %)")


def write_results(out: Path, payload: dict, title: str, script: str, lines: list[str]) -> None:
    """``results.json`` (``payload``) and ``results.md`` (``title`` and the table ``lines``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    (out / "results.md").write_text(
        f"# {title}\n\nEach cell: alone / best constant blend with the CNN (its weight w, its "
        "gain over the CNN alone; w chosen on these slices: an upper bound).  Produced by "
        f"`python experiments/{script}`.\n\n" + "\n".join(lines) + "\n")
    print((out / "results.md").read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("data"))
    p.add_argument("--slices", type=int, default=4)
    p.add_argument("--max-patches", type=int, default=200_000)
    p.add_argument("--out", type=Path, default=Path("experiments/results/dictionary_ideas"))
    args = p.parse_args()

    import dataclasses

    from hybrid.cnn.infer import CNNPair
    from hybrid.data import iter_cases, load_case
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.pipeline import default_asset_paths
    from hybrid.recipe import assign_cases, load_split

    split = load_split()
    held = set(split.held_out_patients)
    train_cases, test_cases = [], []
    for entry, path in iter_cases(args.data):
        (test_cases if entry["patient_id"] in held else train_cases).append(path)
    groups = assign_cases([load_case(p) for p in train_cases], split)
    dict_cases = groups["dictionary"]
    cnn = CNNPair.load(default_asset_paths()["cnn"])
    t0 = time.perf_counter()
    cnn_out = [_cnn_output(cnn, c) for c in dict_cases]
    print(f"CNN on {sum(len(c.nd) for c in dict_cases)} training slices: "
          f"{time.perf_counter() - t0:.0f} s")
    cfg = dataclasses.replace(DictionaryConfig(), max_patches=args.max_patches, cpu_graph=None)
    pairs = {
        "uld->nd": [(c.uld.array, c.nd, c.body_mask) for c in dict_cases],
        "cnn->nd": [(o, c.nd, c.body_mask) for o, c in zip(cnn_out, dict_cases)],
        "cnn->residual": [(o, c.nd - o, c.body_mask) for o, c in zip(cnn_out, dict_cases)],
    }
    dictionaries = {}
    for name, data in pairs.items():
        t = time.perf_counter()
        dictionaries[name] = PatchDictionary.build(data, config=cfg, name=name)
        print(f"built {name}: {len(dictionaries[name])} entries, {time.perf_counter() - t:.0f} s")

    rows = []
    for path in test_cases:
        case = load_case(path)
        nz = len(case.nd)
        lo = max(0, nz // 2 - args.slices // 2)
        s = slice(lo, min(nz, lo + args.slices))
        case = load_case(path, slices=s)
        rows.append(case_row(case, cnn, dictionaries, slices=[s.start, s.stop]))

    names = list(rows[0]["variants"])
    lines = ["| case (ND own noise) | input | CNN | " + " | ".join(names) + " |",
             "|---|---:|---:|" + "---:|" * len(names)]
    lines += [f"| {r['case']} ({r['nd_own_noise_hu']:.0f} HU) | {r['input']:.1f} | {r['cnn']:.1f} | "
              + " | ".join(cell(r["variants"][n]) for n in names) + " |" for r in rows]
    write_results(args.out, {"dictionary_cases": [c.case_id for c in dict_cases],
                             "config": dataclasses.asdict(cfg), "rows": rows},
                  "Dictionary idea 1 (issue 17): body RMSE in HU on held-out cases at 2 % dose",
                  "dictionary_ideas.py", lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
