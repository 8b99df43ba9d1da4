"""The pill detector's figures: training speed, inference latency per 640 px photo, AP.

    python bench/detect.py                                    # model from its YAML, random weights
    python bench/detect.py --detector ~/.cache/fedray/detector-<hash>   # a trained stage=detect
    python bench/detect.py --scenes PATH/detection --train-steps 5 --threads 2
    python bench/detect.py --detector ... --eval PATH/detection --sides 320,384,416  # side sweep

Printed, not asserted:
* training: ms per image and images/s of SGD steps (forward, loss, backward, update) on batches
  of `--scenes` (the synthetic YOLO scenes; random boxes when none are given), at the side the
  detector was trained at (`--imgsz` for a model from its YAML);
  with `--detector`, also the stage's own per-epoch time and images/s from its metrics.json;
* inference: latency of one 640 px photo through ultralytics' predict (letterbox, forward, NMS)
  on `--threads` CPU threads, p50 and p95 over `--repeats` photos after a warm-up, at the side
  stage=detect serves it at (`--imgsz` to choose another);
* AP: AP50, AP at IoU 0.8, mAP50-95, P, R of the detector on its synthetic val scenes (from the
  cache entry's metrics.json), and on `--eval PATH` (any YOLO folder, the scenes' `detection/`
  too) when given, at each of `--sides` (default: the served side) with the latency there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedray.pill.detect.offline import load_ultralytics  # noqa: E402


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def photos(scenes: Path | None, n: int, size: int) -> list[np.ndarray]:
    """`n` BGR photos of `size` px: the scenes' val images, else random texture-like noise."""
    import cv2

    if scenes is not None:
        files = sorted((scenes / "images" / "val").glob("*.jpg")) or sorted(
            (scenes / "images" / "train").glob("*.jpg"))
        imgs = [cv2.imread(str(p)) for p in files[:n]]
        return [cv2.resize(i, (size, size)) for i in imgs if i is not None]
    rng = np.random.default_rng(0)
    return [cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3), np.uint8), (0, 0), 3)
            for _ in range(n)]


def inference_latency(model, imgs: list[np.ndarray], imgsz: int, warmup: int = 2) -> list[float]:
    """Seconds per photo through model.predict (pre-process, forward, NMS), one photo a call."""
    for img in imgs[:warmup]:
        model.predict(img, imgsz=imgsz, device="cpu", verbose=False)
    out = []
    for img in imgs:
        t0 = time.perf_counter()
        model.predict(img, imgsz=imgsz, device="cpu", verbose=False)
        out.append(time.perf_counter() - t0)
    return out


def train_speed(model_yaml: str, imgsz: int, batch: int, steps: int) -> float:
    """Seconds per image of SGD steps on the detector's own loss (random images, one box each)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(model_yaml, nc=1, verbose=False)
    model.args = type("A", (), {"box": 7.5, "cls": 0.5, "dfl": 1.5})()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.rand(batch, 3, imgsz, imgsz)
    target = {
        "img": x,
        "batch_idx": torch.arange(batch, dtype=torch.float32),
        "cls": torch.zeros(batch, 1),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.15]]).repeat(batch, 1),
    }

    def step() -> None:
        loss, _ = model.loss(target)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / (steps * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", type=Path, help="a detector-<hash> cache entry")
    parser.add_argument("--model", default="yolov3-tinyu.yaml", help="model YAML (no --detector)")
    parser.add_argument("--scenes", type=Path, help="a YOLO scenes folder (detection/)")
    parser.add_argument("--eval", type=Path, help="a YOLO folder to score the detector on")
    parser.add_argument("--imgsz", type=int, help="inference side (default: the served side)")
    parser.add_argument("--sides", help="comma-separated sides to score --eval at")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    load_ultralytics()
    from ultralytics import YOLO

    from fedray.pill.detect.train import METRICS, WEIGHTS, model_yaml
    from fedray.pill.identify.detector import weights_imgsz

    yaml_path = str(model_yaml(args.model))
    weights = args.detector / WEIGHTS if args.detector else None
    model = YOLO(str(weights) if weights else yaml_path, task="detect")
    side = args.imgsz or (weights_imgsz(model) if weights else 640)
    train_side = int(model.overrides.get("imgsz") or side) if weights else side
    print(f"detector: {weights or yaml_path} ({'trained' if weights else 'random weights'}); "
          f"{args.threads} threads, torch {torch.__version__}")

    sec = train_speed(yaml_path, train_side, args.batch, args.train_steps)
    print(f"train step  @{train_side}px batch {args.batch}: {sec * 1000:8.1f} ms/image "
          f"({1 / sec:6.2f} images/s)")
    metrics = args.detector / METRICS if args.detector else None
    m = json.loads(metrics.read_text()) if metrics and metrics.is_file() else None
    if m:
        print(f"stage=detect training: {m['epochs']} epochs, {m['epoch_s']:.1f} s/epoch, "
              f"{m['train_images_per_s']:.2f} images/s, {m['train_s']:.0f} s in all, "
              f"{m['train_scenes']} scenes")

    imgs = photos(args.scenes, args.repeats, 640)
    sides = [int(x) for x in args.sides.split(",")] if args.sides else [side]
    for sz in dict.fromkeys([side, *sides]):
        lat = inference_latency(model, imgs, sz)
        print(f"inference @640px photo -> {sz}px: p50 {percentile(lat, 50) * 1000:.1f} ms, "
              f"p95 {percentile(lat, 95) * 1000:.1f} ms, mean {statistics.mean(lat) * 1000:.1f} "
              f"ms ({len(lat)} photos)")

    if m:
        print(f"synthetic val at {m.get('imgsz', train_side)}px: AP50 {m['AP50']:.4f}  "
              f"AP80 {m['AP80']:.4f}  mAP50-95 {m['mAP50-95']:.4f}  P {m['precision']:.4f}  "
              f"R {m['recall']:.4f}")
    if args.eval:
        if weights is None:
            sys.exit("--eval needs --detector")
        from fedray.pill.detect.evaluate import evaluate, prepare_eval_folder

        with tempfile.TemporaryDirectory() as tmp:
            data_yaml, n_img, n_box = prepare_eval_folder(args.eval, "val", Path(tmp) / "data")
            for sz in sides:
                e = evaluate(weights, data_yaml, Path(tmp) / "out", sz, args.batch, "cpu", 0)
                print(f"{args.eval} ({n_img} photos, {n_box} pills) at {sz}px: "
                      f"AP50 {e['AP50']:.4f}  AP80 {e['AP80']:.4f}  mAP50-95 {e['mAP50-95']:.4f}  "
                      f"P {e['precision']:.4f}  R {e['recall']:.4f}")


if __name__ == "__main__":
    main()
