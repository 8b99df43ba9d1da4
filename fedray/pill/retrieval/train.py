"""Training of the embedding streams: triplet loss with the paper's online triplets, then
(student) knowledge distillation from a trained teacher with the l2 loss (paper §5.4, eq. 8).

Augmentation is the paper's (§4.1.2): Gaussian blur, zoom in (0.8, 1.2), translation of +-5 px
(at 227 px; scaled with the input) and a small rotation; `rotate_deg` widens the rotation
because the synthetic consumer photos turn the pill freely, where the paper's crops were upright.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedray.pill.retrieval.nets import MultiStream
from fedray.pill.retrieval.streams import stream_inputs, to_float
from fedray.pill.retrieval.triplet import mine_triplets, proxy_loss, triplet_loss
from fedray.progress import Progress

log = logging.getLogger("fedray")

OnEpoch = Callable[[dict[str, Any]], None]


def augment_batch(x: torch.Tensor, gen: torch.Generator, aug: dict[str, Any]) -> torch.Tensor:
    """Random blur, zoom, shift and rotation of (B, 3, S, S) images in [0, 1]."""
    b, _, s, _ = x.shape
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=gen)  # noqa: E731
    angle = u(-1.0, 1.0) * math.radians(float(aug.get("rotate_deg", 6.0)))
    zoom = u(*aug.get("zoom", (0.8, 1.2)))
    shift = 2.0 * float(aug.get("translate_px", 5.0)) / 227.0  # of the half-width, as 5 px of 227
    tx, ty = u(-shift, shift), u(-shift, shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    p = float(aug.get("blur_prob", 0.3))
    if p > 0:
        sigma = float(torch.empty(1).uniform_(0.5, 1.5, generator=gen))
        r = torch.arange(-2, 3, dtype=x.dtype)
        k = torch.exp(-(r**2) / (2 * sigma**2))
        k = (k / k.sum()).view(1, 1, 1, 5).repeat(3, 1, 1, 1)
        blurred = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), k, groups=3)
        blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"),
                           k.transpose(2, 3), groups=3)
        pick = (torch.rand(b, generator=gen) < p).view(b, 1, 1, 1)
        x = torch.where(pick, blurred, x)
    return x


@torch.no_grad()
def embed(model: MultiStream, images: np.ndarray, batch_size: int = 128,
          standardize: bool = True, device: str = "cpu") -> dict[str, torch.Tensor]:
    """{stream: (N, D)} embeddings of uint8 (N, S, S, 3) images, eval mode, on the CPU."""
    was = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in model.streams}
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size]).to(device)
        out = model(stream_inputs(x, model.streams, standardize))
        for s, e in out.items():
            parts[s].append(e.float().cpu())
    model.train(was)
    return {s: torch.cat(v) for s, v in parts.items()}


def init_proxies(model: MultiStream, pool: np.ndarray, labels: np.ndarray, kind: str,
                 gen: torch.Generator, standardize: bool = True,
                 device: str = "cpu") -> dict[str, torch.nn.Parameter]:
    """{stream: (P, D) proxies} for the labels 0..P-1 of `pool`'s images: small random
    vectors (`random`), or each label's mean unit embedding under `model` (`imprint`)."""
    if kind not in PROXY_INITS:
        raise ValueError(f"proxy_init={kind!r}: choose one of {PROXY_INITS}")
    num = int(labels.max()) + 1
    if kind == "random":
        return {s: torch.nn.Parameter(0.01 * torch.randn(
            num, model.nets[s].embed_dim, generator=gen).to(device)) for s in model.streams}
    y = torch.as_tensor(labels, dtype=torch.long)
    out = {}
    for s, e in embed(model, pool, standardize=standardize, device=device).items():
        sums = torch.zeros(num, e.shape[1]).index_add_(0, y, F.normalize(e, dim=1))
        out[s] = torch.nn.Parameter(F.normalize(sums, dim=1).to(device))
    return out


def _optimizer(model: torch.nn.Module, tcfg: dict[str, Any]) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=float(tcfg["lr"]),
                            weight_decay=float(tcfg.get("weight_decay", 0.0)))


LOSSES = ("triplet", "proxy", "both")
SCHEDULES = ("constant", "cosine")
PROXY_INITS = ("random", "imprint")


