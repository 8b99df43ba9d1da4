"""stage=retrieval end to end on a tiny catalog: the plug-in stage seam, metrics files, the CMC."""

from __future__ import annotations

import json

import pytest
from conftest import compose_plain

from fedray.config import ConfigError
from fedray.pill.retrieval.nets import load_model
from fedray.run import run


def _cfg(tmp_path, *overrides: str) -> dict:
    cfg = compose_plain([
        "+experiment=pill_retrieval", "logger=jsonl",
        "retrieval.catalog.num_pills=4", "retrieval.catalog.photos_per_side=2",
        "retrieval.train_photos=1", "retrieval.folds=2",
        "retrieval.catalog.num_textures=6", f"retrieval.catalog.cache_dir={tmp_path / 'cache'}",
        "retrieval.train.epochs=1", "retrieval.kd.epochs=1", "retrieval.train.batch_size=4",
        *overrides,
    ])
    cfg["run_dir"] = str(tmp_path / "run")
    return cfg


@pytest.mark.slow  # ~10 s on an idle 2-core machine, minutes on a loaded one
def test_teacher_run_writes_table5_metrics_and_cmc(tmp_path):
    cfg = _cfg(tmp_path, "retrieval.models=[teacher]", "retrieval.streams=[color,gray]",
               "retrieval.catalog.image_size=68")

    summary = run(cfg)

    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["model"] for r in rows] == ["teacher", "teacher"]  # one epoch, one evaluation
    assert 0.0 <= rows[-1]["eval/consumer/multi/two_side/map"] <= 1.0
    for key in ("consumer/multi/one_side", "consumer/multi/two_side", "consumer/color/two_side",
                "shifted/multi/two_side", "seen/multi/two_side"):
        for m in ("map", "top1", "top5"):
            assert 0.0 <= summary[f"teacher/{key}/{m}"] <= 1.0
    cmc = summary["teacher/consumer/multi/two_side/cmc"]
    assert len(cmc) == 20 and cmc == sorted(cmc) and cmc[-1] == 1.0  # 4 pills: all within 20
    assert (run_dir / "cmc.png").stat().st_size > 0
    assert json.loads((run_dir / "summary.json").read_text())["stage"] == "retrieval"
    saved = load_model(run_dir / "models" / "fold0" / "teacher.pt")  # the trained streams
    assert saved.streams == ["color", "gray"] and saved.image_size == 68 and not saved.training
    assert [p.name for p in (run_dir / "models").iterdir()] == ["fold0"]  # run_folds: [0]


@pytest.mark.slow
def test_teacher_student_and_kd_student(tmp_path):
    summary = run(_cfg(tmp_path))

    for name in ("teacher", "student", "student_kd"):
        assert 0.0 <= summary[f"{name}/consumer/multi/two_side/top5"] <= 1.0


@pytest.mark.slow
def test_a_later_run_reuses_trained_models_and_trains_only_the_rest(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    cfg = _cfg(first, "retrieval.models=[teacher,student]", "retrieval.streams=[gray]")
    before = run(cfg)

    cfg = _cfg(tmp_path, "retrieval.models=[teacher,student,student_kd]",
               "retrieval.streams=[gray]", f"retrieval.reuse={first / 'run'}")
    after = run(cfg)

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    trained = {r["model"] for r in rows if "train/loss" in r or "train/kd_loss" in r}
    assert trained == {"student_kd"}  # the teacher and the student were loaded
    for name in ("teacher", "student"):  # the same weights score the same
        key = f"{name}/consumer/multi/two_side/map"
        assert after[key] == pytest.approx(before[key], abs=1e-9)
    assert (tmp_path / "run" / "models" / "fold0" / "student_kd.pt").exists()


@pytest.mark.parametrize(("override", "match"),
                         [("seed=1", r"retrieval\.reuse: .*teacher\.pt.*seed"),
                          ("retrieval.train_photos=2", r"retrieval\.reuse: .*train_photos"),
                          ("retrieval.streams=[color]", r"retrieval\.reuse: .*streams")])
def test_reused_models_must_come_from_this_runs_catalog_split_and_streams(tmp_path, override,
                                                                          match):
    first = tmp_path / "first"
    first.mkdir()
    run(_cfg(first, "retrieval.models=[teacher]", "retrieval.streams=[gray]",
             "retrieval.catalog.image_size=68"))

    cfg = _cfg(tmp_path, "retrieval.models=[teacher]", "retrieval.streams=[gray]",
               "retrieval.catalog.image_size=68", f"retrieval.reuse={first / 'run'}", override)
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before anything ran


def test_reuse_of_a_directory_without_models_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"retrieval\.reuse: .* holds no models/"):
        run(_cfg(tmp_path, f"retrieval.reuse={tmp_path}"))
    (tmp_path / "models" / "fold0").mkdir(parents=True)
    (tmp_path / "models" / "fold0" / "teacher.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"teacher\.pt is not a saved retrieval model"):
        run(_cfg(tmp_path, f"retrieval.reuse={tmp_path}"))


@pytest.mark.parametrize(
    ("override", "key"),
    [("retrieval.models=[resnet]", "retrieval.models"),
     ("retrieval.models=[student_kd]", "student_kd"),
     ("retrieval.catalog.image_size=64", "retrieval.catalog.image_size"),
     ("retrieval.run_folds=[7]", "retrieval.run_folds"),
     ("retrieval.run_folds=[0,0]", "retrieval.run_folds"),
     ("retrieval.train.loss=arcface", "retrieval.train.loss"),
     ("retrieval.train.temperature=0", "retrieval.train.temperature"),
     ("retrieval.train.schedule=step", "retrieval.train.schedule"),
     ("retrieval.train.proxy_init=zeros", "retrieval.train.proxy_init"),
     ("retrieval.federated.clients=0", "retrieval.federated.clients"),
     ("retrieval.federated.lr=-1", "retrieval.federated.lr"),
     ("retrieval.federated.batch_size=0", "retrieval.federated.batch_size"),
     ("retrieval.federated.local_epochs=0.3", "retrieval.federated.local_epochs"),
     ("retrieval.federated.local_epochs=1.5", "retrieval.federated.local_epochs"),
     ("retrieval.federated.local_epochs=0", "retrieval.federated.local_epochs"),
     ("retrieval.federated.drift=fedbn", "retrieval.federated.drift"),
     ("retrieval.federated.loss=arcface", "retrieval.federated.loss"),
     ("retrieval.kd.align=maybe", "retrieval.kd.align"),
     ("retrieval.pretrain.num_pills=-1", "retrieval.pretrain.num_pills"),
     ("retrieval.pretrain.epochs=1.5", "retrieval.pretrain.epochs"),
     # a training number that trains nothing: zero epochs, a margin every triplet meets
     ("retrieval.threads=0", "retrieval.threads"),
     ("retrieval.train.epochs=0", "retrieval.train.epochs"),
     ("retrieval.train.margin=-1", "retrieval.train.margin"),
     ("retrieval.train.lr=0", "retrieval.train.lr"),
     ("retrieval.train.augment.zoom=[1.2,0.8]", "retrieval.train.augment.zoom"),
     ("retrieval.train.augment.blur_prob=2", "retrieval.train.augment.blur_prob")],
)
def test_bad_retrieval_config_names_the_key(tmp_path, override, key):
    from fedray.validate import validate

    cfg = _cfg(tmp_path, override, "retrieval.models=[teacher,student_fed]"
               if "federated" in override else "retrieval.folds=2")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)  # what launch.py and a sweep run before anything starts
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_split_that_leaves_every_client_one_pill_is_refused_before_the_catalog(tmp_path):
    """Each client of one pill has no negative to mine and is skipped every round: with all of
    them so, the rounds aggregated nothing (a ValueError traceback after the catalog build)."""
    from fedray.data.partition import PartitionError

    cfg = _cfg(tmp_path, "retrieval.models=[teacher_fed]", "retrieval.federated.clients=2",
               "partition=pathological", "partition.classes_per_client=1")
    with pytest.raises(PartitionError, match=r"each of the 2 clients holds one pill .* "
                                             r"partition\.classes_per_client=2"):
        run(cfg)
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_federated_teacher_trains_across_clients(tmp_path):
    cfg = _cfg(tmp_path, "partition=iid", "retrieval.models=[teacher_fed]",
               "retrieval.streams=[gray]", "retrieval.catalog.image_size=68",
               "retrieval.federated.clients=2", "retrieval.federated.rounds=1")

    summary = run(cfg)

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert rows[0]["fl/clients"] == 2 and rows[0]["comm/bytes_up"] > 0
    assert 0.0 <= summary["teacher_fed/consumer/multi/two_side/map"] <= 1.0


def test_the_federated_stages_keys_on_the_command_line_say_what_to_set_instead():
    from fedray.pill.retrieval.stage import check_not_fl

    check_not_fl(["retrieval.federated.clients", "seed", "partition.alpha"])
    with pytest.raises(ConfigError, match=r"^fl\.num_clients: stage=retrieval does not read "
                       r"fl\.\* or client\.\* .* retrieval\.federated\.clients$"):
        check_not_fl(["seed", "fl.num_clients"])
    with pytest.raises(ConfigError, match=r"^fl\.quorum: .* the retrieval\.federated keys$"):
        check_not_fl(["fl.quorum"])


def test_a_client_split_that_cannot_be_made_fails_before_any_training(tmp_path):
    from fedray.data.partition import PartitionError

    # 2 training pills on 5 clients, 3 pills each: refused before the teacher trains
    cfg = _cfg(tmp_path, "retrieval.models=[teacher,student_fed]", "retrieval.folds=2",
               "partition=pathological", "partition.classes_per_client=3")
    with pytest.raises(PartitionError, match=r"classes_per_client=3 exceeds the 2 classes.*"
                                             r"\(retrieval\.federated\.clients=5 over fold 0's"):
        run(cfg)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text().strip() == ""
    assert not (tmp_path / "cache").exists()  # nor is the catalog built first


def test_clients_train_with_their_own_batch_size_and_loss(monkeypatch):
    import numpy as np

    from fedray.pill.retrieval import federated
    from fedray.pill.retrieval.nets import MultiStream

    seen = []

    def fake_train(model, pool, pool_pill, ref_index, tcfg, seed, **kw):
        seen.append((tcfg["batch_size"], tcfg["epochs"], tcfg["lr"], tcfg["loss"]))
        return [{"train/loss": 1.0}]

    monkeypatch.setattr(federated, "train_embedding", fake_train)
    pool = np.zeros((8, 100, 100, 3), np.uint8)
    pills = np.repeat(np.arange(4), 2)
    tcfg = {"batch_size": 64, "lr": 1e-3, "epochs": 9, "loss": "proxy"}
    for fed_bs, want, loss, want_loss in ((16, 16, "triplet", "triplet"),
                                          (None, 64, None, "proxy")):
        seen.clear()
        federated.train_federated(
            MultiStream("student", ["gray"], 100), pool, pills,
            {"clients": 2, "rounds": 1, "local_epochs": 2, "batch_size": fed_bs, "loss": loss},
            tcfg, {"_target_": "fedray.data.partition.partition_iid", "name": "iid"},
            {"_target_": "fedray.fl.strategies.fedavg.FedAvg"}, seed=0)
        assert seen == [(want, 2, 1e-3, want_loss)] * 2


