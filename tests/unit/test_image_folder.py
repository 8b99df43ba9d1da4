"""Dataset sources: an image folder, a torchvision dataset on disk, a user's dataset callable."""

from __future__ import annotations

import importlib
import logging
import os
import struct
import sys

import cv2
import numpy as np
import pytest

from fedray.data.datasets import DatasetError, load_images, load_labels
from fedray.data.image_folder import image_folder_dataset
from fedray.data.partition import partition_iid
from fedray.data.sources import build_dataset
from fedray.data.torchvision_disk import torchvision_dataset


def _write_png(path, colour, size=(24, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((*size, 3), np.uint8)
    img[:] = colour[::-1]  # cv2 writes BGR
    assert cv2.imwrite(str(path), img)


def _tree(root, per_class=5):
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200)), ("green", (0, 200, 0))):
        for i in range(per_class):
            ext = "png" if i % 2 else "jpg"
            _write_png(root / name / f"{i}.{ext}", colour)
    return root


@pytest.fixture
def caplog_fedray(caplog, monkeypatch):
    """caplog that also sees the `fedray` logger (a run in this process stops its propagation)."""
    monkeypatch.setattr(logging.getLogger("fedray"), "propagate", True)
    return caplog


def test_image_folder_classes_split_and_corrupt_file(tmp_path, caplog_fedray):
    caplog = caplog_fedray
    root = _tree(tmp_path / "imgs")
    (root / "green" / "broken.jpg").write_bytes(b"not an image at all")
    cfg = {"name": "shots", "root": str(root), "image_size": 16, "val_fraction": 0.4}
    info = image_folder_dataset(cfg, 0, tmp_path / "cache")
    assert info.class_names == ["blue", "green", "red"]  # sorted subfolder names
    assert info.splits == {"train": 9, "val": 6}  # 2 of each 5 per class held out
    assert "skipped 1 unreadable" in caplog.text and "broken.jpg" in caplog.text
    meta = (tmp_path / "cache").glob("image_folder-*/meta.json")
    assert '"skipped": 1' in next(meta).read_text()
    images, labels = load_images(info.root, "train"), load_labels(info.root, "train")
    assert images.shape == (9, 16, 16, 3) and sorted(np.bincount(labels)) == [3, 3, 3]
    red = images[labels == 2]
    assert red[..., 0].min() > 150 and red[..., 2].max() < 50  # RGB order, decoded right
    # partitioners take the labels of any source
    assert sum(len(p) for p in partition_iid(labels, 3, 0)) == 9
    # same files: the cache; one more image: a new entry
    assert image_folder_dataset(cfg, 0, tmp_path / "cache").root == info.root
    _write_png(root / "red" / "new.png", (210, 0, 0))
    again = image_folder_dataset(cfg, 0, tmp_path / "cache")
    assert again.root != info.root and again.splits["train"] + again.splits["val"] == 16


def test_image_folder_train_val_subfolders(tmp_path):
    root = tmp_path / "imgs"
    _tree(root / "train", per_class=3)
    _tree(root / "val", per_class=1)
    cfg = {"root": str(root), "image_size": 8}
    info = image_folder_dataset(cfg, 0, tmp_path / "cache")
    assert info.splits == {"train": 9, "val": 3}
    assert list(load_labels(info.root, "val")) == [0, 1, 2]


def test_a_train_and_test_root_is_split_structured_and_test_is_never_read(tmp_path, caplog_fedray):
    # root/train/ + root/test/ (no val/): was read as 2 classes "test" and "train"
    caplog_fedray.set_level(logging.INFO, logger="fedray")
    root = tmp_path / "imgs"
    _tree(root / "train", per_class=5)
    for name in ("red", "blue", "green"):  # test images: another colour, never to be trained on
        _write_png(root / "test" / name / "t.png", (255, 255, 255))
    info = image_folder_dataset({"root": str(root), "image_size": 8}, 0, tmp_path / "cache")
    assert info.class_names == ["blue", "green", "red"] and info.splits == {"train": 12, "val": 3}
    for split in ("train", "val"):
        assert load_images(info.root, split).min(axis=(1, 2, 3)).max() < 200  # no white image
    assert "test/ is left out" in caplog_fedray.text
    with_val = tmp_path / "v"
    _tree(with_val / "train", per_class=2)
    _tree(with_val / "valid", per_class=1)
    _tree(with_val / "test", per_class=1)
    info = image_folder_dataset({"root": str(with_val), "image_size": 8}, 0, tmp_path / "cache")
    assert info.splits == {"train": 6, "val": 3}
    mixed = _tree(tmp_path / "mixed", per_class=1)
    _tree(mixed / "test", per_class=1)
    with pytest.raises(DatasetError, match=r"split folder\(s\) test beside class folder\(s\) blue"):
        image_folder_dataset({"root": str(mixed), "image_size": 8}, 0, tmp_path / "cache")
    flat = _tree(tmp_path / "flat100", per_class=5)  # a class called "train" (CIFAR-100 has one)
    for i in range(5):
        _write_png(flat / "train" / f"t{i}.png", (10, 200, 10))
    info = image_folder_dataset({"root": str(flat), "image_size": 8}, 0, tmp_path / "cache")
    assert info.class_names == ["blue", "green", "red", "train"]
    no_train = tmp_path / "nt"
    _tree(no_train / "val", per_class=1)
    _tree(no_train / "test", per_class=1)
    with pytest.raises(DatasetError, match=r"has val, test/ but no train/"):
        image_folder_dataset({"root": str(no_train), "image_size": 8}, 0, tmp_path / "cache")


