"""The synthetic pill dataset (`data=synthetic`, `stage=synth`): the source recipe, end to end.

catalog -> studio references (front + back, 256 px) -> segmented cut-outs -> textures ->
  * reference composites: scenes of 1..k pills on textures; every box becomes a labelled crop
    (`reference_crops` in all, balanced over pills);
  * consumer photos: one pill per phone-like photo, size-class centre crop, albumentations
    (`consumer_crops` in all, balanced over pills; see fedray/pill/consumer.py);
  * detection scenes (`scene_size` px) in ultralytics YOLO layout, one class `pill`.
The crops are split train/val per source and class (reference crops by crop scene, consumer crops
by photo, so no scene or photo feeds both splits) and written in the dataset-directory format of
fedray/data/datasets.py, next to viewable files: manifest.csv, catalog.json, references/*.png,
contact_sheet.png, detection/.

Work is cut into fixed chunks, each seeded from `SeedSequence([seed, stage, chunk])` and run as a
Ray task (or inline with `workers: 1`), so the output never depends on the number of workers and
the same config + seed rebuilds byte for byte (except the timings in meta.json and the absolute
cache path in detection/data.yaml).

The stages live in: synth_plan.py (seed streams, chunking, plans and the crops' layout, fixed
before any pixel exists), synth_tasks.py (the chunk tasks), runner.py (runs them inline or as
Ray tasks; not in the cache key: it never changes a byte) and synth_write.py (the files); this
module holds the config, the cache key and the orchestration.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fedray.checks import boolean
from fedray.config import ConfigError
from fedray.data.datasets import (
    DatasetError,
    DatasetInfo,
    cached_build,
    config_hash,
    file_digest,
    load_info,
    write_meta,
)
from fedray.data.sources import dataset_builder
from fedray.pill import consumer
from fedray.pill.catalog import save_catalog
from fedray.pill.compose_types import ComposeError, ComposeParams, prepare_cutout
from fedray.pill.import_common import IMAGE_SUFFIXES, fingerprint
from fedray.pill.render import default_px_per_mm
from fedray.pill.runner import Runner
from fedray.pill.synth_plan import (
    PILLS_PER_CHUNK,
    REFERENCE_SIZE,
    S_SURFACES,
    S_TEXTURES,
    SPLITS,
    chunks,
    consumer_plan,
    detection_plan,
    make_pills,
    reference_plan,
    scene_params,
    scene_specs,
    split_layout,
    texture_specs,
)
from fedray.pill.synth_tasks import (
    consumer_task,
    crop_scenes_task,
    detection_task,
    references_task,
    surfaces_task,
    texture_pool,
    textures_task,
)
from fedray.pill.synth_write import (
    SCENES_SHEET,
    collect,
    cropping_summary,
    write_classification,
    write_detection,
    write_references,
)
from fedray.pill.textures import bundled_textures
from fedray.progress import progress
from fedray.targets import first_line

log = logging.getLogger("fedray")

# Part of the cache key: bump whenever the same config would now build different bytes (this
# includes the chunk sizes in synth_plan.py, which fix the per-chunk seeds).
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
                     "_compose.pyx", "consumer.py", "synth.py", "compose_plan.py",
                     "compose_types.py", "crops.py", "synth_plan.py", "synth_tasks.py",
                     "synth_write.py", "import_common.py")  # its stratified_split deals the splits
# Keys that choose where or how fast, never what: left out of the cache key.
_NOT_IN_KEY = ("cache_dir", "workers")


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
        try:  # the ranges ComposeParams checks, now rather than when the scenes are planned
            ComposeParams.from_dict(cfg[key])
        except (ComposeError, TypeError, ValueError) as exc:
            raise ConfigError(f"data.{key}: {first_line(exc)}") from None
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
    for key in ("public", "distinct_sides"):
        boolean(f"data.{key}", cfg[key])
    return cfg


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


def _fedray_check(data_cfg: dict[str, Any]) -> None:
    """What `fedray.validate` runs on `data` before anything is built."""
    synth_config(data_cfg)


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


def _build(tmp: Path, final_root: Path, cfg: dict[str, Any], seed: int) -> None:
    clock = _Clock()
    pills = make_pills(cfg)
    n = len(pills)
    save_catalog(pills, tmp / "catalog.json")
    clock.lap("catalog")
    log.info("synth: catalog of %d %s pills (ids %d..%d)", n,
             "public" if cfg["public"] else "private", pills[0].id, pills[-1].id)
    image_size = cfg["image_size"]
    ref_items, ref_scenes, ref_split = reference_plan(cfg, seed, n)
    public = (make_pills({**cfg, "public": True, "num_pills": cfg["detection_public_pills"]})
              if cfg["detection_public_pills"] and cfg["detection_scenes"] else [])
    det_scenes = detection_plan(cfg, seed, n + len(public))  # public pills: detection only

    with Runner(cfg["workers"]) as runner:
        clock.lap("ray_start")
        # references and textures are independent: both go out before either is awaited
        ref_handles = runner.submit(references_task, chunks(pills, PILLS_PER_CHUNK), seed)
        tex_handles = runner.submit(textures_task,
                                    texture_specs(seed, S_TEXTURES, cfg["num_textures"]))
        pub_handles = runner.submit(references_task, chunks(public, PILLS_PER_CHUNK), seed)
        surf_handles = runner.submit(surfaces_task,
                                     texture_specs(seed, S_SURFACES, cfg["detection_surfaces"]))

        det_params = scene_params(cfg, crop_scenes=False)
        cutouts, thumbs, fallbacks = write_references(
            tmp, pills, progress(runner.results(ref_handles), "synth: references",
                                 len(ref_handles), "chunk"), det_params.shadow_blur)
        log.info("synth: references: %d studio images segmented (%d fallbacks) in %.1fs",
                 len(cutouts), fallbacks, clock.lap("references"))

        for out, _ in runner.results(pub_handles):  # after the private ones: ids 2n and up
            cutouts += [prepare_cutout(cut, det_params.shadow_blur, "public pill")
                        for _, cut, _ in out]
        surfaces = [x for out, _ in runner.results(surf_handles) for x in out]
        textures, families, n_bundled, n_user = texture_pool(runner.results(tex_handles),
                                                             cfg["backgrounds"])
        n_textures = len(textures)
        log.info("synth: textures: %d procedural + %d bundled + %d from data.backgrounds in %.1fs",
                 cfg["num_textures"], n_bundled, n_user, clock.lap("textures"))

        photos = consumer_plan(cfg, seed, pills, families)
        layout = split_layout(cfg, seed, ref_items, ref_split, photos)
        shared = (runner.share(cutouts), runner.share(textures))
        # the detection scenes also draw on the scene-only surfaces, when there are any
        det_shared = (shared[0], runner.share(textures + surfaces)) if surfaces else shared
        del textures, surfaces  # the shared copies are all the tasks need
        ref_specs, con_specs, det_specs = scene_specs(cfg, seed, ref_scenes, photos, det_scenes)
        # every scene task goes out now, so no core idles between the stages below
        crop_params = scene_params(cfg, crop_scenes=True)
        con_params = consumer.consumer_params(default_px_per_mm(REFERENCE_SIZE),
                                              cfg["consumer_compose"])
        # consumer work first and in few long tasks: only those workers import albumentations
        con_h = runner.submit(consumer_task, con_specs, *shared, runner.share(con_params),
                              tasks=max(1, (runner.workers or 1) // 2))
        ref_h = runner.submit(crop_scenes_task, ref_specs, *shared, runner.share(crop_params))
        det_h = runner.submit(detection_task, det_specs, *det_shared, runner.share(det_params))

        arrays = [np.empty((c, image_size, image_size, 3), np.uint8) for c in layout.counts]
        ious: list[float] = []

        def crops_only(results: Iterator[tuple[tuple[np.ndarray, list[float]], float]]) -> (
                Iterator[tuple[np.ndarray, float]]):
            for (crops, chunk_ious), dt in results:
                ious.extend(chunk_ious)
                yield crops, dt

        task_s = collect(crops_only(progress(runner.results(con_h), "synth: consumer crops",
                                             len(con_specs), "chunk")),
                         len(ref_items), layout, arrays)
        cropping = cropping_summary(cfg, ious)
        log.info("synth: consumer crops: %d from %d photos, cut by %s (%.1f task-s) in %.1fs",
                 int(layout.consumer.sum()), len(photos), cropping.pop("description"), task_s,
                 clock.lap("consumer_crops"))
        task_s = collect(progress(runner.results(ref_h), "synth: reference crops",
                                  len(ref_specs), "chunk"), 0, layout, arrays)
        log.info("synth: reference crops: %d from %d scenes of %d px (%.1f task-s) in %.1fs",
                 len(ref_items), len(ref_scenes), cfg["crop_scene_size"], task_s,
                 clock.lap("reference_crops"))
        det_counts, task_s = write_detection(tmp, final_root,
                                             progress(runner.results(det_h), "synth: detection",
                                                      len(det_specs), "chunk"),
                                             len(det_scenes), cfg["val_fraction"], seed)
        log.info("synth: detection: %d scenes of %d px (%d train, %d val; %.1f task-s) in %.1fs",
                 len(det_scenes), cfg["scene_size"], det_counts["train"], det_counts["val"],
                 task_s, clock.lap("detection"))
    clock.lap("ray_stop")

    sources = write_classification(tmp, pills, layout, arrays, thumbs)
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


__all__ = ["DEFAULTS", "VERSION", "build_synthetic", "code_fingerprint", "synth_config",
           "synth_summary"]


build_synthetic.fedray_check = _fedray_check  # type: ignore[attr-defined]
build_synthetic.fedray_classes = "num_pills"  # type: ignore[attr-defined]
build_synthetic.fedray_keys = tuple(DEFAULTS)  # type: ignore[attr-defined]
