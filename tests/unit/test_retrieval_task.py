"""The retrieval task on the framework's task seam: in-batch triplets and leave-one-out metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.pill.retrieval.task import Retrieval, batch_triplets
from fedray.tasks.base import Task


def test_batch_triplets_are_valid():
    rng = np.random.default_rng(0)
    labels = np.array([3, 3, 3, 5, 5, 7, 9, 9])  # pill 7 has no positive: never an anchor
    emb = rng.normal(size=(8, 4))

    a, p, n = batch_triplets(emb, labels, window=2, rng=rng)

    assert sorted(a.tolist()) == [0, 1, 2, 3, 4, 6, 7]
    assert np.all(labels[p] == labels[a]) and np.all(p != a)
    assert np.all(labels[n] != labels[a])


def test_one_pill_batch_has_no_triplets_and_zero_loss():
    task = Retrieval()
    out = torch.nn.functional.normalize(torch.randn(4, 8, requires_grad=True), dim=1)

    loss = task.loss(out, torch.zeros(4, dtype=torch.long))

    assert isinstance(task, Task) and float(loss.detach()) == 0.0
    loss.backward()  # still part of the graph


def test_leave_one_out_metrics_on_a_hand_made_embedding():
    acc = Retrieval().accumulator(num_classes=2)
    # pill 0: a = (1, 0), b = (0, 1); pill 1: c = (0.8, 0.6), nearer to both a and b than they are
    acc.update(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]), torch.tensor([0, 0, 1]))

    m = acc.compute()

    # a and b each find c first, their mate second (AP 1/2); c has no mate and is not a query
    assert m == pytest.approx({"map": 0.5, "top1": 0.0, "top5": 1.0})


@pytest.mark.parametrize(("kwargs", "key"), [({"margin": -1}, "task.margin"),
                                             ({"margin": 0}, "task.margin"),
                                             ({"margin": "abc"}, "task.margin"),
                                             ({"window": 0}, "task.window"),
                                             ({"seed": -1}, "task.seed")])
def test_a_margin_every_triplet_meets_is_refused(kwargs, key):
    """margin=-1 was accepted and trained to a loss of 0.0: nothing learnt."""
    from fedray.config import ConfigError

    with pytest.raises(ConfigError, match=rf"^{key}: "):
        Retrieval(**kwargs)
