import subprocess
import sys

import numpy as np
import pytest

from hybrid import Provenance, Volume


def test_volume_stores_float32_contiguous():
    v = Volume(np.zeros((2, 3, 4), np.int16), (1, 2, 3))
    assert v.array.dtype == np.float32 and v.array.flags.c_contiguous
    assert v.spacing == (1.0, 2.0, 3.0) and v.shape == (2, 3, 4) and len(v) == 2


@pytest.mark.parametrize("shape", [(4, 4), (1, 2, 3, 4), (5,)])
def test_volume_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"3-D array.*rank"):
        Volume(np.zeros(shape), (1, 1, 1))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_volume_rejects_non_finite(bad):
    a = np.zeros((2, 3, 3), np.float32)
    a[1, 1, 1] = bad
    with pytest.raises(ValueError, match=r"1 NaN/inf"):
        Volume(a, (1, 1, 1))


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, -1, 1), (1, 1), (1, 1, float("nan"))])
def test_volume_rejects_bad_spacing(spacing):
    with pytest.raises(ValueError, match="positive spacings"):
        Volume(np.zeros((2, 2, 2)), spacing)


def test_volume_rejects_header_count_mismatch():
    with pytest.raises(ValueError, match="one slice header per slice"):
        Volume(np.zeros((2, 2, 2)), (1, 1, 1), Provenance(slice_headers=({},)))


def test_with_array_keeps_spacing_and_records_step():
    v = Volume(np.zeros((2, 2, 2)), (3, 1, 1), Provenance(source="x"))
    w = v.with_array(np.ones((2, 2, 2)), step="test 1")
    assert w.spacing == v.spacing and w.provenance.source == "x"
    assert w.provenance.derived_from == ("test 1",)
    with pytest.raises(ValueError, match="volume's shape"):
        v.with_array(np.ones((3, 2, 2)))


def test_import_hybrid_is_light():
    code = (
        "import sys, hybrid; heavy = [m for m in ('tensorflow', 'faiss', 'pydicom', 'keras', 'nibabel', 'h5py') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import hybrid pulled in heavy modules: {out.stdout}"
