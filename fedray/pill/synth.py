"""The synthetic pill dataset (`data=synthetic`, `stage=synth`): the source recipe, end to end.

catalog -> studio references (front + back, 256 px) -> segmented cut-outs -> textures ->
  * reference composites: scenes of 1..k pills on textures; every box becomes a labelled crop
    (`reference_crops` in all, balanced over pills);
  * consumer photos: one pill per phone-like photo, size-class centre crop, albumentations
    (`consumer_crops` in all, balanced over pills; see fedray/pill/consumer.py);
  * detection scenes (`scene_size` px) in ultralytics YOLO layout, one class `pill`.
The crops are split train/val per source and class (consumer crops by photo, so no photo feeds
both splits) and written in the dataset-directory format of fedray/data/datasets.py, next to
viewable files: manifest.csv, catalog.json, references/*.png, contact_sheet.png, detection/.

Work is cut into fixed chunks, each seeded from `SeedSequence([seed, stage, chunk])` and run as a
Ray task (or inline with `workers: 1`), so the output never depends on the number of workers and
the same config + seed rebuilds byte for byte (except the timings in meta.json and the absolute
cache path in detection/data.yaml).

Size: the build orchestrator of the whole synthetic dataset (plans, chunked tasks,
writers); every stage reads the same seed streams and layout, which live here.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from fedray.config import ConfigError
from fedray.data.datasets import (
    DatasetError,
    DatasetInfo,
    cached_build,
    config_hash,
    file_digest,
    load_info,
    write_meta,
    write_split,
)
from fedray.data.sources import dataset_builder
from fedray.pill import consumer
from fedray.pill.catalog import Pill, make_catalog, save_catalog
from fedray.pill.compose import (
    CROP_PAD,
    ComposeParams,
    PreparedCutout,
    crop_boxes,
    plan_scene,
    prepare_cutout,
    render_plan,
)
from fedray.pill.importers import IMAGE_SUFFIXES, fingerprint, stratified_split
from fedray.pill.render import default_px_per_mm, render_reference
from fedray.pill.segment import SegmentationError, segment_reference
from fedray.pill.textures import (
    FAMILIES,
    bundled_textures,
    load_user_textures,
    make_textures,
    scene_textures,
)
from fedray.progress import progress

log = logging.getLogger("fedray")

# Part of the cache key: bump whenever the same config would now build different bytes (this
# includes the chunk sizes below, which fix the per-chunk seeds).
VERSION = 2  # 2: detection/data.yaml without an absolute path; scenes_sheet.png

TIMINGS = "build_timings.json"  # wall-clock figures of the build (not deterministic)
DEFAULTS: dict[str, Any] = {
    "name": "synthetic",
    "num_pills": 20,
    "id_offset": 0,
    "catalog_seed": 0,
    "image_size": 64,
    "reference_crops": 10000,
    "consumer_crops": 10000,
    "consumer_photos_per_pill": 25,
    "val_fraction": 0.2,
    "detection_scenes": 2000,
    "scene_size": 640,
    "crop_scene_size": 320,
    "max_pills_per_scene": 4,
    "detection_pills": None,
    "detection_public_pills": 0,
    "detection_surfaces": 0,
    "detection_compose": {},
    "num_textures": 128,
    "backgrounds": None,
    "compose": {},
    "consumer_compose": {},
    "crop_with": "size_class",
    "crop_detector": None,
    "public": False,
    "distinct_sides": True,
    "workers": None,
    "cache_dir": None,
}
# Whose source decides the bytes of a build (see code_fingerprint).
_PIPELINE_SOURCES = ("catalog.py", "render.py", "segment.py", "textures.py", "compose.py",
                     "_compose.pyx", "consumer.py", "synth.py")
# Keys that choose where or how fast, never what: left out of the cache key.
_NOT_IN_KEY = ("cache_dir", "workers")

REFERENCE_SIZE = 256  # studio image side, px
TEXTURE_SIZE = 512
PUBLIC_ID_OFFSET = 100_000
# The public catalog avoids the first PRIVATE_EXCLUDE pills the private seed draws; a catalog is
# a prefix of a longer one with the same seed, so any private set up to this size is excluded.
PRIVATE_EXCLUDE = 1000
CONTACT_ROWS = 40
CONTACT_CELL = 64
CONTACT_SAMPLES = 5  # per source per class
SIDES = ("front", "back")
SPLITS = ("train", "val")

# Chunk sizes (part of the output: they fix the per-chunk seeds).
PILLS_PER_CHUNK = 4
TEXTURES_PER_CHUNK = 2 * len(FAMILIES)  # whole rounds of the families in every chunk
CROP_SCENES_PER_CHUNK = 64
PHOTOS_PER_CHUNK = 16
DETECTION_SCENES_PER_CHUNK = 25

# SeedSequence stage codes.
_S_TEXTURES, _S_CROPS, _S_CONSUMER, _S_DETECTION, _S_PLAN, _S_SPLIT, _S_SURFACES = range(1, 8)
SCENES_SHEET = "scenes_sheet.png"  # the first detection scenes with their boxes
SHEET_SCENES, SHEET_CELL = 12, 320


# ------------------------------------------------------------------------------------ config


def synth_config(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS overlaid with `data_cfg`, checked; bad values raise ConfigError naming the key."""
    unknown = sorted(set(data_cfg) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"data: unknown key(s) {unknown} for data=synthetic; known: "
                          f"{sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **data_cfg}

    def integer(key: str, lo: int) -> None:
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ConfigError(f"data.{key} must be an integer >= {lo}, got {v!r}")

    for key, lo in (("num_pills", 1), ("id_offset", 0), ("catalog_seed", 0), ("image_size", 8),
                    ("reference_crops", 0), ("consumer_crops", 0),
                    ("consumer_photos_per_pill", 1), ("detection_scenes", 0),
                    ("scene_size", 32), ("crop_scene_size", 32), ("max_pills_per_scene", 1),
                    ("num_textures", 0), ("detection_public_pills", 0),
                    ("detection_surfaces", 0)):
        integer(key, lo)
    dp = cfg["detection_pills"]
    if dp is not None:
        if (not isinstance(dp, (list, tuple)) or len(dp) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in dp)
                or not 1 <= dp[0] <= dp[1]):
            raise ConfigError(f"data.detection_pills must be null or [lo, hi] with 1 <= lo <= hi, "
                              f"got {dp!r}")
        cfg["detection_pills"] = [int(dp[0]), int(dp[1])]
    if cfg["reference_crops"] + cfg["consumer_crops"] < 1:
        raise ConfigError("data.reference_crops + data.consumer_crops must be >= 1")
    vf = cfg["val_fraction"]
    if not isinstance(vf, (int, float)) or isinstance(vf, bool) or not 0.0 <= vf < 1.0:
        raise ConfigError(f"data.val_fraction must be a number in [0, 1), got {vf!r}")
    if cfg["workers"] is not None:
        integer("workers", 1)
    for key in ("compose", "consumer_compose", "detection_compose"):
        if not isinstance(cfg[key] or {}, dict):
            raise ConfigError(f"data.{key} must be a mapping of ComposeParams fields")
        cfg[key] = dict(cfg[key] or {})
        for fixed in ("cutout_px_per_mm", "max_pills"):
            if fixed in cfg[key]:
                raise ConfigError(f"data.{key}.{fixed} is set by the builder (use "
                                  "data.max_pills_per_scene for the number of pills)")
    if cfg["backgrounds"] is not None and not Path(str(cfg["backgrounds"])).expanduser().is_dir():
        raise ConfigError(f"data.backgrounds={cfg['backgrounds']!r}: no such directory")
    if cfg["num_textures"] == 0 and cfg["backgrounds"] is None and not bundled_textures(8):
        raise ConfigError("data.num_textures is 0 and there are no other backgrounds")
    if cfg["crop_with"] not in consumer.CROP_WITH:
        raise ConfigError(f"data.crop_with must be one of {list(consumer.CROP_WITH)}, got "
                          f"{cfg['crop_with']!r}")
    if cfg["crop_with"] == "detector":
        if cfg["crop_detector"] is None:
            from fedray.pill.detect import latest_detector

            cfg["crop_detector"] = str(latest_detector(cfg.get("cache_dir"),
                                                       "set data.crop_detector=PATH"))
        path = Path(str(cfg["crop_detector"])).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.crop_detector={cfg['crop_detector']!r}: no such weights "
                              "file (a stage=detect cache entry's weights.pt, or null for the "
                              "newest one)")
        cfg["crop_detector"] = str(path.resolve())
    elif cfg["crop_detector"] is not None:
        raise ConfigError("data.crop_detector is only read with data.crop_with=detector")
    cfg["public"] = bool(cfg["public"])
    return cfg


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


