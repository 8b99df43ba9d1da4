"""Training speed of SqueezeNet on CPU: NCHW (PyTorch's default) vs channels-last memory order.

    python bench/channels_last.py                  # 64 and 96 px, batch 64, median of 5 repeats
    python bench/channels_last.py --sizes 64 --repeats 3 --threads 2

fedray builds every model channels-last and feeds it channels-last batches (oneDNN's fast layout on
CPU); the maths is the same. One timed unit is `--steps` SGD steps (forward, backward, update) on a
random batch after a warm-up; printed: median ms per image for each layout and NCHW / channels-last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedray.pill.squeezenet import build_squeezenet  # noqa: E402


def ms_per_image(size: int, channels_last: bool, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_squeezenet(100)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 100, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: oneDNN picks its kernels
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / (steps * batch) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"SqueezeNet 1.1 + BN, batch {args.batch}, {args.threads} threads, torch "
          f"{torch.__version__}; median of {args.repeats} x {args.steps} steps")
    for size in args.sizes:
        runs = {"nchw": [], "channels_last": []}
        for _ in range(args.repeats):  # interleaved, so drift hits both layouts alike
            for layout in runs:
                runs[layout].append(
                    ms_per_image(size, layout == "channels_last", args.batch, args.steps))
        nchw = statistics.median(runs["nchw"])
        cl = statistics.median(runs["channels_last"])
        print(f"{size:4d} px  NCHW {nchw:6.2f} ms/img  channels-last {cl:6.2f} ms/img  "
              f"speed-up x{nchw / cl:.2f}")


if __name__ == "__main__":
    main()
