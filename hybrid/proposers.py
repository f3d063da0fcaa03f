"""Every proposer by name: the shipped CNN pair, the patch dictionary and the baselines.

``make("cnn")`` loads the lung/body CNN pair, ``make("dictionary")`` the patch
dictionary, each from ``path`` (default: the shipped ``hybrid/assets``) with the
given settings; ``make("nlm", h=0.8)`` a baseline.  TensorFlow and FAISS are
imported only when a learned one is made.  Each follows the one contract of
:mod:`hybrid.proposal`; ``tests/test_proposers.py`` runs the same contract tests
over every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hybrid.baselines import BASELINES

__all__ = ["REGISTRY", "registered", "make", "load_cnn", "load_dictionary"]


def load_cnn(path: Any = None, **settings: Any):
    """The CNN pair saved at ``path`` (default: the shipped one) with ``settings``."""
    from hybrid.artifacts import default_asset_paths
    from hybrid.cnn.infer import CNNPair

    return CNNPair.load(path or default_asset_paths()["cnn"], **settings)


def load_dictionary(path: Any = None, **settings: Any):
    """The patch dictionary saved at ``path`` (default: the shipped one) with ``settings``."""
    from hybrid.artifacts import default_asset_paths
    from hybrid.dictionary import PatchDictionary

    return PatchDictionary.load(path or default_asset_paths()["dictionary"]).with_settings(**settings)


#: name -> factory (constructor keywords = the proposer's settings)
REGISTRY: dict[str, Callable[..., Any]] = {"cnn": load_cnn, "dictionary": load_dictionary,
                                           **BASELINES}


def registered() -> tuple[str, ...]:
    """Names of every registered proposer, sorted."""
    return tuple(sorted(REGISTRY))


def make(name: str, **settings: Any):
    """A proposer by its registered name, with constructor ``settings``."""
    if name not in REGISTRY:
        raise ValueError(
            f"Invalid proposer name. Expected one of {sorted(REGISTRY)}. Received {name!r}."
        )
    return REGISTRY[name](**settings)
