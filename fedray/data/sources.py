"""One door for every dataset: `data._target_` in, a built (cached) dataset directory out.

Two kinds of callable can stand behind `data._target_`:

- a *dataset builder* (marked with `@dataset_builder`): `fn(cfg, seed, cache_dir) -> DatasetInfo`;
  it writes the dataset-directory format of `fedray.data.datasets` into the cache itself (the
  toy set, the synthetic pills, the pill importers);
- any other callable: called with the config's keys as keyword arguments; what it returns is
  written into the cache by fedray (see `fedray.data.materialize`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedray.config import ConfigError
from fedray.data.datasets import DatasetInfo, default_cache_dir

# data keys that are fedray's, never the builder's: where the cache is, the public counterpart a
# pretraining stage may use, and the callable that describes a build (stage=synth)
NOT_BUILDER_KEYS = ("_target_", "cache_dir", "public_set", "describe")

Builder = Callable[[dict[str, Any], int, Path], DatasetInfo]


def dataset_builder(fn: Builder) -> Builder:
    """Mark `fn(cfg, seed, cache_dir) -> DatasetInfo` as a builder that caches its own output."""
    fn.fedray_dataset_builder = True  # type: ignore[attr-defined]
    return fn


def cache_dir_for(data_cfg: dict[str, Any]) -> Path:
    """The cache directory chosen by `data.cache_dir`, else the per-user default."""
    return Path(data_cfg.get("cache_dir") or default_cache_dir()).expanduser()


def build_dataset(data_cfg: dict[str, Any], seed: int) -> DatasetInfo:
    """Build (or find in the cache) the dataset that `data_cfg` describes."""
    from fedray.targets import import_target

    target = data_cfg.get("_target_")
    if not target:
        raise ConfigError(
            "data._target_ is missing: name the callable that builds the dataset "
            "(e.g. data=toy, data=synthetic, data=image_folder)"
        )
    fn = import_target("data._target_", str(target))
    cache = cache_dir_for(data_cfg)
    if getattr(fn, "fedray_dataset_builder", False):
        cfg = {k: v for k, v in data_cfg.items() if k not in NOT_BUILDER_KEYS}
        return fn(cfg, seed, cache)
    from fedray.data.materialize import materialize

    return materialize(fn, data_cfg, seed, cache)


def classes_known(data: Any) -> int | None:
    """How many classes the data will have, when the config says so before it is built: the key
    a builder names as its class count (`fedray_classes`: toy's `num_classes`, the synthetic
    pills' `num_pills`), or the `num_classes` a plain dataset callable takes. Any other builder
    (an image folder) counts its classes when built, whatever `data.num_classes` says."""
    from fedray.models import target_params
    from fedray.targets import import_target

    if not isinstance(data, Mapping) or not data.get("_target_"):
        return None
    try:
        fn = import_target("data._target_", str(data["_target_"]))
    except ConfigError:
        return None
    if getattr(fn, "fedray_dataset_builder", False):
        key = getattr(fn, "fedray_classes", None)
    else:
        key = "num_classes" if "num_classes" in target_params(data["_target_"]) else None
    n = data.get(key) if key else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None
