"""The one training recipe of the CNN pair, the patch dictionary and the blender.

:func:`train` reads paired cases from a dataset folder, :func:`train_from_cases`
takes them in memory (a cross-validation fold); both run the stages asked for
(``"cnn"``, ``"dictionary"``, ``"blender"``) in that order and take the models of
the other stages from ``keep`` (default: the shipped models in ``hybrid/assets``,
loaded only when a later stage needs them).  What each stage sees is fixed by a
:class:`Split` (:func:`load_split`: ``experiments/splits.json`` for the shipped
models, one test and one calibration patient for a CV fold) and how long it
trains by a :class:`RecipeConfig` (:func:`load_config`:
``experiments/configs/shipped.json``, ``cv.json``, ``cv-fast.json``), both read by
:mod:`hybrid.recipe_config`.  The config files are the only source of the settings:
:class:`RecipeConfig` and its parts have no defaults.

Who sees which patient (so that every reported number is on unseen data):

===================  =================================================  ========================
artifact             trained on                                         never sees
===================  =================================================  ========================
CNN pair             every patient but the held-out ones, each case at  the held-out patients
                     its nominal and its other (aug) dose; monitored
                     (learning-rate schedule, best checkpoint) on the
                     calibration patients' nominal dose
dictionary           the same minus the calibration patients (nominal   the held-out and the
                     and aug dose)                                      calibration patients
blender calibration  the calibration patients: nominal and other dose,  the held-out patients
                     and sharp-kernel variants of real smooth/standard
                     cases (:func:`calibration_samples`); the input
                     rule also the training patients of
                     ``blender.input_rule.patients`` (:func:`input_rule_cases`)
===================  =================================================  ========================

The calibration patients are unseen by the dictionary, so its distances on
them are honest (a patient inside the dictionary matches itself at distance
≈ 0 and would teach the blender to trust it far too much).  They were seen by
the CNN, which can only bias the blender towards the CNN: conservative.  The input
rule's extra patients were seen by the CNN too (and by the dictionary, which that rule
does not use): it leans towards the restoration, and the dose-sweep gate checks that it
still never makes a scan worse.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybrid.calibration import calibrate_blender, calibration_samples
from hybrid.recipe_config import (
    REGIONS,
    STAGES,
    BlenderStage,
    CNNStage,
    DictionaryStage,
    RecipeConfig,
    Split,
    cnn_configs,
    config_sections,
    load_config,
    load_split,
)

log = logging.getLogger(__name__)

__all__ = [
    "STAGES", "REGIONS", "Split", "load_split", "CNNStage", "DictionaryStage", "BlenderStage",
    "RecipeConfig", "load_config", "config_sections", "Models", "train", "train_from_cases",
    "assign_cases", "input_rule_cases", "training_pairs", "dtype_policy", "train_cnn", "build_dictionary",
    "calibrate_blender", "calibration_samples",
]

# ---------------------------------------------------------------- the models
@dataclasses.dataclass
class Models:
    """The recipe's result: the CNN pair, the dictionary and the blender.

    ``training`` holds the CNN's :class:`hybrid.cnn.train.TrainResult` per region
    trained, ``seconds`` the time of each stage run.
    """

    cnn: Any = None
    dictionary: Any = None
    blender: Any = None
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def _out_paths(out: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Path]:
    """``out`` folder -> {cnn: out/cnn, dictionary: out/dictionary, blender: out/blend.json};
    a mapping gives the paths per stage (others are not saved)."""
    if out is None:
        return {}
    if isinstance(out, Mapping):
        bad = sorted(set(out) - set(STAGES))
        if bad:
            raise ValueError(f"Expected `out` keys among {STAGES}; received {bad}.")
        return {k: Path(v) for k, v in out.items() if v is not None}
    from hybrid.artifacts import default_asset_paths

    names = {k: p.name for k, p in default_asset_paths().items()}
    return {"cnn": Path(out) / names["cnn"], "dictionary": Path(out) / names["dictionary"],
            "blender": Path(out) / names["blender"]}


def _check_stages(stages: Iterable[str], regions: Iterable[str]) -> tuple[tuple, tuple]:
    stages, regions = tuple(stages), tuple(regions)
    if not stages or set(stages) - set(STAGES):
        raise ValueError(f"Expected stages among {STAGES}; received {stages}.")
    if not regions or set(regions) - set(REGIONS):
        raise ValueError(f"Expected regions among {REGIONS}; received {regions}.")
    return tuple(s for s in STAGES if s in stages), tuple(r for r in REGIONS if r in regions)


def _kept(keep: Models | None, name: str) -> Any:
    """The model of a stage not run: from ``keep``, else the shipped one."""
    model = getattr(keep, name, None) if keep is not None else None
    if model is not None:
        return model
    from hybrid.artifacts import default_asset_paths

    path = default_asset_paths()[name]
    log.info("%s: the shipped one (%s)", name, path)
    if name == "cnn":
        from hybrid.cnn.infer import CNNPair

        return CNNPair.load(path)
    if name == "dictionary":
        from hybrid.dictionary import PatchDictionary

        return PatchDictionary.load(path)
    from hybrid.blend import Blender

    return Blender.load(path)


def _noise_aware_pair(stage: BlenderStage) -> Any:
    """The noise-aware pair of ``blender.noise_aware`` (None without one)."""
    if stage.noise_aware is None:
        return None
    from hybrid.artifacts import default_asset_paths
    from hybrid.cnn.infer import CNNPair

    path = (default_asset_paths()["noise_aware"] if stage.noise_aware == "shipped"
            else Path(stage.noise_aware))
    if not path.is_dir():
        raise FileNotFoundError(f"Expected the noise-aware CNN pair of `blender.noise_aware` "
                                f"({stage.noise_aware!r}) at {path}; it does not exist.")
    return CNNPair.load(path)


# ---------------------------------------------------------------- the recipe
def train(
    cases_root: str | os.PathLike,
    *,
    split: Split | None = None,
    config: RecipeConfig | None = None,
    stages: Sequence[str] = STAGES,
    out: str | os.PathLike | Mapping[str, Any] | None = None,
    keep: Models | None = None,
    regions: Sequence[str] = REGIONS,
    work: str | os.PathLike | None = None,
    threads: int | None = None,
    dictionary_name: str | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Models:
    """Run the recipe's ``stages`` on the paired dataset at ``cases_root``.

    Only the cases a stage needs are read (see :func:`assign_cases`).

    Parameters
    ----------
    cases_root : path
        A paired dataset (``data/manifest.json``, ``make data``).
    split : Split, optional
        Default :func:`load_split` (the shipped models' split).
    config : RecipeConfig, optional
        Default ``load_config("shipped")``.
    stages, out, keep, regions, work, threads, dictionary_name, verbose, resume
        See :func:`train_from_cases`.

    Returns
    -------
    Models
    """
    from hybrid.data import iter_cases, load_case

    split, config = split or load_split(), config or load_config("shipped")
    stages, _ = _check_stages(stages, regions)
    held = set(split.held_out_patients)
    need_all = "cnn" in stages or "dictionary" in stages
    blender = _listed_input_patients(split, config) | set(split.calibration)
    cases = [load_case(path) for entry, path in iter_cases(cases_root)
             if entry["patient_id"] not in held and (need_all or entry["patient_id"] in blender)]
    if not cases:
        raise ValueError(f"Expected training cases in {cases_root}; all were held out "
                         f"({list(split.held_out_patients)}) or none exist. Run `make data` first.")
    return train_from_cases(cases, split=split, config=config, stages=stages, out=out, keep=keep,
                            regions=regions, work=work, threads=threads,
                            dictionary_name=dictionary_name, verbose=verbose, resume=resume)


def train_from_cases(
    cases: Sequence[Any],
    *,
    split: Split | None = None,
    config: RecipeConfig | None = None,
    stages: Sequence[str] = STAGES,
    out: str | os.PathLike | Mapping[str, Any] | None = None,
    keep: Models | None = None,
    regions: Sequence[str] = REGIONS,
    work: str | os.PathLike | None = None,
    threads: int | None = None,
    dictionary_name: str | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Models:
    """Run the recipe's ``stages`` on paired cases in memory (e.g. one CV fold).

    Parameters
    ----------
    cases : sequence of hybrid.data.PairedCase
        In the order their patches are used; cases of held-out patients are ignored.
    split : Split, optional
        Default :func:`load_split`.
    config : RecipeConfig, optional
        Default ``load_config("shipped")``.
    stages : sequence of {"cnn", "dictionary", "blender"}
        Run in that order; the other stages' models come from ``keep``.
    out : path or mapping, optional
        Save what is built: a folder (``cnn/``, ``dictionary/``, ``blend.json`` in it, the
        layout of ``hybrid/assets``) or ``{stage: path}``; None saves nothing.  The blender
        records the digests of the CNN pair and dictionary it was calibrated with
        (``calibrated_with``), known once they are saved or loaded.
    keep : Models, optional
        Models of the stages not run (and the CNN region not in ``regions``); missing ones
        are the shipped models, loaded only when needed.
    regions : sequence of {"lung", "body"}
        CNN regions to train; the other one is kept.
    work : path, optional
        CNN training folders (``<region>/``: log, checkpoint, progress figure); default a
        temporary folder, removed at the end.
    threads : int, optional
        TensorFlow CPU threads.
    dictionary_name : str, optional
        Name stored in the dictionary; default its ``out`` folder's name, else "dictionary".
    verbose : bool
        Progress of the dictionary build.
    resume : bool
        Noise-aware CNN stage (``cnn.noise``): continue from the checkpoints in ``work``.

    Returns
    -------
    Models
    """
    split = split or load_split()
    config = config or load_config("shipped")
    stages, regions = _check_stages(stages, regions)
    paths = _out_paths(out)
    models = Models(**{s: getattr(keep, s, None) for s in STAGES} if keep is not None else {})
    groups = assign_cases(cases, split)
    tmp = tempfile.TemporaryDirectory(prefix="hybrid-recipe-") if work is None else None
    try:
        if "cnn" in stages:
            t = time.perf_counter()
            kept = _kept(keep, "cnn") if len(regions) < len(REGIONS) else None
            models.cnn, models.training = train_cnn(
                groups, split=split, config=config, regions=regions, kept=kept,
                work=Path(work if work is not None else tmp.name), threads=threads, resume=resume)
            if "cnn" in paths:
                models.cnn.save(paths["cnn"], overwrite=True)
            models.seconds["cnn"] = time.perf_counter() - t
    finally:
        if tmp is not None:
            tmp.cleanup()
    if "dictionary" in stages:
        t = time.perf_counter()
        name = dictionary_name or (paths["dictionary"].name if "dictionary" in paths else "dictionary")
        models.dictionary = build_dictionary(groups["dictionary"], config=config, name=name,
                                             verbose=verbose)
        if "dictionary" in paths:
            models.dictionary.save(paths["dictionary"], overwrite=True)
        models.seconds["dictionary"] = time.perf_counter() - t
    if "blender" in stages:
        t = time.perf_counter()
        models.cnn = models.cnn if models.cnn is not None else _kept(keep, "cnn")
        if models.dictionary is None:
            models.dictionary = _kept(keep, "dictionary")
        models.blender = calibrate_blender(groups["calibration"], models.cnn, models.dictionary,
                                           patients=split.calibration, config=config,
                                           noise_aware=_noise_aware_pair(config.blender),
                                           input_cases=input_rule_cases(groups, split, config))
        if "blender" in paths:
            models.blender.save(paths["blender"])
        models.seconds["blender"] = time.perf_counter() - t
    return models


def assign_cases(cases: Iterable[Any], split: Split) -> dict[str, list]:
    """The module docstring's table: the cases of each stage, in the given order.

    Returns ``{"cnn": [...], "monitor": [...], "dictionary": [...], "calibration": [...]}``
    (``monitor`` and ``calibration`` are the same cases: the calibration patients').
    """
    held, cal = set(split.held_out_patients), set(split.calibration)
    out: dict[str, list] = {"cnn": [], "monitor": [], "dictionary": [], "calibration": []}
    for case in cases:
        if case.patient_id in held:
            continue
        out["cnn"].append(case)
        if case.patient_id in cal:
            out["monitor"].append(case)
            out["calibration"].append(case)
        else:
            out["dictionary"].append(case)
    return out


def _listed_input_patients(split: Split, config: RecipeConfig) -> set[str]:
    """``blender.input_rule.patients`` without the held-out ones."""
    listed = (config.blender.input_rule or {}).get("patients", ())
    return set(listed) - set(split.held_out_patients)


def input_rule_cases(groups: Mapping[str, list], split: Split, config: RecipeConfig) -> list:
    """The cases the blender's input rule is fitted on: the calibration patients' and those
    of ``blender.input_rule.patients`` (training patients; a held-out one is left out), in
    the given order.

    Raises
    ------
    ValueError
        Where a listed patient is neither held out nor among the cases (the dataset lacks
        it: ``make data``).
    """
    listed = _listed_input_patients(split, config)
    absent = sorted(listed - {c.patient_id for c in groups["cnn"]})
    if absent:
        raise ValueError(f"Expected cases of the input rule's patients (recipe config "
                         f"blender.input_rule.patients); received none of {absent}. Build the "
                         "dataset with them (make data) or remove them from the config.")
    wanted = listed | set(split.calibration)
    return [c for c in groups["cnn"] if c.patient_id in wanted]


# ---------------------------------------------------------------- stage 1: the CNN pair
def dtype_policy(precision: str) -> str | None:
    """The Keras dtype policy of a CNN stage's ``precision`` ("auto", "bfloat16" or
    "float32"): ``"mixed_bfloat16"`` for "bfloat16", and for "auto" where the CPU or GPU
    has native bfloat16; otherwise None (float32)."""
    from hybrid.cnn.infer import native_bfloat16

    if precision == "bfloat16" or (precision == "auto" and native_bfloat16()):
        return "mixed_bfloat16"
    return None


def training_pairs(groups: Mapping[str, list]) -> tuple[list, list]:
    """The CNN stage's data from :func:`assign_cases` groups: every ``"cnn"`` case at its
    nominal dose and at its aug dose (two :class:`~hybrid.cnn.sampler.TrainingPair` each, the
    second's id ending in ``~aug``), and the ``"monitor"`` cases at their nominal dose."""
    from hybrid.cnn.sampler import TrainingPair

    train, monitor = [], []
    for case in groups["cnn"]:
        for tag, uld in (("", case.uld.array), ("~aug", case.uld_aug)):
            train.append(TrainingPair(uld, case.nd, case.lung_mask, case.body_mask,
                                      case.case_id + tag))
    for case in groups["monitor"]:
        monitor.append(TrainingPair(case.uld.array, case.nd, case.lung_mask, case.body_mask,
                                    case.case_id))
    return train, monitor


def train_cnn(groups: Mapping[str, list], *, split: Split, config: RecipeConfig,
              regions: Sequence[str] = REGIONS, kept: Any = None, work: Path,
              threads: int | None = None, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train the CNN pair's ``regions`` on ``groups["cnn"]`` (nominal and aug dose), monitored on
    ``groups["monitor"]``; the other region is ``kept``'s.  Returns the pair and the
    :class:`~hybrid.cnn.train.TrainResult` per region trained."""
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.models import clear_session
    from hybrid.cnn.train import train_model

    stage = config.cnn
    pairs, monitor = training_pairs(groups)
    if not pairs or not monitor:
        raise ValueError(f"Expected training and monitor (calibration patients "
                         f"{list(split.calibration)}) cases for the CNN; received {len(pairs)} "
                         f"training pairs and {len(monitor)} monitor pairs.")
    configs = cnn_configs(stage)
    dtype = dtype_policy(stage.precision)
    log.info("training %s with dtype policy %s", ", ".join(regions), dtype or "float32")
    results = {}
    if stage.noise is not None:
        from hybrid.cnn.resumable import train_noise_aware_regions

        results = train_noise_aware_regions(
            configs, groups["cnn"], groups["monitor"], regions=regions, budget=stage.budget,
            noise=stage.noise, work=Path(work), seed=config.seed, resume=resume, dtype=dtype,
            threads=threads, metadata={"recipe": config.to_dict()}, log=log.info)
    if (warm := stage.lung_warm_start) is not None:  # the body first: the lung starts from it
        regions = sorted(regions, key=lambda r: r != "body")
    for region in regions if stage.noise is None else ():
        b = stage.budget[region]
        start = {}
        if warm is not None and region == "lung":
            start = {"init_model": results["body"].model if "body" in results else kept.body_model,
                     "seed": warm["seed"],
                     "sampler_options": {"min_lung_fraction": warm["min_lung_fraction"]}}
        clear_session()
        results[region] = train_model(
            configs[region], pairs, val_pairs=monitor, out_dir=Path(work) / region,
            epochs=b["epochs"], steps_per_epoch=b["steps_per_epoch"], batch_size=b["batch_size"],
            val_slices=stage.val_slices, val_patches=min(512, 64 * b["batch_size"]),
            patience=stage.patience if stage.patience is not None else max(3, b["epochs"]),
            reduce_lr_patience=stage.reduce_lr_patience, threads=threads,
            tensorboard=False, verbose=0, dtype=dtype, **{"seed": config.seed, **start})
        r = results[region]
        log.info("%s: monitor slice RMSE %.1f HU, best epoch %d/%d, %.0f s", region,
                 r.val_slice_rmse_hu, r.best_epoch, r.epochs_run, r.seconds)
    models = {k: r.model for k, r in results.items()}
    for k in set(REGIONS) - set(results):
        models[k], configs[k] = getattr(kept, f"{k}_model"), getattr(kept, f"{k}_config")
    metadata = _cnn_metadata(results, kept, split=split, config=config, dtype=dtype,
                             case_ids=[c.case_id for c in groups["cnn"]])
    pair = CNNPair(models["lung"], models["body"], lung_config=configs["lung"],
                   body_config=configs["body"], metadata=metadata)
    return pair, results


def _cnn_metadata(results: Mapping[str, Any], kept: Any, *, split: Split, config: RecipeConfig,
                  dtype: str | None, case_ids: list[str]) -> dict[str, Any]:
    """What the pair records about its training (regions kept keep their old records)."""
    old = kept.metadata if kept is not None else {}
    stage = config.cnn
    monitor = {k: {"cases": list(split.calibration),
                   "note": "monitor patients are also in training (not a held-out score)",
                   "val_rmse_hu": r.val_rmse_hu, "val_slice_rmse_hu": r.val_slice_rmse_hu,
                   "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                   "train_seconds": r.seconds} for k, r in results.items()}
    metadata = {
        "data_manifest": next(iter(results.values())).manifest,
        "trained_by": "hybrid.recipe",
        "held_out_patients": {k: list(v) for k, v in split.held_out.items()},
        "training_cases": case_ids,
        "training_inputs": "nominal ULD (2 %) and ULD-aug (1-10 % dose) per case" if
        stage.noise is None else f"multi-dose, multi-kernel patches ({stage.noise})",
        "budget": {k: (dict(stage.budget[k], reduce_lr_patience=stage.reduce_lr_patience)
                       if k in results else old.get("budget", {}).get(k)) for k in REGIONS},
        "dtype_policy": {k: (dtype or "float32") if k in results
                         else old.get("dtype_policy", {}).get(k, "float32") for k in REGIONS},
        "monitor": {**{k: v for k, v in old.get("monitor", {}).items() if k not in results},
                    **monitor},
    }
    if stage.lung_warm_start is not None and "lung" in results:  # started from the body model
        metadata["lung_warm_start"] = dict(stage.lung_warm_start)
    if kept is not None:
        # the data manifest covers the same cases for both regions (same training cases)
        metadata["kept_from_previous_pair"] = sorted(set(REGIONS) - set(results))
    return metadata


# ---------------------------------------------------------------- stage 2: the dictionary
def build_dictionary(cases: Sequence[Any], *, config: RecipeConfig, name: str = "dictionary",
                     verbose: bool = False):
    """Build the dictionary from ``cases`` (``assign_cases(...)["dictionary"]``): each case's
    ``(uld, nd, body_mask)``, and with ``include_aug`` its other dose as its own pair."""
    from hybrid.dictionary import DictionaryConfig, PatchDictionary

    stage = config.dictionary
    pairs = []
    for case in cases:
        pairs.append((case.uld.array, case.nd, case.body_mask))
        if stage.include_aug:
            pairs.append((case.uld_aug, case.nd, case.body_mask))
    if not pairs:
        raise ValueError("Expected training cases for the dictionary (neither held out nor "
                         "calibration patients); received none. Check the split.")
    cfg = DictionaryConfig(**{**stage.config, "seed": config.seed})
    return PatchDictionary.build(pairs, config=cfg, name=name, verbose=verbose)


# stage 3, the blender: hybrid.calibration (calibrate_blender, calibration_samples)
