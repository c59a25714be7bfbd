"""PCA against hand-made geometry, projection scopes, sampling and the disk cache; one slow UMAP test."""

import subprocess
import sys

import numpy as np
import pytest

from engram_core import Checkpoint
from engram_inspect.memory import projection as proj
from engram_inspect.memory.projection import (
    MAX_POINTS,
    compute_projection,
    parse_scope,
    pca,
    pca_axes,
    sample_rows,
    scope_name,
    umap_fit,
)
from engram_inspect.memory.rows import RowLayout, all_rows, row_vectors


@pytest.fixture()
def tiny_ck(tiny_parts, tiny_model):
    return Checkpoint(model=tiny_model, tokenizer=tiny_parts[0], meta={})


def test_cap_is_at_least_50k():
    assert MAX_POINTS >= 50_000


def test_points_on_a_line_stay_collinear(rng):
    direction = np.array([3.0, -1.0, 2.0, 0.5, 0.0])
    t = rng.uniform(-5, 5, size=200)
    x = np.array([1.0, 2.0, -3.0, 0.0, 7.0]) + t[:, None] * direction
    coords, ratio = pca(x)
    np.testing.assert_allclose(ratio, [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(coords[:, 1], 0.0, atol=1e-4)
    # the first coordinate is the signed distance along the line from the mean
    along = (t - t.mean()) * np.linalg.norm(direction)
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(along), rtol=1e-5, atol=1e-4)
    assert abs(np.corrcoef(coords[:, 0], t)[0, 1]) == pytest.approx(1.0, abs=1e-9)


def test_variance_ratios_are_ordered_and_match_the_stds(rng):
    stds = np.array([5.0, 3.0, 1.0, 0.5])
    z = rng.standard_normal((20_000, 4))
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    x = (z * stds) @ rotation.T
    mean, axes, ratio = pca_axes(x, n_components=4)
    assert np.all(np.diff(ratio) < 0)
    np.testing.assert_allclose(ratio, stds**2 / (stds**2).sum(), atol=0.01)
    np.testing.assert_allclose(axes @ axes.T, np.eye(4), atol=1e-9)  # orthonormal axes
    np.testing.assert_allclose(np.abs(axes @ rotation), np.eye(4), atol=0.05)  # along the true axes
    coords, ratio2 = pca(x)
    np.testing.assert_allclose(coords.var(axis=0), (stds**2)[:2], rtol=0.05)
    np.testing.assert_allclose(ratio2, ratio[:2])


def test_pca_matches_sklearn_up_to_sign(rng):
    from sklearn.decomposition import PCA

    x = rng.standard_normal((500, 6)) * np.array([4, 2, 1, 1, 0.5, 0.1])
    ours, ratio = pca(x)
    ref = PCA(n_components=2).fit(x)
    theirs = ref.transform(x)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-9)
    for j in range(2):
        s = np.sign(ours[:, j] @ theirs[:, j])
        np.testing.assert_allclose(ours[:, j], s * theirs[:, j], atol=1e-4)


def test_scope_names_round_trip():
    for args in [(None, None, None), (1, None, None), (2, 3, 0)]:
        assert parse_scope(scope_name(*args)) == args
    for bad in ["all", "layer", "layer1-order2", "Layer1", ""]:
        with pytest.raises(ValueError, match="is not 'pooled'"):
            parse_scope(bad)
    with pytest.raises(ValueError, match="layer, order and head"):
        scope_name(1, 2)


def test_sampling_is_seeded_sorted_and_capped():
    rows = np.arange(1000, 3000)
    a, b = sample_rows(rows, 100, seed=7), sample_rows(rows, 100, seed=7)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 100 and len(np.unique(a)) == 100 and np.all(np.diff(a) > 0) and np.isin(a, rows).all()
    assert not np.array_equal(a, sample_rows(rows, 100, seed=8))
    np.testing.assert_array_equal(sample_rows(rows, 5000, seed=7), rows)


def test_pca_projection_of_scopes(tiny_ck, tmp_path):
    layout = RowLayout.of(tiny_ck)
    pooled = compute_projection(tiny_ck, "pca", cache_path=tmp_path / "a.npz")
    np.testing.assert_array_equal(pooled.rows, all_rows(tiny_ck))
    assert pooled.coords.dtype == np.float32 and pooled.coords.shape == (layout.total, 2)
    # coordinates are the rows' vectors centred and put on the PCA axes of the same rows
    want, ratio = pca(row_vectors(tiny_ck, pooled.rows))
    np.testing.assert_allclose(pooled.coords, want, atol=1e-5)
    np.testing.assert_allclose(pooled.explained, ratio)
    one = compute_projection(tiny_ck, "pca", "layer1-order3-head1", cache_path=tmp_path / "b.npz")
    assert set(one.layer) == {1} and set(one.order) == {3} and set(one.head) == {1}
    assert len(one.rows) == tiny_ck.model.cfg.memory.hash_spec.primes[1][3]
    # given rows are filtered to the scope; the per-point labels follow the flat ids
    hits = np.array([0, 3, 3, layout.total - 1, layout.flat_range(1).start])
    layer1 = compute_projection(tiny_ck, "pca", "layer1", rows=hits, cache_path=tmp_path / "c.npz")
    np.testing.assert_array_equal(layer1.rows, [layout.flat_range(1).start, layout.total - 1])
    assert layer1.layer.tolist() == [1, 1] and layer1.order.tolist() == [2, 3] and layer1.head.tolist() == [0, 1]