def test_half_an_epoch_a_round_passes_over_every_image_once_in_two_rounds(monkeypatch):
    import numpy as np
    import torch

    from fedray.pill.retrieval import federated
    from fedray.pill.retrieval.nets import MultiStream

    seen = []

    def fake_train(model, pool, pool_pill, ref_index, tcfg, seed, proxies=None, **kw):
        seen.append((pool[:, 0, 0, 0].copy(), pool_pill.copy(), tcfg["epochs"], dict(proxies)))
        return [{"train/loss": 1.0}]

    monkeypatch.setattr(federated, "train_embedding", fake_train)
    pills = np.repeat(np.arange(4), [5, 4, 3, 1])  # pill 3: one image for two shares
    pool = np.zeros((len(pills), 100, 100, 3), np.uint8)
    pool[:, 0, 0, 0] = np.arange(len(pills))  # each image's id
    tcfg = {"batch_size": 4, "lr": 1e-3, "epochs": 9, "loss": "proxy", "proxy_init": "imprint"}
    model = MultiStream("student", ["gray"], 100)
    federated.train_federated(
        model, pool, pills, {"clients": 1, "rounds": 4, "local_epochs": 0.5}, tcfg,
        {"_target_": "fedray.data.partition.partition_iid", "name": "iid"},
        {"_target_": "fedray.fl.strategies.fedavg.FedAvg"}, seed=0)

    assert [s[2] for s in seen] == [1] * 4
    for a, b in ((0, 1), (2, 3)):  # each pair of rounds: one pass, every pill in both halves
        ids = np.concatenate([seen[a][0], seen[b][0]])
        assert sorted(ids[pills[ids] < 3]) == list(np.flatnonzero(pills < 3))
        assert set(seen[a][1]) == set(seen[b][1]) == {0, 1, 2, 3}
        assert len(seen[a][0]) + len(seen[b][0]) == 14  # pill 3's image lent to both
    assert not np.array_equal(seen[0][0], seen[2][0])  # split afresh every pass
    # the proxies were imprinted once, from all 13 images, before the first half trained
    want = federated.init_proxies(model, pool, pills, "imprint", None)
    assert torch.allclose(seen[0][3]["gray"], want["gray"], atol=1e-5)


def test_scaffold_turns_every_clients_gradient_into_the_federations(monkeypatch):
    import numpy as np

    from fedray.fl.types import params_nbytes
    from fedray.pill.retrieval import federated
    from fedray.pill.retrieval.nets import MultiStream

    seen = []

    def fake_train(model, pool, pool_pill, ref_index, tcfg, seed, **kw):
        # a client whose loss has the constant gradient (mean pill + 1) on the first weight
        name, weight = next(iter(model.named_parameters()))
        for _ in range(3):
            weight.grad = None
            (weight * float(pool_pill.mean() + 1)).sum().backward()
        seen.append((weight.grad.flatten()[0].item(), len(pool_pill)))
        return [{"train/loss": 1.0}]

    monkeypatch.setattr(federated, "train_embedding", fake_train)
    pills = np.repeat(np.arange(4), [6, 6, 2, 2])
    pool = np.zeros((len(pills), 100, 100, 3), np.uint8)
    rows = federated.train_federated(
        MultiStream("student", ["gray"], 100), pool, pills,
        {"clients": 2, "rounds": 2, "local_epochs": 1, "drift": "scaffold"}, {"batch_size": 4,
                                                                              "lr": 1e-3},
        {"_target_": "fedray.data.partition.partition_pathological", "name": "pathological",
         "classes_per_client": 2},
        {"_target_": "fedray.fl.strategies.fedavg.FedAvg"}, seed=0)

    (g0, n0), (g1, n1) = seen[:2]
    assert g0 != g1  # round 1: each client its own gradient, uncorrected
    mean = (g0 * n0 + g1 * n1) / (n0 + n1)
    assert [g for g, _ in seen[2:]] == pytest.approx([mean, mean])  # round 2: the weighted mean
    model_bytes = params_nbytes(federated._params(MultiStream("student", ["gray"], 100)))
    assert rows[0]["comm/bytes_up"] > 2 * model_bytes  # each c_i travels beside its model


@pytest.mark.parametrize(("strategy", "want"), [
    ({"_target_": "fedray.fl.strategies.fedprox.FedProx", "mu": 0.5}, 0.5),
    ({"_target_": "fedray.fl.strategies.fedavg.FedAvg"}, 0.0)])
def test_fedprox_pulls_each_client_back_to_the_rounds_global_model(monkeypatch, strategy, want):
    import numpy as np
    import torch

    from fedray.pill.retrieval import federated
    from fedray.pill.retrieval.nets import MultiStream

    seen = []

    def fake_train(model, pool, pool_pill, ref_index, tcfg, seed, **kw):
        weight = next(iter(model.parameters()))
        with torch.no_grad():
            weight += 1.0  # a local step of 1 on every entry
        (weight * 0.0).sum().backward()  # a flat loss: only the proximal term pulls
        seen.append((weight.grad.min().item(), weight.grad.max().item()))
        return [{"train/loss": 1.0}]

    monkeypatch.setattr(federated, "train_embedding", fake_train)
    pills = np.repeat(np.arange(4), 2)
    federated.train_federated(
        MultiStream("student", ["gray"], 100), np.zeros((8, 100, 100, 3), np.uint8), pills,
        {"clients": 2, "rounds": 1, "local_epochs": 1}, {"batch_size": 4, "lr": 1e-3},
        {"_target_": "fedray.data.partition.partition_iid", "name": "iid"}, strategy, seed=0)

    assert seen == [pytest.approx((want, want))] * 2


