"""The retrieval catalog: per pill, a studio reference of each side (the gallery) and phone-like
consumer photos of each side (the queries), made with the synthetic pill engine.

References are rendered straight at the crop scale of the consumer photos (the size-class crop
of fedray/pill/consumer.py at the photos' mean field of view), so a pill is as large in both;
consumer photos go through the engine's phone simulation and size-class centre crop. An
"illumination shift" copy of the queries adds strong colour casts (tungsten, daylight blue, ...).
Built once per config and cached as one .npz under the dataset cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedray.data.datasets import config_hash, default_cache_dir
from fedray.pill import consumer
from fedray.pill.catalog import Pill, make_catalog
from fedray.pill.compose_types import prepare_cutout
from fedray.pill.render import default_px_per_mm, render_reference
from fedray.pill.segment import SegmentationError, segment_reference
from fedray.pill.textures import FAMILIES, make_textures

log = logging.getLogger("fedray")

VERSION = 1
SIDES = ("front", "back")
STUDIO_SIZE = 256  # px of the studio image the consumer photos' cut-out is segmented from
TEXTURE_SIZE = 512
# (R, G, B) gains of strong casts: tungsten, candle, daylight blue, fluorescent green, red LED
CASTS = ((1.0, 0.78, 0.42), (1.0, 0.62, 0.30), (0.55, 0.75, 1.0), (0.72, 1.0, 0.62),
         (1.0, 0.55, 0.55))
_SOURCES = ("catalog.py", "render.py", "segment.py", "compose.py", "compose_plan.py",
            "compose_types.py", "crops.py", "consumer.py", "textures.py")


@dataclass
class RetrievalData:
    """pill_ids (P,); references (P, 2, S, S, 3) uint8 (front, back);
    photos (P, 2, Q, S, S, 3) uint8: Q consumer photos of each side."""

    pill_ids: np.ndarray
    references: np.ndarray
    photos: np.ndarray

    @property
    def num_pills(self) -> int:
        """P."""
        return len(self.pill_ids)


def reference_crop_mm(pill: Pill) -> float:
    """Side (mm) of the consumer crop of the pill's size class at the photos' mean field of view."""
    fov = float(np.mean(consumer.CONSUMER_COMPOSE["fov_mm"]))
    return consumer.CROP_FRACTION[consumer.size_class(pill.size_mm[0])] * fov


def _cutout(pill: Pill, side: str, seed: int, shadow_blur: float):
    img, gt = render_reference(pill, side, STUDIO_SIZE, seed)
    try:
        cut, _ = segment_reference(img)
    except SegmentationError:  # the renderer's own mask instead
        ys, xs = np.nonzero(gt)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        cut = np.dstack([img[y0:y1, x0:x1], gt[y0:y1, x0:x1].astype(np.uint8) * 255])
    return prepare_cutout(cut, shadow_blur, f"pill {pill.id} {side}")


def _source_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in _SOURCES:
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where the retrieval stage caches what it builds: `cache_dir`, else the dataset cache."""
    return (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "retrieval"


def build_retrieval_data(num_pills: int, image_size: int, photos_per_side: int,
                         catalog_seed: int = 0, seed: int = 0, num_textures: int = 24,
                         cache_dir: str | Path | None = None,
                         public_of: int = 0) -> RetrievalData:
    """The catalog's references and consumer photos, from the cache when built before.

    `public_of=N`: a public catalog for the N-pill private catalog of `catalog_seed`: ids from
    N on and no face of its pills looks like a face of a private pill, size aside
    (`make_catalog`'s exclude and exclude_faces), so a model trained on it has seen no face of
    the private test pills.
    """
    key = {"num_pills": num_pills, "image_size": image_size, "photos_per_side": photos_per_side,
           "catalog_seed": catalog_seed, "seed": seed, "num_textures": num_textures,
           "version": VERSION, "code": _source_hash()}
    if public_of:
        key["public_of"] = public_of
    path = cache_root(cache_dir) / f"catalog-{config_hash(key)}.npz"
    if path.exists():
        with np.load(path) as z:
            return RetrievalData(z["pill_ids"], z["references"], z["photos"])
    t0 = time.perf_counter()
    private = make_catalog(public_of, catalog_seed, 0, (), distinct_sides=True)
    pills = make_catalog(num_pills, catalog_seed, public_of, private, distinct_sides=True,
                         exclude_faces=True)
    textures = make_textures(num_textures, TEXTURE_SIZE, seed, bundled=False)
    families = [list(FAMILIES)[i % len(FAMILIES)] for i in range(len(textures))]
    params = consumer.consumer_params(default_px_per_mm(STUDIO_SIZE))
    size = consumer.photo_size(image_size)
    refs = np.empty((num_pills, 2, image_size, image_size, 3), np.uint8)
    photos = np.empty((num_pills, 2, photos_per_side, image_size, image_size, 3), np.uint8)
    for i, pill in enumerate(pills):
        rng = np.random.default_rng([seed, pill.id])
        crop_mm = reference_crop_mm(pill)
        frac = consumer.CROP_FRACTION[consumer.size_class(pill.size_mm[0])]
        for s, side in enumerate(SIDES):
            refs[i, s] = render_reference(pill, side, image_size, seed,
                                          px_per_mm=image_size / crop_mm)[0]
            cut = _cutout(pill, side, seed, params.shadow_blur)
            bgs = consumer.pick_backgrounds(families, photos_per_side, rng)
            for q in range(photos_per_side):
                photo = consumer.simulate_photo(cut, textures[bgs[q]], rng, params, size)
                photos[i, s, q] = consumer.centre_crop(photo, frac, image_size)
        if (i + 1) % 100 == 0:
            log.info("retrieval catalog: %d/%d pills (%.0fs)", i + 1, num_pills,
                     time.perf_counter() - t0)
    data = RetrievalData(np.array([p.id for p in pills]), refs, photos)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, pill_ids=data.pill_ids, references=refs, photos=photos)
    tmp.replace(path)
    log.info("retrieval catalog: %d pills, %d photos per side, %d px in %.1fs -> %s", num_pills,
             photos_per_side, image_size, time.perf_counter() - t0, path)
    return data


def training_pool(data: RetrievalData, pills: np.ndarray,
                  photos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a model trains on: the references of pill rows `pills`, then the first `photos`
    consumer photos of each of their sides; each image's pill id; the references' indices."""
    refs = data.references[pills].reshape(-1, *data.references.shape[-3:])
    shots = data.photos[pills][:, :, :photos].reshape(-1, *data.photos.shape[-3:])
    ids = data.pill_ids[pills]
    pool_pill = np.concatenate([np.repeat(ids, 2), np.repeat(ids, 2 * photos)])
    return np.concatenate([refs, shots]), pool_pill, np.arange(len(refs))


def colour_cast(images: np.ndarray, seed: int,
                gain: tuple[float, float] = (0.6, 1.1)) -> np.ndarray:
    """The illumination-shift copy of uint8 (..., H, W, 3) images: a strong cast from CASTS and a
    random overall gain per image, deterministic in `seed`."""
    flat = images.reshape(-1, *images.shape[-3:]).astype(np.float32)
    rng = np.random.default_rng(seed)
    casts = np.asarray(CASTS, np.float32)[rng.integers(len(CASTS), size=len(flat))]
    gains = rng.uniform(*gain, size=len(flat)).astype(np.float32)
    flat *= (casts * gains[:, None])[:, None, None, :]
    return np.clip(np.round(flat), 0, 255).astype(np.uint8).reshape(images.shape)
