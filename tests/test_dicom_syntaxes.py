"""Every CT a PACS holds (issue 19): transfer syntaxes, Enhanced CT, CT without Modality.

Fixtures are made from the real 3-slice dcmqi series of ../shared/data/ct
(tests/dicom_fixtures.py), not downloaded.  The two real series the issue names (a JPEG
Lossless chest series and an anonymised LIDC-IDRI slice) are not in ../shared: they are
stood in for by the same series re-encoded as JPEG Lossless and with Modality removed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

import hybrid
from hybrid.io.transfer import SYNTAXES, WRITE_NAMES, decoder_advice
from tests.conftest import real_series
from tests.dicom_fixtures import (
    J2K_RATIO,
    NEAR,
    REENCODINGS,
    enhanced_ct,
    reencode,
    without_modality,
)

SOURCE = "dcmqi-ct-3slice"


@pytest.fixture(scope="module")
def source():
    folder = real_series(SOURCE)  # skips with the reason when ../shared is absent
    return folder, hybrid.load(folder)


def _plausible(vol: hybrid.Volume) -> None:
    """Air outside the body at -1000 +- 50 HU; soft tissue (muscle, blood) at 0-100 HU."""
    from hybrid.lung import body_mask

    body = body_mask(vol)
    air = vol.array[~body]
    assert abs(float(np.median(air)) + 1000.0) <= 50.0
    soft = vol.array[body & (vol.array > -100) & (vol.array < 200)]
    assert 0.0 <= float(np.median(soft)) <= 100.0


def _dciodvfy_errors(file: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return []
    res = subprocess.run([tool, str(file)], capture_output=True, text=True, timeout=60)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("uid", list(REENCODINGS), ids=list(REENCODINGS.values()))
def test_every_syntax_reads_back_the_source_hu(source, uid, tmp_path):
    """The source's own files re-encoded: lossless syntaxes give the same HU bit for bit;
    JPEG-LS near-lossless stays within its bound (NEAR stored values x the slope, 1 HU);
    lossy JPEG 2000 at 10:1 changes the image by under half of its own noise."""
    folder, vol = source
    got = hybrid.load(reencode(folder, tmp_path / "s", uid))
    assert got.provenance.transfer_syntax == uid
    assert got.spacing == vol.spacing and got.shape == vol.shape
    diff = got.array - vol.array
    if SYNTAXES[uid].lossless:
        np.testing.assert_array_equal(got.array, vol.array)
    elif uid == "1.2.840.10008.1.2.4.81":
        assert np.abs(diff).max() <= NEAR * 1.0  # slope 1 HU per stored value
    else:  # J2K lossy: no stated bound; measured 12.8 HU RMS against 34 HU of own noise
        from hybrid.physics import estimate_noise_hu

        assert J2K_RATIO == 10
        assert float(np.sqrt(np.mean(diff ** 2))) < 0.5 * estimate_noise_hu(vol.array)
    if uid in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57"):
        _plausible(got)  # the JPEG Lossless chest series, stood in for


@pytest.mark.parametrize("name", list(WRITE_NAMES))
def test_derived_series_in_each_syntax_round_trips_and_validates(source, name, tmp_path):
    """hybrid.save(..., transfer_syntax=name): the file says that syntax, the stored values
    read back exactly, and dciodvfy (where installed) finds no error."""
    _, vol = source
    saved = hybrid.save(vol, tmp_path / name, transfer_syntax=name)
    ds = pydicom.dcmread(saved.files[0], stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == WRITE_NAMES[name]
    np.testing.assert_array_equal(hybrid.load(saved).array, vol.array)
    if name != "deflated":  # dicom3tools reads no deflated file (nor pydicom's own); dcmtk does
        assert not _dciodvfy_errors(saved.files[0])


def test_source_syntax_is_kept_and_a_lossy_one_is_not_repeated(source, tmp_path):
    folder, _ = source
    for uid, written in (("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.70"),
                         ("1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.80"),
                         ("1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.90")):
        vol = hybrid.load(reencode(folder, tmp_path / uid, uid))
        saved = hybrid.save(vol, tmp_path / f"out-{uid}")
        assert pydicom.dcmread(saved.files[0], stop_before_pixels=True
                               ).file_meta.TransferSyntaxUID == written
    with pytest.raises(ValueError, match="Expected 'source' or one of explicit"):
        hybrid.save(vol, tmp_path / "bad", transfer_syntax="jpeg-xl")


def test_enhanced_ct_multiframe_reads_like_its_classic_series(source, tmp_path):
    """One Enhanced CT file (frames stored in reverse order, per-frame rescale): the same
    HU, spacing and kernel as the classic series; a derived series of classic slices,
    each referring to its source frame, valid by dciodvfy."""
    folder, vol = source
    enh = hybrid.load(enhanced_ct(folder, tmp_path / "enh"))
    np.testing.assert_array_equal(enh.array, vol.array)
    assert enh.spacing == pytest.approx(vol.spacing)
    assert enh.provenance.kernel == vol.provenance.kernel
    saved = hybrid.save(enh, tmp_path / "derived")
    refs = [pydicom.dcmread(f).SourceImageSequence[0] for f in saved.files]
    assert sorted(int(r.ReferencedFrameNumber) for r in refs) == [1, 2, 3]
    assert len({r.ReferencedSOPInstanceUID for r in refs}) == 1
    np.testing.assert_array_equal(hybrid.load(saved).array, vol.array)
    assert not _dciodvfy_errors(saved.files[0])


def test_ct_without_modality_is_read_by_its_sop_class(source, tmp_path):
    """An anonymised CT (no Modality; the issue's LIDC-IDRI slice, stood in for) is read;
    a non-CT SOP class without Modality is still refused, the message naming it."""
    folder, vol = source
    got = hybrid.load(without_modality(folder, tmp_path / "ct"))
    np.testing.assert_array_equal(got.array, vol.array)
    _plausible(got)
    mr = without_modality(folder, tmp_path / "mr", sop_class="1.2.840.10008.5.1.4.1.1.4")
    with pytest.raises(ValueError, match=r"received no Modality and SOP class 'MR Image Storage'"):
        hybrid.load(mr)


def test_undecodable_jpeg_lossless_names_its_plugin(source, tmp_path, monkeypatch):
    """Where no plugin decodes JPEG Lossless (python-gdcm missing, as pydicom then says),
    the message names what decodes that syntax, not the JPEG 2000 plugins."""
    folder, _ = source
    out = reencode(folder, tmp_path / "jl", "1.2.840.10008.1.2.4.70")

    def no_decoder(self):
        raise RuntimeError("Unable to decompress 'JPEG Lossless, Non-Hierarchical, First-Order "
                           "Prediction' pixel data because all plugins are missing dependencies")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    with pytest.raises(ValueError, match="pip install python-gdcm") as exc:
        hybrid.load(out)
    assert "openjpeg" not in str(exc.value)
    assert "pyjpegls" in decoder_advice("1.2.840.10008.1.2.4.80")
    assert "not one hybrid reads" in decoder_advice("1.2.840.10008.1.2.4.50")
