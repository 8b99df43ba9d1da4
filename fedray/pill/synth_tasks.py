"""The synthetic build's chunk tasks and the texture pool the scene tasks share (fedray/pill/
runner.py runs them inline or as Ray tasks).

Each task is a top-level function of (spec, *shared) so Ray can ship it by reference; a spec
carries its chunk's seed, so a chunk computes the same bytes whichever worker runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedray.pill import consumer
from fedray.pill.catalog import Pill
from fedray.pill.compose import render_plan
from fedray.pill.compose_plan import plan_scene
from fedray.pill.compose_types import ComposeParams, PreparedCutout
from fedray.pill.crops import CROP_PAD, crop_boxes
from fedray.pill.render import render_reference
from fedray.pill.segment import SegmentationError, segment_reference
from fedray.pill.synth_plan import (
    REFERENCE_SIZE,
    SIDES,
    TEXTURE_SIZE,
    TEXTURES_PER_CHUNK,
    rng_for,
)
from fedray.pill.textures import (
    FAMILIES,
    bundled_textures,
    load_user_textures,
    make_textures,
    scene_textures,
)


def references_task(pills: list[Pill], seed: int) -> list[tuple[np.ndarray, ...]]:
    """Per pill and side: studio image, RGBA cut-out, and whether segmentation fell back."""
    out = []
    for pill in pills:
        for side in SIDES:
            img, gt = render_reference(pill, side, REFERENCE_SIZE, seed)
            try:
                cut, _ = segment_reference(img)
                fallback = False
            except SegmentationError:  # never seen on the catalog; the renderer's mask is exact
                ys, xs = np.nonzero(gt)
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                cut = np.dstack([img[y0:y1, x0:x1], gt[y0:y1, x0:x1].astype(np.uint8) * 255])
                fallback = True
            out.append((img, cut, fallback))
    return out


def textures_task(spec: tuple[int, int]) -> list[np.ndarray]:
    count, seed = spec
    return make_textures(count, TEXTURE_SIZE, seed, bundled=False)


def texture_pool(procedural: Iterator[tuple[list[np.ndarray], float]], backgrounds: str | None
                 ) -> tuple[list[np.ndarray], list[str], int, int]:
    """The scenes' textures: the procedural ones (textures_task results), the bundled ones, then
    those in data.backgrounds; each one's family; and how many were bundled and user-supplied."""
    textures: list[np.ndarray] = [x for out, _ in procedural for x in out]
    families = [list(FAMILIES)[i % TEXTURES_PER_CHUNK % len(FAMILIES)]
                for i in range(len(textures))]
    bundled = bundled_textures(TEXTURE_SIZE)
    user = (load_user_textures(str(Path(str(backgrounds)).expanduser()), TEXTURE_SIZE)
            if backgrounds is not None else [])
    textures += bundled + user
    families += ["bundled"] * len(bundled) + ["user"] * len(user)
    return textures, families, len(bundled), len(user)


def surfaces_task(spec: tuple[int, int]) -> list[np.ndarray]:
    """Scene-only surfaces (lined paper, palms, trays, ...) for the detection scenes."""
    count, seed = spec
    return scene_textures(count, TEXTURE_SIZE, seed)


def crop_scenes_task(spec: dict[str, Any], cutouts: list[PreparedCutout],
                     textures: list[np.ndarray], params: ComposeParams) -> np.ndarray:
    """Crops of every pill of every scene in spec['scenes'] (lists of cut-out ids), in order."""
    rng = rng_for(*spec["seed"])
    size, image_size = spec["scene_size"], spec["image_size"]
    out = []
    for scene in spec["scenes"]:
        bg = textures[int(rng.integers(len(textures)))]
        shown = render_plan(plan_scene(bg, [cutouts[c] for c in scene], rng, params, size),
                            num_threads=1)
        crops = crop_boxes(shown.image, shown.boxes, image_size, CROP_PAD)
        for i, c in enumerate(scene):
            box, tries = shown.boxes[i], 0
            # hidden entirely behind later pills: photograph it again on its own
            while box[2] <= 0 or box[3] <= 0:
                tries += 1
                if tries > 100:
                    raise RuntimeError(f"cut-out {c} stays invisible in a scene of its own")
                bg = textures[int(rng.integers(len(textures)))]
                alone = render_plan(plan_scene(bg, [cutouts[c]], rng, params, size), num_threads=1)
                box = alone.boxes[0]
                crops[i] = crop_boxes(alone.image, alone.boxes, image_size, CROP_PAD)[0]
        out.append(crops)
    return np.concatenate(out)


_DETECTORS: dict[str, Any] = {}  # per worker process: crop_with=detector loads it once


def consumer_task(spec: dict[str, Any], cutouts: list[PreparedCutout],
                  textures: list[np.ndarray], params: ComposeParams) -> (
        tuple[np.ndarray, list[float]]):
    """Consumer crops of every photo in spec['photos'] ((cut-out id, length mm, bg, count)),
    cut the spec['crop_with'] way; and each photo's crop-box IoU with the pill's true box."""
    rng = rng_for(*spec["seed"])
    augment = consumer.consumer_augmenter(int(rng.integers(2**31)))
    detect = None
    if spec["crop_with"] == "detector":
        from fedray.pill.identify.detector import Detector

        path = spec["crop_detector"]
        detect = _DETECTORS.get(path) or _DETECTORS.setdefault(path, Detector(path))
    parts = [consumer.consumer_crops(cutouts[c], length, textures[bg], count, spec["image_size"],
                                     rng, params, augment, spec["crop_with"], detect)
             for c, length, bg, count in spec["photos"]]
    return np.concatenate([crops for crops, _ in parts]), [iou for _, iou in parts]


def detection_task(spec: dict[str, Any], cutouts: list[PreparedCutout],
                   textures: list[np.ndarray], params: ComposeParams) -> list[tuple[bytes, str]]:
    """(JPEG bytes, YOLO label text) per scene in spec['scenes']."""
    rng = rng_for(*spec["seed"])
    out = []
    for scene in spec["scenes"]:
        bg = textures[int(rng.integers(len(textures)))]
        plan = plan_scene(bg, [cutouts[c] for c in scene], rng, params, spec["scene_size"])
        # the file itself is the JPEG round trip, at the plan's quality (95 when it has none)
        quality, plan.jpeg_quality = plan.jpeg_quality or 95, None
        shown = render_plan(plan, num_threads=1)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(shown.image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("cv2.imencode failed to write a detection scene")
        lines = [f"0 {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for cx, cy, w, h in shown.boxes.tolist()
                 if w > 0 and h > 0]
        out.append((buf.tobytes(), "\n".join(lines) + "\n" if lines else ""))
    return out