def _seed(*parts: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(p) for p in parts])


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng(_seed(*parts))


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _balanced(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split over n classes as evenly as possible; who gets the remainder is random."""
    counts = np.full(n, total // n, np.int64)
    counts[rng.permutation(n)[: total % n]] += 1
    return counts


# ----------------------------------------------------------------------------- chunk tasks


def _references_task(pills: list[Pill], seed: int) -> list[tuple[np.ndarray, ...]]:
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


def _textures_task(spec: tuple[int, int]) -> list[np.ndarray]:
    count, seed = spec
    return make_textures(count, TEXTURE_SIZE, seed, bundled=False)


def _surfaces_task(spec: tuple[int, int]) -> list[np.ndarray]:
    """Scene-only surfaces (lined paper, palms, trays, ...) for the detection scenes."""
    count, seed = spec
    return scene_textures(count, TEXTURE_SIZE, seed)


def _crop_scenes_task(spec: dict[str, Any], cutouts: list[PreparedCutout],
                      textures: list[np.ndarray], params: ComposeParams) -> np.ndarray:
    """Crops of every pill of every scene in spec['scenes'] (lists of cut-out ids), in order."""
    rng = _rng(*spec["seed"])
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


def _consumer_task(spec: dict[str, Any], cutouts: list[PreparedCutout],
                   textures: list[np.ndarray], params: ComposeParams) -> (
        tuple[np.ndarray, list[float]]):
    """Consumer crops of every photo in spec['photos'] ((cut-out id, length mm, bg, count)),
    cut the spec['crop_with'] way; and each photo's crop-box IoU with the pill's true box."""
    rng = _rng(*spec["seed"])
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


def _detection_task(spec: dict[str, Any], cutouts: list[PreparedCutout],
                    textures: list[np.ndarray], params: ComposeParams) -> list[tuple[bytes, str]]:
    """(JPEG bytes, YOLO label text) per scene in spec['scenes']."""
    rng = _rng(*spec["seed"])
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


def _run_chunks(fn: Callable[..., Any], specs: list[Any], *shared: Any) -> list[tuple[Any, float]]:
    """Run chunks one after another, single-threaded; (result, seconds) per chunk."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one task per core: nested threads would only contend
    try:
        out = []
        for spec in specs:
            t0 = time.perf_counter()
            out.append((fn(spec, *shared), time.perf_counter() - t0))
        return out
    finally:
        cv2.setNumThreads(threads)


class _Runner:
    """Runs chunk functions inline (one worker) or as Ray tasks; results come back in order."""

    def __init__(self, workers: int | None) -> None:
        self.workers = workers
        self._ray: Any = None
        self._started = False
        self._remote: Any = None

    def __enter__(self) -> _Runner:
        if self.workers == 1:
            return self
        import ray

        if self.workers is None:  # all cores: of the running Ray cluster, else of this machine
            self.workers = (int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized()
                            else os.cpu_count() or 1)
        if self.workers > 1:
            if not ray.is_initialized():
                ray.init(num_cpus=self.workers, include_dashboard=False,
                         logging_level=logging.ERROR, log_to_driver=False)
                self._started = True
            self._ray = ray
            self._remote = ray.remote(num_cpus=1)(_run_chunks)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._ray.shutdown()

    def share(self, value: Any) -> Any:
        """A handle every task can read (a Ray object ref, or the value itself inline)."""
        return self._ray.put(value) if self._ray else value

    def submit(self, fn: Callable[..., Any], specs: Sequence[Any], *shared: Any,
               tasks: int | None = None) -> list[Any]:
        """Start the chunks as `tasks` tasks (default: one per chunk); read them with `results`.

        Fewer, longer tasks keep a heavy import (albumentations pulls in torch) to few workers;
        which task runs a chunk never changes what the chunk computes.
        """
        groups = _chunks(specs, max(1, -(-len(specs) // tasks))) if tasks else [[s] for s in specs]
        if self._ray is None:
            return [(fn, g, shared) for g in groups]
        return [self._remote.remote(fn, g, *shared) for g in groups]

    def results(self, handles: list[Any]) -> Iterator[tuple[Any, float]]:
        """(result, task seconds) per chunk, in submission order; frees each handle when read."""
        for i in range(len(handles)):
            h, handles[i] = handles[i], None  # drop the ref so the object store can free it
            if self._ray is None:
                fn, group, shared = h
                yield from _run_chunks(fn, group, *shared)
            else:
                yield from self._ray.get(h)


# ----------------------------------------------------------------------------- planning


def _reference_plan(cfg: dict[str, Any], seed: int, n: int) -> tuple[np.ndarray, list[list[int]]]:
    """Cut-out id of every reference crop (balanced over pills, random side) and the scenes."""
    rng = _rng(seed, _S_PLAN, _S_CROPS)
    pills = np.repeat(np.arange(n), _balanced(cfg["reference_crops"], n, rng))
    items = 2 * rng.permutation(pills) + rng.integers(0, 2, len(pills))
    scenes, i = [], 0
    while i < len(items):
        k = int(rng.integers(1, cfg["max_pills_per_scene"] + 1))
        scenes.append([int(c) for c in items[i:i + k]])
        i += k
    return items, scenes


def _consumer_plan(cfg: dict[str, Any], seed: int, pills: list[Pill],
                   families: list[str]) -> list[tuple[int, float, int, int]]:
    """Photos (cut-out id, pill length, background id, crops from it), pill by pill."""
    rng = _rng(seed, _S_PLAN, _S_CONSUMER)
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


def _detection_plan(cfg: dict[str, Any], seed: int, n: int) -> list[list[int]]:
    """Cut-out ids per detection scene; n counts every pill the scenes draw from."""
    rng = _rng(seed, _S_PLAN, _S_DETECTION)
    lo, hi = cfg.get("detection_pills") or (1, cfg["max_pills_per_scene"])
    scenes = []
    for _ in range(cfg["detection_scenes"]):
        k = int(rng.integers(lo, hi + 1))
        scenes.append([int(2 * p + s) for p, s in zip(rng.integers(0, n, k),
                                                       rng.integers(0, 2, k), strict=True)])
    return scenes


# ------------------------------------------------------------------------------- building


def code_fingerprint() -> dict[str, str]:
    """Digest of the pipeline's source and the library versions that shape its bytes.

    Part of the cache key, so a cached dataset never outlives the code that drew it.
    """
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    digest = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in _PIPELINE_SOURCES:
        path = here / name
        digest.update(path.read_bytes() if path.is_file() else name.encode())
    out = {"source": digest.hexdigest()[:16], "numpy": np.__version__, "opencv": cv2.__version__}
    try:
        out["albumentations"] = version("albumentations")
    except PackageNotFoundError:
        out["albumentations"] = "missing"
    return out


@dataset_builder
def build_synthetic(data_cfg: dict[str, Any], seed: int, cache_dir: str | Path) -> DatasetInfo:
    """Build (or find in the cache) the synthetic pill dataset that `data_cfg` describes."""
    cfg = synth_config(data_cfg)
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 for data=synthetic, got {seed!r}")
    key = {k: v for k, v in cfg.items() if k not in _NOT_IN_KEY}
    key.update(seed=seed, version=VERSION, code=code_fingerprint())
    if cfg["crop_detector"] is not None:  # the weights' bytes decide the crops, not their path
        key["crop_detector"] = file_digest(cfg["crop_detector"])
    if cfg["backgrounds"] is not None:  # an edited folder must give a new cache entry
        folder = Path(str(cfg["backgrounds"])).expanduser().resolve()
        key["backgrounds"] = str(folder)
        key["backgrounds_files"] = fingerprint(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    cache = Path(cache_dir).expanduser().resolve()
    final_root = cache / f"synthetic-{config_hash(key)}"
    built = cached_build(cache, "synthetic", key, lambda tmp: _build(tmp, final_root, cfg, seed))
    if built != final_root:  # detection/data.yaml embeds final_root, so the naming must agree
        raise RuntimeError(f"cache entry {built} is not the expected {final_root}")
    return load_info(built)


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.stages[stage] = round(now - self.last, 3)
        self.last = now
        return self.stages[stage]


@dataclass
class _Layout:
    """Where every crop lands: reference crops first, then consumer crops, in generation order."""

    items: np.ndarray  # (N,) cut-out id = 2 * pill index + side
    consumer: np.ndarray  # (N,) bool: from a consumer photo
    split: np.ndarray  # (N,) index into SPLITS
    row: np.ndarray  # (N,) row in its split's array
    counts: list[int]  # per split


def _layout(cfg: dict[str, Any], seed: int, ref_items: np.ndarray,
            photos: list[tuple[int, float, int, int]]) -> _Layout:
    """Stratified split per source and class, fixed before any pixel exists."""
    vf = {"val": float(cfg["val_fraction"])}
    in_val = [np.isin(np.arange(len(ref_items)), stratified_split(ref_items // 2, vf, seed)["val"])
              if len(ref_items) else np.zeros(0, bool)]
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
    return _Layout(np.concatenate([ref_items, con_items]).astype(np.int64),
                   np.arange(len(split)) >= len(ref_items), split, row, counts)


def _build(tmp: Path, final_root: Path, cfg: dict[str, Any], seed: int) -> None:
    clock = _Clock()
    pills = make_pills(cfg)
    n = len(pills)
    save_catalog(pills, tmp / "catalog.json")
    clock.lap("catalog")
    log.info("synth: catalog of %d %s pills (ids %d..%d)", n,
             "public" if cfg["public"] else "private", pills[0].id, pills[-1].id)
    image_size = cfg["image_size"]
    ref_items, ref_scenes = _reference_plan(cfg, seed, n)
    public = (make_pills({**cfg, "public": True, "num_pills": cfg["detection_public_pills"]})
              if cfg["detection_public_pills"] and cfg["detection_scenes"] else [])
    det_scenes = _detection_plan(cfg, seed, n + len(public))  # public pills: detection only

    with _Runner(cfg["workers"]) as runner:
        clock.lap("ray_start")
        # references and textures are independent: both go out before either is awaited
        ref_handles = runner.submit(_references_task, _chunks(pills, PILLS_PER_CHUNK), seed)
        tex_specs = [(len(c), int(_seed(seed, _S_TEXTURES, i).generate_state(1)[0]))
                     for i, c in enumerate(_chunks(range(cfg["num_textures"]),
                                                   TEXTURES_PER_CHUNK))]
        tex_handles = runner.submit(_textures_task, tex_specs)
        pub_handles = runner.submit(_references_task, _chunks(public, PILLS_PER_CHUNK), seed)
        surf_specs = [(len(c), int(_seed(seed, _S_SURFACES, i).generate_state(1)[0]))
                      for i, c in enumerate(_chunks(range(cfg["detection_surfaces"]),
                                                    TEXTURES_PER_CHUNK))]
        surf_handles = runner.submit(_surfaces_task, surf_specs)

        ref_dir = tmp / "references"
        ref_dir.mkdir()
        det_params = scene_params(cfg, crop_scenes=False)
        cutouts, thumbs, fallbacks = [], [], 0
        for out, _ in progress(runner.results(ref_handles), "synth: references",
                               len(ref_handles), "chunk"):
            for img, cut, fell_back in out:
                pill, side = pills[len(cutouts) // 2], SIDES[len(cutouts) % 2]
                _write_png(ref_dir / f"{pill.id}_{side}.png", img)
                if len(thumbs) < 2 * CONTACT_ROWS:
                    thumbs.append(cv2.resize(img, (CONTACT_CELL, CONTACT_CELL),
                                             interpolation=cv2.INTER_AREA))
                cutouts.append(prepare_cutout(cut, det_params.shadow_blur,
                                              f"pill {pill.id} {side}"))
                fallbacks += fell_back
        log.info("synth: references: %d studio images segmented (%d fallbacks) in %.1fs",
                 len(cutouts), fallbacks, clock.lap("references"))

        for out, _ in runner.results(pub_handles):  # after the private ones: ids 2n and up
            cutouts += [prepare_cutout(cut, det_params.shadow_blur, "public pill")
                        for _, cut, _ in out]
        surfaces = [x for out, _ in runner.results(surf_handles) for x in out]
        textures: list[np.ndarray] = [x for out, _ in runner.results(tex_handles) for x in out]
        families = [list(FAMILIES)[i % TEXTURES_PER_CHUNK % len(FAMILIES)]
                    for i in range(len(textures))]
        bundled = bundled_textures(TEXTURE_SIZE)
        user = (load_user_textures(str(Path(str(cfg["backgrounds"])).expanduser()), TEXTURE_SIZE)
                if cfg["backgrounds"] is not None else [])
        textures += bundled + user
        families += ["bundled"] * len(bundled) + ["user"] * len(user)
        n_textures = len(textures)
        log.info("synth: textures: %d procedural + %d bundled + %d from data.backgrounds in %.1fs",
                 cfg["num_textures"], len(bundled), len(user), clock.lap("textures"))

        photos = _consumer_plan(cfg, seed, pills, families)
        layout = _layout(cfg, seed, ref_items, photos)
        shared = (runner.share(cutouts), runner.share(textures))
        # the detection scenes also draw on the scene-only surfaces, when there are any
        det_shared = (shared[0], runner.share(textures + surfaces)) if surfaces else shared
        del textures, surfaces  # the shared copies are all the tasks need
        ref_specs = [{"seed": (seed, _S_CROPS, i), "scenes": ch, "image_size": image_size,
                      "scene_size": cfg["crop_scene_size"]}
                     for i, ch in enumerate(_chunks(ref_scenes, CROP_SCENES_PER_CHUNK))]
        con_specs = [{"seed": (seed, _S_CONSUMER, i), "photos": ch, "image_size": image_size,
                      "crop_with": cfg["crop_with"], "crop_detector": cfg["crop_detector"]}
                     for i, ch in enumerate(_chunks(photos, PHOTOS_PER_CHUNK))]
        det_specs = [{"seed": (seed, _S_DETECTION, i), "scenes": ch,
                      "scene_size": cfg["scene_size"]}
                     for i, ch in enumerate(_chunks(det_scenes, DETECTION_SCENES_PER_CHUNK))]
        # every scene task goes out now, so no core idles between the stages below
        crop_params = scene_params(cfg, crop_scenes=True)
        con_params = consumer.consumer_params(default_px_per_mm(REFERENCE_SIZE),
                                              cfg["consumer_compose"])
        # consumer work first and in few long tasks: only those workers import albumentations
        con_h = runner.submit(_consumer_task, con_specs, *shared, runner.share(con_params),
                              tasks=max(1, (runner.workers or 1) // 2))
        ref_h = runner.submit(_crop_scenes_task, ref_specs, *shared, runner.share(crop_params))
        det_h = runner.submit(_detection_task, det_specs, *det_shared, runner.share(det_params))

        arrays = [np.empty((c, image_size, image_size, 3), np.uint8) for c in layout.counts]
        ious: list[float] = []

        def crops_only(results: Iterator[tuple[tuple[np.ndarray, list[float]], float]]) -> (
                Iterator[tuple[np.ndarray, float]]):
            for (crops, chunk_ious), dt in results:
                ious.extend(chunk_ious)
                yield crops, dt

        task_s = _collect(crops_only(progress(runner.results(con_h), "synth: consumer crops",
                                              len(con_specs), "chunk")),
                          len(ref_items), layout, arrays)
        cropping = _cropping_summary(cfg, ious)
        log.info("synth: consumer crops: %d from %d photos, cut by %s (%.1f task-s) in %.1fs",
                 int(layout.consumer.sum()), len(photos), cropping.pop("description"), task_s,
                 clock.lap("consumer_crops"))
        task_s = _collect(progress(runner.results(ref_h), "synth: reference crops",
                                   len(ref_specs), "chunk"), 0, layout, arrays)
        log.info("synth: reference crops: %d from %d scenes of %d px (%.1f task-s) in %.1fs",
                 len(ref_items), len(ref_scenes), cfg["crop_scene_size"], task_s,
                 clock.lap("reference_crops"))
        det_counts, task_s = _write_detection(tmp, final_root,
                                              progress(runner.results(det_h), "synth: detection",
                                                       len(det_specs), "chunk"),
                                              len(det_scenes), cfg["val_fraction"], seed)
        log.info("synth: detection: %d scenes of %d px (%d train, %d val; %.1f task-s) in %.1fs",
                 len(det_scenes), cfg["scene_size"], det_counts["train"], det_counts["val"],
                 task_s, clock.lap("detection"))
    clock.lap("ray_stop")

    sources = _write_classification(tmp, pills, layout, arrays, thumbs)
    write_seconds = clock.lap("write")
    total = time.perf_counter() - clock.t0
    write_meta(
        tmp, cfg["name"], [f"{p.id} {p.name}" for p in pills], image_size,
        {s: c for s, c in zip(SPLITS, layout.counts, strict=True) if c},
        source="synthetic", public=cfg["public"], catalog_ids=[p.id for p in pills],
        sources=sources, detection={"data_yaml": "detection/data.yaml", **det_counts,
                                    "public_pills": len(public),
                                    "surfaces": cfg["detection_surfaces"],
                                    "sheet": SCENES_SHEET if det_scenes else None},
        textures=n_textures, segmentation_fallbacks=fallbacks, consumer_cropping=cropping,
        manifest="manifest.csv",
        contact_sheet="contact_sheet.png",
    )
    # timings are the one thing two builds never share: kept out of meta.json so that it, like
    # every other file but this one (and data.yaml's absolute path), is byte-identical
    (tmp / TIMINGS).write_text(json.dumps(
        {"build_seconds": round(total, 3), "stage_seconds": clock.stages}, indent=2))
    log.info("synth: write: arrays, manifest, contact sheet in %.1fs; total %.1fs (%.0f crops/s)",
             write_seconds, total, len(layout.items) / max(total, 1e-9))


def _cropping_summary(cfg: dict[str, Any], ious: list[float]) -> dict[str, Any]:
    """How the consumer photos were cropped (meta.json's `consumer_cropping`)."""
    out: dict[str, Any] = {"crop_with": cfg["crop_with"], "photos": len(ious)}
    if cfg["crop_with"] != "detector":
        out["description"] = cfg["crop_with"].replace("_", "-")
        return out
    found = [v for v in ious if v > 0]
    out.update(detector=Path(cfg["crop_detector"]).parent.name, found=len(found),
               size_class_fallbacks=len(ious) - len(found),
               mean_iou=round(float(np.mean(found)), 4) if found else None,
               iou_below_0_5=int(sum(v < 0.5 for v in found)))
    out["description"] = (f"the detector ({len(found)}/{len(ious)} photos found, mean IoU with "
                          f"the true box {out['mean_iou']}; the rest size-class)")
    return out


def _collect(results: Iterator[tuple[np.ndarray, float]], start: int, layout: _Layout,
             arrays: list[np.ndarray]) -> float:
    """Scatter chunks of crops (generation order from `start`) into the split arrays."""
    at, task_s = start, 0.0
    for crops, dt in results:
        idx = np.arange(at, at + len(crops))
        for s, array in enumerate(arrays):
            mine = layout.split[idx] == s
            array[layout.row[idx[mine]]] = crops[mine]
        at += len(crops)
        task_s += dt
    return task_s


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write PNG")


def _write_detection(tmp: Path, final_root: Path, results: Iterator[tuple[list, float]],
                     n_scenes: int, val_fraction: float, seed: int) -> tuple[dict[str, int], float]:
    """Write scenes in ultralytics layout; returns scene counts per split and task seconds."""
    if n_scenes == 0:
        return {"train": 0, "val": 0}, 0.0
    n_val = int(round(n_scenes * val_fraction))
    val = set(_rng(seed, _S_SPLIT, _S_DETECTION).permutation(n_scenes)[:n_val].tolist())
    det = tmp / "detection"
    for kind in ("images", "labels"):
        for split in SPLITS:
            (det / kind / split).mkdir(parents=True)
    i, task_s, shown = 0, 0.0, []
    for scenes, dt in results:
        for jpeg, labels in scenes:
            split = "val" if i in val else "train"
            (det / "images" / split / f"scene_{i:05d}.jpg").write_bytes(jpeg)
            (det / "labels" / split / f"scene_{i:05d}.txt").write_text(labels)
            if len(shown) < SHEET_SCENES:
                shown.append(_scene_cell(jpeg, labels))
            i += 1
        task_s += dt
    _write_png(tmp / SCENES_SHEET, _grid_sheet(shown, 4))
    # no `path:`: ultralytics then reads the splits relative to this file, so the folder moves
    doc = {
        "train": "images/train",
        "val": "images/val" if n_val else "images/train",  # ultralytics insists on a val entry
        "nc": 1,
        "names": ["pill"],
    }
    (det / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return {"train": n_scenes - n_val, "val": n_val}, task_s


def _scene_cell(jpeg: bytes, labels: str) -> np.ndarray:
    """One scene, RGB, SHEET_CELL px, its boxes drawn in green."""
    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (SHEET_CELL, SHEET_CELL), interpolation=cv2.INTER_AREA)
    for line in labels.splitlines():
        cx, cy, w, h = (float(v) * SHEET_CELL for v in line.split()[1:])
        cv2.rectangle(img, (int(cx - w / 2), int(cy - h / 2)), (int(cx + w / 2), int(cy + h / 2)),
                      (0, 220, 0), 1)
    return img


def _grid_sheet(cells: list[np.ndarray], cols: int) -> np.ndarray:
    """Cells (same shape) in rows of `cols`, white where a row runs short."""
    rows = -(-len(cells) // cols)
    blank = np.full_like(cells[0], 255)
    cells = cells + [blank] * (rows * cols - len(cells))
    return np.vstack([np.hstack(cells[r * cols:(r + 1) * cols]) for r in range(rows)])


def _write_classification(tmp: Path, pills: list[Pill], layout: _Layout,
                          arrays: list[np.ndarray], thumbs: list[np.ndarray]) -> dict[str, Any]:
    """Write split arrays, manifest.csv and the contact sheet; returns counts per source."""
    sources: dict[str, dict[str, int]] = {"reference": {}, "consumer": {}}
    rows = []
    for s, split in enumerate(SPLITS):
        idx = np.flatnonzero(layout.split == s)  # generation order == row order
        if len(idx) == 0:
            continue
        write_split(tmp, split, arrays[s], layout.items[idx] // 2)
        sources["consumer"][split] = int(layout.consumer[idx].sum())
        sources["reference"][split] = len(idx) - sources["consumer"][split]
        rows += [(j, split, c // 2, pills[c // 2].id, "consumer" if con else "reference",
                  SIDES[c % 2])
                 for j, (c, con) in enumerate(zip(layout.items[idx].tolist(),
                                                  layout.consumer[idx].tolist(), strict=True))]
    with open(tmp / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("index", "split", "label", "pill_id", "source", "side"))
        writer.writerows(rows)
    _write_contact_sheet(tmp / "contact_sheet.png", pills, layout, arrays[0], thumbs)
    return sources


def _write_contact_sheet(path: Path, pills: list[Pill], layout: _Layout, train: np.ndarray,
                         thumbs: list[np.ndarray]) -> None:
    """Grid: per class, its two studio references, then reference crops, then consumer crops."""
    cell, label_w, gap, header = CONTACT_CELL, 220, 6, 22
    rows = pills[:CONTACT_ROWS]
    width = label_w + (2 + 2 * CONTACT_SAMPLES) * cell + 2 * gap
    sheet = np.full((header + len(rows) * cell, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    blank = np.full((cell, cell, 3), 255, np.uint8)
    for text, x in (("studio front / back", label_w),
                    ("reference crops", label_w + 2 * cell + gap),
                    ("consumer crops", label_w + (2 + CONTACT_SAMPLES) * cell + 2 * gap)):
        cv2.putText(sheet, text, (x + 2, 15), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    in_train = layout.split == 0
    label = layout.items // 2
    for r, pill in enumerate(rows):
        y = header + r * cell
        cv2.putText(sheet, f"{pill.id} {pill.name}"[:28], (4, y + 26), font, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        desc = f"{pill.shape} {pill.size_mm[0]:g}mm {'/'.join(c.name for c in pill.colors)}"
        cv2.putText(sheet, desc[:30], (4, y + 46), font, 0.36, (80, 80, 80), 1, cv2.LINE_AA)
        tiles = thumbs[2 * r:2 * r + 2]
        for con in (False, True):
            mine = np.flatnonzero(in_train & (label == r) & (layout.consumer == con))
            picks = [cv2.resize(train[layout.row[i]], (cell, cell), interpolation=cv2.INTER_AREA)
                     for i in mine[:CONTACT_SAMPLES]]
            tiles += picks + [blank] * (CONTACT_SAMPLES - len(picks))
        x = label_w
        for c, tile in enumerate(tiles):
            x += gap if c in (2, 2 + CONTACT_SAMPLES) else 0
            sheet[y:y + cell, x:x + cell] = tile
            x += cell
    _write_png(path, sheet)


def synth_summary(info: DatasetInfo) -> dict[str, Any]:
    """What a built synthetic dataset holds: counts, build seconds and where its files are."""

    root = Path(info.root)
    meta = json.loads((root / "meta.json").read_text())
    if meta.get("source") != "synthetic":
        raise DatasetError(f"{root}: not a synthetic pill dataset (source={meta.get('source')!r})")
    timings_path = root / TIMINGS
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    det = meta.get("detection", {})
    crops = sum(info.splits.values())
    return {
        "root": str(root),
        "num_classes": info.num_classes,
        "image_size": info.image_size,
        "splits": dict(info.splits),
        "sources": meta.get("sources", {}),
        "crops": crops,
        "detection_scenes": {k: det.get(k, 0) for k in ("train", "val")},
        "detection_data_yaml": str(root / det["data_yaml"]) if det.get("train") else None,
        "scenes_sheet": str(root / det["sheet"]) if det.get("sheet") else None,
        "contact_sheet": str(root / meta["contact_sheet"]),
        "manifest": str(root / meta["manifest"]),
        "catalog": str(root / "catalog.json"),
        "build_seconds": timings.get("build_seconds"),
        "stage_seconds": timings.get("stage_seconds", {}),
        "crops_per_second": round(crops / timings["build_seconds"], 1)
        if timings.get("build_seconds") else None,
    }


__all__ = ["DEFAULTS", "VERSION", "build_synthetic", "code_fingerprint", "make_pills",
           "scene_params", "synth_config", "synth_summary"]
