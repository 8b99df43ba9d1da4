"""stage=detect on a tiny scene set: offline training, caching, scoring, eval-folder checks."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from fedray.config import ConfigError
from fedray.data.datasets import DatasetError
from fedray.run import run
from tests.conftest import compose_plain

TINY_DATA = [
    "data.num_pills=3",
    "data.image_size=16",
    "data.reference_crops=6",
    "data.consumer_crops=6",
    "data.consumer_photos_per_pill=1",
    "data.detection_scenes=8",
    "data.scene_size=160",
    "data.crop_scene_size=160",
    "data.num_textures=9",
    "data.workers=1",
]
TINY_DETECT = [
    "detect.epochs=1",
    "detect.imgsz=160",
    "detect.batch=4",
    "detect.workers=0",
    "detect.sheet_images=2",
    "logger=jsonl",
]


@pytest.fixture
def no_network(monkeypatch):
    """Every way out of the machine raises and is recorded."""
    attempts: list[str] = []

    def refuse(name):
        def _refuse(*args, **kwargs):
            attempts.append(f"{name}{args[:2]}")
            raise OSError(f"network access attempted: {name}")

        return _refuse

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return attempts


@pytest.fixture(scope="module")
def yolo_env(tmp_path_factory):
    """Ultralytics' config dir (settings, fonts) in a fresh temporary folder for this module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo-config")))
    yield
    mp.undo()


def _cfg(make_cfg, cache_dir, run_dir, *extra):
    cfg = compose_plain(["+experiment=pill_detect", f"data.cache_dir={cache_dir}", *TINY_DATA,
                         *TINY_DETECT, *extra])
    cfg["run_dir"] = str(run_dir)
    return cfg


@pytest.mark.slow  # ~1 min on 2 cores: synth build, 1 epoch, 3 evaluations
def test_detect_trains_offline_caches_and_scores(make_cfg, cache_dir, tmp_path, yolo_env,
                                                 no_network):
    # Prepare
    cfg = _cfg(make_cfg, cache_dir, tmp_path / "run1")
    # Execute
    metrics = run(cfg)
    # Assert: figures in range, files written, progress rows logged, no socket touched
    assert no_network == []
    for k in ("val/AP50", "val/AP80", "val/mAP50-95", "val/precision", "val/recall"):
        assert 0.0 <= metrics[k] <= 1.0, k
    assert metrics["val/AP80"] <= metrics["val/AP50"] + 1e-9
    weights = Path(metrics["weights"])
    assert weights.is_file() and weights.parent.name.startswith("detector-")
    run_dir = tmp_path / "run1"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] and "train/box_loss" in rows[0]
    for png in ("pr_curve.png", "predictions.png"):
        assert cv2.imread(str(run_dir / png)) is not None, png
    assert json.loads((run_dir / "summary.json").read_text())["stage"] == "detect"
    fonts = [p.name for p in (Path(yolo_env_dir()) / "Ultralytics").iterdir()]
    assert "Arial.ttf" in fonts

    # a second run of the same config finds the weights in the cache: no training rows
    again = run(_cfg(make_cfg, cache_dir, tmp_path / "run2"))
    assert again["weights"] == metrics["weights"]
    assert (tmp_path / "run2" / "metrics.jsonl").read_text() == ""
    assert again["val/AP50"] == pytest.approx(metrics["val/AP50"])

    # the trained detector scores a real-photo-style YOLO folder, any class ids -> pill
    real = _yolo_folder(tmp_path / "real", weights)
    scored = run(_cfg(make_cfg, cache_dir, tmp_path / "run3", f"detect.eval_data={real}"))
    assert scored["eval/images"] == 3 and scored["eval/boxes"] == 4
    assert 0.0 <= scored["eval/AP80"] <= 1.0
    assert no_network == []

    # identify runs it at the side stage=detect serves it at (160 px x infer_scale 1.2, rounded
    # to the stride: 192; the weights carry it), and `fedray export` writes it as ONNX that
    # onnxruntime runs to the same answer
    from fedray.pill.identify.detector import Detector
    from fedray.pill.identify.export import DETECTOR_RTOL, export_detector

    assert metrics["imgsz"] == 192
    det = Detector(weights, conf=0.001)
    assert det.imgsz == 192
    assert det.model.overrides["imgsz"] == 160  # trained at 160
    scene = cv2.imread(str(next((real / "images" / "val").iterdir())))[..., ::-1]
    boxes, scores = det(scene)
    assert boxes.shape == (len(scores), 4) and (scores >= 0.001).all()
    report: dict = {}
    (tmp_path / "export").mkdir()
    row = export_detector(weights, tmp_path / "export", report, threads=1)
    assert row["model"] == "detector@192" and row["params"] > 1e6
    assert report["detector_imgsz"] == 192
    assert report["detector_max_rel_diff"] <= DETECTOR_RTOL
    onnx_boxes, onnx_scores = Detector(report["detector"], conf=0.001)(scene)
    if len(boxes):  # the best box: a one-epoch detector's tail of near-threshold boxes may differ
        np.testing.assert_allclose(onnx_boxes[0], boxes[0], atol=0.05)
        np.testing.assert_allclose(onnx_scores[0], scores[0], atol=1e-4)
    assert no_network == []

    # the detector cuts the classifier's consumer crops (data.crop_with=detector): the build
    # records how many photos it found a pill in; the rest fall back to the size-class crop
    from fedray.pill.synth import build_synthetic

    data = {**cfg["data"], "crop_with": "detector", "crop_detector": str(weights),
            "detection_scenes": 0}
    data.pop("_target_", None), data.pop("describe", None), data.pop("public_set", None)
    info = build_synthetic(data, 0, cache_dir)
    cropping = json.loads((Path(info.root) / "meta.json").read_text())["consumer_cropping"]
    assert cropping["crop_with"] == "detector" and cropping["detector"] == weights.parent.name
    assert cropping["found"] + cropping["size_class_fallbacks"] == cropping["photos"] == 3
    assert no_network == []


