"""Triplet loss (paper eq. 2), the paper's online triplet generation (§4.2.2) and the proxy loss.

For an anchor image I^a, the positive I^p is another image of the same pill, drawn at random;
the negative comes from the anchor's current ranking of the reference gallery (the anchor's own
image left out of it): if the anchor's own pill ranks r-th, a pill ranked within `window`
places of r (the anchor's pill excluded) is drawn, and the negative image is that pill's
reference most similar to the anchor. So negatives are the pills the network currently
confuses with the true one, look-alikes first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 0.2) -> torch.Tensor:
    """mean over the batch of max(||a - p||^2 - ||a - n||^2 + margin, 0); (B, D) each."""
    d_pos = (anchor - positive).pow(2).sum(1)
    d_neg = (anchor - negative).pow(2).sum(1)
    return torch.clamp(d_pos - d_neg + margin, min=0.0).mean()


def sample_positives(labels: np.ndarray, anchors: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """For each anchor index, a random other index with the same label (itself if it is alone)."""
    labels = np.asarray(labels)
    out = np.empty(len(anchors), np.int64)
    for i, a in enumerate(anchors):
        same = np.flatnonzero(labels == labels[a])
        others = same[same != a]
        out[i] = rng.choice(others) if len(others) else a
    return out


def neighbour_negatives(pill_scores: np.ndarray, true_idx: np.ndarray, window: int,
                        rng: np.random.Generator) -> np.ndarray:
    """Per row, a pill (column) ranked within `window` places of the true pill, never the true one.

    pill_scores (A, P): the anchors' similarity to each pill; true_idx (A,): the true columns.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    a, p = pill_scores.shape
    if p < 2:
        raise ValueError("triplets need at least two pills")
    out = np.empty(a, np.int64)
    for i in range(a):
        order = np.argsort(-pill_scores[i], kind="stable")
        r = int(np.flatnonzero(order == true_idx[i])[0])  # 0-based rank of the true pill
        lo, hi = max(0, r - window), min(p, r + window + 1)
        near = np.concatenate([order[lo:r], order[r + 1:hi]])
        out[i] = rng.choice(near)
    return out


def mine_triplets(ref_sim: np.ndarray, anchors: np.ndarray, pool_pill: np.ndarray,
                  ref_index: np.ndarray, window: int, rng: np.random.Generator,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(positives: pool indices, negatives: reference indices) for `anchors` (pool indices).

    ref_sim (A, R): each anchor's similarity to each training reference image, the references
    being pool images `ref_index`; a pill scores what its best reference scores. An anchor
    that is itself a reference is ranked without its own image (its similarity to itself
    would put its pill first whatever the network confuses), as `task.batch_triplets` does;
    only when its pill has no other reference does it keep its own (its pill ranks first and
    the negatives are the pills closest to it), so every anchor keeps a triplet.
    """
    pool_pill, ref_index = np.asarray(pool_pill), np.asarray(ref_index)
    ref_pill = pool_pill[ref_index]
    pills, ref_idx = np.unique(ref_pill, return_inverse=True)
    ref_sim = np.asarray(ref_sim, np.float64)
    own = ref_index[None, :] == np.asarray(anchors)[:, None]  # (A, R): the anchor itself
    others = (ref_pill[None, :] == pool_pill[anchors][:, None]) & ~own
    ranked = np.where(own & others.any(1, keepdims=True), -np.inf, ref_sim)
    pill_scores = np.full((len(anchors), len(pills)), -np.inf)
    np.maximum.at(pill_scores.T, ref_idx, ranked.T)
    true_idx = np.searchsorted(pills, pool_pill[anchors])
    if np.any(pills[np.minimum(true_idx, len(pills) - 1)] != pool_pill[anchors]):
        raise ValueError("every anchor's pill needs a reference among the training references")
    neg_pill = neighbour_negatives(pill_scores, true_idx, window, rng)
    negatives = np.empty(len(anchors), np.int64)
    for i, q in enumerate(neg_pill):
        cand = np.flatnonzero(ref_idx == q)
        negatives[i] = cand[np.argmax(ref_sim[i, cand])]
    return sample_positives(pool_pill, anchors, rng), negatives


def proxy_loss(emb: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
               temperature: float = 0.05) -> torch.Tensor:
    """Normalized-softmax (proxy) loss: cross-entropy of the cosine similarities between unit
    embeddings (B, D) and one learnt proxy per training pill (P, D), divided by `temperature`
    (Zhai & Wu, "Classification is a strong baseline for deep metric learning", BMVC 2019).
    Every image is pulled to its pill's proxy and pushed from every other pill's at once, where
    a triplet sees one negative: it learns far more per step from scratch."""
    logits = F.normalize(emb, dim=1) @ F.normalize(proxies, dim=1).T / float(temperature)
    return F.cross_entropy(logits, labels)

