"""The end-to-end enhancement: ultra-low-dose CT in, normal-dose-like CT out.

:class:`Enhancer` loads the CNN pair and the blender calibration once (default: the
assets shipped in ``hybrid/assets/``), and a patch dictionary when one is asked for, and
enhances any number of volumes; :func:`enhance` uses a cached default Enhancer::

    import hybrid
    out = hybrid.enhance(hybrid.load("uld_series/"))          # Volume in, Volume out
    out, maps = hybrid.enhance(array, return_maps=True)       # ndarray in, ndarray out

Steps, for a volume of Z slices:

1. body mask (:func:`hybrid.lung.body_mask`) and lung mask
   (:func:`hybrid.lung.segment`) on the whole volume: the segmentation is
   3-D (connected components across slices, airway tracking), so it needs
   all slices at once; its temporaries are a few volume-sized arrays;
2. slice batch by slice batch (``batch_slices``): the CNN pair's proposal
   (lung model inside the lung mask, body model elsewhere), then the blender's
   rules in turn: with a patch dictionary (opt-in: ``dictionary="shipped"`` or a
   folder), ``w * dictionary + (1 - w) * cnn`` with ``w = blender.weight(delta)`` from
   its normalised nearest-neighbour distance ``delta``; then the input's share from
   its noise ratio (a cleaner scan is given back mostly as it came).  The model
   activations, patches and search results only ever exist for one batch, so the
   extra memory is bounded whatever Z is.  Every step is per slice (the CNN and the
   dictionary work in 2-D), so the result does not depend on ``batch_slices``.

The dictionary is off by default: measured on the held-out patients it lowered the
hybrid's error by at most 0.12 % and cost about 47 s per 250 slices (docs/dictionary.md).

The input is never modified.  Research software: no diagnostic claim.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._version import __version__
from hybrid.artifacts import default_asset_paths, default_assets_dir
from hybrid.volume import Volume, as_stack

__all__ = [
    "Enhancer",
    "EnhanceMaps",
    "enhance",
    "default_assets_dir",
    "default_asset_paths",
    "TRAINED_DOSE_RANGE",
]

log = logging.getLogger(__name__)

#: The smallest slice side (pixels) the segmentation and the dictionary's 7 x 7 patches take.
MIN_SLICE_PIXELS = 7

#: The noise-aware pair runs on a slice only where its blender rule gives it at least this
#: weight: elsewhere its share would move the result by under 0.1 % of its difference to
#: the base pair's (under 0.05 HU at the base's typical 20-50 HU error), not worth a run.
RUN_WEIGHT = 1e-3

#: The name that asks :class:`Enhancer` for the shipped patch dictionary (``--dictionary shipped``).
SHIPPED = "shipped"

#: Dose fractions the shipped models were trained on (nominal 0.02, augmented
#: log-uniformly over this range; see :mod:`hybrid.data`).
TRAINED_DOSE_RANGE = (0.01, 0.10)

def _missing_defaults(missing: list[Path]) -> FileNotFoundError:
    return FileNotFoundError(
        f"Expected the default models in {default_assets_dir()} (cnn/, blend.json; dictionary/ "
        f"for dictionary='shipped'); "
        f"missing: {', '.join(str(p) for p in missing)}. Run `make train dictionary` or pass "
        f"your own: Enhancer(cnn=..., dictionary=..., blender=...) "
        f"(CLI: --cnn DIR --dictionary DIR --blender FILE)."
    )


@dataclass(frozen=True, eq=False)
class EnhanceMaps:
    """What :meth:`Enhancer.enhance` saw and decided, per pixel (input's shape).

    Attributes
    ----------
    lung_mask, body_mask : ndarray of bool
        Lungs (:func:`hybrid.lung.segment`) and body (:func:`hybrid.lung.body_mask`).
    cnn : ndarray of float32
        The CNN pair's proposal in HU ("CNN only").
    dictionary : ndarray of float32, or None
        The patch dictionary's proposal in HU ("dictionary only"; the input
        outside the body); None when the Enhancer has no dictionary (the default).
    distance : ndarray of float32, or None
        The dictionary's normalised nearest-neighbour distance ``delta``
        (about 1 or below: as good a match as the noise allows; ``inf``
        outside the body); None without a dictionary.
    dictionary_weight : ndarray of float32 in [0, 1]
        The source map: the dictionary's share of the result (1 =
        dictionary, 0 = CNN or input; all 0 without a dictionary).
    noise_ratio : ndarray of float32
        Each slice's estimated noise over a normal-dose scan's of its noise
        texture (:func:`hybrid.cnn.noise.noise_ratio`), broadcast over the slice.
    input_weight : ndarray of float32 in [0, 1]
        The input's share of the result (its blender rule, from ``noise_ratio``:
        near 1 on a normal-dose scan, near 0 at ultra-low dose; all 0 for a
        blender without an "input" rule).
    info : dict
        Settings of the run (version, dose fraction, stride, blender, models).
    """

    lung_mask: np.ndarray
    body_mask: np.ndarray
    cnn: np.ndarray
    dictionary: np.ndarray | None
    distance: np.ndarray | None
    dictionary_weight: np.ndarray
    noise_ratio: np.ndarray
    input_weight: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    ARRAYS = ("lung_mask", "body_mask", "cnn", "dictionary", "distance", "dictionary_weight",
              "noise_ratio", "input_weight")

    @property
    def source_map(self) -> np.ndarray:
        """Alias of :attr:`dictionary_weight` (1 = dictionary, 0 = CNN)."""
        return self.dictionary_weight

    def save(
        self,
        path: str | os.PathLike,
        *,
        spacing: tuple[float, float, float] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the maps to one HDF5 file, atomically.

        One dataset per map (``lung_mask``, ``body_mask`` uint8;
        ``cnn``, ``dictionary`` HU float32; ``distance`` float32 with ``inf``
        outside the body (these two only with a dictionary); ``dictionary_weight``, ``input_weight`` float32 in
        [0, 1]; ``noise_ratio`` float32) and file
        attributes ``format="hybrid-enhance-maps"``, ``version=1``,
        ``axes``, ``spacing`` (mm) and ``info`` (JSON).
        """
        from hybrid.io.hdf5 import write_arrays

        attrs: dict[str, Any] = {"format": "hybrid-enhance-maps", "version": 1,
                                 "axes": "zyx" if self.cnn.ndim == 3 else "yx"}
        if spacing is not None:
            attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
        attrs["info"] = self.info  # stored as JSON
        units = {"cnn": "HU", "dictionary": "HU", "distance": "normalised NN distance",
                 "dictionary_weight": "share of the dictionary", "noise_ratio":
                 "noise over a normal-dose scan's", "input_weight": "share of the input"}
        arrays = {n: getattr(self, n) for n in self.ARRAYS if getattr(self, n) is not None}
        return write_arrays(path, arrays, attrs=attrs, units={n: units.get(n, "mask") for n in arrays},
                            overwrite=overwrite)


