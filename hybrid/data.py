"""The paired dataset: (ultra-low-dose, normal-dose) volumes with lung and body masks.

No paired scans exist here, so the dataset is made the way the field makes
it (LoDoPaB-CT; Yu et al. 2012 noise insertion):

* **Phantom patients** (:mod:`hybrid.phantom`): a noise-free chest is
  "scanned twice" through :func:`hybrid.physics.scan`, once at normal dose
  and once at the reduced dose, with the same reconstruction kernel.  The
  true lung mask comes with the phantom.
* **Real series** (``../shared/data/ct``): the normal-dose image is the real
  scan; its low-dose partner gets the *extra* noise of the reduced dose
  (:func:`hybrid.physics.simulate_low_dose`).  Lung and body masks are
  segmented on the normal-dose image.

Every case stores two low-dose versions: ``/volume`` at the nominal dose
fraction (default 0.02; what evaluation uses) and ``uld_aug`` at a dose
fraction drawn log-uniformly from ``AUG_DOSE_RANGE`` (extra training
variety, so models are not tuned to one dose).  Phantom patients cycle
through the smooth, standard and sharp kernels.

Layout under the dataset root (default ``data/``, never committed)::

    manifest.json          cases, their patients, files, settings, SHA-256
    folds.json             leave-one-patient-out splits, per set
    phantom/P01.h5 …       one HDF5 per case (hybrid-volume layout, see hybrid.io.hdf5)
    real/<case>.h5           with extra arrays nd, uld_aug, lung_mask, body_mask
    figures/data_overview.png
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hybrid._paths import SHARED_DATA_DIR
from hybrid.io._atomic import sha256_file
from hybrid.volume import Volume

log = logging.getLogger(__name__)

NOMINAL_DOSE_FRACTION = 0.02
#: Dose fractions of the augmentation copy: log-uniform in this range.
AUG_DOSE_RANGE = (0.01, 0.10)
KERNELS = ("smooth", "standard", "sharp")
MANIFEST_VERSION = 1

#: Real series used for the "real" set: (case id, patient id, folder under the
#: CT root, slice range or None for all).  Two kernels of one patient share a
#: patient id, so leave-one-patient-out never trains on the other kernel.
REAL_CASES: tuple[tuple[str, str, str, tuple[int, int] | None], ...] = (
    ("A0001-B", "A0001", "lung-pet-ct-dx-a0001/kernel-B-5mm", None),
    ("A0001-L", "A0001", "lung-pet-ct-dx-a0001/kernel-L-5mm", None),
    ("pancreas-chest", "pancreas", "pancreas-ct-cb-001/dicom", (94, 134)),  # lungs in the top slices
    ("thorax", "itkelastix", "itkelastix-thorax", None),  # 141 slices: the whole thorax, kernel C
    ("dcmqi", "dcmqi", "dcmqi-ct-3slice", None),
    ("totalseg", "totalseg", "totalsegmentator-example-j2k", None),
    ("A002304-a", "A002304", "covid19-ny-sbu/A002304/19001231-076", None),
    ("A002304-b", "A002304", "covid19-ny-sbu/A002304/19010112-135", None),
    ("A027284-a", "A027284", "covid19-ny-sbu/A027284/19000925-116", None),
    ("A027284-b", "A027284", "covid19-ny-sbu/A027284/19001231-131", None),
    ("A046441-a", "A046441", "covid19-ny-sbu/A046441/19001111-045", None),
    ("A046441-b", "A046441", "covid19-ny-sbu/A046441/19010101-23", None),
    ("A048383-a", "A048383", "covid19-ny-sbu/A048383/19001231-30", None),
    ("A048383-b", "A048383", "covid19-ny-sbu/A048383/19010410-30", None),
    ("A056642-a", "A056642", "covid19-ny-sbu/A056642/19001229-053", None),
    ("A056642-b", "A056642", "covid19-ny-sbu/A056642/19010107-111", None),
)


def default_ct_root() -> Path:
    """``../shared/data/ct`` beside the repository (or ``$HYBRID_CT_ROOT``)."""
    env = os.environ.get("HYBRID_CT_ROOT")
    if env:
        return Path(env)
    return SHARED_DATA_DIR / "ct"


@dataclass(frozen=True, eq=False)
class PairedCase:
    """One paired case.

    Attributes
    ----------
    case_id, patient_id : str
        Case name and the patient it belongs to (cross-validation groups by patient).
    kind : {"phantom", "real"}
    uld : Volume
        Ultra-low-dose image at the nominal dose fraction (HU).
    nd : ndarray (Z, Y, X) float32
        Normal-dose image (HU): the target.
    uld_aug : ndarray (Z, Y, X) float32
        Low-dose image at ``meta["aug_dose_fraction"]`` (training variety).
    lung_mask, body_mask : ndarray (Z, Y, X) bool
    meta : dict
        Dose fractions, kernel, seed, source.
    """

    case_id: str
    patient_id: str
    kind: str
    uld: Volume
    nd: np.ndarray
    uld_aug: np.ndarray
    lung_mask: np.ndarray
    body_mask: np.ndarray
    meta: dict[str, Any]


def save_case(case: PairedCase, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a case atomically in the hybrid HDF5 layout."""
    from hybrid.io.hdf5 import write_hdf5

    meta = dict(case.meta, case_id=case.case_id, patient_id=case.patient_id, kind=case.kind)
    return write_hdf5(
        case.uld,
        path,
        extra={
            "nd": case.nd.astype(np.float32),
            "uld_aug": case.uld_aug.astype(np.float32),
            "lung_mask": case.lung_mask.astype(np.uint8),
            "body_mask": case.body_mask.astype(np.uint8),
        },
        attrs=meta,
        overwrite=overwrite,
    )


