"""Identify: a tiny federated pill run, then photo -> pills named, from Python, the CLI and HTTP.

The detector here is the photos' own ground truth (`truth_detector`): it isolates what identify
adds (cropping, classifying, the unknown threshold, the answer's format, the CLI, the page). The
trained YOLO detector is checked by its own tests and by the slow end-to-end test at the bottom.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedray.pill.identify.app import Identifier, PhotoError, decode_photo
from fedray.pill.identify.classifier import load_classifier, pick_threshold
from fedray.pill.identify.photos import empty_photo, synthetic_photos
from fedray.pill.identify.pipeline import (
    UNKNOWN,
    annotate,
    identify,
    iou_matrix,
    match_truth,
    photo_correct,
)
from fedray.run import run

ROOT = Path(__file__).resolve().parents[2]
PILLS = (
    "data.num_pills=4", "data.image_size=32", "data.reference_crops=400",
    "data.consumer_crops=160", "data.consumer_photos_per_pill=5", "data.detection_scenes=0",
    "data.num_textures=9", "data.workers=1", "model=tiny_cnn", "partition=iid", "logger=jsonl",
    "fl.num_clients=2", "fl.rounds=4", "fl.trainable=all", "client.epochs=4",
    "client.optimizer.lr=0.05", "ray.client_cpus=0.5",
)


def _xyxy(photo) -> np.ndarray:
    h, w = photo.image.shape[:2]
    cx, cy, bw, bh = photo.boxes.T
    return np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                     (cy + bh / 2) * h], 1).astype(np.float32)


def truth_detector(photos):
    """A detector that answers each known photo with its true boxes (and nothing elsewhere)."""
    table = {p.image.tobytes()[:4096]: _xyxy(p) for p in photos}

    def detect(rgb):
        boxes = table.get(rgb.tobytes()[:4096], np.zeros((0, 4), np.float32))
        return boxes, np.ones(len(boxes), np.float32)

    return detect


@pytest.fixture(scope="module")
def pill_run(tmp_path_factory, cache_dir, ray_session):
    """A finished 4-pill federated run (tiny CNN) and held-out multi-pill photos."""
    from tests.conftest import compose_plain

    run_dir = tmp_path_factory.mktemp("pill-run")
    cfg = compose_plain([f"data.cache_dir={cache_dir}", *PILLS])
    cfg["run_dir"] = str(run_dir)
    metrics = run(cfg)
    clf = load_classifier(run_dir)
    photos = synthetic_photos(clf.data_root, 6, pills_per_photo=3, seed=1)
    return run_dir, clf, photos, metrics


@pytest.mark.slow  # trains a small federated pill run first (module fixture)
def test_identify_names_the_pills_of_a_photo(pill_run):
    run_dir, clf, photos, metrics = pill_run
    cal = json.loads((run_dir / "identify_calibration.json").read_text())
    assert np.isfinite(clf.energy_floor) and clf.energy_floor == cal["energy_floor"]
    strict = dataclasses.replace(clf, threshold=1.01)
    assert all(f.name == UNKNOWN for f in identify(photos[0].image, truth_detector(photos),
                                                   strict).found)
    clf = dataclasses.replace(clf, threshold=0.0)  # always named: p_true is read from the top 3
    detect = truth_detector(photos)
    correct, p_true = 0, []
    for photo in photos:
        answer = identify(photo.image, detect, clf, top_k=3)
        assert len(answer.found) == len(photo.boxes) > 0
        for f in answer.found:
            assert len(f.top) == 3 and f.top[0][1] >= f.top[1][1] >= f.top[2][1]
            assert f.name in (UNKNOWN, *clf.class_names)
            assert f.name != UNKNOWN
        correct += photo_correct(answer, _xyxy(photo), photo.classes)
        assert annotate(photo.image, answer).shape == photo.image.shape
        # identify's crops are what the classifier learned from: the true pill is likelier
        order = np.argsort(_xyxy(photo)[:, 1] + 1e-3 * _xyxy(photo)[:, 0], kind="stable")
        for f, cls in zip(answer.found, photo.classes[order], strict=True):
            p_true.append(dict(f.top).get(clf.class_names[cls], 0.0))
    chance = 1 / len(clf.class_names)
    assert metrics["val/acc"] > chance + 0.15, metrics
    assert np.mean(p_true) > chance + 0.1, (np.mean(p_true), correct)


def test_photo_correct_needs_every_pill_found_and_named():
    from fedray.pill.identify.pipeline import Answer, Found

    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    found = [Found([0, 0, 10, 10], 1, [("a", 1.0)], "a", 0, 1.0),
             Found([21, 21, 30, 30], 1, [("b", 1.0)], "b", 1, 1.0)]
    assert photo_correct(Answer(found), boxes, np.array([0, 1]))
    assert not photo_correct(Answer(found), boxes, np.array([1, 0]))  # swapped names
    assert not photo_correct(Answer(found[:1]), boxes, np.array([0, 1]))  # one missed
    extra = Found([50, 50, 60, 60], 1, [("a", 1.0)], "a", 0, 1.0)
    assert not photo_correct(Answer([*found, extra]), boxes, np.array([0, 1]))  # a false pill
    assert match_truth(Answer([*found, extra]), boxes, np.array([0, 1])) == (2, 1)
    assert match_truth(Answer(found), boxes, np.array([1, 1])) == (1, 0)
    assert match_truth(Answer([]), boxes, np.array([0, 1])) == (0, 0)
    np.testing.assert_allclose(iou_matrix(boxes[:1], boxes[:1] + [5, 0, 5, 0]), [[50 / 150]])


def test_threshold_keeps_the_precision_asked_for():
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.6, 0.5])
    right = np.array([1, 1, 1, 0, 1, 0], bool)
    assert pick_threshold(conf, right, precision=1.0) == 0.9
    assert pick_threshold(conf, right, precision=0.8) == 0.6
    assert pick_threshold(conf, np.ones(6, bool), precision=0.99) == 0.0
    # ties: `>= threshold` accepts all three 1.0s, right 2 of 3 times, so none is accepted
    tied = np.array([1.0, 1.0, 1.0, 0.9])
    assert pick_threshold(tied, np.array([1, 1, 0, 1], bool), precision=0.98) > 1.0
    assert pick_threshold(tied, np.array([1, 1, 1, 0], bool), precision=0.98) == 1.0


def test_uncertain_boxes_unlike_any_pill_are_dismissed_sure_ones_stay():
    """A box is dropped only when the detector is unsure of it AND its crop's energy is under
    the classifier's floor; a sure box unlike any pill stays (read as unknown)."""
    import torch

    from fedray.pill.identify.classifier import Classifier, softmax_energy
    from fedray.pill.identify.pipeline import SURE_SCORE

    class Bright(torch.nn.Module):  # logits grow with the crop's brightness: dark = no pill
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([2 * m, m, m], 1)  # dark: b and c tie, under 0.5 each

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, 32:] = 255  # the right half bright (pill-like to Bright), the left half dark
    dark, bright = [4, 20, 20, 36], [40, 20, 56, 36]
    boxes = np.array([dark, dark, bright], np.float32)
    scores = np.array([SURE_SCORE - 0.3, SURE_SCORE + 0.2, SURE_SCORE - 0.3], np.float32)
    clf = Classifier(Bright(), ["a", "b", "c"], 16, "", threshold=0.5)
    _, energy = clf.scores(np.stack([np.zeros((16, 16, 3), np.uint8),
                                     np.full((16, 16, 3), 255, np.uint8)]))
    assert energy[0] < energy[1]
    floor = float(energy.mean())
    answer = identify(rgb, lambda _: (boxes, scores), dataclasses.replace(clf, energy_floor=floor))
    assert answer.dismissed == [[float(v) for v in dark]]  # unsure and unlike every pill
    assert [f.box for f in answer.found] == [[float(v) for v in dark],
                                              [float(v) for v in bright]]
    assert answer.found[0].name == UNKNOWN and answer.found[1].name == "a"
    assert json.loads(json.dumps(answer.to_json()))["dismissed"] == answer.dismissed
    # without a floor (a classifier calibrated before it existed) nothing is dismissed
    assert identify(rgb, lambda _: (boxes, scores), clf).dismissed == []
    p, e = softmax_energy(np.array([[0.0, np.log(3.0)]]), 1.0)
    np.testing.assert_allclose(p, [[0.25, 0.75]], rtol=1e-6)
    np.testing.assert_allclose(e, [np.log(4.0)], rtol=1e-6)


