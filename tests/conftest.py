"""Shared test fixtures: the real CT folder, small DICOM series made on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hybrid._paths import SHARED_DATA_DIR

REPO = Path(__file__).resolve().parents[1]
#: Real clinical CT, read-only, beside the repository (see its README).
DATA_ROOT = SHARED_DATA_DIR / "ct"


def real_series(relative: str) -> Path:
    """Path of a real series, or skip the test with the reason."""
    path = DATA_ROOT / relative
    if not path.exists():
        pytest.skip(f"real CT not available: {path} is absent (CI has ../shared/data/ct beside the repo)")
    return path


def gpu_available() -> bool:
    try:
        import faiss

        return faiss.get_num_gpus() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible (the gpu paths run where one exists)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def small_volume():
    """A 4-slice 32×40 volume: air, a water disc with a bone spot, mild noise."""
    from hybrid import Volume

    r = np.random.default_rng(7)
    z, y, x = np.mgrid[0:4, 0:32, 0:40]
    arr = np.full((4, 32, 40), -1000.0, np.float32)
    disc = (y - 16) ** 2 + (x - 20) ** 2 < 12**2
    arr[disc] = 40.0
    arr[(y - 14) ** 2 + (x - 22) ** 2 < 3**2] = 900.0
    arr += r.normal(0, 5, arr.shape).astype(np.float32)
    return Volume(arr, (2.5, 0.7, 0.7))


@pytest.fixture
def dicom_series(tmp_path, small_volume):
    """A small CT series written by hybrid (no source headers: a fresh study)."""
    from hybrid import save

    out = tmp_path / "series"
    save(small_volume, out, format="dicom", description="fixture")
    return out


# ---------------------------------------------------------------- hybrid serve
@pytest.fixture
def serve_log(caplog):
    """The hybrid.serve log at INFO (what an operator would read)."""
    import logging

    caplog.set_level(logging.INFO, logger="hybrid.serve")
    return caplog


@pytest.fixture
def orthanc(tmp_path):
    """A real Orthanc on 127.0.0.1 (tests/orthanc_server.py); skips where it is not installed."""
    from tests.orthanc_server import ORTHANC, OrthancServer

    if ORTHANC is None:
        pytest.skip("Debian's Orthanc is not installed (.ci/run installs it: apt-get install "
                    "orthanc orthanc-dicomweb)")
    server = OrthancServer(tmp_path / "orthanc", modalities=["SCANNER", "HYBRID"]).start()
    yield server
    server.stop(graceful=False)  # its storage is thrown away: no need to wait for a clean exit
