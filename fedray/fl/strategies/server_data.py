"""Data that only the server holds, for the rules that compute on the server (FedDF, FLTrust).

``server_dataset(cfg, data, seed, key)`` builds ``data`` (a data config; None: the experiment's
own dataset config) under ``seed`` and refuses it when it resolves to the clients' own dataset
or holds any image of their train split (compared by content: a hash of each image's bytes).
Generated data re-generated under another seed is other images of the same kind (for the
synthetic pills, other photos of the same catalog pills), never a client's photos; imported data
(an image folder, a custom callable) re-built under another seed is the same images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
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
    shared = len(_image_hashes(info.root, info.splits) & _image_hashes(private.root, ["train"]))
    if shared and data is None:
        name = private_cfg.get("name") or private.name
        raise ConfigError(
            f"strategy.{key}=null re-builds data={name} under strategy.{key}_seed, and {shared} of "
            "its images are in the clients' train split (imported data is the same images under "
            f"any seed): set strategy.{key} to a public data config"
        )
    if shared:
        raise ConfigError(
            f"strategy.{key} shares {shared} image(s) with the clients' train split: the server's "
            f"data must never hold private images; set strategy.{key} to a public data config"
        )
    return info


def _image_hashes(root: str, splits: Iterable[str]) -> set[bytes]:
    """A digest of each image's bytes in these splits of a dataset dir (read memory-mapped)."""
    from fedray.data.datasets import load_images

    return {
        hashlib.blake2b(image.tobytes(), digest_size=16).digest()
        for split in splits
        for image in load_images(root, split)
    }
