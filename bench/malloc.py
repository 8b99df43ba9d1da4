"""The public pretraining's step under glibc's default malloc vs the settings fedray applies.

    python bench/malloc.py                    # pill_noniid's pretraining step, median of 5 repeats
    python bench/malloc.py --repeats 3 --steps 20 --threads 2

A CPU training step allocates and frees the same large activation buffers every step. glibc's
malloc hands buffers over its mmap threshold straight back to the kernel and trims the heap's
free top, so the next step faults every page in again, zeroed by the kernel (tens of thousands
of minor page faults a second, a third of the CPU in system time on some VMs).
`fedray.malloc.keep_freed_memory` raises the mmap threshold to glibc's maximum and stops the
trimming (mallopt), so freed buffers are reused. Each repeat runs the same steps in a fresh
process, default and tuned interleaved (so drift hits both alike): pill_noniid's pretraining
model (SqueezeNet-BN under its tapped head, channels-last), SGD, random batches of the
pretraining's size. Printed: median ms per step, minor page faults per step and the share of
CPU time spent in the kernel, each setting, and default / tuned.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(tuned: bool, steps: int, threads: int, batch: int | None) -> dict:
    """One measurement in this (fresh) process: the figures of `steps` timed steps."""
    if tuned:
        from fedray.malloc import keep_freed_memory

        keep_freed_memory()
    import torch

    from fedray.config import compose_plain
    from fedray.models import build_model
    from fedray.pill.pretrain import pretrain_model_cfg

    torch.set_num_threads(threads)
    cfg = compose_plain(["+experiment=pill_noniid"])
    batch = batch or int(cfg["pretrain"]["batch_size"])
    size = int(cfg["data"]["image_size"])
    torch.manual_seed(0)
    model = build_model(pretrain_model_cfg(cfg), 100)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: oneDNN picks its kernels, the heap grows to its working size
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    return {"ms": wall / steps * 1e3, "faults": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys": system / max(user + system, 1e-9), "maxrss_mb": r1.ru_maxrss / 1024,
            "batch": batch, "size": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="default: pretrain.batch_size")
    ap.add_argument("--child", choices=["default", "tuned"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "tuned", args.steps, args.threads, args.batch)))
        return
    runs: dict[str, list[dict]] = {"default": [], "tuned": []}
    for _ in range(args.repeats):
        for name in runs:
            cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps),
                   "--threads", str(args.threads)] + (
                       ["--batch", str(args.batch)] if args.batch else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    first = runs["default"][0]
    print(f"pretraining step of pill_noniid: batch {first['batch']} at {first['size']} px, "
          f"{args.threads} threads; median of {args.repeats} processes x {args.steps} steps")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("ms", "faults", "sys",
                                                                  "maxrss_mb")}
           for name, rs in runs.items()}
    for name, m in med.items():
        print(f"{name:<8} {m['ms']:7.1f} ms/step  {m['faults']:8.0f} minor faults/step  "
              f"system time {m['sys']:5.1%}  peak RSS {m['maxrss_mb']:6.0f} MB")
    print(f"default / tuned: x{med['default']['ms'] / med['tuned']['ms']:.2f} time per step")


if __name__ == "__main__":
    main()
