"""Data that only the server holds, for the rules that compute on the server (FedDF, FLTrust).

``server_dataset(cfg, data, seed, key)`` builds ``data`` (a data config; None: the experiment's
own dataset config) under ``seed`` and refuses it when it resolves to the clients' own dataset:
generated data re-generated under another seed is other images of the same kind (for the
synthetic pills, other photos of the same catalog pills), never a client's photos.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedray.config import ConfigError


def check_data_knob(key: str, value: Any) -> dict[str, Any] | None:
    """``strategy.<key>``: null or a data config (a mapping with ``_target_``)."""
    if value is None:
        return None
    if not (isinstance(value, Mapping) and value.get("_target_")):
        raise ConfigError(f"strategy.{key} must be null or a data config, got {value!r}")
    from fedray.targets import import_target

    import_target(f"strategy.{key}._target_", str(value["_target_"]))  # named as it is given
    return dict(value)


def server_dataset(cfg: dict[str, Any], data: dict[str, Any] | None, seed: int, key: str):
    """The DatasetInfo of the server's own data (``strategy.<key>``), built (or cached)."""
    from fedray.data.sources import build_dataset

    private_cfg = dict(cfg["data"])
    server_cfg = dict(data) if data is not None else dict(private_cfg)
    server_cfg.setdefault("cache_dir", private_cfg.get("cache_dir"))
    if "workers" in server_cfg:
        # built in this process: the client actors, already started, may hold every CPU of the
        # cluster, and a build's Ray tasks would wait for them forever (a generated set's bytes
        # and cache key never depend on its workers)
        server_cfg["workers"] = 1
    private = build_dataset(private_cfg, int(cfg["seed"]))
    info = build_dataset(server_cfg, seed)
    if info.root == private.root:
        raise ConfigError(
            f"strategy.{key} resolves to the clients' own dataset: the server's data must never "
            f"hold private images (set strategy.{key} to a public data config, or another "
            f"strategy.{key}_seed for generated data)"
        )
    if info.image_size != private.image_size:
        raise ConfigError(
            f"strategy.{key} has image_size {info.image_size}, the clients' data "
            f"{private.image_size}"
        )
    return info
