"""What a synthetic build draws, fixed before any pixel exists (see synth.py).

The catalog (private or public) and the compositor parameters a config names; image sizes, the
SeedSequence stage codes, and the chunks (and so every chunk's seed) the work is cut into; which
cut-outs go in each reference scene, consumer photo and detection scene; and the layout: where
every crop lands (split and row), stratified per source and class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedray.pill import consumer
from fedray.pill.catalog import Pill, make_catalog
from fedray.pill.compose_types import ComposeParams
from fedray.pill.import_common import stratified_split
from fedray.pill.render import default_px_per_mm
from fedray.pill.textures import FAMILIES

REFERENCE_SIZE = 256  # studio image side, px
TEXTURE_SIZE = 512
SIDES = ("front", "back")
SPLITS = ("train", "val")

PUBLIC_ID_OFFSET = 100_000
# The public catalog avoids the first PRIVATE_EXCLUDE pills the private seed draws; a catalog is
# a prefix of a longer one with the same seed, so any private set up to this size is excluded.
PRIVATE_EXCLUDE = 1000

# Chunk sizes (part of the output: they fix the per-chunk seeds).
PILLS_PER_CHUNK = 4
TEXTURES_PER_CHUNK = 2 * len(FAMILIES)  # whole rounds of the families in every chunk
CROP_SCENES_PER_CHUNK = 64
PHOTOS_PER_CHUNK = 16
DETECTION_SCENES_PER_CHUNK = 25

# SeedSequence stage codes.
S_TEXTURES, S_CROPS, S_CONSUMER, S_DETECTION, S_PLAN, S_SPLIT, S_SURFACES = range(1, 8)


def seed_sequence(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) for p in parts])


def rng_for(*parts: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(*parts))


def chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def make_pills(cfg: dict[str, Any]) -> list[Pill]:
    """The catalog a config describes: private, or public (ids + 100000, disjoint from private)."""
    sides = bool(cfg["distinct_sides"])
    if not cfg["public"]:
        return make_catalog(cfg["num_pills"], cfg["catalog_seed"], cfg["id_offset"], (), sides)
    private = make_catalog(PRIVATE_EXCLUDE, cfg["catalog_seed"], cfg["id_offset"], (), sides)
    return make_catalog(cfg["num_pills"], cfg["catalog_seed"], PUBLIC_ID_OFFSET + cfg["id_offset"],
                        exclude=private, distinct_sides=sides)


def scene_params(cfg: dict[str, Any], crop_scenes: bool) -> ComposeParams:
    """Compositor parameters of detection scenes, or of the smaller crop scenes (same px per mm)."""
    over = dict(cfg["compose"])
    max_pills = cfg["max_pills_per_scene"]
    if not crop_scenes:  # the detection scenes' own overrides and pill counts
        over.update(cfg.get("detection_compose") or {})
        max_pills = max(max_pills, (cfg.get("detection_pills") or [1, 1])[1])
    base = ComposeParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in over.items()})
    fov = base.fov_mm
    if crop_scenes:  # a smaller frame of the same world: the field of view shrinks with it
        k = cfg["crop_scene_size"] / cfg["scene_size"]
        fov = (fov[0] * k, fov[1] * k)
    return ComposeParams.from_dict({**over, "fov_mm": fov, "max_pills": max_pills,
                                    "cutout_px_per_mm": default_px_per_mm(REFERENCE_SIZE)})


def _balanced(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split over n classes as evenly as possible; who gets the remainder is random."""
    counts = np.full(n, total // n, np.int64)
    counts[rng.permutation(n)[: total % n]] += 1
    return counts


def reference_plan(cfg: dict[str, Any], seed: int, n: int) -> (
        tuple[np.ndarray, list[list[int]], np.ndarray]):
    """Cut-out id of every reference crop (balanced over pills, random side), the scenes, and
    every crop's split (index into SPLITS), all in generation order (scene by scene).

    Crops of one scene share pixels (the background, the edge of a neighbouring pill), so the
    split is dealt first, stratified by pill, and each split's crops get scenes of their own:
    the train scenes, then the val scenes. No scene holds both a train and a val crop.
    """
    rng = rng_for(seed, S_PLAN, S_CROPS)
    pills = np.repeat(np.arange(n), _balanced(cfg["reference_crops"], n, rng))
    val = np.zeros(len(pills), bool)
    if len(pills):
        val[stratified_split(pills, {"val": float(cfg["val_fraction"])}, seed)["val"]] = True
    sides = rng.integers(0, 2, len(pills))
    items, split, scenes = [], [], []
    for s, mine in enumerate((~val, val)):  # SPLITS order: train, then val
        order = rng.permutation(np.flatnonzero(mine))
        ids = 2 * pills[order] + sides[order]
        i = 0
        while i < len(ids):
            k = int(rng.integers(1, cfg["max_pills_per_scene"] + 1))
            scenes.append([int(c) for c in ids[i:i + k]])
            i += k
        items.append(ids)
        split.append(np.full(len(ids), s, np.int64))
    return (np.concatenate(items).astype(np.int64), scenes,
            np.concatenate(split).astype(np.int64))


def consumer_plan(cfg: dict[str, Any], seed: int, pills: list[Pill],
                  families: list[str]) -> list[tuple[int, float, int, int]]:
    """Photos (cut-out id, pill length, background id, crops from it), pill by pill."""
    rng = rng_for(seed, S_PLAN, S_CONSUMER)
    quotas = _balanced(cfg["consumer_crops"], len(pills), rng)
    photos = []
    for p, (pill, quota) in enumerate(zip(pills, quotas, strict=True)):
        n_photos = int(min(cfg["consumer_photos_per_pill"], quota))
        if n_photos == 0:
            continue
        per_photo = _balanced(int(quota), n_photos, rng)
        first_side = int(rng.integers(2))
        bgs = consumer.pick_backgrounds(families, n_photos, rng)
        for j in range(n_photos):
            side = (first_side + j) % 2  # alternate so both faces are photographed
            photos.append((2 * p + side, pill.size_mm[0], int(bgs[j]), int(per_photo[j])))
    return photos


def detection_plan(cfg: dict[str, Any], seed: int, n: int) -> list[list[int]]:
    """Cut-out ids per detection scene; n counts every pill the scenes draw from."""
    rng = rng_for(seed, S_PLAN, S_DETECTION)
    lo, hi = cfg.get("detection_pills") or (1, cfg["max_pills_per_scene"])
    scenes = []
    for _ in range(cfg["detection_scenes"]):
        k = int(rng.integers(lo, hi + 1))
        scenes.append([int(2 * p + s) for p, s in zip(rng.integers(0, n, k),
                                                       rng.integers(0, 2, k), strict=True)])
    return scenes


@dataclass
class Layout:
    """Where every crop lands: reference crops first, then consumer crops, in generation order."""

    items: np.ndarray  # (N,) cut-out id = 2 * pill index + side
    consumer: np.ndarray  # (N,) bool: from a consumer photo
    split: np.ndarray  # (N,) index into SPLITS
    row: np.ndarray  # (N,) row in its split's array
    counts: list[int]  # per split


def split_layout(cfg: dict[str, Any], seed: int, ref_items: np.ndarray, ref_split: np.ndarray,
                 photos: list[tuple[int, float, int, int]]) -> Layout:
    """Stratified split per source and class, fixed before any pixel exists. The reference crops'
    split is reference_plan's (no crop scene straddles it); the consumer crops' is dealt here."""
    vf = {"val": float(cfg["val_fraction"])}
    if len(ref_split) != len(ref_items):
        raise ValueError(f"{len(ref_items)} reference crops but {len(ref_split)} splits")
    in_val = [np.asarray(ref_split, np.int64)]
    if photos:  # by photo: augmentations of one photo never straddle train and val
        photo_labels = np.array([c // 2 for c, _, _, _ in photos], np.int64)
        val_photos = np.isin(np.arange(len(photos)),
                             stratified_split(photo_labels, vf, seed + 1)["val"])
        per_photo = np.array([count for _, _, _, count in photos], np.int64)
        in_val.append(np.repeat(val_photos, per_photo))
        con_items = np.repeat(np.array([c for c, _, _, _ in photos], np.int64), per_photo)
    else:
        con_items = np.zeros(0, np.int64)
    split = np.concatenate(in_val).astype(np.int64)
    row = np.empty(len(split), np.int64)
    counts = []
    for s in range(len(SPLITS)):
        mine = split == s
        row[mine] = np.arange(int(mine.sum()))
        counts.append(int(mine.sum()))
    return Layout(np.concatenate([ref_items, con_items]).astype(np.int64),
                  np.arange(len(split)) >= len(ref_items), split, row, counts)


def texture_specs(seed: int, stage: int, count: int) -> list[tuple[int, int]]:
    """(textures, seed) of every chunk of `count` textures drawn from seed stream `stage`."""
    return [(len(c), int(seed_sequence(seed, stage, i).generate_state(1)[0]))
            for i, c in enumerate(chunks(range(count), TEXTURES_PER_CHUNK))]


def scene_specs(cfg: dict[str, Any], seed: int, ref_scenes: list[list[int]],
                photos: list[tuple[int, float, int, int]], det_scenes: list[list[int]]) -> (
        tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]):
    """The chunk specs of the reference-crop, consumer-photo and detection-scene tasks."""
    image_size = cfg["image_size"]
    ref_specs = [{"seed": (seed, S_CROPS, i), "scenes": ch, "image_size": image_size,
                  "scene_size": cfg["crop_scene_size"]}
                 for i, ch in enumerate(chunks(ref_scenes, CROP_SCENES_PER_CHUNK))]
    con_specs = [{"seed": (seed, S_CONSUMER, i), "photos": ch, "image_size": image_size,
                  "crop_with": cfg["crop_with"], "crop_detector": cfg["crop_detector"]}
                 for i, ch in enumerate(chunks(photos, PHOTOS_PER_CHUNK))]
    det_specs = [{"seed": (seed, S_DETECTION, i), "scenes": ch,
                  "scene_size": cfg["scene_size"]}
                 for i, ch in enumerate(chunks(det_scenes, DETECTION_SCENES_PER_CHUNK))]
    return ref_specs, con_specs, det_specs
