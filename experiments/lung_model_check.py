"""Which model restores the lungs best? (issue 16, a diagnosis: the choice of a lung model is
made on the monitor patients, ``experiments/continue_body.py --region lung`` logs it)

    python experiments/lung_model_check.py [PAIR ...] [--data data] [--slices 8]

For each CNN pair (default the shipped one), on the held-out patients' nominal 2 % inputs of
``make data``, 8 central slices each: body RMSE (HU) against the normal dose, inside the lungs
(the case's lung mask) and outside them, with the pixels routed three ways: as the product
does (lung mask segmented from the input, :func:`hybrid.lung.segment`), the body model
everywhere (an empty lung mask) and the lung model everywhere (the whole body as lung).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", nargs="*", type=Path, default=[ROOT / "hybrid" / "assets" / "cnn"])
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--slices", type=int, default=8)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from hybrid.cnn.infer import CNNPair
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import load_split

    held = set(load_split().held_out_patients)
    cases = [load_case(p) for e, p in iter_cases(args.data) if e["patient_id"] in held]
    print("| pair | case | routing | body | lungs | outside lungs |\n|---|---|---|---:|---:|---:|")
    for folder in args.pairs:
        pair = CNNPair.load(folder)
        for c in cases:
            body = c.body_mask[_central(c, args.slices)]
            routes = {"as the product": None, "body model everywhere": np.zeros_like(body),
                      "lung model everywhere": body.copy()}
            for name, mask in routes.items():
                rmse = region_rmse(pair, c, args.slices, lung_mask=mask)
                print(f"| {folder.name if folder.name != 'model' else folder.parent.name} | "
                      f"{c.case_id} | {name} | " + " | ".join(f"{v:.2f}" for v in rmse.values()) + " |",
                      flush=True)
    return 0


def _central(case, n: int) -> slice:
    """``case``'s ``n`` central slices (:func:`hybrid.evaluate.cases.central_slices`)."""
    from hybrid.evaluate.cases import central_slices

    idx = central_slices(case.nd.shape[0], n)
    return slice(idx[0], idx[-1] + 1)


def region_rmse(pair, case, n_slices: int, lung_mask=None) -> dict[str, float]:
    """RMSE (HU) of ``pair``'s proposal against the normal dose on ``case``'s ``n_slices``
    central slices at its nominal low dose: ``{"body", "lungs", "outside"}`` (the case's body
    and lung masks).  The pixels are routed by ``lung_mask`` (on those slices), by default as
    the product does: the lung mask segmented from the input."""
    from hybrid.lung import segment

    sl = _central(case, n_slices)
    uld, nd = case.uld.array[sl].astype(np.float32), case.nd[sl]
    body = case.body_mask[sl]
    lung = case.lung_mask[sl] & body
    if lung_mask is None:
        lung_mask = segment(case.uld.array, spacing=case.uld.spacing)[sl]
    y = pair.propose(uld, lung_mask=lung_mask).image
    return {k: float(np.sqrt(np.mean((y[m] - nd[m]) ** 2)))
            for k, m in (("body", body), ("lungs", lung), ("outside", body & ~lung))}


if __name__ == "__main__":
    raise SystemExit(main())
