"""One door for every dataset source: config in, a built (cached) dataset directory out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedray.config import ConfigError
from fedray.data.datasets import DatasetInfo, cached_build, default_cache_dir, load_info


def cache_dir_for(data_cfg: dict[str, Any]) -> Path:
    """The cache directory chosen by `data.cache_dir`, else the per-user default."""
    return Path(data_cfg.get("cache_dir") or default_cache_dir()).expanduser()


def build_dataset(data_cfg: dict[str, Any], seed: int) -> DatasetInfo:
    """Build (or find in the cache) the dataset that `data_cfg` describes."""
    name = data_cfg.get("name")
    cache = cache_dir_for(data_cfg)
    # public_set only describes this source's public counterpart (for pretraining)
    data_cfg = {k: v for k, v in data_cfg.items() if k != "public_set"}
    key = {k: v for k, v in data_cfg.items() if k != "cache_dir"}
    if name == "toy":
        from fedray.data.toy import VERSION as TOY_VERSION
        from fedray.data.toy import build_toy

        root = cached_build(
            cache,
            "toy",
            {**key, "seed": seed, "version": TOY_VERSION},
            lambda d: build_toy(d, data_cfg, seed),
        )
        return load_info(root)
    if name == "yolo_import":
        from fedray.data.importers import import_yolo

        return import_yolo({**data_cfg, "seed": data_cfg.get("seed", seed)}, cache)
    if name == "epillid":
        from fedray.data.importers import import_epillid

        return import_epillid({**data_cfg, "seed": data_cfg.get("seed", seed)}, cache)
    if name == "synthetic":
        from fedray.data.synth import build_synthetic

        return build_synthetic(data_cfg, seed, cache)
    raise ConfigError(
        f"data.name={name!r} is not a known dataset (toy, synthetic, yolo_import, epillid)"
    )
