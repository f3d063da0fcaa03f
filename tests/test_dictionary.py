"""PatchDictionary: build, persistence, search quality, settings, proposals, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import hybrid.dictionary.index  # noqa: E402
from hybrid import Volume  # noqa: E402
from hybrid.dictionary import (  # noqa: E402
    FORMAT_VERSION,
    DictionaryConfig,
    DictionaryMismatchError,
    PatchDictionary,
    helmert_basis,
)
from hybrid.patches import extract_patches, grid_centers  # noqa: E402
from hybrid.proposal import Proposal  # noqa: E402

SIGMA = 40.0  # HU of the synthetic ULD noise


def _phantom(rng, n=128):
    """ND slice: body ellipse (40 HU), fat rim, two lungs (-850) with vessels, spine; body mask."""
    y, x = np.mgrid[0:n, 0:n] / n
    img = np.full((n, n), -1000.0)
    body = ((y - 0.5) / 0.42) ** 2 + ((x - 0.5) / 0.47) ** 2 < 1
    img[body] = 40.0
    img[body & (((y - 0.5) / 0.44) ** 2 + ((x - 0.5) / 0.49) ** 2 > 0.85)] = -100.0
    for cx in (0.3, 0.7):
        lung = ((y - 0.5) / 0.3) ** 2 + ((x - cx) / 0.15) ** 2 < 1
        img[lung] = -850.0
        for _ in range(5):
            vy, vx, r = (
                rng.uniform(0.25, 0.75),
                cx + rng.uniform(-0.1, 0.1),
                rng.uniform(0.01, 0.03),
            )
            img[lung & ((y - vy) ** 2 + (x - vx) ** 2 < r * r)] = 40.0
    img[((y - 0.75) / 0.06) ** 2 + ((x - 0.5) / 0.07) ** 2 < 1] = 700.0
    return img.astype(np.float32), body


def _patient(rng, z=2, n=128):
    nd, body = zip(*(_phantom(rng, n) for _ in range(z)))
    nd, body = np.stack(nd), np.stack(body)
    uld = nd + rng.normal(0, SIGMA, nd.shape).astype(np.float32)
    return uld, nd, body


def _rmse(a, b, mask):
    return float(np.sqrt(np.mean((a - b)[mask] ** 2)))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20261125)
    return {"train": [_patient(rng) for _ in range(3)], "test": _patient(rng)}


@pytest.fixture(scope="module")
def dictionary(data):
    # default factory / search params; small enough for a fast test
    cfg = DictionaryConfig(max_patches=40_000, n_heldout=500, seed=3)
    return PatchDictionary.build(data["train"], config=cfg, name="test", n_threads=2)


def test_build_metadata(dictionary):
    m = dictionary.meta
    assert len(dictionary) == m["counts"]["entries"] == 40_000
    assert m["factory"] == "IVF1024,Flat" and m["patch_size"] == 7 and m["key_dim"] == 16
    assert m["normalisation"] == {"type": "mean-helmert", "hu_scale": 100.0}
    assert m["noise"]["sigma_hu"] == pytest.approx(SIGMA, rel=0.05)
    assert m["format_version"] == FORMAT_VERSION and m["source"]["patients"] == 3
    # stratification (HU band x ND std): every stratum kept, rare ones whole,
    # the largest (flat) ones capped
    cand = np.array(m["counts"]["strata_candidates"])
    kept = np.array(m["counts"]["strata_entries"])
    assert (kept[cand > 0] > 0).all()
    rare = (cand > 0) & (cand < 500)
    assert (kept[rare] >= 0.9 * cand[rare]).all()
    assert kept.max() / kept.sum() < 0.8 * cand.max() / cand.sum()


def test_helmert_keys_ignore_level():
    h = helmert_basis(49)
    np.testing.assert_allclose(h @ h.T, np.eye(48), atol=1e-12)
    np.testing.assert_allclose(h @ np.ones(49), 0, atol=1e-12)
    p = np.random.default_rng(0).normal(size=49)
    assert np.linalg.norm(h @ p) == pytest.approx(np.linalg.norm(p - p.mean()))


def test_save_load_roundtrip_is_identical(dictionary, data, tmp_path):
    path = dictionary.save(tmp_path / "dictionaries" / "test")
    assert sorted(p.name for p in path.iterdir()) == ["index.faiss", "manifest.json", "meta.json",
                                                       "payload.h5"]
    assert [p.name for p in path.parent.iterdir()] == ["test"]  # no temp folder left behind
    loaded = PatchDictionary.load(
        path, expect={"patch_size": 7, "normalisation": {"hu_scale": 100.0}}
    )
    assert loaded.factory == dictionary.factory and len(loaded) == len(dictionary)
    uld, _, body = data["test"]
    a = dictionary.with_settings(stride=2, k=3).propose(uld, body_mask=body)
    b = loaded.with_settings(stride=2, k=3).propose(uld, body_mask=body)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    # the one manifest scheme: same digest saved and loaded, and a changed file is refused
    assert loaded.digest == dictionary.digest and len(loaded.digest) == 64
    with open(path / "index.faiss", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValueError, match="index.faiss"):
        PatchDictionary.load(path)
    with pytest.raises(FileExistsError):
        dictionary.save(path)
    dictionary.save(path, overwrite=True)
    assert PatchDictionary.load(path).meta["counts"] == dictionary.meta["counts"]


def test_recall_against_exact_search(dictionary, data, monkeypatch):
    uld, _, body = data["test"]  # held-out patient: patches not in the dictionary
    centers = grid_centers(body[0].shape, stride=1, mask=body[0])
    q = extract_patches(uld[0], centers)
    exact = faiss.IndexFlatL2(dictionary.meta["key_dim"])
    exact.add(dictionary.stored_keys())
    keys = dictionary.keys_of(q)
    d_exact, gt = exact.search(keys, 1)

    def recall_and_excess():
        _, ids = dictionary.search(q, k=1)
        found = np.linalg.norm(keys - dictionary.stored_keys()[ids[:, 0]], axis=1)
        excess = float(found.sum() / np.sqrt(np.maximum(d_exact[:, 0], 0)).sum() - 1)
        return float(np.mean(ids[:, 0] == gt[:, 0])), excess, ids

    # the default CPU search: the HNSW graph over the stored keys (cpu_graph=16, efSearch=10)
    # with a second look in the stored index where its answer is farther than noise
    recall, excess, ids = recall_and_excess()
    assert recall >= 0.9, recall  # 0.959 seen; floor 0.9 (issue #5)
    assert excess <= 0.01, excess  # 0.26 % seen; issue #5 allows 1 % where recall is traded
    # that second look matters: without it a few edge patches land in the wrong cluster
    with monkeypatch.context() as mp:
        mp.setattr(hybrid.dictionary.index, "_RECHECK_DISTANCE", np.inf)
        _, excess_graph_only, _ = recall_and_excess()
    assert excess_graph_only > 0.02, excess_graph_only  # 14 % seen
    # queries go through the graph sorted by locality; each answer is the query's own
    perm = np.random.default_rng(3).permutation(len(q))
    _, ids_perm = dictionary.search(q[perm], k=1)
    np.testing.assert_array_equal(ids_perm[:, 0], ids[perm, 0])
    params = dictionary.meta["search_params"]
    dictionary.set_cpu_graph(None)  # the stored IVF1024,Flat index
    try:
        _, ids = dictionary.search(q, k=1)
        recall = float(np.mean(ids[:, 0] == gt[:, 0]))
        assert recall >= 0.9, recall  # 0.949 seen (nprobe=16, 40 k entries, 16-d keys)
        dictionary.set_search_params("nprobe=1024")  # all lists: exact
        _, ids = dictionary.search(q, k=1)
        assert np.mean(ids[:, 0] == gt[:, 0]) > 0.999
    finally:
        dictionary.set_search_params(params)
        dictionary.set_cpu_graph(16)


def test_patient_in_dictionary_is_reproduced_and_unseen_pattern_is_far(data):
    uld, nd, body = data["train"][0]
    # every body patch of this patient is an entry (budget above the candidate count)
    cfg = DictionaryConfig(max_patches=100_000, n_heldout=0)
    d = PatchDictionary.build([(uld, nd, body)], config=cfg, n_threads=2)
    assert d.meta["counts"]["entries"] == d.meta["counts"]["candidates"]
    p = d.propose(uld, body_mask=body)
    rmse = _rmse(p.image, nd, body)
    assert rmse <= 10.0, rmse  # 0.008 HU seen (float16 values, approximate index)
    assert float(np.median(p.uncertainty[body])) < 0.05
    # an unseen pattern: a fine high-contrast checkerboard inside the body
    yy, xx = np.mgrid[0:128, 0:128]
    checker = np.where((yy // 2 + xx // 2) % 2 == 0, 600.0, -600.0).astype(np.float32)
    region = np.zeros_like(body[0])
    region[56:72, 56:72] = True
    probe = uld[0].copy()
    probe[region] = checker[region] + np.random.default_rng(5).normal(0, SIGMA, region.sum())
    q = d.propose(probe, body_mask=body[0])
    assert float(np.median(q.uncertainty[region])) > 3.0  # 5.1 seen (self-matches: 0.0)
    assert float(np.median(q.uncertainty[region])) > 20 * float(np.median(p.uncertainty[body]))


def test_proposal_denoises_new_patient(dictionary, data):
    uld, nd, body = data["test"]
    p = dictionary.with_settings(stride=2, k=4).propose(Volume(uld, (2.5, 0.7, 0.7)), body_mask=body)
    assert isinstance(p, Proposal) and p.name == "dictionary"
    assert p.image.shape == uld.shape and p.image.dtype == np.float32
    before, after = _rmse(uld, nd, body), _rmse(p.image, nd, body)
    assert after < 0.7 * before, (before, after)  # 40.3 -> 22.0 HU seen
    np.testing.assert_array_equal(p.image[~body], uld[~body])  # outside the body: the input
    assert np.isinf(p.uncertainty[~body]).all() and np.isfinite(p.uncertainty[body]).all()
    # typical matches sit near the noise level
    assert 0.2 < float(np.median(p.uncertainty[body])) < 1.5  # 0.63 seen


def test_slice_input_batches_and_k(dictionary, data):
    uld, _, body = data["test"]
    d3 = dictionary.with_settings(stride=3)
    whole = d3.propose(uld, body_mask=body)
    small = d3.with_settings(batch_patches=100).propose(uld, body_mask=body)
    np.testing.assert_array_equal(whole.image, small.image)
    one = d3.propose(uld[1], body_mask=body[1])
    assert one.image.shape == uld[1].shape
    np.testing.assert_allclose(one.image, whole.image[1], atol=1e-3)
    no_mask = d3.with_settings(k=2, bandwidth=np.inf).propose(uld[0])
    assert np.isfinite(no_mask.image).all() and np.isfinite(no_mask.uncertainty).all()


def test_slice_equals_one_slice_volume(dictionary, data):
    # the proposer contract: a 2-D slice gives the same image as a one-slice volume
    uld, _, body = data["test"]
    d = dictionary.with_settings(stride=(2, 3), k=3)
    flat = d.propose(uld[0], body_mask=body[0])
    vol = d.propose(uld[:1], body_mask=body[:1])
    assert flat.image.shape == uld[0].shape and vol.image.shape == uld[:1].shape
    np.testing.assert_array_equal(flat.image, vol.image[0])
    np.testing.assert_array_equal(flat.uncertainty, vol.uncertainty[0])
    # lung_mask is accepted (the contract) and changes nothing
    lung = d.propose(uld[0], body_mask=body[0], lung_mask=np.zeros_like(body[0]))
    np.testing.assert_array_equal(lung.image, flat.image)


def test_with_settings_copy_shares_the_index(dictionary, data):
    uld, _, body = data["test"]
    before = repr(dictionary)
    d = dictionary.with_settings(stride=(2, 3), k=2, bandwidth=0.5, batch_patches=1000,
                                 fill_distance=9.0)
    # a cheap copy: the same index, search graph and payload objects
    assert d._index is dictionary._index and d._payload is dictionary._payload
    assert d.values is dictionary.values and d.meta is dictionary.meta
    assert (d.stride, d.k, d.bandwidth, d.batch_patches, d.fill_distance) == ((2, 3), 2, 0.5,
                                                                               1000, 9.0)
    # the original keeps today's defaults
    assert (dictionary.stride, dictionary.k, dictionary.bandwidth, dictionary.batch_patches,
            dictionary.fill_distance) == (1, 1, 1.0, 1 << 19, np.inf)
    assert repr(dictionary) == before and "stride=(2, 3)" in repr(d) and "k=2" in repr(d)
    p = d.propose(uld, body_mask=body)
    assert (p.uncertainty[~body] == 9.0).all()
    with pytest.raises(AttributeError):
        d.stride = 3  # settings are read-only: with_settings makes the copy


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"strides": 2}, r"Unknown dictionary setting.*'strides'.*stride, k, bandwidth, "
                         r"batch_patches, fill_distance"),
        ({"stride": 8}, r"`stride`.*\[1, 7\]"),
        ({"stride": (2, 0)}, "`stride`"),
        ({"k": 0}, "`k`.*positive integer"),
        ({"k": 1.5}, "`k`"),
        ({"bandwidth": 0}, "`bandwidth`.*positive"),
        ({"bandwidth": "1"}, "`bandwidth`"),
        ({"batch_patches": 0}, "`batch_patches`.*positive integer"),
        ({"fill_distance": float("nan")}, "`fill_distance`.*not NaN"),
    ],
)
def test_with_settings_rejects_invalid(dictionary, settings, match):
    with pytest.raises(ValueError, match=match):
        dictionary.with_settings(**settings)
    assert dictionary.stride == 1 and dictionary.k == 1  # unchanged


def test_metadata_mismatch_is_refused(dictionary, tmp_path):
    path = dictionary.save(tmp_path / "d")
    with pytest.raises(DictionaryMismatchError, match="patch_size: stored 7, expected 5"):
        PatchDictionary.load(path, expect={"patch_size": 5})
    with pytest.raises(DictionaryMismatchError, match="hu_scale"):
        PatchDictionary.load(path, expect={"normalisation": {"hu_scale": 50.0}})
    with pytest.raises(DictionaryMismatchError, match="absent"):
        PatchDictionary.load(path, expect={"no_such_key": 1})
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DictionaryMismatchError, match="format_version"):
        PatchDictionary.load(path)
    meta["format_version"] = FORMAT_VERSION
    meta["normalisation"]["type"] = "zscore"
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DictionaryMismatchError, match="normalisation.type"):
        PatchDictionary.load(path)
    meta["normalisation"]["type"] = "mean-helmert"
    (path / "meta.json").write_text(json.dumps(meta))
    with open(path / "payload.h5", "ab") as f:
        f.write(b"corrupt")
    with pytest.raises(DictionaryMismatchError, match="SHA-256"):
        PatchDictionary.load(path)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        PatchDictionary.load(tmp_path / "missing")


def test_bad_input_errors(dictionary, data):
    uld, nd, body = data["test"]
    with pytest.raises(ValueError, match="rank 4"):
        dictionary.propose(uld[None])
    bad = uld.copy()
    bad[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dictionary.propose(bad)
    with pytest.raises(ValueError, match="`body_mask` of the image.s shape"):
        dictionary.propose(uld, body_mask=body[:, :10])
    with pytest.raises(ValueError, match="one shape"):
        PatchDictionary.build([(uld, nd[:, :50], None)])
    with pytest.raises(ValueError, match=r"tuple \(uld, nd, body_mask\)"):
        PatchDictionary.build([(uld, nd)])
    with pytest.raises(ValueError, match="empty body masks"):
        PatchDictionary.build([(uld, nd, np.zeros_like(body))])
    with pytest.raises(ValueError, match="positive odd"):
        DictionaryConfig(patch_size=6)
    with pytest.raises(ValueError, match="factory"):
        PatchDictionary.build(
            [(uld, nd, body)], config=DictionaryConfig(factory="IVF64,PQ5", max_patches=2000)
        )


def test_import_hybrid_does_not_import_faiss():
    code = "import sys, hybrid, hybrid.dictionary, hybrid.patches; print('faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
def test_gpu_search_matches_cpu(dictionary, data, tmp_path):
    path = dictionary.save(tmp_path / "g")
    gpu = PatchDictionary.load(path, device="gpu")
    cpu = PatchDictionary.load(path, device="cpu")
    uld, _, body = data["test"]
    q = extract_patches(uld[0], grid_centers(body[0].shape, stride=2, mask=body[0]))
    dg, ig = gpu.search(q)
    dc, ic = cpu.search(q)
    assert np.mean(ig[:, 0] == ic[:, 0]) > 0.9
    np.testing.assert_allclose(np.median(dg), np.median(dc), rtol=0.05)


def test_rectangular_query_grid(dictionary, data):
    # stride (2, 3): a third fewer queries than stride 2; every body pixel still restored
    uld, nd, body = data["test"]
    p2 = dictionary.with_settings(stride=2).propose(uld, body_mask=body)
    p23 = dictionary.with_settings(stride=(2, 3)).propose(uld, body_mask=body)
    before, r2, r23 = _rmse(uld, nd, body), _rmse(p2.image, nd, body), _rmse(p23.image, nd, body)
    assert r23 < 0.75 * before, (before, r23)  # 40.3 -> 23.7 HU seen
    assert r23 < 1.15 * r2, (r2, r23)  # 21.8 vs 23.7 HU seen: coarser grid, fewer overlaps
    assert np.isfinite(p23.uncertainty[body]).all()
    with pytest.raises(ValueError, match="stride"):
        dictionary.with_settings(stride=(2, 8))


def test_set_search_threads():
    previous = faiss.omp_get_max_threads()
    try:
        hybrid.dictionary.set_search_threads(1)
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(previous)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"):
            hybrid.dictionary.set_search_threads(bad)


def test_shipped_dictionary_loads_unchanged():
    from hybrid.artifacts import default_asset_paths

    path = default_asset_paths()["dictionary"]
    if not path.is_dir():
        pytest.skip(f"shipped dictionary absent ({path})")
    d = PatchDictionary.load(path, device="cpu")  # SHA-256 of index.faiss and payload.h5 checked
    assert len(d) == d.meta["counts"]["entries"] and d.factory == d.meta["factory"]
    assert d.values.shape == (len(d), 49) and d.projection.shape == (49, d.meta["key_dim"])
    d.set_cpu_graph(None)  # the stored index: no graph to build in a test
    uld = np.random.default_rng(1).normal(40.0, SIGMA, (32, 32)).astype(np.float32)
    p = d.with_settings(stride=(2, 3)).propose(uld)
    assert p.image.shape == uld.shape and np.isfinite(p.uncertainty).all()



def test_prepare_builds_the_graph_once_with_a_notice(dictionary, data, tmp_path, monkeypatch,
                                                     capsys):
    """The first-time graph build is announced (issue 18: no silent wait) and cached: a
    second load of the same dictionary finds it, says nothing, and searches alike."""
    monkeypatch.setenv("HYBRID_CACHE_DIR", str(tmp_path / "cache"))
    folder = dictionary.save(tmp_path / "dict")
    first = PatchDictionary.load(folder, device="cpu")
    assert first._index.will_build_graph()
    first.prepare(progress=True)
    err = capsys.readouterr().err
    assert "building the patch dictionary's search graph" in err and "done in" in err
    assert not first._index.will_build_graph()
    second = PatchDictionary.load(folder, device="cpu")
    assert not second._index.will_build_graph()  # read from the cache
    second.prepare(progress=True)
    assert capsys.readouterr().err == ""
    uld, _, body = data["test"]
    q = extract_patches(uld[0], grid_centers(body[0].shape, stride=5, mask=body[0]))
    assert np.array_equal(first.search(q)[1], second.search(q)[1])  # the same graph
