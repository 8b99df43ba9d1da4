"""`fedray serve`'s API and identify's photo reading: a decompression bomb is refused from its
header (413), every error is `{"error": one line}`, and `fedray export` writes nothing half-way
(no trained run needed here)."""

from __future__ import annotations

import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from fedray.pill.identify.app import MAX_PIXELS, MAX_UPLOAD_BYTES, PhotoError, read_photo
from fedray.pill.identify.pipeline import Answer


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 16_000) -> bytes:
    """A PNG header of side x side px whose pixel data is a few bytes: what a decompression bomb
    looks like until it is decoded (this one would not even decode: the header must refuse it)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b""))


def small_png() -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((40, 50, 3), 90, np.uint8))[1].tobytes()


class FakeIdentifier:
    classifier = SimpleNamespace(class_names=["0 A 5 mg"])

    def __call__(self, rgb, top_k=5):
        return Answer(width=rgb.shape[1], height=rgb.shape[0])

    def reference(self, class_index, side="front"):
        return None


@pytest.fixture()
def client():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fedray.pill.identify.serve import create_app

    return TestClient(create_app(FakeIdentifier()))


def test_a_decompression_bomb_upload_is_refused_from_its_header(client):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reply = client.post("/api/identify", content=bomb_png(),
                        headers={"Content-Type": "image/png", "X-Filename": "bomb.png"})
    assert reply.status_code == 413, reply.text
    assert reply.json() == {"error": f"bomb.png: 256 megapixels is over the "
                                     f"{MAX_PIXELS / 1e6:.0f} megapixel limit; scale the photo "
                                     "down"}
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100  # nothing decoded (16000 x 16000 x 3 would be 768 MB)
    ok = client.post("/api/identify", content=small_png(), headers={"Content-Type": "image/png"})
    assert ok.status_code == 200 and ok.json()["found"] == []


def test_a_local_photo_has_the_pixel_cap_but_not_the_upload_byte_cap(tmp_path):
    big = tmp_path / "big.png"  # a valid PNG, then padding past the upload cap
    big.write_bytes(small_png() + b"\x00" * (MAX_UPLOAD_BYTES + 2**20))
    assert read_photo(big).shape == (40, 50, 3)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(9_000))
    with pytest.raises(PhotoError, match="81 megapixels is over the") as refused:
        read_photo(bomb)
    assert refused.value.status == 413


def test_a_local_bomb_is_one_line_before_the_models_load(tmp_path, capsys, monkeypatch):
    from fedray.pill.identify import app
    from fedray.pill.identify.cli import main

    monkeypatch.setattr(app, "load_identifier", lambda *a, **k: pytest.fail("models loaded"))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    assert main(["identify", str(bomb), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedray: error: {bomb}: 256 megapixels is over the "
                   f"{MAX_PIXELS / 1e6:.0f} megapixel limit; scale the photo down"]


@pytest.mark.parametrize(("method", "url", "status", "says"), [
    ("get", "/nowhere", 404, "Not Found"),
    ("get", "/api/identify", 405, "Method Not Allowed"),
    ("get", "/api/reference/abc/front.png", 422, "class_index: "),
    ("get", "/api/reference/0/front.png", 404, "no reference pictures"),
    ("post", "/api/identify", 415, "is not an image type"),
])
def test_every_api_error_is_one_error_key(client, method, url, status, says):
    reply = getattr(client, method)(url)
    assert reply.status_code == status
    body = reply.json()
    assert list(body) == ["error"] and says in body["error"], body
    assert isinstance(body["error"], str) and "\n" not in body["error"]


def test_a_failed_export_leaves_no_half_written_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import torch
    import yaml

    from fedray.fl.checkpoint import CHECKPOINT
    from fedray.pill.identify import classifier, detector, export

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"stage": "federated"}))
    (run / CHECKPOINT).write_bytes(b"")
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"checked by the stand-in below")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    monkeypatch.setattr(classifier, "load_classifier", lambda *a, **k: classifier.Classifier(
        model, list("abcd"), 8, str(tmp_path)))
    monkeypatch.setattr(export, "load_images", lambda root, split: np.zeros((4, 8, 8, 3),
                                                                            np.uint8))
    monkeypatch.setattr(detector, "load_detector_weights", lambda path: object())

    def broken(*args, **kwargs):
        raise RuntimeError("ONNX detector differs from torch")

    monkeypatch.setattr(export, "export_detector", broken)
    out = tmp_path / "export"
    out.mkdir()
    (out / "export.json").write_text("the last good export")
    with pytest.raises(RuntimeError, match="detector differs"):
        export.export_run(run, weights, out)
    assert [p.name for p in out.iterdir()] == ["export.json"]  # no classifier.onnx, no scratch
    assert (out / "export.json").read_text() == "the last good export"
    monkeypatch.setattr(export, "export_detector", lambda *a, **k: pytest.fail("detector"))
    monkeypatch.setenv("FEDRAY_CACHE", str(tmp_path / "no-detector-here"))
    report = export.export_run(run, None, out)  # no detector in the cache: the classifier alone
    assert sorted(p.name for p in out.iterdir()) == ["classifier.onnx", "export.json"]
    assert report["classifier"] == str(out / "classifier.onnx")
