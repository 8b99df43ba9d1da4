"""The server's own data (FedDF's transfer set, FLTrust's root set): strategies/server_data.py."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from fedray.config import ConfigError
from fedray.data.datasets import write_split
from fedray.fl.strategies import server_data


def _capture(monkeypatch, tmp_path):
    built = []

    def fake_build(cfg, seed):
        built.append((dict(cfg), seed))
        root = tmp_path / f"root-{seed}"  # other images under each seed (generated data)
        images = np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
        write_split(root, "train", images, np.arange(4) % 2)
        return SimpleNamespace(root=str(root), image_size=64, splits={"train": 4}, name="x")

    monkeypatch.setattr("fedray.data.sources.build_dataset", fake_build)
    return built


def test_a_generated_server_set_is_built_in_this_process_not_as_ray_tasks(monkeypatch, tmp_path):
    # the client actors start before the rules bind and may hold every CPU: a build whose Ray
    # tasks waited for a CPU never finished (FedDF on 2 cores, transfer set not yet cached)
    built = _capture(monkeypatch, tmp_path)
    cfg = {"seed": 0, "data": {"_target_": "x", "workers": None, "cache_dir": "/c"}}
    info = server_data.server_dataset(cfg, None, 1001, "transfer")
    (private, _), (server, seed) = built
    assert private["workers"] is None  # the clients' set: a cached lookup, left as configured
    assert server["workers"] == 1 and seed == 1001 and server["cache_dir"] == "/c"
    assert info.root == str(tmp_path / "root-1001")
    # a data config without the knob (a dataset that is read, not generated) gets none
    built.clear()
    server_data.server_dataset(cfg, {"_target_": "y"}, 7, "root")
    assert "workers" not in built[1][0]


def test_the_clients_own_data_is_refused(monkeypatch, tmp_path):
    _capture(monkeypatch, tmp_path)
    cfg = {"seed": 5, "data": {"_target_": "x", "workers": None}}
    with pytest.raises(ConfigError, match="clients' own dataset"):
        server_data.server_dataset(cfg, None, 5, "transfer")


def test_a_server_data_target_that_does_not_import_is_named_as_given():
    with pytest.raises(ConfigError, match=r"^strategy\.transfer\._target_: 'nosuch\.fn' cannot be "
                                          r"imported"):
        server_data.check_data_knob("transfer", {"_target_": "nosuch.fn"})
    assert server_data.check_data_knob("transfer", None) is None


def _folder(root, rng):
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 256, (16, 16, 3), np.uint8))


def test_imported_data_rebuilt_under_another_seed_is_refused_by_content(tmp_path, monkeypatch):
    # data=image_folder without val/: the seed only picks the carved val split, so the cache dir
    # differs but the transfer set holds the clients' own train images
    _folder(tmp_path / "imgs", np.random.default_rng(0))
    data = {"_target_": "fedray.data.image_folder.image_folder_dataset", "name": "image_folder",
            "root": str(tmp_path / "imgs"), "image_size": 16, "cache_dir": str(tmp_path / "c")}
    with pytest.raises(ConfigError, match=r"^strategy\.transfer=null .* 16 of its images are in "
                                          r"the clients' train split .*public data config$"):
        server_data.server_dataset({"data": data, "seed": 0}, None, 1001, "transfer")
    # data=custom: a callable that loads fixed data whatever its seed
    (tmp_path / "fixed_data_mod.py").write_text(
        "import numpy as np\n"
        "def data(seed: int = 0):\n"
        "    x = np.random.default_rng(123).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)\n"
        "    y = np.arange(20) % 2\n"
        "    return {'train': (x[:16], y[:16]), 'val': (x[16:], y[16:])}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    custom = {"_target_": "fixed_data_mod.data", "name": "custom", "cache_dir": str(tmp_path / "c")}
    with pytest.raises(ConfigError, match=r"strategy\.root=null .* 16 of its images"):
        server_data.server_dataset({"data": custom, "seed": 0}, None, 7, "root")
    # a "public" config that is a copy of the private images is refused too
    public = {**data, "root": str(tmp_path / "copy")}
    _folder(tmp_path / "copy", np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"^strategy\.transfer shares 16 image\(s\)"):
        server_data.server_dataset({"data": data, "seed": 0}, public, 0, "transfer")


def test_generated_data_under_another_seed_and_a_public_folder_are_accepted(tmp_path):
    toy = {"_target_": "fedray.data.toy.toy_dataset", "name": "toy", "num_classes": 2,
           "image_size": 16, "train_per_class": 6, "val_per_class": 2, "noise": 0.15,
           "cache_dir": str(tmp_path / "c")}
    info = server_data.server_dataset({"data": toy, "seed": 0}, None, 1001, "transfer")
    assert info.splits["train"] == 12
    _folder(tmp_path / "mine", np.random.default_rng(0))
    _folder(tmp_path / "public", np.random.default_rng(1))
    data = {"_target_": "fedray.data.image_folder.image_folder_dataset", "name": "image_folder",
            "root": str(tmp_path / "mine"), "image_size": 16, "cache_dir": str(tmp_path / "c")}
    public = {**data, "root": str(tmp_path / "public")}
    server_data.server_dataset({"data": data, "seed": 0}, public, 1001, "transfer")
