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

__all__ = [
    "CNNConfig", "REGIONS", "NORMALIZATIONS", "LOSSES", "DEFAULT_PATCH_SIZE", "ARCHITECTURES",
    "NOISE_CHANNELS",
]

REGIONS = ("lung", "body")
NORMALIZATIONS = ("linear", "window")
LOSSES = ("mse", "mae", "huber")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "swish", "tanh")
DEFAULT_PATCH_SIZE = {"lung": 32, "body": 64}
ARCHITECTURES = ("plain", "unet", "shuffle")
#: The channels of a noise-aware model's second input, in order (see :mod:`hybrid.cnn.noise`):
#: the noise level ``sigma_hu / noise_ref_hu`` and the noise texture ratio.
NOISE_CHANNELS = ("sigma", "texture")


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
    architecture : {"plain", "unet", "shuffle"}
        "plain" (default, the shipped pair): the stack described above.  "shuffle"
        (FFDNet, Zhang et al. 2018): the same stack at half resolution, on the four
        2x2 sub-images of the input (pixel unshuffle) and the noise maps averaged over
        2x2; its last layer makes four residual sub-images, shuffled back to full
        resolution.  A quarter of the positions: about 4x less arithmetic than "plain"
        of the same width and depth, twice its receptive field.  "unet": a
        U-Net of ``scales`` resolutions (average-pool down, nearest up-sampling, skip
        concatenations), ``depth`` convolutions per scale of ``width * (1 + l / 2)``
        filters at scale ``l``, and at the coarsest scale one convolution per
        ``bottleneck_dilations`` rate (the cheap way to a large receptive field).
        Its input sides are padded to a multiple of ``2 ** (scales - 1)``.
    noise_input : bool
        A second input of :data:`NOISE_CHANNELS` maps (noise level over
        ``noise_ref_hu`` and noise texture, :func:`hybrid.cnn.noise.estimate_noise`),
        concatenated to the image (FFDNet-style conditioning).  Default False.
    scales : int
        Resolutions of the U-Net (>= 2).
    bottleneck_dilations : tuple of int
        Dilation rates of the U-Net's coarsest-scale convolutions.
    noise_ref_hu : float
        Noise level that maps to 1 in the noise-level channel.

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
    architecture: str = "plain"
    noise_input: bool = False
    scales: int = 3
    bottleneck_dilations: tuple[int, ...] = (1, 2, 4, 8)
    noise_ref_hu: float = 100.0

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
        self._check_unet_fields()

    def _check_unet_fields(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise _bad("architecture", f"Expected one of {ARCHITECTURES}.", self.architecture)
        if not isinstance(self.noise_input, (bool, np.bool_)):
            raise _bad("noise_input", "Expected a bool.", self.noise_input)
        object.__setattr__(self, "noise_input", bool(self.noise_input))
        if not _is_int(self.scales) or self.scales < 2:
            raise _bad("scales", "Expected an integer >= 2.", self.scales)
        object.__setattr__(self, "scales", int(self.scales))
        dil = self.bottleneck_dilations
        if not isinstance(dil, (list, tuple)) or not dil or not all(
            _is_int(d) and d >= 1 for d in dil
        ):
            raise _bad("bottleneck_dilations", "Expected a non-empty sequence of ints >= 1.", dil)
        object.__setattr__(self, "bottleneck_dilations", tuple(int(d) for d in dil))
        if not _is_real(self.noise_ref_hu) or self.noise_ref_hu <= 0:
            raise _bad("noise_ref_hu", "Expected a strictly positive value.", self.noise_ref_hu)
        object.__setattr__(self, "noise_ref_hu", float(self.noise_ref_hu))

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
        """Side in pixels of the receptive field of one output pixel (an upper bound for
        "unet": down- and up-sampling add at most one coarse pixel per scale)."""
        k = self.kernel_size - 1
        if self.architecture == "plain":
            return 1 + sum(k * d for d in self.dilations)
        if self.architecture == "shuffle":  # half-resolution stack, 2x2 blocks in and out
            return 2 * (1 + sum(k * d for d in self.dilations)) + 2
        coarse = 2 ** (self.scales - 1)
        levels = sum(2 * self.depth * k * 2**lev + 2 * 2**lev for lev in range(self.scales - 1))
        return 1 + k + levels + sum(k * d * coarse for d in self.bottleneck_dilations)

    @property
    def size_multiple(self) -> int:
        """Input sides must be a multiple of this (inputs are padded to it): 1 for "plain"."""
        if self.architecture == "shuffle":
            return 2
        return 2 ** (self.scales - 1) if self.architecture == "unet" else 1

    def scale_widths(self) -> tuple[int, ...]:
        """Filters of the U-Net's convolutions at each scale, finest first."""
        return tuple(self.width + (self.width * lev) // 2 for lev in range(self.scales))

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
        out["bottleneck_dilations"] = list(out["bottleneck_dilations"])
        if self.architecture == "plain" and not self.noise_input and self._unet_defaults():
            for key in _UNET_FIELDS:  # the shipped configs' JSON, unchanged
                del out[key]
        return out

    def _unet_defaults(self) -> bool:
        return all(getattr(self, k) == _DEFAULTS[k] for k in _UNET_FIELDS if k not in
                   ("architecture", "noise_input"))

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
        for key in ("dilation", "bottleneck_dilations"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
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


#: Fields added with the U-Net (absent from the shipped configs' JSON).
_UNET_FIELDS = ("architecture", "noise_input", "scales", "bottleneck_dilations", "noise_ref_hu")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(CNNConfig)}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )
