"""The synthetic dataset builder on a tiny config: counts, split, manifest, YOLO layout, caching."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedray.config import ConfigError
from fedray.data.datasets import is_complete, load_images, load_labels
from fedray.data.sources import build_dataset
from fedray.pill import synth, synth_plan, synth_tasks, synth_write
from fedray.pill.catalog import load_catalog
from fedray.pill.compose_types import prepare_cutout
from fedray.pill.textures import bundled_textures

TINY = {
    "num_pills": 4,
    "image_size": 32,
    "reference_crops": 40,
    "consumer_crops": 40,
    "consumer_photos_per_pill": 5,
    "detection_scenes": 4,
    "num_textures": 9,
    "workers": 1,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny dataset, built inline (no Ray) into a fresh cache."""
    cache = tmp_path_factory.mktemp("synth-cache")
    return synth.build_synthetic(dict(TINY), 0, cache)


def _manifest(root: str) -> list[dict[str, str]]:
    with open(Path(root) / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_counts_and_stratified_split(built):
    assert built.num_classes == 4 and built.image_size == 32
    assert built.splits == {"train": 64, "val": 16}
    rows = _manifest(built.root)
    per = Counter((r["source"], r["label"], r["split"]) for r in rows)
    # 10 crops per source and pill; 20% of each held out (consumer: 1 of 5 photos, 2 crops each)
    for source in ("reference", "consumer"):
        for label in "0123":
            assert per[(source, label, "train")] == 8
            assert per[(source, label, "val")] == 2
    meta = json.loads((Path(built.root) / "meta.json").read_text())
    assert meta["sources"] == {"reference": {"train": 32, "val": 8},
                               "consumer": {"train": 32, "val": 8}}


def test_manifest_matches_arrays_and_catalog(built):
    rows = _manifest(built.root)
    pills = load_catalog(Path(built.root) / "catalog.json")
    meta = json.loads((Path(built.root) / "meta.json").read_text())
    assert meta["catalog_ids"] == [p.id for p in pills]
    for split, n in built.splits.items():
        mine = [r for r in rows if r["split"] == split]
        images, labels = load_images(built.root, split), load_labels(built.root, split)
        assert images.shape == (n, 32, 32, 3) and images.dtype == np.uint8
        assert [int(r["index"]) for r in mine] == list(range(n))
        assert [int(r["label"]) for r in mine] == labels.tolist()
        assert [int(r["pill_id"]) for r in mine] == [pills[y].id for y in labels]
        assert {r["side"] for r in mine} <= {"front", "back"}
        assert images.reshape(n, -1).std(axis=1).min() > 1.0  # every crop holds an image


def test_viewable_files(built):
    root = Path(built.root)
    refs = sorted(p.name for p in (root / "references").glob("*.png"))
    assert refs == sorted(f"{i}_{s}.png" for i in range(4) for s in ("front", "back"))
    import cv2

    sheet = cv2.imread(str(root / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] > 4 * 64 and sheet.shape[1] > 12 * 64
    summary = synth.synth_summary(built)
    assert summary["crops"] == 80 and summary["detection_scenes"] == {"train": 3, "val": 1}
    assert Path(summary["contact_sheet"]).is_file()
    assert Path(summary["detection_data_yaml"]).is_file()


def test_yolo_layout_passes_ultralytics_checks(built, monkeypatch):
    import ultralytics.data.utils as yolo_utils

    # check_det_dataset fetches a plotting font from the internet when none is cached
    monkeypatch.setattr(yolo_utils, "check_font", lambda *a, **k: None)
    data_yaml = Path(built.root) / "detection" / "data.yaml"
    data = yolo_utils.check_det_dataset(str(data_yaml), autodownload=False)
    assert data["nc"] == 1 and data["names"] == {0: "pill"}
    assert Path(data["path"]).is_absolute()
    n_images = 0
    for split in ("train", "val"):
        images = sorted(Path(data[split]).glob("*.jpg"))
        n_images += len(images)
        for image in images:
            label = Path(yolo_utils.img2label_paths([str(image)])[0])
            out = yolo_utils.verify_image_label((str(image), str(label), "", False, 1, 0, 0, False))
            _, boxes, shape, _, _, missing, found, empty, corrupt, msg = out
            assert (missing, found, empty, corrupt) == (0, 1, 0, 0), msg
            assert shape == (640, 640) and 1 <= len(boxes) <= 4
            assert (boxes[:, 0] == 0).all() and (boxes[:, 3:] > 0).all()
    assert n_images == 4


def test_rebuild_is_byte_identical_and_independent_of_workers(built, tmp_path, ray_session):
    # the second build runs on Ray (2 workers) into another cache: same bytes
    again = synth.build_synthetic({**TINY, "workers": 2}, 0, tmp_path)
    a, b = Path(built.root), Path(again.root)
    assert a.name == b.name  # workers is not part of the cache key
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if rel.name == synth.TIMINGS:  # wall-clock timings: the one file that differs
            assert set(json.loads(x)) == set(json.loads(y)) == {"build_seconds", "stage_seconds"}
        elif rel.name == "data.yaml":  # the absolute cache path differs; nothing else may
            assert x.replace(str(a).encode(), b"ROOT") == y.replace(str(b).encode(), b"ROOT")
        else:
            assert x == y, rel


def test_a_different_seed_gives_different_images(built, tmp_path):
    other = synth.build_synthetic({**TINY, "detection_scenes": 0}, 1, tmp_path)
    assert other.root != built.root
    assert not np.array_equal(load_images(other.root, "train"), load_images(built.root, "train"))
    assert not (Path(other.root) / "detection").exists()


def test_cached_entry_is_reused_until_the_code_changes(built, monkeypatch):
    cache = Path(built.root).parent

    class Rebuilt(Exception):
        pass

    def rebuild(*args):
        raise Rebuilt

    monkeypatch.setattr(synth, "_build", rebuild)
    again = build_dataset({"_target_": "fedray.pill.synth.build_synthetic", "name": "synthetic",
                           **TINY, "workers": 3, "cache_dir": str(cache)}, 0)
    assert again.root == built.root
    real = synth.code_fingerprint()
    monkeypatch.setattr(synth, "code_fingerprint", lambda: {**real, "source": "edited"})
    with pytest.raises(Rebuilt):
        synth.build_synthetic(dict(TINY), 0, cache)


def test_user_backgrounds_join_the_textures_and_the_cache_key(tmp_path):
    import cv2

    folder = tmp_path / "bg"
    folder.mkdir()
    for i, colour in enumerate(((20, 160, 30), (200, 30, 180))):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((40, 60, 3), colour, np.uint8))
    cfg = {**TINY, "num_textures": 0, "backgrounds": str(folder), "detection_scenes": 0,
           "reference_crops": 8, "consumer_crops": 8}
    info = synth.build_synthetic(cfg, 0, tmp_path / "cache")
    meta = json.loads((Path(info.root) / "meta.json").read_text())
    assert meta["textures"] == len(bundled_textures(8)) + 2
    cv2.imwrite(str(folder / "2.png"), np.full((40, 60, 3), 99, np.uint8))
    assert synth.build_synthetic(cfg, 0, tmp_path / "cache").root != info.root


def test_interrupted_build_leaves_no_complete_entry(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth_write, "_write_contact_sheet", boom)
    cfg = {**TINY, "detection_scenes": 0, "consumer_crops": 8}
    with pytest.raises(KeyboardInterrupt):
        synth.build_synthetic(cfg, 0, tmp_path)
    assert not any(is_complete(p) for p in tmp_path.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]
    monkeypatch.undo()
    info = synth.build_synthetic(cfg, 0, tmp_path)
    assert is_complete(info.root)


def test_a_pill_hidden_in_its_scene_is_photographed_again(monkeypatch):
    cfg = synth.synth_config(TINY)
    pills = synth_plan.make_pills(cfg)[:2]
    cutouts = [prepare_cutout(cut) for _, cut, _ in synth_tasks.references_task(pills, 0)]
    textures = [np.full((64, 64, 3), 90, np.uint8)]
    real_render, calls = synth_tasks.render_plan, []

    def hide_first_pill(plan, **kwargs):
        shown = real_render(plan, **kwargs)
        calls.append(len(plan.pills))
        if len(calls) == 1:
            shown.boxes[0] = 0.0  # as if the second pill covered it completely
        return shown

    monkeypatch.setattr(synth_tasks, "render_plan", hide_first_pill)
    spec = {"seed": (0, 2, 0), "scenes": [[0, 3]], "scene_size": 96, "image_size": 16}
    params = synth_plan.scene_params(cfg, True)
    crops = synth_tasks.crop_scenes_task(spec, cutouts, textures, params)
    assert calls == [2, 1]  # the scene, then the hidden pill alone
    assert crops.shape == (2, 16, 16, 3)
    assert crops[0].std() > 1.0  # a real crop, not the empty one crop_boxes gives a 0 box


def test_public_catalog_is_disjoint_from_the_private_one():
    private = synth_plan.make_pills(synth.synth_config({"num_pills": 20}))
    public = synth_plan.make_pills(synth.synth_config({"num_pills": 100, "public": True}))
    assert len(public) == 100
    assert min(p.id for p in public) >= synth_plan.PUBLIC_ID_OFFSET
    assert not {p.id for p in private} & {p.id for p in public}
    assert not {p.key() for p in private} & {p.key() for p in public}
    # also disjoint from a larger private catalog drawn from the same seed
    bigger = synth_plan.make_pills(synth.synth_config({"num_pills": 300}))
    assert not {p.key() for p in bigger} & {p.key() for p in public}


@pytest.mark.parametrize(("override", "match"), [
    ({"no_such_key": 1}, "no_such_key"),
    ({"val_fraction": 1.0}, "data.val_fraction"),
    ({"num_pills": 0}, "data.num_pills"),
    ({"image_size": "big"}, "data.image_size"),
    ({"compose": {"max_pills": 3}}, "data.compose.max_pills"),
    ({"backgrounds": "/no/such/folder"}, "data.backgrounds"),
    ({"reference_crops": 0, "consumer_crops": 0}, "reference_crops"),
    ({"crop_with": "middle"}, "data.crop_with"),
    ({"crop_with": "detector", "crop_detector": "/no/such/weights.pt"}, "data.crop_detector"),
    ({"crop_detector": "/no/such/weights.pt"}, "only read with data.crop_with=detector"),
    ({"distinct_sides": "maybe"}, "data.distinct_sides"),  # once read as true
    ({"public": 3}, "data.public"),
    ({"compose": {"blur_prob": 2.0}}, "data.compose: ComposeParams.blur_prob"),
    ({"detection_compose": {"fov_mm": "wide"}}, "data.detection_compose"),
])
def test_bad_config_is_a_clear_error(override, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        synth.build_synthetic({**TINY, **override}, 0, tmp_path)


def test_crop_with_detector_names_the_command_when_no_detector_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="pill_detect.*data.crop_detector=PATH"):
        synth.build_synthetic({**TINY, "crop_with": "detector", "cache_dir": str(tmp_path)}, 0,
                              tmp_path)


def test_crops_cut_around_the_true_box_are_recorded_and_a_new_entry(built, tmp_path):
    info = synth.build_synthetic({**TINY, "crop_with": "truth", "detection_scenes": 0}, 0,
                                 tmp_path)
    assert info.root != built.root
    meta = json.loads((Path(info.root) / "meta.json").read_text())
    assert meta["consumer_cropping"] == {"crop_with": "truth", "photos": 20}
    before = json.loads((Path(built.root) / "meta.json").read_text())
    assert before["consumer_cropping"] == {"crop_with": "size_class", "photos": 20}
    # same photos, other crops: the consumer crops differ, the reference crops do not
    rows = _manifest(info.root)
    new, old = load_images(info.root, "train"), load_images(built.root, "train")
    train = [r for r in rows if r["split"] == "train"]
    con = [int(r["index"]) for r in train if r["source"] == "consumer"]
    ref = [int(r["index"]) for r in train if r["source"] == "reference"]
    assert not np.array_equal(new[con], old[con])
    np.testing.assert_array_equal(new[ref], old[ref])


def test_default_config_file_matches_the_builder_defaults():
    conf = Path(__file__).resolve().parents[2] / "conf" / "data" / "synthetic.yaml"
    cfg = yaml.safe_load(conf.read_text())
    cfg.pop("public_set")  # describes the public counterpart for pretraining, not this build
    assert cfg.pop("_target_") == "fedray.pill.synth.build_synthetic"
    assert cfg.pop("describe") == "fedray.pill.synth.synth_summary"
    assert cfg == synth.DEFAULTS
