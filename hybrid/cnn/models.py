"""Keras model builders for the lung and body CNN regressors (imports TensorFlow)."""

from __future__ import annotations

import os

import numpy as np

from hybrid.cnn._tf import keras, tf
from hybrid.cnn.config import CNNConfig

layers = keras.layers

__all__ = [
    "predict_hu",
    "build_model",
    "compile_model",
    "set_threads",
    "clear_session",
    "get_strategy",
    "HURootMeanSquaredError",
    "warm_start",
]


def clear_session() -> None:
    """Drop every Keras model and graph of this process (between independent trainings)."""
    keras.backend.clear_session()


def set_threads(n: int | None = 2) -> bool:
    """Limit TensorFlow's CPU thread pools to ``n`` threads.

    Must run before TensorFlow executes its first op; afterwards TensorFlow refuses and
    this returns False (the environment variables set here still help child processes).

    Parameters
    ----------
    n : int or None
        Threads for both intra- and inter-op pools; None leaves TensorFlow's default.

    Returns
    -------
    bool
        True if the limit took effect in this process.
    """
    if n is None:
        return False
    if int(n) < 1:
        raise ValueError(
            f"Invalid value for argument `n`. Expected a strictly positive value. Received n={n}"
        )
    n = int(n)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(n))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", str(n))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        return (
            tf.config.threading.get_intra_op_parallelism_threads() == n
            and tf.config.threading.get_inter_op_parallelism_threads() == n
        )
    return True


