"""`fedray identify/export/serve`: a user's wrong argument is one line and exit 2, before any
model loads (no trained run needed here)."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from fedray.config import ConfigError
from fedray.fl.checkpoint import CHECKPOINT
from fedray.pill.identify.cli import _write, main, output_names
from fedray.pill.identify.pipeline import Answer


@pytest.fixture()
def photo(tmp_path):
    import cv2

    path = tmp_path / "pills.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), 120, np.uint8))
    return path


def _run_dir(tmp_path, stage="federated", task=None):
    run = tmp_path / "run"
    run.mkdir()
    cfg = {"stage": stage, "task": task, "data": {"_target_": "fedray.pill.seg_sites.build"}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / CHECKPOINT).write_bytes(b"")
    return run


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedray: error: "), err
    return err[0]


def test_an_out_that_is_a_file_is_refused_before_the_models_load(photo, tmp_path, capsys):
    taken = tmp_path / "answers.txt"
    taken.write_text("mine")
    assert main(["identify", str(photo), "--out", str(taken), "--run", "nowhere"]) == 2
    assert f"--out {taken}: a file is there, not a directory" in _error(capsys)
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("command", ["identify", "export"])
def test_a_run_that_is_not_a_classifier_is_named(command, photo, tmp_path, capsys):
    run = _run_dir(tmp_path, task={"_target_": "fedray.tasks.segmentation.Segmentation"})
    args = [command, *([str(photo), "--run"] if command == "identify" else []), str(run)]
    assert main(args) == 2
    assert "a stage=federated run of task segmentation, not a classifier" in _error(capsys)


@pytest.mark.parametrize("command", ["identify", "export"])
def test_a_classifier_of_other_data_is_named(command, photo, tmp_path, capsys):
    """A run on fedray's toy shapes is a classifier, but its names are not pills."""
    run = _run_dir(tmp_path, task={"_target_": "fedray.tasks.classification.Classification"})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump(
        {**cfg, "data": {"_target_": "fedray.data.toy.toy_dataset"}}))
    args = [command, *([str(photo), "--run"] if command == "identify" else []), str(run)]
    assert main(args) == 2
    assert f"{run}: trained on toy_dataset (fedray.data.toy.toy_dataset), not on pill photos" \
        in _error(capsys)


def test_a_host_nobody_can_listen_on_is_refused(tmp_path, capsys):
    pytest.importorskip("uvicorn")
    assert main(["serve", "--host", "999.1.1.1", "--run", "nowhere"]) == 2
    assert "--host 999.1.1.1: not an address to listen on" in _error(capsys)


class FakeIdentifier:
    """What cmd_identify / cmd_serve use of a loaded identifier, without any model."""

    classifier = SimpleNamespace(class_names=["0 A 5 mg", "1 B 10 mg", "2 C 20 mg"])

    def __call__(self, rgb, top_k=5):
        return Answer(width=rgb.shape[1], height=rgb.shape[0])


@pytest.fixture()
def no_models(monkeypatch):
    """load_identifier answers with FakeIdentifier; `no_models.calls` counts the loads."""
    from fedray.pill.identify import app

    calls = []
    monkeypatch.setattr(app, "load_identifier", lambda *a, **k: calls.append(a) or
                        FakeIdentifier())
    return SimpleNamespace(calls=calls)


