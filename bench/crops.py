"""The classifier on the same held-out phone photos, cut three ways: size class, true box, detector.

    python bench/crops.py --run outputs/pill_noniid/<ts> [--run ANOTHER_RUN ...]
                          [--detector PATH] [--per-pill 10] [--seed 0]

For every pill of the first run's catalog, `--per-pill` one-pill phone photos (the consumer
photos' look, drawn fresh: fedray.pill.identify.photos.one_pill_photos) are cut into the
classifier's crop three ways (fedray.pill.consumer.photo_crop, what `data.crop_with` chooses):

* `size_class`: the source recipe's centre crop by the pill's size class;
* `truth`: a square around the pill's true box (padded as identify pads a box);
* `detector`: the same square around the trained detector's most confident box (the size-class
  crop when it finds nothing) -- the crop identify cuts from a photo.

Prints, per run (a classifier trained on one kind of crop), the top-1 accuracy of each way on the
same photos, and the detector's share of photos with a pill found and its mean IoU with the true
box. Compare a run trained with `data.crop_with=size_class` against one with
`data.crop_with=detector`. Printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True,
                        help="a classifier's run directory (repeat to compare runs)")
    parser.add_argument("--detector", help="detector weights (default: latest stage=detect)")
    parser.add_argument("--per-pill", type=int, default=10, help="photos per pill")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from fedray.pill.consumer import CROP_WITH, photo_crop
    from fedray.pill.detect import latest_detector
    from fedray.pill.identify.classifier import load_classifier
    from fedray.pill.identify.detector import Detector
    from fedray.pill.identify.photos import one_pill_photos

    clfs = [load_classifier(run, onnx=False) for run in args.run]
    first = clfs[0]
    if any(c.class_names != first.class_names or c.image_size != first.image_size for c in clfs):
        raise SystemExit("every --run must know the same pills at the same crop size")
    det_pt = args.detector or str(latest_detector())
    detect = Detector(det_pt)
    t0 = time.perf_counter()
    photos = one_pill_photos(first.data_root, args.per_pill, first.image_size, args.seed)
    print(f"{len(photos)} photos ({args.per_pill} per pill, {len(first.class_names)} pills, "
          f"{photos[0][0].image.shape[0]} px, seed {args.seed}) in {time.perf_counter() - t0:.1f}s;"
          f" detector {det_pt} at {detect.imgsz} px")

    crops = {way: [] for way in CROP_WITH}
    ious = []
    for photo, length in photos:
        for way in CROP_WITH:
            crop, iou = photo_crop(photo.image, photo.boxes[0], length, first.image_size, way,
                                   detect)
            crops[way].append(crop)
            if way == "detector":
                ious.append(iou)
    truth = np.array([p.classes[0] for p, _ in photos])
    found = np.array(ious) > 0
    print(f"detector: a pill found in {found.mean():.1%} of photos; IoU with the true box "
          f"mean {np.mean(np.array(ious)[found]):.3f}, below 0.5 in "
          f"{(np.array(ious)[found] < 0.5).mean():.1%} of those")
    print(f"{'run (trained on)':<48} " + " ".join(f"{w:>11}" for w in CROP_WITH))
    for run, clf in zip(args.run, clfs, strict=True):
        trained_on = _trained_on(clf.data_root)
        accs = [float((clf.probabilities(np.stack(crops[w])).argmax(1) == truth).mean())
                for w in CROP_WITH]
        label = f"{os.path.basename(os.path.normpath(run))} ({trained_on})"
        print(f"{label:<48} " + " ".join(f"{a:>11.1%}" for a in accs))


def _trained_on(data_root: str) -> str:
    import json

    meta = json.loads(open(os.path.join(data_root, "meta.json")).read())
    return (meta.get("consumer_cropping") or {}).get("crop_with", "size_class")


if __name__ == "__main__":
    main()
