"""Training of one CNN regressor (or of the lung/body pair) with a ``tf.data`` pipeline.

:func:`train_model` is the entry point a variant-search harness calls: it takes a
:class:`~hybrid.cnn.CNNConfig` and the per-patient pairs and returns a
:class:`TrainResult` whose ``val_rmse_hu`` is the validation RMSE in HU of the best
(checkpointed) weights.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrid.cnn._tf import keras, tf
from hybrid.cnn.config import CNNConfig
from hybrid.cnn.models import (
    build_model,
    compile_model,
    get_strategy,
    predict_hu,
    set_threads,
    warm_start,
)
from hybrid.cnn.sampler import PatchSampler, TrainingPair, as_training_pairs, split_pairs

__all__ = [
    "TrainResult",
    "ProgressFigure",
    "ScalarTensorBoard",
    "make_datasets",
    "data_manifest",
    "train_model",
    "train_pair",
    "slice_rmse_hu",
]


# ---------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes
    ----------
    model : keras.Model
        The model with the best validation weights loaded.
    config : CNNConfig
    val_loss : float
        Best validation loss (normalised units).
    val_rmse_hu : float
        Validation RMSE in HU on the fixed validation patches, best weights.
    val_slice_rmse_hu : float
        Validation RMSE in HU on whole validation slices, over the region's pixels (lung
        mask, or body outside the lungs), best weights: comparable across patch sizes and
        closest to deployment (NaN if ``val_slices=0``).
    best_epoch : int
        1-based epoch of the best validation loss.
    epochs_run : int
    history : dict of str to list of float
        Per-epoch ``loss``, ``rmse_hu``, ``val_loss``, ``val_rmse_hu``, ``learning_rate``.
    files : dict of str to Path
        ``log`` (CSV), ``weights`` (best checkpoint), ``figure`` (PNG), ``tensorboard`` (folder), ``config``.
    manifest : list of dict
        Training and validation data manifest (patient ids, shapes, content hashes).
    seconds : float
        Wall time of the fit.
    """

    model: Any
    config: CNNConfig
    val_loss: float
    val_rmse_hu: float
    val_slice_rmse_hu: float
    best_epoch: int
    epochs_run: int
    history: dict[str, list[float]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    manifest: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------- callback
class ProgressFigure(keras.callbacks.Callback):
    """Rewrites a PNG of training and validation loss and RMSE in HU after every epoch.

    Uses Matplotlib's Agg canvas directly (never pyplot), so it works headless and does
    not change the global backend.  The file is replaced atomically.

    Parameters
    ----------
    path : str or PathLike
        PNG to write.
    title : str
        Figure title.
    """

    def __init__(self, path: str | os.PathLike, *, title: str = "") -> None:
        super().__init__()
        self.path = Path(path)
        self.title = title
        self.history: dict[str, list[float]] = {}

    def on_train_begin(self, logs=None):
        self.history = {}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            try:
                self.history.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                pass
        self.draw()

    def draw(self) -> Path:
        """Write the figure now; returns its path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax_loss, ax_rmse = fig.subplots(1, 2)
        for ax, key, label in (
            (ax_loss, "loss", "loss (normalised units)"),
            (ax_rmse, "rmse_hu", "RMSE (HU)"),
        ):
            for prefix, style in (("", "-o"), ("val_", "-s")):
                values = self.history.get(prefix + key)
                if values:
                    epochs = np.arange(1, len(values) + 1)
                    ax.plot(
                        epochs, values, style, ms=3, label=("validation" if prefix else "training")
                    )
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if key == "loss" and any(v > 0 for v in self.history.get("loss", [])):
                ax.set_yscale("log")
            ax.legend(loc="upper right")
        val = self.history.get("val_rmse_hu")
        best = (
            f" — best val RMSE {min(val):.1f} HU (epoch {int(np.argmin(val)) + 1})" if val else ""
        )
        fig.suptitle(f"{self.title}{best}")
        fig.tight_layout()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, self.path)
        return self.path


class ScalarTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars in TensorBoard's layout, without the ``tensorboard`` package.

    Writes ``epoch_<metric>`` to ``log_dir/train`` and ``log_dir/validation`` (the names
    Keras' own callback uses) with TensorFlow's core summary writer and the scalar-plugin
    metadata, so TensorBoard shows them.  :func:`train_model` uses Keras' ``TensorBoard``
    callback when ``tensorboard`` is installed and this one otherwise.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def _writer(self, split: str):
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(str(self.log_dir / split))
        return self._writers[split]

    def on_epoch_end(self, epoch, logs=None):
        from tensorflow.core.framework import summary_pb2

        meta = summary_pb2.SummaryMetadata()
        meta.plugin_data.plugin_name = "scalars"
        for key, value in (logs or {}).items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                tf.summary.write(
                    f"epoch_{name}", tf.constant(float(value)), step=epoch, metadata=meta
                )

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()
        self._writers = {}


def _tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return ScalarTensorBoard(log_dir)
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)


# ---------------------------------------------------------------------------- data
def data_manifest(pairs: Sequence[TrainingPair]) -> list[dict[str, Any]]:
    """Identify the data a model was trained on: patient id, shape and content hashes."""
    out = []
    for p in as_training_pairs(pairs):
        entry: dict[str, Any] = {"patient_id": p.patient_id, "shape": list(p.shape)}
        for key in ("uld", "nd", "lung_mask", "body_mask"):
            arr = np.ascontiguousarray(getattr(p, key))
            entry[f"{key}_blake2b"] = hashlib.blake2b(arr.data, digest_size=16).hexdigest()
        entry["lung_voxels"] = int(p.lung_mask.sum())
        out.append(entry)
    return out


def _batches(sampler: PatchSampler, config: CNNConfig, batch_size: int):
    while True:
        uld, nd = sampler.sample(batch_size)
        yield config.normalize(uld)[..., None], config.normalize(nd)[..., None]


def make_datasets(
    config: CNNConfig,
    train_pairs: Sequence[Any],
    val_pairs: Sequence[Any],
    *,
    batch_size: int = 32,
    val_patches: int = 512,
    seed: int = 0,
    val_seed: int = 0,
    augment: bool = True,
    sampler_options: dict[str, Any] | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """Training and validation ``tf.data`` pipelines of normalised ``(uld, nd)`` patch batches.

    The training dataset is infinite: fresh seeded patches every batch (drawn by a
    :class:`PatchSampler` on the host, prefetched).  The validation dataset is a fixed,
    non-augmented set of ``val_patches`` patches drawn with ``val_seed`` (independent of
    the training ``seed``, so that variants are compared on the same patches), cached.

    Returns
    -------
    train_ds, val_ds : tf.data.Dataset
        Elements ``(x, y)`` of shape ``(batch, p, p, 1)`` float32.
    """
    opts = dict(sampler_options or {})
    p = config.patch_size
    train_sampler = PatchSampler(
        train_pairs, region=config.region, patch_size=p, seed=seed, augment=augment, **opts
    )
    val_sampler = PatchSampler(
        val_pairs, region=config.region, patch_size=p, seed=val_seed, augment=False, **opts
    )
    spec = tf.TensorSpec((None, p, p, 1), tf.float32)
    train_ds = tf.data.Dataset.from_generator(
        lambda: _batches(train_sampler, config, batch_size), output_signature=(spec, spec)
    ).prefetch(2)
    vx, vy = val_sampler.sample(val_patches)
    val_ds = (
        tf.data.Dataset.from_tensor_slices(
            (config.normalize(vx)[..., None], config.normalize(vy)[..., None])
        )
        .batch(batch_size)
        .cache()
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return train_ds.with_options(options), val_ds.with_options(options)


# ---------------------------------------------------------------------------- training
def _title(config: CNNConfig) -> str:
    name = config.name if config.name and config.name != config.region else ""
    arch = f"{config.depth}x{config.width} k{config.kernel_size}"
    return f"{config.region} CNN {arch}" + (f" ({name})" if name else "")


def region_mask(pair: TrainingPair, region: str) -> np.ndarray:
    """Pixels a region's model is responsible for: the lungs, or the body outside them."""
    return pair.lung_mask if region == "lung" else pair.body_mask & ~pair.lung_mask


def slice_rmse_hu(
    model: keras.Model,
    config: CNNConfig,
    pairs: Sequence[Any],
    *,
    max_slices: int = 8,
) -> float:
    """RMSE in HU of ``model`` on whole slices, over the pixels of ``config.region``.

    Uses at most ``max_slices`` slices that contain the region, spread evenly over all
    patients' slices (deterministic).
    """
    pairs = as_training_pairs(pairs)
    candidates = [
        (i, k)
        for i, p in enumerate(pairs)
        for k in range(p.shape[0])
        if region_mask(p, config.region)[k].any()
    ]
    if not candidates:
        return float("nan")
    pick = np.unique(
        np.linspace(0, len(candidates) - 1, min(max_slices, len(candidates))).round().astype(int)
    )
    se, n = 0.0, 0
    for j in pick:
        i, k = candidates[j]
        p = pairs[i]
        pred = predict_hu(model, config, p.uld[k : k + 1])[0]
        m = region_mask(p, config.region)[k]
        se += float(np.sum((pred[m].astype(np.float64) - p.nd[k][m]) ** 2))
        n += int(m.sum())
    return float(np.sqrt(se / n))


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a strictly positive value. Received {name}={value!r}"
        )


