"""Building the shipped defaults from the paired dataset: dictionary and blender calibration.

Who sees which patient (so that every reported number is on unseen data):

===================  ==============================================  =====================
artifact             trained on                                      never sees
===================  ==============================================  =====================
CNN pair             all phantom and real patients but the held-out  P12, A0001
dictionary           same, minus the calibration patients            P12, A0001, P11, pancreas
blender calibration  the calibration patients (P11, pancreas)        P12, A0001
===================  ==============================================  =====================

The calibration patients are unseen by the dictionary, so its distances on
them are honest (a patient inside the dictionary matches itself at distance
≈ 0 and would teach the blender to trust it far too much).  They were seen by
the CNN, which can only bias the blender towards the CNN: conservative.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Patients never used for training the shipped defaults: the README's held-out numbers.
HELD_OUT_PATIENTS = ("P12", "A0001")
#: Patients used to calibrate the blender (never in the dictionary).
CALIBRATION_PATIENTS = ("P11", "pancreas")


def _cases(root: str | os.PathLike, patients: Iterable[str] | None = None, *,
           exclude: Iterable[str] = ()):
    from hybrid.data import iter_cases, load_case

    keep = set(patients) if patients is not None else None
    drop = set(exclude)
    for entry, path in iter_cases(root):
        if entry["patient_id"] in drop or (keep is not None and entry["patient_id"] not in keep):
            continue
        yield load_case(path)


def dictionary_pairs(root: str | os.PathLike, *, exclude: Sequence[str], include_aug: bool = True):
    """(uld, nd, body_mask) per case, the augmentation copy (other dose) as its own pair."""
    pairs = []
    for case in _cases(root, exclude=exclude):
        pairs.append((case.uld.array, case.nd, case.body_mask))
        if include_aug:
            pairs.append((case.uld_aug, case.nd, case.body_mask))
    if not pairs:
        raise ValueError(f"Expected training cases in {root}; all were excluded ({list(exclude)}).")
    return pairs


def build_dictionary(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    exclude: Sequence[str] = HELD_OUT_PATIENTS + CALIBRATION_PATIENTS,
    max_patches: int = 300_000,
    overwrite: bool = False,
    **config: Any,
):
    """Build and save the dictionary from the dataset at ``root``."""
    from hybrid.dictionary import DictionaryConfig, PatchDictionary

    pairs = dictionary_pairs(root, exclude=exclude)
    cfg = DictionaryConfig(max_patches=max_patches, **config)
    d = PatchDictionary.build(pairs, config=cfg, name=Path(out).name, verbose=True)
    d.save(out, overwrite=overwrite)
    return d


def calibration_samples(cases, cnn, dictionary, *, stride: int | tuple[int, int] = 2, include_aug: bool = True,
                        sharp_variants: bool = True) -> tuple[list[tuple], int]:
    """Blender calibration samples ``(cnn, dictionary, distance, nd, body)`` of paired cases.

    Each case at its nominal dose and (``include_aug``) its other dose; with
    ``sharp_variants`` each real smooth/standard-kernel case also as a
    sharp-kernel version of itself at 2 % and 5 % dose (see
    :func:`calibrate_blender`).  Returns the samples and the number of sharp
    variants made.
    """
    from hybrid.lung import segment
    from hybrid.physics import convert_kernel, simulate_low_dose
    from hybrid.volume import Volume

    samples = []

    def add(uld, nd, body, spacing):
        lung = segment(uld, spacing=spacing)
        c = cnn.propose(uld, lung)
        d = dictionary.propose(uld, body_mask=body, stride=stride)
        samples.append((c.image, d.image, d.uncertainty, nd, body))

    n_sharp = 0
    for case in cases:
        inputs = [case.uld.array] + ([case.uld_aug] if include_aug else [])
        for uld in inputs:  # the nominal dose and the case's other dose: calibrate across doses
            add(uld, case.nd, case.body_mask, case.uld.spacing)
        if sharp_variants and case.kind == "real" and case.meta.get("kernel") != "sharp":
            nd = convert_kernel(case.nd, case.meta.get("kernel") or "standard", "sharp")
            for i, f in enumerate((0.02, 0.05)):
                uld = simulate_low_dose(Volume(nd, case.uld.spacing), f, rng=2018 + i,
                                        kernel="sharp", progress=False)
                add(uld.array, nd, case.body_mask, case.uld.spacing)
                n_sharp += 1
        log.info("calibration case %s: %d slices", case.case_id, len(case.uld))
    return samples, n_sharp


def calibrate_blender(
    root: str | os.PathLike,
    cnn,
    dictionary,
    *,
    patients: Sequence[str] = CALIBRATION_PATIENTS,
    stride: int | tuple[int, int] = (2, 3),
    include_aug: bool = True,
    sharp_variants: bool = True,
    out: str | os.PathLike | None = None,
):
    """Calibrate the blender on ``patients`` with the given CNN pair and dictionary.

    With ``include_aug`` each case also contributes its copy at another dose
    (1–10 %), so the weights hold across doses, not only at 2 %.

    With ``sharp_variants`` each *real* calibration case reconstructed with a
    smooth or standard kernel also contributes a sharp-kernel version of
    itself: its normal-dose image re-filtered to the sharp kernel
    (:func:`hybrid.physics.convert_kernel`; pancreas: 11 -> 40 HU of noise) and
    that image's simulated 2 % and 5 % doses.  Why: the only other sharp
    calibration data are phantoms, on which the dictionary helps more than on
    real sharp-kernel scans; calibrated without them the hybrid lost to its
    CNN on the held-out real sharp series A0001-L (RMSE 102.1 vs 101.2 HU;
    with them 101.0, `experiments/build_defaults.py heldout`).
    """
    from hybrid.blend import calibrate

    cases = list(_cases(root, patients))
    samples, n_sharp = calibration_samples(cases, cnn, dictionary, stride=stride,
                                           include_aug=include_aug, sharp_variants=sharp_variants)
    if not samples:
        raise ValueError(f"Expected calibration patients {list(patients)} in {root}; none found.")
    blender = calibrate(samples)
    blender = dataclasses.replace(
        blender, calibration=dict(blender.calibration, patients=list(patients), stride=stride,
                                  include_aug=include_aug, sharp_variants=n_sharp))
    if out is not None:
        blender.save(out)
    return blender


def heldout_report(root, enhancer, *, patients: Sequence[str] = HELD_OUT_PATIENTS) -> list[dict[str, Any]]:
    """Per held-out case: RMSE (HU, body) and SSIM (lung and soft-tissue windows) per method."""
    from hybrid.metrics import evaluate_image

    rows = []
    for case in _cases(root, patients):
        out, maps = enhancer.enhance(case.uld, return_maps=True, progress=False)
        methods = {
            "input": case.uld.array,
            "cnn": maps.cnn,
            "dictionary": maps.dictionary,
            "hybrid": out.array,
        }
        for name, img in methods.items():
            m = evaluate_image(img, case.nd, lung_mask=case.lung_mask, body_mask=case.body_mask,
                               on_empty="nan")
            rows.append({"case": case.case_id, "patient": case.patient_id, "kind": case.kind,
                         "kernel": case.meta.get("kernel"),
                         "method": name, **{f"{r}_{k}": float(v) for r, d in m.items() for k, v in d.items()}})
    return rows


__all__ = [
    "HELD_OUT_PATIENTS", "CALIBRATION_PATIENTS", "dictionary_pairs", "build_dictionary",
    "calibration_samples", "calibrate_blender", "heldout_report",
]
