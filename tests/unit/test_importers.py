"""Real-dataset importers on tiny hand-made YOLO / Roboflow / ePillID folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from fedray.data.datasets import DatasetError, load_images, load_labels
from fedray.pill.epillid import import_epillid
from fedray.pill.import_common import center_square, crop_box, stratified_split
from fedray.pill.importers import import_yolo, label_path_for, parse_yolo_labels

NAMES = ["red", "green", "blue"]
RGB = {0: (220, 30, 30), 1: (30, 220, 30), 2: (30, 30, 220)}
W, H = 64, 48
SIZE = 24


def _noise(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    return rng.normal(128, 20, (h, w, 3)).clip(0, 255).astype(np.uint8)


def _write_bgr(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _scene(path: Path, objects: list[tuple[int, int, int, int]], rng: np.random.Generator) -> str:
    """Draw (cls, x, y, half-side) filled squares on noise as PNG; return the YOLO label text."""
    img = _noise(rng)
    lines = []
    for cls, x, y, r in objects:
        cv2.rectangle(img, (x - r, y - r), (x + r - 1, y + r - 1), RGB[cls], -1)
        lines.append(f"{cls} {x / W:.6f} {y / H:.6f} {2 * r / W:.6f} {2 * r / H:.6f}")
    _write_bgr(path, img)
    return "\n".join(lines) + "\n"


# (cls, cx, cy, half-side) per image; each list is one image
TRAIN = [
    [(0, 16, 16, 8)],
    [(1, 40, 24, 10), (2, 14, 34, 7)],
    [(2, 48, 20, 9)],
    [(0, 30, 30, 8), (1, 12, 12, 6)],
]
VAL = [[(1, 20, 20, 8)], [(2, 44, 28, 8)]]


def _yolo_dataset(root: Path, splits: dict[str, list], roboflow: bool = False, seed: int = 0,
                  names: object = None) -> Path:
    rng = np.random.default_rng(seed)
    for split, scenes in splits.items():
        folder = {"val": "valid"}.get(split, split) if roboflow else split
        for i, objects in enumerate(scenes):
            if roboflow:
                img, lbl = root / folder / "images" / f"{split}{i}.png", root / folder / "labels"
            else:
                img, lbl = root / "images" / folder / f"{split}{i}.png", root / "labels" / folder
            text = _scene(img, objects, rng)
            lbl.mkdir(parents=True, exist_ok=True)
            (lbl / f"{split}{i}.txt").write_text(text)
    data = {"names": names if names is not None else NAMES}
    if roboflow:
        data |= {"train": "../train/images", "val": "../valid/images", "test": "../test/images"}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root


def _cfg(root: Path, **kw) -> dict:
    return {"name": "yolo_import", "root": str(root), "image_size": SIZE, "val_fraction": 0.25,
            "seed": 0, **kw}


def _centre_rgb(images: np.ndarray) -> np.ndarray:
    c = images.shape[1] // 2
    return images[:, c - 3 : c + 3, c - 3 : c + 3].reshape(len(images), -1, 3).mean(axis=1)


def _assert_centred_on_class(images: np.ndarray, labels: np.ndarray) -> None:
    centre = _centre_rgb(images)
    for rgb, lab in zip(centre, labels, strict=True):
        assert int(np.argmax(rgb)) == lab, (rgb, lab)
        assert rgb.max() > 180 and np.sort(rgb)[1] < 80


def _meta(root: str) -> dict:
    return json.loads((Path(root) / "meta.json").read_text())


# --------------------------------------------------------------------------------- pure helpers


def test_crop_box_exact_and_border_replicated():
    img = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
    # side = max(0.4*10, 0.2*10) = 4 px centred on (5, 5): rows/cols 3..6, no resampling at size 4
    np.testing.assert_array_equal(crop_box(img, 0.5, 0.5, 0.4, 0.2, 0.0, 4), img[3:7, 3:7])
    # a 2-px box at the top-left corner: the square leaves the image and is filled by replication
    corner = crop_box(img, 0.0, 0.0, 0.2, 0.2, 0.0, 2)
    np.testing.assert_array_equal(corner, np.broadcast_to(img[0, 0], (2, 2, 3)))
    # pad_ratio 0.5 doubles the side: 4 px -> 8 px around (5, 5) = rows/cols 1..8
    np.testing.assert_array_equal(crop_box(img, 0.5, 0.5, 0.4, 0.4, 0.5, 8), img[1:9, 1:9])


def test_center_square_takes_the_middle():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    np.testing.assert_array_equal(center_square(img, 4), img[:, 1:5])
    assert center_square(img, 16).shape == (16, 16, 3)


def test_stratified_split_exact_counts_and_seeded():
    strata = np.array([0] * 10 + [1] * 5 + [2])
    out = stratified_split(strata, {"val": 0.2, "test": 0.2}, seed=3)
    # round(16 * 0.2) = 3 per held-out split: quotas 2 (class 0) + 1 (class 1); the singleton
    # class 2 stays in train
    for split in ("val", "test"):
        assert np.bincount(strata[out[split]], minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(strata[out["train"]], minlength=3).tolist() == [6, 3, 1]
    assert sorted(np.concatenate(list(out.values())).tolist()) == list(range(16))
    again = stratified_split(strata, {"val": 0.2, "test": 0.2}, seed=3)
    assert all(np.array_equal(out[k], again[k]) for k in out)
    other = stratified_split(strata, {"val": 0.2, "test": 0.2}, seed=4)
    assert any(not np.array_equal(out[k], other[k]) for k in out)
    with pytest.raises(DatasetError, match="nothing for train"):
        stratified_split(strata, {"val": 0.5, "test": 0.5}, seed=0)


def test_label_path_for_swaps_last_images_folder():
    assert label_path_for(Path("/d/images/x/train/images/a.b.jpg")) == Path(
        "/d/images/x/train/labels/a.b.txt"
    )
    assert label_path_for(Path("/d/pics/a.png")) == Path("/d/pics/a.txt")


def test_parse_polygon_line_becomes_its_bounding_box(tmp_path):
    lbl = tmp_path / "a.txt"
    lbl.write_text("1 0.2 0.2 0.6 0.2 0.6 0.8 0.2 0.8\n\n0 0.5 0.5 0 0.1\n")
    boxes, degenerate = parse_yolo_labels(lbl, {0: 0, 1: 1})
    assert degenerate == 1
    assert len(boxes) == 1 and boxes[0].label == 1
    assert (boxes[0].cx, boxes[0].cy) == pytest.approx((0.4, 0.5))
    assert (boxes[0].w, boxes[0].h) == pytest.approx((0.4, 0.6))


# --------------------------------------------------------------------------------- YOLO import


def test_yolo_happy_path(tmp_path):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    info = import_yolo(_cfg(root), tmp_path / "cache")
    assert info.class_names == NAMES and info.num_classes == 3 and info.image_size == SIZE
    assert info.splits == {"train": 6, "val": 2}
    train_labels = load_labels(info.root, "train")
    assert train_labels.tolist() == [0, 1, 2, 2, 0, 1]  # file order, then line order
    assert load_labels(info.root, "val").tolist() == [1, 2]
    images = load_images(info.root, "train")
    assert images.shape == (6, SIZE, SIZE, 3) and images.dtype == np.uint8
    _assert_centred_on_class(np.asarray(images), train_labels)
    _assert_centred_on_class(np.asarray(load_images(info.root, "val")), [1, 2])
    meta = _meta(info.root)
    assert meta["skipped_images"] == 0 and meta["background_images"] == 0
    assert meta["val_carved"] is False


def test_yolo_detection_yaml_points_at_originals(tmp_path):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    info = import_yolo(_cfg(root), tmp_path / "cache")
    det = yaml.safe_load((Path(info.root) / "detection.yaml").read_text())
    assert det["names"] == dict(enumerate(NAMES)) and det["nc"] == 3
    assert det["path"] == str(root.resolve())
    for split, n in (("train", 4), ("val", 2)):
        listing = Path(det[split])
        assert listing.is_absolute() and listing.parent == Path(info.root) and listing.is_file()
        files = [Path(p) for p in listing.read_text().split()]
        assert len(files) == n and all(p.is_absolute() and p.is_file() for p in files)
        assert all(label_path_for(p).is_file() for p in files)
    assert "test" not in det


def test_yolo_is_cached_and_rebuilds_when_a_file_changes(tmp_path):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    first = import_yolo(_cfg(root), tmp_path / "cache")
    assert import_yolo(_cfg(root), tmp_path / "cache").root == first.root
    label = root / "labels" / "val" / "val0.txt"
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    second = import_yolo(_cfg(root), tmp_path / "cache")
    assert second.root != first.root and second.splits["val"] == 3


def test_yolo_roboflow_layout_with_dict_names(tmp_path):
    names = {0: "red", 1: "green", 2: "blue"}
    root = _yolo_dataset(tmp_path / "rf", {"train": TRAIN, "val": VAL}, roboflow=True, names=names)
    info = import_yolo(_cfg(root), tmp_path / "cache")
    assert info.class_names == NAMES
    assert info.splits == {"train": 6, "val": 2}  # "valid" -> "val"; declared test/ is absent
    assert load_labels(info.root, "val").tolist() == [1, 2]
    train = np.asarray(load_images(info.root, "train"))
    _assert_centred_on_class(train, load_labels(info.root, "train"))


def test_yolo_nc_that_disagrees_with_names_is_refused(tmp_path):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    data = yaml.safe_load((root / "data.yaml").read_text())
    (root / "data.yaml").write_text(yaml.safe_dump({**data, "nc": 5}))
    with pytest.raises(DatasetError, match=r"data\.yaml: nc: 5, but `names` lists 3 classes"):
        import_yolo(_cfg(root), tmp_path / "cache")


def test_yolo_sparse_class_ids_map_to_contiguous_labels(tmp_path):
    root = tmp_path / "ds"
    rng = np.random.default_rng(1)
    for i, cls in enumerate([0, 2, 2, 0]):
        text = _scene(root / "images" / "train" / f"{i}.png", [(cls, 30, 24, 8)], rng)
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        # ids 5 and 9 in the files; names only declares those two
        file_id = 5 if cls == 0 else 9
        (root / "labels" / "train" / f"{i}.txt").write_text(f"{file_id} {text.split(' ', 1)[1]}")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": {9: "blue", 5: "red"}}))
    info = import_yolo(_cfg(root, val_fraction=0.0), tmp_path / "cache")
    assert info.class_names == ["red", "blue"]
    assert load_labels(info.root, "train").tolist() == [0, 1, 1, 0]


def test_yolo_missing_val_is_carved_by_image(tmp_path):
    # primary class of image i (its most frequent box class) is i % 3
    scenes = [[(i % 3, 32, 24, 8), ((i + 1) % 3, 10, 10, 5), (i % 3, 52, 36, 6)] for i in range(12)]
    root = _yolo_dataset(tmp_path / "ds", {"train": scenes})
    info = import_yolo(_cfg(root, val_fraction=0.25), tmp_path / "cache")
    # round(12 images * 0.25) = 3 images carved, 3 boxes each
    assert info.splits == {"train": 27, "val": 9}
    assert _meta(info.root)["val_carved"] is True
    det = yaml.safe_load((Path(info.root) / "detection.yaml").read_text())
    train = set(Path(det["train"]).read_text().split())
    val = set(Path(det["val"]).read_text().split())
    assert len(train) == 9 and len(val) == 3 and not train & val
    # 4 images per primary class: quota 1 each
    firsts = sorted(int(Path(p).stem.removeprefix("train")) % 3 for p in val)
    assert firsts == [0, 1, 2]
    again = import_yolo(_cfg(root, val_fraction=0.25, seed=1), tmp_path / "cache2")
    assert again.splits == info.splits


def test_yolo_corrupt_image_is_skipped_counted_and_reported(tmp_path, caplog):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    bad = root / "images" / "train" / "zz_broken.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "labels" / "train" / "zz_broken.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "images" / "train" / "empty.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="fedray.pill.importers"):
        info = import_yolo(_cfg(root), tmp_path / "cache")
    assert info.splits == {"train": 6, "val": 2}
    meta = _meta(info.root)
    assert meta["skipped_images"] == 2
    skipped = sorted(Path(p).name for p in meta["skipped_image_files"])
    assert skipped == ["empty.png", "zz_broken.jpg"]
    assert "skipped 2" in caplog.text and "zz_broken.jpg" in caplog.text
    listed = (Path(info.root) / "detection_train.txt").read_text()
    assert "zz_broken" not in listed and "empty.png" not in listed


def test_yolo_image_without_label_is_background(tmp_path):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    _write_bgr(root / "images" / "train" / "nothing.png", _noise(np.random.default_rng(5)))
    info = import_yolo(_cfg(root), tmp_path / "cache")
    assert info.splits == {"train": 6, "val": 2}
    assert _meta(info.root)["background_images"] == 1
    assert "nothing.png" in (Path(info.root) / "detection_train.txt").read_text()


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("7 0.5 0.5 0.1 0.1", "class id 7"),
        ("1 0.5 1.2 0.1 0.1", r"\[0, 1\]"),
        ("1 0.5 -0.1 0.1 0.1", r"\[0, 1\]"),
        ("1 0.5 0.5 0.1", "5 fields"),
        ("1 0.5 0.5 0.1 0.1 0.3", "5 fields"),
        ("one 0.5 0.5 0.1 0.1", "non-numeric"),
        ("1.5 0.5 0.5 0.1 0.1", "class id 1.5"),
    ],
)
def test_yolo_bad_label_line_names_file_and_line(tmp_path, line, match):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN, "val": VAL})
    (root / "labels" / "train" / "train2.txt").write_text(f"2 0.75 0.4 0.28 0.37\n{line}\n")
    with pytest.raises(DatasetError, match=match) as err:
        import_yolo(_cfg(root), tmp_path / "cache")
    assert "train2.txt, line 2" in str(err.value)
    assert not list((tmp_path / "cache").glob("yolo-*"))  # no half-built entry left behind


def test_yolo_empty_dataset_is_an_error_naming_root(tmp_path):
    root = _yolo_dataset(tmp_path / "ds", {"train": TRAIN})
    for lbl in (root / "labels" / "train").iterdir():
        lbl.write_text("")
    with pytest.raises(DatasetError, match="no labelled boxes") as err:
        import_yolo(_cfg(root), tmp_path / "cache")
    assert str(root) in str(err.value)


def test_yolo_missing_root_or_data_yaml(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        import_yolo(_cfg(tmp_path / "nope"), tmp_path / "cache")
    with pytest.raises(DatasetError, match="data.root is required"):
        import_yolo({"root": "???"}, tmp_path / "cache")
    (tmp_path / "bare" / "images" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no data.yaml.*names"):
        import_yolo(_cfg(tmp_path / "bare"), tmp_path / "cache")
    (tmp_path / "bare" / "data.yaml").write_text("names: [a]\n")
    (tmp_path / "bare" / "images" / "train").rmdir()
    with pytest.raises(DatasetError, match="no training images"):
        import_yolo(_cfg(tmp_path / "bare"), tmp_path / "cache")


# --------------------------------------------------------------------------------- ePillID


def _epillid(root: Path, per_class: int = 5, split_of=None) -> Path:
    rng = np.random.default_rng(0)
    rows = ["image_path,label,is_ref,is_front" + (",split" if split_of else "")]
    for cls, name in enumerate(["51285-0092", "00093-7180", "0781-1506"]):
        for i in range(per_class):
            # off-square photo with the pill at the centre; the margins must be cropped away
            img = _noise(rng, 40, 60)
            cv2.circle(img, (30, 20), 12, RGB[cls], -1)
            rel = f"imgs/{name}_{i}.jpg"
            _write_bgr(root / rel, img)
            extra = f",{split_of(cls, i)}" if split_of else ""
            rows.append(f"{rel},{name},{int(i == 0)},1{extra}")
    (root / "all_labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _ecfg(root: Path, **kw) -> dict:
    return {"name": "epillid", "root": str(root), "image_size": SIZE, "val_fraction": 0.2,
            "test_fraction": 0.2, "seed": 0, **kw}


def test_epillid_happy_path_with_skips(tmp_path, caplog):
    root = _epillid(tmp_path / "ep")
    (root / "imgs" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with open(root / "all_labels.csv", "a") as fh:
        fh.write("imgs/bad.jpg,51285-0092,0,1\nimgs/gone.jpg,0781-1506,0,0\n")
    with caplog.at_level(logging.WARNING, logger="fedray.pill.importers"):
        info = import_epillid(_ecfg(root), tmp_path / "cache")
    assert info.class_names == ["00093-7180", "0781-1506", "51285-0092"]
    # 15 readable: round(15 * 0.2) = 3 per held-out split, one per class
    assert info.splits == {"train": 9, "val": 3, "test": 3}
    for split in info.splits:
        labels = load_labels(info.root, split)
        assert sorted(np.bincount(labels, minlength=3).tolist()) == [info.splits[split] // 3] * 3
        images = np.asarray(load_images(info.root, split))
        assert images.shape[1:] == (SIZE, SIZE, 3)
        # class index 0 is "00093-7180", drawn in green (RGB[1]) etc.
        colour_of = {0: 1, 1: 2, 2: 0}
        _assert_centred_on_class(images, np.array([colour_of[int(v)] for v in labels]))
        # a centre crop keeps the pill round; squashing 60x40 to a square would make it 1.5x taller
        pill = images.max(axis=-1) > 180
        widths, heights = pill[:, SIZE // 2].sum(axis=1), pill[:, :, SIZE // 2].sum(axis=1)
        assert np.abs(widths.astype(int) - heights).max() <= 1
    meta = _meta(info.root)
    assert meta["skipped_images"] == 2 and meta["missing_images"] == 1
    assert "skipped 2" in caplog.text and "bad.jpg" in caplog.text and "gone.jpg" in caplog.text


def test_epillid_split_column(tmp_path):
    root = _epillid(tmp_path / "ep", per_class=4,
                    split_of=lambda c, i: ["train", "train", "valid", "Test"][i])
    info = import_epillid(_ecfg(root, split_column="split"), tmp_path / "cache")
    assert info.splits == {"train": 6, "val": 3, "test": 3}


def test_epillid_missing_column_lists_available(tmp_path):
    root = _epillid(tmp_path / "ep", per_class=1)
    with pytest.raises(DatasetError) as err:
        import_epillid(_ecfg(root, label_column="pilltype_id"), tmp_path / "cache")
    msg = str(err.value)
    assert "all_labels.csv" in msg and "'pilltype_id'" in msg and "data.label_column" in msg
    assert "image_path, label, is_ref, is_front" in msg


def test_epillid_empty_or_unreadable_is_an_error(tmp_path):
    root = tmp_path / "ep"
    root.mkdir()
    (root / "all_labels.csv").write_text("image_path,label\n")
    with pytest.raises(DatasetError, match="no rows"):
        import_epillid(_ecfg(root), tmp_path / "cache")
    (root / "all_labels.csv").write_text("image_path,label\nx.jpg,a\ny.jpg,b\n")
    with pytest.raises(DatasetError, match=r"none of the 2 listed image\(s\).*2 missing"):
        import_epillid(_ecfg(root), tmp_path / "cache")
    with pytest.raises(DatasetError, match="label CSV not found"):
        import_epillid(_ecfg(root, csv="other.csv"), tmp_path / "cache")
    (root / "all_labels.csv").write_text("image_path,label\nx.jpg,\n")
    with pytest.raises(DatasetError, match="line 2: empty 'label'"):
        import_epillid(_ecfg(root), tmp_path / "cache")


def test_epillid_class_order_is_the_same_whatever_the_row_order(tmp_path):
    # "1" and "01" are one number: the tie went to the set's iteration order (per process);
    # "²" passed str.isdigit() and int() raised ValueError
    from fedray.pill.epillid import _natural_key

    names = ["1", "01", "001", "2", "02", "a"]
    backwards = names[::-1]  # a stable sort keeps ties in their input order
    assert sorted(names, key=_natural_key) == sorted(backwards, key=_natural_key) == [
        "001", "01", "1", "02", "2", "a"]
    assert sorted(["²", "3", "a"], key=_natural_key) == ["3", "a", "²"]  # a name, not a number
    rng = np.random.default_rng(0)
    labels = ["1", "01", "²", "2"]
    for label in labels:
        for i in range(5):
            _write_bgr(tmp_path / "ep" / "imgs" / f"{label}_{i}.png", _noise(rng, 30, 30))
    got = []
    for order in (labels, labels[::-1]):
        rows = [f"imgs/{lbl}_{i}.png,{lbl}" for lbl in order for i in range(5)]
        (tmp_path / "ep" / "all_labels.csv").write_text("image_path,label\n" + "\n".join(rows))
        got.append(import_epillid(_ecfg(tmp_path / "ep"), tmp_path / "cache").class_names)
    assert got[0] == got[1] == ["01", "1", "2", "²"]
