"""Any torchvision dataset class whose files are already on disk, e.g. CIFAR10 under data.root.

fedray never downloads: the class is always built with `download=False`, so a missing or empty
root is a DatasetError that says where the files go. The train split is `train=True` (or
`split=data.train_split`), the val split `train=False` (or `split=data.val_split`); a class with
neither gets a seeded, stratified val split of `data.val_fraction`. The images are written once
into fedray's dataset-directory format (`fedray.data.materialize`), cached under a key that
includes a fingerprint of the files under the root.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np

from fedray.data.datasets import DatasetError, DatasetInfo, cached_build, load_info
from fedray.data.image_folder import fingerprint, stratified_val
from fedray.data.materialize import to_arrays, write_returned
from fedray.data.sources import dataset_builder

VERSION = 1  # bump when the conversion changes: it is part of the cache key


def _dataset_class(name: Any) -> type:
    from torchvision import datasets as tvd

    cls = getattr(tvd, str(name), None)
    if not inspect.isclass(cls):
        import difflib

        known = sorted(n for n in dir(tvd) if inspect.isclass(getattr(tvd, n)) and n[0].isupper()
                       and n not in ("DatasetFolder", "ImageFolder", "VisionDataset"))
        near = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
        hint = (f"did you mean {' or '.join(near)}?" if near
                else f"e.g. CIFAR10, MNIST, FashionMNIST, SVHN ({len(known)} in torchvision)")
        raise DatasetError(f"data.dataset={name!r} is not a torchvision dataset; {hint}")
    return cls


def _where_to_put(cls: type, root: Path) -> str:
    """Advice naming the folder torchvision expects and how to fetch it once elsewhere."""
    folder = getattr(cls, "base_folder", None)
    layout = f" (torchvision's layout: {root / folder}/...)" if isinstance(folder, str) else ""
    return (
        f"put the {cls.__name__} files under data.root={str(root)!r}{layout}; fedray never "
        f"downloads (download=False): fetch them once where there is internet, e.g. "
        f"torchvision.datasets.{cls.__name__}(root, download=True), and copy the folder here"
    )


@dataset_builder
def torchvision_dataset(cfg: dict[str, Any], seed: int, cache_dir: Path) -> DatasetInfo:
    """data=torchvision: `torchvision.datasets.<data.dataset>` from data.root, cached."""
    cls, root = _class_and_root(cfg)
    files = [p for p in root.rglob("*") if p.is_file()]
    if not files:  # only empty folders under it
        raise DatasetError(f"data.root={cfg['root']!r} is empty: {_where_to_put(cls, root)}")
    params = inspect.signature(cls).parameters
    carve = "train" not in params and "split" not in params
    key = {
        **{k: v for k, v in cfg.items() if k != "root"},
        "root": str(root),
        "files": fingerprint(root, files),
        "version": VERSION,
        **({"seed": seed} if carve else {}),
    }

    def build(tmp: Path) -> None:
        splits = _open_splits(cls, root, cfg, params)
        if carve:
            whole = to_arrays(splits["train"], cfg.get("image_size"), f"{cls.__name__}")
            val = stratified_val(whole[1], float(cfg.get("val_fraction", 0.2)), seed)
            train = np.setdiff1d(np.arange(len(whole[1])), val)
            names = getattr(splits["train"], "classes", None)
            splits = {
                "train": (whole[0][train], whole[1][train]),
                "val": (whole[0][val], whole[1][val]),
                **({"classes": names} if names is not None else {}),
            }
        name = str(cfg.get("name") or cls.__name__)
        write_returned(
            tmp, splits, name, cfg.get("image_size"), source=f"data.dataset={cls.__name__}"
        )

    return load_info(cached_build(cache_dir, "torchvision", key, build))


def _open_splits(cls: type, root: Path, cfg: dict[str, Any], params: Any) -> dict[str, Any]:
    """The class's train and val datasets (just `train` when it has no split argument)."""
    options = dict(cfg.get("options") or {})
    if "download" in params:
        options["download"] = False
    if "train" in params:
        wanted = {"train": {"train": True}, "val": {"train": False}}
    elif "split" in params:
        wanted = {
            "train": {"split": str(cfg.get("train_split", "train"))},
            "val": {"split": str(cfg.get("val_split", "test"))},
        }
    else:
        wanted = {"train": {}}
    out = {}
    for split, kwargs in wanted.items():
        try:
            out[split] = cls(str(root), **kwargs, **options)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            raise DatasetError(
                f"torchvision {cls.__name__} ({split}) found no usable files: {exc}. "
                f"{_where_to_put(cls, root)}"
            ) from None
        except (TypeError, ValueError) as exc:
            raise DatasetError(
                f"data.options / data.{split}_split for {cls.__name__}: {exc}"
            ) from None
    return out


def _class_and_root(cfg: dict[str, Any]) -> tuple[type, Path]:
    """data.dataset's class and data.root, a folder with something in it (DatasetError saying
    where the files go, when not)."""
    cls = _dataset_class(cfg.get("dataset"))
    raw = cfg.get("root")
    if raw in (None, "", "???"):
        raise DatasetError(f"data.root is required: {_where_to_put(cls, Path('/path/to/data'))}")
    root = Path(str(raw)).expanduser().resolve()
    if not root.is_dir() or next(root.iterdir(), None) is None:
        state = "is empty" if root.is_dir() else "does not exist"
        raise DatasetError(f"data.root={str(raw)!r} {state}: {_where_to_put(cls, root)}")
    return cls, root


def check_torchvision(cfg: dict[str, Any]) -> None:
    """The config check's part: the dataset class exists and data.root holds files (with where
    they go when it does not), before anything starts."""
    from fedray.config import ConfigError

    try:
        _class_and_root(cfg)
    except DatasetError as exc:
        raise ConfigError(str(exc)) from None


torchvision_dataset.fedray_check = check_torchvision  # type: ignore[attr-defined]
torchvision_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "dataset", "root", "image_size", "train_split", "val_split", "val_fraction", "options")