def test_image_folder_missing_root_names_the_key(tmp_path):
    with pytest.raises(DatasetError, match="data.root=.*no such directory"):
        image_folder_dataset({"root": str(tmp_path / "nope"), "image_size": 8}, 0, tmp_path)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        image_folder_dataset({"root": str(tmp_path / "flat"), "image_size": 8}, 0, tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"data\.root=.*a\.jpg': a file; give the folder"):
        image_folder_dataset({"root": str(tmp_path / "a.jpg"), "image_size": 8}, 0, tmp_path)


def test_a_class_folder_linked_to_another_is_refused(tmp_path):
    root = _tree(tmp_path / "imgs", per_class=2)
    (root / "scarlet").symlink_to(root / "red", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"class folders .*red and .*scarlet are one folder"):
        image_folder_dataset({"root": str(root), "image_size": 8}, 0, tmp_path / "cache")


def test_torchvision_missing_root_says_where_to_put_files(tmp_path):
    cfg = {"dataset": "CIFAR10", "root": str(tmp_path / "cifar")}
    with pytest.raises(DatasetError) as err:
        torchvision_dataset(cfg, 0, tmp_path / "cache")
    msg = str(err.value)
    assert "data.root=" in msg and "does not exist" in msg
    assert "cifar-10-batches-py" in msg and "never downloads" in msg
    with pytest.raises(DatasetError, match="not a torchvision dataset"):
        torchvision_dataset({"dataset": "CIFAR11", "root": str(tmp_path)}, 0, tmp_path)


def _idx(path, array, magic):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_dataset_on_disk(tmp_path):
    """A tiny MNIST in torchvision's raw layout: grey images become RGB, train=False is val."""
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x803)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 3, 0x801)
    cfg = {"dataset": "MNIST", "root": str(tmp_path / "mnist"), "image_size": None}
    info = torchvision_dataset(cfg, 0, tmp_path / "cache")
    assert info.splits == {"train": 6, "val": 4} and info.image_size == 28
    assert info.class_names[0] == "0 - zero" and info.num_classes == 10
    images = load_images(info.root, "val")
    assert images.shape == (4, 28, 28, 3)
    assert (images[..., 0] == images[..., 2]).all()  # grey copied to the three channels
    assert list(load_labels(info.root, "val")) == [0, 1, 2, 0]


