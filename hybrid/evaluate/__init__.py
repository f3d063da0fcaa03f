"""Evaluation against classical baselines: held-out comparison and leave-one-patient-out CV.

Two entry points, both honest about who sees which patient:

:func:`compare_on_heldout` (:mod:`hybrid.evaluate.heldout`)
    The shipped hybrid (CNN pair + dictionary + blender in ``hybrid/assets``,
    trained without the held-out patients, see :mod:`hybrid.recipe`)
    against the baselines of :mod:`hybrid.baselines` on the held-out
    patients (``experiments/splits.json``).  Every baseline's
    parameters are chosen by :func:`hybrid.baselines.tune` (body RMSE) on
    central slices of *training* cases of the same kind of data and the
    same kernel class (:func:`hybrid.physics.kernel_for`: smooth, standard,
    sharp), never on a held-out patient.  There is no real sharp-kernel
    training series (the held-out real patient's is the only one), so the
    sharp class is tuned on the sharp-kernel phantom patients.  Every method
    is then scored on the same central slices of each held-out case (BM3D is
    slow, so not all slices; timings in
    ``experiments/results/baselines_heldout.md``):
    RMSE (HU) and SSIM in the lung (−600/1500) and soft-tissue (40/400)
    windows, in the body, the lungs and the body outside the lungs
    (:func:`hybrid.metrics.evaluate_image`).

:func:`cross_validate` (:mod:`hybrid.evaluate.cv`)
    Leave-one-patient-out over ``data/folds.json`` (phantom and real sets
    separately): per fold the one training recipe (:mod:`hybrid.recipe`,
    settings ``experiments/configs/cv.json``: short budgets) trains a CNN pair
    on the training patients, builds a dictionary without the test patient and
    one calibration patient and calibrates the blender on the calibration
    patient (:func:`train_fold_models`); the baselines are tuned on training
    slices, and every method is scored on the test patient.  Writes a long
    CSV (patient × method × region × metric), a Markdown summary (mean ± sd
    over folds), box plots and an example-slice figure.

Also :func:`dose_sweep` (:mod:`hybrid.evaluate.dose_sweep`: 1-100 % dose on the held-out
patients, the gate of issue 16) and :func:`real_pairs` (:mod:`hybrid.evaluate.real_pairs`: the
real quarter-dose pairs, check only).  Modules by job:
``cases`` (manifest entries, slice choice), ``scoring``, ``tuning`` (grids,
tuning cases and slices, grid search), ``heldout``, ``cv`` (folds, their settings),
``report`` (CSV / JSON / Markdown writers), ``figures``, ``cli``.

Command line::

    python -m hybrid.evaluate heldout [--data data] [--out experiments/results]
    python -m hybrid.evaluate dose-sweep [--data data] [--out experiments/results] [--fast]
    python -m hybrid.evaluate real-pairs [--data data] [--pairs DIR] [--out experiments/results]
    python -m hybrid.evaluate cv [--data data] [--out experiments/results/cv] [--fast]
"""

from __future__ import annotations

from hybrid.evaluate.cases import central_slices
from hybrid.evaluate.cli import main
from hybrid.evaluate.cv import cross_validate, load_cv_settings, train_fold_models
from hybrid.evaluate.dose_sweep import DOSE_SWEEP_FRACTIONS, dose_sweep, sweep_gate
from hybrid.evaluate.heldout import compare_on_heldout, write_heldout_report
from hybrid.evaluate.real_pairs import real_pairs
from hybrid.evaluate.scoring import METHOD_ORDER, score_methods
from hybrid.evaluate.tuning import (
    CV_GRIDS,
    FAST_GRIDS,
    HELDOUT_GRIDS,
    default_tune_cases,
    tune_baselines,
)
from hybrid.evaluate.tuning import _tune_pairs as _tune_pairs  # re-exported for the tests

__all__ = [
    "HELDOUT_GRIDS",
    "CV_GRIDS",
    "FAST_GRIDS",
    "METHOD_ORDER",
    "central_slices",
    "default_tune_cases",
    "tune_baselines",
    "score_methods",
    "compare_on_heldout",
    "write_heldout_report",
    "cross_validate",
    "train_fold_models",
    "load_cv_settings",
    "DOSE_SWEEP_FRACTIONS",
    "dose_sweep",
    "sweep_gate",
    "real_pairs",
    "main",
]
