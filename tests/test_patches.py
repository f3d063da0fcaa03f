"""Patch extraction and overlap-add (hybrid.patches)."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.patches import extract_patches, grid_centers, overlap_add


@pytest.fixture
def image(rng):
    # non-square, HU-like range, so row/column mix-ups show
    return (rng.normal(0, 300, (37, 52)) - 500).astype(np.float32)


@pytest.mark.parametrize("size", [3, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_extract_then_overlap_add_reproduces_image(image, size, stride):
    centers = grid_centers(image.shape, stride=stride)
    patches = extract_patches(image, centers, size=size)
    assert patches.shape == (len(centers), size * size)
    assert patches.dtype == np.float32 and patches.flags.c_contiguous
    back, weight = overlap_add(patches, centers, image.shape, size=size)
    # float64 accumulation: exact up to float32 rounding of the mean
    np.testing.assert_allclose(back, image, rtol=0, atol=1e-4)
    assert (weight >= 1).all()


def test_extract_matches_slicing_inside_and_padding_at_border(image):
    size, r = 7, 3
    centers = np.array([[10, 20], [0, 0], [36, 51]])
    p = extract_patches(image, centers, size=size).reshape(-1, size, size)
    np.testing.assert_array_equal(p[0], image[10 - r : 10 + r + 1, 20 - r : 20 + r + 1])
    padded = np.pad(image, r, mode="reflect")
    np.testing.assert_array_equal(p[1], padded[0:size, 0:size])
    np.testing.assert_array_equal(p[2], padded[36 : 36 + size, 51 : 51 + size])
    pe = extract_patches(image, centers[1:2], size=size, pad_mode="edge").reshape(size, size)
    np.testing.assert_array_equal(pe, np.pad(image, r, mode="edge")[0:size, 0:size])


def test_overlap_add_weighted_mean_and_scalar_per_patch():
    shape = (5, 5)
    centers = np.array([[2, 2], [2, 3]])
    patches = np.stack([np.full(9, 1.0), np.full(9, 4.0)])
    img, w = overlap_add(patches, centers, shape, size=3, patch_weights=np.array([3.0, 1.0]))
    # pixel (2, 2) is covered by both: (3*1 + 1*4) / 4
    assert img[2, 2] == pytest.approx(7.0 / 4.0)
    assert w[2, 2] == pytest.approx(4.0)
    assert img[2, 1] == pytest.approx(1.0) and img[2, 4] == pytest.approx(4.0)
    assert np.isnan(img[0, 0]) and w[0, 0] == 0
    # one value per patch spreads over its window
    img2, w2 = overlap_add(np.array([1.0, 4.0]), centers, shape, size=3, fill=-1.0)
    assert img2[2, 2] == pytest.approx(2.5) and img2[2, 1] == 1.0 and img2[2, 4] == 4.0
    assert img2[0, 0] == -1.0 and w2.sum() == 18


def test_overlap_add_with_duplicate_centres(image):
    unique = grid_centers(image.shape, stride=2)
    centers = np.concatenate([unique, unique[::5]])
    patches = extract_patches(image, centers, size=5)
    back, weight = overlap_add(patches, centers, image.shape, size=5)
    np.testing.assert_allclose(back, image, atol=1e-4)
    _, unique_w = overlap_add(patches[: len(unique)], unique, image.shape, size=5)
    assert (weight >= unique_w).all() and (weight > unique_w).any()


def test_grid_centers_span_image_and_cover_mask():
    c = grid_centers((10, 11), stride=4)
    assert set(c[:, 0]) == {0, 4, 8, 9} and set(c[:, 1]) == {0, 4, 8, 10}
    mask = np.zeros((40, 40), bool)
    mask[12:19, 25:33] = True
    # a rectangular grid (y, x): rows every 2, columns every 3 (and the last ones)
    c = grid_centers((10, 11), stride=(2, 3))
    assert set(c[:, 0]) == {0, 2, 4, 6, 8, 9} and set(c[:, 1]) == {0, 3, 6, 9, 10}
    for stride in (1, 3, 7, (2, 3), (7, 1)):
        cm = grid_centers(mask.shape, stride=stride, mask=mask, size=7)
        ones = np.ones((len(cm), 49), np.float32)
        _, w = overlap_add(ones, cm, mask.shape, size=7)
        assert (w[mask] > 0).all(), stride  # every mask pixel covered
        assert len(cm) < len(grid_centers(mask.shape, stride=stride))  # far windows skipped


def test_errors_are_clear(image):
    c = np.array([[1, 1]])
    with pytest.raises(ValueError, match="2-D image"):
        extract_patches(image[None], c)
    with pytest.raises(ValueError, match="positive odd"):
        extract_patches(image, c, size=4)
    with pytest.raises(ValueError, match="inside the image"):
        extract_patches(image, np.array([[37, 0]]))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        extract_patches(image, np.array([1, 2]))
    with pytest.raises(ValueError, match="Expected patches of shape"):
        overlap_add(np.zeros((1, 48)), c, image.shape, size=7)
    with pytest.raises(ValueError, match="non-negative"):
        overlap_add(np.zeros((1, 49)), c, image.shape, patch_weights=np.array([-1.0]))
    with pytest.raises(ValueError, match="stride"):
        grid_centers(image.shape, stride=0)
    with pytest.raises(ValueError, match="mask of shape"):
        grid_centers(image.shape, mask=np.ones((3, 3), bool))
