"""Reading and writing: real series, round trips, and every bad-input case."""

from __future__ import annotations

import glob
import shutil
import warnings

import numpy as np
import pydicom
import pytest

import hybrid
from hybrid import Volume
from tests.conftest import DATA_ROOT, real_series

# (folder, shape, spacing (z, y, x) mm) as documented in ../shared/data/ct/README.md
REAL = [
    ("pancreas-ct-cb-001/dicom", (134, 512, 512), (3.0, 1.074, 1.074)),
    ("lung-pet-ct-dx-a0001/kernel-B-5mm", (64, 512, 512), (5.0, 0.842, 0.842)),
    ("lung-pet-ct-dx-a0001/kernel-L-5mm", (64, 512, 512), (5.0, 0.842, 0.842)),
    ("totalsegmentator-example-j2k", (20, 512, 512), (2.0, 0.977, 0.977)),
    ("dcmqi-ct-3slice", (3, 512, 512), (1.0, 0.811, 0.811)),
    # a malformed private tag (01F1,1026: wrong value length) that strict readers reject
    ("itkelastix-thorax", (141, 512, 512), (2.0, 0.977, 0.977)),
]
COVID = sorted(p.split("/ct/")[1] for p in glob.glob(str(DATA_ROOT / "covid19-ny-sbu/*/*")))


def _air_outside_body(arr: np.ndarray) -> float:
    """Median HU of the 5 % least dense voxels in the top rows (air above the patient)."""
    top = arr[:, :40, 40:-40]
    return float(np.median(top[top < -500]))


def _soft_tissue_check(v: Volume) -> None:
    arr = v.array
    air = _air_outside_body(arr)
    assert -1050 <= air <= -950, f"air outside the body {air:.0f} HU, expected -1000 ± 50"
    assert arr.min() >= -1500, f"padding left in the image: min {arr.min():.0f} HU"
    # Soft tissue exists and is plausible: a large share of body voxels lies in -100..100 HU.
    body = arr[arr > -500]
    frac = np.mean((body > -150) & (body < 150))
    assert frac > 0.3, f"only {frac:.0%} of body voxels in soft-tissue range"
    assert np.percentile(body, 99.9) < 3100


@pytest.mark.parametrize("folder,shape,spacing", REAL, ids=[r[0].split("/")[0] for r in REAL])
def test_real_series_load(folder, shape, spacing):
    path = real_series(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LICENSE.txt etc. beside the slices
        v = hybrid.load(path)
    assert v.shape == shape
    np.testing.assert_allclose(v.spacing, spacing, atol=1e-3)
    assert v.provenance.modality == "CT"
    # The TotalSegmentator example was anonymised without a SeriesInstanceUID.
    assert v.provenance.series_uid or folder.startswith("totalsegmentator")
    assert len(v.provenance.slice_headers) == shape[0]
    _soft_tissue_check(v)
    # Sorted along the slice normal: positions strictly increase.
    z = [h["ImagePositionPatient"][2] for h in v.provenance.slice_headers]
    assert np.all(np.diff(z) > 0)


@pytest.mark.parametrize("folder", COVID or ["covid19-ny-sbu/missing"])
def test_real_covid_slices_padding_mapped_to_air(folder):
    v = hybrid.load(real_series(folder))
    assert v.shape == (1, 512, 512)
    _soft_tissue_check(v)


def test_jpeg2000_series_decodes_to_plausible_hu():
    v = hybrid.load(real_series("totalsegmentator-example-j2k"))
    ds = pydicom.dcmread(next(iter(sorted((DATA_ROOT / "totalsegmentator-example-j2k").iterdir()))))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    liver = v.array[10, 200:300, 150:250]  # upper abdomen: liver/soft tissue in the centre-left
    assert -200 < np.median(liver) < 200


def test_intercept_minus_1000_applied():
    """pancreas-ct-cb-001 stores intercept -1000: raw 0 must be -1000 HU, not -1024."""
    path = real_series("pancreas-ct-cb-001/dicom")
    first = sorted(path.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    assert float(ds.RescaleIntercept) == -1000
    v = hybrid.load(path)
    i = [h["SOPInstanceUID"] for h in v.provenance.slice_headers].index(ds.SOPInstanceUID)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) - 1000.0
    expected[expected <= -1500] = -1000
    np.testing.assert_array_equal(v.array[i], expected)


def test_dicom_round_trip_real(tmp_path):
    src = real_series("dcmqi-ct-3slice")
    v = hybrid.load(src)
    out = hybrid.save(v, tmp_path / "derived")
    w = hybrid.load(out)
    assert w.shape == v.shape
    np.testing.assert_allclose(w.spacing, v.spacing, rtol=1e-6)
    # Stored values are re-quantised through the source's rescale (slope 1): step 1 HU.
    step = float(v.provenance.slice_headers[0]["RescaleSlope"])
    assert np.max(np.abs(w.array - v.array)) <= step / 2 + 1e-3
    assert w.provenance.series_uid != v.provenance.series_uid
    src_uids = [h["SOPInstanceUID"] for h in v.provenance.slice_headers]
    for f, uid in zip(sorted(out.path.glob("*.dcm")), src_uids):
        ds = pydicom.dcmread(f)
        assert ds.SOPInstanceUID not in src_uids
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == uid
        assert ds.StudyInstanceUID == v.provenance.slice_headers[0]["StudyInstanceUID"]
        assert ds.FrameOfReferenceUID == v.provenance.slice_headers[0]["FrameOfReferenceUID"]
        assert ds.SeriesNumber != v.provenance.slice_headers[0]["SeriesNumber"]
        assert "hybrid" in ds.SeriesDescription and ds.DerivationDescription


def test_dicom_round_trip_fractional_hu(tmp_path, small_volume):
    out = hybrid.save(small_volume, tmp_path / "s")
    w = hybrid.load(out)
    assert np.max(np.abs(w.array - small_volume.array)) <= 0.5 + 1e-4  # slope 1 → 1 HU step
    np.testing.assert_allclose(w.spacing, small_volume.spacing, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".h5", ".npz"])
