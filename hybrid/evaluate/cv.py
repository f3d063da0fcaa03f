"""Leave-one-patient-out cross-validation of the hybrid and the tuned baselines.

Per fold of ``data/folds.json`` (phantom and real sets separately):
:func:`train_fold_models` runs the one training recipe
(:func:`hybrid.recipe.train_from_cases`) on the training patients: a CNN pair,
a dictionary without the test patient and one calibration patient, the blender
calibrated on the calibration patient.  Its settings come from a CV config file
(``experiments/configs/cv.json``, ``cv-fast.json``): the ``recipe`` section
(short budgets), and the ``cv`` section (tuning and scoring,
:func:`load_cv_settings`).  The baselines are tuned on training slices
(:mod:`hybrid.evaluate.tuning`) and every method is scored on the test patient
(:mod:`hybrid.evaluate.scoring`).  Each fold runs in a fresh process; results
are written after every fold (:mod:`hybrid.evaluate.report`), figures at the end
(:mod:`hybrid.evaluate.figures`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.evaluate.cases import case_entries, case_file, central_slices
from hybrid.evaluate.figures import _boxplots, _example_figure
from hybrid.evaluate.report import (
    _git_revision,
    _json_default,
    _read_csv,
    _write_csv,
    _write_info,
    _write_summary,
)
from hybrid.evaluate.scoring import CLASSICAL, _baseline_images, score_methods
from hybrid.evaluate.tuning import (
    CV_GRIDS,
    FAST_GRIDS,
    HELDOUT_GRIDS,
    _tune_pairs,
    default_tune_cases,
    tune_baselines,
)
from hybrid.recipe import RecipeConfig, load_config

log = logging.getLogger(__name__)

__all__ = ["cross_validate", "train_fold_models", "load_cv_settings"]

#: The keys of a CV config file's ``cv`` section (``experiments/configs/cv.json``).
_CV_KEYS = ("tune_slices", "eval_slices", "grids", "other_set", "note")
#: The search grids a ``cv`` section may name.
_GRIDS = {"CV_GRIDS": CV_GRIDS, "FAST_GRIDS": FAST_GRIDS, "HELDOUT_GRIDS": HELDOUT_GRIDS}


def load_cv_settings(settings: str | os.PathLike = "cv",
                     overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``cv`` section of a CV config file, with ``overrides`` and its grids resolved.

    Parameters
    ----------
    settings : str or path
        A file of ``experiments/configs`` by name (``"cv"``, ``"cv-fast"``) or a path
        (:func:`hybrid.recipe.config_sections`).
    overrides : mapping, optional
        Replace some of its keys (e.g. ``{"eval_slices": 8}``).

    Returns
    -------
    dict
        ``tune_slices``, ``eval_slices`` (None: every slice), ``grids`` (the search grids;
        the file names ``CV_GRIDS``, ``FAST_GRIDS`` or ``HELDOUT_GRIDS`` of
        :mod:`hybrid.evaluate.tuning`, or gives them), ``other_set`` (also train on the
        other set's patients) and ``note`` (shown at the top of the summary).

    Raises
    ------
    ValueError
        Where the file has no ``cv`` section, or it (with ``overrides``) has other keys.
    """
    from hybrid.recipe import config_sections

    sections = config_sections(settings)
    if "cv" not in sections:
        raise ValueError(f"Expected a 'cv' section (keys {list(_CV_KEYS)}) in the config "
                         f"{settings!r}; it has only {sorted(sections)}. Use a CV config such "
                         "as 'cv' or 'cv-fast'.")
    cv = {**sections["cv"], **(overrides or {})}
    if set(cv) != set(_CV_KEYS):
        raise ValueError(f"Expected the keys {list(_CV_KEYS)} in the 'cv' section of {settings!r} "
                         f"(and its overrides); received unknown keys "
                         f"{sorted(set(cv) - set(_CV_KEYS))} and missing keys "
                         f"{sorted(set(_CV_KEYS) - set(cv))}.")
    grids = cv["grids"]
    if isinstance(grids, str):
        if grids not in _GRIDS:
            raise ValueError(f"Expected `cv.grids` of {settings!r} to be one of {sorted(_GRIDS)} "
                             f"or a mapping of baseline -> grid; received {grids!r}.")
        cv["grids"] = _GRIDS[grids]
    return cv


