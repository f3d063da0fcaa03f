"""The HTML report of one enhancement (``hybrid enhance --report``), and its look in a real
browser: headless Chromium renders it and the screenshot shows the images."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hybrid.cli import EXIT_OK

_DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """`hybrid enhance` of a real 3-slice series with --report, in a fresh process."""
    from hybrid.artifacts import missing_shipped_assets
    from tests.conftest import real_series

    src = real_series("dcmqi-ct-3slice")
    if missing_shipped_assets():
        pytest.skip("shipped default models are absent (hybrid/assets)")
    tmp = tmp_path_factory.mktemp("report")
    page = tmp / "report.html"
    res = subprocess.run([sys.executable, "-m", "hybrid.cli", "enhance", str(src), str(tmp / "out"),
                          "--report", str(page), "--no-progress"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == EXIT_OK, res.stderr
    assert f"wrote report {page}" in res.stdout
    return src, page


def test_report_is_self_contained_and_says_what_it_must(report):
    import pydicom

    src, page = report
    text = page.read_text(encoding="utf-8")
    # self-contained: every image embedded, nothing fetched
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", text)
    assert "<script" not in text and "<link" not in text
    images = _DATA_URI.findall(text)
    assert len(images) == 3 * 5  # 3 slices (all of this series), 4 windowed views + source map
    words = _DATA_URI.sub("", text)
    for must in ("no diagnostic claim", "lung (-600/1500) window", "soft tissue (40/400) window",
                 "source map", "estimated noise before", "estimated noise after", "Timings",
                 "segment (s)", "cnn (s)", "dictionary (s)", "model: cnn", "blender"):
        assert must in words, must
    assert "no dictionary was used" in words  # the default path (issue 17): its map says so
    # no patient data: only UIDs name the series
    ds = pydicom.dcmread(sorted(src.glob("*"))[0], stop_before_pixels=True)
    for field in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(ds.get(field, "") or "")
        if value:
            assert value not in words, field
    assert str(ds.SeriesInstanceUID) in words
    # the noise went down (a real normal-dose series: a modest drop)
    before = float(re.search(r"estimated noise before[^<]*</th><td>([\d.]+)", words).group(1))
    after = float(re.search(r"estimated noise after[^<]*</th><td>([\d.]+)", words).group(1))
    assert after < before


def test_report_renders_in_headless_chromium(report, tmp_path):
    """The screenshot has the window's size and shows the CT images: at 1400 x 1800 px
    the image rows cover a large dark area (CT air and the source map's black outside the
    body) that a page of text alone does not have: more than 6 % of the pixels darker
    than 40 of 255 (measured 11 % on this series; the same page without its images:
    0.8 %, asserted below 2 %), and a spread of grey levels."""
    from PIL import Image

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on PATH (.ci/run installs Debian's chromium)")
    _, page = report
    shot = tmp_path / "shot.png"
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1400,1800",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert img.shape == (1800, 1400)
    assert np.mean(img < 40) > 0.06, "the screenshot shows no images"
    assert img.std() > 50
    # a control: the same page without its images is mostly white
    bare = tmp_path / "bare.html"
    bare.write_text(_DATA_URI.sub("", page.read_text(encoding="utf-8")).replace(
        "background: #000", "background: #fff"), encoding="utf-8")
    shot2 = tmp_path / "bare.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot2}", "--window-size=1400,1800", bare.as_uri()],
                   capture_output=True, text=True, timeout=120)
    assert np.mean(np.asarray(Image.open(shot2).convert("L")) < 40) < 0.02


def test_levels_spread_over_the_lungs():
    from hybrid.series_report import report_levels

    lung = np.zeros((20, 4, 4), bool)
    lung[5:15, 1, 1] = True
    assert report_levels(lung, 3) == [7, 9, 12]  # inner points of the lung slices 5..14
    assert report_levels(lung[:3], 3) == [0, 1, 2]  # no lung: all slices, at most n
    assert report_levels(np.zeros((2, 4, 4), bool), 3) == [0, 1]
