"""Identify end to end on 2 CPU cores: latency per 640x480 photo with 1 and 8 pills, torch vs ONNX.

    python bench/identify.py --run outputs/pill_noniid/<ts> [--detector PATH] [--photos 20]

Needs a trained classifier run and detector (`python launch.py +experiment=pill_noniid`,
`python launch.py +experiment=pill_detect stage=detect`); the ONNX rows need `fedray export RUN`.
Also prints, on held-out square photos of 1, 4 and 8 pills drawn fresh from the run's catalog (per
seed: each seed draws its own 16 surfaces, and one pill-like surface moves a seed's figure by
several points), the share of photos in which every pill is found and named right and the share
of pills named right: through the detector, through the detector without weighing names by the
pills' sizes, through the detector keeping every box (no background dismissal), and through
the photos' true boxes (the classifier alone, same crops' recipe) -- the gap is what detection
costs. Prints p50/p95 over the photos, per backend.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("--imgsz", type=int, default=None,
                        help="the detector's side (default: the one its weights were served "
                             "at); skips the ONNX rows")
    parser.add_argument("--seeds", default="23,31,41",
                        help="seeds of the held-out accuracy photos (each its own surfaces)")
    parser.add_argument("--tilt", type=float, default=0.0,
                        help="held-out photos from a camera held at an angle (e.g. 0.25)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from fedray.pill.crops import CROP_PAD, crop_boxes, xyxy_to_yolo
    from fedray.pill.identify.app import latest_detector
    from fedray.pill.identify.classifier import load_classifier
    from fedray.pill.identify.detector import Detector
    from fedray.pill.identify.photos import synthetic_photos
    from fedray.pill.identify.pipeline import (
        SURE_SCORE,
        Answer,
        identify,
        match_truth,
        merge_pieces,
        name_boxes,
        photo_correct,
    )

    det_pt = args.detector or str(latest_detector())
    export = os.path.join(args.run, "export")
    backends = {"torch": (load_classifier(args.run, onnx=False), Detector(det_pt, args.imgsz))}
    # an exported detector has its side fixed in the graph: no ONNX rows at another side
    if os.path.exists(os.path.join(export, "classifier.onnx")) and args.imgsz is None:
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
    # accuracy: the same held-out photos through the detector (with and without dismissing
    # uncertain background boxes) and through their true boxes (the classifier alone); square
    # photos so no pill is cut by the frame; each seed draws its own 16 surfaces
    clf, det = backends["torch"]
    kept_all = dataclasses.replace(clf, energy_floor=float("-inf"))
    no_sizes = dataclasses.replace(clf, sizes=None)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"\nheld-out photos: {args.photos} per seed and pill count, seeds {seeds}"
          f"{f', camera tilt {args.tilt}' if args.tilt else ''}; "
          f"energy floor {clf.energy_floor:.2f}, detector scores < {SURE_SCORE} may be dismissed")
    print("pills seed photos   every pill found+named                         pills named right")
    print("                    detector  no sizes  no dismissal  true boxes    detector  "
          "true boxes  dismissed")
    for pills in (1, 4, 8):
        pooled = np.zeros(7)
        for seed in seeds:
            row = np.zeros(7)  # photos ok x4, pills ok x2, boxes dismissed
            photos = synthetic_photos(clf0.data_root, args.photos, pills, seed=seed,
                                      tilt=args.tilt)
            for p in photos:
                h, w = p.image.shape[:2]
                cx, cy, bw, bh = p.boxes.T
                xyxy = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                                 (cy + bh / 2) * h], 1).astype(np.float32)
                # detected once and each box set classified once; named with and without
                # the size weighing and the background dismissal
                det_boxes, det_scores = det(p.image)
                read = [(b, sc, *clf.scores(crop_boxes(p.image, xyxy_to_yolo(b, w, h),
                                                        clf.image_size, CROP_PAD)))
                        for b, sc in ((det_boxes, det_scores), (xyxy, np.ones(len(xyxy))))]
                read[0] = merge_pieces(p.image, *read[0], clf)  # the detector's pieces joined
                named = [name_boxes(*read[i], c, side=max(w, h))
                         for i, c in ((0, clf), (0, no_sizes), (0, kept_all), (1, clf))]
                answers = [Answer(found, dismissed=gone) for found, gone, _ in named]
                gated = answers[0]
                row[:4] += [photo_correct(a, xyxy, p.classes) for a in answers]
                row[4:6] += [match_truth(a, xyxy, p.classes)[0] for a in (gated, answers[3])]
                row[6] += len(gated.dismissed)
            pooled += row
            _print_row(pills, str(seed), len(photos), pills * len(photos), row)
        if len(seeds) > 1:
            _print_row(pills, "all", len(seeds) * args.photos, pills * len(seeds) * args.photos,
                       pooled)


def _print_row(pills: int, seed: str, n: int, k: int, row: np.ndarray) -> None:
    print(f"{pills:>5} {seed:>4} {n:>6}   {row[0] / n:>8.1%}  {row[1] / n:>8.1%}  "
          f"{row[2] / n:>12.1%}  {row[3] / n:>10.1%}    {row[4] / k:>8.1%}  {row[5] / k:>10.1%}  "
          f"{int(row[6]):>9}")


if __name__ == "__main__":
    main()
