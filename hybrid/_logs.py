"""Quiet by default: the libraries' own logs only with ``hybrid --verbose``.

TensorFlow's C++ runtime writes to stderr as soon as it is imported: oneDNN, the CPU
instruction sets, "Could not find cuda drivers", "failed call to cuInit: ... ERROR
(303)" on a machine without a GPU, absl's "All log messages before
absl::InitializeLog()".  Dask's scheduler and nanny log every worker they start and stop
at INFO.  None of it is hybrid's, and a radiographer who reads "ERROR" stops.

* :func:`quiet_tensorflow` sets ``TF_CPP_MIN_LOG_LEVEL=3`` (fatal only; a value the
  user set is kept) and lowers the ``tensorflow`` and ``absl`` Python loggers to errors.
  :mod:`hybrid.cnn._tf`, the one module that imports TensorFlow and Keras, calls it
  right before that import and nowhere else: importing hybrid changes no environment
  variable until TensorFlow is actually loaded.  The lines XLA prints while TensorFlow
  loads ignore that level, so the import runs inside :func:`silenced_stderr`.
* :func:`quiet_loggers` lowers other libraries' loggers (``distributed`` in
  :mod:`hybrid.batch`, ``pynetdicom`` in :mod:`hybrid.serve`) to warnings.

``HYBRID_VERBOSE=1`` (what ``hybrid --verbose`` sets, :func:`set_verbose`, before any
model loads; worker processes inherit it) leaves every level as the libraries have it. A
``TF_CPP_MIN_LOG_LEVEL`` the user set is kept either way.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["VERBOSE_ENV", "verbose", "set_verbose", "quiet_tensorflow", "quiet_loggers",
           "silenced_stderr"]

#: Environment variable that keeps the libraries' own log levels (``hybrid --verbose``).
VERBOSE_ENV = "HYBRID_VERBOSE"
_TF_LOGGERS = ("tensorflow", "absl")
_SET_BY_US = False  # whether quiet_tensorflow() set TF_CPP_MIN_LOG_LEVEL (undone by set_verbose)


def verbose() -> bool:
    """True where ``$HYBRID_VERBOSE`` asks for the libraries' own logs."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_tensorflow() -> None:
    """Silence TensorFlow's start-up logs unless :func:`verbose` (idempotent; no effect on a
    TensorFlow already imported, whose C++ level is read at import)."""
    global _SET_BY_US
    if verbose():
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        _SET_BY_US = True
    quiet_loggers(*_TF_LOGGERS, level=logging.ERROR)


def quiet_loggers(*names: str, level: int = logging.WARNING) -> None:
    """Lower the named libraries' loggers to ``level`` unless :func:`verbose`."""
    if verbose():
        return
    for name in names:
        logging.getLogger(name).setLevel(level)


def set_verbose(on: bool) -> None:
    """``hybrid --verbose``: keep (on) or silence (off) the libraries' logs, in this process
    and the worker processes it starts (through ``$HYBRID_VERBOSE``).  Call it before a
    model loads: TensorFlow reads its C++ level once, at import."""
    global _SET_BY_US
    if not on:
        os.environ.pop(VERBOSE_ENV, None)
        quiet_tensorflow()
        return
    os.environ[VERBOSE_ENV] = "1"
    if _SET_BY_US:  # undo what quiet_tensorflow() did, and only that
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
        _SET_BY_US = False
    for name in _TF_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


@contextmanager
def silenced_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the duration, unless :func:`verbose`.

    Python exceptions are not affected (they are raised, and printed, after the
    descriptor is restored); what another thread writes to stderr in those seconds is lost.
    """
    if verbose():
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to do
        yield
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