def test_bad_photos_are_clear_errors(tmp_path):
    with pytest.raises(PhotoError, match="not an image"):
        decode_photo(b"hello, I am text", "notes.txt")
    with pytest.raises(PhotoError, match="empty"):
        decode_photo(b"", "empty.jpg")


def _cli(*args, cwd, env_cache):
    env = {"FEDRAY_CACHE": str(env_cache), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "fedray.pill.identify", *args], cwd=cwd,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # trains a small federated pill run first (module fixture)
def test_cli_errors_name_the_missing_model_and_the_bad_file(tmp_path, pill_run):
    import cv2

    run_dir = pill_run[0]
    photo = tmp_path / "pills.png"
    cv2.imwrite(str(photo), pill_run[2][0].image[..., ::-1])
    empty_cache = tmp_path / "empty-cache"
    no_run = _cli("identify", str(photo), cwd=tmp_path, env_cache=empty_cache)
    assert no_run.returncode == 2 and "Traceback" not in no_run.stderr
    assert "python launch.py +experiment=pill_noniid" in no_run.stderr.strip().splitlines()[-1]
    no_det = _cli("identify", str(photo), "--run", str(run_dir), cwd=tmp_path,
                  env_cache=empty_cache)
    assert no_det.returncode == 2 and "Traceback" not in no_det.stderr
    assert "stage=detect" in no_det.stderr.strip().splitlines()[-1]
    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    bad = _cli("identify", str(text), cwd=tmp_path, env_cache=empty_cache)
    assert bad.returncode == 2 and "notes.txt: not an image" in bad.stderr
    assert "Traceback" not in bad.stderr