def yolo_env_dir() -> str:
    import os

    return os.environ["YOLO_CONFIG_DIR"]


def _yolo_folder(root: Path, near: Path) -> Path:
    """Three scenes copied from the tiny synthetic set, labels with class ids 3 and 7."""
    scenes = near.parents[1]  # the cache dir: pick the synthetic entry's val/train scenes
    images = sorted(scenes.glob("synthetic-*/detection/images/*/*.jpg"))[:3]
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    boxes = [["3 0.3 0.3 0.2 0.2"], ["7 0.5 0.5 0.3 0.2", "3 0.7 0.7 0.1 0.1"],
             ["7 0.4 0.6 0.2 0.3"]]
    for i, (image, lines) in enumerate(zip(images, boxes, strict=True)):
        shutil.copyfile(image, root / "images" / "val" / f"photo{i}.jpg")
        (root / "labels" / "val" / f"photo{i}.txt").write_text("\n".join(lines) + "\n")
    names = {3: "aspirin", 7: "ibuprofen"}
    (root / "data.yaml").write_text(yaml.safe_dump({"names": names, "val": "images/val",
                                                    "train": "images/val"}))
    return root


def _tiny_folder(root: Path) -> Path:
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    img = np.full((64, 64, 3), 128, np.uint8)
    cv2.imwrite(str(root / "images" / "val" / "a.jpg"), img)
    (root / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["pill"], "train": "images/val",
                                                    "val": "images/val"}))
    return root


def test_eval_folder_corrupt_image_names_the_file(tmp_path):
    from fedray.pill.detect.evaluate import prepare_eval_folder

    root = _tiny_folder(tmp_path / "f")
    bad = root / "images" / "val" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        prepare_eval_folder(root, "val", tmp_path / "out")


def test_eval_folder_bad_label_line_names_the_file_and_line(tmp_path):
    from fedray.pill.detect.evaluate import prepare_eval_folder

    root = _tiny_folder(tmp_path / "f")
    (root / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 oops 0.2\n")
    with pytest.raises(DatasetError, match=r"a\.txt, line 2"):
        prepare_eval_folder(root, "val", tmp_path / "out")


def test_eval_folder_collapses_classes(tmp_path):
    from fedray.pill.detect.evaluate import prepare_eval_folder

    root = _tiny_folder(tmp_path / "f")
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["a", "b", "c"],
                                                    "val": "images/val", "train": "images/val"}))
    (root / "labels" / "val" / "a.txt").write_text("2 0.5 0.5 0.2 0.2\n1 0.2 0.2 0.1 0.1\n")
    data_yaml, n_img, n_box = prepare_eval_folder(root, "val", tmp_path / "out")
    labels = list((tmp_path / "out" / "labels" / "val").glob("*.txt"))
    assert (n_img, n_box) == (1, 2)
    assert [line.split()[0] for line in labels[0].read_text().splitlines()] == ["0", "0"]
    assert yaml.safe_load(data_yaml.read_text())["names"] == ["pill"]