MODULE = """
import numpy as np
import torch
from PIL import Image

CALLS = []


class Pictures(torch.utils.data.Dataset):
    classes = ["dark", "light"]

    def __init__(self, n, as_pil):
        self.n, self.as_pil = n, as_pil

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        value = 40 if i % 2 == 0 else 220
        if self.as_pil:
            return Image.new("RGB", (12, 10), (value, value, value)), i % 2
        return torch.full((3, 10, 10), value / 255.0), torch.tensor(i % 2)


def data(n: int, seed: int):
    CALLS.append(seed)
    return {"train": Pictures(n, as_pil=False), "val": Pictures(4, as_pil=True)}


def wrong(n: int):
    return [1, 2, 3]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mymat.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymat", None)
    yield importlib.import_module("mymat")
    sys.modules.pop("mymat", None)


def test_materialize_torch_dataset(tmp_path, user_module, caplog_fedray):
    caplog = caplog_fedray
    cfg = {
        "_target_": "mymat.data",
        "name": "mine",
        "n": 6,
        "width": 3,  # a leftover of another data group: dropped with a warning
        "image_size": 8,
        "cache_dir": str(tmp_path / "cache"),
    }
    info = build_dataset(cfg, seed=5)
    assert user_module.CALLS == [5]  # called with the run's seed
    assert "width" in caplog.text
    assert info.name == "mine" and info.class_names == ["dark", "light"]
    assert info.splits == {"train": 6, "val": 4} and info.image_size == 8
    train, val = load_images(info.root, "train"), load_images(info.root, "val")
    assert train.shape == (6, 8, 8, 3) and val.shape == (4, 8, 8, 3)
    assert train[0].max() == 40 and train[1].min() == 220  # [0, 1] floats back to uint8
    assert list(load_labels(info.root, "val")) == [0, 1, 0, 1]
    assert build_dataset(cfg, seed=5).root == info.root and user_module.CALLS == [5]  # cached
    source = tmp_path / "mymat.py"
    stamp = source.stat().st_mtime_ns + 10**9
    os.utime(source, ns=(stamp, stamp))  # the dataset function's file was edited
    assert build_dataset(cfg, seed=5).root != info.root and user_module.CALLS == [5, 5]


def test_materialize_rejects_what_it_cannot_store(tmp_path, user_module):
    cfg = {"_target_": "mymat.wrong", "n": 2, "cache_dir": str(tmp_path)}
    with pytest.raises(DatasetError, match="returned list"):
        build_dataset(cfg, seed=0)
    unsized = {"_target_": "mymat.data", "n": 2, "cache_dir": str(tmp_path / "c2")}
    with pytest.raises(DatasetError, match="data.image_size"):  # 10 x 10 tensors, 10 x 12 PIL
        build_dataset(unsized, seed=0)


def test_a_pair_of_images_and_labels_of_different_lengths_is_named():
    from fedray.data.materialize import to_arrays

    images = np.zeros((20, 8, 8, 3), np.uint8)
    with pytest.raises(DatasetError, match=r"^mymod.data: val: 20 images but 10 labels"):
        to_arrays((images, np.zeros(10, np.int64)), None, "mymod.data: val")
    x, y = to_arrays((images, np.arange(20) % 2), None, "mymod.data: val")
    assert x.shape == (20, 8, 8, 3) and y.tolist() == [0, 1] * 10


def test_a_class_with_no_training_image_is_warned_of(tmp_path, caplog_fedray):
    from fedray.data.materialize import write_returned

    images = np.zeros((12, 8, 8, 3), np.uint8)
    train = (images, np.arange(12) % 2)  # classes 0 and 1
    write_returned(tmp_path / "ok", {"train": train, "val": train}, "ok", None, "mymod.data")
    assert "no training image" not in caplog_fedray.text
    val = (images, np.arange(12) % 3)  # class 2 only in val
    write_returned(tmp_path / "skew", {"train": train, "val": val}, "skew", None, "mymod.data")
    assert "mymod.data: 1 of 3 classes have no training image (2)" in caplog_fedray.text


def test_a_val_image_folder_missing_a_class_is_mapped_by_class_name(tmp_path):
    # two torchvision ImageFolders: val lacks "banana", so its cherry is index 1, train's 2
    from torchvision.datasets import ImageFolder

    from fedray.data.materialize import write_returned

    for split, names in (("train", ("apple", "banana", "cherry")), ("val", ("apple", "cherry"))):
        for name in names:
            for i in range(2):
                _write_png(tmp_path / split / name / f"{i}.png", (9, 9, 9), size=(8, 8))
    train, val = ImageFolder(str(tmp_path / "train")), ImageFolder(str(tmp_path / "val"))
    write_returned(tmp_path / "out", (train, val), "fruit", None, "mymod.data")
    assert list(load_labels(tmp_path / "out", "val")) == [0, 0, 2, 2]
    assert list(load_labels(tmp_path / "out", "train")) == [0, 0, 1, 1, 2, 2]
    _write_png(tmp_path / "val" / "durian" / "0.png", (9, 9, 9), size=(8, 8))
    with pytest.raises(DatasetError, match=r"^mymod.data: val: class 'durian' is not a train"):
        write_returned(tmp_path / "bad", (train, ImageFolder(str(tmp_path / "val"))), "fruit",
                       None, "mymod.data")


def test_16_bit_and_float_pil_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from fedray.data.materialize import to_uint8_hwc

    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    image = Image.open(tmp_path / "r.png")
    assert image.mode == "I;16"
    got, want = to_uint8_hwc(image), np.repeat((ramp >> 8)[..., None], 3, -1)
    assert got.shape == (16, 16, 3) and np.array_equal(got, want)
    big_endian = Image.frombytes("I;16B", (16, 16), ramp.astype(">u2").tobytes())
    assert np.array_equal(to_uint8_hwc(big_endian)[..., 1], ramp >> 8)
    floats = Image.fromarray(ramp.astype(np.float32) / 65535.0)
    assert floats.mode == "F"
    assert np.abs(to_uint8_hwc(floats)[..., 0].astype(int) - (ramp >> 8)).max() <= 1
    with pytest.raises(DatasetError, match=r"float images must lie in \[0, 1\]"):
        to_uint8_hwc(Image.fromarray(ramp.astype(np.float32)))
    with pytest.raises(DatasetError, match=r"^x\[0\]: a PIL image of mode I \(32-bit integer\)"):
        to_uint8_hwc(image.convert("I"), "x[0]")
