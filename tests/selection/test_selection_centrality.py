import numpy as np

from presel.selection.centrality import neighbour_centrality, typicality


def _unit(m, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((m, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_nc(x, k):
    s = (x.astype(np.float64) @ x.T.astype(np.float64))
    np.fill_diagonal(s, -np.inf)
    k = min(k, len(x) - 1)
    return np.sort(s, axis=1)[:, ::-1][:, :k].mean(axis=1)


def test_neighbour_centrality_matches_brute_force_in_blocks():
    x = _unit(97, 12)
    ref = _brute_nc(x, 5)
    np.testing.assert_allclose(neighbour_centrality(x, 5), ref, atol=1e-6)
    # tiny blocks (a few rows at a time) give the same numbers
    np.testing.assert_allclose(neighbour_centrality(x, 5, block_bytes=4 * 97 * 3), ref, atol=1e-6)


def test_k_shrinks_and_singleton_scores_zero():
    x = _unit(3, 4, seed=1)
    np.testing.assert_allclose(neighbour_centrality(x, 5), _brute_nc(x, 2), atol=1e-6)
    s = x @ x.T
    assert np.isclose(neighbour_centrality(x[:2], 5)[0], s[0, 1], atol=1e-6)
    assert neighbour_centrality(x[:1], 5).tolist() == [0.0]
    assert neighbour_centrality(x[:0], 5).shape == (0,)


def test_duplicates_are_most_central():
    x = _unit(20, 8, seed=2)
    x[5] = x[6] = x[7] = x[8] = x[9] = x[4]
    nc = neighbour_centrality(x, 5)
    assert set(np.argsort(-nc)[:6].tolist()) == {4, 5, 6, 7, 8, 9}


def test_typicality_matches_brute_force():
    x = _unit(41, 6, seed=3)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    k = min(20, 41 // 2)
    ref = 1.0 / (np.sort(d, axis=1)[:, :k].mean(axis=1) + 1e-5)
    np.testing.assert_allclose(typicality(x, 20, block_bytes=4 * 41 * 5), ref, rtol=1e-4)
    assert typicality(x[:1]).tolist() == [0.0]
