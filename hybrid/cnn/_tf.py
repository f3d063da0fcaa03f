"""The one place hybrid imports TensorFlow and Keras: quietly (see :mod:`hybrid._logs`).

Every module of :mod:`hybrid.cnn` takes ``tf`` and ``keras`` from here.
"""

from __future__ import annotations

from hybrid._logs import quiet_tensorflow, silenced_stderr

quiet_tensorflow()
with silenced_stderr():
    import keras
    import tensorflow as tf

__all__ = ["keras", "tf"]
