"""Held-out multi-pill photos with ground truth: which pill is where, for identify's checks.

Drawn from a built synthetic dataset's catalog (the same pills the classifier knows), rendered by
the same compositor as the detector's scenes but from their own seed stream, on fresh textures,
so no photo here was seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray.pill import consumer
from fedray.pill.catalog import load_catalog
from fedray.pill.compose import render_plan
from fedray.pill.compose_plan import plan_scene
from fedray.pill.compose_types import ComposeParams, PreparedCutout, prepare_cutout
from fedray.pill.render import default_px_per_mm, render_reference
from fedray.pill.segment import segment_reference
from fedray.pill.synth_plan import REFERENCE_SIZE, SIDES
from fedray.pill.textures import FAMILIES, make_textures

PHOTO_SEED_STREAM = 7_000_001  # far from the build's seed streams


@dataclass
class Photo:
    """An RGB uint8 photo, its pills' YOLO boxes (k, 4) and their class indices (k,)."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


def synthetic_photos(
    data_root: str | Path,
    count: int,
    pills_per_photo: int = 4,  # >= 1; a photo without pills: empty_photo()
    seed: int = 0,
    size: tuple[int, int] = (640, 640),
    tilt: float = 0.0,
) -> list[Photo]:
    """`count` photos of `pills_per_photo` distinct catalog pills each, width x height `size`;
    `tilt` > 0: a camera held at an angle (the compositor's `tilt`: far pills look smaller).

    A non-square size is the centre of a square photo: pills cut by its edge are dropped from the
    ground truth when less than 4 px of them show (use it for timing, not for accuracy).
    """
    pills = load_catalog(Path(data_root) / "catalog.json")
    rng = np.random.default_rng([seed, PHOTO_SEED_STREAM])
    params = ComposeParams(
        max_pills=max(pills_per_photo, 1),
        cutout_px_per_mm=default_px_per_mm(REFERENCE_SIZE),
        blur_prob=0.15,
        tilt=tilt,
    )
    cutout = _Cutouts(pills, seed, params.shadow_blur)
    textures = make_textures(16, 512, seed=int(rng.integers(2**31)), bundled=False)
    width, height = size
    side = max(width, height)
    photos = []
    for _ in range(count):
        chosen = rng.choice(len(pills), size=min(pills_per_photo, len(pills)), replace=False)
        cuts = [cutout(c, SIDES[int(rng.integers(2))]) for c in chosen]
        bg = textures[int(rng.integers(len(textures)))]
        shown = render_plan(plan_scene(bg, cuts, rng, params, side))
        image, boxes = _crop_frame(shown.image, shown.boxes, width, height)
        keep = (boxes[:, 2] * width >= 4) & (boxes[:, 3] * height >= 4)  # visible in the frame
        photos.append(Photo(image, boxes[keep], np.asarray(chosen)[keep]))
    return photos


class _Cutouts:
    """The studio cut-out of a catalog pill's face, made once per (pill, face)."""

    def __init__(self, pills: list, seed: int, shadow_blur: float) -> None:
        self.pills, self.seed, self.blur, self.made = pills, seed, shadow_blur, {}

    def __call__(self, index: int, face: str) -> PreparedCutout:
        if (index, face) not in self.made:
            img, _ = render_reference(self.pills[index], face, REFERENCE_SIZE, self.seed)
            self.made[index, face] = prepare_cutout(segment_reference(img)[0], self.blur)
        return self.made[index, face]


def one_pill_photos(data_root: str | Path, per_pill: int, image_size: int, seed: int = 0) -> (
        list[tuple[Photo, float]]):
    """`per_pill` phone-like one-pill photos of every catalog pill (the consumer photos' look,
    fedray.pill.consumer), on fresh textures from their own seed stream: (photo, pill length mm).

    The photos the classifier's consumer crops are cut from, held out: for comparing the ways
    of cutting them (data.crop_with) on the same photos.
    """
    pills = load_catalog(Path(data_root) / "catalog.json")
    rng = np.random.default_rng([seed, PHOTO_SEED_STREAM, 1])
    params = consumer.consumer_params(default_px_per_mm(REFERENCE_SIZE))
    cutout = _Cutouts(pills, seed, params.shadow_blur)
    textures = make_textures(16, 512, seed=int(rng.integers(2**31)), bundled=False)
    families = [list(FAMILIES)[i % len(FAMILIES)] for i in range(len(textures))]
    size = consumer.photo_size(image_size)
    out = []
    for c, pill in enumerate(pills):
        for q, bg in enumerate(consumer.pick_backgrounds(families, per_pill, rng)):
            image, box = consumer.simulate_photo_box(cutout(c, SIDES[q % 2]), textures[bg], rng,
                                                     params, size)
            out.append((Photo(image, box[None].astype(np.float32), np.array([c])),
                        float(pill.size_mm[0])))
    return out


def _crop_frame(image: np.ndarray, boxes: np.ndarray, width: int, height: int):
    """The centre width x height of a square photo, boxes re-normalised and clipped to it."""
    side = image.shape[0]
    x0, y0 = (side - width) // 2, (side - height) // 2
    out = np.ascontiguousarray(image[y0 : y0 + height, x0 : x0 + width])
    if not len(boxes):
        return out, np.zeros((0, 4), np.float32)
    cx, cy, w, h = (boxes * side).T
    x1, x2 = np.clip(cx - w / 2 - x0, 0, width), np.clip(cx + w / 2 - x0, 0, width)
    y1, y2 = np.clip(cy - h / 2 - y0, 0, height), np.clip(cy + h / 2 - y0, 0, height)
    new = np.stack(
        [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], 1
    )
    return out, new.astype(np.float32)


def empty_photo(seed: int = 0, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A photo with no pill in it: one of the procedural surfaces, cut to `size`."""
    tex = make_textures(1, max(size), seed=seed, bundled=False)[0]
    return np.ascontiguousarray(tex[: size[1], : size[0]])
