"""Check a resolved config before anything long starts: no Ray, no data build, no pretraining.

`validate(cfg)` raises `ConfigError("<key>: <what is wrong and what is allowed>")` for the first
bad value it finds: types, ranges and choices of the stable groups (fl, client, ray, logger),
cross-key constraints (clients per round <= clients, a local Ray with enough CPUs for one client
actor, a strategy that can aggregate one round's clients), and the pluggable groups by their
`_target_`: the model is built (it is cheap) and one dummy image runs through it, the optimizer
is built on a dummy parameter and takes one step, the strategy is built and aggregates dummy
updates, a partitioner's keys are matched against its signature. A pretraining `_target_` may
carry its own check as `fn.fedray_check(cfg)` (the pill pretraining does), and so may a plug-in
stage's callable (the detect and retrieval stages do). Checks that need the data itself (is a
partition feasible on these labels) stay with the stages that have the data.

Size: one concept, a check per config group in one table-like module, so every rule
the user can break is found in one place.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedray.checks import boolean, choice, like_defaults, mapping, number, ray_address
from fedray.config import ConfigError, check_given_keys, check_schema_keys
from fedray.data.sources import classes_known
from fedray.fl.inprocess import check_backend
from fedray.targets import first_line, import_target

# the stages whose fl, client and model groups are checked here (a plug-in stage checks its own)
TRAINING_STAGES = ("federated", "isolated", "centralized")
DEVICES = ("auto", "cpu", "cuda")
WANDB_MODES = ("online", "offline", "disabled")
FAULT_KINDS = ("raise", "crash", "nan", "hang")
# arguments the federated loop passes a partitioner itself
PARTITION_GIVEN = ("labels", "num_clients", "seed")


# ------------------------------------------------------------------------------ targets


def _signature(fn: Any) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: nothing to match keys against


# ------------------------------------------------------------------------------ the groups


def check_top(cfg: dict[str, Any]) -> None:
    """stage, run_dir, seed, device, name."""
    from fedray.run import STAGES, stage_target

    stage = cfg.get("stage")
    if stage not in STAGES and not stage_target(cfg):
        raise ConfigError(
            f"stage: {stage!r} is not one of {', '.join(STAGES)}, nor a config group of that "
            "name with a _target_ (a plug-in stage, e.g. stage=detect +detect=yolov3_tiny)"
        )
    if not cfg.get("run_dir"):
        raise ConfigError("run_dir: not set (launch.py sets it to Hydra's output directory)")
    number("seed", cfg.get("seed"), 0, integer=True)
    choice("device", cfg.get("device", "auto"), DEVICES)
    if cfg.get("device") == "cuda":
        from fedray.fl.train import torch_device

        torch_device("cuda")  # a config error here, before any stage, where torch sees no GPU
    if not isinstance(cfg.get("name", ""), str):
        raise ConfigError(f"name: {cfg.get('name')!r} is not a string")


def check_logger(logger: Any) -> None:
    """logger.jsonl/plots are booleans; logger.wandb.mode is online | offline | disabled."""
    logger = mapping("logger", logger or {})
    for key in ("jsonl", "plots"):
        if key in logger:
            boolean(f"logger.{key}", logger[key])
    wandb = mapping("logger.wandb", logger.get("wandb") or {})
    if "enabled" in wandb:
        boolean("logger.wandb.enabled", wandb["enabled"])
    if wandb.get("enabled"):
        choice("logger.wandb.mode", wandb.get("mode", "offline"), WANDB_MODES)


def check_ray(ray: Any) -> None:
    """Per-client resources and pool sizes; a local Ray must fit one client actor; a cluster
    address must answer (one TCP connect)."""
    ray = mapping("ray", ray or {})
    number("ray.client_cpus", ray.get("client_cpus", 1.0), 0, low_open=True)
    number("ray.client_gpus", ray.get("client_gpus", 0.0), 0)
    number("ray.num_cpus", ray.get("num_cpus"), 1, integer=True, optional=True)
    number("ray.num_gpus", ray.get("num_gpus"), 0, optional=True)
    number("ray.max_actors", ray.get("max_actors"), 1, integer=True, optional=True)
    number("ray.shard_cache", ray.get("shard_cache", 8), 0, integer=True)
    number("ray.worker_nice", ray.get("worker_nice", 0), 0, 19, integer=True)
    if ray.get("address") is not None:
        ray_address("ray.address", ray["address"])
    if ray.get("address") is None:  # a local Ray: an actor that asks for more CPUs never starts
        cpus = ray.get("num_cpus") or os.cpu_count() or 1
        if float(ray.get("client_cpus", 1.0)) > cpus:
            raise ConfigError(
                f"ray.client_cpus: {ray['client_cpus']} CPUs per client actor, but the local "
                f"Ray has {cpus} (ray.num_cpus or this machine's cores); allowed: (0, {cpus}]"
            )
        want_gpus = float(ray.get("client_gpus") or 0.0)
        if want_gpus > 0:
            gpus = ray.get("num_gpus")
            if gpus is None:
                import torch

                gpus = torch.cuda.device_count()
            if want_gpus > float(gpus):
                raise ConfigError(
                    f"ray.client_gpus: {want_gpus:g} GPUs per client, but this machine has "
                    f"{gpus:g} (ray.num_gpus, else the GPUs torch sees): a Ray actor asking for "
                    f"more never starts; allowed: [0, {gpus:g}]"
                )


def check_data(data: Any) -> None:
    """data._target_ importable; a `data.root` that is set exists; image_size a positive int."""
    from fedray.data.sources import NOT_BUILDER_KEYS

    data = mapping("data", data)
    import_target("data._target_", data.get("_target_"))
    # the builder's own rules first (data=synthetic: every key; data=torchvision: where the
    # files go), before anything is built
    _own_check("data._target_", data["_target_"],
               {k: v for k, v in data.items() if k not in NOT_BUILDER_KEYS})
    root = data.get("root")
    if root is not None:
        if not isinstance(root, str) or not Path(root).expanduser().exists():
            raise ConfigError(f"data.root={root!r}: no such directory or file (give a local path)")
    if data.get("image_size") is not None:  # null: the dataset's own size (data=custom)
        number("data.image_size", data["image_size"], 1, integer=True)
    if data.get("cache_dir") is not None and not isinstance(data["cache_dir"], str):
        raise ConfigError(f"data.cache_dir: {data['cache_dir']!r} is not a path (or null)")


def clients_per_round(fl: dict[str, Any]) -> int:
    """Clients a round samples (fl.clients_per_round, else fraction x num_clients), checked."""
    n = fl["num_clients"]
    k = fl.get("clients_per_round")
    number("fl.clients_per_round", k, 1, n, integer=True, optional=True)
    return int(k) if k is not None else max(1, round(float(fl["fraction"]) * n))


def check_fl(fl: Any) -> int:
    """The fl group; returns the clients sampled per round."""
    from fedray.fl.head_init import HEAD_INITS
    from fedray.fl.train import PRECISIONS

    fl = mapping("fl", fl)
    number("fl.rounds", fl.get("rounds"), 1, integer=True)
    number("fl.num_clients", fl.get("num_clients"), 1, integer=True)
    number("fl.fraction", fl.get("fraction", 1.0), 0, 1, low_open=True)
    k = clients_per_round({"fraction": 1.0, **fl})
    number("fl.quorum", fl.get("quorum", 0.5), 0, 1, low_open=True)
    number("fl.round_timeout_s", fl.get("round_timeout_s"), 0, low_open=True, optional=True)
    number("fl.eval_every", fl.get("eval_every", 1), 1, integer=True)
    if not isinstance(fl.get("trainable", "all"), str) or not fl.get("trainable", "all"):
        raise ConfigError(
            f"fl.trainable: {fl.get('trainable')!r} is not all, classifier or a regex over "
            "parameter names"
        )
    for key in ("cache_features", "checkpoint"):
        if key in fl:
            boolean(f"fl.{key}", fl[key])
    choice("fl.cache_precision", fl.get("cache_precision", "fp32"), PRECISIONS)
    choice("fl.head_init", fl.get("head_init", "random"), HEAD_INITS)
    number("fl.ridge_lambda", fl.get("ridge_lambda", 1e-3), 0, low_open=True)
    number("fl.ridge_scale", fl.get("ridge_scale", 10.0), 0, low_open=True)
    faults = fl.get("faults") or []
    if not isinstance(faults, list):
        raise ConfigError(f"fl.faults: {faults!r} is not a list of {{round, client, kind}}")
    for i, f in enumerate(faults):
        key = f"fl.faults[{i}]"
        f = mapping(key, f)
        number(f"{key}.round", f.get("round"), 1, integer=True)
        number(f"{key}.client", f.get("client"), 0, fl["num_clients"] - 1, integer=True)
        choice(f"{key}.kind", f.get("kind", "raise"), FAULT_KINDS)
    return k


def probe_optimizer(cls: type, params: list, kwargs: dict[str, Any]) -> None:
    """Run a `torch.optim.Optimizer` subclass's own argument checks (`lr < 0`, betas, `nesterov`
    without momentum...) on `params`, stopping short of `torch.optim.Optimizer.__init__`, whose
    first call imports `torch._dynamo` (2.5 s on 2 cores; the driver builds no optimizer
    otherwise). A stand-in base after `cls` in the method order receives `cls`'s
    `super().__init__(params, defaults)` and keeps what the base would, so later checks run.
    """
    import torch

    class _Base(torch.optim.Optimizer):
        def __init__(self, params, defaults):  # noqa: D107 - no super(): that is the point
            self.defaults = defaults
            self.state = {}
            self.param_groups = [{"params": list(params), **defaults}]

    type(f"_Probe{cls.__name__}", (cls, _Base), {})(params, **kwargs)


def check_optimizer(opt: Any, key: str) -> None:
    """An optimizer config `{_target_, _partial_: true, lr, ...}`: known arguments of the right
    type, and values the optimizer accepts (its class's own checks, `probe_optimizer`; a factory
    function is built on a dummy parameter and takes one step)."""
    import torch
    from hydra.utils import instantiate

    opt = mapping(key, opt)
    target = opt.get("_target_")
    fn = import_target(f"{key}._target_", target)
    if opt.get("_partial_") is not True:
        raise ConfigError(
            f"{key}._partial_: must be true (the optimizer is built later, on the parameters "
            "that train)"
        )
    kwargs = {k: v for k, v in opt.items() if not k.startswith("_")}
    params = _signature(fn)
    if params is not None and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    ):
        for k in kwargs:
            if k not in params or k == "params":
                takes = sorted(set(params) - {"params", "self"})
                raise ConfigError(f"{key}.{k}: not an argument of {target}; it takes {takes} "
                                  f"(drop it with ~{key}.{k})")
    like_defaults(key, str(target), params or {}, kwargs)
    param = torch.nn.Parameter(torch.zeros(2))
    try:
        if isinstance(fn, type) and issubclass(fn, torch.optim.Optimizer):
            probe_optimizer(fn, [param], kwargs)
        else:  # a factory function: build what it returns and take one step
            optimizer = instantiate(opt)([param])
            param.grad = torch.ones_like(param)
            optimizer.step()
    except Exception as exc:  # noqa: BLE001 - whatever the optimizer rejects is the user's value
        raise ConfigError(f"{key}: {target} rejects {kwargs}: {first_line(exc)}") from None


def check_client(client: Any) -> None:
    """Local training: epochs, batch size, optimizer, augmentation flag, lr schedule."""
    from fedray.fl.train import ROUND_SCHEDULES

    client = mapping("client", client)
    number("client.epochs", client.get("epochs"), 1, integer=True)
    number("client.batch_size", client.get("batch_size"), 1, integer=True)
    if "augment" in client:
        boolean("client.augment", client["augment"])
    choice("client.lr_schedule", client.get("lr_schedule", "constant"), ROUND_SCHEDULES)
    check_optimizer(client.get("optimizer"), "client.optimizer")


def _dummy_classes(cfg: dict[str, Any]) -> int:
    n = classes_known(cfg["data"]) or cfg["data"].get("num_classes")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 2 else 2


def check_model(cfg: dict[str, Any]) -> None:
    """Build the model (without the pretraining it may name) and check what the run asks of it:
    the trainable set, feature caching, the head init, one dummy image through it."""
    import numpy as np
    import torch

    from fedray.fl.head_init import check_head_init
    from fedray.fl.train import extract_features, predict_logits
    from fedray.models import build_model, frozen_prefix, trainable_names

    model_cfg = mapping("model", cfg["model"])
    import_target("model._target_", model_cfg.get("_target_"))
    pretrained = model_cfg.get("pretrained")
    if pretrained is not None and pretrained == (cfg.get("pretrain") or {}).get("name"):
        model_cfg["pretrained"] = None  # the pretraining stage makes it; checked with that stage
    elif pretrained is not None and not isinstance(pretrained, str):
        raise ConfigError(f"model.pretrained: {pretrained!r} is not a weights path (or null)")
    model = build_model(model_cfg, _dummy_classes(cfg))
    fl = cfg["fl"]
    trainable = trainable_names(model, fl["trainable"])
    cached = frozen_prefix(model, trainable) if fl.get("cache_features", True) else 0
    if cfg["client"].get("augment") and cached:
        raise ConfigError(
            "client.augment: true augments images, but fl.cache_features=true trains on the "
            "frozen backbone's cached features: set client.augment=false or "
            "fl.cache_features=false"
        )
    check_head_init(fl, model, trainable, cached)
    from fedray.fl.local import local_names
    from fedray.fl.train import travel_names

    local_names(model, travel_names(model, trainable), fl.get("local"))
    from fedray.tasks import build_task

    task = build_task(cfg.get("task"))
    task.check()  # the task's own files (a distillation teacher), before anything starts
    if task.needs_images and cached:
        raise ConfigError(
            f"task={task.name} reads the images in training (a teacher's outputs on them), but "
            "fl.cache_features=true trains on cached backbone features: set "
            "fl.cache_features=false"
        )
    size = cfg["data"].get("image_size")
    if not isinstance(size, int) or isinstance(size, bool):
        return  # the dataset decides the image size: checked when it is built
    images = np.zeros((2, size, size, 3), np.uint8)
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            if cached:  # also rejects view keys on a partly frozen backbone (ConfigError)
                feats = extract_features(model, images, upto=cached)
                outputs = predict_logits(model, feats, cached=cached)
            else:
                outputs = predict_logits(model, images)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the shapes of this model and these images
        raise ConfigError(
            f"model: a {size} x {size} image (data.image_size) does not go through "
            f"{model_cfg['_target_']}: {first_line(exc)}"
        ) from None
    task.check_outputs(outputs, images, classes_known(cfg["data"]), model_cfg["_target_"])


def check_partition(partition: Any, num_classes: int | None = None,
                    num_clients: Any = None) -> None:
    """The partitioner's keys are its arguments; its usual knobs are in range; with the number
    of classes known from the config, `classes_per_client` can deal them all (checked before
    the data is built)."""
    partition = mapping("partition", partition)
    target = partition.get("_target_")
    fn = import_target("partition._target_", target)
    kwargs = {k: v for k, v in partition.items() if k not in ("_target_", "name")}
    params = _signature(fn)
    if params is not None:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for k in kwargs:
            if (k not in params and not takes_any) or k in PARTITION_GIVEN:
                takes = sorted(set(params) - set(PARTITION_GIVEN))
                raise ConfigError(f"partition.{k}: not an argument of {target}; it takes {takes} "
                                  f"(drop it with ~partition.{k})")
        for k, p in params.items():
            required = p.default is inspect.Parameter.empty and p.kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
            if required and k not in kwargs and k not in PARTITION_GIVEN:
                raise ConfigError(f"partition.{k}: required by {target} (partition.{k}=...)")
        like_defaults("partition", str(target), params, kwargs)
    # the ready-made partitioners' knobs (fedray.data.partition)
    if "alpha" in kwargs:
        number("partition.alpha", kwargs["alpha"], 0, low_open=True)
        if math.isinf(kwargs["alpha"]):
            raise ConfigError("partition.alpha: inf is not a finite number > 0")
    if "classes_per_client" in kwargs:
        k = kwargs["classes_per_client"]
        number("partition.classes_per_client", k, 1, integer=True)
        if num_classes is not None and k > num_classes:
            raise ConfigError(f"partition.classes_per_client={k}: the data has only "
                              f"{num_classes} classes; choose 1 to {num_classes}")
        if (num_classes is not None and isinstance(num_clients, int)
                and num_clients * k < num_classes):
            need = -(-num_classes // num_clients)
            raise ConfigError(
                f"partition.classes_per_client={k}: {num_clients} clients x {k} classes leave "
                f"some of the {num_classes} classes unused; set it to {need} or more (or more "
                "clients)")
    if "min_size" in kwargs:
        number("partition.min_size", kwargs["min_size"], 0, integer=True)
    if "max_retries" in kwargs:
        number("partition.max_retries", kwargs["max_retries"], 1, integer=True)


def check_strategy(strategy: Any, per_round: int) -> Any:
    """Build the strategy (its constructor checks its knobs) and aggregate one dummy round;
    returns the rule."""
    import numpy as np

    from fedray.fl.strategies import build_strategy
    from fedray.fl.types import ClientResult

    strategy = mapping("strategy", strategy)
    if strategy.get("_target_"):
        import_target("strategy._target_", strategy["_target_"])
    rule = build_strategy(strategy)
    dummy = [ClientResult(i, {"w": np.full(2, float(i), np.float32)}, 1) for i in range(per_round)]
    try:
        rule.aggregate({"w": np.zeros(2, np.float32)}, dummy)
    except (ValueError, ArithmeticError) as exc:
        name = strategy.get("name") or strategy.get("_target_")
        raise ConfigError(
            f"strategy: {name} cannot aggregate the {per_round} client(s) a round samples "
            f"(fl.num_clients, fl.fraction, fl.clients_per_round): {first_line(exc)}"
        ) from None
    return rule


def needs_pretraining(cfg: dict[str, Any]) -> bool:
    """True when the run trains (or loads) the pretrain stage's weights."""
    pretrain = cfg.get("pretrain") or {}
    name = pretrain.get("name")
    model = cfg.get("model") or {}
    return cfg.get("stage") == "pretrain" or (
        name is not None and isinstance(model, Mapping) and model.get("pretrained") == name
    )