def load_case(path: str | os.PathLike, *, slices: slice | None = None) -> PairedCase:
    """Read a case written by :func:`save_case` (optionally only some slices)."""
    from hybrid.io.hdf5 import read_arrays, read_hdf5

    path = Path(path)
    uld = read_hdf5(path)
    names = ("nd", "uld_aug", "lung_mask", "body_mask")
    sl = slices or slice(None)
    arrays, attrs = read_arrays(path, names, slices=sl)
    missing = [k for k in names if k not in arrays]
    if missing or "meta" not in attrs:
        raise ValueError(
            f"Expected a paired case (arrays nd, uld_aug, lung_mask, body_mask and a 'meta' "
            f"attribute) in {path}; missing {missing or ['meta']}. Rebuild it with `make data`."
        )
    nd, aug = arrays["nd"], arrays["uld_aug"]
    lung, body = arrays["lung_mask"].astype(bool), arrays["body_mask"].astype(bool)
    meta = json.loads(attrs["meta"])
    if slices is not None:
        uld = uld.slab(sl.start or 0, sl.stop if sl.stop is not None else len(uld))
    return PairedCase(
        case_id=meta["case_id"], patient_id=meta["patient_id"], kind=meta["kind"], uld=uld,
        nd=nd, uld_aug=aug, lung_mask=lung, body_mask=body, meta=meta,
    )


def _aug_fraction(rng: np.random.Generator) -> float:
    lo, hi = np.log(AUG_DOSE_RANGE[0]), np.log(AUG_DOSE_RANGE[1])
    return float(np.exp(rng.uniform(lo, hi)))


def make_phantom_case(
    seed: int,
    *,
    shape: tuple[int, int, int] = (16, 512, 512),
    dose_fraction: float = NOMINAL_DOSE_FRACTION,
    kernel: str | None = None,
    progress: bool = False,
) -> PairedCase:
    """Draw phantom patient ``seed`` and scan it at normal and reduced dose."""
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(seed, shape=shape)
    rng = np.random.default_rng([seed, 2018])
    kernel = kernel or KERNELS[seed % len(KERNELS)]
    aug_f = _aug_fraction(rng)
    nd = scan_phantom(ph, dose_fraction=1.0, kernel=kernel, rng=rng.spawn(1)[0])
    uld = scan_phantom(ph, dose_fraction=dose_fraction, kernel=kernel, rng=rng.spawn(1)[0])
    aug = scan_phantom(ph, dose_fraction=aug_f, kernel=kernel, rng=rng.spawn(1)[0])
    meta = {
        "seed": seed, "kernel": kernel, "dose_fraction": dose_fraction,
        "aug_dose_fraction": aug_f, "source": f"hybrid.phantom seed={seed}",
        "shape": list(shape),
    }
    return PairedCase(
        case_id=f"P{seed:02d}", patient_id=f"P{seed:02d}", kind="phantom", uld=uld,
        nd=nd.array, uld_aug=aug.array, lung_mask=ph.lung_mask, body_mask=ph.body_mask, meta=meta,
    )


