"""Dose sweep: quality against simulated dose fraction for the input, the hybrid and a baseline."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hybrid.evaluate.cases import central_slices
from hybrid.evaluate.figures import _dose_sweep_figure
from hybrid.evaluate.report import _json_default
from hybrid.evaluate.scoring import score_methods

log = logging.getLogger(__name__)

__all__ = ["DOSE_SWEEP_FRACTIONS", "dose_sweep"]

#: Baseline parameters tuned by the held-out comparison (``python -m hybrid.evaluate heldout``),
#: the dose sweep's default for its baseline.
_TUNED_PARAMS = (Path(__file__).resolve().parents[2] / "experiments" / "results"
                 / "baselines_heldout.json")

DOSE_SWEEP_FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.25)


def dose_sweep(
    data_root: str | os.PathLike,
    *,
    case_id: str = "A0001-B",
    doses: Sequence[float] = DOSE_SWEEP_FRACTIONS,
    baseline: str = "bm3d",
    baseline_params: Mapping[str, Any] | None = None,
    n_slices: int = 4,
    seed: int = 0,
    enhancer: Any = None,
    out: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Quality against dose fraction for the input, the hybrid and one tuned baseline.

    The case's real normal-dose slices (its ``nd``) get simulated low-dose
    partners at each dose fraction (:func:`hybrid.physics.simulate_low_dose`,
    one seed); each method is scored inside the body mask (RMSE HU, SSIM in the
    lung and soft-tissue windows).  ``baseline_params`` default: the parameters
    tuned on training cases in ``experiments/results/baselines_heldout.json``
    for the case's kernel class, if that file exists, else the baseline's
    defaults.  Writes ``dose_sweep.json`` and ``dose_sweep.png`` under ``out``.
    """
    from hybrid.baselines import BASELINES
    from hybrid.data import iter_cases, load_case
    from hybrid.physics import simulate_low_dose
    from hybrid.pipeline import Enhancer

    root = Path(data_root)
    path = next((p for e, p in iter_cases(root) if e["case_id"] == case_id), None)
    if path is None:
        raise ValueError(f"Expected case {case_id!r} in {root}; run `make data` first.")
    case = load_case(path)
    sl = central_slices(len(case.nd), n_slices)
    nd = case.nd[sl]
    lung, body = case.lung_mask[sl], case.body_mask[sl]
    # central_slices is a contiguous run: the slab keeps the source's provenance (kernel, headers).
    source = case.uld.slab(sl[0], sl[-1] + 1).with_array(nd)
    if baseline_params is None:
        baseline_params = {}
        if _TUNED_PARAMS.exists():
            info = json.loads(_TUNED_PARAMS.read_text())
            for t in info.get("tuning", {}).values():
                if case.meta.get("kernel") in t.get("kernels", ()) and baseline in t.get("baselines", {}):
                    baseline_params = t["baselines"][baseline]["params"]
                    break
    enhancer = enhancer or Enhancer()
    rows = []
    for f in doses:
        uld = simulate_low_dose(source, f, rng=seed, progress=False)
        t0 = time.perf_counter()
        hyb = enhancer.enhance(uld, progress=False).array
        t_h = (time.perf_counter() - t0) / len(nd)
        t0 = time.perf_counter()
        base = BASELINES[baseline](**baseline_params).propose(uld, body_mask=body).image
        t_b = (time.perf_counter() - t0) / len(nd)
        for name, img, secs in (("input", uld.array, 0.0), ("hybrid", hyb, t_h), (baseline, base, t_b)):
            m = score_methods({name: img}, nd, lung, body)[name]["metrics"]["body"]
            rows.append({"dose_fraction": f, "method": name, "seconds_per_slice": secs,
                         **{k: float(v) for k, v in m.items()}})
        log.info("dose %.2f done", f)
    result = {"case": case_id, "kernel": case.meta.get("kernel"), "slices": sl, "seed": seed,
              "baseline": baseline, "baseline_params": dict(baseline_params), "region": "body",
              "rows": rows}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "dose_sweep.json").write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        _dose_sweep_figure(result, out / "dose_sweep.png")
    return result