def _pretrain_cfg(tmp_path, *overrides: str) -> dict:
    return _cfg(tmp_path, "retrieval.streams=[gray]", "retrieval.catalog.image_size=68",
                "retrieval.pretrain.num_pills=3", "retrieval.pretrain.epochs=1", *overrides)


@pytest.mark.slow
def test_models_start_from_one_cached_public_pretraining(tmp_path, monkeypatch):
    from fedray.pill.retrieval import pretrain, stage

    starts = []
    real = pretrain.start_from
    monkeypatch.setattr(stage.pretrain, "start_from",
                        lambda init, arch, rcfg: starts.append(init) or real(init, arch, rcfg))
    first = tmp_path / "first"
    first.mkdir()
    cfg = _pretrain_cfg(first, "retrieval.models=[teacher,teacher_fed]", "partition=iid",
                        "retrieval.federated.clients=2", "retrieval.federated.rounds=1",
                        f"retrieval.catalog.cache_dir={tmp_path / 'cache'}")
    run(cfg)

    rows = [json.loads(line) for line in (first / "run" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows if r["model"] == "teacher_pretrain"] == [1]
    assert len(starts) == 2 and starts[0] is starts[1] is not None  # one pretraining, two starts
    saved = list((tmp_path / "cache" / "retrieval").glob("pretrain-teacher-*.pt"))
    assert len(saved) == 1 and load_model(saved[0]).meta["pretrain"]["public"]["public_of"] == 4
    assert load_model(first / "run" / "models" / "fold0" / "teacher.pt").meta["pretrain"] == {
        "num_pills": 3, "epochs": 1}

    second = tmp_path / "second"  # another run on the same catalog: the pretraining is reused
    second.mkdir()
    run(_pretrain_cfg(second, "retrieval.models=[teacher]",
                      f"retrieval.catalog.cache_dir={tmp_path / 'cache'}"))
    rows = [json.loads(line) for line in (second / "run" / "metrics.jsonl").open()]
    assert not [r for r in rows if r["model"] == "teacher_pretrain"]


def test_the_public_catalog_holds_none_of_the_private_pills(tmp_path):
    from fedray.pill.catalog import make_catalog
    from fedray.pill.retrieval.data import build_retrieval_data

    public = build_retrieval_data(3, 68, 1, 0, 0, 6, tmp_path, public_of=5)
    private = build_retrieval_data(5, 68, 1, 0, 0, 6, tmp_path)

    assert public.pill_ids.tolist() == [5, 6, 7] and private.pill_ids.tolist() == list(range(5))
    keys = {p.key() for p in make_catalog(5, 0, 0, (), distinct_sides=True)}
    drawn = make_catalog(3, 0, 5, make_catalog(5, 0, 0, (), distinct_sides=True),
                         distinct_sides=True)
    assert not keys & {p.key() for p in drawn}
    assert not any((public.references[i] == private.references[j]).all()
                   for i in range(3) for j in range(5))


def test_pretraining_key_ignores_the_split_and_follows_the_recipe():
    from fedray.pill.retrieval.pretrain import cache_key

    rcfg = compose_plain(["+experiment=pill_retrieval", "retrieval.pretrain.num_pills=50"])[
        "retrieval"]
    base = cache_key("student", rcfg, 0)
    same = cache_key("student", {**rcfg, "run_folds": [1], "train_photos": 3,
                                 "models": ["student_fed"]}, 0)
    assert same == base
    assert cache_key("teacher", rcfg, 0) != base and cache_key("student", rcfg, 1) != base
    assert cache_key("student", {**rcfg, "train": {**rcfg["train"], "lr": 1e-3}}, 0) != base
