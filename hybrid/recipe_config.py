"""The recipe's settings: the split (who sees which patient) and the config files.

:func:`load_split` reads ``experiments/splits.json`` into a :class:`Split`;
:func:`load_config` reads ``experiments/configs/<name>.json`` into a
:class:`RecipeConfig` of three stages (:class:`CNNStage`, :class:`DictionaryStage`,
:class:`BlenderStage`).  The files are the only source of the settings: these classes
have no defaults, and unknown or missing keys are refused with the key names.
:mod:`hybrid.recipe` runs the stages with them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hybrid._paths import EXPERIMENTS_DIR

__all__ = [
    "STAGES", "REGIONS", "Split", "load_split", "CNNStage", "DictionaryStage", "BlenderStage",
    "RecipeConfig", "load_config", "config_sections", "cnn_configs",
]

#: The stages of the recipe, in the order they run.
STAGES = ("cnn", "dictionary", "blender")
#: The CNN pair's regions.
REGIONS = ("lung", "body")
#: Where the split and the configs live: the repository's ``experiments/`` folder (absent
#: from an installed package: pass explicit paths there).
SPLITS_FILE = EXPERIMENTS_DIR / "splits.json"
CONFIGS_DIR = EXPERIMENTS_DIR / "configs"
_PRECISIONS = ("auto", "float32", "bfloat16")


# ---------------------------------------------------------------- reading the files
def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(
            f"Expected the {what} at {path}; it is not there (it ships with the repository's "
            "experiments/ folder, not with an installed package). Pass its path explicitly.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"Expected JSON in the {what} {path}; received invalid JSON ({e}).") from e


def _strict(data: Any, cls: type, where: str, *, optional: Sequence[str] = ()) -> dict[str, Any]:
    """``data`` as a dict holding exactly the fields of ``cls`` (``optional`` may be missing)."""
    known = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(data, Mapping):
        raise ValueError(f"Expected a JSON object for {where} (keys {known}); received "
                         f"{type(data).__name__}.")
    unknown = sorted(set(data) - set(known))
    missing = [k for k in known if k not in data and k not in optional]
    if unknown or missing:
        raise ValueError(
            f"Expected the keys {known} in {where}; received unknown keys {unknown} and missing "
            f"keys {missing}. Fix the config file (experiments/configs/*.json lists every key).")
    return dict(data)


# ---------------------------------------------------------------- the split
@dataclasses.dataclass(frozen=True)
class Split:
    """Which patients each stage of the recipe may see (see the module docstring's table).

    Parameters
    ----------
    held_out : mapping of kind -> patient ids, or sequence of patient ids
        Never seen by any stage (the held-out report's patients).  A sequence is
        stored as ``{"all": ...}``.
    calibration : sequence of str
        Calibrate the blender and monitor the CNN; never in the dictionary.
    search_unused : sequence of str
        Also kept out of the CNN variant search (``experiments/search.py``), besides the
        held-out patients.
    search_validation : sequence of str
        The CNN variant search's validation patients (it trains on the rest).
    """

    held_out: Mapping[str, tuple[str, ...]]
    calibration: tuple[str, ...]
    search_unused: tuple[str, ...] = ()
    search_validation: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        held = self.held_out
        if isinstance(held, str) or not isinstance(held, (Mapping, Sequence)):
            raise ValueError("Invalid value for argument `held_out`. Expected a mapping of kind -> "
                             f"patient ids or a sequence of patient ids. Received {held!r}.")
        held = dict(held) if isinstance(held, Mapping) else {"all": held}
        object.__setattr__(self, "held_out", {k: _ids(v, "held_out") for k, v in held.items()})
        object.__setattr__(self, "calibration", _ids(self.calibration, "calibration"))
        object.__setattr__(self, "search_unused", _ids(self.search_unused, "search_unused"))
        object.__setattr__(self, "search_validation",
                           _ids(self.search_validation, "search_validation"))
        both = sorted(set(self.held_out_patients) & set(self.calibration))
        if both:
            raise ValueError(f"Expected disjoint held-out and calibration patients; {both} are in "
                             "both. Fix experiments/splits.json.")

    @property
    def held_out_patients(self) -> tuple[str, ...]:
        """Every held-out patient id, kinds in file order."""
        return tuple(p for ids in self.held_out.values() for p in ids)

    @property
    def search_excluded(self) -> tuple[str, ...]:
        """Patients the CNN variant search never uses: the held-out and ``search_unused`` ones."""
        return tuple(dict.fromkeys(self.search_unused + self.held_out_patients))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the layout of ``experiments/splits.json``)."""
        return {"held_out": {k: list(v) for k, v in self.held_out.items()},
                "calibration": list(self.calibration), "search_unused": list(self.search_unused),
                "search_validation": list(self.search_validation)}


def _ids(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"Invalid value for `{name}`. Expected a list of patient ids (strings). "
                         f"Received {value!r}.")
    return tuple(value)


def load_split(path: str | os.PathLike | None = None) -> Split:
    """The split of the shipped models: ``experiments/splits.json`` (or ``path``).

    Raises
    ------
    FileNotFoundError
        Where the file is absent (e.g. an installed package without the repository).
    ValueError
        Where it has other keys than :class:`Split`'s (plus ``description``).
    """
    p = Path(path) if path is not None else SPLITS_FILE
    data = _read_json(p, "split file")
    data = {k: v for k, v in data.items() if k != "description"} if isinstance(data, dict) else data
    return Split(**_strict(data, Split, f"the split file {p}", optional=("search_unused", "search_validation")))


# ---------------------------------------------------------------- the config
@dataclasses.dataclass(frozen=True)
class CNNStage:
    """How the CNN pair is trained (:func:`hybrid.cnn.train.train_model` per region).

    Parameters
    ----------
    lung, body : dict or None
        :class:`hybrid.cnn.config.CNNConfig` dicts; None: the shipped pair's
        (``hybrid/assets/cnn/<region>.config.json``).
    patch_sizes : (int, int) or None
        Replace the (lung, body) patch sizes (images too small for them, tests).
    budget : dict
        Per region ``{"epochs", "steps_per_epoch", "batch_size"}``.
    patience : int or None
        Early-stopping patience in epochs; None: ``max(3, epochs)`` (never stops early).
    reduce_lr_patience : int or None
        Halve the learning rate after this many epochs without a better monitor loss.
    val_slices : int
        Whole monitor slices scored after training (``TrainResult.val_slice_rmse_hu``).
    precision : {"auto", "float32", "bfloat16"}
        Training arithmetic; "auto": mixed bfloat16 where the CPU has it natively.
    noise : dict or None
        Optional.  None (the shipped recipe): :func:`hybrid.cnn.train.train_model` on each
        case's two doses.  A dict: noise-aware models (``noise_input``) trained by
        :func:`hybrid.cnn.resumable.train_noise_aware_regions` on multi-dose, multi-kernel
        patches, with checkpoints under ``work`` (``resume``).
    lung_warm_start : dict or None
        Optional.  ``{"min_lung_fraction": f, "seed": s}``: the lung model starts from the
        body model's weights (trained first), on lung patches of >= ``f`` lung pixels and
        their surroundings, patch seed ``s``.  None: from seeded random weights.
    """

    lung: dict | None
    body: dict | None
    patch_sizes: tuple[int, int] | None
    budget: dict[str, dict[str, int]]
    patience: int | None
    reduce_lr_patience: int | None
    val_slices: int
    precision: str
    noise: dict | None = None
    lung_warm_start: dict | None = None

    def __post_init__(self) -> None:
        if self.lung_warm_start is not None:
            w = self.lung_warm_start
            ok = isinstance(w, Mapping) and set(w) == {"min_lung_fraction", "seed"}
            if not ok or not (isinstance(w["min_lung_fraction"], (int, float)) and 0 < w[
                    "min_lung_fraction"] <= 1 and isinstance(w["seed"], int) and not self.noise):
                raise ValueError("Invalid value for `cnn.lung_warm_start`. Expected {'min_lung_"
                                 "fraction': a fraction in (0, 1], 'seed': an int}, without "
                                 f"`cnn.noise`. Received {w!r} (cnn.noise {self.noise!r}).")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"Invalid value for `cnn.precision`. Expected one of {_PRECISIONS}. "
                             f"Received {self.precision!r}.")
        keys = {"epochs", "steps_per_epoch", "batch_size"}
        if not isinstance(self.budget, Mapping) or set(self.budget) != set(REGIONS) or any(
                not isinstance(b, Mapping) or set(b) != keys for b in self.budget.values()):
            raise ValueError(f"Invalid value for `cnn.budget`. Expected {{region: {sorted(keys)}}} "
                             f"for the regions {REGIONS}. Received {self.budget!r}.")
        if self.patch_sizes is not None:
            object.__setattr__(self, "patch_sizes", tuple(int(v) for v in self.patch_sizes))


@dataclasses.dataclass(frozen=True)
class DictionaryStage:
    """How the dictionary is built: ``config`` are :class:`hybrid.dictionary.DictionaryConfig`
    settings (its ``seed`` is the recipe's); ``include_aug`` adds each case's other dose."""

    config: dict
    include_aug: bool


@dataclasses.dataclass(frozen=True)
class BlenderStage:
    """How the blender is calibrated (:mod:`hybrid.calibration`): the dictionary's query
    ``stride`` (N or (Y, X)), each case's other dose (``include_aug``) and sharp variants;
    optionally (``input_rule``: ``{"doses": [...], "slices_per_case": N}``, and
    ``"thickness_reference_mm"`` to read the noise ratio at that slice thickness:
    :func:`hybrid.cnn.noise.thickness_factor`) the rule that gives the input back where
    it is not noisy, calibrated at those doses on the calibration patients and, with
    ``"patients": [...]``, on those training patients too (a held-out one, e.g. a CV
    fold's test patient, is left out); optionally
    (``noise_aware``: "shipped" for ``hybrid/assets/cnn_noise_aware``, or a saved pair's
    folder) a noise-aware CNN pair the blender weighs against the CNN pair by the noise
    ratio, at the input rule's doses (:func:`hybrid.calibration.noise_aware_rule`)."""

    stride: int | tuple[int, int]
    include_aug: bool
    sharp_variants: bool
    input_rule: dict | None = None
    noise_aware: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stride, (list, tuple)):
            object.__setattr__(self, "stride", tuple(int(v) for v in self.stride))
        if self.input_rule is not None:
            keys, need = set(self.input_rule), {"doses", "slices_per_case"}
            allowed = need | {"thickness_reference_mm", "patients"}
            if not need <= keys <= allowed:
                raise ValueError(f"Invalid `blender.input_rule` keys {sorted(keys)}. Expected "
                                 f"{sorted(need)} and optionally {sorted(allowed - need)}.")
            if "patients" in self.input_rule:
                _ids(self.input_rule["patients"], "blender.input_rule.patients")
            ref = self.input_rule.get("thickness_reference_mm")
            if ref is not None and not (isinstance(ref, (int, float)) and ref > 0):
                raise ValueError("Invalid `blender.input_rule.thickness_reference_mm`. Expected "
                                 f"a positive slice thickness in mm; received {ref!r}.")


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """Every setting of the recipe; read it with :func:`load_config`."""

    seed: int
    cnn: CNNStage
    dictionary: DictionaryStage
    blender: BlenderStage

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "the recipe config") -> RecipeConfig:
        """Inverse of :meth:`to_dict`; refuses unknown and missing keys."""
        d = _strict(data, cls, where)
        parts = {"cnn": CNNStage, "dictionary": DictionaryStage, "blender": BlenderStage}
        for name, part in parts.items():
            d[name] = part(**_strict(d[name], part, f"{where}, section {name!r}",
                                     optional={"cnn": ("noise", "lung_warm_start"),
                                               "blender": ("input_rule", "noise_aware")}.get(name, ())))
        from hybrid.cnn.config import CNNConfig  # light: no TensorFlow

        for region in REGIONS:  # fail at load, not after an hour of training
            cfg = getattr(d["cnn"], region)
            if cfg is not None:
                try:
                    CNNConfig.from_dict(dict(cfg))
                except (TypeError, ValueError) as e:
                    raise ValueError(f"Invalid `cnn.{region}` in {where}: {e}") from e
        if d["cnn"].lung_warm_start is not None:
            _check_warm_start(d["cnn"], where)
        from hybrid.dictionary import DictionaryConfig  # light: FAISS loads when used

        known = {f.name for f in dataclasses.fields(DictionaryConfig)} - {"seed"}
        unknown = sorted(set(d["dictionary"].config) - known)
        if unknown:
            raise ValueError(f"Invalid keys {unknown} in `dictionary.config` of {where}. Expected "
                             f"a subset of {sorted(known)} (the seed is the recipe's `seed`).")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the ``recipe`` section of a config file)."""
        out = json.loads(json.dumps(dataclasses.asdict(self)))
        for key in ("noise", "lung_warm_start"):
            if out["cnn"][key] is None:
                del out["cnn"][key]  # the files without it, unchanged
        for key in ("input_rule", "noise_aware"):
            if out["blender"][key] is None:
                del out["blender"][key]
        return out

    def with_cnn(self, **changes: Any) -> RecipeConfig:
        """A copy with other :class:`CNNStage` settings."""
        return dataclasses.replace(self, cnn=dataclasses.replace(self.cnn, **changes))

    def with_budget(self, **changes: int | None) -> RecipeConfig:
        """A copy with ``epochs`` / ``steps_per_epoch`` / ``batch_size`` replaced for both
        regions (None values are ignored)."""
        changes = {k: int(v) for k, v in changes.items() if v is not None}
        budget = {r: {**b, **changes} for r, b in self.cnn.budget.items()}
        return self.with_cnn(budget=budget)


def _check_warm_start(stage: CNNStage, where: str) -> None:
    """A lung model warm-started from the body model needs the body model's architecture
    (a region's config None: the shipped pair's)."""
    configs = {k: v.to_dict() for k, v in cnn_configs(stage).items()}
    shape = ("architecture", "noise_input", "depth", "width", "scales", "bottleneck_dilations",
             "kernel_size", "dilation", "residual", "normalization", "batch_norm", "activation")
    differ = [k for k in shape if configs["lung"].get(k) != configs["body"].get(k)]
    if differ:
        raise ValueError(f"`cnn.lung_warm_start` in {where} starts the lung model from the body "
                         f"model's weights: `cnn.lung` must have `cnn.body`'s architecture; they "
                         f"differ in {differ}. Copy them from `cnn.body` or drop the warm start.")


def _config_path(name_or_path: str | os.PathLike) -> Path:
    p = Path(name_or_path)
    if p.suffix != ".json" and p.parent == Path("."):
        return CONFIGS_DIR / f"{p}.json"
    return p


def config_sections(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The raw sections of a config file (``description``, ``recipe`` and e.g. ``cv``).

    ``name_or_path`` is a path, or the name of a file in ``experiments/configs``
    (``"shipped"``, ``"cv"``, ``"cv-fast"``).
    """
    p = _config_path(name_or_path)
    data = _read_json(p, "recipe config")
    allowed = {"description", "recipe", "cv"}
    if not isinstance(data, dict) or "recipe" not in data or set(data) - allowed:
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"Expected a JSON object with a 'recipe' section and optionally "
                         f"{sorted(allowed - {'recipe'})} in {p}; received {got}.")
    return data


def load_config(name_or_path: str | os.PathLike = "shipped") -> RecipeConfig:
    """The recipe config of a file in ``experiments/configs`` (by name) or at a path.

    Raises
    ------
    FileNotFoundError
        Where the file is absent.
    ValueError
        On unknown or missing keys.
    """
    p = _config_path(name_or_path)
    return RecipeConfig.from_dict(config_sections(p)["recipe"], where=f"'recipe' of {p}")


def cnn_configs(stage: CNNStage) -> dict[str, Any]:
    from hybrid.artifacts import default_asset_paths
    from hybrid.cnn.config import CNNConfig

    out = {}
    for i, region in enumerate(REGIONS):
        cfg = getattr(stage, region)
        if cfg is None:  # the shipped pair's configuration
            path = default_asset_paths()["cnn"] / f"{region}.config.json"
            cfg = json.loads(path.read_text())
        cfg = dict(cfg)
        if stage.patch_sizes is not None:
            cfg["patch_size"] = int(stage.patch_sizes[i])
        out[region] = CNNConfig.from_dict(cfg)
    return out
