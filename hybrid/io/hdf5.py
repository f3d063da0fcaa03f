"""The project's own HDF5 layout (h5py).

Layout (format ``hybrid-volume``, version 1)::

    /volume            float32 (z, y, x), HU, gzip-compressed, one chunk per slice
      attrs: format="hybrid-volume", version=1, units="HU", axes="zyx",
             spacing=[dz, dy, dx] (mm), provenance=<JSON of hybrid.Provenance>

Extra named arrays (e.g. ``lung_mask``, ``nd``) may sit beside ``/volume``
with the same shape; :func:`read_hdf5` reads ``/volume`` unless told
otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from hybrid.io._atomic import atomic_file
from hybrid.volume import Provenance, Volume

FORMAT = "hybrid-volume"
VERSION = 1


def _open(path: Path):
    """``path`` opened read-only with h5py, or a clear error."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"Expected a readable HDF5 file; {path} failed to open: {exc}") from exc


def read_hdf5(path: str | os.PathLike, *, dataset: str = "volume") -> Volume:
    path = Path(path)
    with _open(path) as f:
        if dataset not in f:
            raise ValueError(
                f"Expected a dataset '/{dataset}' in {path} (hybrid HDF5 layout); "
                f"received datasets {sorted(f.keys())}. Write it with hybrid.save()."
            )
        ds = f[dataset]
        fmt = ds.attrs.get("format", "")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT:
            raise ValueError(
                f"Expected format '{FORMAT}' on /{dataset} in {path}; received '{fmt}'. "
                "This file was not written by hybrid."
            )
        version = int(ds.attrs.get("version", 0))
        if version > VERSION:
            raise ValueError(
                f"Expected {FORMAT} version ≤ {VERSION}; received version {version} in {path}. "
                "Upgrade hybrid."
            )
        arr = ds[...]
        spacing = tuple(float(s) for s in ds.attrs["spacing"])
        prov_json = json.loads(ds.attrs.get("provenance", "{}"))
    prov_json["slice_headers"] = tuple(prov_json.get("slice_headers", ()))
    prov_json["derived_from"] = tuple(prov_json.get("derived_from", ()))
    prov = Provenance(**prov_json)
    return Volume(arr, spacing, prov)


def write_hdf5(
    volume: Volume,
    path: str | os.PathLike,
    *,
    extra: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``volume`` (and same-shaped ``extra`` arrays) in the layout above.

    ``attrs`` (JSON-able) is stored as the root attribute ``meta`` (JSON).
    """
    import h5py

    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            chunks = (1,) + volume.shape[1:]
            ds = f.create_dataset("volume", data=volume.array, chunks=chunks, compression="gzip",
                                  compression_opts=4, shuffle=True)
            ds.attrs["format"] = FORMAT
            ds.attrs["version"] = VERSION
            ds.attrs["units"] = "HU"
            ds.attrs["axes"] = "zyx"
            ds.attrs["spacing"] = np.asarray(volume.spacing, dtype=np.float64)
            ds.attrs["provenance"] = json.dumps(dataclasses.asdict(volume.provenance))
            if attrs:
                f.attrs["meta"] = json.dumps(attrs)
            for name, arr in (extra or {}).items():
                arr = np.asarray(arr)
                if arr.shape != volume.shape:
                    raise ValueError(
                        f"Expected extra array '{name}' of shape {volume.shape}; received {arr.shape}."
                    )
                f.create_dataset(name, data=arr, chunks=chunks, compression="gzip", shuffle=True)
    return path


def write_arrays(
    path: str | os.PathLike,
    arrays: dict[str, np.ndarray],
    *,
    attrs: dict | None = None,
    units: dict[str, str] | None = None,
    chunks: dict[str, tuple[int, ...]] | None = None,
    compress: bool | dict[str, bool] = True,
    overwrite: bool = False,
) -> Path:
    """Write named arrays (and JSON-able or scalar root ``attrs``) to one HDF5 file, atomically.

    The one place outside :func:`write_hdf5` where the package writes HDF5: the
    dictionary payload, enhancement maps and paired training cases go through
    here.  Boolean arrays are stored as uint8.  ``attrs`` values that are
    str, int, float or arrays are stored as they are; anything else as JSON.
    ``units`` sets a per-dataset ``units`` attribute; ``chunks`` per-dataset
    chunk shapes; ``compress`` gzip level 4 with shuffle (all, or per name).
    """
    import h5py

    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in (attrs or {}).items():
                if isinstance(value, (str, int, float, np.integer, np.floating, np.ndarray)):
                    f.attrs[key] = value
                else:
                    f.attrs[key] = json.dumps(value, default=str)
            for name, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype == bool:
                    arr = arr.astype(np.uint8)
                gz = compress.get(name, True) if isinstance(compress, dict) else compress
                kw = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if gz else {}
                if chunks and name in chunks:
                    kw["chunks"] = chunks[name]
                ds = f.create_dataset(name, data=arr, **kw)
                if units and name in units:
                    ds.attrs["units"] = units[name]
    return path


def read_arrays(
    path: str | os.PathLike,
    names: list[str] | tuple[str, ...] | None = None,
    *,
    slices: slice | None = None,
    require: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], dict]:
    """Read named arrays (default: all) and the root attributes of an HDF5 file.

    ``slices`` selects along the first axis.  ``require``: dataset or attribute
    names that must be present (ValueError naming the missing ones otherwise).
    Returns ``(arrays, attrs)``; string attributes are returned as str.
    """
    path = Path(path)
    with _open(path) as f:
        missing = [k for k in require if k not in f and k not in f.attrs]
        if missing:
            raise ValueError(f"Expected {', '.join(require)} in {path}; missing {missing}.")
        want = list(f.keys()) if names is None else list(names)
        sl = slices if slices is not None else slice(None)
        arrays = {n: f[n][sl] for n in want if n in f}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return arrays, attrs
