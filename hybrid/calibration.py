"""Stage 3 of the recipe: calibrating the blender's rules on the calibration patients.

Two rules, fitted in the order the blender applies them (:meth:`hybrid.blend.Blender.blend`):

1. **dictionary** over the CNN, from the dictionary's nearest-neighbour distance
   (:func:`calibration_samples`): each calibration case at its nominal and its other
   dose, plus sharp-kernel variants of the real smooth/standard ones.  Only with a
   dictionary: the product's default path has none (docs/dictionary.md).
2. **input** over the CNN's proposal (the default path; with an opt-in dictionary it is
   applied over the dictionary's blend, which moves the CNN's error by under 1 %), from
   the input's noise ratio
   (:func:`hybrid.cnn.noise.noise_ratio`; :func:`input_rule_samples`): each
   calibration case at the doses of ``input_rule["doses"]`` (0.5 % to 100 %, made by
   rescaling the case's stored noise as :mod:`hybrid.cnn.multidose` does, no new
   simulation), natively and, for a standard-kernel case, re-filtered to the smooth and
   the sharp kernel.  At 100 % the input *is*
   the normal-dose target, so the rule learns to give a normal-dose scan back as it
   came, and at the lowest doses to trust the restoration.  The CNN pair and the
   dictionary were trained for 1–10 % doses; this rule is what keeps the hybrid from
   making a cleaner scan worse (issue 16).

The CNN pair has seen the calibration patients (:mod:`hybrid.recipe`), so it is a
little better on them than on a new patient: the input rule fitted here leans towards
the restoration, not towards caution.  The held-out dose sweep
(``make dose-sweep``) is what checks it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["calibration_samples", "input_rule_samples", "noise_aware_rule", "calibrate_blender"]


def calibration_samples(cases: Iterable[Any], cnn: Any, dictionary: Any, *,
                        stride: int | tuple[int, int] = 2, include_aug: bool = True,
                        sharp_variants: bool = True) -> tuple[list[tuple], int]:
    """Blender calibration samples ``(cnn, dictionary, distance, nd, body)`` of paired cases.

    Each case at its nominal dose and (``include_aug``) its other dose (1–10 %), so
    that the weights hold across doses.  With ``sharp_variants`` each *real* case
    reconstructed with a smooth or standard kernel also contributes a sharp-kernel
    version of itself: its normal-dose image re-filtered to the sharp kernel
    (:func:`hybrid.physics.convert_kernel`) and that image's simulated 2 % and 5 %
    doses.  Why: the only other sharp calibration data are phantoms, on which the
    dictionary helps more than on real sharp-kernel scans (measured:
    ``experiments/results/hybrid_heldout.md``).  Returns the samples and the number of
    sharp variants made.
    """
    from hybrid.lung import segment
    from hybrid.physics import convert_kernel, simulate_low_dose
    from hybrid.volume import Volume

    samples = []
    query = dictionary.with_settings(stride=stride)

    def add(uld, nd, body, spacing):
        lung = segment(uld, spacing=spacing)
        c = cnn.propose(uld, lung_mask=lung)
        d = query.propose(uld, body_mask=body)
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


def _case_variants(case: Any, z: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """``(kernel, nd, noise, independent)`` of a case on the slices ``z``: its native
    kernel and, for a real standard case, the smooth and the sharp kernel (the only
    smooth calibration data: without them a smooth-kernel normal-dose scan, whose noise
    ratio reads higher, was smoothed by 0.56 x its own noise in the dose sweep)."""
    from hybrid.physics import convert_kernel

    nd = np.asarray(case.nd[z], np.float32)
    noise = np.asarray(case.uld.array[z], np.float32) - nd
    kernel = case.meta.get("kernel") or "standard"  # a class (hybrid.physics.kernel_for)
    out = [(kernel, nd, noise, case.kind == "phantom")]
    if case.kind == "real" and kernel == "standard":
        for other in ("smooth", "sharp"):
            out.append((other, convert_kernel(nd, kernel, other),
                        convert_kernel(noise, kernel, other), False))
    return out


def input_rule_samples(cases: Iterable[Any], cnn: Any, *, doses: Sequence[float],
                       slices_per_case: int, noise_aware: Any = None,
                       thickness_reference_mm: float | None = None) -> list[tuple]:
    """Samples ``(cnn, input, noise_ratio, nd, body)`` for the input rule.

    ``cnn`` is the CNN pair's proposal (the rule is fitted over it: the product's default
    path has no dictionary); ``input`` the case at dose ``f`` made from its stored noise
    realisation (``nd + a(f) * (uld - nd)``, :func:`hybrid.cnn.multidose.at_dose`);
    one sample per case, kernel variant and dose.  The noise ratio is read at
    ``thickness_reference_mm`` from the case's slice thickness, as ``hybrid.Enhancer`` reads a
    Volume's (None: the plain ratio).  With a ``noise_aware`` pair each sample has that
    pair's proposal as its sixth element (for :func:`noise_aware_rule`).
    """
    from hybrid.baselines import InputBaseline
    from hybrid.cnn.multidose import at_dose
    from hybrid.lung import segment

    samples = []
    for case in cases:
        f0 = float(case.meta["dose_fraction"])
        z = np.unique(np.linspace(0, len(case.nd) - 1, min(slices_per_case, len(case.nd)))
                      .round().astype(int))
        body = np.asarray(case.body_mask[z], bool)
        for kernel, nd, noise, independent in _case_variants(case, z):
            for f in doses:
                x = at_dose(nd, noise, f, f0, independent=independent)
                lung = segment(x, spacing=case.uld.spacing, body=body)
                base = cnn.propose(x, lung_mask=lung).image
                inp = InputBaseline(kernel=kernel, reference_mm=thickness_reference_mm,
                                    slice_mm=case.uld.slice_thickness_mm).propose(x, body_mask=body)
                sample = (base, inp.image, inp.uncertainty, nd, body)
                if noise_aware is not None:
                    sample += (noise_aware.propose(x, lung_mask=lung).image,)
                samples.append(sample)
            log.info("input rule: case %s (%s kernel), %d doses", case.case_id, kernel, len(doses))
    return samples


def noise_aware_rule(samples: Sequence[tuple]) -> tuple[Any, dict[str, Any], list[tuple]]:
    """Fit the ``"noise_aware"`` rule on :func:`input_rule_samples` with a noise-aware pair.

    The rule weighs the noise-aware pair's proposal against the base pair's by the input's
    noise ratio, non-increasing (the base pair, trained on ultra-low doses only, is trusted
    more the noisier the scan).  Returns the rule, its fit (RMSE of the base alone, the
    noise-aware pair alone and the blend, balanced as :func:`hybrid.blend.calibrate` does)
    and the input-rule samples with the blend as their base, so that the input rule is
    fitted over what the blender hands it.
    """
    from hybrid.blend import calibrate

    b = calibrate([(base, na, ratio, nd, body) for base, _, ratio, nd, body, na in samples],
                  candidate="noise_aware", monotone=True)
    mode = b.modes["noise_aware"]
    info = dict(b.calibration)
    info["rmse_base_hu"] = info.pop("rmse_cnn_hu")
    info["rmse_noise_aware_hu"] = info.pop("rmse_dictionary_hu")
    over = []
    for base, inp, ratio, nd, body, na in samples:
        w = mode.weight(ratio)
        over.append((w * na + (1.0 - w) * base, inp, ratio, nd, body))
    return mode, info, over


def calibrate_blender(cases: Sequence[Any], cnn: Any, dictionary: Any, *,
                      patients: Sequence[str], config: Any, noise_aware: Any = None,
                      input_cases: Sequence[Any] | None = None):
    """Calibrate the blender on ``cases`` (the calibration patients') with these models.

    ``config`` is the :class:`hybrid.recipe.RecipeConfig`.  ``calibration`` records the
    patients, stride, ``include_aug``, the number of sharp variants and (with an
    ``input_rule``) the input rule's doses and fit; ``calibrated_with`` the digests of
    the CNN pair and dictionary (those known: a model never saved nor loaded has none).
    ``dictionary`` None: no dictionary rule.  ``noise_aware``: a noise-aware CNN pair
    weighed against ``cnn`` by the noise ratio (:func:`noise_aware_rule`, at the input
    rule's doses; needs an ``input_rule``).  The input rule is fitted over the CNN's
    proposal (joined with the noise-aware pair's by its rule), the product's default path,
    on ``input_cases`` (default ``cases``; :func:`hybrid.recipe.input_rule_cases`), whose
    patients it records.
    """
    from hybrid.blend import Blender, calibrate

    stage = config.blender
    cases = list(cases)
    if not cases:
        raise ValueError(f"Expected cases of the calibration patients {list(patients)}; "
                         "received none. Check the split and the dataset.")
    if dictionary is None and not stage.input_rule:
        raise ValueError("Expected something to calibrate: a dictionary or the blender's "
                         "input_rule (recipe config blender.input_rule); received neither.")
    modes: dict[str, Any] = {}
    calibration: dict[str, Any] = {"patients": list(patients)}
    if dictionary is not None:
        samples, n_sharp = calibration_samples(cases, cnn, dictionary, stride=stage.stride,
                                               include_aug=stage.include_aug,
                                               sharp_variants=stage.sharp_variants)
        b = calibrate(samples)
        modes.update(b.modes)
        calibration.update(b.calibration, patients=list(patients), stride=stage.stride,
                           include_aug=stage.include_aug, sharp_variants=n_sharp)
    if noise_aware is not None and not stage.input_rule:
        raise ValueError("Expected the blender's input_rule (its doses) with a noise-aware "
                         "pair; received none. Add blender.input_rule to the recipe config.")
    if stage.input_rule:
        rule = stage.input_rule
        ref = rule.get("thickness_reference_mm")
        in_cases = cases if input_cases is None else list(input_cases)
        in_samples = input_rule_samples(in_cases, cnn, doses=rule["doses"],
                                        slices_per_case=int(rule["slices_per_case"]),
                                        noise_aware=noise_aware, thickness_reference_mm=ref)
        if noise_aware is not None:
            modes["noise_aware"], calibration["noise_aware"], in_samples = \
                noise_aware_rule(in_samples)
        b_in = calibrate(in_samples, candidate="input", monotone=True)
        modes.update(b_in.modes)
        info = dict(b_in.calibration)  # calibrate() names the base "cnn", the candidate "dictionary"
        info["rmse_without_input_hu"] = info.pop("rmse_cnn_hu")
        info["rmse_input_hu"] = info.pop("rmse_dictionary_hu")
        calibration["input"] = dict(info, patients=list(dict.fromkeys(
                                        getattr(c, "patient_id", None) for c in in_cases)),
                                    doses=list(rule["doses"]),
                                    slices_per_case=int(rule["slices_per_case"]),
                                    samples=len(in_samples))
        if ref is not None:  # the Enhancer reads the ratio as it was calibrated
            calibration["input"]["thickness_reference_mm"] = float(ref)
    digests = {"cnn": getattr(cnn, "digest", None), "dictionary": getattr(dictionary, "digest", None),
               "noise_aware": getattr(noise_aware, "digest", None)}
    return Blender(modes, calibration=calibration,
                   calibrated_with={k: v for k, v in digests.items() if v})
