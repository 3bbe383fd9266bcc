import numpy as np
import pytest

from presel.errors import PreselError
from presel.selection.budget import allocate


def A(total, w, cap):
    return allocate(total, np.array(w, dtype=float), np.array(cap)).tolist()


def test_largest_remainder_exact_total():
    # 2.7, 3.3, 4.0 -> floors 2, 3, 4; one seat left goes to the largest remainder (0.7)
    assert A(10, [0.27, 0.33, 0.40], [100, 100, 100]) == [3, 3, 4]
    # 10/3 each: floors 3, 3, 3; equal remainders and weights -> lower index
    assert A(10, [1, 1, 1], [10, 10, 10]) == [4, 3, 3]


def test_remainder_tie_broken_by_larger_weight():
    # shares 0.5 and 1.5: floors 0 and 1; equal remainders 0.5 -> the larger weight wins
    assert A(2, [1, 3], [5, 5]) == [0, 2]


def test_cap_and_redistribution_in_proportion_to_weight():
    # bin 0 wants 5 but holds 2; the 8 left split 0.3:0.2 -> 4.8, 3.2 -> 5, 3
    assert A(10, [0.5, 0.3, 0.2], [2, 10, 10]) == [2, 5, 3]


def test_cascading_caps():
    # 60 > 10: cap; 90 split 3:1 -> 67.5 > 50: cap; 40 to the last bin
    assert A(100, [0.6, 0.3, 0.1], [10, 50, 100]) == [10, 50, 40]


def test_zero_weights_fall_back_to_capacity():
    assert A(7, [0, 0, 0], [1, 2, 4]) == [1, 2, 4]
    # bin 0 is capped at 1; the 2 left go to zero-weight bins by capacity 4:2 -> 1.33, 0.67 -> 1, 1
    assert A(3, [1, 0, 0], [1, 4, 2]) == [1, 1, 1]
    # a zero-weight bin gets nothing while a weighted bin has room
    assert A(3, [1, 0], [5, 5]) == [3, 0]


def test_zero_total_and_errors():
    assert A(0, [1, 2], [3, 4]) == [0, 0]
    with pytest.raises(PreselError, match="only 7 available"):
        A(8, [1, 1], [3, 4])
    with pytest.raises(PreselError):
        A(1, [1, float("nan")], [3, 4])
    with pytest.raises(PreselError):
        A(1, [1, -1], [3, 4])


def test_random_cases_are_exact_and_capped():
    rng = np.random.default_rng(0)
    for _ in range(300):
        m = int(rng.integers(1, 12))
        cap = rng.integers(0, 30, m)
        w = rng.random(m) * (rng.random(m) < 0.8)
        total = int(rng.integers(0, cap.sum() + 1))
        out = allocate(total, w, cap)
        assert out.sum() == total
        assert (out >= 0).all() and (out <= cap).all()
        # a zero-weight bin only gets items once every weighted bin is full
        if (out[w == 0] > 0).any():
            assert (out[w > 0] == cap[w > 0]).all()
        # deterministic
        assert (allocate(total, w, cap) == out).all()
