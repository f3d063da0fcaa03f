"""Leave-one-patient-out cross-validation of the hybrid and the tuned baselines.

Per fold of ``data/folds.json`` (phantom and real sets separately):
:func:`train_fold_models` trains a CNN pair (configurations of the shipped
pair, short budget) on the training patients, builds a dictionary without the
test patient and one calibration patient and calibrates the blender on the
calibration patient; the baselines are tuned on training slices
(:mod:`hybrid.evaluate.tuning`) and every method is scored on the test patient
(:mod:`hybrid.evaluate.scoring`).  Each fold runs in a fresh process; results
are written after every fold (:mod:`hybrid.evaluate.report`), figures at the end
(:mod:`hybrid.evaluate.figures`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.evaluate.budget import CVBudget
from hybrid.evaluate.cases import _case_path, _entries, central_slices
from hybrid.evaluate.figures import _boxplots, _example_figure
from hybrid.evaluate.report import (
    _git_revision,
    _read_csv,
    _write_csv,
    _write_info,
    _write_summary,
)
from hybrid.evaluate.scoring import _CLASSICAL, _baseline_images, score_methods
from hybrid.evaluate.tuning import _tune_pairs, default_tune_cases, tune_baselines

log = logging.getLogger(__name__)

__all__ = ["cross_validate", "train_fold_models"]


def _shipped_cnn_configs(patch_sizes: tuple[int, int] | None = None):
    """The lung and body CNNConfig of the shipped pair (``hybrid/assets/cnn/*.config.json``),
    optionally with other patch sizes."""
    from hybrid.artifacts import default_assets_dir
    from hybrid.cnn.config import CNNConfig

    d = default_assets_dir() / "cnn"
    out = []
    for i, r in enumerate(("lung", "body")):
        cfg = json.loads((d / f"{r}.config.json").read_text())
        if patch_sizes is not None:
            cfg["patch_size"] = int(patch_sizes[i])
        out.append(CNNConfig.from_dict(cfg))
    return tuple(out)


def _pick_calibration(train_patients: Sequence[str], kind: str, root: Path | None = None,
                      entries: Sequence[Mapping[str, Any]] = ()) -> str:
    """Calibration patient of a fold: the shipped one of this set if it is training, else the
    training patient of this set with the most lung voxels (the CNN's validation needs lung
    patches: an abdomen-only series has none), else the last."""
    from hybrid.training import CALIBRATION_PATIENTS

    for p in CALIBRATION_PATIENTS:
        if p in train_patients:
            return p
    if root is not None and entries:
        from hybrid.io.hdf5 import read_arrays

        lung: dict[str, int] = {}
        for e in entries:
            if e["patient_id"] in train_patients and e["kind"] == kind:
                arrays, _ = read_arrays(_case_path(root, e), ["lung_mask"], require=("lung_mask",))
                lung[e["patient_id"]] = lung.get(e["patient_id"], 0) + int(arrays["lung_mask"].sum())
        if lung:
            return max(sorted(lung), key=lambda p: lung[p])
    return sorted(train_patients)[-1]


def _fold_training_pairs(root: Path, train_ids: Sequence[str], by_id: Mapping[str, Any],
                         calib: str) -> tuple[list, list, list, list]:
    """Load a fold's training cases: ``(cnn_pairs, dict_pairs, calib_cases, val_pairs)``.

    Every case (and its augmented ULD) trains the CNN pair; the dictionary gets
    every case but the calibration patient's, whose cases calibrate the blender
    and monitor the CNN training.
    """
    from hybrid.cnn.sampler import TrainingPair
    from hybrid.data import load_case

    cnn_pairs, dict_pairs, calib_cases, val = [], [], [], []
    for cid in train_ids:
        case = load_case(_case_path(root, by_id[cid]))
        for tag, uld in (("", case.uld.array), ("~aug", case.uld_aug)):
            cnn_pairs.append(TrainingPair(uld, case.nd, case.lung_mask, case.body_mask, cid + tag))
            if case.patient_id != calib:
                dict_pairs.append((uld, case.nd, case.body_mask))
        if case.patient_id == calib:
            calib_cases.append(case)
            val.append(TrainingPair(case.uld.array, case.nd, case.lung_mask, case.body_mask, cid))
    return cnn_pairs, dict_pairs, calib_cases, val


def train_fold_models(
    root: Path,
    kind: str,
    fold: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    *,
    budget: CVBudget,
    seed: int,
    threads: int | None,
    work: Path,
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Train the models of one leave-one-patient-out fold, without its test patient.

    The CNN pair (the shipped configurations, ``budget``'s short training; the
    calibration patient monitors it), a dictionary without the test and the
    calibration patient, and the blender calibrated on the calibration patient
    (nominal and other dose).

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
    budget : CVBudget
    seed : int
    threads : int or None
        TensorFlow CPU threads.
    work : Path
        Folder for the CNN training's logs and checkpoints.

    Returns
    -------
    cnn : hybrid.cnn.CNNPair
    dictionary : hybrid.dictionary.PatchDictionary
    blender : hybrid.blend.Blender
    info : dict
        Set, test and calibration patient, training cases, timings, CNN
        validation RMSE, dictionary size and the blender's calibration.
    """
    from hybrid.blend import calibrate
    from hybrid.cnn import clear_session
    from hybrid.cnn.train import train_pair
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.training import calibration_samples

    test_patient = fold["test_patient"][0]
    by_id = {e["case_id"]: e for e in entries}
    train_ids = [c for c in fold["train"]]
    if budget.other_set:
        train_ids += [e["case_id"] for e in entries if e["kind"] != kind and e["patient_id"] != test_patient]
    train_patients = sorted({by_id[c]["patient_id"] for c in fold["train"]})
    calib = _pick_calibration(train_patients, kind, root, entries)
    info: dict[str, Any] = {"set": kind, "test_patient": test_patient, "calibration_patient": calib,
                            "train_cases": train_ids}
    t0 = time.perf_counter()
    cnn_pairs, dict_pairs, calib_cases, val = _fold_training_pairs(root, train_ids, by_id, calib)
    if not dict_pairs:
        raise ValueError(f"Fold {test_patient}: no training case left for the dictionary besides "
                         f"the calibration patient {calib}.")
    # 1. CNN pair: the shipped configurations, short budget; the calibration patient monitors
    lung_cfg, body_cfg = _shipped_cnn_configs(budget.patch_sizes)
    clear_session()
    cnn, results = train_pair(
        lung_cfg, body_cfg, cnn_pairs, out_dir=work / "cnn", save=False, val_pairs=val,
        epochs=budget.epochs, steps_per_epoch=budget.steps_per_epoch, batch_size=budget.batch_size,
        val_slices=budget.val_slices, val_patches=min(512, 64 * budget.batch_size),
        patience=max(3, budget.epochs), seed=seed, threads=threads, tensorboard=False, verbose=0)
    info["cnn_seconds"] = time.perf_counter() - t0
    info["cnn_val_rmse_hu"] = {k: r.val_rmse_hu for k, r in results.items()}
    # 2. dictionary without the test and the calibration patient
    t = time.perf_counter()
    cfg = DictionaryConfig(max_patches=budget.max_patches, n_heldout=budget.n_heldout, seed=seed)
    dictionary = PatchDictionary.build(dict_pairs, config=cfg, name=f"cv-{test_patient}")
    info["dictionary_seconds"] = time.perf_counter() - t
    info["dictionary_entries"] = len(dictionary)
    # 3. blender on the calibration patient (nominal and other dose)
    t = time.perf_counter()
    samples, _ = calibration_samples(calib_cases, cnn, dictionary, stride=budget.stride)
    blender = calibrate(samples)
    info["blender"] = {"modes": blender.info(), "calibration": blender.calibration}
    info["blender_seconds"] = time.perf_counter() - t
    return cnn, dictionary, blender, info


def _run_fold(root: Path, kind: str, fold: Mapping[str, Any], entries: list[dict[str, Any]], *,
              budget: CVBudget, baselines: Sequence[str], work: Path, tune_cache: dict,
              seed: int, threads: int | None, keep_example: bool) -> tuple[list[dict], dict, Any]:
    """Train the fold's models (:func:`train_fold_models`), tune the baselines, score every method."""
    from hybrid.data import load_case
    from hybrid.pipeline import Enhancer

    t0 = time.perf_counter()
    cnn, dictionary, blender, info = train_fold_models(root, kind, fold, entries, budget=budget,
                                                       seed=seed, threads=threads, work=work)
    test_patient = info["test_patient"]
    by_id = {e["case_id"]: e for e in entries}
    enhancer = Enhancer(cnn=cnn, dictionary=dictionary, blender=blender, stride=budget.stride)
    # 4. score every method on the test patient
    rows, example = [], None
    for cid in fold["test"]:
        e = by_id[cid]
        tune_ids = tuple(default_tune_cases(root, cid, exclude_patients=[test_patient], strict=False))
        key = ("+".join(tune_ids), budget.tune_slices)
        if key not in tune_cache:
            pairs, picked = _tune_pairs(root, tune_ids, budget.tune_slices)
            tune_cache[key] = {"slices": picked,
                               "baselines": tune_baselines(pairs, list(baselines), grids=budget.grids)}
        tuned = tune_cache[key]["baselines"]
        case = load_case(_case_path(root, e))
        idx = central_slices(len(case.uld), budget.eval_slices)
        enh, maps = enhancer.enhance(case.uld, return_maps=True, progress=False)
        uld = case.uld.array[idx]
        nd, lung, body = case.nd[idx], case.lung_mask[idx], case.body_mask[idx]
        imgs = {"input": uld}
        imgs.update(_baseline_images(uld, body, {k: v for k, v in tuned.items() if k != "input"}, {}))
        imgs.update({"cnn": maps.cnn[idx], "dictionary": maps.dictionary[idx], "hybrid": enh.array[idx]})
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
    baselines: Sequence[str] = _CLASSICAL,
    budget: CVBudget | None = None,
    seed: int = 0,
    threads: int | None = None,
    resume: bool = True,
    figures: bool = True,
    work: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Leave-one-patient-out cross-validation of the hybrid and the baselines.

    For each fold of ``data_root/folds.json`` (per set): train a CNN pair with
    the shipped configurations on the fold's training patients (budget
    ``budget``), build a dictionary without the test patient and one
    calibration patient (the shipped one when it is training, else the
    training patient of the set with the most lung voxels), calibrate the
    blender on that patient (:func:`train_fold_models`),
    tune the baselines on training slices of the test case's kernel class
    (tunings are shared between folds whose tuning cases coincide), and score
    every method on the central ``budget.eval_slices`` slices of the test
    patient's cases.

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
    budget : CVBudget, optional
        Default ``CVBudget()``; ``CVBudget.fast()`` for a smoke run.
    seed : int
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
    budget = budget or CVBudget()
    root, out = Path(data_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folds_path = root / "folds.json"
    if not folds_path.exists():
        raise FileNotFoundError(f"Expected {folds_path} (leave-one-patient-out folds); run `make data` first.")
    all_folds = json.loads(folds_path.read_text())
    entries = _entries(root)
    csv_path, info_path = out / "cv_results.csv", out / "cv_folds.json"
    rows = _read_csv(csv_path) if resume else []
    infos = json.loads(info_path.read_text()).get("folds", []) if resume and info_path.exists() else []
    import tempfile

    tmp_work = None
    if work is None:
        tmp_work = tempfile.TemporaryDirectory(prefix="hybrid-cv-")
        work = tmp_work.name
    try:
        rows, infos, example = _cv_loop(
            root, out, all_folds, entries, rows, infos, sets=sets, max_folds=max_folds,
            test_patients=test_patients, baselines=baselines, budget=budget, seed=seed,
            threads=threads, work=Path(work), csv_path=csv_path, info_path=info_path)
    finally:
        if tmp_work is not None:
            tmp_work.cleanup()
    if figures and rows:
        _boxplots(rows, out / "cv_boxplots.png")
        if example is not None:
            _example_figure(example, out / "cv_example.png")
    if rows:
        _write_summary(out / "cv_summary.md", rows, infos, budget)
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


def _cv_loop(root, out, all_folds, entries, rows, infos, *, sets, max_folds, test_patients, baselines,
             budget, seed, threads, work, csv_path, info_path):
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
                dict(budget=budget, baselines=baselines, work=work / f"{kind}-{p}",
                     tune_cache=tune_cache, seed=seed, threads=threads,
                     keep_example=example is None))
            example = example or ex
            rows = [r for r in rows if not (r["set"] == kind and r["patient"] == p)] + new
            infos = [i for i in infos if not (i["set"] == kind and i["test_patient"] == p)] + [info]
            _write_csv(csv_path, rows)
            _write_info(info_path, infos, budget)
            _write_summary(out / "cv_summary.md", rows, infos, budget)
            log.info("fold %s/%s: %.0f s", kind, p, info["seconds"])
    return rows, infos, example


