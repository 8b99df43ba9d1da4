"""Aggregation math on tiny arrays with hand-computed expected values."""

from __future__ import annotations

import numpy as np
import pytest

from fedray.fl.aggregate import (
    coordinate_median,
    krum_scores,
    krum_select,
    pairwise_sq_distances,
    polyak,
    trimmed_count,
    trimmed_mean,
    weighted_average,
)


def p(w: list[float], b: float) -> dict[str, np.ndarray]:
    """A two-tensor parameter dict: weight (len(w),) and bias (1,), float32."""
    return {"w": np.array(w, dtype=np.float32), "b": np.array([b], dtype=np.float32)}


def test_weighted_average() -> None:
    # Prepare
    params_list = [p([1.0, 2.0], 0.0), p([3.0, 6.0], 4.0)]
    weights = [1, 3]
    # (1*1 + 3*3)/4 = 2.5, (1*2 + 3*6)/4 = 5, (0 + 12)/4 = 3
    expected = p([2.5, 5.0], 3.0)

    # Execute
    actual = weighted_average(params_list, weights)

    # Assert
    assert list(actual) == ["w", "b"]
    for name in expected:
        assert actual[name].dtype == np.float32
        np.testing.assert_array_equal(actual[name], expected[name])


def test_weighted_average_zero_weight_client_is_ignored() -> None:
    actual = weighted_average([p([1.0, 1.0], 1.0), p([9.0, 9.0], 9.0)], [2, 0])
    np.testing.assert_array_equal(actual["w"], [1.0, 1.0])


def test_weighted_average_keeps_float64_precision_until_the_cast() -> None:
    # 1e8 + 1 is not representable in float32: summing in float32 would lose the +1 before dividing
    params_list = [{"x": np.array([1e8], np.float32)}, {"x": np.array([1.0], np.float32)}]
    actual = weighted_average(params_list, [1, 1])
    assert actual["x"][0] == np.float32((1e8 + 1) / 2)


def test_integer_arrays_are_rounded_not_truncated() -> None:
    params_list = [{"n": np.array([1, 2], np.int64)}, {"n": np.array([2, 2], np.int64)}]
    actual = weighted_average(params_list, [1, 3])  # 1.75 -> 2, 2 -> 2
    assert actual["n"].dtype == np.int64
    np.testing.assert_array_equal(actual["n"], [2, 2])


def test_coordinate_median_odd_and_even() -> None:
    # Prepare
    odd = [p([1.0, -5.0], 0.0), p([2.0, 7.0], 1.0), p([1000.0, 0.0], 2.0)]
    even = [p([1.0, 0.0], 0.0), p([2.0, 0.0], 0.0), p([3.0, 0.0], 0.0), p([1000.0, 0.0], 9.0)]

    # Execute
    median_odd = coordinate_median(odd)
    median_even = coordinate_median(even)

    # Assert: per coordinate, the middle value (odd) or the mean of the middle two (even)
    np.testing.assert_array_equal(median_odd["w"], [2.0, 0.0])
    np.testing.assert_array_equal(median_odd["b"], [1.0])
    np.testing.assert_array_equal(median_even["w"], [2.5, 0.0])
    np.testing.assert_array_equal(median_even["b"], [0.0])


def test_trimmed_mean_drops_extremes_per_coordinate() -> None:
    # Prepare: 5 entries, beta=0.2 -> drop 1 smallest and 1 largest per coordinate
    params_list = [
        p([1.0, 50.0], 0.0),
        p([2.0, 40.0], 1.0),
        p([3.0, 30.0], 2.0),
        p([4.0, 20.0], 3.0),
        p([1000.0, -1e6], 100.0),
    ]
    # w[0]: keep 2, 3, 4 -> 3; w[1]: sorted -1e6, 20, 30, 40, 50 -> keep 20, 30, 40 -> 30;
    # b: keep 1, 2, 3 -> 2

    # Execute
    actual = trimmed_mean(params_list, beta=0.2)

    # Assert
    np.testing.assert_array_equal(actual["w"], [3.0, 30.0])
    np.testing.assert_array_equal(actual["b"], [2.0])


def test_trimmed_mean_beta_zero_is_plain_mean() -> None:
    actual = trimmed_mean([p([1.0, 2.0], 0.0), p([2.0, 4.0], 1.0)], beta=0.0)
    np.testing.assert_array_equal(actual["w"], [1.5, 3.0])


@pytest.mark.parametrize(
    ("n", "beta", "expected"),
    [(5, 0.2, 1), (4, 0.2, 0), (10, 0.3, 3), (100, 0.29, 29), (2, 0.49, 0), (3, 0.49, 1)],
)
def test_trimmed_count(n: int, beta: float, expected: int) -> None:
    assert trimmed_count(n, beta) == expected