def test_sampled_pca_uses_axes_of_the_whole_scope(tiny_ck, tmp_path):
    p = compute_projection(tiny_ck, "pca", max_points=40, seed=3, cache_path=tmp_path / "p.npz")
    assert len(p.rows) == 40
    mean, axes, _ = pca_axes(row_vectors(tiny_ck, all_rows(tiny_ck)))
    np.testing.assert_allclose(p.coords, (row_vectors(tiny_ck, p.rows) - mean) @ axes.T, atol=1e-5)


def test_cache_round_trip(tiny_ck, tmp_path, monkeypatch):
    path = tmp_path / "proj.npz"
    calls = []
    first = compute_projection(tiny_ck, "pca", "layer0", cache_path=path, progress=lambda *a: calls.append(a))
    assert path.is_file() and [c[2] for c in calls][-2:] == ["saving proj.npz", "done"]
    assert all(done <= total for done, total, _ in calls)

    def boom(*a, **k):
        raise AssertionError("recomputed instead of loading the cache")

    monkeypatch.setattr(proj, "project", boom)
    calls.clear()
    second = compute_projection(tiny_ck, "pca", "layer0", cache_path=path, progress=lambda *a: calls.append(a))
    assert calls == [(4, 4, "loaded from proj.npz")]
    for name in ["rows", "coords", "layer", "order", "head"]:
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
        assert getattr(second, name).dtype == getattr(first, name).dtype
    assert (second.method, second.scope, second.explained) == (first.method, first.scope, first.explained)
    with pytest.raises(AssertionError, match="recomputed"):  # other parameters, or recompute=True, recompute
        compute_projection(tiny_ck, "pca", "layer0", cache_path=path, seed=1)
    with pytest.raises(AssertionError, match="recomputed"):
        compute_projection(tiny_ck, "pca", "layer0", cache_path=path, recompute=True)


def test_default_cache_lives_in_the_cache_dir_and_shipped_files_are_read(tiny_parts, tiny_model, tmp_path, monkeypatch):
    from engram_inspect.base.cache import checkpoint_key

    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ck").mkdir()
    ck = Checkpoint(model=tiny_model, tokenizer=tiny_parts[0], meta={}, path=tmp_path / "ck")
    first = compute_projection(ck, "pca", "layer1")
    compute_projection(ck, "pca", "layer1", rows=np.arange(10, 300))
    assert list((tmp_path / "ck").iterdir()) == []  # nothing beside the weights
    folder = tmp_path / "cache" / checkpoint_key(ck)
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 and all(n.startswith("projection-pca-layer1") and n.endswith(".npz") for n in names)
    assert any("-rows" in n for n in names)
    # a file shipped beside the weights, named with the checkpoint's key, is read before the cache
    shipped = tmp_path / "ck" / f"projection-pca-layer1-{checkpoint_key(ck)}.npz"
    (folder / "projection-pca-layer1.npz").rename(shipped)
    msgs: list = []
    again = compute_projection(ck, "pca", "layer1", progress=lambda d, t, m: d == 4 and msgs.append(m))
    assert msgs == [f"loaded from {shipped.name}"] and np.array_equal(again.coords, first.coords)
    assert not (folder / "projection-pca-layer1.npz").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "tsne"}, "method must be one of"),
        ({"scope": "layer2"}, "not an Engram layer"),
        ({"scope": "layer0-order4-head0"}, "order 4 is outside"),
        ({"scope": "layer0-order2-head2"}, "head 2 is outside"),
        ({"scope": "everything"}, "is not 'pooled'"),
        ({"rows": np.array([-1])}, "flat row ids must lie"),
        ({"rows": np.array([1])}, "needs at least 2"),
        ({"max_points": 1}, "max_points must be at least 2"),
    ],
)
def test_bad_projection_inputs(tiny_ck, tmp_path, kwargs, match):
    args = {"method": "pca", "scope": "pooled", "cache_path": tmp_path / "x.npz", **kwargs}
    with pytest.raises(ValueError, match=match):
        compute_projection(tiny_ck, **args)


def test_importing_engram_inspect_does_not_import_umap():
    code = (
        "import sys, engram_inspect.memory.projection, engram_inspect.memory.neighbours, engram_inspect.memory.rows; "
        "assert 'umap' not in sys.modules and 'numba' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_umap_is_deterministic_for_a_seed(rng):
    # 600 points in 4 well-separated clusters: below 4,096 points umap finds exact
    # neighbours and, with random_state set, runs single-threaded, so two fits agree bit for bit
    centres = rng.standard_normal((4, 16)) * 5
    x = (centres[rng.integers(0, 4, 600)] + rng.standard_normal((600, 16))).astype(np.float32)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # a count numba would not choose: its OpenMP layer is torch's too
    try:
        a, b = umap_fit(x, seed=0), umap_fit(x, seed=0)
        assert torch.get_num_threads() == 3  # the fit leaves torch's thread count as it found it
    finally:
        torch.set_num_threads(threads)
    assert a.shape == (600, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, umap_fit(x, seed=1))