def train_model(
    config: CNNConfig,
    pairs: Sequence[Any],
    *,
    out_dir: str | os.PathLike,
    epochs: int = 50,
    batch_size: int = 32,
    steps_per_epoch: int = 100,
    val_pairs: Sequence[Any] | None = None,
    val_fraction: float = 0.2,
    val_patches: int = 512,
    val_slices: int = 8,
    patience: int = 8,
    reduce_lr_patience: int | None = 4,
    seed: int = 0,
    val_seed: int = 0,
    augment: bool = True,
    sampler_options: dict[str, Any] | None = None,
    strategy: tf.distribute.Strategy | None = None,
    threads: int | None = None,
    tensorboard: bool = True,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 0,
    dtype: str | None = None,
    init_model: keras.Model | None = None,
) -> TrainResult:
    """Train one regressor on patches of ``config.region``.

    Parameters
    ----------
    config : CNNConfig
        Architecture, normalisation, loss and learning rate.
    pairs : sequence
        Per-patient ``(uld, nd, lung_mask, body_mask[, patient_id])`` or
        :class:`~hybrid.cnn.sampler.TrainingPair`.
    out_dir : str or PathLike
        Folder for ``log.csv``, ``best.weights.h5``, ``progress.png``, ``config.json``
        and ``tensorboard/`` (created if missing).
    epochs : int
        Maximum number of epochs (early stopping may end sooner).
    batch_size : int
        Global batch size (split across replicas under MirroredStrategy).
    steps_per_epoch : int
        Training batches per epoch.
    val_pairs : sequence, optional
        Validation patients; default: split off ``val_fraction`` of ``pairs``
        (whole patients, or the last slices when there is one patient).
    val_fraction : float
        See ``val_pairs``.
    val_patches : int
        Size of the fixed validation patch set (monitored for checkpoints and early stopping).
    val_slices : int
        After training, whole validation slices (evenly spread, at most this many) on which
        ``val_slice_rmse_hu`` is measured over the region's pixels; 0 skips it.
    patience : int
        Early-stopping patience in epochs (on validation loss).
    reduce_lr_patience : int or None
        Halve the learning rate after this many epochs without improvement; None: never.
    seed : int
        Seeds weights, training patch sampling and augmentation.
    val_seed : int
        Seeds the validation split and validation patches: keep it fixed across variants.
    augment : bool
        Flips and 90 degree rotations of training patches.
    sampler_options : dict, optional
        Extra keyword arguments of :class:`~hybrid.cnn.sampler.PatchSampler`.
    strategy : tf.distribute.Strategy, optional
        Default: :func:`~hybrid.cnn.models.get_strategy` (MirroredStrategy on >1 GPU).
    threads : int, optional
        Limit TensorFlow CPU threads (see :func:`~hybrid.cnn.models.set_threads`).
    tensorboard : bool
        Write TensorBoard logs.
    callbacks : sequence of keras.callbacks.Callback
        Extra callbacks (e.g. a harness's pruning callback).
    verbose : int
        Keras verbosity.
    dtype : str, optional
        Keras dtype policy of the layers (:func:`hybrid.cnn.models.build_model`):
        ``"mixed_bfloat16"`` trains 2.5-3x faster on CPUs with native bfloat16
        (AMX/AVX512-BF16); the weights stay float32.  None: float32.
    init_model : keras.Model, optional
        A trained model of the same layers to start from (:func:`~hybrid.cnn.models.warm_start`,
        e.g. the lung model from the body model); default: seeded random weights.

    Returns
    -------
    TrainResult
        ``val_rmse_hu`` is the validation RMSE in HU of the best weights.
    """
    _check_train_arguments(
        config,
        epochs=epochs,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        val_patches=val_patches,
        patience=patience,
    )
    if threads is not None:
        set_threads(threads)
    train_pairs, val_pairs = _train_and_val_pairs(
        pairs, val_pairs, val_fraction=val_fraction, val_seed=val_seed
    )
    out = Path(out_dir)
    files = _output_files(out, config)

    train_ds, val_ds = make_datasets(
        config, train_pairs, val_pairs, batch_size=batch_size, val_patches=val_patches,
        seed=seed, val_seed=val_seed, augment=augment, sampler_options=sampler_options,
    )
    strategy = strategy or get_strategy()
    with strategy.scope():
        model = compile_model(build_model(config, seed=seed, dtype=dtype), config)
        if init_model is not None:
            warm_start(model, init_model)
    cbs = _training_callbacks(
        config,
        files,
        out,
        patience=patience,
        reduce_lr_patience=reduce_lr_patience,
        tensorboard=tensorboard,
        extra=callbacks,
    )

    t0 = time.perf_counter()
    hist = model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=val_ds,
        callbacks=cbs,
        shuffle=False,  # patches are already drawn at random
        verbose=verbose,
    )
    seconds = time.perf_counter() - t0
    return _train_result(
        model,
        config,
        hist,
        files,
        val_ds,
        train_pairs=train_pairs,
        val_pairs=val_pairs,
        val_slices=val_slices,
        seconds=seconds,
    )


