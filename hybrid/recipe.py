"""The one training recipe of the CNN pair, the patch dictionary and the blender.

:func:`train` reads paired cases from a dataset folder, :func:`train_from_cases`
takes them in memory (a cross-validation fold); both run the stages asked for
(``"cnn"``, ``"dictionary"``, ``"blender"``) in that order and take the models of
the other stages from ``keep`` (default: the shipped models in ``hybrid/assets``,
loaded only when a later stage needs them).  What each stage sees is fixed by a
:class:`Split` (:func:`load_split`: ``experiments/splits.json`` for the shipped
models, one test and one calibration patient for a CV fold) and how long it
trains by a :class:`RecipeConfig` (:func:`load_config`:
``experiments/configs/shipped.json``, ``cv.json``, ``cv-fast.json``).  The config
files are the only source of the settings: :class:`RecipeConfig` and its parts
have no defaults.

Who sees which patient (so that every reported number is on unseen data):

===================  =================================================  ========================
artifact             trained on                                         never sees
===================  =================================================  ========================
CNN pair             every patient but the held-out ones, each case at  the held-out patients
                     its nominal and its other (aug) dose; monitored
                     (learning-rate schedule, best checkpoint) on the
                     calibration patients' nominal dose
dictionary           the same minus the calibration patients (nominal   the held-out and the
                     and aug dose)                                      calibration patients
blender calibration  the calibration patients: nominal and other dose,  the held-out patients
                     and sharp-kernel variants of real smooth/standard
                     cases (:func:`calibration_samples`)
===================  =================================================  ========================

The calibration patients are unseen by the dictionary, so its distances on
them are honest (a patient inside the dictionary matches itself at distance
≈ 0 and would teach the blender to trust it far too much).  They were seen by
the CNN, which can only bias the blender towards the CNN: conservative.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hybrid._paths import EXPERIMENTS_DIR
from hybrid.calibration import calibrate_blender, calibration_samples

log = logging.getLogger(__name__)

__all__ = [
    "STAGES", "REGIONS", "Split", "load_split", "CNNStage", "DictionaryStage", "BlenderStage",
    "RecipeConfig", "load_config", "config_sections", "Models", "train", "train_from_cases",
    "assign_cases", "training_pairs", "dtype_policy", "train_cnn", "build_dictionary",
    "calibrate_blender", "calibration_samples",
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
    it is not noisy, calibrated at those doses; optionally
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
            allowed = need | {"thickness_reference_mm"}
            if not need <= keys <= allowed:
                raise ValueError(f"Invalid `blender.input_rule` keys {sorted(keys)}. Expected "
                                 f"{sorted(need)} and optionally 'thickness_reference_mm'.")
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
    configs = {k: v.to_dict() for k, v in _cnn_configs(stage).items()}
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


# ---------------------------------------------------------------- the models
@dataclasses.dataclass
class Models:
    """The recipe's result: the CNN pair, the dictionary and the blender.

    ``training`` holds the CNN's :class:`hybrid.cnn.train.TrainResult` per region
    trained, ``seconds`` the time of each stage run.
    """

    cnn: Any = None
    dictionary: Any = None
    blender: Any = None
    training: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def _out_paths(out: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Path]:
    """``out`` folder -> {cnn: out/cnn, dictionary: out/dictionary, blender: out/blend.json};
    a mapping gives the paths per stage (others are not saved)."""
    if out is None:
        return {}
    if isinstance(out, Mapping):
        bad = sorted(set(out) - set(STAGES))
        if bad:
            raise ValueError(f"Expected `out` keys among {STAGES}; received {bad}.")
        return {k: Path(v) for k, v in out.items() if v is not None}
    from hybrid.artifacts import default_asset_paths

    names = {k: p.name for k, p in default_asset_paths().items()}
    return {"cnn": Path(out) / names["cnn"], "dictionary": Path(out) / names["dictionary"],
            "blender": Path(out) / names["blender"]}


def _check_stages(stages: Iterable[str], regions: Iterable[str]) -> tuple[tuple, tuple]:
    stages, regions = tuple(stages), tuple(regions)
    if not stages or set(stages) - set(STAGES):
        raise ValueError(f"Expected stages among {STAGES}; received {stages}.")
    if not regions or set(regions) - set(REGIONS):
        raise ValueError(f"Expected regions among {REGIONS}; received {regions}.")
    return tuple(s for s in STAGES if s in stages), tuple(r for r in REGIONS if r in regions)


def _kept(keep: Models | None, name: str) -> Any:
    """The model of a stage not run: from ``keep``, else the shipped one."""
    model = getattr(keep, name, None) if keep is not None else None
    if model is not None:
        return model
    from hybrid.artifacts import default_asset_paths

    path = default_asset_paths()[name]
    log.info("%s: the shipped one (%s)", name, path)
    if name == "cnn":
        from hybrid.cnn.infer import CNNPair

        return CNNPair.load(path)
    if name == "dictionary":
        from hybrid.dictionary import PatchDictionary

        return PatchDictionary.load(path)
    from hybrid.blend import Blender

    return Blender.load(path)


def _noise_aware_pair(stage: BlenderStage) -> Any:
    """The noise-aware pair of ``blender.noise_aware`` (None without one)."""
    if stage.noise_aware is None:
        return None
    from hybrid.artifacts import default_asset_paths
    from hybrid.cnn.infer import CNNPair

    path = (default_asset_paths()["noise_aware"] if stage.noise_aware == "shipped"
            else Path(stage.noise_aware))
    if not path.is_dir():
        raise FileNotFoundError(f"Expected the noise-aware CNN pair of `blender.noise_aware` "
                                f"({stage.noise_aware!r}) at {path}; it does not exist.")
    return CNNPair.load(path)


# ---------------------------------------------------------------- the recipe
def train(
    cases_root: str | os.PathLike,
    *,
    split: Split | None = None,
    config: RecipeConfig | None = None,
    stages: Sequence[str] = STAGES,
    out: str | os.PathLike | Mapping[str, Any] | None = None,
    keep: Models | None = None,
    regions: Sequence[str] = REGIONS,
    work: str | os.PathLike | None = None,
    threads: int | None = None,
    dictionary_name: str | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Models:
    """Run the recipe's ``stages`` on the paired dataset at ``cases_root``.

    Only the cases a stage needs are read (see :func:`assign_cases`).

    Parameters
    ----------
    cases_root : path
        A paired dataset (``data/manifest.json``, ``make data``).
    split : Split, optional
        Default :func:`load_split` (the shipped models' split).
    config : RecipeConfig, optional
        Default ``load_config("shipped")``.
    stages, out, keep, regions, work, threads, dictionary_name, verbose, resume
        See :func:`train_from_cases`.

    Returns
    -------
    Models
    """
    from hybrid.data import iter_cases, load_case

    split = split or load_split()
    stages, _ = _check_stages(stages, regions)
    held = set(split.held_out_patients)
    need_all = "cnn" in stages or "dictionary" in stages
    cases = [load_case(path) for entry, path in iter_cases(cases_root)
             if entry["patient_id"] not in held
             and (need_all or entry["patient_id"] in split.calibration)]
    if not cases:
        raise ValueError(f"Expected training cases in {cases_root}; all were held out "
                         f"({list(split.held_out_patients)}) or none exist. Run `make data` first.")
    return train_from_cases(cases, split=split, config=config, stages=stages, out=out, keep=keep,
                            regions=regions, work=work, threads=threads,
                            dictionary_name=dictionary_name, verbose=verbose, resume=resume)


def train_from_cases(
    cases: Sequence[Any],
    *,
    split: Split | None = None,
    config: RecipeConfig | None = None,
    stages: Sequence[str] = STAGES,
    out: str | os.PathLike | Mapping[str, Any] | None = None,
    keep: Models | None = None,
    regions: Sequence[str] = REGIONS,
    work: str | os.PathLike | None = None,
    threads: int | None = None,
    dictionary_name: str | None = None,
    verbose: bool = False,
    resume: bool = False,
) -> Models:
    """Run the recipe's ``stages`` on paired cases in memory (e.g. one CV fold).

    Parameters
    ----------
    cases : sequence of hybrid.data.PairedCase
        In the order their patches are used; cases of held-out patients are ignored.
    split : Split, optional
        Default :func:`load_split`.
    config : RecipeConfig, optional
        Default ``load_config("shipped")``.
    stages : sequence of {"cnn", "dictionary", "blender"}
        Run in that order; the other stages' models come from ``keep``.
    out : path or mapping, optional
        Save what is built: a folder (``cnn/``, ``dictionary/``, ``blend.json`` in it, the
        layout of ``hybrid/assets``) or ``{stage: path}``; None saves nothing.  The blender
        records the digests of the CNN pair and dictionary it was calibrated with
        (``calibrated_with``), known once they are saved or loaded.
    keep : Models, optional
        Models of the stages not run (and the CNN region not in ``regions``); missing ones
        are the shipped models, loaded only when needed.
    regions : sequence of {"lung", "body"}
        CNN regions to train; the other one is kept.
    work : path, optional
        CNN training folders (``<region>/``: log, checkpoint, progress figure); default a
        temporary folder, removed at the end.
    threads : int, optional
        TensorFlow CPU threads.
    dictionary_name : str, optional
        Name stored in the dictionary; default its ``out`` folder's name, else "dictionary".
    verbose : bool
        Progress of the dictionary build.
    resume : bool
        Noise-aware CNN stage (``cnn.noise``): continue from the checkpoints in ``work``.

    Returns
    -------
    Models
    """
    split = split or load_split()
    config = config or load_config("shipped")
    stages, regions = _check_stages(stages, regions)
    paths = _out_paths(out)
    models = Models(**{s: getattr(keep, s, None) for s in STAGES} if keep is not None else {})
    groups = assign_cases(cases, split)
    tmp = tempfile.TemporaryDirectory(prefix="hybrid-recipe-") if work is None else None
    try:
        if "cnn" in stages:
            t = time.perf_counter()
            kept = _kept(keep, "cnn") if len(regions) < len(REGIONS) else None
            models.cnn, models.training = train_cnn(
                groups, split=split, config=config, regions=regions, kept=kept,
                work=Path(work if work is not None else tmp.name), threads=threads, resume=resume)
            if "cnn" in paths:
                models.cnn.save(paths["cnn"], overwrite=True)
            models.seconds["cnn"] = time.perf_counter() - t
    finally:
        if tmp is not None:
            tmp.cleanup()
    if "dictionary" in stages:
        t = time.perf_counter()
        name = dictionary_name or (paths["dictionary"].name if "dictionary" in paths else "dictionary")
        models.dictionary = build_dictionary(groups["dictionary"], config=config, name=name,
                                             verbose=verbose)
        if "dictionary" in paths:
            models.dictionary.save(paths["dictionary"], overwrite=True)
        models.seconds["dictionary"] = time.perf_counter() - t
    if "blender" in stages:
        t = time.perf_counter()
        models.cnn = models.cnn if models.cnn is not None else _kept(keep, "cnn")
        if models.dictionary is None:
            models.dictionary = _kept(keep, "dictionary")
        models.blender = calibrate_blender(groups["calibration"], models.cnn, models.dictionary,
                                           patients=split.calibration, config=config,
                                           noise_aware=_noise_aware_pair(config.blender))
        if "blender" in paths:
            models.blender.save(paths["blender"])
        models.seconds["blender"] = time.perf_counter() - t
    return models


def assign_cases(cases: Iterable[Any], split: Split) -> dict[str, list]:
    """The module docstring's table: the cases of each stage, in the given order.

    Returns ``{"cnn": [...], "monitor": [...], "dictionary": [...], "calibration": [...]}``
    (``monitor`` and ``calibration`` are the same cases: the calibration patients').
    """
    held, cal = set(split.held_out_patients), set(split.calibration)
    out: dict[str, list] = {"cnn": [], "monitor": [], "dictionary": [], "calibration": []}
    for case in cases:
        if case.patient_id in held:
            continue
        out["cnn"].append(case)
        if case.patient_id in cal:
            out["monitor"].append(case)
            out["calibration"].append(case)
        else:
            out["dictionary"].append(case)
    return out


# ---------------------------------------------------------------- stage 1: the CNN pair
def _cnn_configs(stage: CNNStage) -> dict[str, Any]:
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


def dtype_policy(precision: str) -> str | None:
    """The Keras dtype policy of a CNN stage's ``precision`` ("auto", "bfloat16" or
    "float32"): ``"mixed_bfloat16"`` for "bfloat16", and for "auto" where the CPU or GPU
    has native bfloat16; otherwise None (float32)."""
    from hybrid.cnn.infer import native_bfloat16

    if precision == "bfloat16" or (precision == "auto" and native_bfloat16()):
        return "mixed_bfloat16"
    return None


def training_pairs(groups: Mapping[str, list]) -> tuple[list, list]:
    """The CNN stage's data from :func:`assign_cases` groups: every ``"cnn"`` case at its
    nominal dose and at its aug dose (two :class:`~hybrid.cnn.sampler.TrainingPair` each, the
    second's id ending in ``~aug``), and the ``"monitor"`` cases at their nominal dose."""
    from hybrid.cnn.sampler import TrainingPair

    train, monitor = [], []
    for case in groups["cnn"]:
        for tag, uld in (("", case.uld.array), ("~aug", case.uld_aug)):
            train.append(TrainingPair(uld, case.nd, case.lung_mask, case.body_mask,
                                      case.case_id + tag))
    for case in groups["monitor"]:
        monitor.append(TrainingPair(case.uld.array, case.nd, case.lung_mask, case.body_mask,
                                    case.case_id))
    return train, monitor


def train_cnn(groups: Mapping[str, list], *, split: Split, config: RecipeConfig,
              regions: Sequence[str] = REGIONS, kept: Any = None, work: Path,
              threads: int | None = None, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train the CNN pair's ``regions`` on ``groups["cnn"]`` (nominal and aug dose), monitored on
    ``groups["monitor"]``; the other region is ``kept``'s.  Returns the pair and the
    :class:`~hybrid.cnn.train.TrainResult` per region trained."""
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.models import clear_session
    from hybrid.cnn.train import train_model

    stage = config.cnn
    pairs, monitor = training_pairs(groups)
    if not pairs or not monitor:
        raise ValueError(f"Expected training and monitor (calibration patients "
                         f"{list(split.calibration)}) cases for the CNN; received {len(pairs)} "
                         f"training pairs and {len(monitor)} monitor pairs.")
    configs = _cnn_configs(stage)
    dtype = dtype_policy(stage.precision)
    log.info("training %s with dtype policy %s", ", ".join(regions), dtype or "float32")
    results = {}
    if stage.noise is not None:
        from hybrid.cnn.resumable import train_noise_aware_regions

        results = train_noise_aware_regions(
            configs, groups["cnn"], groups["monitor"], regions=regions, budget=stage.budget,
            noise=stage.noise, work=Path(work), seed=config.seed, resume=resume, dtype=dtype,
            threads=threads, metadata={"recipe": config.to_dict()}, log=log.info)
    if (warm := stage.lung_warm_start) is not None:  # the body first: the lung starts from it
        regions = sorted(regions, key=lambda r: r != "body")
    for region in regions if stage.noise is None else ():
        b = stage.budget[region]
        start = {}
        if warm is not None and region == "lung":
            start = {"init_model": results["body"].model if "body" in results else kept.body_model,
                     "seed": warm["seed"],
                     "sampler_options": {"min_lung_fraction": warm["min_lung_fraction"]}}
        clear_session()
        results[region] = train_model(
            configs[region], pairs, val_pairs=monitor, out_dir=Path(work) / region,
            epochs=b["epochs"], steps_per_epoch=b["steps_per_epoch"], batch_size=b["batch_size"],
            val_slices=stage.val_slices, val_patches=min(512, 64 * b["batch_size"]),
            patience=stage.patience if stage.patience is not None else max(3, b["epochs"]),
            reduce_lr_patience=stage.reduce_lr_patience, threads=threads,
            tensorboard=False, verbose=0, dtype=dtype, **{"seed": config.seed, **start})
        r = results[region]
        log.info("%s: monitor slice RMSE %.1f HU, best epoch %d/%d, %.0f s", region,
                 r.val_slice_rmse_hu, r.best_epoch, r.epochs_run, r.seconds)
    models = {k: r.model for k, r in results.items()}
    for k in set(REGIONS) - set(results):
        models[k], configs[k] = getattr(kept, f"{k}_model"), getattr(kept, f"{k}_config")
    metadata = _cnn_metadata(results, kept, split=split, config=config, dtype=dtype,
                             case_ids=[c.case_id for c in groups["cnn"]])
    pair = CNNPair(models["lung"], models["body"], lung_config=configs["lung"],
                   body_config=configs["body"], metadata=metadata)
    return pair, results


def _cnn_metadata(results: Mapping[str, Any], kept: Any, *, split: Split, config: RecipeConfig,
                  dtype: str | None, case_ids: list[str]) -> dict[str, Any]:
    """What the pair records about its training (regions kept keep their old records)."""
    old = kept.metadata if kept is not None else {}
    stage = config.cnn
    monitor = {k: {"cases": list(split.calibration),
                   "note": "monitor patients are also in training (not a held-out score)",
                   "val_rmse_hu": r.val_rmse_hu, "val_slice_rmse_hu": r.val_slice_rmse_hu,
                   "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                   "train_seconds": r.seconds} for k, r in results.items()}
    metadata = {
        "data_manifest": next(iter(results.values())).manifest,
        "trained_by": "hybrid.recipe",
        "held_out_patients": {k: list(v) for k, v in split.held_out.items()},
        "training_cases": case_ids,
        "training_inputs": "nominal ULD (2 %) and ULD-aug (1-10 % dose) per case" if
        stage.noise is None else f"multi-dose, multi-kernel patches ({stage.noise})",
        "budget": {k: (dict(stage.budget[k], reduce_lr_patience=stage.reduce_lr_patience)
                       if k in results else old.get("budget", {}).get(k)) for k in REGIONS},
        "dtype_policy": {k: (dtype or "float32") if k in results
                         else old.get("dtype_policy", {}).get(k, "float32") for k in REGIONS},
        "monitor": {**{k: v for k, v in old.get("monitor", {}).items() if k not in results},
                    **monitor},
    }
    if stage.lung_warm_start is not None and "lung" in results:  # started from the body model
        metadata["lung_warm_start"] = dict(stage.lung_warm_start)
    if kept is not None:
        # the data manifest covers the same cases for both regions (same training cases)
        metadata["kept_from_previous_pair"] = sorted(set(REGIONS) - set(results))
    return metadata


# ---------------------------------------------------------------- stage 2: the dictionary
def build_dictionary(cases: Sequence[Any], *, config: RecipeConfig, name: str = "dictionary",
                     verbose: bool = False):
    """Build the dictionary from ``cases`` (``assign_cases(...)["dictionary"]``): each case's
    ``(uld, nd, body_mask)``, and with ``include_aug`` its other dose as its own pair."""
    from hybrid.dictionary import DictionaryConfig, PatchDictionary

    stage = config.dictionary
    pairs = []
    for case in cases:
        pairs.append((case.uld.array, case.nd, case.body_mask))
        if stage.include_aug:
            pairs.append((case.uld_aug, case.nd, case.body_mask))
    if not pairs:
        raise ValueError("Expected training cases for the dictionary (neither held out nor "
                         "calibration patients); received none. Check the split.")
    cfg = DictionaryConfig(**{**stage.config, "seed": config.seed})
    return PatchDictionary.build(pairs, config=cfg, name=name, verbose=verbose)


# stage 3, the blender: hybrid.calibration (calibrate_blender, calibration_samples)