def test_bad_detect_config_is_a_config_error(make_cfg, cache_dir, tmp_path):
    from fedray.validate import validate

    cfg = _cfg(make_cfg, cache_dir, tmp_path, "detect.weights=/no/such/weights.pt")
    with pytest.raises(ConfigError, match="detect.weights"):
        run(cfg)
    cfg = _cfg(make_cfg, cache_dir, tmp_path, "detect.model=yolov9000.yaml")
    with pytest.raises(ConfigError, match="detect.model"):
        run(cfg)
    cfg = _cfg(make_cfg, cache_dir, tmp_path, "detect.threads=0")
    with pytest.raises(ConfigError, match="detect.threads"):
        run(cfg)
    cfg = _cfg(make_cfg, cache_dir, tmp_path, "detect.infer_scale=0")
    with pytest.raises(ConfigError, match="detect.infer_scale"):
        run(cfg)
    cfg = _cfg(make_cfg, cache_dir, tmp_path, "+detect.train_args.lr=0.1")
    with pytest.raises(ConfigError, match=r"detect\.train_args\.lr: not an ultralytics train "
                                          r"argument \(did you mean lrf or lr0\?\)"):
        run(cfg)
    with pytest.raises(ConfigError, match=r"detect\.train_args\.lr"):
        validate(cfg)  # before the run starts: what launch.py and a sweep's trials call
    cfg = make_cfg("stage=detect")
    with pytest.raises(ConfigError, match="stage='detect'"):
        run(cfg)


@pytest.mark.parametrize(("imgsz", "scale", "side"),
                         [(320, 1.2, 384), (320, 1.0, 320), (640, 1.2, 768), (160, 1.2, 192),
                          (32, 0.25, 32)])
def test_the_served_side_is_the_trained_one_scaled_to_the_stride(imgsz, scale, side):
    from fedray.pill.detect.train import served_imgsz

    assert served_imgsz({"imgsz": imgsz, "infer_scale": scale}) == side


def test_ultralytics_keeps_the_threads_fedray_gives_it(yolo_env):
    # ultralytics resets torch to min(8, cores - 1) threads each time it picks the CPU: one of
    # two cores here. After load_ultralytics it keeps torch's own count, or the one asked for.
    import torch

    from fedray.pill.detect import offline

    before = torch.get_num_threads()
    try:
        offline.load_ultralytics()
        from ultralytics.utils.torch_utils import select_device

        select_device("cpu", verbose=False)
        assert torch.get_num_threads() == offline._THREADS
        assert offline.use_threads(3) == 3
        select_device("cpu", verbose=False)
        assert torch.get_num_threads() == 3
    finally:
        offline.use_threads(before)


def test_ultralytics_downloads_are_refused_before_any_socket(yolo_env, no_network, tmp_path):
    # YOLO_OFFLINE alone lets safe_download try curl/urllib first; on a GPU the AMP check
    # would fetch yolo26n.pt that way. Loaded by fedray, every download fails at once.
    from fedray.pill.detect import offline

    offline.load_ultralytics()
    from ultralytics.data import utils as data_utils
    from ultralytics.utils import downloads

    with pytest.raises(ConnectionError, match="refused to download"):
        downloads.attempt_download_asset(str(tmp_path / "yolo26n.pt"))  # the AMP check's weights
    with pytest.raises(ConnectionError, match="refused"):
        downloads.safe_download(url="https://example.com/x.zip", dir=tmp_path)
    with pytest.raises(ConnectionError, match="refused"):
        data_utils.safe_download("https://example.com/data.zip")
    assert no_network == [] and not list(tmp_path.iterdir())


