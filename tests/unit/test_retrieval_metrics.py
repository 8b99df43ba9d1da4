"""Retrieval metrics (MAP eq. 9, top-k, CMC, one-/two-side fusion), triplets and streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedray.pill.retrieval.data import colour_cast
from fedray.pill.retrieval.metrics import average_precision, folds_by_pill, one_side, two_side
from fedray.pill.retrieval.streams import fused_similarity, gray, sobel_magnitude
from fedray.pill.retrieval.triplet import mine_triplets, neighbour_negatives, triplet_loss

# gallery: pills 10, 20, 30, front (0) and back (1) of each
G_PILL = np.array([10, 10, 20, 20, 30, 30])
G_SIDE = np.array([0, 1, 0, 1, 0, 1])


def test_average_precision_is_eq9():
    assert average_precision([1, 2]) == 1.0
    assert average_precision([4, 1]) == pytest.approx(0.5 * (1 / 1 + 2 / 4))
    assert average_precision([3, 5]) == pytest.approx(0.5 * (1 / 3 + 2 / 5))


def test_one_side_on_a_hand_made_ranking():
    scores = np.array([
        [0.9, 0.1, 0.8, 0.3, 0.5, 0.2],  # pill 20: its refs rank 2nd and 4th; the pill ranks 2nd
        [0.1, 0.2, 0.3, 0.4, 0.9, 0.8],  # pill 30: refs 1st and 2nd
    ])

    res = one_side(scores, [20, 30], G_PILL)

    assert res["map"] == pytest.approx((0.5 * (1 / 2 + 2 / 4) + 1.0) / 2)
    assert res["top1"] == 0.5
    assert res["top5"] == 1.0
    assert res["cmc"][:3] == [0.5, 1.0, 1.0]
    assert len(res["cmc"]) == 20
    assert res["pill_ranks"].tolist() == [2, 1]


def test_ties_count_against_the_query():
    res = one_side(np.full((1, 6), 0.5), [10], G_PILL)

    assert res["pill_ranks"].tolist() == [3]
    assert res["map"] == pytest.approx(0.5 * (1 / 5 + 2 / 6))


def test_two_side_fusion_pairs_photos_with_sides():
    # the pair of pill 20, photo a shows its back, photo b its front
    sa = np.array([[0.0, 0.1, 0.1, 0.9, 0.0, 0.1]])
    sb = np.array([[0.2, 0.0, 0.8, 0.1, 0.3, 0.3]])

    best = two_side(sa, sb, [20], G_PILL, G_SIDE, assignment="best")
    # read as a = front, b = back: 10 -> 0.0, 20 -> 0.2, 30 -> 0.3, so pill 20 ranks 2nd
    known = two_side(sa, sb, [20], G_PILL, G_SIDE, assignment="known")

    assert best["pill_ranks"].tolist() == [1]
    assert best["map"] == 1.0
    assert known["pill_ranks"].tolist() == [2]
    assert known["map"] == pytest.approx(0.5 * (1 / 3 + 2 / 4))  # refs at gallery ranks 3, 4
    assert known["top1"] == 0.0 and known["top5"] == 1.0


def test_two_side_needs_both_sides_of_every_pill():
    with pytest.raises(ValueError, match="one front and one back"):
        two_side(np.zeros((1, 6)), np.zeros((1, 6)), [10], G_PILL, np.zeros(6, int))


def test_folds_split_pills_disjointly_and_evenly():
    folds = folds_by_pill(np.arange(23), k=5, seed=1)

    flat = np.concatenate(folds)
    assert sorted(flat.tolist()) == list(range(23))
    assert {len(f) for f in folds} == {4, 5}


def test_triplet_loss_exact():
    a, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # ||a - p||^2 = 2
    far, near = torch.tensor([[-1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # 4, 2

    assert float(triplet_loss(a, p, far, margin=0.2)) == 0.0
    assert float(triplet_loss(a, p, near, margin=0.2)) == pytest.approx(0.2)


def test_negatives_are_neighbours_of_the_true_pill_in_the_ranking():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 200)  # true pill (col 2) ranks 3rd

    negs = neighbour_negatives(scores, np.full(200, 2), window=1, rng=np.random.default_rng(0))

    assert set(negs.tolist()) == {1, 3}


def test_mined_triplets_are_valid():
    rng = np.random.default_rng(0)
    pool_pill = np.repeat(np.arange(8), 4)  # per pill: 2 references then 2 photos
    ref_index = np.flatnonzero(np.tile([1, 1, 0, 0], 8))
    anchors = rng.permutation(len(pool_pill))
    sim = rng.normal(size=(len(anchors), len(ref_index)))

    pos, neg = mine_triplets(sim, anchors, pool_pill, ref_index, 3, rng)

    assert np.all(pool_pill[pos] == pool_pill[anchors])
    assert np.all(pos != anchors)
    assert np.all(pool_pill[ref_index[neg]] != pool_pill[anchors])
    for i, n in enumerate(neg):  # the negative is its pill's reference closest to the anchor
        same = np.flatnonzero(pool_pill[ref_index] == pool_pill[ref_index[n]])
        assert sim[i, n] == sim[i, same].max()


def test_mining_ranks_the_anchor_without_its_own_image():
    # pool/gallery: pill 0 has images 0 and 1, pills 1..5 one image each (2..6); every image is
    # a reference, as in a federated client. Anchor 0's other image is orthogonal to it and
    # pills 1..5 sit at 0.9..0.5: without itself, its pill ranks 6th, so with window=1 the
    # negative is pill 5 (ranked 5th), not pill 1 (next to itself at 1.0).
    pool_pill = np.array([0, 0, 1, 2, 3, 4, 5])
    ref_index = np.arange(7)
    sim = np.array([[1.0, 0.0, 0.9, 0.8, 0.7, 0.6, 0.5],
                    # anchor 4 (pill 3) is its pill's only image: it keeps itself, ranks its
                    # pill first, and its negative is the pill closest to it (pill 1)
                    [0.2, 0.1, 0.9, 0.3, 1.0, 0.4, 0.5]])
    anchors = np.array([0, 4])

    for seed in range(5):
        pos, neg = mine_triplets(sim, anchors, pool_pill, ref_index, 1,
                                 np.random.default_rng(seed))
        assert ref_index[neg].tolist() == [6, 2]
        assert pos.tolist() == [1, 4]


def test_public_catalog_is_drawn_with_no_private_face(monkeypatch, tmp_path):
    from fedray.pill.retrieval import data as data_module

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        if len(calls) == 2:
            raise StopIteration  # the catalogs are all this test needs
        return []

    monkeypatch.setattr(data_module, "make_catalog", fake)
    with pytest.raises(StopIteration):
        data_module.build_retrieval_data(3, 99, 1, public_of=5, cache_dir=tmp_path)

    assert calls[1][1] == {"distinct_sides": True, "exclude_faces": True}


def test_streams_gray_gradient_and_fused_similarity():
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    step = torch.zeros(1, 1, 5, 6)
    step[..., 3:] = 1.0  # a vertical edge of height 1
    q = {"color": torch.eye(2), "gray": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    g = {"color": torch.eye(2), "gray": torch.eye(2)}

    assert torch.allclose(gray(red), torch.full((1, 1, 4, 4), 0.299))
    assert torch.allclose(sobel_magnitude(step)[0, 0, 2], torch.tensor([0, 0, 4, 4, 0, 0.0]),
                          atol=1e-4)
    assert torch.equal(fused_similarity(q, g), torch.ones(2, 2))


def test_colour_cast_is_strong_and_deterministic():
    img = np.full((2, 8, 8, 3), 200, np.uint8)

    a, b = colour_cast(img, seed=3), colour_cast(img, seed=3)

    assert np.array_equal(a, b)
    per_image = a.reshape(2, -1, 3).mean(1)
    assert np.all(per_image.max(1) - per_image.min(1) > 40)  # no grey stays grey