def get_strategy() -> tf.distribute.Strategy:
    """``MirroredStrategy`` over all visible GPUs when there are more than one, else the default."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([g.name for g in gpus])
    return tf.distribute.get_strategy()


def build_model(config: CNNConfig, *, seed: int | None = 0, dtype: str | None = None) -> keras.Model:
    """Build the fully convolutional regressor described by ``config``.

    Parameters
    ----------
    config : CNNConfig
        Architecture and normalisation.
    seed : int or None
        Seed of the weight initialisers (None: non-deterministic).
    dtype : str, optional
        Keras dtype policy of the layers, e.g. ``"mixed_bfloat16"`` (float32
        weights, bfloat16 arithmetic) for fast inference on CPUs with native
        bfloat16; None: the global policy (float32).

    Returns
    -------
    keras.Model
        Input and output of shape ``(batch, height, width, 1)`` in normalised units,
        any height and width.
    """
    if not isinstance(config, CNNConfig):
        raise ValueError(
            "Invalid value for argument `config`. Expected a hybrid.cnn.CNNConfig. "
            f"Received type {type(config).__name__}"
        )
    if config.architecture != "plain" or config.noise_input:
        from hybrid.cnn.unet import build_noise_aware_model

        return build_noise_aware_model(config, seed=seed, dtype=dtype)

    def init(i: int) -> keras.initializers.Initializer:
        return keras.initializers.HeNormal(seed=None if seed is None else seed + i)

    inputs = keras.Input(shape=(None, None, 1), name="uld")
    x = inputs
    dil = config.dilations
    for i in range(config.depth - 1):
        x = layers.Conv2D(
            config.width,
            config.kernel_size,
            padding="same",
            dilation_rate=dil[i],
            use_bias=not config.batch_norm,
            kernel_initializer=init(i),
            name=f"conv{i}",
            dtype=dtype if i > 0 else None,  # the input itself at full precision
        )(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"bn{i}", dtype=dtype)(x)
        x = layers.Activation(config.activation, name=f"act{i}", dtype=dtype)(x)
    last_init = "zeros" if config.residual else init(config.depth)
    x = layers.Conv2D(
        1,
        config.kernel_size,
        padding="same",
        dilation_rate=dil[-1],
        kernel_initializer=last_init,
        name="residual" if config.residual else "output",
        dtype=dtype,
    )(x)
    if config.residual:
        x = layers.Add(name="nd")([inputs, x])
    name = f"hybrid_cnn_{config.name or config.region}".replace(" ", "_")
    return keras.Model(inputs, x, name=name)


class HURootMeanSquaredError(keras.metrics.RootMeanSquaredError):
    """Root mean squared error reported in HU (normalised RMSE times ``hu_per_unit``)."""

    def __init__(self, hu_per_unit: float = 1000.0, name: str = "rmse_hu", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.hu_per_unit = float(hu_per_unit)

    def result(self):
        return super().result() * self.hu_per_unit

    def get_config(self):
        return {**super().get_config(), "hu_per_unit": self.hu_per_unit}


def compile_model(model: keras.Model, config: CNNConfig) -> keras.Model:
    """Compile ``model`` with Adam, the configured loss and an RMSE-in-HU metric."""
    loss = {
        "mse": "mean_squared_error",
        "mae": "mean_absolute_error",
        "huber": keras.losses.Huber(delta=0.05),
    }[config.loss]
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=loss,
        metrics=[HURootMeanSquaredError(config.hu_per_unit)],
    )
    return model


def predict_hu(model, config: CNNConfig, slices, *, fn=None, noise=None):
    """Run ``model`` on a stack of whole slices in HU and return its estimate in HU.

    Parameters
    ----------
    model : keras.Model
        Model built from ``config``.
    config : CNNConfig
        Its configuration (normalisation, residual).
    slices : ndarray (N, Y, X) float32 HU
        One batch of slices, any Y and X.
    fn : callable, optional
        Compiled forward function (e.g. a ``tf.function``) to use instead of ``model``.
    noise : ndarray (N, Y, X, 2) or (N, 2) float32, optional
        The noise maps of a ``noise_input`` model (:data:`hybrid.cnn.config.NOISE_CHANNELS`,
        or one value per slice and channel); required for such a model, refused otherwise.

    Returns
    -------
    ndarray (N, Y, X) float32 HU
        For residual models the predicted residual is added to the input in HU, which is
        exact also outside a clipping window.
    """
    slices = np.asarray(slices, dtype=np.float32)
    x = config.normalize(slices)
    if config.architecture != "plain" or config.noise_input:
        from hybrid.cnn.unet import forward_padded

        y = forward_padded(model, config, x, noise=noise, fn=fn)
    else:
        if noise is not None:
            raise ValueError("Expected noise=None for a model without noise_input; received maps.")
        forward = fn if fn is not None else (lambda t: model(t, training=False))
        y = np.asarray(forward(tf.convert_to_tensor(x[..., None])))[..., 0]
    if config.residual:
        return slices + (y - x) * np.float32(config.hu_per_unit)
    return config.denormalize(y)


def warm_start(model: keras.Model, source: keras.Model) -> list[str]:
    """Copy a trained plain model's weights into a noise-aware model of the same layers.

    Every layer of ``model`` with weights takes the weights of ``source``'s layer of the same
    name.  Where ``model``'s first layer has more input channels (the noise maps of
    :data:`~hybrid.cnn.config.NOISE_CHANNELS` after the image), the image channel takes the
    source's kernel and the extra channels start at zero: the warm-started model computes
    exactly what ``source`` computes, whatever the noise maps, until training moves them.

    Returns the names of the layers copied.  Raises ValueError where a layer is missing
    from ``source`` or its weights do not fit (another depth, width or kernel size).
    """
    copied = []
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        try:
            theirs = source.get_layer(layer.name).get_weights()
        except ValueError as exc:
            raise ValueError(f"Cannot warm-start layer {layer.name!r}: the source model "
                             f"{source.name!r} has no layer of that name.") from exc
        new = []
        for mine, other in zip(weights, theirs):
            if mine.shape == other.shape:
                new.append(other)
            elif (mine.ndim == 4 and mine.shape[:2] == other.shape[:2]
                  and mine.shape[3] == other.shape[3] and mine.shape[2] > other.shape[2]):
                grown = np.zeros_like(mine)
                grown[:, :, : other.shape[2], :] = other
                new.append(grown)
            else:
                raise ValueError(f"Cannot warm-start layer {layer.name!r}: weights of shape "
                                 f"{other.shape} in {source.name!r}, {mine.shape} here. Use a "
                                 "source of the same depth, width and kernel size.")
        if len(new) != len(weights):
            raise ValueError(f"Cannot warm-start layer {layer.name!r}: {len(theirs)} weight "
                             f"arrays in {source.name!r}, {len(weights)} here.")
        layer.set_weights(new)
        copied.append(layer.name)
    return copied
