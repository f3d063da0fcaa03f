"""Resumable training of one noise-aware regressor on multi-dose patches (imports TensorFlow).

:func:`train_noise_aware` trains a ``CNNConfig(noise_input=True)`` model on
:class:`~hybrid.cnn.multidose.MultiDoseSampler` batches and writes, after every epoch,
a checkpoint (``checkpoint/``: weights, optimizer variables, epoch and history, replaced
atomically), the best weights, ``log.csv`` and ``progress.png``.  With ``resume=True`` it
continues from the checkpoint: the batches are stateless in (seed, epoch, step), the
learning-rate schedule is a function of the optimizer's step counter (saved with its
moments), so a resumed run gives the weights an uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._paths import REPO_ROOT
from hybrid.cnn._tf import keras, tf
from hybrid.cnn.config import NOISE_CHANNELS, CNNConfig
from hybrid.cnn.models import HURootMeanSquaredError, build_model, set_threads, warm_start
from hybrid.cnn.multidose import MultiDoseSampler, NoiseSource, sources_manifest
from hybrid.cnn.train import ProgressFigure, TrainResult

__all__ = ["train_noise_aware", "warm_start", "VAL_DOSES", "CHECKPOINT_DIR"]

#: Dose fractions of the fixed monitor patches (RMSE reported per dose).
VAL_DOSES = (0.005, 0.02, 0.1, 0.25, 1.0)
CHECKPOINT_DIR = "checkpoint"
_LOSSES = {"mse": "mean_squared_error", "mae": "mean_absolute_error"}


def _compile(model: keras.Model, config: CNNConfig, total_steps: int) -> keras.Model:
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, total_steps), alpha=0.05)
    loss = _LOSSES.get(config.loss) or keras.losses.Huber(delta=0.05)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss=loss,
                  metrics=[HURootMeanSquaredError(config.hu_per_unit)])
    return model


def _inputs(config: CNNConfig, uld: np.ndarray, maps: np.ndarray):
    p = uld.shape[1]
    m = np.broadcast_to(maps[:, None, None, :], (len(uld), p, p, maps.shape[1]))
    return config.normalize(uld)[..., None], np.ascontiguousarray(m, dtype=np.float32)


def _dataset(sampler: MultiDoseSampler, config: CNNConfig, *, epoch: int, steps: int,
             batch_size: int) -> tf.data.Dataset:
    """Batches ``(0..steps-1)`` of ``epoch``, made on two host threads, in order."""
    p, c = config.patch_size, len(NOISE_CHANNELS)

    def make(step):
        uld, nd, maps = sampler.batch(batch_size, epoch=epoch, step=int(step))
        x, m = _inputs(config, uld, maps)
        return x, m, config.normalize(nd)[..., None]

    def fn(step):
        x, m, y = tf.numpy_function(make, [step], (tf.float32, tf.float32, tf.float32))
        x.set_shape((batch_size, p, p, 1))
        m.set_shape((batch_size, p, p, c))
        y.set_shape((batch_size, p, p, 1))
        return (x, m), y

    return (tf.data.Dataset.range(steps)
            .map(fn, num_parallel_calls=2, deterministic=True).prefetch(4))


def _monitor_set(sources: Sequence[NoiseSource], config: CNNConfig, *, n: int, seed: int,
                 sampler_options: dict[str, Any]) -> dict[float, tuple]:
    sampler = MultiDoseSampler(sources, region=config.region, patch_size=config.patch_size,
                               seed=seed, augment=False, sigma_jitter=0.0,
                               noise_ref_hu=config.noise_ref_hu, **sampler_options)
    out = {}
    for i, f in enumerate(VAL_DOSES):
        uld, nd, maps = sampler.sample(n, rng=np.random.default_rng([seed, 7919, i]), doses=[f])
        out[f] = (*_inputs(config, uld, maps), uld, nd)
    return out


def _monitor(model: keras.Model, config: CNNConfig, val: dict[float, tuple]) -> dict[str, float]:
    """RMSE (HU) of the model and of its input against the target, per monitor dose."""
    logs, se, count = {}, 0.0, 0
    for f, (x, m, uld, nd) in val.items():
        y = np.asarray(model.predict([x, m], batch_size=16, verbose=0))[..., 0]
        pred = uld + (y - x[..., 0]) * np.float32(config.hu_per_unit) if config.residual \
            else config.denormalize(y)
        err = (pred.astype(np.float64) - nd) ** 2
        logs[f"val_rmse_hu_f{f:g}"] = float(np.sqrt(err.mean()))
        logs[f"input_rmse_hu_f{f:g}"] = float(np.sqrt(((uld.astype(np.float64) - nd) ** 2).mean()))
        se, count = se + float(err.sum()), count + err.size
    logs["val_rmse_hu"] = float(np.sqrt(se / count))
    return logs


def _warm_start_path(start: str | os.PathLike) -> Path:
    """The saved pair a config's ``warm_start`` names: "shipped" (``hybrid/assets/cnn``), an
    absolute path, or a path relative to the repository (as the configs in
    ``experiments/configs`` write it), whatever the working directory."""
    if str(start) == "shipped":
        from hybrid.artifacts import default_asset_paths

        return Path(default_asset_paths()["cnn"])
    path = Path(start)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(
            f"Expected the saved CNN pair that cnn.noise.warm_start names; {str(start)!r} "
            f"(looked for {path}) is not there. Name \"shipped\", an absolute path or a path "
            "relative to the repository root, and train or fetch that pair first.")
    return path


def _save_checkpoint(out: Path, model: keras.Model, state: dict[str, Any]) -> None:
    tmp = out / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_weights(str(tmp / "model.weights.h5"))
    opt = model.optimizer
    np.savez(tmp / "optimizer.npz", *[np.asarray(v.numpy()) for v in opt.variables])
    (tmp / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    final = out / CHECKPOINT_DIR
    old = out / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out: Path, model: keras.Model, config: CNNConfig) -> dict[str, Any]:
    ck = out / CHECKPOINT_DIR
    state = json.loads((ck / "state.json").read_text())
    if state["config"] != config.to_dict():
        raise ValueError(f"The checkpoint in {ck} was made with another CNNConfig; resume with "
                         "the config it was started with, or start a new --work folder.")
    model.load_weights(str(ck / "model.weights.h5"))
    opt = model.optimizer
    opt.build(model.trainable_variables)
    with np.load(ck / "optimizer.npz") as z:
        values = [z[f"arr_{i}"] for i in range(len(z.files))]
    if len(values) != len(opt.variables):
        raise ValueError(f"Expected {len(opt.variables)} optimizer variables in {ck}; found "
                         f"{len(values)}. The checkpoint does not fit this model.")
    for v, value in zip(opt.variables, values):
        v.assign(value)
    return state


def _write_log(path: Path, history: dict[str, list[float]]) -> None:
    keys = ["epoch"] + sorted(history)
    n = len(history.get("loss", []))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for i in range(n):
            w.writerow([i] + [history[k][i] if i < len(history[k]) else "" for k in keys[1:]])


def train_noise_aware(
    config: CNNConfig,
    sources: Sequence[NoiseSource],
    val_sources: Sequence[NoiseSource],
    *,
    out_dir: str | os.PathLike,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    seed: int = 0,
    val_seed: int = 0,
    val_patches: int = 64,
    resume: bool = False,
    stop_after: int | None = None,
    sampler_options: dict[str, Any] | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    metadata: dict[str, Any] | None = None,
    init_model: keras.Model | None = None,
    log=None,
) -> TrainResult:
    """Train (or resume training) one noise-aware regressor.

    Parameters
    ----------
    config : CNNConfig
        With ``noise_input=True``.
    sources, val_sources : sequence of NoiseSource
        Training and monitor sources (:func:`hybrid.cnn.multidose.make_sources`).
    out_dir : path
        ``checkpoint/``, ``best.weights.h5``, ``log.csv``, ``progress.png``, ``config.json``.
    epochs, steps_per_epoch, batch_size : int
        Total budget (the cosine learning-rate schedule spans ``epochs * steps_per_epoch``).
    seed, val_seed : int
        Weights and training batches; monitor patches.
    val_patches : int
        Monitor patches per dose of :data:`VAL_DOSES`.
    resume : bool
        Continue from ``out_dir/checkpoint`` if it exists.
    stop_after : int, optional
        Stop after this many epochs in this call (a session's share); resume later.
    sampler_options : dict, optional
        :class:`~hybrid.cnn.multidose.MultiDoseSampler` options (dose range, clean share...).
    dtype : str, optional
        Keras dtype policy (``"mixed_bfloat16"`` where native).
    threads : int, optional
        TensorFlow CPU threads.
    metadata : dict, optional
        Recorded in the checkpoint's state (command, data).
    init_model : keras.Model, optional
        A trained plain model to start from (:func:`warm_start`) instead of random weights;
        ignored when resuming from a checkpoint.
    log : callable, optional
        ``log(message)`` after every epoch.

    Returns
    -------
    TrainResult
        The best weights loaded (by monitor RMSE over all doses).
    """
    if not config.noise_input:
        raise ValueError("Expected a CNNConfig with noise_input=True; received noise_input=False. "
                         "Train plain models with hybrid.cnn.train.train_model.")
    if threads is not None:
        set_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.to_json(out / "config.json")
    opts = dict(sampler_options or {})
    sampler = MultiDoseSampler(sources, region=config.region, patch_size=config.patch_size,
                               seed=seed, noise_ref_hu=config.noise_ref_hu, **opts)
    val_opts = {k: v for k, v in opts.items() if k not in ("dose_range", "clean_fraction",
                                                           "sigma_jitter", "weighting")}
    val = _monitor_set(val_sources, config, n=val_patches, seed=val_seed, sampler_options=val_opts)
    model = _compile(build_model(config, seed=seed, dtype=dtype), config, epochs * steps_per_epoch)
    state = {"epoch": 0, "history": {}, "best_val_rmse_hu": None, "best_epoch": 0,
             "seconds": 0.0}
    if resume and (out / CHECKPOINT_DIR / "state.json").is_file():
        state = _load_checkpoint(out, model, config)
    elif init_model is not None:
        warm_start(model, init_model)
    state.update(config=config.to_dict(), seed=seed, val_seed=val_seed, epochs=epochs,
                 steps_per_epoch=steps_per_epoch, batch_size=batch_size,
                 sampler_options=json.loads(json.dumps(opts)), metadata=metadata or {},
                 sources=[s.source_id for s in sources],
                 val_sources=[s.source_id for s in val_sources])
    figure = ProgressFigure(out / "progress.png", title=f"noise-aware {config.region} model ({config.architecture})")
    files = {"log": out / "log.csv", "weights": out / "best.weights.h5",
             "figure": out / "progress.png", "config": out / "config.json",
             "checkpoint": out / CHECKPOINT_DIR}
    end = epochs if stop_after is None else min(epochs, state["epoch"] + int(stop_after))
    while state["epoch"] < end:
        e, t0 = state["epoch"], time.perf_counter()
        ds = _dataset(sampler, config, epoch=e, steps=steps_per_epoch, batch_size=batch_size)
        hist = model.fit(ds, initial_epoch=e, epochs=e + 1, verbose=0, shuffle=False)
        logs = {k: float(v[-1]) for k, v in hist.history.items()}
        logs.update(_monitor(model, config, val))
        logs["learning_rate"] = float(model.optimizer.learning_rate)
        for k, v in logs.items():
            state["history"].setdefault(k, []).append(v)
        state["epoch"] = e + 1
        state["seconds"] += time.perf_counter() - t0
        if state["best_val_rmse_hu"] is None or logs["val_rmse_hu"] < state["best_val_rmse_hu"]:
            state["best_val_rmse_hu"], state["best_epoch"] = logs["val_rmse_hu"], e + 1
            model.save_weights(str(files["weights"]))
        _save_checkpoint(out, model, state)
        _write_log(files["log"], state["history"])
        figure.history = state["history"]
        figure.draw()
        if log is not None:
            log(f"{config.region} epoch {e + 1}/{epochs}: loss {logs['loss']:.5f}, monitor RMSE "
                f"{logs['val_rmse_hu']:.1f} HU (" + ", ".join(
                    f"f={f:g}: {logs[f'val_rmse_hu_f{f:g}']:.1f}/{logs[f'input_rmse_hu_f{f:g}']:.1f}"
                    for f in VAL_DOSES) + f" model/input), {time.perf_counter() - t0:.0f} s")
    if files["weights"].is_file():
        model.load_weights(str(files["weights"]))
    manifest = [{**m, "split": "train"} for m in sources_manifest(sources)] + [
        {**m, "split": "validation"} for m in sources_manifest(val_sources)]
    history = state["history"]
    return TrainResult(
        model=model, config=config, val_loss=float("nan"),
        val_rmse_hu=float(state["best_val_rmse_hu"] or float("nan")),
        val_slice_rmse_hu=float("nan"), best_epoch=int(state["best_epoch"]),
        epochs_run=int(state["epoch"]), history=history, files=files, manifest=manifest,
        seconds=float(state["seconds"]))


def train_noise_aware_regions(
    configs: dict[str, CNNConfig],
    cases: Sequence[Any],
    monitor_cases: Sequence[Any],
    *,
    regions: Sequence[str],
    budget: dict[str, dict[str, int]],
    noise: dict[str, Any],
    work: str | os.PathLike,
    seed: int,
    resume: bool = False,
    dtype: str | None = None,
    threads: int | None = None,
    metadata: dict[str, Any] | None = None,
    log=None,
) -> dict[str, TrainResult]:
    """The noise-aware CNN stage of :mod:`hybrid.recipe`: :func:`train_noise_aware` per region.

    ``noise`` holds the stage's ``cnn.noise`` section: ``kernels`` (of
    :func:`~hybrid.cnn.multidose.make_sources`), ``val_patches`` (per monitor dose),
    ``stop_after`` (epochs per call, None: all) and the
    :class:`~hybrid.cnn.multidose.MultiDoseSampler` options ``dose_range``,
    ``clean_fraction``, ``sigma_jitter``, ``weighting``; optionally ``warm_start``, a
    saved CNN pair ("shipped": ``hybrid/assets/cnn``; a relative path is the repository's,
    :func:`_warm_start_path`) whose models each region starts from (:func:`warm_start`), and ``phantom_noise_scale`` (of ``make_sources``).  Sources are cached under ``work/cache``.
    """
    from hybrid.cnn.multidose import make_sources

    opts = dict(noise)
    kernels = tuple(opts.pop("kernels", ("smooth", "standard", "sharp")))
    val_patches = int(opts.pop("val_patches", 64))
    stop_after = opts.pop("stop_after", None)
    start = opts.pop("warm_start", None)
    phantom_scale = opts.pop("phantom_noise_scale", None)
    if start is not None:
        from hybrid.cnn.infer import CNNPair

        start = CNNPair.load(_warm_start_path(start))
    if "dose_range" in opts:
        opts["dose_range"] = tuple(opts["dose_range"])
    cache = Path(work) / "cache"
    sources = make_sources(cases, kernels=kernels, cache_dir=cache,
                           phantom_noise_scale=phantom_scale)
    val_sources = make_sources(monitor_cases, kernels=kernels, cache_dir=cache,
                               phantom_noise_scale=phantom_scale)
    results = {}
    for region in regions:
        b = budget[region]
        keras.backend.clear_session()
        results[region] = train_noise_aware(
            configs[region], sources, val_sources, out_dir=Path(work) / region,
            epochs=b["epochs"], steps_per_epoch=b["steps_per_epoch"], batch_size=b["batch_size"],
            seed=seed, val_seed=0, val_patches=val_patches, resume=resume, stop_after=stop_after,
            sampler_options=opts, dtype=dtype, threads=threads, metadata=metadata,
            init_model=None if start is None else getattr(start, f"{region}_model"), log=log)
    return results
