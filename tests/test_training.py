"""Blender calibration samples (hybrid.training.calibration_samples), on a tiny case."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def tiny():
    """A 2-slice 128² phantom case labelled once as phantom, once as a real standard-kernel
    scan, and tiny models (built in seconds; their quality does not matter here)."""
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.data import make_phantom_case
    from hybrid.dictionary import DictionaryConfig, PatchDictionary

    case = make_phantom_case(4, shape=(2, 128, 128), kernel="standard")
    real = dataclasses.replace(case, kind="real", meta=dict(case.meta, kernel="standard"))
    dic = PatchDictionary.build([(case.uld.array, case.nd, case.body_mask)],
                                config=DictionaryConfig(max_patches=3000, n_heldout=100))
    pair = CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                         CNNConfig.for_region("body", depth=3, width=8))
    return case, real, pair, dic


def test_sharp_variants_only_for_real_smooth_or_standard_cases(tiny):
    from scipy.ndimage import gaussian_filter

    from hybrid.training import calibration_samples

    case, real, pair, dic = tiny
    samples, n_sharp = calibration_samples([case], pair, dic)
    assert (len(samples), n_sharp) == (2, 0)  # nominal + other dose; a phantom has its own kernels
    samples, n_sharp = calibration_samples([real], pair, dic)
    assert (len(samples), n_sharp) == (4, 2)  # + the sharp version at 2 % and 5 %
    nd, nd_sharp = samples[0][3], samples[2][3]
    body = real.body_mask
    # the sharp re-filtering raises the normal dose's fine detail and noise several-fold (noise
    # 11 -> 40 HU on a real chest scan) and keeps its level
    def fine(img):
        return float(np.std((img - gaussian_filter(img, (0, 1.0, 1.0)))[body]))

    assert fine(nd_sharp) > 2.5 * fine(nd)  # 256 vs 73 HU seen
    assert abs(float(nd_sharp.mean() - nd.mean())) < 0.5  # a pure re-filtering: DC kept
    # seeded: the same sharp samples twice
    again, _ = calibration_samples([real], pair, dic)
    np.testing.assert_array_equal(again[2][1], samples[2][1])
    _, n_none = calibration_samples([real], pair, dic, sharp_variants=False, include_aug=False)
    assert n_none == 0
