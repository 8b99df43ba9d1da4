"""Frozen-backbone features on CPU: BatchNorm as its own layer vs folded into the conv before it.

    python bench/fold.py                           # 1 and 2 threads, 512 crops, median of 5
    python bench/fold.py --threads 1 --repeats 3 --crops 256

What `extract_features` computes for pill_noniid's head (`fl.cache_features`): the pill SqueezeNet
on 64 px crops, 4 quarter turns x 2 zooms, 8 Fire modules tapped and max-pooled, in eval mode.
Timed through `view_features` on the eval-mode backbone ("BN") and on `fold_batchnorm`'s copy of
it ("folded"), alternating, after a warm-up; printed: median ms per crop for each, the speed-up,
and the largest difference between the two feature matrices (float rounding only). Each thread
count runs in a fresh process with fedray's malloc setting (`fedray.malloc`), as a client actor
or a run does: changing torch's thread count inside one process changed the unfolded figure by
up to 1.5x here, and without the setting every BatchNorm output is a fresh mmap (the unfolded
pass then took up to 2x the folded one's time). Random weights with BatchNorm statistics drawn
far from the identity, so no cache is needed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedray.data.datasets import to_tensor_batch  # noqa: E402
from fedray.malloc import keep_freed_memory  # noqa: E402
from fedray.models.fold import fold_batchnorm  # noqa: E402
from fedray.models.views import view_features  # noqa: E402
from fedray.pill.squeezenet import build_squeezenet  # noqa: E402

VIEWS = (4, (1.0, 1.6), (4, 5, 7, 8, 10, 11, 12, 13), "max")  # turns, zooms, taps, pool


def backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_squeezenet(20, zooms=VIEWS[1], taps=list(VIEWS[2]), pool=VIEWS[3])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.to(memory_format=torch.channels_last).eval()


@torch.no_grad()
def features(blocks: torch.nn.Module, images: np.ndarray, batch: int) -> torch.Tensor:
    return torch.cat([view_features(blocks, to_tensor_batch(images[i : i + batch]), *VIEWS)
                      for i in range(0, len(images), batch)])


def ms_per_crop(blocks: torch.nn.Module, images: np.ndarray, batch: int) -> float:
    t0 = time.perf_counter()
    features(blocks, images, batch)
    return (time.perf_counter() - t0) / len(images) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--crops", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)  # extract_features' default
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if len(args.threads) > 1:  # one fresh process per thread count
        for threads in args.threads:
            cmd = [sys.executable, __file__, "--threads", str(threads), "--crops", str(args.crops),
                   "--batch", str(args.batch), "--repeats", str(args.repeats)]
            subprocess.run(cmd, check=True)
        return
    keep_freed_memory()  # as run() and every client actor do
    threads = args.threads[0]
    torch.set_num_threads(threads)
    model = backbone()
    plain, folded = model.features, fold_batchnorm(model).features
    images = np.random.default_rng(0).integers(0, 256, (args.crops, 64, 64, 3), dtype=np.uint8)
    diff = (features(plain, images[:64], 64) - features(folded, images[:64], 64)).abs().max()
    features(plain, images[: args.batch], args.batch)  # warm-up: oneDNN picks its kernels
    features(folded, images[: args.batch], args.batch)
    runs: dict[str, list[float]] = {"bn": [], "folded": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        runs["bn"].append(ms_per_crop(plain, images, args.batch))
        runs["folded"].append(ms_per_crop(folded, images, args.batch))
    bn, fo = statistics.median(runs["bn"]), statistics.median(runs["folded"])
    print(f"{threads} thread{'s' if threads > 1 else ' '}  BN {bn:6.2f} ms/crop  folded {fo:6.2f} "
          f"ms/crop  speed-up x{bn / fo:.2f}  (pill SqueezeNet, 64 px, 8 views, batch "
          f"{args.batch}, median of {args.repeats} x {args.crops} crops; max |difference| "
          f"{diff:.1e}; torch {torch.__version__})", flush=True)

if __name__ == "__main__":
    main()
