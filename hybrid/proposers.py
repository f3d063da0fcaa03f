"""Registry entries of the learned proposers: the shipped CNN pair and patch dictionary.

``hybrid.proposal.make("cnn")`` loads the lung/body CNN pair, ``make("dictionary")`` the
patch dictionary, each from ``path`` (default: the shipped ``hybrid/assets``) with the
given settings.  TensorFlow and FAISS are imported only when one is made.
"""

from __future__ import annotations

from typing import Any

from hybrid.proposal import register

__all__ = ["load_cnn", "load_dictionary"]


@register("cnn")
def load_cnn(path: Any = None, **settings: Any):
    """The CNN pair saved at ``path`` (default: the shipped one) with ``settings``."""
    from hybrid.artifacts import default_asset_paths
    from hybrid.cnn.infer import CNNPair

    return CNNPair.load(path or default_asset_paths()["cnn"], **settings)


@register("dictionary")
def load_dictionary(path: Any = None, **settings: Any):
    """The patch dictionary saved at ``path`` (default: the shipped one) with ``settings``."""
    from hybrid.artifacts import default_asset_paths
    from hybrid.dictionary import PatchDictionary

    return PatchDictionary.load(path or default_asset_paths()["dictionary"]).with_settings(**settings)