def test_exact_round_trips(tmp_path, small_volume, suffix):
    out = hybrid.save(small_volume, tmp_path / f"v{suffix}")
    w = hybrid.load(out)
    np.testing.assert_array_equal(w.array, small_volume.array)
    assert w.spacing == pytest.approx(small_volume.spacing)


def test_hdf5_keeps_provenance(tmp_path):
    v = hybrid.load(real_series("dcmqi-ct-3slice"))
    w = hybrid.load(hybrid.save(v, tmp_path / "v.h5"))
    np.testing.assert_array_equal(w.array, v.array)
    assert w.provenance.series_uid == v.provenance.series_uid
    assert w.provenance.slice_headers == v.provenance.slice_headers


def test_nifti_orientation_matches_dicom(tmp_path):
    """A NIfTI written by nibabel directly in RAS+ is read back in the DICOM-like (z, y, x) order."""
    import nibabel as nib

    data_zyx = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    # RAS+: i towards the patient's right, j anterior — the reverse of DICOM's columns and rows.
    xyz = data_zyx.transpose(2, 1, 0)[::-1, ::-1, :]
    nib.save(nib.Nifti1Image(np.ascontiguousarray(xyz), np.diag([0.5, 0.6, 2.0, 1.0])), tmp_path / "a.nii")
    v = hybrid.load(tmp_path / "a.nii")
    np.testing.assert_array_equal(v.array, data_zyx)
    assert v.spacing == pytest.approx((2.0, 0.6, 0.5))


def test_npy_with_spacing(tmp_path, small_volume):
    out = hybrid.save(small_volume, tmp_path / "v.npy")
    w = hybrid.load(out, spacing=(2.5, 0.7, 0.7))
    np.testing.assert_array_equal(w.array, small_volume.array)


# ---------------------------------------------------------------- writing safely


def test_save_never_overwrites_silently(tmp_path, small_volume):
    out = hybrid.save(small_volume, tmp_path / "v.h5").path
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        hybrid.save(small_volume, out)
    assert out.read_bytes() == before
    hybrid.save(small_volume.with_array(small_volume.array + 1), out, overwrite=True)
    assert hybrid.load(out).array[0, 0, 0] == small_volume.array[0, 0, 0] + 1


def test_save_refuses_the_input(dicom_series):
    v = hybrid.load(dicom_series)
    with pytest.raises(ValueError, match="never overwrites its input"):
        hybrid.save(v, dicom_series, overwrite=True)