def _check_dose(dose_fraction: Any) -> float | None:
    """The validated dose hint; warns outside :data:`TRAINED_DOSE_RANGE`."""
    dose = _valid_dose(dose_fraction)
    if dose is not None and not (TRAINED_DOSE_RANGE[0] <= dose <= TRAINED_DOSE_RANGE[1]):
        warnings.warn(
            f"dose_fraction={dose:g} is outside the range the CNN pair was trained on "
            f"({TRAINED_DOSE_RANGE[0]:g}-{TRAINED_DOSE_RANGE[1]:g}). The blender's input rule "
            "gives a cleaner scan back mostly as it came (it measures the noise, not this "
            "hint), but the restoration itself is untested there.",
            stacklevel=3,
        )
    return dose


def _valid_dose(dose_fraction: Any) -> float | None:
    if dose_fraction is None:
        return None
    try:
        f = float(dose_fraction)
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid value for argument `dose_fraction`. Expected a number in (0, 1] "
            f"(e.g. 0.02 for 2 % of a normal dose). Received dose_fraction={dose_fraction!r}."
        ) from None
    if not (math.isfinite(f) and 0 < f <= 1):
        raise ValueError(
            f"Invalid value for argument `dose_fraction`. Expected a number in (0, 1] "
            f"(e.g. 0.02 for 2 % of a normal dose). Received dose_fraction={dose_fraction!r}."
        )
    return f


