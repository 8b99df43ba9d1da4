"""Synthetic-scene throughput: Cython kernel vs NumPy twin vs torch vs albumentations + OpenCV.

Every path renders the same scenes (same textures, same cut-outs, same pill counts) and crops every
box, so scenes/s and crops/s compare like with like. Each path runs in its own spawned process so
its peak RSS (resource.getrusage) is its own. Timings are the median of --repeats full runs after a
warm-up, interleaved across paths so that load from elsewhere on the machine hits all of them
alike; "cpu ms" is process CPU time per scene (all threads). With --threads T > 1 the Cython and
NumPy paths render T scenes at once (compose.render_batch), torch uses T intra-op threads and
OpenCV T threads everywhere.

    python bench/synth.py --scenes 64 --size 640 --threads 1
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fedray.pill.compose_types import ComposeParams  # noqa: E402

CROP = 96
CUTOUT_PX_PER_MM = 10.0


def demo_cutouts(n: int, seed: int) -> list[np.ndarray]:
    """Stand-in pill cut-outs (RGBA, cropped, 10 px/mm): shaded round and oval tablets."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = rng.uniform(6, 20)
        width = length * (1.0 if i % 3 == 0 else rng.uniform(0.4, 0.7))
        w, h = int(length * CUTOUT_PX_PER_MM) + 4, int(width * CUTOUT_PX_PER_MM) + 4
        img = np.zeros((h, w, 4), np.uint8)
        colour = tuple(int(c) for c in rng.integers(40, 255, 3))
        centre, axes = (w // 2, h // 2), (w // 2 - 2, h // 2 - 2)
        cv2.ellipse(img, centre, axes, 0, 0, 360, (*colour, 255), -1, cv2.LINE_AA)
        yy, xx = np.mgrid[0:h, 0:w]
        shade = 1.0 - 0.35 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 4
        img[:, :, :3] = np.clip(img[:, :, :3] * shade[..., None], 0, 255).astype(np.uint8)
        cv2.putText(img, f"{i:02d}", (w // 2 - 14, h // 2 + 8), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8, (25, 25, 25, 255), 2, cv2.LINE_AA)
        out.append(img)
    return out


def workload(n_scenes: int, seed: int, max_pills: int) -> tuple[list, list, list]:
    """(textures, cut-outs, [(texture index, cut-out indices, scene seed)])."""
    from fedray.pill.textures import make_textures

    textures = make_textures(12, 512, seed, bundled=False)
    cutouts = demo_cutouts(20, seed)
    rng = np.random.default_rng(seed)
    specs = []
    for s in range(n_scenes):
        k = int(rng.integers(1, max_pills + 1))
        chosen = [int(c) for c in rng.choice(len(cutouts), k, replace=False)]
        specs.append((int(rng.integers(len(textures))), chosen, seed * 7919 + s))
    return textures, cutouts, specs


# --------------------------------------------------------------- albumentations + OpenCV


def albumentations_pipeline(params: ComposeParams, size: int) -> Any:
    """The same composite written the straightforward way: per-pill and per-scene A.Compose."""
    import albumentations as A

    background = A.Compose([
        A.RandomResizedCrop(size=(size, size), scale=(0.25, 1.0), ratio=(1.0, 1.0), p=1.0),
        A.Rotate(limit=180, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
        A.HorizontalFlip(p=0.5),
    ])
    pill = A.Compose([
        A.Rotate(limit=180, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0,
                 mask_interpolation=cv2.INTER_LINEAR, p=1.0),
        A.Perspective(scale=(0.0, params.perspective), fit_output=True,
                      mask_interpolation=cv2.INTER_LINEAR, p=1.0),
        A.ColorJitter(brightness=(0.9, 1.1), contrast=params.contrast,
                      saturation=params.saturation, hue=(-0.02, 0.02), p=1.0),
    ])
    scene = A.Compose([
        A.RandomBrightnessContrast(brightness_limit=(-0.2, 0.15), contrast_limit=(-0.1, 0.1),
                                   p=1.0),
        A.MotionBlur(blur_limit=(3, 9), p=params.blur_prob),
        A.GaussNoise(std_range=(params.noise_sigma[0] / 255, params.noise_sigma[1] / 255),
                     p=params.noise_prob),
        A.ImageCompression(quality_range=tuple(int(q) for q in params.jpeg_quality),
                           p=params.jpeg_prob),
    ])
    return background, pill, scene


def albumentations_scene(texture: np.ndarray, cutouts: list[np.ndarray], rng: np.random.Generator,
                         params: ComposeParams, size: int, pipes: Any) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Paste augmented pills (with a blurred offset shadow) on an augmented texture; boxes."""
    background, pill_aug, scene_aug = pipes
    canvas = background(image=texture)["image"].astype(np.float32)
    px_per_mm = size / rng.uniform(*params.fov_mm)
    boxes, taken = [], []
    shadow_dir = rng.uniform(0, 2 * np.pi)
    for cut in cutouts:
        diag = int(math.hypot(*cut.shape[:2]))
        pad_y, pad_x = (diag - cut.shape[0]) // 2 + 2, (diag - cut.shape[1]) // 2 + 2
        padded = cv2.copyMakeBorder(cut, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, 0)
        out = pill_aug(image=np.ascontiguousarray(padded[:, :, :3]), mask=padded[:, :, 3])
        scale = px_per_mm / CUTOUT_PX_PER_MM * rng.uniform(*params.pill_scale)
        rgb = cv2.resize(out["image"], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(out["mask"], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ys, xs = np.nonzero(alpha > 127)
        if len(xs) == 0:
            continue
        rgb = rgb[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        alpha = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        h, w = alpha.shape
        if h >= size or w >= size:
            continue
        for _ in range(params.placement_tries):  # rejection sampling against earlier boxes
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(min(x + w, bx1) - max(x, bx0) <= params.max_overlap * w
                   or min(y + h, by1) - max(y, by0) <= params.max_overlap * h
                   for bx0, by0, bx1, by1 in taken):
                break
        a = alpha.astype(np.float32) / 255.0
        if rng.random() < params.shadow_prob:
            reach = rng.uniform(*params.shadow_offset) * math.sqrt(h * w)
            dx = int(round(math.cos(shadow_dir) * reach))
            dy = int(round(math.sin(shadow_dir) * reach))
            sigma = max(0.5, params.shadow_blur * max(h, w))
            shadow = cv2.GaussianBlur(a, (0, 0), sigma) * rng.uniform(*params.shadow_strength)
            sx0, sy0 = max(0, x + dx), max(0, y + dy)
            sx1, sy1 = min(size, x + dx + w), min(size, y + dy + h)
            if sx1 > sx0 and sy1 > sy0:
                sh = shadow[sy0 - y - dy:sy1 - y - dy, sx0 - x - dx:sx1 - x - dx]
                canvas[sy0:sy1, sx0:sx1] *= (1.0 - sh)[..., None]
        region = canvas[y:y + h, x:x + w]
        canvas[y:y + h, x:x + w] = region * (1.0 - a[..., None]) + rgb * a[..., None]
        taken.append((x, y, x + w, y + h))
        boxes.append(((x + w / 2) / size, (y + h / 2) / size, w / size, h / size))
    scene = scene_aug(image=np.clip(canvas, 0, 255).astype(np.uint8))["image"]
    return scene, np.array(boxes, np.float32).reshape(-1, 4)


# ------------------------------------------------------------------------------- runners


def _make_runner(path: str, args: argparse.Namespace) -> Any:
    """Build the workload and return run(specs) -> number of crops for one path."""
    from fedray.pill import compose as C
    from fedray.pill.compose_plan import plan_scene
    from fedray.pill.compose_types import prepare_cutout
    from fedray.pill.crops import crop_boxes

    params = ComposeParams(max_pills=args.max_pills)
    textures, raw_cutouts, specs = workload(args.scenes, args.seed, args.max_pills)
    prepared = [prepare_cutout(c, params.shadow_blur) for c in raw_cutouts]

    def plans_for(batch: list) -> list:
        return [plan_scene(textures[tex], [prepared[c] for c in cuts],
                           np.random.default_rng(seed), params, args.size)
                for tex, cuts, seed in batch]

    if path in ("cython", "numpy"):
        if path == "cython" and C._ckernel is None:
            raise RuntimeError("Cython kernel not built (python setup.py build_ext --inplace)")

        def run(batch: list) -> int:
            crops = 0
            for i in range(0, len(batch), args.batch):
                rendered = C.render_batch(plans_for(batch[i:i + args.batch]), backend=path,
                                          num_threads=args.threads)
                crops += sum(len(crop_boxes(r.image, r.boxes, CROP)) for r in rendered)
            return crops
    elif path.startswith("torch"):
        import torch

        from fedray.pill.compose_torch import render_plans

        torch.set_num_threads(args.threads)
        device = "cuda" if path == "torch-cuda" else "cpu"

        def run(batch: list) -> int:
            crops = 0
            for i in range(0, len(batch), args.batch):
                for r in render_plans(plans_for(batch[i:i + args.batch]), device):
                    crops += len(crop_boxes(r.image, r.boxes, CROP))
            if device == "cuda":
                torch.cuda.synchronize()
            return crops
    elif path == "albumentations":
        pipes = albumentations_pipeline(params, args.size)

        def run(batch: list) -> int:
            crops = 0
            for tex, cuts, seed in batch:
                scene, boxes = albumentations_scene(textures[tex], [raw_cutouts[c] for c in cuts],
                                                    np.random.default_rng(seed), params,
                                                    args.size, pipes)
                crops += len(crop_boxes(scene, boxes, CROP))
            return crops
    else:
        raise ValueError(f"unknown path {path!r}")
    return run, specs


def _worker(path: str, args: argparse.Namespace, conn: Any) -> None:
    """Child process for one path: set up, warm up, then time one full run per request."""
    cv2.setNumThreads(args.threads)
    try:
        run, specs = _make_runner(path, args)
        run(specs[: min(4, len(specs))])  # warm-up: imports, caches, thread pools
        conn.send(("ready", None))
    except Exception as exc:  # noqa: BLE001 - report any setup failure as a skipped path
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while conn.recv() == "run":
        start, cpu = time.perf_counter(), time.process_time()
        crops = run(specs)
        conn.send(("time", (time.perf_counter() - start, time.process_time() - cpu, crops)))
    conn.send(("rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    """Start one process per path, interleave their timed runs, print a comparison table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=64)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16, help="scenes per render_batch / torch batch")
    ap.add_argument("--max-pills", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paths", default="cython,numpy,torch-cpu,albumentations",
                    help="comma list; add torch-cuda where a GPU exists")
    args = ap.parse_args()
    if args.repeats < 1 or args.scenes < 1 or args.threads < 1:
        ap.error("--repeats, --scenes and --threads must be >= 1")
    # thread pools read these when they start, so every child inherits them
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    ctx = mp.get_context("spawn")
    workers: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for path in (p.strip() for p in args.paths.split(",") if p.strip()):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(path, args, child))
        proc.start()
        kind, msg = parent.recv()  # one at a time, so set-up never overlaps a timed run
        if kind == "error":
            errors[path] = msg
            proc.join()
        else:
            workers[path] = (proc, parent)
    times: dict[str, list[float]] = {p: [] for p in workers}
    cpu: dict[str, list[float]] = {p: [] for p in workers}
    crops: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so load drift hits every path alike
        for path, (_, conn) in workers.items():
            time.sleep(0.3)  # let the previous path's spinning worker threads go idle
            conn.send("run")
            _, (elapsed, cpu_s, n) = conn.recv()
            times[path].append(elapsed)
            cpu[path].append(cpu_s)
            crops[path] = n
    rss = {}
    for path, (proc, conn) in workers.items():
        conn.send("stop")
        rss[path] = conn.recv()[1]
        proc.join()

    print(f"scenes={args.scenes} size={args.size} threads={args.threads} "
          f"repeats={args.repeats} max_pills={args.max_pills} cpus={os.cpu_count()}")
    base = statistics.median(times["albumentations"]) if "albumentations" in times else None
    print(f"{'path':<16}{'scenes/s':>10}{'crops/s':>10}{'ms/scene':>10}{'cpu ms':>8}"
          f"{'vs albu':>9}{'peak RSS MB':>13}")
    for path, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{base / med:.2f}x" if base else "-"
        cpu_ms = 1e3 * statistics.median(cpu[path]) / args.scenes
        print(f"{path:<16}{args.scenes / med:>10.1f}{crops[path] / med:>10.1f}"
              f"{1e3 * med / args.scenes:>10.2f}{cpu_ms:>8.2f}{ratio:>9}{rss[path]:>13.0f}")
    for path, msg in errors.items():
        print(f"{path:<16}skipped: {msg}")


if __name__ == "__main__":
    main()