def _pick_calibration(train_patients: Sequence[str], kind: str, root: Path | None = None,
                      entries: Sequence[Mapping[str, Any]] = ()) -> str:
    """Calibration patient of a fold: a calibration patient of the shipped split
    (``experiments/splits.json``) if it is training, else the training patient of this set
    with the most lung voxels (the CNN's monitor needs lung patches: an abdomen-only series
    has none), else the last."""
    from hybrid.recipe import load_split

    for p in load_split().calibration:
        if p in train_patients:
            return p
    if root is not None and entries:
        from hybrid.io.hdf5 import read_arrays

        lung: dict[str, int] = {}
        for e in entries:
            if e["patient_id"] in train_patients and e["kind"] == kind:
                arrays, _ = read_arrays(case_file(root, e), ["lung_mask"], require=("lung_mask",))
                lung[e["patient_id"]] = lung.get(e["patient_id"], 0) + int(arrays["lung_mask"].sum())
        if lung:
            return max(sorted(lung), key=lambda p: lung[p])
    return sorted(train_patients)[-1]


def train_fold_models(
    root: Path,
    kind: str,
    fold: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    *,
    config: RecipeConfig,
    other_set: bool,
    threads: int | None,
    work: Path,
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Train the models of one leave-one-patient-out fold, without its test patient.

    The one training recipe (:func:`hybrid.recipe.train_from_cases`) on the fold's
    training cases, with the test patient held out and one calibration patient
    (:func:`_pick_calibration`): the CNN pair (trained on every training case, monitored
    on the calibration patient), a dictionary without the calibration patient, and the
    blender calibrated on it.

    Parameters
    ----------
    root : Path
        The paired dataset.
    kind : {"phantom", "real"}
        The fold's set.
    fold : mapping
        One fold of ``folds.json``: ``test_patient``, ``train`` and ``test`` case ids.
    entries : sequence of mapping
        The dataset's manifest entries.
    config : hybrid.recipe.RecipeConfig
        The recipe's settings (``load_config("cv")``: short budgets).
    other_set : bool
        Also train on the other set's cases (every patient but the test one).
    threads : int or None
        TensorFlow CPU threads.
    work : Path
        Folder for the CNN training's logs and checkpoints (``work/cnn/<region>``).

    Returns
    -------
    cnn : hybrid.cnn.CNNPair
    dictionary : hybrid.dictionary.PatchDictionary
    blender : hybrid.blend.Blender
    info : dict
        Set, test and calibration patient, training cases, timings, CNN
        validation RMSE, dictionary size and the blender's calibration.
    """
    from hybrid.data import load_case
    from hybrid.recipe import Split, train_from_cases

    test_patient = fold["test_patient"][0]
    by_id = {e["case_id"]: e for e in entries}
    train_ids = [c for c in fold["train"]]
    if other_set:
        train_ids += [e["case_id"] for e in entries if e["kind"] != kind and e["patient_id"] != test_patient]
    train_patients = sorted({by_id[c]["patient_id"] for c in fold["train"]})
    calib = _pick_calibration(train_patients, kind, root, entries)
    if all(by_id[c]["patient_id"] == calib for c in train_ids):
        raise ValueError(f"Fold {test_patient}: expected a training case for the dictionary "
                         f"besides the calibration patient {calib}; received only {calib}'s "
                         f"cases {train_ids}. A fold needs at least two training patients.")
    info: dict[str, Any] = {"set": kind, "test_patient": test_patient, "calibration_patient": calib,
                            "train_cases": train_ids}
    models = train_from_cases(
        [load_case(case_file(root, by_id[c])) for c in train_ids],
        split=Split(held_out=(test_patient,), calibration=(calib,)), config=config,
        work=work / "cnn", threads=threads, dictionary_name=f"cv-{test_patient}")
    info["cnn_seconds"] = models.seconds["cnn"]
    info["cnn_val_rmse_hu"] = {k: r.val_rmse_hu for k, r in models.training.items()}
    info["dictionary_seconds"] = models.seconds["dictionary"]
    info["dictionary_entries"] = len(models.dictionary)
    info["blender"] = {"modes": models.blender.info(), "calibration": models.blender.calibration}
    info["blender_seconds"] = models.seconds["blender"]
    return models.cnn, models.dictionary, models.blender, info


def _run_fold(root: Path, kind: str, fold: Mapping[str, Any], entries: list[dict[str, Any]], *,
              config: RecipeConfig, cv: Mapping[str, Any], baselines: Sequence[str], work: Path,
              tune_cache: dict, threads: int | None,
              keep_example: bool) -> tuple[list[dict], dict, Any]:
    """Train the fold's models (:func:`train_fold_models`), tune the baselines, score every method."""
    from hybrid.data import load_case
    from hybrid.pipeline import Enhancer

    t0 = time.perf_counter()
    cnn, dictionary, blender, info = train_fold_models(
        root, kind, fold, entries, config=config, other_set=cv["other_set"], threads=threads,
        work=work)
    test_patient = info["test_patient"]
    by_id = {e["case_id"]: e for e in entries}
    enhancer = Enhancer(cnn=cnn, dictionary=dictionary, blender=blender, stride=config.blender.stride)
    # 4. score every method on the test patient
    rows, example = [], None
    for cid in fold["test"]:
        e = by_id[cid]
        tune_ids = tuple(default_tune_cases(root, cid, exclude_patients=[test_patient], strict=False))
        key = ("+".join(tune_ids), cv["tune_slices"])
        if key not in tune_cache:
            pairs, picked = _tune_pairs(root, tune_ids, cv["tune_slices"])
            tune_cache[key] = {"slices": picked,
                               "baselines": tune_baselines(pairs, list(baselines), grids=cv["grids"])}
        tuned = tune_cache[key]["baselines"]
        case = load_case(case_file(root, e))
        idx = central_slices(len(case.uld), cv["eval_slices"])
        enh, maps = enhancer.enhance(case.uld, return_maps=True, progress=False)
        uld = case.uld.array[idx]
        nd, lung, body = case.nd[idx], case.lung_mask[idx], case.body_mask[idx]
        imgs = {"input": uld}
        imgs.update(_baseline_images(uld, body, {k: v for k, v in tuned.items() if k != "input"}, {}))
        imgs.update({"cnn": maps.cnn[idx], "hybrid": enh.array[idx]})
        if maps.dictionary is not None:  # an Enhancer with a dictionary
            imgs["dictionary"] = maps.dictionary[idx]
        rows += _long_rows(score_methods(imgs, nd, lung, body), kind=kind, patient=test_patient,
                           case=cid, kernel=case.meta.get("kernel"))
        info.setdefault("tuning", {})[cid] = {"cases": list(tune_ids), "slices": tune_cache[key]["slices"],
                                              "params": {k: v["params"] for k, v in tuned.items()}}
        info.setdefault("eval_slices", {})[cid] = idx
        if keep_example and example is None:
            z = len(idx) // 2
            example = {"case": cid, "slice": idx[z], "nd": nd[z], "lung": lung[z],
                       **{m: np.asarray(im[z]) for m, im in imgs.items()}}
    info["seconds"] = time.perf_counter() - t0
    info["revision"], info["date"] = _git_revision(), time.strftime("%Y-%m-%d", time.gmtime())
    return rows, info, example


def _long_rows(scored: Mapping[str, Any], *, kind: str, patient: str, case: str,
               kernel: str | None) -> list[dict[str, Any]]:
    """CSV rows (one per method x region x metric) of one test case's scores."""
    rows = []
    for m, s in scored.items():
        for region, d in s["metrics"].items():
            for metric, v in d.items():
                rows.append({"set": kind, "fold": patient, "patient": patient, "case": case,
                             "kernel": kernel, "method": m, "region": region,
                             "metric": metric, "value": float(v)})
    return rows


def cross_validate(
    data_root: str | os.PathLike = "data",
    out: str | os.PathLike = "experiments/results/cv",
    *,
    sets: Sequence[str] = ("phantom", "real"),
    max_folds: int | Mapping[str, int] | None = None,
    test_patients: Sequence[str] | None = None,
    baselines: Sequence[str] = CLASSICAL,
    settings: str | os.PathLike = "cv",
    config: RecipeConfig | None = None,
    cv: Mapping[str, Any] | None = None,
    seed: int | None = None,
    threads: int | None = None,
    resume: bool = True,
    figures: bool = True,
    work: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Leave-one-patient-out cross-validation of the hybrid and the baselines.

    For each fold of ``data_root/folds.json`` (per set): run the one training
    recipe (:func:`hybrid.recipe.train_from_cases`, settings ``config``) on the
    fold's training patients: a CNN pair, a dictionary without the test patient
    and one calibration patient (a calibration patient of the shipped split
    when it is training, else the training patient of the set with the most
    lung voxels), the blender calibrated on that patient
    (:func:`train_fold_models`); tune the baselines on training slices of the
    test case's kernel class (tunings are shared between folds whose tuning
    cases coincide), and score every method on the central ``eval_slices``
    slices (``cv`` settings) of the test patient's cases.

    Parameters
    ----------
    data_root : path
        Paired dataset with ``folds.json``.
    out : path
        Output folder: ``cv_results.csv`` (one row per set x patient x case x
        method x region x metric), ``cv_summary.md`` (mean ± sd over patients),
        ``cv_folds.json`` (per fold: patients, timings, tuned parameters,
        blender), ``cv_boxplots.png`` and ``cv_example.png``.
    sets : sequence of {"phantom", "real"}
    max_folds : int or mapping, optional
        At most this many folds per set (in folds.json order); ``{set: n}`` per set.
    test_patients : sequence of str, optional
        Only the folds of these test patients.
    baselines : sequence of str
    settings : str or path
        A CV config file (``experiments/configs/<name>.json`` by name, or a path): its
        ``recipe`` section trains the models, its ``cv`` section sets the tuning and
        scoring (:func:`load_cv_settings`).  ``"cv"``: the full run (``make cv``);
        ``"cv-fast"``: a smoke run (tiny budgets, numbers meaningless).
    config : hybrid.recipe.RecipeConfig, optional
        Replaces the file's ``recipe`` section, e.g.
        ``load_config("cv-fast").with_cnn(patch_sizes=(16, 32))``.
    cv : mapping, optional
        Replaces keys of the file's ``cv`` section, e.g. ``{"eval_slices": 8}``.
    seed : int, optional
        Replaces the recipe's seed.
    threads : int, optional
        TensorFlow CPU threads.
    resume : bool
        Skip folds whose rows are already in ``out/cv_results.csv`` (an
        interrupted run goes on where it stopped); results are written after
        every fold.
    figures : bool
        Write the PNGs.
    work : path, optional
        Keep each fold's CNN training folders (logs, checkpoints, progress
        figures) under ``work/<set>-<patient>``; default: a temporary folder,
        removed at the end.

    Returns
    -------
    list of dict
        The CSV rows (all folds in ``out``, old and new).
    """
    config = config if config is not None else load_config(settings)
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    cv = load_cv_settings(settings, cv)
    root, out = Path(data_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds_path = root / "folds.json"
    if not folds_path.exists():
        raise FileNotFoundError(f"Expected {folds_path} (leave-one-patient-out folds); run `make data` first.")
    all_folds = json.loads(folds_path.read_text())
    entries = case_entries(root)
    csv_path, info_path = out / "cv_results.csv", out / "cv_folds.json"
    rows = _read_csv(csv_path) if resume else []
    infos = json.loads(info_path.read_text()).get("folds", []) if resume and info_path.exists() else []
    if rows:
        _check_resumable(info_path, _record(config, cv))
    import tempfile

    tmp_work = None
    if work is None:
        tmp_work = tempfile.TemporaryDirectory(prefix="hybrid-cv-")
        work = tmp_work.name
    try:
        rows, infos, example = _cv_loop(
            root, out, all_folds, entries, rows, infos, sets=sets, max_folds=max_folds,
            test_patients=test_patients, baselines=baselines, config=config, cv=cv,
            threads=threads, work=Path(work), csv_path=csv_path, info_path=info_path)
    finally:
        if tmp_work is not None:
            tmp_work.cleanup()
    if figures and rows:
        _boxplots(rows, out / "cv_boxplots.png")
        if example is not None:
            _example_figure(example, out / "cv_example.png")
    if rows:
        _write_summary(out / "cv_summary.md", rows, infos, _record(config, cv))
    return rows


def _fold_worker(args: tuple, kwargs: dict) -> tuple:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows, info, example = _run_fold(*args, **kwargs)
    return rows, info, example, kwargs["tune_cache"]


def _run_fold_isolated(args: tuple, kwargs: dict) -> tuple:
    """:func:`_run_fold` in a child process (spawned); returns its results and the tuning cache."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_fold_worker, args, kwargs).result()


