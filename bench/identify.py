"""Identify end to end on 2 CPU cores: latency per 640x480 photo with 1 and 8 pills, torch vs ONNX.

    python bench/identify.py --run outputs/pill_noniid/<ts> [--detector PATH] [--photos 20]

Needs a trained classifier run and detector (`python launch.py +experiment=pill_noniid`,
`python launch.py +experiment=pill_detect stage=detect`); the ONNX rows need `fedray export RUN`.
Also prints, on held-out square photos of 1, 4 and 8 pills drawn fresh from the run's catalog, the
share of photos in which every pill is found and named right and the share of pills named right:
through the detector, and through the photos' true boxes (the classifier alone, same crops' recipe)
-- the gap is what detection costs. Prints p50/p95 over the photos, per backend.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the classifier's run directory")
    parser.add_argument("--detector", help="detector weights (default: latest stage=detect)")
    parser.add_argument("--photos", type=int, default=20, help="photos per configuration")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from fedray.pill.identify.app import latest_detector
    from fedray.pill.identify.classifier import load_classifier
    from fedray.pill.identify.detector import Detector
    from fedray.pill.identify.photos import synthetic_photos
    from fedray.pill.identify.pipeline import identify, match_truth, photo_correct

    det_pt = args.detector or str(latest_detector())
    export = os.path.join(args.run, "export")
    backends = {"torch": (load_classifier(args.run, onnx=False), Detector(det_pt))}
    if os.path.exists(os.path.join(export, "classifier.onnx")):
        onnx_det = os.path.join(export, "detector.onnx")
        backends["onnxruntime"] = (load_classifier(args.run, onnx=True),
                                   Detector(onnx_det if os.path.exists(onnx_det) else det_pt))
    clf0 = backends["torch"][0]
    print(f"{'backend':<12} {'pills':>5} {'p50 ms':>8} {'p95 ms':>8} {'detect':>8} {'classify':>9}")
    for pills in (1, 8):
        photos = synthetic_photos(clf0.data_root, args.photos, pills, seed=11, size=(640, 480))
        for name, (clf, det) in backends.items():
            identify(photos[0].image, det, clf)  # warm-up
            total, parts = [], []
            for p in photos:
                t = time.perf_counter()
                answer = identify(p.image, det, clf)
                total.append((time.perf_counter() - t) * 1e3)
                parts.append((answer.seconds["detect"] * 1e3, answer.seconds["classify"] * 1e3))
            d, c = np.median(np.array(parts), axis=0)
            print(f"{name:<12} {pills:>5} {np.percentile(total, 50):>8.1f} "
                  f"{np.percentile(total, 95):>8.1f} {d:>8.1f} {c:>9.1f}")
    # accuracy: the same held-out photos through the detector and through their true boxes
    # (the classifier alone), square photos so no pill is cut by the frame
    clf, det = backends["torch"]
    print("\npills photos   every pill found+named   pills named right")
    print("                 detector  true boxes   detector  true boxes")
    for pills in (1, 4, 8):
        photos = synthetic_photos(clf0.data_root, args.photos, pills, seed=23)
        photo_ok = {"detector": 0, "truth": 0}
        pill_ok = {"detector": 0, "truth": 0}
        for p in photos:
            h, w = p.image.shape[:2]
            cx, cy, bw, bh = p.boxes.T
            xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                             (cy + bh / 2) * h], 1).astype(np.float32)
            truth = lambda rgb, b=xyxy: (b, np.ones(len(b), np.float32))  # noqa: E731
            for name, fn in (("detector", det), ("truth", truth)):
                answer = identify(p.image, fn, clf)
                photo_ok[name] += photo_correct(answer, xyxy, p.classes)
                pill_ok[name] += match_truth(answer, xyxy, p.classes)[0]
        n, k = len(photos), sum(len(p.classes) for p in photos)
        d, t = photo_ok["detector"] / n, photo_ok["truth"] / n
        print(f"{pills:>5} {n:>6}   {d:>8.1%}  {t:>10.1%}"
              f"   {pill_ok['detector'] / k:>8.1%}  {pill_ok['truth'] / k:>10.1%}")

if __name__ == "__main__":
    main()
