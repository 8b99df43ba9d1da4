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


def hdr_rle(width: int, height: int) -> bytes:
    """A Radiance HDR of one colour, run-length coded (~16 px a byte): OpenCV decodes it to float
    (12 B a pixel) and PIL cannot size it, so only refusing it from its header keeps it small."""
    head = f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {height} +X {width}\n".encode()
    runs = bytearray()
    for comp in (128, 128, 128, 129):  # r, g, b, exponent
        left = width
        while left:
            n = min(127, left)
            runs += bytes([128 + n, comp])
            left -= n
    return head + (bytes([2, 2, width >> 8, width & 255]) + bytes(runs)) * height


FORMATS = "(JPEG, PNG, BMP, WebP, TIFF)"


def test_a_format_pil_cannot_size_is_refused_before_it_is_decoded(client, monkeypatch):
    import cv2

    from fedray.pill.identify.app import decode_photo

    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded before it was sized"))
    bomb = hdr_rle(8000, 7000)  # 3.4 MB for 56 MP, ~800 MB of float once decoded
    with pytest.raises(PhotoError) as refused:
        decode_photo(bomb, "bomb.hdr")
    assert refused.value.status == 415
    assert str(refused.value) == f"bomb.hdr: not an image that can be read {FORMATS}"
    reply = client.post("/api/identify", content=bomb,
                        headers={"Content-Type": "image/vnd.radiance", "X-Filename": "bomb.hdr"})
    assert reply.status_code == 415
    assert reply.json() == {"error": f"bomb.hdr: not an image that can be read {FORMATS}"}


def test_only_the_named_formats_are_decoded():
    import io

    from PIL import Image

    from fedray.pill.identify.app import decode_photo

    for fmt in ("JPEG", "MPO", "PNG", "BMP", "WEBP", "TIFF"):
        buf = io.BytesIO()
        Image.new("RGB", (30, 20), (200, 10, 10)).save(buf, fmt)
        assert decode_photo(buf.getvalue(), fmt).shape == (20, 30, 3), fmt
    for fmt in ("GIF", "PPM"):  # OpenCV reads these, the docs do not name them: refused
        buf = io.BytesIO()
        Image.new("RGB", (30, 20)).save(buf, fmt)
        with pytest.raises(PhotoError, match=rf"^x: a {fmt} image; identify reads JPEG, PNG, "):
            decode_photo(buf.getvalue(), "x")


class Boom(FakeIdentifier):
    def __call__(self, rgb, top_k=5):
        raise RuntimeError("the model\nblew up")


def test_an_unexpected_failure_is_one_json_line_and_its_trace_goes_to_the_log(lines):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fedray.pill.identify.serve import create_app

    reply = TestClient(create_app(Boom()), raise_server_exceptions=False).post(
        "/api/identify", content=small_png(),
        headers={"Content-Type": "image/png", "X-Filename": "boom.png"})
    assert reply.status_code == 500
    assert reply.json() == {"error": "boom.png: internal error while identifying the photo "
                                     "(RuntimeError); the server's log has the details"}
    assert "fedray serve: identifying boom.png failed" in lines


