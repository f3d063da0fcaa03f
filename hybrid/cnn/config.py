"""Configuration of one CNN regressor (lung or body), serialisable to JSON.

This module does not import TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CNNConfig", "REGIONS", "NORMALIZATIONS", "LOSSES", "DEFAULT_PATCH_SIZE"]

REGIONS = ("lung", "body")
NORMALIZATIONS = ("linear", "window")
LOSSES = ("mse", "mae", "huber")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "swish", "tanh")
DEFAULT_PATCH_SIZE = {"lung": 32, "body": 64}


def _bad(name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"Invalid value for argument `{name}`. {expected} Received {name}={value!r}")


@dataclass(frozen=True)
class CNNConfig:
    """Architecture, normalisation and optimiser settings of one CNN regressor.

    The model is a fully convolutional stack of ``depth`` convolutions (``depth - 1``
    hidden layers of ``width`` filters plus one linear output filter), "same" padding and
    no down-sampling, so it runs on slices of any height and width, odd or even.

    Parameters
    ----------
    region : {"lung", "body"}
        Which part of the chest the model is trained for.
    patch_size : int, optional
        Training patch side in pixels; default 32 for "lung", 64 for "body".
    depth : int
        Number of convolution layers (at least 2).
    width : int
        Filters per hidden layer.
    kernel_size : int
        Odd kernel side of every convolution.
    dilation : int or tuple of int
        Dilation rate.  An int applies to the hidden layers between the first and the
        last one (first and last stay at 1); a tuple gives one rate per layer
        (length ``depth``).
    residual : bool
        If True the network predicts a residual: ND = ULD + f(ULD) (in normalised units);
        the output layer starts at zero, so an untrained model is the identity.
    activation : str
        Activation of the hidden layers.
    batch_norm : bool
        Batch normalisation after each hidden convolution.
    normalization : {"linear", "window"}
        "linear": ``x = (hu - hu_offset) / hu_scale`` (default ``(hu + 1000) / 1000``).
        "window": clip HU to ``[window_center - window_width/2, window_center + window_width/2]``
        then scale to [0, 1].
    hu_offset, hu_scale : float
        Parameters of the "linear" normalisation.
    window_center, window_width : float
        Parameters of the "window" normalisation.
    loss : {"mse", "mae", "huber"}
        Training loss (in normalised units).
    learning_rate : float
        Adam learning rate.
    name : str
        Free-form label (used for Keras model names and logs).

    Examples
    --------
    >>> cfg = CNNConfig.for_region("lung", depth=5, width=32)
    >>> CNNConfig.from_json(cfg.to_json()) == cfg
    True
    """

    region: str = "lung"
    patch_size: int | None = None
    depth: int = 5
    width: int = 32
    kernel_size: int = 3
    dilation: int | tuple[int, ...] = 1
    residual: bool = True
    activation: str = "relu"
    batch_norm: bool = False
    normalization: str = "linear"
    hu_offset: float = -1000.0
    hu_scale: float = 1000.0
    window_center: float = -600.0
    window_width: float = 1500.0
    loss: str = "mse"
    learning_rate: float = 1e-3
    name: str = field(default="")

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise _bad("region", f"Expected one of {REGIONS}.", self.region)
        ps = self.patch_size
        if ps is None:
            ps = DEFAULT_PATCH_SIZE[self.region]
        if not _is_int(ps) or ps < 4:
            raise _bad("patch_size", "Expected an integer >= 4.", self.patch_size)
        object.__setattr__(self, "patch_size", int(ps))
        for key, minimum in (("depth", 2), ("width", 1), ("kernel_size", 1)):
            value = getattr(self, key)
            if not _is_int(value) or value < minimum:
                what = "a strictly positive value" if minimum == 1 else f"an integer >= {minimum}"
                raise _bad(key, f"Expected {what}.", value)
            object.__setattr__(self, key, int(value))
        if self.kernel_size % 2 == 0:
            raise _bad("kernel_size", "Expected an odd value (centred kernels).", self.kernel_size)
        dil = self.dilation
        if isinstance(dil, (list, tuple)):
            if len(dil) != self.depth or not all(_is_int(d) and d >= 1 for d in dil):
                raise _bad(
                    "dilation",
                    f"Expected an int >= 1 or a sequence of {self.depth} ints >= 1 (one per layer).",
                    dil,
                )
            object.__setattr__(self, "dilation", tuple(int(d) for d in dil))
        elif _is_int(dil) and dil >= 1:
            object.__setattr__(self, "dilation", int(dil))
        else:
            raise _bad("dilation", "Expected a strictly positive value.", dil)
        for key in ("residual", "batch_norm"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise _bad(key, "Expected a bool.", getattr(self, key))
            object.__setattr__(self, key, bool(getattr(self, key)))
        if self.activation not in ACTIVATIONS:
            raise _bad("activation", f"Expected one of {ACTIVATIONS}.", self.activation)
        if self.normalization not in NORMALIZATIONS:
            raise _bad("normalization", f"Expected one of {NORMALIZATIONS}.", self.normalization)
        for key in ("hu_offset", "window_center"):
            value = getattr(self, key)
            if not _is_real(value):
                raise _bad(key, "Expected a finite number.", value)
            object.__setattr__(self, key, float(value))
        for key in ("hu_scale", "window_width", "learning_rate"):
            value = getattr(self, key)
            if not _is_real(value) or value <= 0:
                raise _bad(key, "Expected a strictly positive value.", value)
            object.__setattr__(self, key, float(value))
        if self.loss not in LOSSES:
            raise _bad("loss", f"Expected one of {LOSSES}.", self.loss)
        if not isinstance(self.name, str):
            raise _bad("name", "Expected a str.", self.name)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_region(cls, region: str, **overrides: Any) -> CNNConfig:
        """Default configuration for ``region`` ("lung": 32 px patches, "body": 64 px)."""
        if region not in REGIONS:
            raise _bad("region", f"Expected one of {REGIONS}.", region)
        overrides.setdefault("name", region)
        return cls(region=region, **overrides)

    # ------------------------------------------------------------------ derived values
    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation rate of each of the ``depth`` layers."""
        if isinstance(self.dilation, tuple):
            return self.dilation
        if self.depth <= 2:
            return (1,) * self.depth
        return (1,) + (self.dilation,) * (self.depth - 2) + (1,)

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the receptive field of one output pixel."""
        return 1 + sum((self.kernel_size - 1) * d for d in self.dilations)

    @property
    def hu_per_unit(self) -> float:
        """HU per normalised unit (to report losses and RMSE in HU)."""
        return self.hu_scale if self.normalization == "linear" else self.window_width

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """HU to the network's input units (float32)."""
        hu = np.asarray(hu, dtype=np.float32)
        if self.normalization == "linear":
            return ((hu - np.float32(self.hu_offset)) / np.float32(self.hu_scale)).astype(
                np.float32, copy=False
            )
        lo = self.window_center - self.window_width / 2
        hi = self.window_center + self.window_width / 2
        return ((np.clip(hu, lo, hi) - np.float32(lo)) / np.float32(self.window_width)).astype(
            np.float32, copy=False
        )

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Network units back to HU (float32); inverse of :meth:`normalize` inside the window."""
        x = np.asarray(x, dtype=np.float32)
        if self.normalization == "linear":
            return (x * np.float32(self.hu_scale) + np.float32(self.hu_offset)).astype(
                np.float32, copy=False
            )
        lo = self.window_center - self.window_width / 2
        return (x * np.float32(self.window_width) + np.float32(lo)).astype(np.float32, copy=False)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (tuples become lists)."""
        out = dataclasses.asdict(self)
        if isinstance(out["dilation"], tuple):
            out["dilation"] = list(out["dilation"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CNNConfig:
        """Inverse of :meth:`to_dict`; refuses unknown keys."""
        if not isinstance(data, dict):
            raise ValueError(
                f"Invalid value for argument `data`. Expected a dict. Received type {type(data).__name__}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Invalid keys for CNNConfig: {unknown}. Expected a subset of {sorted(known)}."
            )
        data = dict(data)
        if isinstance(data.get("dilation"), list):
            data["dilation"] = tuple(data["dilation"])
        return cls(**data)

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> CNNConfig:
        """Parse JSON text, or read it from a file path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )
