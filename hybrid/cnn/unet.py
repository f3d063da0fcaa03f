"""The noise-aware U-Net regressor (imports TensorFlow).

Built by :func:`hybrid.cnn.models.build_model` for ``CNNConfig(architecture="unet")`` or
``noise_input=True``.  Layout for ``scales=3``, ``depth=2``, ``width=24`` (the
``noise_aware.json`` models)::

    uld (1) [+ noise maps (2)] -> 2 x conv 24 ----------------------------- concat -> 2 x conv 24 -> residual (1) + uld
                                   avg-pool 2                                 up 2
                                   2 x conv 36 -------------- concat -> 2 x conv 36
                                   avg-pool 2                   up 2
                                   conv 48 at dilations 1, 2, 4, 8

Receptive field: :attr:`CNNConfig.receptive_field` (153 px for that layout; the
impulse response is measured in ``tests/test_noise_aware.py``).  Down-sampling makes
the network shift-equivariant only by multiples of ``2 ** (scales - 1)`` pixels, so
inputs are zero-padded (air, in the linear normalisation) at their bottom/right to
such a multiple and crops for it must start on that grid
(:attr:`CNNConfig.size_multiple`).
"""

from __future__ import annotations

import numpy as np

from hybrid.cnn._tf import keras, tf
from hybrid.cnn.config import NOISE_CHANNELS, CNNConfig

layers = keras.layers

__all__ = ["build_noise_aware_model", "forward_padded", "model_inputs"]


def build_noise_aware_model(
    config: CNNConfig, *, seed: int | None = 0, dtype: str | None = None
) -> keras.Model:
    """The U-Net (or, for ``architecture="plain"`` / ``"shuffle"``, the plain stack at full /
    half resolution) with a noise-map input.

    Returns a model with inputs ``uld`` ``(batch, Y, X, 1)`` and, if ``config.noise_input``,
    ``noise`` ``(batch, Y, X, 2)``; output ``(batch, Y, X, 1)`` in normalised units.  The
    last layer is named "residual" and starts at zero (an untrained model is the identity).
    """
    counter = iter(range(10_000))

    def conv(x, filters, *, dilation=1, name, first=False):
        i = next(counter)
        init = keras.initializers.HeNormal(seed=None if seed is None else seed + i)
        x = layers.Conv2D(filters, config.kernel_size, padding="same", dilation_rate=dilation,
                          use_bias=not config.batch_norm, kernel_initializer=init, name=name,
                          dtype=None if first else dtype)(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn", dtype=dtype)(x)
        return layers.Activation(config.activation, name=f"{name}_act", dtype=dtype)(x)

    uld = keras.Input(shape=(None, None, 1), name="uld")
    inputs = [uld]
    # "shuffle" (FFDNet's layout): the plain stack at half resolution on the 2x2 sub-images
    shuffle = config.architecture == "shuffle"
    x = PixelUnshuffle(name="unshuffle")(uld) if shuffle else uld
    if config.noise_input:
        noise = keras.Input(shape=(None, None, len(NOISE_CHANNELS)), name="noise")
        inputs.append(noise)
        maps = layers.AveragePooling2D(2, name="noise_half")(noise) if shuffle else noise
        x = layers.Concatenate(name="with_noise")([x, maps])
    if config.architecture in ("plain", "shuffle"):
        for i in range(config.depth - 1):
            x = conv(x, config.width, dilation=config.dilations[i], name=f"conv{i}", first=i == 0)
    else:
        x = _unet_body(x, config, conv, dtype)
    out = layers.Conv2D(4 if shuffle else 1, config.kernel_size, padding="same",
                        dilation_rate=config.dilations[-1] if shuffle else 1,
                        kernel_initializer="zeros",
                        name="residual_half" if shuffle else "residual", dtype=dtype)(x)
    if shuffle:  # the four residual sub-images back to full resolution
        out = PixelShuffle(name="residual", dtype=dtype)(out)
    if config.residual:
        out = layers.Add(name="nd")([uld, out])
    name = f"hybrid_cnn_{config.name or config.region}".replace(" ", "_")
    return keras.Model(inputs, out, name=name)


class PixelUnshuffle(layers.Layer):
    """(N, Y, X, C) -> (N, Y/2, X/2, 4C): each 2x2 block becomes four channels."""

    def call(self, x):
        return tf.nn.space_to_depth(x, 2)


class PixelShuffle(layers.Layer):
    """(N, Y, X, 4C) -> (N, 2Y, 2X, C): the inverse of :class:`PixelUnshuffle`."""

    def call(self, x):
        return tf.nn.depth_to_space(x, 2)


def _unet_body(x, config: CNNConfig, conv, dtype):
    widths = config.scale_widths()
    skips = []
    for lev in range(config.scales - 1):
        for j in range(config.depth):
            x = conv(x, widths[lev], name=f"enc{lev}_{j}", first=lev == 0 and j == 0)
        skips.append(x)
        x = layers.AveragePooling2D(2, name=f"down{lev}", dtype=dtype)(x)
    for j, d in enumerate(config.bottleneck_dilations):
        x = conv(x, widths[-1], dilation=d, name=f"mid_{j}")
    for lev in reversed(range(config.scales - 1)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{lev}", dtype=dtype)(x)
        x = layers.Concatenate(name=f"skip{lev}", dtype=dtype)([x, skips[lev]])
        for j in range(config.depth):
            x = conv(x, widths[lev], name=f"dec{lev}_{j}")
    return x


def model_inputs(config: CNNConfig, x: np.ndarray, noise: np.ndarray | None):
    """The model's inputs for normalised slices ``x`` (N, Y, X) and per-slice or per-pixel
    ``noise`` maps, padded to :attr:`CNNConfig.size_multiple`; also the padding."""
    m = config.size_multiple
    n, h, w = x.shape
    ph, pw = (-h) % m, (-w) % m
    xp = np.pad(x, ((0, 0), (0, ph), (0, pw)))[..., None] if ph or pw else x[..., None]
    if not config.noise_input:
        if noise is not None:
            raise ValueError("Expected noise=None for a model without noise_input; received maps.")
        return [xp], (ph, pw)
    if noise is None:
        raise ValueError(
            "Expected the noise maps of this noise-aware model (noise=(N, 2) per slice or "
            "(N, Y, X, 2)); received None. Use hybrid.cnn.noise.estimate_noise, or CNNPair.")
    noise = np.asarray(noise, dtype=np.float32)
    c = len(NOISE_CHANNELS)
    if noise.shape == (n, c):
        maps = np.broadcast_to(noise[:, None, None, :], (n, h + ph, w + pw, c))
    elif noise.shape == (n, h, w, c):
        maps = np.pad(noise, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    else:
        raise ValueError(f"Expected noise of shape {(n, c)} or {(n, h, w, c)}; received "
                         f"{noise.shape}.")
    return [xp, np.ascontiguousarray(maps)], (ph, pw)


def forward_padded(model, config: CNNConfig, x: np.ndarray, *, noise=None, fn=None) -> np.ndarray:
    """Run a U-Net / noise-aware model on normalised slices ``x`` (N, Y, X); returns (N, Y, X)."""
    inputs, _ = model_inputs(config, x, noise)
    tensors = [tf.convert_to_tensor(t) for t in inputs]
    y = fn(*tensors) if fn is not None else model(tensors, training=False)
    return np.asarray(y)[:, : x.shape[1], : x.shape[2], 0]
