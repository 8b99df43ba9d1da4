"""Typed schema for the stable config groups, so Hydra rejects `fl.rounds=foo` at compose time.

Groups with variants (data, model, strategy, partition) stay free-form here; their builders
validate them and name the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

# the checkout (editable install); a plain `pip install .` falls back to the working directory
ROOT = Path(__file__).resolve().parents[1]
if not (ROOT / "conf").is_dir():
    ROOT = Path.cwd()
CONF_DIR = ROOT / "conf"


class ConfigError(ValueError):
    """A config value that composes but makes no sense; the message names the key."""


@dataclass
class SecAggConfig:
    clip: float = 2.0  # each update coordinate is clipped to [-clip, clip] before encoding
    quant_bits: int = 16  # fixed-point levels 2^quant_bits over [-clip, clip]
    mod_bits: int = 32  # the masking ring Z/2^mod_bits (32 | 64); sum of weights x levels must fit
    threshold: float = 0.5  # shares that rebuild a client's seeds, as a share of its neighbours
    degree: int | None = None  # secagg+ neighbours per client (even); None: about 2 log2(n)
    drop_after_mask: float = 0.0  # simulation: share of senders that vanish before unmasking


@dataclass
class FLConfig:
    rounds: int = 10
    num_clients: int = 5
    # clients sampled per round: clients_per_round if set, else round(fraction * num_clients)
    fraction: float = 1.0
    clients_per_round: int | None = None
    trainable: str = "classifier"  # all | classifier | a regex over parameter names
    # entries each client keeps and never uploads: norm (FedBN) | a regex | None (fl/local.py)
    local: str | None = None
    cache_features: bool = True  # frozen backbone: clients cache its features once
    # fp32 | bf16 | auto (bf16 where the CPU/GPU has it natively): the cached features' pass
    cache_precision: str = "auto"
    # random | ridge: the head solved in closed form from the clients' feature sums before round 1
    head_init: str = "random"
    ridge_lambda: float = 1e-3  # ridge penalty relative to the mean feature energy
    ridge_scale: float = 10.0  # logit scale of the solved head (ridge scores are in [0, 1])
    quorum: float = 0.5  # fraction of the sampled clients that must report for a round to count
    round_timeout_s: float | None = None
    eval_every: int = 1
    checkpoint: bool = True
    # robustness tests/demos: [{round (1-based), client, kind: raise|crash|nan|hang}]
    faults: list[Any] = field(default_factory=list)
    # secure aggregation (fedray/privacy/secagg.py): none | secagg | secagg+
    secure_agg: str = "none"
    secagg: SecAggConfig = field(default_factory=SecAggConfig)


@dataclass
class ClientConfig:
    epochs: int = 1
    batch_size: int = 32
    optimizer: Any = MISSING  # {_target_: torch.optim.SGD, _partial_: true, lr: ...}
    augment: bool = False  # random turns and flips of the images (not with cached features)
    lr_schedule: str = "constant"  # constant | cosine: the client lr across rounds


@dataclass
class RayConfig:
    backend: str = "ray"  # ray: client actors; inprocess: clients fit in turn in the driver
    address: str | None = None  # None: start a local Ray; "auto" or an address: join a cluster
    num_cpus: int | None = None  # local Ray only; None = all cores
    num_gpus: int | None = None
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    max_actors: int | None = None  # None: as many as the cluster's CPUs allow
    include_dashboard: bool = False
    shard_cache: int = 8  # client shards an actor keeps in memory between rounds
    batch_clients: bool = False  # one actor call per actor and round, for all its clients
    keep_actors: bool = False  # joined cluster: client actors stay warm for the next run
    worker_nice: int = 0  # local Ray: workers this much nicer than the driver (Ray's default: 15)


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "offline"
    project: str = "fedray"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    id: str | None = None  # null: derived from the run directory (stable across resume/retry)


@dataclass
class LoggerConfig:
    jsonl: bool = True
    plots: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class FedrayConfig:
    data: Any = MISSING
    partition: Any = MISSING
    model: Any = MISSING
    strategy: Any = MISSING
    pretrain: Any = MISSING
    task: Any = None  # loss, targets and metrics (conf/task/); None: classification
    client: ClientConfig = field(default_factory=ClientConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    name: str = "default"
    stage: str = "federated"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    resume: Any = False  # false | true (latest matching run) | path to a run directory
    run_dir: str | None = None
    sweep: Any = None
    dp: Any = None  # differential privacy (conf/dp/): none | central | local
    attack: Any = None  # malicious clients (conf/attack/): none | label_flip | sign_flip | ...
    detect: Any = None  # stage=detect: the detector group (+detect=NAME), its _target_ runs it
    distill: Any = None  # stage=distill's knobs (conf/distill/)
    retrieval: Any = None  # stage=retrieval (conf/retrieval/): its _target_ runs it


# the typed groups by their path: Hydra's `+fl.key=...` adds a key even to these, so the config
# check refuses any key they do not declare (check_schema_keys)
SCHEMA = {
    "": FedrayConfig, "fl": FLConfig, "fl.secagg": SecAggConfig, "client": ClientConfig,
    "ray": RayConfig, "logger": LoggerConfig, "logger.wandb": WandbConfig,
}  # fmt: skip


def check_schema_keys(cfg: dict[str, Any]) -> None:
    """ConfigError naming the first key a typed group does not declare (a typo added with `+`,
    which Hydra accepts), with the declared keys it is closest to. At the top level a key named
    like the stage is a plug-in stage's own group; keys starting with `_` are fedray's own."""
    from dataclasses import fields

    for path, schema in SCHEMA.items():
        node: Any = cfg
        for part in filter(None, path.split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        known = [f.name for f in fields(schema)]
        if not path and isinstance(cfg.get(str(cfg.get("stage"))), dict):
            known.append(str(cfg["stage"]))  # stage=NAME +NAME=...: a plug-in stage's group
        refuse_unknown(path, [k for k in node if not str(k).startswith("_")], known)


def refuse_unknown(path: str, keys: Any, known: Any, where: str = "") -> None:
    """ConfigError naming the first of `keys` (under `path`) that is not in `known`, with the
    known keys it is closest to (or all of them); `where` says whose keys they are."""
    import difflib

    known = sorted({str(k) for k in known})
    extra = sorted(str(k) for k in keys if str(k) not in known)
    if not extra:
        return
    key = f"{path}.{extra[0]}" if path else extra[0]
    near = difflib.get_close_matches(extra[0], known, n=3, cutoff=0.6)
    hint = (f"did you mean {' or '.join(f'{path}.{k}' if path else k for k in near)}?"
            if near else f"{path or 'the top level'} has {', '.join(known)}")
    raise ConfigError(f"{key}: no such key{where}; {hint}")


def command_line_keys() -> list[str]:
    """The keys this run's command line sets (Hydra's overrides: `model.width=8`, `+data.x=1`);
    none outside launch.py (a sweep trial, a test composing its own config)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    except (ImportError, ValueError):
        return []
    return [str(o).lstrip("+~").split("=", 1)[0] for o in overrides]


