"""The retrieval trainers: the proxy loss, and what each training loss learns on easy images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedray.pill.retrieval import pretrain
from fedray.pill.retrieval.data import RetrievalData
from fedray.pill.retrieval.nets import MultiStream
from fedray.pill.retrieval.train import align_to, embed, init_proxies, lr_schedule, train_embedding
from fedray.pill.retrieval.triplet import proxy_loss

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 220, 60],
                    [240, 240, 240], [30, 30, 30]], np.uint8)


def _images(per_pill: int, seed: int, size: int = 68) -> tuple[np.ndarray, np.ndarray]:
    """A disc of the pill's colour on a random grey background, noisy: pill = colour index."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    images, pills = [], []
    for pill, colour in enumerate(COLOURS):
        for _ in range(per_pill):
            img = np.full((size, size, 3), rng.integers(60, 200), np.float32)
            img[disc] = colour
            img += rng.normal(0, 12, img.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            pills.append(pill)
    return np.stack(images), np.array(pills)


def _tcfg(loss: str, epochs: int) -> dict:
    return {"loss": loss, "epochs": epochs, "batch_size": 2, "lr": 2e-3, "margin": 0.2,
            "window": 2, "temperature": 0.05, "standardize": True,
            "augment": {"rotate_deg": 180, "zoom": [0.9, 1.1], "translate_px": 2,
                        "blur_prob": 0.0}}


def _separation(model, train, train_pill, test, test_pill) -> tuple[float, float]:
    """(nearest-centroid accuracy of the test images, their mean margin: cosine to their own
    pill's training centroid minus their mean cosine to the other pills')."""
    e_train, e_test = embed(model, train)["color"], embed(model, test)["color"]
    centroids = F.normalize(torch.stack([e_train[torch.as_tensor(train_pill == p)].mean(0)
                                         for p in range(len(COLOURS))]), dim=1)
    cos = e_test @ centroids.T
    own = cos[torch.arange(len(test)), torch.as_tensor(test_pill)]
    other = (cos.sum(1) - own) / (len(COLOURS) - 1)
    accuracy = float((cos.argmax(1).numpy() == test_pill).mean())
    return accuracy, float((own - other).mean())


def test_proxy_loss_is_cross_entropy_of_scaled_cosines():
    gen = torch.Generator().manual_seed(0)
    emb, proxies = torch.randn(5, 8, generator=gen), torch.randn(3, 8, generator=gen)
    labels = torch.tensor([0, 2, 1, 1, 0])

    got = proxy_loss(emb, proxies, labels, temperature=0.1)

    cos = F.cosine_similarity(emb[:, None], proxies[None], dim=2)
    want = -torch.log_softmax(cos / 0.1, dim=1)[torch.arange(5), labels].mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    # an embedding on its own proxy scores better than one on another pill's
    aligned = proxy_loss(proxies[[0]], proxies, torch.tensor([0]))
    wrong = proxy_loss(proxies[[1]], proxies, torch.tensor([0]))
    assert aligned < wrong


def test_proxy_training_separates_unseen_images_of_each_pill():
    torch.manual_seed(0)
    train, train_pill = _images(4, seed=0)
    test, test_pill = _images(3, seed=1)
    model = MultiStream("teacher", ["color"], 68)
    _, margin_before = _separation(model, train, train_pill, test, test_pill)

    rows = train_embedding(model, train, train_pill, np.arange(0, len(train), 4),
                           _tcfg("proxy", 10), seed=0)

    accuracy, margin = _separation(model, train, train_pill, test, test_pill)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
    assert accuracy >= 0.9 and margin > margin_before + 0.04  # 0.005 -> 0.095 measured
    assert "train/active_triplets" not in rows[-1]  # no triplets in the proxy loss


def test_both_adds_the_proxy_loss_to_the_triplets():
    train, train_pill = _images(2, seed=0)
    rows = {}
    for loss in ("triplet", "both"):
        torch.manual_seed(0)
        rows[loss] = train_embedding(MultiStream("teacher", ["color"], 68), train, train_pill,
                                     np.arange(0, len(train), 2), _tcfg(loss, 1), seed=0)[0]
    assert 0.0 <= rows["both"]["train/active_triplets"] <= 1.0
    # same model, images and triplets: the proxy term (~ln 6 at the start) comes on top
    assert rows["both"]["train/loss"] > rows["triplet"]["train/loss"] + 1.0


def test_proxies_passed_in_are_kept_and_trained_across_calls():
    train, train_pill = _images(2, seed=0)
    model = MultiStream("teacher", ["color"], 68)
    proxies: dict = {}

    train_embedding(model, train, train_pill, np.arange(0, len(train), 2), _tcfg("proxy", 1),
                    seed=0, proxies=proxies)
    first = proxies["color"]
    snapshot = first.detach().clone()
    train_embedding(model, train, train_pill, np.arange(0, len(train), 2), _tcfg("proxy", 1),
                    seed=1, proxies=proxies)

    assert proxies["color"] is first and tuple(first.shape) == (len(COLOURS), 128)
    assert not torch.equal(first.detach(), snapshot)  # trained on, not drawn again


def test_imprinted_proxies_are_each_pills_mean_unit_embedding():
    train, train_pill = _images(3, seed=0)
    torch.manual_seed(0)
    model = MultiStream("teacher", ["color"], 68)
    gen = torch.Generator().manual_seed(0)

    got = init_proxies(model, train, train_pill, "imprint", gen)["color"].detach()

    e = F.normalize(embed(model, train)["color"], dim=1)
    want = F.normalize(torch.stack([e[torch.as_tensor(train_pill == p)].mean(0)
                                    for p in range(len(COLOURS))]), dim=1)
    assert torch.allclose(got, want, atol=1e-6)
    # so every training image already sits closest to its own pill's proxy here...
    assert float(((e @ got.T).argmax(1).numpy() == train_pill).mean()) > 0.5
    # ...where random proxies are unit-free noise, a different draw for another generator
    rand = init_proxies(model, train, train_pill, "random", gen)["color"].detach()
    assert tuple(rand.shape) == tuple(got.shape) and float(rand.norm(dim=1).mean()) < 0.5
    with pytest.raises(ValueError, match="proxy_init='zeros'"):
        init_proxies(model, train, train_pill, "zeros", gen)


def test_imprinted_proxies_start_the_loss_lower_on_a_trained_embedding():
    train, train_pill = _images(4, seed=0)
    torch.manual_seed(0)
    model = MultiStream("teacher", ["color"], 68)
    train_embedding(model, train, train_pill, np.arange(0, len(train), 4),
                    _tcfg("proxy", 6), seed=0)  # a "pretrained" embedding
    first = {}
    for kind in ("random", "imprint"):
        tcfg = {**_tcfg("proxy", 1), "lr": 1e-6, "proxy_init": kind}
        first[kind] = train_embedding(copy.deepcopy(model), train, train_pill,
                                      np.arange(0, len(train), 4), tcfg, seed=1)[0]
    # random proxies: 4.3 measured, worse than no preference at all (ln 6 = 1.8): random
    # directions under a sharp temperature; imprinted: 1.4, the embedding's own classes
    assert first["random"]["train/loss"] > 1.5
    assert first["imprint"]["train/loss"] < first["random"]["train/loss"] - 1.0


def test_unknown_loss_is_refused():
    train, train_pill = _images(1, seed=0)
    with pytest.raises(ValueError, match="loss='arcface'"):
        train_embedding(MultiStream("teacher", ["color"], 68), train, train_pill,
                        np.arange(len(train)), _tcfg("arcface", 1), seed=0)


def test_cosine_schedule_decays_to_zero_and_constant_keeps_the_lr():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam(params, lr=2e-3)
    sched = lr_schedule(opt, {"schedule": "cosine"}, steps=10)
    seen = []
    for _ in range(10):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[4] == pytest.approx(1e-3)  # half way: half the lr
    assert seen[-1] == pytest.approx(0.0, abs=1e-12) and seen == sorted(seen, reverse=True)
    assert lr_schedule(opt, {"schedule": "constant"}, steps=10) is None
    with pytest.raises(ValueError, match="schedule='step'"):
        lr_schedule(opt, {"schedule": "step"}, steps=10)


def test_align_recovers_a_rotated_basis_and_keeps_the_rankings():
    torch.manual_seed(0)
    student = MultiStream("student", ["color", "gray"], 100)
    teacher = MultiStream("student", ["color", "gray"], 100)
    teacher.load_state_dict(student.state_dict())
    q = torch.linalg.qr(torch.randn(128, 128, dtype=torch.float64))[0]
    with torch.no_grad():  # the teacher embeds exactly as the student, in a turned basis
        for net in teacher.nets.values():
            fc = net.classifier[-1]
            fc.weight.copy_(q.float() @ fc.weight)
            fc.bias.copy_(q.float() @ fc.bias)
    images = (np.random.default_rng(0).random((48, 100, 100, 3)) * 255).astype(np.uint8)
    before = embed(student, images)
    gaps = align_to(student, teacher, images)
    after, target = embed(student, images), embed(teacher, images)
    for s in student.streams:
        assert gaps[s][0] > 0.5 and gaps[s][1] < 1e-6  # turned apart, then onto each other
        torch.testing.assert_close(after[s], target[s], atol=1e-4, rtol=0)
        torch.testing.assert_close(after[s] @ after[s].T, before[s] @ before[s].T,
                                   atol=1e-5, rtol=0)


_RCFG = {"catalog": {"num_pills": 10, "catalog_seed": 0, "image_size": 99, "photos_per_side": 2,
                     "num_textures": 2},
         "pretrain": {"num_pills": 4, "epochs": 1}, "train": _tcfg("proxy", 1),
         "streams": ["color"], "norm": True}


def _state(model: MultiStream) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_fresh_model_depends_on_its_seed_only():
    def fresh(seed: int) -> dict[str, torch.Tensor]:  # as the stage builds a model
        with pretrain.seeded(seed):
            return _state(pretrain.start_from(None, "student", _RCFG))

    torch.manual_seed(0)
    alone = fresh(pretrain.init_seed(0, 1, 1))  # models=[student]
    torch.manual_seed(0)
    MultiStream("teacher", ["color"], 99)  # models=[teacher, student, ...]
    torch.rand(3)
    after = fresh(pretrain.init_seed(0, 1, 1))
    state = torch.random.get_rng_state()
    other = fresh(pretrain.init_seed(0, 2, 1))  # another fold

    assert _same(alone, after)
    assert not _same(alone, other)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert pretrain.init_seed(0, 1, 2) == pretrain.init_seed(0, 1, 2) != pretrain.init_seed(0, 2, 1)


def test_the_pretraining_starts_from_weights_of_its_cache_key_only(monkeypatch, tmp_path):
    data = RetrievalData(np.arange(2), np.zeros((2, 2, 99, 99, 3), np.uint8),
                         np.zeros((2, 2, 1, 99, 99, 3), np.uint8))
    starts = []
    monkeypatch.setattr(pretrain, "build_retrieval_data", lambda *a, **k: data)
    monkeypatch.setattr(pretrain, "train_embedding",
                        lambda model, *a, **k: starts.append(_state(model)))
    for i, before in enumerate((0, 7)):  # what the run drew from the global RNG before
        torch.manual_seed(0)
        torch.rand(before)
        rcfg = {**_RCFG, "catalog": {**_RCFG["catalog"], "cache_dir": str(tmp_path / str(i))}}
        pretrain.pretrained("student", rcfg, seed=3)

    assert len(starts) == 2 and _same(*starts)


def test_the_pretraining_cache_key_follows_the_data_code(monkeypatch):
    from fedray.pill.retrieval import data as data_module

    key = pretrain.cache_key("student", _RCFG, 0)
    monkeypatch.setattr(data_module, "_source_hash", lambda: "another catalog code")
    changed = pretrain.cache_key("student", _RCFG, 0)
    monkeypatch.setattr(data_module, "VERSION", data_module.VERSION + 1)

    assert changed != key
    assert pretrain.cache_key("student", _RCFG, 0) not in (key, changed)
