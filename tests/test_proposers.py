"""One contract suite over every registered proposer (hybrid.proposers.REGISTRY).

Each proposer is made through the registry with test-sized settings (the learned ones
from small models saved to a temporary folder, so that the registry's loaders run too)
and must pass the same tests: shape and dtype, input untouched, a 2-D slice equals a
one-slice volume, a Volume equals its array, its outside-body behaviour, determinism,
settings never passed to ``propose``.
"""

from __future__ import annotations

import numpy as np
import pytest

from hybrid.proposal import UNCERTAINTY_KINDS, Proposal
from hybrid.proposers import REGISTRY, make, registered
from hybrid.volume import Volume

#: small settings per proposer (cheap enough for 2 slices of 96²)
SETTINGS = {"nlm": {"patch_size": 3, "patch_distance": 3}, "tv": {"max_num_iter": 20}}


@pytest.fixture(scope="module")
def case():
    from hybrid.phantom import make_patient, scan_phantom

    ph = make_patient(3, shape=(2, 96, 96))
    uld = scan_phantom(ph, dose_fraction=0.02, rng=2)
    return uld, ph.lung_mask, ph.body_mask


@pytest.fixture(scope="module")
def learned(tmp_path_factory, case):
    """Folders of a tiny CNN pair and a tiny dictionary (for make('cnn'/'dictionary', path=))."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("faiss")
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.dictionary import DictionaryConfig, PatchDictionary
    from hybrid.phantom import make_patient, scan_phantom

    root = tmp_path_factory.mktemp("proposers")
    ph = make_patient(5, shape=(2, 96, 96))
    nd, uld = scan_phantom(ph, dose_fraction=1.0, rng=1), scan_phantom(ph, dose_fraction=0.02, rng=3)
    PatchDictionary.build([(uld.array, nd.array, ph.body_mask)],
                          config=DictionaryConfig(max_patches=3000, n_heldout=100)
                          ).save(root / "dictionary")
    CNNPair.build(CNNConfig.for_region("lung", depth=3, width=8),
                  CNNConfig.for_region("body", depth=3, width=8)).save(root / "cnn")
    return root


def _make(name, learned_root):
    settings = dict(SETTINGS.get(name, {}))
    if name in ("cnn", "dictionary"):
        settings["path"] = learned_root / name
    if name == "bm3d":
        pytest.importorskip("bm3d")
    return make(name, **settings)


@pytest.fixture(params=registered())
def proposer(request, learned):
    return request.param, _make(request.param, learned)


def test_registry_names_every_proposer():
    assert {"cnn", "dictionary", "input", "gaussian", "nlm", "tv", "bm3d"} <= set(registered())
    with pytest.raises(ValueError, match="Expected one of"):
        make("median")


def test_shape_dtype_kind_and_name(proposer, case):
    name, p = proposer
    uld, lung, body = case
    out = p.propose(uld.array, lung_mask=lung, body_mask=body)
    assert isinstance(out, Proposal)
    assert out.image.shape == uld.shape and out.image.dtype == np.float32
    assert np.isfinite(out.image).all()
    assert out.name == name
    assert (out.uncertainty is None) == (out.kind is None)
    if out.kind is not None:
        assert out.kind in UNCERTAINTY_KINDS and out.uncertainty.shape == uld.shape


def test_input_is_not_modified(proposer, case):
    _, p = proposer
    uld, lung, body = case
    arr, lung_c, body_c = uld.array.copy(), lung.copy(), body.copy()
    p.propose(arr, lung_mask=lung_c, body_mask=body_c)
    np.testing.assert_array_equal(arr, uld.array)
    np.testing.assert_array_equal(lung_c, lung)
    np.testing.assert_array_equal(body_c, body)


def test_a_slice_equals_a_one_slice_volume(proposer, case):
    _, p = proposer
    uld, lung, body = case
    flat = p.propose(uld.array[1], lung_mask=lung[1], body_mask=body[1])
    vol = p.propose(uld.array[1:2], lung_mask=lung[1:2], body_mask=body[1:2])
    assert flat.image.shape == uld.shape[1:]
    np.testing.assert_array_equal(flat.image, vol.image[0])
    if flat.uncertainty is not None:
        np.testing.assert_array_equal(flat.uncertainty, vol.uncertainty[0])


def test_a_volume_equals_its_array_and_is_deterministic(proposer, case):
    _, p = proposer
    uld, lung, body = case
    a = p.propose(uld, lung_mask=lung, body_mask=body)
    b = p.propose(Volume(uld.array, uld.spacing), lung_mask=lung, body_mask=body)
    c = p.propose(uld.array, lung_mask=lung, body_mask=body)
    np.testing.assert_array_equal(a.image, c.image)
    np.testing.assert_array_equal(b.image, c.image)


def test_outside_the_body(proposer, case):
    """Each proposer says what it does outside the body: returns the input, or restores."""
    _, p = proposer
    uld, lung, body = case
    assert getattr(p, "outside_body", None) in ("input", "restored")
    out = p.propose(uld.array, lung_mask=lung, body_mask=body)
    if p.outside_body == "input":
        np.testing.assert_array_equal(out.image[~body], uld.array[~body])
    if out.kind == "nn_distance":  # no match outside the body: the blender gives it no weight
        assert np.isposinf(out.uncertainty[~body]).all()


def test_masks_are_checked_and_settings_are_not_call_options(proposer, case):
    _, p = proposer
    uld, lung, body = case
    with pytest.raises(ValueError, match="body_mask"):
        p.propose(uld.array, lung_mask=lung, body_mask=body[:, :-1])
    with pytest.raises(TypeError):
        p.propose(uld.array, lung_mask=lung, body_mask=body, stride=2)


def test_every_registered_factory_is_covered():
    # a new proposer must be added to this suite's settings or work with its defaults
    assert set(REGISTRY) == set(registered())