def check_given_keys(cfg: dict[str, Any]) -> None:
    """ConfigError for a model or data key set on the command line that the group's `_target_`
    does not take (`+model.widht=3`), with its nearest argument. The keys of a group's own YAML
    that a swapped-in `_target_` does not take are left out with a warning when it is built."""
    import difflib
    import inspect

    from fedray.data.materialize import FEDRAY_KEYS, SHARED_KEYS
    from fedray.models import GENERIC_KEYS, target_params
    from fedray.targets import import_target

    given = command_line_keys()
    for group, skip in (("model", GENERIC_KEYS), ("data", FEDRAY_KEYS + SHARED_KEYS)):
        node = cfg.get(group)
        keys = [k.split(".")[1] for k in given if k.startswith(f"{group}.")]
        if not isinstance(node, dict) or not keys or not node.get("_target_"):
            continue
        target = str(node["_target_"])
        fn = import_target(f"{group}._target_", target)
        if group == "data" and getattr(fn, "fedray_dataset_builder", False):
            # a builder reads its keys from the whole data config: no signature, but it may list
            # them (an experiment's keys for another dataset stay ignored: only these are checked)
            if getattr(fn, "fedray_keys", None) is not None:
                refuse_unknown("data", keys, [*fn.fedray_keys, *skip], f" for {target}")
            continue
        params = target_params(target)
        if not params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for key in keys:
            if key in node and key not in params and key not in skip:
                near = difflib.get_close_matches(key, list(params), n=1, cutoff=0.6)
                hint = (f"did you mean {group}.{near[0]}?" if near
                        else f"it takes {', '.join(sorted(params))}")
                raise ConfigError(f"{group}.{key}: {target} takes no {key}; {hint}")


def register_configs() -> None:
    """Register the schema that conf/config.yaml lists first in its defaults."""
    ConfigStore.instance().store(name="fedray_schema", node=FedrayConfig)


register_configs()


def compose_plain(overrides: list[str]) -> dict[str, Any]:
    """conf/config.yaml composed with `overrides` and resolved to a plain dict, as launch.py
    does (less `run_dir`, which Hydra's run sets): for tests, benchmarks and notebooks."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