def describe_reading(r: dict[str, Any]) -> str:
    """One line on what the input looked like and what was done about it (the ``"input"``
    entry of :attr:`Enhancer.last_info`): for the log, the CLI and the derived series."""
    text = (f"input noise {r['noise_hu']:.1f} HU in soft tissue, {r['kernel_class']} kernel "
            f"(from its {r['kernel_class_from']}), {r['noise_ratio']:.1f} x a typical normal-dose "
            f"scan's: {r['reads_as']}")
    if "input_weight_body" in r:
        text += f"; the input kept {100 * r['input_weight_body']:.0f} % of the result in the body"
    return text


class Enhancer:
    """Loaded models for repeated enhancement of ultra-low-dose chest CT.

    Parameters
    ----------
    cnn : CNNPair, path or None
        The lung/body CNN pair (:class:`hybrid.cnn.infer.CNNPair`) or the
        folder it was saved to.  None: the shipped ``hybrid/assets/cnn``.
    dictionary : PatchDictionary, path, "shipped" or None
        The patch dictionary (:class:`hybrid.dictionary.PatchDictionary`) or
        its folder; ``"shipped"``: the shipped ``hybrid/assets/dictionary``.
        None (the default): no dictionary, the CNN pair and the input rule only
        (the dictionary did not earn its cost on held-out patients: docs/dictionary.md).
    blender : Blender, path or None
        The calibrated blender (:class:`hybrid.blend.Blender`) or its JSON
        file.  None: the shipped ``hybrid/assets/blend.json``.
    noise_aware : CNNPair, path or None, keyword-only
        The noise-aware CNN pair (:class:`hybrid.cnn.infer.CNNPair` with noise maps)
        the blender's ``"noise_aware"`` rule weighs against the base pair by the
        input's noise ratio (it restores moderately noisy scans better, the base pair
        very noisy ones).  None: the shipped ``hybrid/assets/cnn_noise_aware`` if the
        blender has that rule, else none.  A pair given to a blender without the rule
        is refused.
    stride : int or (int, int), keyword-only
        Dictionary query grid step in pixels, one for both axes or ``(y,
        x)``; 1 = every pixel; with a dictionary only.  Default: the grid the
        blender was calibrated on, ``(2, 3)`` for the shipped one (a sixth of the
        pixels queried).
        The square grid 2 queries 1.5x as many patches for 0.01-0.2 % lower
        held-out hybrid RMSE (docs/results.md, "Results on held-out patients").
    k : int, keyword-only
        Dictionary neighbours per patch (1).
    batch_slices : int, keyword-only
        Slices processed at once (bounds the memory of the models and the
        search; does not change the result).
    residual_guard : bool, keyword-only
        After the blender's rules, bound the share of the CNN's change a slice that reads
        as normal-dose noise keeps, by how much more than its noise the CNN took away
        (:func:`hybrid.blend.residual_guard`).  True (the default); False: the rules alone.
    views : {1, 2, 4, 8}, keyword-only
        Each CNN runs on this many mirrored / transposed views of every slice
        and the restorations are averaged (``CNNPair(views=...)``): that many
        times the CNN's time.  1 (the default): what the blender was
        calibrated with.  Measured with the shipped pair, CNN only, held-out
        patients at 2 % dose (`experiments/results/cnn_compare/views/`): 4 views
        lower the body RMSE by 2-4 % (A0001-B 21.9 -> 21.1 HU, P12 25.5 ->
        24.6, A0001-L 90.7 -> 89.0), 8 views hardly more (docs/results.md).

    Raises
    ------
    FileNotFoundError
        A default asset is missing (the message says where it was expected
        and how to make it).

    Examples
    --------
    >>> enh = Enhancer()                                    # doctest: +SKIP
    >>> out = enh.enhance(hybrid.load("uld_series/"))       # doctest: +SKIP
    """

    def __init__(
        self,
        cnn: Any = None,
        dictionary: Any = None,
        blender: Any = None,
        *,
        stride: int | None = None,
        k: int = 1,
        batch_slices: int = 8,
        allow_uncalibrated: bool = False,
        noise_aware: Any = None,
        views: int = 1,
        residual_guard: bool = True,
    ) -> None:
        if not isinstance(batch_slices, (int, np.integer)) or isinstance(batch_slices, bool) \
                or batch_slices < 1:
            raise ValueError(
                "Invalid value for argument `batch_slices`. Expected an integer >= 1. "
                f"Received batch_slices={batch_slices!r}."
            )
        self.batch_slices = int(batch_slices)
        self.k = int(k)
        defaults = default_asset_paths()
        wanted = {"cnn": cnn is None, "blender": blender is None,
                  "dictionary": isinstance(dictionary, str) and dictionary == SHIPPED}
        missing = [defaults[n] for n, w in wanted.items() if w and not defaults[n].exists()]
        if missing:  # all of them at once, before anything heavy is imported
            raise _missing_defaults(missing)
        self.sources: dict[str, str] = {}
        # the cheap one first, so that a missing default is reported before TensorFlow loads
        self.blender = self._load_blender(blender, defaults["blender"])
        self.dictionary = self._load_dictionary(dictionary, defaults["dictionary"])
        self.cnn = self._load_cnn(cnn, defaults["cnn"])
        self.noise_aware = self._load_noise_aware(noise_aware, defaults["noise_aware"])
        self.stride: int | tuple[int, int] | None = None
        if self.dictionary is not None:
            if stride is None:  # the grid the blender was calibrated on (a pair: a JSON list)
                cal = self.blender.calibration if isinstance(self.blender.calibration, dict) else {}
                stride = cal.get("stride", 2)
                stride = tuple(stride) if isinstance(stride, list) else stride
            from hybrid.patches import check_stride

            steps = check_stride(stride, patch_size=self.dictionary.patch_size)
            self.stride = steps[0] if steps[0] == steps[1] else steps
            self.dictionary = self.dictionary.with_settings(stride=self.stride, k=self.k)
        self._check_calibrated_with(allow_uncalibrated)
        self.cnn = self.cnn.with_settings(batch_size=self.batch_slices, views=views)
        self.views = self.cnn.views
        self.residual_guard = bool(residual_guard)
        if self.noise_aware is not None:
            self.noise_aware = self.noise_aware.with_settings(batch_size=self.batch_slices,
                                                              views=views)
        self._last = threading.local()

    def _check_calibrated_with(self, allow: bool) -> None:
        """Refuse models other than those the blender was calibrated with (see hybrid.artifacts)."""
        expected = dict(self.blender.calibrated_with or {})
        given = {"cnn": getattr(self.cnn, "digest", None),
                 "dictionary": getattr(self.dictionary, "digest", None),
                 "noise_aware": getattr(self.noise_aware, "digest", None)}
        wrong = [n for n, d in expected.items() if d and given.get(n) and given[n] != d]
        if wrong and not allow:
            raise ValueError(
                f"Expected the {' and '.join(wrong)} the blender was calibrated with "
                f"(digest {', '.join(expected[n][:12] for n in wrong)}); received "
                f"{', '.join(str(given[n])[:12] for n in wrong)}. Recalibrate the blender for "
                "these models (`make calibrate`), or pass allow_uncalibrated=True "
                "(CLI: --allow-uncalibrated) for an experiment."
            )
        self.calibration_check = "mismatch allowed" if wrong else (
            "matched" if any(expected.values()) else "not recorded")

    @property
    def thickness_reference_mm(self) -> float | None:
        """The slice thickness (mm) the blender's input rule reads the noise ratio at
        (:func:`hybrid.cnn.noise.thickness_factor`; recorded at calibration), or None:
        the plain ratio, as for a blender calibrated before the rule knew thicknesses."""
        cal = self.blender.calibration if isinstance(self.blender.calibration, dict) else {}
        ref = (cal.get("input") or {}).get("thickness_reference_mm")
        return None if ref is None else float(ref)

    @property
    def last_info(self) -> dict[str, Any] | None:
        """What the last :meth:`enhance` call of this thread did: settings, models and
        seconds (total and per stage: segment, cnn, dictionary, blend); None before one."""
        return getattr(self._last, "info", None)

    # ------------------------------------------------------------------ loading
    def _load_blender(self, blender: Any, default: Path):
        from hybrid.blend import Blender

        if isinstance(blender, Blender):
            self.sources["blender"] = "<in memory>"
            return blender
        if blender is None:
            if not default.is_file():
                raise _missing_defaults([default])
            blender = default
        path = Path(blender)
        if not path.is_file():
            raise FileNotFoundError(
                f"Expected a blender calibration JSON (Blender.save) at {path}; it does not exist."
            )
        self.sources["blender"] = str(path)
        return Blender.load(path)

    def _load_dictionary(self, dictionary: Any, default: Path):
        from hybrid.dictionary import PatchDictionary

        if dictionary is None:
            return None
        if isinstance(dictionary, PatchDictionary):
            self.sources["dictionary"] = "<in memory>"
            return dictionary
        if isinstance(dictionary, str) and dictionary == SHIPPED:
            if not default.is_dir():
                raise _missing_defaults([default])
            dictionary = default
        path = Path(dictionary)
        if not path.is_dir():
            raise FileNotFoundError(
                f"Expected a patch dictionary folder (PatchDictionary.save) at {path}; "
                "it does not exist."
            )
        self.sources["dictionary"] = str(path)
        return PatchDictionary.load(path)

    def _load_cnn(self, cnn: Any, default: Path, role: str = "cnn"):
        if cnn is None:
            if not default.is_dir():
                raise _missing_defaults([default])
            cnn = default
        if isinstance(cnn, (str, os.PathLike)):
            path = Path(cnn)
            if not path.is_dir():
                raise FileNotFoundError(
                    f"Expected a CNN pair folder (CNNPair.save) at {path}; it does not exist."
                )
            from hybrid.cnn.infer import CNNPair

            self.sources[role] = str(path)
            return CNNPair.load(path)
        if not hasattr(cnn, "propose"):
            raise TypeError(
                f"Expected a hybrid.cnn.infer.CNNPair or its folder; received {type(cnn).__name__}."
            )
        self.sources[role] = "<in memory>"
        return cnn

    def _load_noise_aware(self, pair: Any, default: Path):
        """The pair of the blender's "noise_aware" rule (None when it has none)."""
        has_rule = "noise_aware" in self.blender.modes
        if pair is None:
            return self._load_cnn(None, default, "noise_aware") if has_rule else None
        if not has_rule:
            raise ValueError(
                "Expected a blender calibrated with a noise-aware pair (a \"noise_aware\" "
                f"rule) for argument `noise_aware`; this one has the rules "
                f"{sorted(self.blender.modes)}. Calibrate it with the pair "
                "(blender.noise_aware in the recipe config, `make calibrate`), or leave "
                "`noise_aware` out."
            )
        return self._load_cnn(pair, default, "noise_aware")

    def __repr__(self) -> str:
        return (
            f"Enhancer(cnn={self.cnn!r}, dictionary={self.dictionary!r}, "
            f"blender={self.blender.info()}, stride={self.stride}, "
            f"batch_slices={self.batch_slices})"
        )

    # ------------------------------------------------------------------ running
    def prepare(self, *, progress: bool = True) -> Enhancer:
        """Do now the one-off work the first :meth:`enhance` would do: with a patch dictionary,
        on a CPU without a cached search graph, build its graph (tens of seconds, once per
        machine; a notice on stderr says so while it runs, ``progress``).  Returns self."""
        prepare = getattr(self.dictionary, "prepare", None)
        if prepare is not None:
            prepare(progress=progress)
        return self

    def _info(self, dose: float | None, input_reading: dict[str, Any],
              stages: dict[str, float], seconds: float) -> dict[str, Any]:
        """:attr:`last_info` of a run: settings, models, timings, the input's reading."""
        step = f"hybrid.enhance {__version__}"
        if dose is not None:
            step += f" (dose_fraction={dose:g})"
        if self.views > 1:
            step += f" (CNN over {self.views} views)"
        step += f"; {describe_reading(input_reading)}"
        return {
            "step": step,
            "version": __version__,
            "dose_fraction": dose,
            "dose_fraction_effect": "informational (one model set for all doses)",
            "stride": self.stride,
            "k": self.k,
            "batch_slices": self.batch_slices,
            "views": self.views,
            "blender": self.blender.info(),
            "calibration_check": self.calibration_check,
            "models": dict(self.sources),
            "seconds": round(seconds, 3),
            "seconds_by_stage": {k: round(v, 3) for k, v in stages.items()},
            "input": input_reading,
        }

    def enhance(
        self,
        volume: Any,
        *,
        dose_fraction: float | None = None,
        return_maps: bool = False,
        progress: bool = True,
    ):
        """Enhance an ultra-low-dose chest CT.

        Parameters
        ----------
        volume : Volume, or ndarray (z, y, x) or (y, x) in HU
            The low-dose image.  Never modified.
        dose_fraction : float in (0, 1], optional
            The scan's dose relative to a normal dose (e.g. 0.02).  Currently
            informational: it is validated, recorded in the provenance step
            and in ``maps.info``, and a warning is given outside the range
            the models were trained on (:data:`TRAINED_DOSE_RANGE`); it does
            not change the result, because one model set serves all doses
            (trained with dose augmentation).  Were models per dose shipped,
            this is where one would be chosen.
        return_maps : bool
            Also return an :class:`EnhanceMaps` (masks, both proposals,
            distance, source map).
        progress : bool
            Show a tqdm progress bar (slices) on stderr.

        Returns
        -------
        Volume or ndarray, or (that, EnhanceMaps)
            The same kind as the input: a Volume with the input's spacing and
            provenance plus the step ``"hybrid.enhance <version>"`` in
            ``provenance.derived_from``; or a float32 array of the input's
            shape.  Maps have the input's shape too (2-D for a 2-D input).
        """
        t0 = time.perf_counter()
        arr, two_d = as_stack(volume, name="the input")
        vol = volume if isinstance(volume, Volume) else None
        dose = _check_dose(dose_fraction)
        ps = self.dictionary.patch_size if self.dictionary is not None else MIN_SLICE_PIXELS
        if min(arr.shape[1:]) < ps:
            raise ValueError(
                f"Expected slices of at least {ps} x {ps} pixels; received shape "
                f"{arr.shape[1:] if not two_d else arr.shape[1:]}."
            )
        spacing = vol.spacing if vol is not None else None

        from tqdm.auto import tqdm

        from hybrid.baselines import InputBaseline
        from hybrid.cnn.noise import ratio_of, reading
        from hybrid.lung import body_mask, segment

        nz = arr.shape[0]
        self.prepare(progress=progress)  # a notice while a first-time graph build runs
        bar = tqdm(total=nz, desc="hybrid.enhance", unit="slice", disable=not progress,
                   leave=False)
        try:
            # 3-D segmentation on the whole volume (see module docs)
            bar.set_description("hybrid.enhance: lung segmentation")
            clock = time.perf_counter()
            body = body_mask(arr, spacing=spacing)
            lung = segment(arr, spacing=spacing, body=body)
            stages = {"segment": time.perf_counter() - clock, "cnn": 0.0, "noise_aware": 0.0,
                      "dictionary": 0.0, "blend": 0.0}
            out = np.empty(arr.shape, np.float32)
            keep_input = "input" in self.blender.modes
            # once on the whole volume: slices without soft tissue take the volume's median;
            # what the input looks like is told to the user (log, CLI, derived series)
            noise_est, kernel = InputBaseline().noise_estimate(
                volume if vol is not None else arr, body)
            ratio = ratio_of(noise_est, kernel,
                             slice_mm=vol.slice_thickness_mm if vol is not None else None,
                             reference_mm=self.thickness_reference_mm)
            input_reading = reading(noise_est, kernel)
            # per candidate rule: sum of its weight inside the body, pixels
            shares = {"noise_aware": [0.0, 0], "input": [0.0, 0]}
            guarded = 0  # slices the residual guard moved back towards the input
            with_dict = self.dictionary is not None
            if return_maps:
                maps = _new_maps(arr.shape, with_dict)
            for start in range(0, nz, self.batch_slices):
                s = slice(start, min(start + self.batch_slices, nz))
                res, props = self._enhance_batch(arr[s], lung[s], body[s], ratio[s], stages,
                                                 bar, want_input=keep_input or return_maps)
                if self.residual_guard and keep_input:
                    res, n = _guarded(arr[s], res, props["cnn"].image, body[s], ratio[s],
                                      noise_est.sigma_hu[s])
                    guarded += n
                out[s] = res.image
                for name in ("noise_aware", "input"):
                    if name in res.weights:
                        w = np.broadcast_to(res.weights[name], res.image.shape)[body[s]]
                        shares[name][0] += float(w.sum())
                        shares[name][1] += w.size
                if return_maps:
                    maps["cnn"][s] = props["cnn"].image
                    if with_dict:
                        maps["dictionary"][s] = props["dictionary"].image
                        maps["distance"][s] = props["dictionary"].uncertainty
                        maps["dictionary_weight"][s] = res.weights["dictionary"]
                    maps["noise_ratio"][s] = props["input"].uncertainty
                    if keep_input:
                        maps["input_weight"][s] = res.weights["input"]
                bar.update(s.stop - s.start)
        finally:
            bar.close()
        if not np.isfinite(out).all():  # pragma: no cover - a broken model
            raise RuntimeError(
                "The models returned non-finite values; the assets may be corrupt. "
                "Re-create them (make train dictionary)."
            )
        for name, (total, n) in shares.items():
            if name == "input" or self.noise_aware is not None:
                input_reading[f"{name}_weight_body"] = round(total / n, 3) if n else 0.0
        if self.residual_guard and keep_input:
            input_reading["residual_guard_slices"] = guarded
        info = self._info(dose, input_reading, stages, time.perf_counter() - t0)
        step = info["step"]
        self._last.info = info
        log.info("enhanced %d slice(s) %s in %.1f s; %s", nz, arr.shape[1:], info["seconds"],
                 describe_reading(input_reading))
        if vol is not None:
            result: Any = vol.with_array(out, step=step)
        else:
            result = out[0] if two_d else out
        if not return_maps:
            return result
        sq = (lambda a: a if a is None else a[0]) if two_d else (lambda a: a)
        maps.update(lung_mask=lung, body_mask=body)
        return result, EnhanceMaps(**{k: sq(v) for k, v in maps.items()}, info=info)

    def _enhance_batch(self, x: np.ndarray, lung: np.ndarray, body: np.ndarray,
                       ratio: np.ndarray, stages: dict[str, float], bar: Any, *,
                       want_input: bool):
        """One batch of slices: the proposals and their blend (:meth:`enhance`)."""
        from hybrid.baselines import InputBaseline
        from hybrid.blend import BlendResult

        clock = time.perf_counter()
        bar.set_description("hybrid.enhance: CNN pair")
        props = {"cnn": self.cnn.propose(x, lung_mask=lung, body_mask=body)}
        stages["cnn"] += time.perf_counter() - clock
        cands = []
        if self.dictionary is not None:
            clock = time.perf_counter()
            bar.set_description("hybrid.enhance: patch dictionary")
            props["dictionary"] = self.dictionary.propose(x, body_mask=body)
            stages["dictionary"] += time.perf_counter() - clock
            cands.append(props["dictionary"])
        # the input with its per-slice noise ratio broadcast: the maps' and both rules' map
        inp = InputBaseline.with_ratio(x, ratio) if want_input or self.noise_aware else None
        if self.noise_aware is not None:
            clock = time.perf_counter()
            bar.set_description("hybrid.enhance: noise-aware CNN pair")
            props["noise_aware"] = self._noise_aware_proposal(x, lung, body, inp.uncertainty,
                                                              props["cnn"].image)
            stages["noise_aware"] += time.perf_counter() - clock
            cands.append(props["noise_aware"])
        clock = time.perf_counter()
        bar.set_description("hybrid.enhance: blend")
        if want_input:
            props["input"] = inp
            if "input" in self.blender.modes:
                cands.append(props["input"])
        res = (self.blender.blend(props["cnn"], *cands) if cands
               else BlendResult(np.asarray(props["cnn"].image, np.float32), {}))
        stages["blend"] += time.perf_counter() - clock
        return res, props

    def _noise_aware_proposal(self, x, lung, body, ratio_map: np.ndarray, base: np.ndarray):
        """The noise-aware pair's proposal, run only on the slices whose rule weight
        reaches :data:`RUN_WEIGHT` (elsewhere the base's image, weighted below that);
        ``ratio_map`` is the per-slice noise ratio broadcast over each slice."""
        from hybrid.proposal import Proposal

        run = self.blender.modes["noise_aware"].weight(ratio_map[:, 0, 0]) >= RUN_WEIGHT
        image = np.array(base, np.float32, copy=True)
        if run.any():
            image[run] = self.noise_aware.propose(x[run], lung_mask=lung[run],
                                                  body_mask=body[run]).image
        return Proposal(image=image, uncertainty=ratio_map, kind="noise_ratio",
                        name="noise_aware")


