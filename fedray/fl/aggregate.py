"""Aggregation math: pure NumPy functions over lists of parameter dicts.

Every input list holds ``Params`` (name -> array) with identical keys and shapes. Work is done in
float64 and each result is cast back to the dtype of the first input's array of that name (integer
arrays are rounded to nearest first, so an average never truncates); output keys follow the first
input's order. Bad input (an empty list, mismatched keys or shapes, invalid weights or knobs) raises
a ValueError that says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedray.fl.types import Params


def structure_mismatch(reference: Params, params: Params) -> str | None:
    """How ``params`` differs from ``reference`` in keys or shapes, or None if it doesn't."""
    if params.keys() != reference.keys():
        missing = sorted(reference.keys() - params.keys())
        extra = sorted(params.keys() - reference.keys())
        return f"keys differ (missing {missing}, unexpected {extra})"
    for name, ref in reference.items():
        if np.shape(params[name]) != np.shape(ref):
            return f"{name!r} has shape {np.shape(params[name])}, expected {np.shape(ref)}"
    return None


def check_same_structure(params_list: Sequence[Params]) -> None:
    """Raise ValueError unless the list is non-empty and all entries share keys and shapes."""
    if len(params_list) == 0:
        raise ValueError("cannot aggregate an empty list of params")
    for i, params in enumerate(params_list[1:], start=1):
        problem = structure_mismatch(params_list[0], params)
        if problem is not None:
            raise ValueError(f"params[{i}] does not match params[0]: {problem}")


def cast_like(values: Mapping[str, np.ndarray], like: Params) -> Params:
    """Cast float64 results to the dtypes and key order of ``like`` (rounding into integers)."""
    out: Params = {}
    for name, ref in like.items():
        value = np.asarray(values[name])
        dtype = np.asarray(ref).dtype
        if np.issubdtype(dtype, np.integer):
            value = np.rint(value)
        out[name] = np.ascontiguousarray(value.astype(dtype))
    return out


def _stack(params_list: Sequence[Params], name: str) -> np.ndarray:
    return np.stack([np.asarray(p[name], dtype=np.float64) for p in params_list])  # (n, *shape)


def weighted_average(params_list: Sequence[Params], weights: Sequence[float]) -> Params:
    """Per-coordinate average of ``params_list`` weighted by ``weights`` (e.g. sample counts)."""
    check_same_structure(params_list)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(params_list),):
        raise ValueError(f"got {w.size} weights for {len(params_list)} params")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    total = float(w.sum())
    if total <= 0:
        raise ValueError(f"total weight must be positive, got {total} (weights {w.tolist()})")
    averaged = {}
    for name in params_list[0]:
        # Accumulate one client at a time: memory stays at one float64 copy of the tensor.
        acc = np.zeros(np.shape(params_list[0][name]), dtype=np.float64)
        for weight, params in zip(w, params_list, strict=True):
            acc += weight * np.asarray(params[name], dtype=np.float64)
        averaged[name] = acc / total
    return cast_like(averaged, params_list[0])


def coordinate_median(params_list: Sequence[Params]) -> Params:
    """Per-coordinate median (mean of the two middle values when the count is even)."""
    check_same_structure(params_list)
    medians = {name: np.median(_stack(params_list, name), axis=0) for name in params_list[0]}
    return cast_like(medians, params_list[0])


def trimmed_count(n: int, beta: float) -> int:
    """How many values ``trimmed_mean`` drops at each end: floor(beta * n), leaving at least one."""
    # The epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29, as written in the config.
    return min(math.floor(beta * n + 1e-9), (n - 1) // 2)


def trimmed_mean(params_list: Sequence[Params], beta: float) -> Params:
    """Per-coordinate mean after dropping the floor(beta*n) largest and smallest values."""
    check_same_structure(params_list)
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed-mean beta must be in [0, 0.5), got {beta}")
    n = len(params_list)
    k = trimmed_count(n, beta)
    means = {}
    for name in params_list[0]:
        ordered = np.sort(_stack(params_list, name), axis=0)
        means[name] = ordered[k : n - k].mean(axis=0)
    return cast_like(means, params_list[0])


def pairwise_sq_distances(params_list: Sequence[Params]) -> np.ndarray:
    """(n, n) matrix of squared Euclidean distances between whole parameter vectors."""
    check_same_structure(params_list)
    n = len(params_list)
    dist = np.zeros((n, n), dtype=np.float64)
    for name in params_list[0]:
        flat = _stack(params_list, name).reshape(n, -1)  # (n, numel)
        for i in range(n):
            dist[i] += np.square(flat - flat[i]).sum(axis=1)
    return dist


def krum_scores(params_list: Sequence[Params], num_byzantine: int) -> np.ndarray:
    """Krum score per entry: sum of squared distances to its n - f - 2 nearest other entries.

    Requires n >= 2f + 3 (Blanchard et al. 2017's condition n > 2f + 2), so that every score sums
    at least one distance and the honest majority outnumbers the f Byzantine entries plus two.
    """
    check_same_structure(params_list)
    n = len(params_list)
    if isinstance(num_byzantine, bool) or not isinstance(num_byzantine, int) or num_byzantine < 0:
        raise ValueError(f"num_byzantine must be a non-negative integer, got {num_byzantine!r}")
    if n < 2 * num_byzantine + 3:
        raise ValueError(
            f"Krum with num_byzantine={num_byzantine} needs at least {2 * num_byzantine + 3} "
            f"updates (n >= 2f + 3), got {n}"
        )
    dist = pairwise_sq_distances(params_list)
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : n - num_byzantine - 2]
    return nearest.sum(axis=1)


def krum_select(params_list: Sequence[Params], num_byzantine: int, multi: int = 1) -> list[int]:
    """Indices of the ``multi`` lowest Krum scores, best first (ties: lower index first)."""
    scores = krum_scores(params_list, num_byzantine)
    most = len(params_list) - num_byzantine
    if isinstance(multi, bool) or not isinstance(multi, int) or not 1 <= multi <= most:
        raise ValueError(
            f"multi-Krum must keep between 1 and n - num_byzantine = {most} updates, "
            f"got multi={multi!r}"
        )
    return [int(i) for i in np.argsort(scores, kind="stable")[:multi]]


def polyak(old: Params, new: Params, k: float) -> Params:
    """Polyak averaging k * old + (1 - k) * new, with 0 <= k <= 1; dtypes follow ``old``."""
    check_same_structure([old, new])
    if not 0 <= k <= 1:
        raise ValueError(f"Polyak k must be in [0, 1], got {k}")
    mixed = {
        name: k * np.asarray(old[name], dtype=np.float64)
        + (1 - k) * np.asarray(new[name], dtype=np.float64)
        for name in old
    }
    return cast_like(mixed, old)
