"""The low-dose simulator against REAL quarter-dose noise (Mayo 2016 pairs, check only).

Each pair's routine-dose slice is taken to 25 % dose with ``simulate_low_dose``
(kernel "ramp", the class whose noise power spectrum near Nyquist matches the
routine-dose image's own; 0.7 mm pixels assumed, the spacing is not recorded)
and the simulated noise ``sim - nd`` is compared with the real ``ld - nd``.
The Mayo quarter dose was made by noise insertion into the same projections,
so ``ld - nd`` is the inserted noise alone, like ``sim - nd`` (checked in
``experiments/simulator_check.py``: var(ld) = var(nd) + var(ld - nd) within 5-8 %).
Measured (``experiments/results/simulator_check.md``, seed 0): body RMS
sim / real 0.95, 0.96, 0.89; NPS peak sim / real 1.26, 0.90, 0.87 (the real
NPS is a plateau from ~0.28 to 0.5 cycles/pixel, so its peak is ill-defined);
NPS mean frequency 0.335 vs 0.349-0.351 cycles/pixel.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hybrid._paths import SHARED_DATA_DIR

REPO = Path(__file__).resolve().parents[1]
PAIRS = SHARED_DATA_DIR / "real-pairs"
CASES = ("mayo2016-case1", "mayo2016-case2", "mayo2016-case3")


@pytest.fixture(scope="module")
def check():
    if not (PAIRS / f"{CASES[0]}.npz").exists():
        pytest.skip(f"real pairs not available: {PAIRS} is absent (CI has ../shared/data/real-pairs)")
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import simulator_check
    finally:
        sys.path.pop(0)
    return simulator_check


@pytest.mark.realdata
@pytest.mark.parametrize("case", CASES)
def test_simulated_quarter_dose_noise_matches_real(check, case):
    with np.load(PAIRS / f"{case}.npz") as d:
        ld, nd = d["ld"].astype(np.float64), d["nd"].astype(np.float64)
    masks = check.regions(nd, 0.7)
    corners = check.nps_rois(nd, masks["body"])
    sim = check.simulate(nd, 0.7, seed=CASES.index(case), kernel="ramp")
    real = check.noise_stats(ld - nd, nd, masks, corners)
    simulated = check.noise_stats(sim - nd, nd, masks, corners)
    # level: measured 0.89-0.96 (the body periphery is 12-16 % low: no bowtie
    # filter in the model); 15 % is the criterion of issue 16
    ratio = simulated["rms_hu"]["body"] / real["rms_hu"]["body"]
    assert 0.85 < ratio < 1.15, ratio
    # texture: the real NPS is flat from ~0.28 to 0.5 cycles/pixel, so the peak
    # moves by +-15 % with the draw (measured sim / real 0.87-1.26): 35 %; the
    # mean frequency is stable (measured -4 %): 10 %.  "standard" gave 0.54-0.61
    # and 0.85, "sharp" 1.35-1.78 and 1.19.
    peak = simulated["nps"]["peak_cyc_per_px"] / real["nps"]["peak_cyc_per_px"]
    assert 0.65 < peak < 1.35, peak
    mean_f = simulated["nps"]["mean_cyc_per_px"] / real["nps"]["mean_cyc_per_px"]
    assert 0.9 < mean_f < 1.1, mean_f
