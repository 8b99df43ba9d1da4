"""Retrieval evaluation of MobileDeepPill (paper §6.1.2-6.1.3): MAP (eq. 9), top-k, CMC.

The gallery is every reference image (front and back of every pill). A ranking of gallery images
gives eq. 9's MT(i, j), the ranks of the query pill's N_i = 2 genuine references; the candidate
list shown to a user is the ranking of pills (a pill scores what its best reference scores), and
top-k / CMC count a query as found when its pill is among the first k pills.

* one-side: one consumer image per query, scored against every reference image;
* two-side: a front and a back consumer image of the same pill; a pill's score is the best
  assignment of the two photos to its two references, s(a, front) + s(b, back) or
  s(a, back) + s(b, front) (`assignment="best"`; "known" when the photos' sides are known),
  and both its references take that score, so they sit side by side in the ranking.

Ties are broken against the query (a genuine item sorts after an impostor with the same score).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

TOP_K = (1, 5)
CMC_RANKS = 20
REPORTED = ("map", "top1", "top5")  # what each scheme's result is logged and summarised by
ASSIGNMENTS = ("best", "known")


def folds_by_pill(pills: Sequence[int], k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """`k` disjoint, near-equal sets of pill ids (both sides of a pill always in one fold)."""
    pills = np.unique(np.asarray(pills))
    if not 1 <= k <= len(pills):
        raise ValueError(f"folds={k} must be between 1 and the number of pills ({len(pills)})")
    order = np.random.default_rng(seed).permutation(pills)
    return [np.sort(f) for f in np.array_split(order, k)]


def average_precision(genuine_ranks: Sequence[int]) -> float:
    """Eq. 9's inner term (1/N_i) sum_j j / MT(i, j); MT: 1-based ranks of the genuine images."""
    ranks = np.sort(np.asarray(genuine_ranks, dtype=np.float64))
    if len(ranks) == 0:
        raise ValueError("a query needs at least one genuine gallery image")
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def _ranks_of_true(scores: np.ndarray, is_true: np.ndarray) -> list[np.ndarray]:
    """Per row: 1-based positions of the `is_true` columns when sorted by score, descending."""
    out = []
    for s, t in zip(scores, is_true, strict=True):
        order = np.lexsort((t, -s))  # primary: score descending; ties: impostors first
        out.append(np.flatnonzero(t[order]) + 1)
    return out


def summarize(pill_ranks: np.ndarray, aps: np.ndarray,
              cmc_ranks: int = CMC_RANKS) -> dict[str, Any]:
    """{"map", "top1", "top5", "cmc": [top-1 .. top-cmc_ranks]} from per-query pill ranks, APs."""
    pill_ranks = np.asarray(pill_ranks)
    cmc = [float(np.mean(pill_ranks <= k)) for k in range(1, cmc_ranks + 1)]
    out: dict[str, Any] = {"map": float(np.mean(aps))}
    out.update({f"top{k}": float(np.mean(pill_ranks <= k)) for k in TOP_K})
    out["cmc"] = cmc
    return out


def _pill_index(gallery_pill: np.ndarray, query_pill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pills, gallery_idx = np.unique(gallery_pill, return_inverse=True)
    missing = np.setdiff1d(query_pill, pills)
    if len(missing):
        raise ValueError(f"query pills {missing[:5].tolist()} have no reference in the gallery")
    return pills, gallery_idx


def one_side(scores: np.ndarray, query_pill: Sequence[int], gallery_pill: Sequence[int],
             cmc_ranks: int = CMC_RANKS) -> dict[str, Any]:
    """One-side scheme: `scores` (Q, G) of Q consumer images against G reference images."""
    scores = np.asarray(scores, dtype=np.float64)
    qp, gp = np.asarray(query_pill), np.asarray(gallery_pill)
    pills, gidx = _pill_index(gp, qp)
    genuine = qp[:, None] == gp[None, :]
    aps = np.array([average_precision(r) for r in _ranks_of_true(scores, genuine)])
    pill_scores = np.full((len(qp), len(pills)), -np.inf)
    np.maximum.at(pill_scores.T, gidx, scores.T)  # a pill scores what its best reference scores
    true_pill = qp[:, None] == pills[None, :]
    ranks = np.array([r[0] for r in _ranks_of_true(pill_scores, true_pill)])
    return {**summarize(ranks, aps, cmc_ranks), "pill_ranks": ranks}


def two_side_scores(scores_a: np.ndarray, scores_b: np.ndarray, gallery_pill: Sequence[int],
                    gallery_side: Sequence[int], assignment: str = "best",
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(pill ids (P,), fused pill scores (Q, P)) of photo pairs (a, b) against front/back refs.

    `gallery_side`: 0 front, 1 back; each pill needs exactly one of each. With "known", a is
    the front photo and b the back one.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment={assignment!r}: choose one of {ASSIGNMENTS}")
    gp, gs = np.asarray(gallery_pill), np.asarray(gallery_side)
    pills = np.unique(gp)
    front = np.empty(len(pills), np.int64)
    back = np.empty(len(pills), np.int64)
    for i, p in enumerate(pills):
        f, b = np.flatnonzero((gp == p) & (gs == 0)), np.flatnonzero((gp == p) & (gs == 1))
        if len(f) != 1 or len(b) != 1:
            raise ValueError(f"pill {p} needs one front and one back reference, "
                             f"has {len(f)} and {len(b)}")
        front[i], back[i] = f[0], b[0]
    sa, sb = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    fused = sa[:, front] + sb[:, back]
    if assignment == "best":
        fused = np.maximum(fused, sa[:, back] + sb[:, front])
    return pills, fused


def two_side(scores_a: np.ndarray, scores_b: np.ndarray, query_pill: Sequence[int],
             gallery_pill: Sequence[int], gallery_side: Sequence[int], assignment: str = "best",
             cmc_ranks: int = CMC_RANKS) -> dict[str, Any]:
    """Two-side scheme: photo pairs (row i of scores_a and scores_b) of pill query_pill[i]."""
    qp = np.asarray(query_pill)
    pills, fused = two_side_scores(scores_a, scores_b, gallery_pill, gallery_side, assignment)
    _pill_index(np.asarray(gallery_pill), qp)
    true_pill = qp[:, None] == pills[None, :]
    ranks = np.array([r[0] for r in _ranks_of_true(fused, true_pill)])
    # both references of the pill at rank k sit at gallery ranks 2k - 1 and 2k
    aps = np.array([average_precision([2 * k - 1, 2 * k]) for k in ranks])
    return {**summarize(ranks, aps, cmc_ranks), "pill_ranks": ranks}
