"""The retrieval task for the framework's task seam (`task._target_`): embedding outputs, the
triplet loss with the paper's ranking-neighbour negatives mined inside each batch, and
leave-one-out retrieval metrics (MAP of eq. 9, top-1, top-5) over the evaluation split.

Inside a federated round a batch holds only the client's own pills, so the triplets are mined
from the client's data alone: the batch plays the gallery of the paper's online generation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from fedray.checks import number
from fedray.pill.retrieval.metrics import average_precision, summarize
from fedray.pill.retrieval.triplet import neighbour_negatives, triplet_loss
from fedray.tasks.base import Accumulator, Task


def batch_triplets(emb: np.ndarray, labels: np.ndarray, window: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor, positive, negative) batch indices: every sample whose pill has another sample
    and whose batch holds another pill is an anchor; its negative's pill ranks within `window`
    places of the anchor's own pill in the anchor's ranking of the batch (a pill scores its best
    sample, the anchor itself excluded), and is that pill's sample closest to the anchor."""
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    pills, idx = np.unique(labels, return_inverse=True)
    counts = np.bincount(idx)
    anchors = np.flatnonzero((counts[idx] > 1) & (len(pills) > 1))
    if len(anchors) == 0:
        return anchors, anchors, anchors
    pill_scores = np.full((len(anchors), len(pills)), -np.inf)
    np.maximum.at(pill_scores.T, idx, sim[anchors].T)
    neg_pill = neighbour_negatives(pill_scores, idx[anchors], window, rng)
    pos = np.array([rng.choice(np.flatnonzero((idx == idx[a]) & (np.arange(len(idx)) != a)))
                    for a in anchors])
    neg = np.array([np.flatnonzero(idx == q)[np.argmax(sim[a, idx == q])]
                    for a, q in zip(anchors, neg_pill, strict=True)])
    return anchors, pos, neg


class RetrievalAccumulator(Accumulator):
    """Keeps every embedding (retrieval needs them all) and scores leave-one-out retrieval."""

    def __init__(self) -> None:
        self.emb: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch of (B, D) unit-norm embeddings and their (B,) pill labels."""
        self.emb.append(outputs.detach().float().cpu())
        self.labels.append(targets.detach().cpu())

    def compute(self) -> dict[str, float]:
        """map / top1 / top5 of each sample retrieving the others (pills ranked by best match)."""
        emb, labels = torch.cat(self.emb).numpy(), torch.cat(self.labels).numpy()
        sim = emb @ emb.T
        np.fill_diagonal(sim, -np.inf)
        pills, idx = np.unique(labels, return_inverse=True)
        aps, ranks = [], []
        for i in range(len(labels)):
            genuine = idx == idx[i]
            genuine[i] = False
            if not genuine.any():
                continue
            order = np.lexsort((genuine, -sim[i]))  # ties count against the query
            aps.append(average_precision(np.flatnonzero(genuine[order]) + 1))
            pill_scores = np.full(len(pills), -np.inf)
            np.maximum.at(pill_scores, idx, sim[i])
            pill_scores[idx[i]] = sim[i][genuine].max()
            better = pill_scores > pill_scores[idx[i]]
            ties = (pill_scores == pill_scores[idx[i]]).sum() - 1
            ranks.append(1 + int(better.sum()) + int(ties))
        if not aps:
            return {"map": 0.0, "top1": 0.0, "top5": 0.0}
        out = summarize(np.array(ranks), np.array(aps), cmc_ranks=1)
        return {k: out[k] for k in ("map", "top1", "top5")}


class Retrieval(Task):
    """Labels are pill ids; outputs are (B, D) unit-norm embeddings (e.g. `EmbeddingNet`)."""

    name = "retrieval"
    metric = "map"

    def __init__(self, margin: float = 0.2, window: int = 5, seed: int = 0,
                 partition_by: str = "label") -> None:
        super().__init__(partition_by)
        # a margin <= 0 is met by every triplet: the loss is 0 and nothing is learnt
        number("task.margin", margin, 0, math.inf, low_open=True, high_open=True)
        number("task.window", window, 1, integer=True)
        number("task.seed", seed, 0, integer=True)
        self.margin, self.window = float(margin), int(window)
        self.rng = np.random.default_rng(seed)

    def load_targets(self, root: str | Path, split: str) -> np.ndarray:
        """The split's pill labels."""
        from fedray.data.datasets import load_labels

        return load_labels(root, split)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Triplet loss (eq. 2) over the batch's mined triplets; 0 when it has none."""
        a, p, n = batch_triplets(outputs.detach().float().cpu().numpy(),
                                 targets.cpu().numpy(), self.window, self.rng)
        if len(a) == 0:
            return outputs.sum() * 0.0
        a, p, n = (torch.as_tensor(v, device=outputs.device) for v in (a, p, n))
        return triplet_loss(outputs[a], outputs[p], outputs[n], self.margin)

    def example_batch(self, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two unit embeddings per pill."""
        labels = torch.arange(num_classes).repeat_interleave(2)
        return torch.eye(2 * num_classes), labels

    def accumulator(self, num_classes: int) -> RetrievalAccumulator:
        """Leave-one-out retrieval over everything evaluated."""
        return RetrievalAccumulator()
