"""A user's dataset callable -> a cached fedray dataset directory.

`data._target_` may name any function (or class) that returns the data itself; fedray calls it
with the data config's keys as keyword arguments (plus `seed` when it takes one) and writes what
it returns into the cache, once per (config, seed, callable, source file version). It may return

- `{"train": ds, "val": ds}` (optionally with `"classes": [names]`), or a `(train, val)` tuple;
- where each `ds` is a pair `(images, labels)`: uint8 images (N, H, W, 3) (or (N, H, W) grey)
  and integer labels (N,); or any torch `Dataset` (`len` + indexing) of `(image, label)` items,
  the image a PIL image, a uint8 (H, W, 3) array, or a (3, H, W) float tensor in [0, 1] (what
  `ToTensor()` gives; un-normalised: fedray normalises itself). 16-bit PIL images (mode I;16*)
  keep their top 8 bits (as OpenCV reads 16-bit files); mode F must lie in [0, 1]; mode I
  (32-bit integer, no fixed range) is refused: scale it yourself.

Images are cut to a centred square and resized to `data.image_size` when it is set (needed when
the images are not all one square size). Class names are the dataset's `classes` when it has
them, else "0" .. "K-1". A val dataset with `classes` of its own (an ImageFolder lacking a class)
has its labels mapped by class name onto the train's; a val class absent from train is an error.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedray.data.datasets import (
    DatasetError,
    DatasetInfo,
    cached_build,
    load_info,
    write_meta,
    write_split,
)

log = logging.getLogger("fedray")

VERSION = 1  # bump when the conversion changes: it is part of the cache key
# data keys fedray reads itself: handed to the callable only when it takes them (no warning)
SHARED_KEYS = ("name", "image_size")
# data keys that never reach the callable (fedray's own, as in fedray.data.sources)
FEDRAY_KEYS = ("_target_", "cache_dir", "public_set", "describe")


def materialize(
    fn: Callable[..., Any], data_cfg: dict[str, Any], seed: int, cache_dir: str | Path
) -> DatasetInfo:
    """Call the user's dataset callable `fn` (once per cache key) and cache what it returns."""
    from fedray.config import command_line_keys
    from fedray.models import instantiate_target

    qualname = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    cfg = {k: v for k, v in data_cfg.items() if k not in FEDRAY_KEYS[1:]}
    cfg.setdefault("_target_", qualname)
    params = _parameters(fn)
    skip = tuple(k for k in SHARED_KEYS if params is not None and k not in params)
    key = {
        "data": {k: v for k, v in data_cfg.items() if k != "cache_dir"},
        "seed": int(seed),
        "callable": qualname,
        "source_mtime": _source_mtime(fn),
        "version": VERSION,
    }
    size = data_cfg.get("image_size")
    name = str(data_cfg.get("name") or getattr(fn, "__name__", "custom"))
    given = command_line_keys()
    if "data._target_" in given and "data.name" not in given:  # the group's name, not the data's
        name = str(getattr(fn, "__name__", "custom"))

    def build(root: Path) -> None:
        returned = instantiate_target(cfg, "data", skip=skip, drop_unknown=True, seed=int(seed))
        write_returned(root, returned, name, size, source=str(cfg["_target_"]))

    return load_info(cached_build(cache_dir, "custom", key, build))


