"""`fedray export RUN_DIR`: both models to ONNX, checked against torch, profiled for a phone.

The classifier is exported with torch.onnx (opset recorded beside it) and its onnxruntime logits
are compared with torch's on the run's val crops; the detector goes through ultralytics' own ONNX
export. The profile lists, per model: parameters, MACs, file size, CPU latency p50/p95 at batch
1 (onnxruntime, the threads given) and the process's memory growth while it runs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fedray.data.datasets import load_images, to_tensor_batch
from fedray.distill.profile import count_macs

log = logging.getLogger("fedray")
OPSET = 17
PARITY_ATOL = 1e-4
# the detector's raw output holds box centres and sides in pixels (up to its input side) beside
# scores in [0, 1]: its tolerance is relative to the largest value
DETECTOR_RTOL = 1e-4
EXPORT_DIR = "export"
CLASSIFIER_ONNX = "classifier.onnx"


def export_classifier(model: torch.nn.Module, image_size: int, path: Path) -> Path:
    """Write the classifier as ONNX (batch dimension dynamic) at `path`."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():  # the views read the crop's size as ints on purpose: the
        # exported graph takes crops of this one size, as identify feeds it
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return path


def onnx_session(path: Path, threads: int = 2):
    """An onnxruntime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity(model: torch.nn.Module, session, images: np.ndarray) -> float:
    """Max |logit difference| between torch and onnxruntime over `images` (uint8 NHWC)."""
    x = to_tensor_batch(images).contiguous()
    with torch.inference_mode():
        want = model(x).float().numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    return float(np.abs(want - got).max())


def latency(fn, repeats: int = 50, warmup: int = 5) -> tuple[float, float]:
    """p50 and p95 of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def profile_row(name: str, params: int, macs: int, path: Path, run) -> dict:
    """One profile row: the model's size and what running it costs."""
    before = _rss_mb()
    p50, p95 = latency(run)
    return {
        "model": name,
        "params": params,
        "macs": macs,
        "file_mb": path.stat().st_size / 2**20,
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "memory_mb": max(0.0, _rss_mb() - before),
    }


def format_profile(rows: list[dict]) -> str:
    """The profile as an aligned text table."""
    head = f"{'model':<12} {'params':>10} {'MACs':>12} {'file MB':>8} {'p50 ms':>8} " \
           f"{'p95 ms':>8} {'mem MB':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<12} {r['params']:>10,} {r['macs']:>12,} {r['file_mb']:>8.2f} "
                     f"{r['latency_p50_ms']:>8.2f} {r['latency_p95_ms']:>8.2f} "
                     f"{r['memory_mb']:>7.1f}")
    return "\n".join(lines)


def export_run(run_dir: str | Path, detector: str | Path | None = None,
               out: str | Path | None = None, threads: int = 2) -> dict:
    """Export the run's classifier (and the detector, when one is found), check, profile, print.

    Every input (the run, the detector's weights) is checked before anything is written, and the
    files are made in a scratch folder inside the output folder and moved into place only once
    all of them are checked: a failure leaves what was there before, never a half-written file.
    """
    from fedray.config import ConfigError
    from fedray.pill.identify.app import latest_detector
    from fedray.pill.identify.classifier import find_run_dir
    from fedray.pill.identify.detector import load_detector_weights

    run_dir = find_run_dir(run_dir)
    yolo = det_path = None
    if detector is not None:
        det_path = Path(detector).expanduser()
    else:
        try:
            det_path = latest_detector()
        except ConfigError as exc:
            log.warning("no detector exported: %s", exc)
    if det_path is not None:
        if det_path.suffix.lower() == ".onnx":
            raise ConfigError(f"--detector {det_path}: already ONNX; export takes the detector's "
                              "weights.pt (from stage=detect)")
        yolo = load_detector_weights(det_path)  # a ConfigError naming it, before any write
    out_dir = Path(out) if out else run_dir / EXPORT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as scratch:
        report = _export_into(Path(scratch), run_dir, det_path, yolo, threads)
        for key in ("classifier", "detector"):
            if key in report:
                report[key] = str(out_dir / Path(report[key]).name)
        (Path(scratch) / "export.json").write_text(json.dumps(report, indent=2))
        for name in (CLASSIFIER_ONNX, "detector.onnx", "export.json"):
            if (Path(scratch) / name).exists():
                os.replace(Path(scratch) / name, out_dir / name)
    print(format_profile(report["profile"]))
    print(f"classifier ONNX (opset {OPSET}) max |torch - onnxruntime| logit: "
          f"{report['classifier_max_abs_diff']:.2e}")
    if "detector" in report:
        print(f"detector ONNX at {report['detector_imgsz']} px: max |torch - onnxruntime| "
              f"{report['detector_max_abs_diff']:.2e} ({report['detector_max_rel_diff']:.1e} of "
              "the largest output)")
    print(f"exported to {out_dir.resolve()}")
    return report