def noise_free_scan(case: PairedCase) -> np.ndarray:
    """The noise-free scan of a phantom case: its phantom drawn again from the case's seed
    and shape and scanned with its kernel at 10 000 times the normal dose and no
    electronic noise (residual noise about 1 % of the normal dose's).  The system blur
    of the scan stays, so ``case.nd - noise_free_scan(case)`` is the normal dose's own
    noise (uncorrelated with the low dose's: measured r = 0.006 on P03)."""
    from hybrid.phantom import make_patient, scan_phantom

    if case.kind != "phantom" or "seed" not in case.meta:
        raise ValueError(f"Expected a phantom case (made by make_phantom_case); received "
                         f"{case.case_id!r} of kind {case.kind!r}.")
    ph = make_patient(int(case.meta["seed"]), shape=tuple(case.meta["shape"]))
    if ph.truth.shape != case.nd.shape:
        raise ValueError(f"Expected the phantom of {case.case_id!r} to redraw at its shape "
                         f"{case.nd.shape}; it drew {ph.truth.shape}.")
    return scan_phantom(ph, dose_fraction=1e4, kernel=case.meta["kernel"],
                        electronic_noise=0.0).array.astype(np.float32)


def make_real_case(
    volume: Volume,
    *,
    case_id: str,
    patient_id: str,
    seed: int,
    dose_fraction: float = NOMINAL_DOSE_FRACTION,
    progress: bool = False,
) -> PairedCase:
    """Pair a real normal-dose volume with simulated ultra-low-dose versions."""
    from hybrid.lung import body_mask, segment
    from hybrid.physics import kernel_for, simulate_low_dose

    rng = np.random.default_rng([seed, 2018])
    kernel = kernel_for(volume.provenance.kernel)
    aug_f = _aug_fraction(rng)
    uld = simulate_low_dose(volume, dose_fraction, rng=rng.spawn(1)[0], kernel=kernel, progress=progress)
    aug = simulate_low_dose(volume, aug_f, rng=rng.spawn(1)[0], kernel=kernel, progress=progress)
    meta = {
        "seed": seed, "kernel": kernel, "dicom_kernel": volume.provenance.kernel,
        "dose_fraction": dose_fraction, "aug_dose_fraction": aug_f,
        "source": volume.provenance.source, "series_uid": volume.provenance.series_uid,
    }
    return PairedCase(
        case_id=case_id, patient_id=patient_id, kind="real", uld=uld, nd=volume.array,
        uld_aug=aug.array, lung_mask=segment(volume), body_mask=body_mask(volume), meta=meta,
    )


def _folds(cases: list[dict[str, Any]]) -> dict[str, list[dict[str, list[str]]]]:
    """Leave-one-patient-out folds per set, listing case ids."""
    folds: dict[str, list[dict[str, list[str]]]] = {}
    for kind in ("phantom", "real"):
        mine = [c for c in cases if c["kind"] == kind]
        patients = sorted({c["patient_id"] for c in mine})
        folds[kind] = [
            {
                "test_patient": [p],
                "test": [c["case_id"] for c in mine if c["patient_id"] == p],
                "train": [c["case_id"] for c in mine if c["patient_id"] != p],
            }
            for p in patients
        ]
    return folds