def _check_train_arguments(config: Any, **counts: Any) -> None:
    """Raise for a non-CNNConfig ``config`` or a count (epochs, ...) that is not >= 1."""
    if not isinstance(config, CNNConfig):
        raise ValueError(
            "Invalid value for argument `config`. Expected a hybrid.cnn.CNNConfig. "
            f"Received type {type(config).__name__}"
        )
    for name, value in counts.items():
        _positive(name, value)


def _train_and_val_pairs(
    pairs: Sequence[Any], val_pairs: Sequence[Any] | None, *, val_fraction: float, val_seed: int
) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """``pairs`` and ``val_pairs`` as TrainingPairs, or ``pairs`` split by whole patients."""
    pairs = as_training_pairs(pairs)
    if val_pairs is None:
        return split_pairs(pairs, val_fraction=val_fraction, seed=val_seed)
    return pairs, as_training_pairs(val_pairs)


def _output_files(out: Path, config: CNNConfig) -> dict[str, Path]:
    """Create ``out``, write ``config.json`` there; the paths of the training's files."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "log": out / "log.csv",
        "weights": out / "best.weights.h5",
        "figure": out / "progress.png",
        "config": out / "config.json",
    }
    config.to_json(files["config"])
    return files


def _training_callbacks(
    config: CNNConfig,
    files: dict[str, Path],
    out: Path,
    *,
    patience: int,
    reduce_lr_patience: int | None,
    tensorboard: bool,
    extra: Sequence[keras.callbacks.Callback],
) -> list[keras.callbacks.Callback]:
    """CSV log, best checkpoint, early stopping, progress figure, LR schedule, TensorBoard.

    Adds ``files["tensorboard"]`` when ``tensorboard``; ``extra`` callbacks come last.
    """
    cbs: list[keras.callbacks.Callback] = [
        keras.callbacks.CSVLogger(str(files["log"])),
        keras.callbacks.ModelCheckpoint(
            str(files["weights"]), monitor="val_loss", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        ProgressFigure(files["figure"], title=_title(config)),
    ]
    if reduce_lr_patience is not None:
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=reduce_lr_patience, min_lr=1e-6
            )
        )
    if tensorboard:
        files["tensorboard"] = out / "tensorboard"
        cbs.append(_tensorboard_callback(files["tensorboard"]))
    cbs.extend(extra)
    return cbs


def _train_result(
    model: keras.Model,
    config: CNNConfig,
    hist: Any,
    files: dict[str, Path],
    val_ds: tf.data.Dataset,
    *,
    train_pairs: Sequence[TrainingPair],
    val_pairs: Sequence[TrainingPair],
    val_slices: int,
    seconds: float,
) -> TrainResult:
    """Load the best weights, evaluate them and gather the :class:`TrainResult`."""
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    if files["weights"].exists():
        model.load_weights(str(files["weights"]))
    val_loss, val_rmse = (float(v) for v in model.evaluate(val_ds, verbose=0))
    val_slice_rmse = (
        slice_rmse_hu(model, config, val_pairs, max_slices=val_slices)
        if val_slices
        else float("nan")
    )
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else 0
    manifest = [{**m, "split": "train"} for m in data_manifest(train_pairs)] + [
        {**m, "split": "validation"} for m in data_manifest(val_pairs)
    ]
    return TrainResult(
        model=model,
        config=config,
        val_loss=val_loss,
        val_rmse_hu=val_rmse,
        val_slice_rmse_hu=val_slice_rmse,
        best_epoch=best_epoch,
        epochs_run=len(history.get("loss", [])),
        history=history,
        files=files,
        manifest=manifest,
        seconds=seconds,
    )


def train_pair(
    lung_config: CNNConfig,
    body_config: CNNConfig,
    pairs: Sequence[Any],
    *,
    out_dir: str | os.PathLike,
    save: bool = True,
    **kwargs: Any,
):
    """Train the lung and the body model and return them as a :class:`~hybrid.cnn.infer.CNNPair`.

    Parameters
    ----------
    lung_config, body_config : CNNConfig
        Must have ``region`` "lung" and "body".
    pairs : sequence
        Per-patient pairs (see :func:`train_model`).
    out_dir : str or PathLike
        ``lung/`` and ``body/`` training folders are made here, and the pair is saved to
        ``model/`` when ``save``.
    save : bool
        Save the pair with :meth:`CNNPair.save`.
    **kwargs
        Passed to :func:`train_model` (e.g. ``epochs``, ``val_pairs``, ``seed``).

    Returns
    -------
    pair : CNNPair
    results : dict of str to TrainResult
        Keys "lung" and "body".
    """
    from hybrid.cnn.infer import CNNPair

    if lung_config.region != "lung" or body_config.region != "body":
        raise ValueError(
            "Expected lung_config.region='lung' and body_config.region='body'; received "
            f"{lung_config.region!r} and {body_config.region!r}."
        )
    out = Path(out_dir)
    results = {
        "lung": train_model(lung_config, pairs, out_dir=out / "lung", **kwargs),
        "body": train_model(body_config, pairs, out_dir=out / "body", **kwargs),
    }
    metadata = {
        "data_manifest": results["lung"].manifest,
        "validation": {
            k: {
                "val_rmse_hu": r.val_rmse_hu,
                "val_slice_rmse_hu": r.val_slice_rmse_hu,
                "best_epoch": r.best_epoch,
            }
            for k, r in results.items()
        },
    }
    pair = CNNPair(
        results["lung"].model,
        results["body"].model,
        lung_config=lung_config,
        body_config=body_config,
        metadata=metadata,
    )
    if save:
        pair.save(out / "model", overwrite=True)
    return pair, results