def _app(pill_run):
    from fedray.pill.identify.serve import create_app

    _, clf, photos, _ = pill_run
    return create_app(Identifier(truth_detector(photos), clf)), photos


@pytest.mark.slow  # trains a small federated pill run first (module fixture)
def test_web_api_answers_photos_and_refuses_non_images(pill_run):
    import cv2
    from fastapi.testclient import TestClient

    app, photos = _app(pill_run)
    client = TestClient(app)
    ok, png = cv2.imencode(".png", photos[0].image[..., ::-1])
    reply = client.post("/api/identify", content=png.tobytes(),
                        headers={"Content-Type": "image/png"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["found"]) == len(photos[0].boxes)
    assert body["image"].startswith("data:image/png;base64,")
    refs = [f["reference"] for f in body["found"] if f["reference"]]
    assert all(r.startswith("/api/reference/") for r in refs)
    # the catalog's studio picture, cut to a square around its pill
    picture = client.get("/api/reference/0/front.png")
    assert picture.headers["content-type"] == "image/png"
    close_up = cv2.imdecode(np.frombuffer(picture.content, np.uint8), cv2.IMREAD_COLOR)
    pill_id = pill_run[1].class_names[0].split(" ", 1)[0]
    studio = cv2.imread(str(Path(pill_run[1].data_root) / "references" / f"{pill_id}_front.png"))
    assert close_up.shape[0] < studio.shape[0] and abs(close_up.shape[0] - close_up.shape[1]) <= 2
    assert client.get("/api/reference/999/front.png").status_code == 404
    assert client.get("/api/reference/0/top.png").status_code == 404
    text = client.post("/api/identify", content=b"just text",
                       headers={"Content-Type": "text/plain", "X-Filename": "a.txt"})
    assert text.status_code == 415 and "not an image type" in text.json()["error"]
    fake = client.post("/api/identify", content=b"just text",
                       headers={"Content-Type": "image/jpeg", "X-Filename": "a.jpg"})
    assert fake.status_code == 415 and "not an image" in fake.json()["error"]
    huge = client.post("/api/identify", content=b"0" * (13 * 2**20),
                       headers={"Content-Type": "image/jpeg"})
    assert huge.status_code == 413
    none = cv2.imencode(".png", empty_photo(3))[1].tobytes()
    nothing = client.post("/api/identify", content=none, headers={"Content-Type": "image/png"})
    assert nothing.status_code == 200 and nothing.json()["found"] == []


def _browser():
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if Path(path).exists():
            return path
    return None


@pytest.mark.slow  # trains a small federated pill run first (module fixture)
def test_web_page_in_a_real_browser(pill_run, tmp_path):
    """Serve on 127.0.0.1, upload a photo and a text file in headless Chromium, screenshot."""
    import threading
    import time

    import cv2

    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    browser_path = _browser()
    if browser_path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    import socket

    import uvicorn

    app, photos = _app(pill_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    photo = tmp_path / "three_pills.png"
    cv2.imwrite(str(photo), photos[0].image[..., ::-1])
    text = tmp_path / "notes.txt"
    text.write_text("definitely not a photo")
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, headless=True,
                                        args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("tr.pill-row", timeout=60_000)
            names = page.locator("tr.pill-row td.name").all_inner_texts()
            assert len(names) == len(photos[0].boxes)
            assert all(n in (UNKNOWN, *pill_run[1].class_names) for n in names)
            refs = "document.querySelectorAll('tr.pill-row img')"
            page.wait_for_function(f"Array.from({refs}).every(i => i.complete)")
            shown = page.evaluate(f"Array.from({refs}).map(i => i.naturalWidth)")
            named = [n for n in names if n != UNKNOWN]
            assert len(shown) == len(named) and all(w > 0 for w in shown)  # catalog pictures
            page.screenshot(path=str(tmp_path / "identify.png"), full_page=True)
            page.set_input_files("#file", str(text))
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "not an image" in page.inner_text("#error")
            assert page.locator("tr.pill-row").count() == 0
            # a reply that is no JSON (a proxy's or a crashed server's 500 page): shown, not a
            # page left on "identifying ..."
            page.route("**/api/identify", lambda route: route.fulfill(
                status=502, body="<html>Bad Gateway</html>", content_type="text/html"))
            page.set_input_files("#file", str(photo))
            page.wait_for_function("document.getElementById('error').textContent == 'error 502'")
            assert page.inner_text("#status") == "" and page.locator("tr.pill-row").count() == 0
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert (tmp_path / "identify.png").stat().st_size > 10_000
    print(f"screenshot: {tmp_path / 'identify.png'}")


@pytest.mark.slow  # trains a small federated pill run first (module fixture)
def test_json_answer_round_trips(pill_run):
    _, clf, photos, _ = pill_run
    answer = identify(photos[1].image, truth_detector(photos), clf)
    again = json.loads(json.dumps(answer.to_json()))
    assert [f["name"] for f in again["found"]] == [f.name for f in answer.found]


@pytest.mark.slow  # trains a small federated pill run first (module fixture)
def test_export_classifier_matches_torch_and_is_profiled(pill_run, tmp_path, monkeypatch, capsys):
    from fedray.pill.identify.export import OPSET, PARITY_ATOL, export_run

    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path / "no-detector-here"))
    report = export_run(pill_run[0], out=tmp_path / "export")
    assert report["opset"] == OPSET
    assert report["classifier_max_abs_diff"] <= PARITY_ATOL
    (row,) = report["profile"]  # no detector trained in this cache: the classifier alone
    assert row["model"] == "classifier" and row["params"] > 0 and row["macs"] > 0
    assert row["latency_p50_ms"] <= row["latency_p95_ms"]
    assert (tmp_path / "export" / "classifier.onnx").stat().st_size > 10_000
    assert "p50 ms" in capsys.readouterr().out
