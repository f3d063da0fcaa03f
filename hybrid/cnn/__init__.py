"""The lung/body CNN pair: configuration, patch sampling, training and whole-slice inference.

Importing this package does not import TensorFlow: :class:`CNNConfig` and the patch
sampler are plain NumPy, and the TensorFlow-backed names (:class:`CNNPair`,
:func:`build_model`, :func:`train_model`, ...) are loaded on first access.

Public names
------------
CNNConfig
    Frozen, JSON-serialisable configuration of one regressor.
PatchSampler, TrainingPair
    Seeded lung/body patch sampling.
build_model, compile_model, set_threads, get_strategy
    Keras model builders and runtime helpers (TensorFlow).
train_model, train_pair, TrainResult, ProgressFigure
    Training with CSV log, best checkpoint, early stopping, TensorBoard and a progress PNG.
CNNPair, blend_weight, Proposal
    Whole-slice inference composed by the lung mask.
NoiseEstimate, estimate_noise
    Per-slice noise level and texture of an image (for noise-aware models).
NoiseSource, make_sources, MultiDoseSampler
    Multi-dose, multi-kernel patches from stored noise realisations.
train_noise_aware
    Resumable training of a noise-aware (``noise_input``) model (TensorFlow).
"""

from __future__ import annotations

import importlib
from typing import Any

from hybrid.cnn.config import CNNConfig
from hybrid.cnn.multidose import MultiDoseSampler, NoiseSource, make_sources
from hybrid.cnn.noise import NoiseEstimate, estimate_noise
from hybrid.cnn.sampler import PatchSampler, TrainingPair, as_training_pairs, split_pairs

_LAZY = {
    "build_model": "hybrid.cnn.models",
    "compile_model": "hybrid.cnn.models",
    "set_threads": "hybrid.cnn.models",
    "clear_session": "hybrid.cnn.models",
    "get_strategy": "hybrid.cnn.models",
    "HURootMeanSquaredError": "hybrid.cnn.models",
    "predict_hu": "hybrid.cnn.models",
    "slice_rmse_hu": "hybrid.cnn.train",
    "ScalarTensorBoard": "hybrid.cnn.train",
    "train_model": "hybrid.cnn.train",
    "train_pair": "hybrid.cnn.train",
    "make_datasets": "hybrid.cnn.train",
    "data_manifest": "hybrid.cnn.train",
    "TrainResult": "hybrid.cnn.train",
    "ProgressFigure": "hybrid.cnn.train",
    "CNNPair": "hybrid.cnn.infer",
    "blend_weight": "hybrid.cnn.infer",
    "train_noise_aware": "hybrid.cnn.resumable",
}

__all__ = [
    "CNNConfig",
    "PatchSampler",
    "TrainingPair",
    "as_training_pairs",
    "split_pairs",
    "NoiseEstimate",
    "estimate_noise",
    "NoiseSource",
    "make_sources",
    "MultiDoseSampler",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hybrid.cnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