def test_failed_write_leaves_nothing(tmp_path, small_volume, monkeypatch):
    import hybrid.io.hdf5 as h

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h.json, "dumps", boom)
    with pytest.raises(RuntimeError):
        hybrid.save(small_volume, tmp_path / "v.h5")
    assert list(tmp_path.iterdir()) == []


def test_failed_dicom_write_leaves_no_folder(tmp_path, small_volume, monkeypatch):
    monkeypatch.setattr(pydicom, "dcmwrite", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        hybrid.save(small_volume, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bad input


def _rewrite(folder, fn, which=slice(None)):
    for f in sorted(folder.glob("*.dcm"))[which]:
        ds = pydicom.dcmread(f)
        fn(ds)
        ds.save_as(f)


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="nothing exists"):
        hybrid.load("/no/such/folder")


def test_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="empty folder"):
        hybrid.load(tmp_path)


def test_no_dicom_at_all(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="none of the 1 file"):
        hybrid.load(tmp_path)


def test_non_dicom_files_skipped_with_warning(dicom_series, small_volume):
    (dicom_series / "README.txt").write_text("not dicom")
    with pytest.warns(UserWarning, match="Skipped 1 non-DICOM file"):
        v = hybrid.load(dicom_series)
    assert v.shape == small_volume.shape


def test_several_series_listed_and_selectable(tmp_path, small_volume):
    a = hybrid.save(small_volume, tmp_path / "a", description="first").path
    b = hybrid.save(small_volume, tmp_path / "b", description="second").path
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for src in (a, b):
        for f in src.glob("*.dcm"):
            shutil.copy(f, mixed / f"{src.name}_{f.name}")
    with pytest.raises(ValueError, match=r"received 2 series.*first.*second|received 2 series.*second.*first") as e:
        hybrid.load(mixed)
    uid = pydicom.dcmread(next(b.glob("*.dcm"))).SeriesInstanceUID
    assert uid in str(e.value)
    v = hybrid.load(mixed, series_uid=uid)
    assert v.provenance.series_uid == uid and v.shape == small_volume.shape


def test_non_ct_modality(dicom_series):
    def mr(ds):
        ds.Modality = "MR"

    _rewrite(dicom_series, mr)
    with pytest.raises(ValueError, match=r"Expected a CT series .*; received modality 'MR' and SOP class .* in 4 file"):
        hybrid.load(dicom_series)


def test_missing_position(dicom_series):
    _rewrite(dicom_series, lambda ds: delattr(ds, "ImagePositionPatient"), slice(0, 1))
    with pytest.raises(ValueError, match="ImagePositionPatient"):
        hybrid.load(dicom_series)


def test_duplicate_position(dicom_series):
    def same(ds):
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]

    _rewrite(dicom_series, same, slice(0, 2))
    with pytest.raises(ValueError, match="duplicate slice positions"):
        hybrid.load(dicom_series)


def test_uneven_spacing_reports_gap(dicom_series):
    sorted(dicom_series.glob("*.dcm"))[1].unlink()  # a missing slice leaves a 5 mm gap
    with pytest.raises(ValueError, match=r"uneven gaps: 5 mm"):
        hybrid.load(dicom_series)


def test_truncated_pixel_data(dicom_series):
    f = sorted(dicom_series.glob("*.dcm"))[2]
    data = f.read_bytes()
    f.write_bytes(data[:-500])
    with pytest.raises(ValueError, match=r"failed to (decode|read)"):
        hybrid.load(dicom_series)


def test_npz_without_volume(tmp_path):
    np.savez(tmp_path / "x.npz", other=np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="array named 'volume'"):
        hybrid.load(tmp_path / "x.npz")


def test_npy_nan_rejected(tmp_path):
    a = np.zeros((2, 3, 3), np.float32)
    a[0, 0, 0] = np.nan
    np.save(tmp_path / "x.npy", a)
    with pytest.raises(ValueError, match="NaN/inf"):
        hybrid.load(tmp_path / "x.npy")


def test_npy_wrong_rank(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="3-D array"):
        hybrid.load(tmp_path / "x.npy")