def check_pretrain(cfg: dict[str, Any]) -> None:
    """The pretrain group's `_target_`, and its own check (`fn.fedray_check(cfg)`) if it has one."""
    pretrain = mapping("pretrain", cfg.get("pretrain") or {})
    if not pretrain.get("_target_"):
        raise ConfigError(
            "pretrain._target_: missing; the run uses the pretrain stage (stage=pretrain or "
            "model.pretrained=<pretrain.name>): choose a pretrain group (pretrain=public)"
        )
    _own_check("pretrain._target_", pretrain["_target_"], cfg)


def _own_check(key: str, target: str, cfg: dict[str, Any]) -> None:
    """Import `target` and run the check it carries as `fn.fedray_check(cfg)`, if any; a value
    of a kind that check did not expect (`int('abc')`) is the user's too, named by its group."""
    check = getattr(import_target(key, target), "fedray_check", None)
    try:
        if check is not None:
            check(cfg)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key.partition('.')[0]}: a value of the wrong kind: "
                          f"{first_line(exc)}") from None


def validate(cfg: dict[str, Any]) -> None:
    """Raise ConfigError("<key>: <what is wrong and what is allowed>") for a bad config.

    Cheap and side-effect free: nothing is downloaded, built into the cache or started.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config: {type(cfg).__name__} is not a mapping")
    check_top(cfg)
    check_schema_keys(cfg)  # a typo added with `+` (Hydra adds it even to a typed group)
    check_given_keys(cfg)  # `+model.widht=3`: a key the command line gave that nothing takes
    check_logger(cfg.get("logger"))
    check_ray(cfg.get("ray"))
    check_backend(cfg)
    stage = cfg["stage"]
    if stage in TRAINING_STAGES or cfg.get("data") is not None:
        check_data(cfg.get("data"))
    if stage in TRAINING_STAGES:
        per_round = check_fl(cfg.get("fl"))
        check_client(cfg.get("client"))
        check_model(cfg)
        rule = None  # stage=centralized aggregates nothing
        if stage in ("federated", "isolated"):
            check_partition(cfg.get("partition"), classes_known(cfg.get("data")),
                            (cfg.get("fl") or {}).get("num_clients"))
            by = ((cfg.get("task") or {}).get("partition_by")) or "label"
            if (cfg.get("partition") or {}).get("_target_", "").endswith(
                    "partition_by_group") and by == "label":
                raise ConfigError(
                    "partition=by_site deals each client whole groups (sites, devices), but "
                    "task.partition_by=label hands it class labels: set task.partition_by=group "
                    "(the data's {split}_groups.npy), or partition=pathological for classes"
                )
            rule = check_strategy(cfg.get("strategy"), per_round)
        from fedray.privacy import check_privacy  # refused outside stage=federated

        check_privacy(cfg, per_round, classes_known(cfg.get("data")), rule)
        if stage == "federated":
            from fedray.fl.local import check_local

            check_local(cfg, hasattr(rule, "bind"))
    if stage != "synth" and needs_pretraining(cfg):
        check_pretrain(cfg)
    if stage == "distill":
        from fedray.distill.stage import check_stage

        check_stage(cfg)
    from fedray.run import STAGES, stage_target

    if stage not in STAGES:  # a plug-in stage: the check its callable carries
        _own_check(f"{stage}._target_", str(stage_target(cfg)), cfg)