def test_krum_scores_and_selection() -> None:
    # Prepare: 1-D values 0, 1, 2, 4, 100 split over two tensors (w carries x, b carries 0);
    # n=5, f=1 -> each score sums the n - f - 2 = 2 smallest squared distances to the others.
    params_list = [p([x, 0.0], 0.0) for x in (0.0, 1.0, 2.0, 4.0, 100.0)]
    # 0: others at 1, 4, 16, 1e4 -> 1 + 4 = 5;   1: 1, 1, 9 ... -> 2;   2: 4, 1, 4 ... -> 5
    # 3: 16, 9, 4 ... -> 13;   100: 96², 98², 99², 100² -> 96² + 98² = 18820
    expected_scores = [5.0, 2.0, 5.0, 13.0, 18820.0]

    # Execute
    scores = krum_scores(params_list, num_byzantine=1)
    best = krum_select(params_list, num_byzantine=1)
    best3 = krum_select(params_list, num_byzantine=1, multi=3)

    # Assert: ties (0 and 2 both score 5) go to the lower index
    np.testing.assert_array_equal(scores, expected_scores)
    assert best == [1]
    assert best3 == [1, 0, 2]


def test_pairwise_distances_sum_over_all_tensors() -> None:
    params_list = [p([0.0, 0.0], 0.0), p([1.0, 2.0], 2.0)]  # 1 + 4 + 4
    np.testing.assert_array_equal(pairwise_sq_distances(params_list), [[0.0, 9.0], [9.0, 0.0]])


def test_krum_needs_2f_plus_3() -> None:
    params_list = [p([x, 0.0], 0.0) for x in (0.0, 2.0, 3.0, 7.0)]
    with pytest.raises(ValueError, match=r"num_byzantine=1 needs at least 5 updates.*got 4"):
        krum_select(params_list, num_byzantine=1)
    # f=0, n=3: one nearest neighbour each: 0 -> 4, 2 -> 1, 3 -> 1
    assert krum_select(params_list[:3], num_byzantine=0) == [1]


def test_krum_rejects_bad_multi_and_f() -> None:
    params_list = [p([float(i), 0.0], 0.0) for i in range(5)]
    with pytest.raises(ValueError, match="between 1 and n - num_byzantine = 4"):
        krum_select(params_list, num_byzantine=1, multi=5)
    with pytest.raises(ValueError, match="multi=0"):
        krum_select(params_list, num_byzantine=1, multi=0)
    with pytest.raises(ValueError, match="non-negative integer"):
        krum_select(params_list, num_byzantine=-1)


def test_polyak() -> None:
    # Prepare
    old = p([0.0, 4.0], 1.0)
    new = p([8.0, 0.0], 1.0)

    # Execute
    actual = polyak(old, new, k=0.75)  # 0.75*old + 0.25*new

    # Assert
    np.testing.assert_array_equal(actual["w"], [2.0, 3.0])
    np.testing.assert_array_equal(actual["b"], [1.0])
    np.testing.assert_array_equal(polyak(old, new, k=0.0)["w"], new["w"])
    with pytest.raises(ValueError, match=r"k must be in \[0, 1\], got 1.5"):
        polyak(old, new, k=1.5)


@pytest.mark.parametrize(
    "fn",
    [
        lambda ps: weighted_average(ps, [1] * len(ps)),
        coordinate_median,
        lambda ps: trimmed_mean(ps, 0.1),
        lambda ps: krum_select(ps, 0),
    ],
    ids=["weighted_average", "median", "trimmed_mean", "krum"],
)
def test_structure_errors(fn) -> None:
    with pytest.raises(ValueError, match="empty"):
        fn([])
    with pytest.raises(ValueError, match=r"params\[2\].*missing \['b'\]"):
        fn([p([1.0, 2.0], 0.0), p([1.0, 2.0], 0.0), {"w": np.zeros(2, np.float32)}])
    with pytest.raises(ValueError, match=r"params\[1\].*'w' has shape \(3,\), expected \(2,\)"):
        fn([p([1.0, 2.0], 0.0), p([1.0, 2.0, 3.0], 0.0), p([1.0, 2.0], 0.0)])


def test_weighted_average_weight_errors() -> None:
    params_list = [p([1.0, 2.0], 0.0), p([3.0, 4.0], 0.0)]
    with pytest.raises(ValueError, match="got 1 weights for 2 params"):
        weighted_average(params_list, [1])
    with pytest.raises(ValueError, match="total weight must be positive"):
        weighted_average(params_list, [0, 0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        weighted_average(params_list, [2, -1])
    with pytest.raises(ValueError, match="finite and non-negative"):
        weighted_average(params_list, [1, float("nan")])


def test_trimmed_mean_rejects_beta_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.5\), got 0.5"):
        trimmed_mean([p([1.0, 2.0], 0.0)], beta=0.5)
