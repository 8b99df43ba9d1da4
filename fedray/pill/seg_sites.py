"""Pill segmentation at two sites whose photos differ in style (`data=seg_sites`).

Scenes of 1..k catalog pills with their binary masks (the compositor's per-pixel label map,
`fedray.pill.compose.LABEL_ALPHA`), rendered for two sites:

- site 0, `studio`: the studio backdrop of the reference renders, even light, no blur, barely
  any noise, no JPEG;
- site 1, `phone`: the consumer-photo parameters (`fedray.pill.consumer.CONSUMER_COMPOSE`) on
  textured procedural backgrounds (no plain ones), with a strong colour cast, frequent blur,
  sensor noise and JPEG.

Written in the dataset-directory format with `{split}_masks.npy` (uint8, 1 = pill) and
`{split}_groups.npy` (the site of each scene: the natural partition, `partition=by_site`).
`{split}_labels.npy` holds the image-level label (1: a pill is visible), so class-label code
still reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedray.config import ConfigError
from fedray.data.datasets import (
    DatasetInfo,
    cached_build,
    load_info,
    write_groups,
    write_masks,
    write_meta,
    write_split,
)
from fedray.data.sources import dataset_builder
from fedray.pill.catalog import make_catalog
from fedray.pill.compose import render_plan
from fedray.pill.compose_plan import plan_scene
from fedray.pill.compose_types import ComposeParams, PreparedCutout, prepare_cutout
from fedray.pill.consumer import CONSUMER_COMPOSE
from fedray.pill.render import BACKGROUND_RGB, default_px_per_mm, render_reference
from fedray.pill.segment import segment_reference
from fedray.pill.textures import FAMILIES, make_textures

VERSION = 1  # part of the cache key: bump when the same config would build other bytes
SITES = ("studio", "phone")
REFERENCE_SIZE = 128  # studio render side, px: ample for scenes of 64-128 px
TEXTURE_SIZE = 256
NUM_TEXTURES = 2 * len(FAMILIES)  # two of every family; the plain ones are left out
DEFAULTS: dict[str, Any] = {
    "name": "seg_sites",
    "num_pills": 12,
    "catalog_seed": 0,
    "image_size": 64,
    "train_per_site": 300,
    "val_per_site": 100,
    "max_pills_per_scene": 3,
    "fov_mm": [28.0, 44.0],
}

# Studio: even light on the reference backdrop, nothing a camera adds.
STUDIO: dict[str, Any] = {
    "perspective": 0.0,
    "brightness": (-6.0, 6.0),
    "contrast": (0.95, 1.05),
    "saturation": (0.95, 1.05),
    "hue_deg": (-2.0, 2.0),
    "pill_white_balance": 0.02,
    "shadow_prob": 0.3,
    "shadow_strength": (0.1, 0.2),
    "light_gain": (0.97, 1.03),
    "light_gradient": 0.02,
    "vignette": (0.0, 0.02),
    "white_balance": 0.01,
    "blur_prob": 0.0,
    "noise_prob": 0.5,
    "noise_sigma": (0.3, 1.0),
    "shot_noise": (0.0, 0.005),
    "jpeg_prob": 0.0,
}
# Phone: the consumer photos' camera, a stronger colour cast, blur more often.
PHONE: dict[str, Any] = {
    **{k: v for k, v in CONSUMER_COMPOSE.items() if k not in ("max_pills", "fov_mm")},
    "white_balance": 0.2,
    "blur_prob": 0.7,
}


def seg_config(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overlaid with `data_cfg`; a bad value raises ConfigError naming the key."""
    unknown = sorted(set(data_cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"data: unknown key(s) {unknown} for data=seg_sites; known: "
                          f"{sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **data_cfg}
    for key, lo in (("num_pills", 1), ("catalog_seed", 0), ("image_size", 16),
                    ("train_per_site", 1), ("val_per_site", 1), ("max_pills_per_scene", 1)):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"data.{key} must be an integer >= {lo}, got {v!r}")
    fov = cfg["fov_mm"]
    if not isinstance(fov, (list, tuple)) or len(fov) != 2 or not 0 < fov[0] <= fov[1]:
        raise ConfigError(f"data.fov_mm must be [lo, hi] with 0 < lo <= hi, got {fov!r}")
    cfg["fov_mm"] = [float(fov[0]), float(fov[1])]
    return cfg


def site_params(site: int, cfg: dict[str, Any]) -> ComposeParams:
    """Compositor parameters of a site (0 studio, 1 phone)."""
    over = STUDIO if site == 0 else PHONE
    return ComposeParams(**over, max_pills=cfg["max_pills_per_scene"], fov_mm=tuple(cfg["fov_mm"]),
                         cutout_px_per_mm=default_px_per_mm(REFERENCE_SIZE))


def make_cutouts(cfg: dict[str, Any], seed: int) -> list[PreparedCutout]:
    """Both faces of every catalog pill, rendered in the studio and cut out."""
    out = []
    for pill in make_catalog(cfg["num_pills"], cfg["catalog_seed"]):
        for side in ("front", "back"):
            img, _ = render_reference(pill, side, REFERENCE_SIZE, seed)
            cut, _ = segment_reference(img)
            out.append(prepare_cutout(cut, ComposeParams().shadow_blur, name=f"pill {pill.id}"))
    return out


def site_backgrounds(site: int, seed: int) -> list[np.ndarray]:
    """Studio: the reference backdrop, slightly tinted per image; phone: textured surfaces."""
    if site == 0:
        rng = np.random.default_rng([seed, 0xBAC])
        tints = np.asarray(BACKGROUND_RGB) + rng.normal(0.0, 6.0, (8, 3))
        return [np.full((32, 32, 3), np.clip(t, 0, 255), np.uint8) for t in tints]
    textures = make_textures(NUM_TEXTURES, TEXTURE_SIZE, seed, bundled=False)
    plain = list(FAMILIES).index("plain")
    return [t for i, t in enumerate(textures) if i % len(FAMILIES) != plain]


def render_site(site: int, count: int, cutouts: list[PreparedCutout],
                backgrounds: list[np.ndarray], params: ComposeParams, size: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` scenes of one site: images uint8 (N, S, S, 3) and pill masks uint8 (N, S, S)."""
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    for i in range(count):
        k = int(rng.integers(1, params.max_pills + 1))
        chosen = [cutouts[j] for j in rng.choice(len(cutouts), k, replace=False)]
        bg = backgrounds[int(rng.integers(len(backgrounds)))]
        shown = render_plan(plan_scene(bg, chosen, rng, params, size), num_threads=1)
        images[i] = shown.image
        masks[i] = shown.labels >= 0
    return images, masks


def build(root: Path, cfg: dict[str, Any], seed: int) -> None:
    """Render both sites' train and val scenes into the dataset directory `root`."""
    cutouts = make_cutouts(cfg, seed)
    if len(cutouts) < cfg["max_pills_per_scene"]:
        raise ConfigError(f"data.max_pills_per_scene={cfg['max_pills_per_scene']} exceeds the "
                          f"{len(cutouts)} pill faces of data.num_pills={cfg['num_pills']}")
    splits = {"train": cfg["train_per_site"], "val": cfg["val_per_site"]}
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {s: [] for s in splits}
    for site in range(len(SITES)):
        params = site_params(site, cfg)
        backgrounds = site_backgrounds(site, seed)
        for s, (split, count) in enumerate(splits.items()):
            rng = np.random.default_rng([seed, VERSION, site, s])
            images, masks = render_site(site, count, cutouts, backgrounds, params,
                                        cfg["image_size"], rng)
            parts[split].append((images, masks, np.full(count, site, np.int64)))
    for split, chunks in parts.items():
        images, masks, groups = (np.concatenate(a) for a in zip(*chunks, strict=True))
        write_split(root, split, images, masks.reshape(len(masks), -1).any(1).astype(np.int64))
        write_masks(root, split, masks)
        write_groups(root, split, groups)
    write_meta(root, cfg["name"], ["background", "pill"], cfg["image_size"],
               {k: v * len(SITES) for k, v in splits.items()}, task="segmentation",
               groups=list(SITES))


@dataset_builder
def seg_sites_dataset(data_cfg: dict[str, Any], seed: int, cache_dir: Path) -> DatasetInfo:
    """The two-site pill segmentation set `data_cfg` describes, built into (or found in) the
    cache."""
    cfg = seg_config(data_cfg)
    key = {**cfg, "seed": int(seed), "version": VERSION}
    return load_info(cached_build(cache_dir, "seg_sites", key, lambda d: build(d, cfg, seed)))


seg_sites_dataset.fedray_keys = (  # type: ignore[attr-defined]
    "name", "num_pills", "catalog_seed", "image_size", "train_per_site", "val_per_site",
    "max_pills_per_scene", "fov_mm")