def test_any_other_failure_is_a_json_500(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fedray.pill.identify.serve import create_app

    broken = FakeIdentifier()
    broken.reference = lambda i, side="front": tmp_path / "gone.png"  # cv2.imread -> None
    reply = TestClient(create_app(broken), raise_server_exceptions=False).get(
        "/api/reference/0/front.png")
    assert reply.status_code == 500
    assert list(reply.json()) == ["error"] and "internal error" in reply.json()["error"]


def test_the_models_run_off_the_event_loop():
    pytest.importorskip("fastapi")
    import asyncio

    from fastapi.testclient import TestClient

    from fedray.pill.identify.serve import create_app

    loops = []

    class Where(FakeIdentifier):
        def __call__(self, rgb, top_k=5):
            try:
                loops.append(asyncio.get_running_loop())
            except RuntimeError:  # a worker thread: the page and other requests stay served
                loops.append(None)
            return super().__call__(rgb, top_k)

    reply = TestClient(create_app(Where())).post("/api/identify", content=small_png(),
                                                 headers={"Content-Type": "image/png"})
    assert reply.status_code == 200 and loops == [None]


def test_the_page_shows_a_reply_that_is_not_json_instead_of_hanging(tmp_path):
    """The page's own script under node, with a stand-in DOM and fetch."""
    import shutil
    import subprocess

    from fedray.pill.identify.serve import PAGE

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this machine to run the page's script")
    script = PAGE.split("<script>")[1].split("</script>")[0]
    stub = """
const els={};
function el(){return {textContent:'',innerHTML:'',classList:{add(){},remove(){}},
  addEventListener(){},removeAttribute(){},insertAdjacentHTML(){},files:[]};}
globalThis.document={getElementById:id=>els[id]||(els[id]=el()),
  querySelector:q=>els[q]||(els[q]=el())};
let reply;
globalThis.fetch=async()=>reply();
"""
    check = """
(async()=>{
  reply=()=>({ok:false,status:500,json:async()=>{throw new SyntaxError('not JSON');}});
  await send({name:'a.png',type:'image/png'});
  console.log(JSON.stringify([els.error.textContent,els.status.textContent]));
  reply=()=>{throw new TypeError('Failed to fetch');};
  await send({name:'a.png',type:'image/png'});
  console.log(JSON.stringify([els.error.textContent,els.status.textContent]));
})();
"""
    page_js = tmp_path / "page.js"
    page_js.write_text(stub + script + check)
    out = subprocess.run([node, str(page_js)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ['["error 500",""]', '["the server did not answer",""]']


@pytest.mark.parametrize(("sent", "shown"), [
    ("my%20notes.txt", "my notes.txt"),
    ("a%0Ab%1B%5B31m.txt", "ab[31m.txt"),  # no newline or terminal escape reaches the message
    ("x" * 300, "x" * 120),
    ("", "upload"),
])
def test_the_file_name_is_decoded_cleaned_and_capped(client, sent, shown):
    reply = client.post("/api/identify", content=b"hello",
                        headers={"Content-Type": "text/plain", "X-Filename": sent})
    assert reply.status_code == 415
    assert reply.json() == {"error": f"{shown}: text/plain is not an image type"}


def test_content_types_are_matched_in_any_case(client):
    for kind in ("IMAGE/PNG", "Image/Png", "Application/Octet-Stream"):
        reply = client.post("/api/identify", content=small_png(), headers={"Content-Type": kind})
        assert reply.status_code == 200, (kind, reply.text)


def test_a_corrupt_photo_is_one_line_and_opencv_keeps_its_log_level(tmp_path, capfd,
                                                                     monkeypatch):
    import io

    import cv2
    from PIL import Image

    from fedray.pill.identify import app
    from fedray.pill.identify.cli import main

    monkeypatch.setattr(app, "load_identifier", lambda *a, **k: pytest.fail("models loaded"))
    tiff, bmp = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (20, 10)).save(tiff, "TIFF")
    Image.new("RGB", (20, 10)).save(bmp, "BMP")
    png = small_png()
    idat = png.index(b"IDAT") + 8
    broken = {  # refused by PIL, or sized by it and then logged about by OpenCV or libpng
        "short.png": b"\x89PNG\r\n\x1a\nbroken",
        "idat.png": png[:idat] + bytes([png[idat] ^ 0xFF]) + png[idat + 1:],
        "cut.tif": tiff.getvalue()[:len(tiff.getvalue()) // 2],
        "cut.bmp": bmp.getvalue()[:60],
    }
    for name, data in broken.items():
        (tmp_path / name).write_bytes(data)
    level = cv2.utils.logging.getLogLevel()
    with pytest.raises(PhotoError):  # the server's decode: OpenCV's own log silenced too
        app.decode_photo(broken["cut.tif"], "cut.tif")
    assert capfd.readouterr().err == ""
    paths = [str(tmp_path / n) for n in broken]
    assert main(["identify", *paths, "--out", str(tmp_path / "out")]) == 2
    assert capfd.readouterr().err.splitlines() == [
        f"fedray: error: {p}: not an image that can be read {FORMATS}" for p in paths]
    assert cv2.utils.logging.getLogLevel() == level