def test_scene_options_pill_counts_public_pills_surfaces(tmp_path):
    from fedray.pill import synth

    cfg = {"num_pills": 2, "image_size": 16, "reference_crops": 4, "consumer_crops": 0,
           "consumer_photos_per_pill": 1, "detection_scenes": 6, "scene_size": 160,
           "crop_scene_size": 160, "num_textures": 9, "workers": 1, "detection_pills": [3, 5],
           "detection_public_pills": 2, "detection_surfaces": 7,
           "detection_compose": {"max_overlap": 0.3}}
    info = synth.build_synthetic(cfg, 0, tmp_path)
    root = Path(info.root)
    det = json.loads((root / "meta.json").read_text())["detection"]
    assert det["public_pills"] == 2 and det["surfaces"] == 7
    labels = sorted((root / "detection" / "labels").glob("*/*.txt"))
    counts = [len(p.read_text().splitlines()) for p in labels]
    assert len(counts) == 6 and max(counts) <= 5 and sum(counts) >= 6 * 2  # hidden pills drop
    assert "path" not in yaml.safe_load((root / "detection" / "data.yaml").read_text())
    assert cv2.imread(str(root / det["sheet"])) is not None
    with pytest.raises(ConfigError, match="data.detection_pills"):
        synth.build_synthetic({**cfg, "detection_pills": [4, 2]}, 0, tmp_path)


def _eval_folder(root: Path, splits: tuple[str, ...]) -> Path:
    for split in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["pill"]}))
    return root


@pytest.mark.parametrize(("given", "line"), [
    ({"imgsz": 100}, "detect.imgsz must be a multiple of 32 (the detector's stride), got 100"),
    ({"log_every": 5}, "detect.log_every must be a fraction of an epoch in [0, 1] (0: per epoch "
                       "only), got 5"),
    ({"eval_split": "test2"}, "detect.eval_split: 'test2' is not a split of {root} (it has test, "
                              "val)"),
    ({"eval_data": "{empty}"}, "detect.eval_data: {empty}: no images; expected images/<split>/"),
])
def test_a_detect_value_that_would_surface_after_training_is_refused_before(given, line,
                                                                             tmp_path):
    """An eval folder's split was read only after the detector trained; a real photo set with
    only val/test images is a fine eval folder."""
    from fedray.pill.detect.train import DEFAULTS, detect_config

    root = _eval_folder(tmp_path / "real", ("val", "test"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "data.yaml").write_text("names: [pill]\n")
    cfg = {**DEFAULTS, "eval_data": str(root), "eval_split": "test"}
    assert detect_config(cfg)["eval_split"] == "test"
    given = {k: str(v).format(empty=empty) if k == "eval_data" else v for k, v in given.items()}
    with pytest.raises(ConfigError) as err:
        detect_config({**cfg, **given})
    assert str(err.value).startswith(line.format(root=root, empty=empty)), str(err.value)


def test_an_eval_split_without_an_eval_folder_is_refused(monkeypatch):
    """`detect.eval_split=test` on the command line with no `detect.eval_data` scored nothing."""
    import fedray.pill.detect.train as train

    monkeypatch.setattr(train, "command_line_keys", lambda: ["detect.epochs"])
    assert train.detect_config(dict(train.DEFAULTS))["eval_data"] is None  # the YAML's own split
    monkeypatch.setattr(train, "command_line_keys", lambda: ["detect.eval_split"])
    with pytest.raises(ConfigError, match=r"^detect.eval_split=val: set, but detect.eval_data is "
                                          r"null"):
        train.detect_config(dict(train.DEFAULTS))


def test_scenes_that_leave_no_val_scene_are_refused(tmp_path):
    """With no val scene the scenes' data.yaml points val at the training scenes: the detector's
    val/AP was then a training score, reported as val."""
    import json

    from fedray.config import compose_plain
    from fedray.data.datasets import DatasetError
    from fedray.pill.detect.train import run_detect, scenes_folder

    run_detect.fedray_check(compose_plain(["+experiment=pill_detect", "data.detection_scenes=3"]))
    with pytest.raises(ConfigError, match=r"^data.val_fraction=0.2: 2 detection scenes x 0.2 "
                                          r"leaves no val scene"):
        run_detect.fedray_check(compose_plain(["+experiment=pill_detect",
                                               "data.detection_scenes=2"]))
    (tmp_path / "meta.json").write_text(json.dumps({"detection": {"train": 2, "val": 0}}))
    with pytest.raises(DatasetError, match="no val detection scenes"):
        scenes_folder(tmp_path)