def lr_schedule(opt: torch.optim.Optimizer, tcfg: dict[str, Any],
                steps: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """`tcfg["schedule"]`: constant lr, or a cosine decay to 0 over the call's `steps`."""
    kind = str(tcfg.get("schedule", "constant"))
    if kind not in SCHEDULES:
        raise ValueError(f"schedule={kind!r}: choose one of {SCHEDULES}")
    if kind == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, steps) / max(steps, 1))))


def train_embedding(model: MultiStream, pool: np.ndarray, pool_pill: np.ndarray,
                    ref_index: np.ndarray, tcfg: dict[str, Any], seed: int,
                    on_epoch: OnEpoch | None = None, device: str = "cpu",
                    proxies: dict[str, torch.nn.Parameter] | None = None,
                    ) -> list[dict[str, Any]]:
    """Train every stream on `pool` (uint8 (N, S, S, 3), pills `pool_pill`) with `tcfg["loss"]`:

    - `triplet` (the paper): per stream its own (anchor, positive, negative) images, negatives
      drawn among the references `ref_index` (pool indices) from the stream's own ranking,
      refreshed at the start of every epoch (eval-mode embeddings);
    - `proxy`: the normalized-softmax loss against one learnt proxy per training pill, on
      batches of 3 x batch_size images (as many images per step as a triplet batch);
    - `both`: the triplet loss plus the proxy loss on the same triplet images.
    The proxies are not part of the model: the model is the same embedding network whatever
    the loss. `tcfg["proxy_init"]` starts them as random directions (`random`), or, for a
    model that already embeds well (a pretrained start), as each pill's mean unit embedding
    of its images in `pool` (`imprint`: Qi, Brown & Lowe, "Low-shot learning with imprinted
    weights", CVPR 2018), so the first steps refine the model's geometry instead of pulling
    every pill towards a random direction. Pass a dict as `proxies` to keep them across calls
    (a federated client's own, which never leave it); it is filled on first use.
    """
    kind = str(tcfg.get("loss", "triplet"))
    if kind not in LOSSES:
        raise ValueError(f"loss={kind!r}: choose one of {LOSSES}")
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, tcfg)
    bs, window, margin = int(tcfg["batch_size"]), int(tcfg["window"]), float(tcfg["margin"])
    temperature = float(tcfg.get("temperature", 0.05))
    std, aug = bool(tcfg.get("standardize", True)), dict(tcfg.get("augment") or {})
    labels = np.unique(pool_pill, return_inverse=True)[1]
    proxies = {} if proxies is None else proxies
    if kind != "triplet":
        if not proxies:
            proxies.update(init_proxies(model, pool, labels, str(tcfg.get("proxy_init",
                                                                          "random")),
                                        gen, std, device))
        opt.add_param_group({"params": list(proxies.values())})
    step = 3 * bs if kind == "proxy" else bs
    sched = lr_schedule(opt, tcfg, int(tcfg["epochs"]) * -(-len(pool) // step))
    history = []
    model.to(device).train()
    for epoch in range(int(tcfg["epochs"])):
        t0 = time.perf_counter()
        sims = {}
        if kind != "proxy":  # the negatives' rankings
            emb = embed(model, pool, standardize=std, device=device)
            sims = {s: (e @ e[ref_index].T).numpy() for s, e in emb.items()}
        order = rng.permutation(len(pool))
        losses, active = [], []
        bar = Progress(-(-len(order) // step), f"retrieval: {kind} epoch {epoch + 1}", "step")
        for i in range(0, len(order), step):
            anchors = order[i:i + step]
            loss = torch.zeros((), device=device)
            if kind == "proxy":
                x = augment_batch(to_float(pool[anchors]), gen, aug).to(device)
                y = torch.as_tensor(labels[anchors], device=device)
                out = model(stream_inputs(x, model.streams, std))
                for s in model.streams:
                    loss = loss + proxy_loss(out[s], proxies[s], y, temperature)
            else:
                counts = []
                for s in model.streams:  # one forward per stream of its own triplets
                    pos, neg = mine_triplets(sims[s][anchors], anchors, pool_pill,
                                             ref_index, window, rng)
                    idx = np.concatenate([anchors, pos, ref_index[neg]])
                    x = augment_batch(to_float(pool[idx]), gen, aug).to(device)
                    e = model.nets[s](stream_inputs(x, [s], std)[s])
                    ea, ep, en = e.split(len(anchors))
                    loss = loss + triplet_loss(ea, ep, en, margin)
                    if kind == "both":
                        y = torch.as_tensor(labels[idx], device=device)
                        loss = loss + proxy_loss(e, proxies[s], y, temperature)
                    counts.append(float(((ea - ep).pow(2).sum(1) + margin
                                         > (ea - en).pow(2).sum(1)).float().mean()))
                active.append(float(np.mean(counts)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
            bar.update(1, loss=losses[-1])
        bar.close()
        row = {"epoch": epoch + 1, "train/loss": float(np.mean(losses)),
               "time/epoch_s": time.perf_counter() - t0}
        if active:
            row["train/active_triplets"] = float(np.mean(active))
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return history


@torch.no_grad()
def align_to(student: MultiStream, teacher: MultiStream, images: np.ndarray,
             standardize: bool = True, device: str = "cpu") -> dict[str, tuple[float, float]]:
    """Rotate each student stream's embedding onto its teacher stream's before distillation.

    Two nets trained apart embed the same image in unrelated bases, so the l2 loss would first
    spend its steps turning one basis into the other. The orthogonal R that best maps the
    student's embeddings of `images` onto the teacher's (Procrustes: R = U V^T from the SVD of
    T^T S) is folded into the student's last linear layer. Cosine similarities, and so every
    ranking the student makes, are unchanged: the student starts distillation as good as it
    was, already close to the teacher. Returns {stream: (mean l2 before, after)}.
    """
    s_emb = embed(student, images, standardize=standardize, device=device)
    t_emb = embed(teacher, images, standardize=standardize, device=device)
    out = {}
    for s in student.streams:
        a, b = s_emb[s].double(), t_emb[s].double()
        u, _, vh = torch.linalg.svd(b.T @ a)
        rot = u @ vh
        fc = student.nets[s].classifier[-1]
        fc.weight.copy_(rot.to(fc.weight) @ fc.weight)
        fc.bias.copy_(rot.to(fc.bias) @ fc.bias)
        before = float((a - b).pow(2).sum(1).mean())
        after = float((a @ rot.T - b).pow(2).sum(1).mean())
        out[s] = (before, after)
        log.info("retrieval: kd: %s stream aligned to the teacher's basis, l2 %.3f -> %.3f",
                 s, before, after)
    return out


def _l2_loss() -> Callable[..., torch.Tensor]:
    """The distillation issue's l2 (eq. 8) when present, else the same formula here."""
    try:
        from fedray.distill.losses import l2

        return l2
    except ImportError:  # fedray.distill not installed in this checkout
        def l2(student: torch.Tensor, teacher: torch.Tensor, labels=None) -> torch.Tensor:
            return (student - teacher).pow(2).sum(1).mean()

        return l2


def distill(student: MultiStream, teacher: MultiStream, pool: np.ndarray, tcfg: dict[str, Any],
            seed: int, on_epoch: OnEpoch | None = None,
            device: str = "cpu") -> list[dict[str, Any]]:
    """Stage 2 of the paper's recipe: each student stream imitates its teacher stream's
    embedding of the same (augmented) image, l2 loss, no labels; first turned onto the
    teacher's basis (`align_to`) unless `tcfg["align"]` is false."""
    if student.streams != teacher.streams:
        raise ValueError(f"student streams {student.streams} != teacher's {teacher.streams}")
    l2 = _l2_loss()
    std = bool(tcfg.get("standardize", True))
    if tcfg.get("align", True):
        align_to(student, teacher, pool, std, device)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = _optimizer(student, tcfg)
    aug = dict(tcfg.get("augment") or {})
    bs = int(tcfg["batch_size"])
    sched = lr_schedule(opt, tcfg, int(tcfg["epochs"]) * -(-len(pool) // (3 * bs)))
    teacher.to(device).eval()
    student.to(device).train()
    history = []
    for epoch in range(int(tcfg["epochs"])):
        t0 = time.perf_counter()
        losses = []
        order = rng.permutation(len(pool))
        bar = Progress(-(-len(order) // (3 * bs)), f"retrieval: kd epoch {epoch + 1}", "step")
        for i in range(0, len(order), 3 * bs):  # as many images per step as a triplet batch
            x = augment_batch(to_float(pool[order[i:i + 3 * bs]]), gen, aug).to(device)
            inputs = stream_inputs(x, student.streams, std)
            with torch.no_grad():
                target = teacher(inputs)
            out = student(inputs)
            loss = sum(l2(out[s], target[s]) for s in student.streams)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
            bar.update(1, loss=losses[-1])
        bar.close()
        row = {"epoch": epoch + 1, "train/kd_loss": float(np.mean(losses)),
               "time/epoch_s": time.perf_counter() - t0}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return history