def _record(config: RecipeConfig, cv: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run as its fold log and summary record them, with the CNN
    configurations the folds train (the shipped pair's where the recipe names none)."""
    from hybrid.recipe_config import cnn_configs

    cnn = {region: c.to_dict() for region, c in cnn_configs(config.cnn).items()}
    return json.loads(json.dumps({"recipe": config.to_dict(), "cv": dict(cv), "cnn_configs": cnn},
                                 default=_json_default))


def _check_resumable(info_path: Path, settings: Mapping[str, Any]) -> None:
    """Refuse to resume into ``info_path``'s run when it was made with other settings: its
    folds would be mixed with this run's in one table."""
    stored = json.loads(info_path.read_text()).get("budget") if info_path.exists() else None
    if stored == settings:
        return
    changed = sorted(k for k in settings if not isinstance(stored, Mapping) or stored.get(k) != settings[k])
    raise ValueError(
        f"{info_path.parent} holds folds of a cross-validation run with other settings "
        f"(differing: {', '.join(changed) or 'the whole record'}); resuming would mix the two runs "
        "in one table. Start afresh with `make cv FRESH=1` (`python -m hybrid.evaluate cv --no-resume`, "
        "`cross_validate(..., resume=False)`), or write to another --out.")


def _cv_loop(root, out, all_folds, entries, rows, infos, *, sets, max_folds, test_patients, baselines,
             config, cv, threads, work, csv_path, info_path):
    done = {(r["set"], r["patient"]) for r in rows}
    tune_cache: dict = {}
    example = None
    for kind in sets:
        folds = all_folds.get(kind, [])
        if test_patients is not None:
            folds = [f for f in folds if f["test_patient"][0] in set(test_patients)]
        n_max = max_folds.get(kind) if isinstance(max_folds, Mapping) else max_folds
        if n_max is not None:
            folds = folds[:n_max]
        for fold in folds:
            p = fold["test_patient"][0]
            if (kind, p) in done:
                log.info("fold %s/%s already in %s: skipped", kind, p, csv_path)
                continue
            log.info("fold %s/%s: start", kind, p)
            # each fold in a fresh process: TensorFlow and FAISS keep memory across folds (a
            # 21-fold run in one process grew to 24 GB and was killed at fold 18)
            new, info, ex, tune_cache = _run_fold_isolated(
                (root, kind, fold, entries),
                dict(config=config, cv=cv, baselines=baselines, work=work / f"{kind}-{p}",
                     tune_cache=tune_cache, threads=threads, keep_example=example is None))
            example = example or ex
            rows = [r for r in rows if not (r["set"] == kind and r["patient"] == p)] + new
            infos = [i for i in infos if not (i["set"] == kind and i["test_patient"] == p)] + [info]
            _write_csv(csv_path, rows)
            _write_info(info_path, infos, _record(config, cv))
            _write_summary(out / "cv_summary.md", rows, infos, _record(config, cv))
            log.info("fold %s/%s: %.0f s", kind, p, info["seconds"])
    return rows, infos, example