@pytest.mark.parametrize("command", ["identify", "serve", "export"])
@pytest.mark.parametrize(("weights", "says"), [
    ("missing.pt", "do not exist"),
    ("folder", "a directory, not a weights file"),
    ("notimg.jpg", "not a YOLO weights file (.pt"),
    ("garbage.pt", "do not load as YOLO detector weights"),
])
def test_a_bad_detector_is_one_line_naming_it_and_nothing_is_written(
        command, weights, says, photo, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    (tmp_path / "notimg.jpg").write_bytes(photo.read_bytes())
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    run, out, det = _run_dir(tmp_path), tmp_path / "out", tmp_path / weights
    args = {"identify": ["identify", str(photo), "--run", str(run), "--out", str(out)],
            "serve": ["serve", "--run", str(run), "--port", "0"],
            "export": ["export", str(run), "--out", str(out)]}[command]
    if command == "serve":
        pytest.importorskip("uvicorn")
    assert main([*args, "--detector", str(det)]) == 2
    line = _error(capsys)
    assert f"detector weights {det}" in line and says in line
    assert not out.exists() or not any(out.iterdir())


def _can_write(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_an_out_that_cannot_be_written_is_refused_before_the_models_load(
        photo, tmp_path, capsys, no_models):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if _can_write(locked):  # root writes anywhere: sysfs refuses even root
        locked = Path("/sys/kernel")
        if not locked.is_dir() or _can_write(locked):
            pytest.skip("no directory this user cannot write to")
    assert main(["identify", str(photo), "--out", str(locked)]) == 2
    assert f"--out {locked}: cannot write there" in _error(capsys)
    assert no_models.calls == []


def test_a_failed_write_is_an_error_and_leaves_no_partial_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot write pills.png \(No such file"):
        _write(tmp_path / "gone" / "pills.png", b"\x89PNG")
    _write(tmp_path / "pills.png", b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["pills.png"]


def test_photos_of_one_name_get_outputs_of_their_own(photo, tmp_path, capsys, no_models):
    import cv2

    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "same.jpg")
        cv2.imwrite(str(paths[-1]), cv2.imread(str(photo)))
    out = tmp_path / "out"
    assert main(["identify", *map(str, paths), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["same-2.json", "same-2.png", "same.json",
                                                     "same.png"]
    for name, path in (("same", paths[0]), ("same-2", paths[1])):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["photo"] == str(path.resolve()) and record["annotated"] == f"{name}.png"
        assert f"{path}: no pill found\n  -> {name}.png, {name}.json" in said
    assert output_names(["x/Pill.jpg", "y/pill.png", "pill-2.jpg"]) == ["Pill", "pill-2",
                                                                        "pill-2-2"]


def test_a_directory_given_as_a_photo_is_named_a_directory(tmp_path, capsys, no_models):
    assert main(["identify", str(tmp_path)]) == 2
    assert f"{tmp_path}: a directory; identify takes photo files" in _error(capsys)
    assert no_models.calls == []


def test_more_names_than_the_classifier_knows_is_said_once(photo, tmp_path, capsys, no_models):
    assert main(["identify", str(photo), "--out", str(tmp_path / "o"), "--top-k", "50"]) == 0
    warned = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert warned == ["fedray: warning: --top-k 50: the classifier knows 3 pills; listing 3 "
                      "per pill"]


def test_help_still_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["identify", "--help"])
    assert stop.value.code == 0 and "--top-k" in capsys.readouterr().out


@pytest.fixture()
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_busy_port_is_refused_before_the_models_load(busy_port, capsys, no_models):
    pytest.importorskip("uvicorn")
    assert main(["serve", "--port", str(busy_port)]) == 2
    assert f"--port {busy_port}: already in use on 127.0.0.1" in _error(capsys)
    assert no_models.calls == []


def test_a_host_of_another_machine_is_refused_before_the_models_load(capsys, no_models):
    pytest.importorskip("uvicorn")
    assert main(["serve", "--host", "10.255.255.1", "--port", "0"]) == 2
    assert "--host 10.255.255.1: not an address of this machine" in _error(capsys)
    assert no_models.calls == []


def test_serve_says_it_serves_the_page_on_the_bound_port(monkeypatch, capsys, no_models):
    uvicorn = pytest.importorskip("uvicorn")
    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(
        sockets[0].getsockname()[1]))
    # uvicorn.Config's dictConfig closes every logging handler in this process, pytest's
    # capture streams behind them included (what `fedray serve` does alone is its own)
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda self: None)
    assert main(["serve", "--port", "0"]) == 0
    assert served and served[0] > 0
    out = capsys.readouterr().out
    assert f"fedray serve: the pill identifier page is at http://127.0.0.1:{served[0]}/" in out


def test_calibration_says_what_it_does_while_it_runs(monkeypatch, lines):
    from fedray.pill.identify import classifier

    monkeypatch.setenv("FEDRAY_PROGRESS_SECONDS", "0")
    monkeypatch.setattr(classifier, "load_images", lambda root, split: np.zeros((130, 4, 4, 3),
                                                                               np.uint8))
    monkeypatch.setattr(classifier, "load_labels", lambda root, split: np.arange(130) % 3)
    sure = np.eye(3, dtype=np.float32)
    clf = SimpleNamespace(data_root="nowhere", logits=lambda x: sure[np.zeros(len(x), int)])
    classifier.calibrate_on_val(clf)
    assert any(x.startswith("identify: calibration: 3/3 batch") for x in lines), lines
    assert any(x.startswith("identify: calibrated on 130 val crops in ") for x in lines)


@pytest.fixture()
def fake_run(tmp_path, monkeypatch):
    """A run directory load_classifier rebuilds without a dataset or a trained model."""
    import torch

    from fedray.pill.identify import classifier

    run = _run_dir(tmp_path)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": {}, "seed": 0}))
    info = SimpleNamespace(num_classes=3, class_names=list("abc"), image_size=8, root=tmp_path)
    monkeypatch.setattr(classifier, "build_dataset", lambda data, seed: info)
    monkeypatch.setattr(classifier, "build_model", lambda m, k: torch.nn.Linear(2, k))
    monkeypatch.setattr(classifier, "load_checkpoint", lambda path: {"params": None})
    monkeypatch.setattr(classifier, "set_params", lambda model, params: None)
    monkeypatch.setattr(classifier, "catalog_sizes", lambda root, names: None)
    monkeypatch.setattr(classifier, "calibrate_on_val", lambda clf: {
        "temperature": 1.5, "threshold": 0.7, "energy_floor": -2.0})
    return run


@pytest.mark.parametrize("kept", ["{\"temperature\": 1.", "[1, 2]", "\xff\xfe",
                                  "{\"temperature\": 1.0, \"threshold\": \"high\", "
                                  "\"energy_floor\": 0.0}"])
def test_a_corrupt_calibration_is_one_line_naming_it(fake_run, kept, photo, monkeypatch, capsys):
    from fedray.pill.identify import app, classifier

    path = fake_run / classifier.CALIBRATION
    path.write_bytes(kept.encode("latin-1"))
    with pytest.raises(ConfigError) as refused:
        classifier.load_classifier(fake_run, onnx=False)
    said = str(refused.value)
    assert said.startswith(f"{path}: ") and "\n" not in said
    assert said.endswith("delete it and the next `fedray identify` recalibrates on the run's "
                         "val crops")
    monkeypatch.setattr(app, "latest_detector", lambda: photo)
    monkeypatch.setattr(app, "Detector", lambda *a, **k: None)
    assert main(["identify", str(photo), "--run", str(fake_run),
                 "--out", str(fake_run / "out")]) == 2
    assert _error(capsys) == f"fedray: error: {said}"


def test_the_calibration_is_written_whole_or_not_at_all(fake_run, monkeypatch, lines):
    from fedray.pill.identify import classifier

    path = fake_run / classifier.CALIBRATION
    old = json.dumps({"temperature": 1.0, "threshold": 0.5})  # from before the energy floor
    path.write_text(old)
    real_write = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    clf = classifier.load_classifier(fake_run, onnx=False)
    assert (clf.temperature, clf.threshold, clf.energy_floor) == (1.5, 0.7, -2.0)  # used
    assert path.read_text() == old and sorted(p.name for p in fake_run.iterdir()) == [
        CHECKPOINT, "config.yaml", classifier.CALIBRATION]  # untouched, no half file left
    assert any("cannot keep the calibration" in x and "No space left" in x for x in lines)
    monkeypatch.setattr(Path, "write_text", real_write)
    classifier.load_classifier(fake_run, onnx=False)
    assert json.loads(path.read_text())["energy_floor"] == -2.0
    assert not list(fake_run.glob("*.part")) and not list(fake_run.glob(".*.part"))
