"""The bare loop fedray is measured against: sequential FedAvg in plain PyTorch, one process.

    python bench/bare_loop.py JOB.json

JOB.json (written by bench/overhead.py) names a built dataset directory (uint8 NHWC .npy
arrays), a saved partition (one index array per client), the model config and the training
settings. The loop samples clients as fedray does (seed, round), trains each one's shard in turn
from the global weights with a fresh SGD, averages the state dicts by sample count, and evaluates
on the val split at the same rounds fedray does. No Ray, no Hydra, no logging, no checkpoints:
what a user would write by hand. Prints one JSON line: rounds, seconds, val accuracy.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def to_batch(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W)."""
    return (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() - MEAN) / STD


def sample(num_clients: int, k: int, seed: int, r: int) -> list[int]:
    """fedray's client sampling: an RNG seeded by (seed, round), sorted ids."""
    if k >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, r, 0x5A])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy over the val split in batches of 256."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for s in range(0, len(y), 256):
            hits += int((model(to_batch(x[s : s + 256])).argmax(1).numpy() == y[s : s + 256]).sum())
    return hits / max(1, len(y))


def main(job_path: str) -> None:
    """Run the job and print its figures."""
    t_start = time.perf_counter()
    job = json.loads(Path(job_path).read_text())
    from fedray.models import build_model

    root = Path(job["root"])
    x = np.load(root / "train_images.npy", mmap_mode="r")
    y = np.load(root / "train_labels.npy")
    vx = np.load(root / "val_images.npy", mmap_mode="r")
    vy = np.load(root / "val_labels.npy")
    saved = np.load(job["parts"])
    parts = [saved[f"c{i}"] for i in range(job["num_clients"])]
    torch.set_num_threads(int(job.get("threads") or torch.get_num_threads()))
    torch.manual_seed(job["seed"])
    model = build_model(job["model"], job["num_classes"])
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    bs, acc = int(job["batch_size"]), float("nan")
    t0 = time.perf_counter()
    for r in range(job["rounds"]):
        states, sizes = [], []
        for cid in sample(job["num_clients"], job["per_round"], job["seed"], r):
            model.load_state_dict(global_state)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=job["lr"], momentum=job["momentum"])
            rng = np.random.default_rng([job["seed"], r, cid])
            idx = parts[cid]
            for _ in range(job["epochs"]):
                order = rng.permutation(idx)
                for s in range(0, len(order), bs):
                    b = np.sort(order[s : s + bs])
                    loss = torch.nn.functional.cross_entropy(
                        model(to_batch(x[b])), torch.as_tensor(y[b])
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            sizes.append(len(idx))
        w = [n / sum(sizes) for n in sizes]
        global_state = {
            k: sum(wi * s[k].double() for wi, s in zip(w, states, strict=True)).to(v.dtype)
            for k, v in global_state.items()
        }
        if (r + 1) % job["eval_every"] == 0 or r + 1 == job["rounds"]:
            model.load_state_dict(global_state)
            acc = accuracy(model, vx, vy)
    end = time.perf_counter()
    out = {
        "rounds": job["rounds"],
        "loop_s": end - t0,
        "setup_s": t0 - t_start,
        "val_acc": acc,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
