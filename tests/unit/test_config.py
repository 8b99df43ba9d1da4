"""Every experiment composes; overrides are type-checked by the schema."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from fedray.config import ConfigError
from tests.conftest import CONF, ROOT, compose_plain

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
GROUPS = ("data", "partition", "model", "strategy", "client", "fl", "logger", "ray")


def test_defaults_list_has_every_group_and_no_experiment():
    import yaml

    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    keys = [next(iter(d)) if isinstance(d, dict) else d for d in defaults]
    assert set(GROUPS) <= set(keys)
    assert not any("experiment" in k for k in keys)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name):
    cfg = compose_plain([f"+experiment={name}"])
    assert cfg["name"] == name
    for group in GROUPS:
        assert isinstance(cfg[group], dict)


def test_pill_noniid_is_the_source_split():
    cfg = compose_plain(["+experiment=pill_noniid"])
    assert cfg["fl"]["num_clients"] == 5
    assert cfg["partition"]["name"] == "pathological"
    assert cfg["partition"]["classes_per_client"] == 4
    # another split on the same experiment takes none of the pathological split's keys along
    other = compose_plain(["+experiment=pill_noniid", "partition=dirichlet"])
    assert other["partition"]["name"] == "dirichlet"
    assert "classes_per_client" not in other["partition"]
    assert cfg["strategy"]["name"] == "fedavg"
    assert cfg["model"]["name"] == "squeezenet"


def test_smoke_is_tiny():
    cfg = compose_plain(["+experiment=smoke"])
    assert cfg["fl"]["num_clients"] == 2 and cfg["fl"]["rounds"] == 1
    n = cfg["data"]["num_classes"] * (cfg["data"]["train_per_class"] + cfg["data"]["val_per_class"])
    assert n <= 100


@pytest.mark.parametrize(
    "group", ["strategy", "partition", "data", "model", "task", "logger", "ray"]
)
def test_every_group_option_composes(group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        needs_root = group == "data" and option in ("yolo_import", "epillid")
        extra = [f"data.root={Path.cwd()}"] if needs_root else []
        cfg = compose_plain([f"{group}={option}", *extra])
        assert cfg[group] is not None


def test_type_error_in_override_is_rejected_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose_plain(["+experiment=pill_noniid", "fl.rounds=foo"])
    assert "fl.rounds" in str(info.value) or "fl.rounds" in str(info.value.__cause__)


def test_unknown_key_is_rejected():
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_plain(["fl.roundz=3"])


def test_optimizer_check_rejects_bad_values_without_importing_torch_dynamo():
    # torch.optim.Optimizer.__init__'s first call imports torch._dynamo (seconds): validation
    # runs the optimizer's own argument checks without it, so a run's start-up does not pay it
    code = (
        "import sys\n"
        "from fedray.config import ConfigError\n"
        "from fedray.validate import check_optimizer\n"
        "sgd = {'_target_': 'torch.optim.SGD', '_partial_': True}\n"
        "check_optimizer({**sgd, 'lr': 0.1, 'momentum': 0.9}, 'client.optimizer')\n"
        "for bad in ({'lr': -1}, {'lr': 0.1, 'nesterov': True}):\n"
        "    try:\n"
        "        check_optimizer({**sgd, **bad}, 'client.optimizer')\n"
        "        raise SystemExit(f'accepted {bad}')\n"
        "    except ConfigError as exc:\n"
        "        print(exc)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert "Invalid learning rate: -1" in lines[0]
    assert "Nesterov momentum requires a momentum" in lines[1]
    assert lines[2] == "False"


@pytest.mark.parametrize(
    ("data", "k", "clients", "message"),
    [({"_target_": "fedray.pill.synth.build_synthetic", "num_pills": 800}, 4, 5, "set it to 160"),
     ({"_target_": "fedray.pill.synth.build_synthetic", "num_pills": 2}, 4, 5, "only 2 classes"),
     ({"_target_": "fedray.data.toy.toy_dataset", "num_classes": 10}, 3, 4,
      "set it to 3 or more")],
)
def test_classes_per_client_is_checked_against_the_configured_classes(data, k, clients,
                                                                      message):
    from fedray.config import ConfigError
    from fedray.data.sources import classes_known
    from fedray.validate import check_partition

    part = {"_target_": "fedray.data.partition.partition_pathological", "name": "pathological",
            "classes_per_client": k}
    if message.startswith("set it to 3"):  # 4 clients x 3 covers 10 classes: accepted
        check_partition(part, classes_known(data), clients)
        part["classes_per_client"] = 2
        message = "set it to 3"
    with pytest.raises(ConfigError, match=f"partition.classes_per_client=.*{message}"):
        check_partition(part, classes_known(data), clients)
    assert classes_known({"_target_": "fedray.pill.seg_sites.seg_sites_dataset",
                           "num_pills": 12}) is None  # pills are not its classes
    # an image folder counts its class folders: a data.num_classes an experiment left is not it
    assert classes_known({"_target_": "fedray.data.image_folder.image_folder_dataset",
                          "num_classes": 4}) is None


@pytest.mark.parametrize(
    ("target", "reason"),
    [("nosuch_pkg.Model", "no module named 'nosuch_pkg'"),
     ("fedray.models.NoSuch", "fedray.models has no attribute 'NoSuch'"),
     ("user_needs_dep.M", "its module imports a missing one: No module named 'not_installed'"),
     ("user_broken.M", "its module raised RuntimeError: boom"),
     ("a b", "is not a dotted path")],
)
def test_an_unimportable_target_is_one_line_naming_why(target, reason, tmp_path, monkeypatch,
                                                        caplog):
    from fedray.config import ConfigError
    from fedray.validate import import_target

    (tmp_path / "user_needs_dep.py").write_text("import not_installed\n")
    (tmp_path / "user_broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "user_ok.py").write_text("class M:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        import_target("model._target_", target)
    assert str(err.value).startswith("model._target_: ") and reason in str(err.value)
    assert "\n" not in str(err.value) and not caplog.records  # nothing logged before it
    assert import_target("model._target_", "user_ok.M").__name__ == "M"


def test_a_kwarg_refused_behind_kwargs_names_the_key(tmp_path, monkeypatch):
    from fedray.config import ConfigError
    from fedray.models import instantiate_target

    (tmp_path / "user_models.py").write_text(
        "def inner(depth=2):\n    return depth\n\n"
        "def outer(**kwargs):\n    return inner(**kwargs)\n\n"
        "def buggy(**kwargs):\n    return len(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert instantiate_target({"_target_": "user_models.outer", "depth": 5}, "model") == 5
    with pytest.raises(ConfigError, match=r"^model\.width: user_models\.outer does not take it "
                                          r"\(.*unexpected keyword argument 'width'\); drop it "
                                          r"with ~model\.width"):
        instantiate_target({"_target_": "user_models.outer", "width": 8}, "model")
    with pytest.raises(TypeError):  # any other TypeError is the callable's bug: kept as it is
        instantiate_target({"_target_": "user_models.buggy"}, "model")


@pytest.mark.parametrize(("stage", "says"),
                         [("retrieval", "add its config group: +retrieval=default (or "
                                        "+experiment=pill_retrieval)"),
                          ("detect", "+detect=yolov3_tiny (or +experiment=pill_detect)"),
                          ("nosuch", "is not a known stage; choose one of")])
def test_a_plugin_stage_without_its_group_says_which_group_to_add(stage, says):
    from fedray.config import ConfigError
    from fedray.run import _validate

    with pytest.raises(ConfigError, match=f"^stage='{stage}'") as err:
        _validate({"stage": stage, "run_dir": "unused"})
    assert says in str(err.value)


@pytest.mark.parametrize(("experiment", "override", "key"), [
    # the synthetic builder's own rules, before any build (once only when the build began)
    ("pill_noniid", "data.distinct_sides=maybe", "data.distinct_sides"),
    ("pill_noniid", "+data.compose.blur_prob=2.0", "data.compose"),
    # the retrieval stage's integers (once int('abc') tracebacks)
    ("pill_retrieval", "retrieval.folds=abc", "retrieval.folds"),
    ("pill_retrieval", "retrieval.catalog.num_pills=null", "retrieval.catalog.num_pills"),
    ("pill_retrieval", "retrieval.run_folds=3", "retrieval.run_folds"),
    ("pill_retrieval", "retrieval.streams=3", "retrieval.streams"),
    # a builder argument whose default is a bool takes true or false, not a truthy string
    ("pill_noniid", "model.batch_norm=maybe", "model.batch_norm"),
    ("seg_two_sites", "model.depth=null", "model.depth"),
])
def test_validation_names_the_key_of_a_value_of_the_wrong_kind(experiment, override, key,
                                                               tmp_path):
    from fedray.validate import validate

    cfg = compose_plain([f"+experiment={experiment}", override])
    cfg["run_dir"] = str(tmp_path)
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        validate(cfg)


def test_values_are_checked_against_the_kind_of_their_default():
    from fedray.checks import like_defaults

    def fn(flag=True, rate=0.5, size=3, betas=(0.9, 0.99), name="x", extra=None):
        return None

    params = inspect.signature(fn).parameters
    like_defaults("g", "fn", params, {"flag": False, "rate": 1, "size": 2.0, "betas": [0.1, 0.2],
                                      "name": 3, "extra": "anything", "unknown": object()})
    for kwargs, says in [({"flag": "yes"}, "g.flag: 'yes' is not true or false"),
                         ({"rate": float("nan")}, "g.rate: nan is not a finite number"),
                         ({"rate": float("inf")}, "g.rate: inf is not a finite number"),
                         ({"size": None}, "g.size: None is not a finite number"),
                         ({"size": True}, "g.size: True is not a finite number"),
                         ({"betas": [0.1, "b"]}, "g.betas: [0.1, 'b'] is not a list of numbers")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(says)}"):
            like_defaults("g", "fn", params, kwargs)
