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
"""

from __future__ import annotations

import importlib
from typing import Any

from hybrid.cnn.config import CNNConfig
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
}

__all__ = [
    "CNNConfig",
    "PatchSampler",
    "TrainingPair",
    "as_training_pairs",
    "split_pairs",
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