def _guarded(x: np.ndarray, res: Any, cnn: np.ndarray, body: np.ndarray, ratio: np.ndarray,
             sigma: np.ndarray) -> tuple[Any, int]:
    """The blend ``res`` of slices ``x`` with each slice's change from its input scaled so
    that the CNN's share is at most :func:`hybrid.blend.residual_guard`'s; the candidates'
    weights (the input's: its complement) follow.  Returns it and how many slices moved."""
    from hybrid.blend import BlendResult, residual_guard

    n = len(x)
    flat = body.reshape(n, -1)
    count = flat.sum(axis=1)
    change = ((cnn - x).reshape(n, -1).astype(np.float64) ** 2 * flat).sum(axis=1)
    q = change / np.maximum(count, 1) / np.maximum(np.asarray(sigma, np.float64), 1e-6) ** 2
    share = np.where(count > 0, residual_guard(ratio, q), 1.0)
    w_in = np.broadcast_to(res.weights["input"], x.shape).reshape(n, -1)
    cnn_share = 1.0 - (w_in * flat).sum(axis=1) / np.maximum(count, 1)
    scale = np.where(cnn_share > share, share / np.maximum(cnn_share, 1e-12), 1.0)
    moved = scale < 1.0
    if not moved.any():
        return res, 0
    k = scale.astype(np.float32)[:, None, None]
    image = np.where(moved[:, None, None], x + k * (res.image - x), res.image).astype(np.float32)
    weights = {}
    for name, w in res.weights.items():
        w = np.broadcast_to(w, x.shape)
        weights[name] = np.where(moved[:, None, None],
                                 1.0 - k * (1.0 - w) if name == "input" else k * w,
                                 w).astype(np.float32)
    return BlendResult(image, weights), int(moved.sum())