def _write_json(path: Path, obj: Any) -> None:
    from hybrid.io._atomic import atomic_file

    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def build_dataset(
    root: str | os.PathLike = "data",
    *,
    n_patients: int = 12,
    shape: tuple[int, int, int] = (16, 512, 512),
    real: bool = True,
    ct_root: str | os.PathLike | None = None,
    max_real_slices: int | None = None,
    dose_fraction: float = NOMINAL_DOSE_FRACTION,
    figure: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or complete) the paired dataset under ``root``; returns the manifest.

    Cases already present with matching settings are kept (re-running is
    cheap and resumes an interrupted build).  Real series are used where
    ``ct_root`` (default :func:`default_ct_root`) exists.
    """
    from tqdm.auto import tqdm

    from hybrid._version import __version__
    from hybrid.io import load

    root = Path(root)
    manifest_path = root / "manifest.json"
    old: dict[str, dict[str, Any]] = {}
    if manifest_path.exists():
        old = {c["case_id"]: c for c in json.loads(manifest_path.read_text()).get("cases", [])}

    settings = {"shape": list(shape), "dose_fraction": dose_fraction,
                "aug_dose_range": list(AUG_DOSE_RANGE), "max_real_slices": max_real_slices}
    jobs: list[tuple[str, str, str, Any]] = [
        (f"P{s:02d}", f"P{s:02d}", "phantom", s) for s in range(1, n_patients + 1)
    ]
    ct = Path(ct_root) if ct_root else default_ct_root()
    if real:
        if ct.exists():
            jobs += [(cid, pid, "real", (folder, rng)) for cid, pid, folder, rng in REAL_CASES
                     if (ct / folder).exists()]
        else:
            log.warning("real CT folder %s is absent: building the phantom set only", ct)

    cases: list[dict[str, Any]] = []
    for i, (case_id, patient_id, kind, spec) in enumerate(tqdm(jobs, desc="paired cases", disable=not progress)):
        path = root / kind / f"{case_id}.h5"
        prev = old.get(case_id)
        if prev and path.exists() and prev.get("settings") == settings and prev.get("sha256") == sha256_file(path):
            cases.append(prev)
            continue
        if kind == "phantom":
            case = make_phantom_case(spec, shape=shape, dose_fraction=dose_fraction)
        else:
            folder, srange = spec
            vol = load(ct / folder)
            if srange is not None:
                vol = vol.slab(*srange)
            if max_real_slices and len(vol) > max_real_slices:
                mid = len(vol) // 2
                vol = vol.slab(mid - max_real_slices // 2, mid - max_real_slices // 2 + max_real_slices)
            case = make_real_case(vol, case_id=case_id, patient_id=patient_id, seed=1000 + i,
                                  dose_fraction=dose_fraction)
        save_case(case, path, overwrite=True)
        entry = {
            "case_id": case_id, "patient_id": patient_id, "kind": kind,
            "file": str(path.relative_to(root)), "n_slices": len(case.uld),
            "spacing": list(case.uld.spacing), "settings": settings,
            "meta": case.meta, "sha256": sha256_file(path),
        }
        cases.append(entry)
    digest = hashlib.sha256("".join(c["sha256"] for c in cases).encode()).hexdigest()
    manifest = {
        "version": MANIFEST_VERSION, "built": datetime.datetime.now().isoformat(timespec="seconds"),
        "hybrid_version": __version__, "settings": settings, "hash": digest, "cases": cases,
    }
    _write_json(manifest_path, manifest)
    _write_json(root / "folds.json", _folds(cases))
    if figure:
        overview_figure(root, root / "figures" / "data_overview.png")
    return manifest


def load_manifest(root: str | os.PathLike = "data") -> dict[str, Any]:
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(
            f"Expected a paired dataset at {Path(root)} (manifest.json); none found. Run `make data` first."
        )
    return json.loads(path.read_text())


def iter_cases(root: str | os.PathLike = "data", *, kind: str | None = None, ids: list[str] | None = None):
    """Yield (manifest entry, path) for the cases of the dataset."""
    root = Path(root)
    for c in load_manifest(root)["cases"]:
        if (kind is None or c["kind"] == kind) and (ids is None or c["case_id"] in ids):
            yield c, root / c["file"]


def _pick_lung_slice(case: PairedCase) -> int:
    return int(np.argmax(case.lung_mask.reshape(len(case.nd), -1).sum(1)))


def overview_figure(root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """PNG: for a phantom and a real chest slice, normal dose, simulated ultra-low dose
    and lung mask, in the lung and soft-tissue windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid.io._atomic import atomic_file
    from hybrid.metrics import LUNG, SOFT_TISSUE

    root = Path(root)
    rows = []
    for kind, prefer in (("phantom", None), ("real", "A0001-B")):
        entries = list(iter_cases(root, kind=kind))
        if not entries:
            continue
        pick = next((e for e in entries if e[0]["case_id"] == prefer), entries[0])
        rows.append(load_case(pick[1]))
    fig, axes = plt.subplots(len(rows), 5, figsize=(17, 4.0 * len(rows)), squeeze=False)
    for ax_row, case in zip(axes, rows):
        z = _pick_lung_slice(case)
        f = case.meta["dose_fraction"]
        panels = [
            (case.nd[z], LUNG, "normal dose"),
            (case.uld.array[z], LUNG, f"simulated {f:.0%} dose"),
            (case.nd[z], SOFT_TISSUE, "normal dose"),
            (case.uld.array[z], SOFT_TISSUE, f"simulated {f:.0%} dose"),
        ]
        for ax, (img, w, title) in zip(ax_row, panels):
            ax.imshow(img, cmap="gray", vmin=w.low, vmax=w.high)
            ax.set_title(f"{case.case_id}: {title}\n{w} window", fontsize=9)
        ax_row[4].imshow(case.uld.array[z], cmap="gray", vmin=LUNG.low, vmax=LUNG.high)
        ax_row[4].contour(case.lung_mask[z], levels=[0.5], colors="lime", linewidths=0.8)
        ax_row[4].contour(case.body_mask[z], levels=[0.5], colors="orange", linewidths=0.6)
        ax_row[4].set_title(f"{case.case_id}: lung mask (green), body (orange)\n{LUNG} window", fontsize=9)
        for ax in ax_row:
            ax.set_axis_off()
    fig.text(0.01, 0.005, "Real CT: TCIA Lung-PET-CT-Dx (CC BY 4.0), Clark et al. J Digit Imaging 2013. "
             "Low dose simulated by hybrid.physics.", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    with atomic_file(out, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def add_cli(sub) -> None:
    """``hybrid data``: build the paired dataset."""
    p = sub.add_parser("data", help="build the paired (ultra-low-dose, normal-dose) dataset",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("data"), help="dataset root (default: data)")
    p.add_argument("--patients", type=int, default=12, help="phantom patients (default 12)")
    p.add_argument("--slices", type=int, default=16, help="slices per phantom patient (default 16)")
    p.add_argument("--size", type=int, default=512, help="phantom matrix size (default 512)")
    p.add_argument("--no-real", action="store_true", help="skip the real series")
    p.add_argument("--max-real-slices", type=int, default=None,
                   help="cap the slices taken from each real series (central slab)")
    p.add_argument("--dose-fraction", type=float, default=NOMINAL_DOSE_FRACTION)
    p.set_defaults(func=_cmd_data)


def _cmd_data(args) -> int:
    m = build_dataset(
        args.out, n_patients=args.patients, shape=(args.slices, args.size, args.size),
        real=not args.no_real, max_real_slices=args.max_real_slices, dose_fraction=args.dose_fraction,
    )
    n = {k: sum(c["kind"] == k for c in m["cases"]) for k in ("phantom", "real")}
    print(f"dataset {args.out}: {n['phantom']} phantom and {n['real']} real cases, hash {m['hash'][:12]}")
    print(f"figure: {args.out / 'figures' / 'data_overview.png'}")
    return 0


__all__ = [
    "PairedCase", "build_dataset", "load_case", "save_case", "load_manifest", "iter_cases",
    "make_phantom_case", "make_real_case", "noise_free_scan", "overview_figure", "REAL_CASES",
]