def _export_into(folder: Path, run_dir: Path, det_path: Path | None, yolo,
                 threads: int) -> dict:
    """Both models' ONNX files, checked and profiled, written into `folder`; the report."""
    from fedray.pill.identify.classifier import load_classifier

    clf = load_classifier(run_dir, calibrate=False, onnx=False)
    size = clf.image_size
    path = export_classifier(clf.model, size, folder / CLASSIFIER_ONNX)
    session = onnx_session(path, threads)
    val = np.asarray(load_images(clf.data_root, "val")[:64])
    max_diff = parity(clf.model, session, val)
    if max_diff > PARITY_ATOL:
        raise RuntimeError(
            f"ONNX classifier differs from torch by {max_diff:.2e} (> {PARITY_ATOL})"
        )
    example = to_tensor_batch(val[:1]).contiguous()
    feed = {"images": example.numpy()}
    rows = [profile_row("classifier", sum(p.numel() for p in clf.model.parameters()),
                        count_macs(clf.model, size), path, lambda: session.run(None, feed))]
    report = {"opset": OPSET, "classifier": str(path), "classifier_max_abs_diff": max_diff}
    if det_path is not None:
        rows.append(export_detector(det_path, folder, report, threads, yolo=yolo))
    report["profile"] = rows
    return report


def export_detector(det_path: Path, out_dir: Path, report: dict, threads: int,
                    yolo=None) -> dict:
    """ultralytics' ONNX export of the detector (at the side identify serves it at), checked against
    torch on a scene-like input, and its profile row (`yolo`: det_path already loaded)."""
    import shutil

    from fedray.pill.identify.detector import load_detector_weights, weights_imgsz

    if yolo is None:
        yolo = load_detector_weights(det_path)
    imgsz = weights_imgsz(yolo)  # the side identify runs it at
    net = yolo.model.eval()
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, imgsz, imgsz, generator=gen)  # zeros would leave no boxes to check
    params = sum(p.numel() for p in net.parameters())
    macs = count_macs(net, imgsz)
    onnx_src = Path(yolo.export(format="onnx", imgsz=imgsz, opset=OPSET, simplify=False,
                                dynamic=False, device="cpu", verbose=False))
    path = out_dir / "detector.onnx"
    shutil.copyfile(onnx_src, path)
    onnx_src.unlink()  # ultralytics writes it beside the weights: keep the cache entry as it was
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    feed = {name: example.numpy()}
    with torch.inference_mode():
        want = net(example)
    want = (want[0] if isinstance(want, (tuple, list)) else want).float().numpy()
    got = session.run(None, feed)[0]
    diff = float(np.abs(want - got).max())
    scale = float(np.abs(want).max())
    report["detector"] = str(path)
    report["detector_imgsz"] = imgsz
    report["detector_max_abs_diff"] = diff
    report["detector_max_rel_diff"] = diff / max(scale, 1e-12)
    if diff > DETECTOR_RTOL * max(scale, 1.0):
        raise RuntimeError(f"ONNX detector differs from torch by {diff:.2e} on outputs up to "
                           f"{scale:.1f} (> {DETECTOR_RTOL} of them)")
    return profile_row(f"detector@{imgsz}", params, macs, path,
                       lambda: session.run(None, feed))