def test_nifti_4d_rejected(tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.eye(4)), tmp_path / "x.nii")
    with pytest.raises(ValueError, match="3-D NIfTI"):
        hybrid.load(tmp_path / "x.nii")


def test_foreign_hdf5_rejected(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = np.zeros((2, 2, 2))
    with pytest.raises(ValueError, match=r"dataset '/volume'"):
        hybrid.load(tmp_path / "x.h5")


def test_outputs_have_ordinary_permissions(tmp_path, small_volume):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        f = hybrid.save(small_volume, tmp_path / "v.h5")
        d = hybrid.save(small_volume, tmp_path / "series")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(f.path.stat().st_mode) == 0o644
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o755


# ---------------------------------------------------------------- what save returns


def test_save_returns_the_series_uid_it_wrote(tmp_path, small_volume):
    import os
    from pathlib import Path

    from hybrid.io import Saved

    saved = hybrid.save(small_volume, tmp_path / "series")
    assert isinstance(saved, Saved) and saved.format == "dicom"
    files = sorted((tmp_path / "series").glob("*.dcm"))
    assert saved.files == tuple(files) and len(files) == small_volume.shape[0]
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID)
            for f in files} == {saved.series_uid}
    assert hybrid.load(saved).provenance.series_uid == saved.series_uid
    # usable where the old return (the path) was
    assert os.fspath(saved) == str(tmp_path / "series") == str(saved)
    assert Path(saved) == saved.path == tmp_path / "series"
    # read back later (hybrid serve after a restart): the same
    from hybrid.io.dicom import saved_series

    assert saved_series(saved.path) == saved


@pytest.mark.parametrize("suffix, fmt", [(".nii.gz", "nifti"), (".h5", "hdf5"), (".npy", "npy"),
                                         (".npz", "npz")])
def test_save_returns_the_file_it_wrote(tmp_path, small_volume, suffix, fmt):
    saved = hybrid.save(small_volume, tmp_path / f"v{suffix}")
    assert (saved.path, saved.format, saved.series_uid) == (tmp_path / f"v{suffix}", fmt, None)
    assert saved.files == (saved.path,) and saved.path.is_file()


def test_derivation_text_written_from_one_place(tmp_path, small_volume):
    from hybrid.io import save_options
    from hybrid.io.derivation import derivation_text, series_description, software_versions

    enhanced = small_volume.with_array(small_volume.array, step="hybrid.enhance")
    assert save_options(enhanced, "nifti") == {}
    opts = save_options(enhanced, "dicom")
    assert opts == {"derivation": derivation_text("hybrid.enhance")}
    assert "research software, no diagnostic claim" in opts["derivation"]
    saved = hybrid.save(enhanced, tmp_path / "d", **opts)
    ds = pydicom.dcmread(saved.files[0], stop_before_pixels=True)
    assert ds.DerivationDescription == opts["derivation"]
    assert ds.SoftwareVersions == software_versions() == f"hybrid {hybrid.__version__}"
    assert ds.SeriesDescription == series_description(
        enhanced.provenance.description or "hybrid")


def test_send_transfer_syntaxes_are_pydicoms():
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from hybrid.io.dicom import SEND_TRANSFER_SYNTAXES

    assert SEND_TRANSFER_SYNTAXES == (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def test_discovery(tmp_path, dicom_series, small_volume):
    from hybrid.io.discover import find_series, inside, is_dicom_file, is_series_folder

    (dicom_series / "notes.txt").write_text("x")
    first = sorted(dicom_series.glob("*.dcm"))[0]
    plain = first.with_name("noext")
    plain.write_bytes(first.read_bytes())
    assert is_dicom_file(first) and is_dicom_file(plain)
    assert not is_dicom_file(dicom_series / "notes.txt")
    assert is_series_folder(dicom_series) and not is_series_folder(tmp_path)
    hybrid.save(small_volume, tmp_path / "nested" / "v.nii.gz")
    names = sorted(str(n) for _, n in find_series([tmp_path]))
    assert names == ["nested/v.nii.gz", "series"]
    assert inside(dicom_series / "x", dicom_series) and not inside(tmp_path, dicom_series)
    with pytest.raises(FileNotFoundError, match="nothing exists at"):
        find_series([tmp_path / "missing"])
