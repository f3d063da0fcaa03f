"""NIfTI in and out (nibabel).

The array is stored in nibabel's (i, j, k) voxel order with a RAS+ affine.
On reading, the image is reoriented to the closest canonical (RAS+)
orientation and mapped to the project's (z, y, x) contract as DICOM shows
an axial slice: x towards the patient's left, y towards posterior, z
towards superior.  Spacing comes from the affine's voxel sizes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hybrid.io._atomic import atomic_file
from hybrid.volume import Provenance, Volume


def read_nifti(path: str | os.PathLike) -> Volume:
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise ValueError(f"Expected a readable NIfTI file; {path} failed to load: {exc}") from exc
    if len(img.shape) != 3:
        raise ValueError(
            f"Expected a 3-D NIfTI volume; received shape {img.shape} in {path}. "
            "Extract one 3-D volume (e.g. the first time point) first."
        )
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope/inter
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    arr = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))
    desc = img.header.get("descrip")
    prov = Provenance(source=str(path), modality="CT")
    text = bytes(np.asarray(desc).tobytes()).rstrip(b"\0").decode("ascii", "ignore") if desc is not None else ""
    if text.startswith("{"):
        try:
            meta = json.loads(text)
            prov = Provenance(source=str(path), modality=meta.get("modality", "CT"), kernel=meta.get("kernel"))
        except json.JSONDecodeError:
            pass
    return Volume(arr, (zooms[2], zooms[1], zooms[0]), prov)


def write_nifti(volume: Volume, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    import nibabel as nib

    path = Path(path)
    dz, dy, dx = volume.spacing
    data = np.ascontiguousarray(volume.array.transpose(2, 1, 0)[::-1, ::-1, :])
    affine = np.diag([dx, dy, dz, 1.0])
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(np.float32)
    meta = json.dumps({"modality": volume.provenance.modality, "kernel": volume.provenance.kernel})
    if len(meta) < 80:
        img.header["descrip"] = meta.encode()
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic_file(path, overwrite=overwrite) as tmp:
        real_tmp = tmp.with_name(tmp.name + suffix)
        try:
            nib.save(img, str(real_tmp))
            os.replace(real_tmp, tmp)
        finally:
            if real_tmp.exists():
                real_tmp.unlink()
    return path