def _parameters(fn: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The callable's parameters, or None when it takes **kwargs or has no signature."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return dict(params)


def _source_mtime(fn: Callable[..., Any]) -> int | None:
    """mtime (ns) of the file that defines `fn`: an edited dataset function gets a new cache key."""
    try:
        path = inspect.getsourcefile(inspect.unwrap(fn))
        return os.stat(path).st_mtime_ns if path else None
    except (TypeError, OSError):
        return None


def write_returned(
    root: str | Path, returned: Any, name: str, image_size: int | None, source: str = "data"
) -> None:
    """Write what a dataset callable returned (see the module doc) as a dataset directory."""
    splits, classes = _splits_of(returned, source)
    arrays = {
        split: to_arrays(ds, image_size, f"{source}: {split}") for split, ds in splits.items()
    }
    for split, (images, _) in arrays.items():
        if len(images) == 0:
            raise DatasetError(f"{source}: the {split} split is empty")
    reference = _class_names(splits["train"]) or classes
    for split, (images, labels) in arrays.items():
        names = _class_names(splits[split]) if split != "train" else None
        arrays[split] = (images, _by_name(labels, names, reference, f"{source}: {split}"))
    sizes = {images.shape[1] for images, _ in arrays.values()}
    if len(sizes) != 1:
        raise DatasetError(
            f"{source}: train and val images differ in size ({sorted(sizes)}): set data.image_size"
        )
    top = max(int(labels.max()) for _, labels in arrays.values())
    if classes is None:
        classes = _class_names(splits["train"])
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    classes = [str(c) for c in classes]
    if top >= len(classes):
        raise DatasetError(f"{source}: label {top} but only {len(classes)} class names {classes}")
    if len(classes) < 2:
        raise DatasetError(f"{source}: a classification dataset needs >= 2 classes, got {classes}")
    untrained = sorted(set(np.unique(arrays["train"][1]).tolist()) ^ set(range(len(classes))))
    if untrained:  # the model gets an output for each, scored on val, learnt from nothing
        logging.getLogger("fedray").warning(
            "%s: %d of %d classes have no training image (%s); the model cannot learn them",
            source, len(untrained), len(classes),
            ", ".join(classes[i] for i in untrained[:5]) + (", ..." if len(untrained) > 5 else ""))
    for split, (images, labels) in arrays.items():
        write_split(root, split, images, labels)
    write_meta(root, name, classes, sizes.pop(), {s: len(y) for s, (_, y) in arrays.items()})


def _by_name(
    labels: np.ndarray, names: list[str] | None, reference: Sequence[Any] | None, where: str
) -> np.ndarray:
    """Labels indexing `names` (a val dataset's own classes) re-indexed by name into `reference`."""
    if names is None or reference is None:
        return labels
    reference = [str(c) for c in reference]
    if names == reference or labels.size == 0:
        return labels
    if int(labels.max()) >= len(names):
        raise DatasetError(f"{where}: label {int(labels.max())} but its dataset has "
                           f"{len(names)} classes {names}")
    index = {c: i for i, c in enumerate(reference)}
    missing = [names[i] for i in np.unique(labels) if names[i] not in index]
    if missing:
        raise DatasetError(f"{where}: class {missing[0]!r} is not a train class ({reference})")
    return np.asarray([index[c] for c in names], dtype=np.int64)[labels]


def _splits_of(returned: Any, source: str) -> tuple[dict[str, Any], list[str] | None]:
    """{"train": ds, "val": ds} and the class names, from a dict or a (train, val) tuple."""
    classes = None
    if isinstance(returned, dict):
        missing = [k for k in ("train", "val") if k not in returned]
        if missing:
            raise DatasetError(
                f"{source} returned a dict with keys {sorted(returned)}; it needs 'train' and "
                "'val' (and optionally 'classes')"
            )
        classes = returned.get("classes")
        return {"train": returned["train"], "val": returned["val"]}, classes
    if isinstance(returned, tuple | list) and len(returned) == 2 and not _is_array_pair(returned):
        return {"train": returned[0], "val": returned[1]}, classes
    raise DatasetError(
        f"{source} returned {type(returned).__name__}; return {{'train': ds, 'val': ds}} or "
        "(train, val), each ds a torch Dataset of (image, label) or a pair (images, labels)"
    )


def _is_array_pair(obj: Any) -> bool:
    """True for (images, labels): an (N, H, W[, C]) array and N labels."""
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        return False
    images, labels = obj
    shape = getattr(images, "shape", None)
    return shape is not None and len(shape) in (3, 4) and len(labels) == shape[0]


def _mismatched_pair(obj: Any) -> bool:
    """(images, labels) as a pair of arrays whose lengths differ: a user's slip, not a Dataset."""
    if not isinstance(obj, tuple | list) or len(obj) != 2:
        return False
    shape = getattr(obj[0], "shape", None)
    return shape is not None and len(shape) in (3, 4) and hasattr(obj[1], "__len__")


def _class_names(ds: Any) -> list[str] | None:
    """`ds.classes` (or of the dataset a Subset wraps), if it has them."""
    while ds is not None:
        classes = getattr(ds, "classes", None)
        if classes is not None:
            return [str(c) for c in classes]
        ds = getattr(ds, "dataset", None)  # torch.utils.data.Subset
    return None


def to_arrays(ds: Any, image_size: int | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, S, S, 3) images and int64 labels from a pair of arrays or a torch Dataset."""
    if _is_array_pair(ds):
        images, labels = ds
        shape = getattr(images, "shape", ())
        square = len(shape) == 4 and shape[1] == shape[2] and shape[3] == 3
        if square and getattr(images, "dtype", None) == np.uint8 and image_size in (None, shape[1]):
            labels = [_label(v, where) for v in _numpy(labels)]
            return np.ascontiguousarray(images), _class_ids(labels, where)  # the stored format
        items: Sequence[Any] = [np.asarray(_numpy(images)[i]) for i in range(len(labels))]
        labels = [_label(y, where) for y in _numpy(labels)]
    elif _mismatched_pair(ds):
        images, labels = ds
        raise DatasetError(f"{where}: {len(images)} images but {len(labels)} labels; a pair "
                           "(images, labels) holds one label per image")
    elif hasattr(ds, "__len__") and hasattr(ds, "__getitem__"):
        items, labels = [], []
        for i in range(len(ds)):
            item = ds[i]
            if not isinstance(item, tuple | list) or len(item) < 2:
                raise DatasetError(f"{where}[{i}] is {type(item).__name__}, not (image, label)")
            items.append(item[0])
            labels.append(_label(item[1], where))
    else:
        raise DatasetError(
            f"{where} is {type(ds).__name__}: give a torch Dataset of (image, label) or a pair "
            "(uint8 images (N, H, W, 3), labels (N,))"
        )
    images = [to_uint8_hwc(img, f"{where}[{i}]") for i, img in enumerate(items)]
    if image_size is not None:
        size = int(image_size)
        images = [square_resize(img, size) for img in images]
    elif images:
        shapes = {img.shape for img in images}
        if len(shapes) != 1 or next(iter(shapes))[0] != next(iter(shapes))[1]:
            raise DatasetError(
                f"{where}: images of shapes {sorted(shapes)[:3]}... are not all one square size: "
                "set data.image_size to resize them"
            )
    out = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    return out, _class_ids(labels, where)


def _class_ids(labels: list[int], where: str) -> np.ndarray:
    """int64 labels, checked to be class ids >= 0."""
    y = np.asarray(labels, dtype=np.int64)
    if y.size and y.min() < 0:
        raise DatasetError(f"{where}: labels must be class ids >= 0, found {y.min()}")
    return y


def _numpy(x: Any) -> np.ndarray:
    """A torch tensor or array-like as a NumPy array."""
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _label(y: Any, where: str) -> int:
    value = _numpy(y)
    if value.size != 1 or not np.issubdtype(value.dtype, np.integer):
        raise DatasetError(f"{where}: labels must be integer class ids, got {y!r}")
    return int(value.reshape(()))


def to_uint8_hwc(image: Any, where: str = "image") -> np.ndarray:
    """A PIL image, uint8 HWC/HW array or CHW tensor (float in [0, 1] or uint8) -> uint8 RGB HWC."""
    is_tensor = hasattr(image, "detach")
    pil = hasattr(image, "convert") and hasattr(image, "mode")
    arr = _pil_array(image, where) if pil else _numpy(image)
    if arr.ndim == 3 and (is_tensor or arr.shape[-1] not in (1, 3, 4)) and arr.shape[0] in (1, 3):
        arr = arr.transpose(1, 2, 0)  # CHW (torch's layout) -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise DatasetError(f"{where}: an image of shape {arr.shape} is not HWC/CHW RGB or grey")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise DatasetError(f"{where}: images must be uint8 or float in [0, 1], got {arr.dtype}")
        if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
            raise DatasetError(
                f"{where}: float images must lie in [0, 1] (un-normalised: fedray normalises "
                f"itself), found {arr.min():.3g}..{arr.max():.3g}"
            )
        arr = np.rint(arr * 255.0).clip(0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def _pil_array(image: Any, where: str) -> np.ndarray:
    """A PIL image as an array: RGB uint8, or for 16-bit / float modes grey (convert() clips)."""
    if image.mode == "I":  # 32-bit integer: 16-bit data or 0..255, nothing says which
        raise DatasetError(
            f"{where}: a PIL image of mode I (32-bit integer) has no fixed range: return it as "
            "uint8 (16-bit data: np.asarray(img) >> 8) or as floats in [0, 1]"
        )
    if image.mode.startswith("I;16"):  # the top 8 bits, as OpenCV reads 16-bit files
        return (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
    if image.mode == "F":  # checked to lie in [0, 1] like any float image
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of an HWC image, resized to size x size."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    # INTER_AREA does not alias when shrinking; bilinear when enlarging
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(square), (size, size), interpolation=interp)
