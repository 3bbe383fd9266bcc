import numpy as np
import pytest

from presel.selection.centrality import neighbour_centrality
from presel.selection.methods import WITHIN_CLUSTER_METHODS, cluster_order, kcenter_greedy


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _near_copies_cluster():
    """Six near-copies of one image (the most central by neighbour centrality) and six spread images."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal(32)
    copies = base + 0.01 * rng.standard_normal((6, 32))
    spread = base + 1.2 * rng.standard_normal((6, 32))
    return _unit(np.vstack([copies, spread]))


def test_presel_centrality_ranks_near_copies_first():
    x = _near_copies_cluster()
    c = neighbour_centrality(x, 5)
    assert set(np.argsort(-c)[:3].tolist()) <= set(range(6))  # the failure the new method fixes


@pytest.mark.parametrize("method", WITHIN_CLUSTER_METHODS)
def test_within_cluster_order_spreads_over_near_copies(method):
    x = _near_copies_cluster()
    c = neighbour_centrality(x, 5)
    order = cluster_order(method, x, np.zeros((0, x.shape[1]), np.float32), c)
    assert sorted(order.tolist()) == list(range(12))
    assert sum(i < 6 for i in order[:3].tolist()) == 1  # one near-copy among the first three picks
    again = cluster_order(method, x, np.zeros((0, x.shape[1]), np.float32), c)
    assert order.tolist() == again.tolist()


@pytest.mark.parametrize("method", WITHIN_CLUSTER_METHODS)
def test_within_cluster_order_counts_reference_as_picked(method):
    x = _near_copies_cluster()
    c = neighbour_centrality(x, 5)
    order = cluster_order(method, x, x[:1] * 1.0, c)  # a reference image equal to near-copy 0
    assert order[0] >= 6  # nothing near the reference image comes first


def test_facility_first_pick_is_most_representative():
    x = _unit([[1, 0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    order = cluster_order("presel-cover", x, np.zeros((0, 2), np.float32), neighbour_centrality(x, 2))
    sims = np.maximum(x @ x.T, 0).sum(axis=1)
    assert order[0] == int(np.argmax(sims)) == 2
    assert order[1] == 3  # the uncovered image, not a neighbour of the first pick


def test_kcenter_greedy_picks_farthest_points():
    x = np.array([[0, 0], [0.1, 0], [10, 0], [0, 10], [5, 5]], dtype=np.float32)
    picks = kcenter_greedy(x, 3, seed=0)
    assert len(set(picks.tolist())) == 3
    first = int(picks[0])
    d = np.linalg.norm(x - x[first], axis=1)
    assert picks[1] == int(np.argmax(d))
    assert kcenter_greedy(x, 3, seed=0).tolist() == picks.tolist()
    assert len(kcenter_greedy(x, 9, seed=1)) == 5 and len(kcenter_greedy(x, 0, seed=1)) == 0