def _new_maps(shape: tuple[int, ...], with_dict: bool) -> dict[str, np.ndarray | None]:
    """The per-pixel maps :meth:`Enhancer.enhance` fills, batch by batch (no dictionary's
    without one)."""
    return {
        "cnn": np.empty(shape, np.float32),
        "dictionary": np.empty(shape, np.float32) if with_dict else None,
        "distance": np.empty(shape, np.float32) if with_dict else None,
        "dictionary_weight": np.zeros(shape, np.float32),
        "noise_ratio": np.empty(shape, np.float32),
        "input_weight": np.zeros(shape, np.float32),
    }


_DEFAULT: Enhancer | None = None
_DEFAULT_LOCK = threading.Lock()


def default_enhancer() -> Enhancer:
    """The shared Enhancer with the shipped defaults (loaded on first use, then cached)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Enhancer()
        return _DEFAULT


def enhance(volume: Any, **kwargs: Any):
    """Enhance with the shipped default models (a cached :class:`Enhancer`).

    ``kwargs`` are those of :meth:`Enhancer.enhance` (``dose_fraction``,
    ``return_maps``, ``progress``).  For other models or settings make your
    own ``Enhancer(cnn=..., dictionary=..., blender=..., stride=...)``.
    """
    return default_enhancer().enhance(volume, **kwargs)

