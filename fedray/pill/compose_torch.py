"""Batched torch renderer of compositor plans: the same ``ScenePlan`` as compose.py, on a GPU.

All pills of a batch are sampled by one ``grid_sample`` call (sources zero-padded to a common
size, which keeps the zero-border semantics of the NumPy twin), then blended in plan order. Colour,
lighting, blur (a grouped conv with reflect-101 padding, like OpenCV's default) and the hashed
sensor noise run batched on the device; the background crop/resize and JPEG stay in OpenCV on the
CPU, exactly as in the other renderers. ``grid_sample`` rounds differently from the twin's float32
arithmetic, so pixels match within a grey level or two (JPEG can amplify that a little). The alpha
that decides the label map (and so the boxes) is recomputed with the twin's exact float32
operations, in the same order, so labels and boxes match the twin exactly.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedray.pill.compose import (
    DEN_EPS,
    LABEL_ALPHA,
    apply_jpeg,
    boxes_from_labels,
    warp_background,
)
from fedray.pill.compose_types import ComposeError, PreparedCutout, RenderedScene, ScenePlan

_MASK32 = 0xFFFFFFFF


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cached(cut: PreparedCutout, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(premult (4, h, w) float32, alpha (1, h, w) float32, shadow (1, sh, sw) float32)."""
    key = str(device)
    if key not in cut.device_cache:
        premult = torch.from_numpy(cut.premult).to(device).permute(2, 0, 1).contiguous()
        shadow = torch.from_numpy(cut.shadow).to(device)[None]
        cut.device_cache[key] = (premult, premult[3:4].contiguous(), shadow)
    return cut.device_cache[key]


def _stack_padded(tensors: list[torch.Tensor], device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """(N, C, Hmax, Wmax): each tensor top-left, zeros elsewhere (= the zero border)."""
    c = tensors[0].shape[0]
    hm = max(t.shape[1] for t in tensors)
    wm = max(t.shape[2] for t in tensors)
    out = torch.zeros((len(tensors), c, hm, wm), dtype=dtype, device=device)
    for n, t in enumerate(tensors):
        out[n, :, : t.shape[1], : t.shape[2]] = t
    return out


def _coords(hinv: torch.Tensor, regions: torch.Tensor,
            size_hw: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Twin-exact float32 (valid, sx, sy), each (N, Rh, Rw), of every pill's region."""
    rh, rw = size_hw
    dev = hinv.device
    xs = regions[:, 0, None, None].float() + torch.arange(rw, device=dev)[None, None, :].float()
    ys = regions[:, 1, None, None].float() + torch.arange(rh, device=dev)[None, :, None].float()
    h = hinv.reshape(-1, 9, 1, 1)
    den = h[:, 6] * xs + h[:, 7] * ys + h[:, 8]
    rden = 1.0 / den
    sx = (h[:, 0] * xs + h[:, 1] * ys + h[:, 2]) * rden
    sy = (h[:, 3] * xs + h[:, 4] * ys + h[:, 5]) * rden
    return den > DEN_EPS, sx, sy


def _grid(valid: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor,
          shape_hw: tuple[int, int]) -> torch.Tensor:
    """grid_sample grid (align_corners=False) for source px coords; invalid -> far outside."""
    hm, wm = shape_hw
    gx = torch.where(valid, (2 * sx + 1) / wm - 1, -4.0)
    gy = torch.where(valid, (2 * sy + 1) / hm - 1, -4.0)
    return torch.stack([gx, gy], dim=-1)


def _alpha_exact(alpha: torch.Tensor, sizes: torch.Tensor, valid: torch.Tensor,
                 sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    """compose._sample_zero of the alpha channel, op for op: (N, Rh, Rw) float32."""
    n, hm, wm = alpha.shape
    hs, ws = sizes[:, 0, None, None], sizes[:, 1, None, None]
    valid = valid & (sx > -1.0) & (sx < ws) & (sy > -1.0) & (sy < hs)
    sx = torch.where(valid, sx, -1.0)
    sy = torch.where(valid, sy, -1.0)
    fx0, fy0 = torch.floor(sx), torch.floor(sy)
    fx, fy = sx - fx0, sy - fy0
    ix, iy = fx0.long(), fy0.long()
    flat = alpha.reshape(n, -1)

    def tap(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        ok = (xx >= 0) & (xx <= ws - 1) & (yy >= 0) & (yy <= hs - 1)
        idx = (yy.clamp(0, hm - 1) * wm + xx.clamp(0, wm - 1)).reshape(n, -1)
        return torch.where(ok, torch.gather(flat, 1, idx).reshape(ix.shape), 0.0)

    wx0, wy0 = 1.0 - fx, 1.0 - fy
    top = wx0 * tap(iy, ix) + fx * tap(iy, ix + 1)
    bottom = wx0 * tap(iy + 1, ix) + fx * tap(iy + 1, ix + 1)
    return torch.where(valid, wy0 * top + fy * bottom, 0.0)


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """x = (x * c) mod 2**32 in place, 0 <= x < 2**32 in int64 (c split in 16-bit halves, so
    no product overflows int64)."""
    hi = x * (c >> 16)
    hi &= 0xFFFF
    hi <<= 16
    x *= c & 0xFFFF
    x += hi
    x &= _MASK32
    return x


def noise_hash_torch(index: torch.Tensor, seed: int) -> torch.Tensor:
    """compose.noise_hash (lowbias32 of index ^ seed) in int64 arithmetic."""
    x = index ^ seed
    x ^= x >> 16
    _mul32_(x, 0x7FEB352D)
    x ^= x >> 15
    _mul32_(x, 0x846CA68B)
    x ^= x >> 16
    return x


def _composite(plans: list[ScenePlan], canvas: torch.Tensor, labels: torch.Tensor,
               device: torch.device) -> None:
    """Shadows and pills, in plan order, into canvas (B, 3, S, S) and labels (B, S, S)."""
    items = [(b, i, pill) for b, plan in enumerate(plans) for i, pill in enumerate(plan.pills)]
    if not items:
        return
    cached = [_cached(pill.cutout, device) for _, _, pill in items]
    premult = _stack_padded([c[0] for c in cached], device, torch.float32)
    alpha = _stack_padded([c[1] for c in cached], device, torch.float32)[:, 0]
    sizes = torch.tensor([pill.cutout.premult.shape[:2] for _, _, pill in items],
                         dtype=torch.int64, device=device)
    regions = torch.tensor([pill.region for _, _, pill in items], dtype=torch.int64)
    rw = int((regions[:, 2] - regions[:, 0]).max())
    rh = int((regions[:, 3] - regions[:, 1]).max())
    hinv = torch.from_numpy(np.stack([pill.hinv for _, _, pill in items])).to(device)
    valid, sx, sy = _coords(hinv, regions.to(device), (rh, rw))
    samp = F.grid_sample(premult, _grid(valid, sx, sy, premult.shape[2:]), mode="bilinear",
                         padding_mode="zeros", align_corners=False)  # (N, 4, Rh, Rw)
    label_alpha = _alpha_exact(alpha, sizes, valid, sx, sy)  # (N, Rh, Rw)
    colour = torch.from_numpy(np.stack([pill.colour for _, _, pill in items])).float().to(device)
    a = samp[:, 3:4]
    rgb = torch.einsum("nij,njhw->nihw", colour[:, :, :3], samp[:, :3]) \
        + colour[:, :, 3, None, None] * a
    rgb = torch.minimum(rgb.clamp_min(0.0), 255.0 * a)

    shadow_items = [n for n, (_, _, pill) in enumerate(items) if pill.shadow_strength > 0]
    shadows: dict[int, torch.Tensor] = {}
    if shadow_items:
        sh_src = _stack_padded([cached[n][2] for n in shadow_items], device, torch.float32)
        sh_regions = torch.tensor([items[n][2].shadow_region for n in shadow_items],
                                  dtype=torch.int64)
        srw = int((sh_regions[:, 2] - sh_regions[:, 0]).max())
        srh = int((sh_regions[:, 3] - sh_regions[:, 1]).max())
        sh_hinv = torch.from_numpy(
            np.stack([items[n][2].shadow_hinv for n in shadow_items])).to(device)
        sh_grid = _grid(*_coords(sh_hinv, sh_regions.to(device), (srh, srw)), sh_src.shape[2:])
        strength = torch.tensor([float(items[n][2].shadow_strength) for n in shadow_items],
                                dtype=torch.float32, device=device)[:, None, None, None]
        sh = strength * F.grid_sample(sh_src, sh_grid, mode="bilinear", padding_mode="zeros",
                                      align_corners=False)
        shadows = {n: sh[j] for j, n in enumerate(shadow_items)}

    for n, (b, i, pill) in enumerate(items):
        if n in shadows:
            x0, y0, x1, y1 = pill.shadow_region
            if x1 > x0 and y1 > y0:
                view = canvas[b, :, y0:y1, x0:x1]
                view.mul_(1.0 - shadows[n][:, : y1 - y0, : x1 - x0])
        x0, y0, x1, y1 = pill.region
        if x1 <= x0 or y1 <= y0:
            continue
        h, w = y1 - y0, x1 - x0
        view = canvas[b, :, y0:y1, x0:x1]
        view.mul_(1.0 - a[n, :, :h, :w]).add_(rgb[n, :, :h, :w])
        lab = labels[b, y0:y1, x0:x1]
        lab.masked_fill_(label_alpha[n, :h, :w] >= float(LABEL_ALPHA), i)


def _lighting(plans: list[ScenePlan], size: int,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """compose.lighting_field per plan (B, 1, S, S) and the white-balance gains (B, 3, 1, 1)."""
    light = torch.from_numpy(np.stack([p.light for p in plans])).to(device)  # (B, 10) float32
    ramp = torch.arange(size, device=device).float() * float(np.float32(1.0 / size)) - 0.5
    u, v = ramp[None, None, :], ramp[None, :, None]
    spatial = (light[:, 0, None, None] + light[:, 1, None, None] * u
               + light[:, 2, None, None] * v + light[:, 3, None, None] * (u * u + v * v))
    return spatial[:, None], light[:, 4:7, None, None]


def _blur(img: torch.Tensor, plans: list[ScenePlan]) -> torch.Tensor:
    """Per-scene filter2D equivalents as one grouped conv; img (B, 3, S, S) float of uint8."""
    which = [b for b, p in enumerate(plans) if p.blur_kernel is not None]
    if not which:
        return img
    k = max(plans[b].blur_kernel.shape[0] for b in which)
    weight = torch.zeros((len(which), k, k), dtype=torch.float32)
    for j, b in enumerate(which):
        kern = torch.from_numpy(plans[b].blur_kernel)
        off = (k - kern.shape[0]) // 2
        weight[j, off:off + kern.shape[0], off:off + kern.shape[1]] = kern
    weight = weight.to(img.device).repeat_interleave(3, dim=0)[:, None]  # (n*3, 1, k, k)
    sel = img[which].reshape(1, len(which) * 3, *img.shape[2:])
    sel = F.pad(sel, (k // 2,) * 4, mode="reflect")
    blurred = F.conv2d(sel, weight, groups=len(which) * 3).reshape(len(which), 3, *img.shape[2:])
    out = img.clone()
    out[which] = torch.round(blurred).clamp_(0.0, 255.0)
    return out


_NOISE_CHUNK = 1 << 18  # elements per step: int64 temporaries stay cache-sized on CPU


def _noise(img: torch.Tensor, plans: list[ScenePlan]) -> torch.Tensor:
    """compose._noise_numpy on the device: element (y, x, c) hashed from (y * S + x) * 3 + c."""
    dev = img.device
    out = img.clone()
    for b, plan in enumerate(plans):
        if not plan.add_noise:
            continue
        read_var, shot, inv_std = (float(v) for v in plan.light[7:10])
        vals = out[b].permute(1, 2, 0).reshape(-1)  # (S * S * 3,) in the twin's element order
        for start in range(0, vals.numel(), _NOISE_CHUNK):
            u = vals[start:start + _NOISE_CHUNK]
            h = noise_hash_torch(torch.arange(start, start + u.numel(), device=dev,
                                              dtype=torch.int64), plan.noise_seed)
            total = (h & 255) + ((h >> 8) & 255) + ((h >> 16) & 255) + (h >> 24)
            noise = (total - 510).float() * inv_std
            sigma = torch.sqrt(read_var + shot * u)
            vals[start:start + u.numel()] = torch.floor(u + noise * sigma + 0.5).clamp_(0.0, 255.0)
        out[b] = vals.reshape(img.shape[2], img.shape[3], 3).permute(2, 0, 1)
    return out


@torch.no_grad()
def render_plans(plans: list[ScenePlan], device: str | torch.device | None = None) -> (
        list[RenderedScene]):
    """Render a batch of plans (same out_size) on `device` (default: CUDA if available)."""
    if not plans:
        return []
    size = plans[0].out_size
    if any(p.out_size != size for p in plans):
        raise ComposeError("render_plans: every plan in a batch needs the same out_size")
    dev = torch.device(device) if device is not None else default_device()
    bg = torch.from_numpy(np.stack([warp_background(p) for p in plans])).to(dev)
    canvas = bg.permute(0, 3, 1, 2).float().contiguous()  # (B, 3, S, S)
    labels = torch.full((len(plans), size, size), -1, dtype=torch.int16, device=dev)
    _composite(plans, canvas, labels, dev)
    spatial, gains = _lighting(plans, size, dev)
    img = torch.floor(canvas * spatial * gains + 0.5).clamp_(0.0, 255.0)
    img = _noise(_blur(img, plans), plans)
    images = img.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
    labels_np = labels.cpu().numpy()
    return [RenderedScene(apply_jpeg(images[b], plan.jpeg_quality),
                          boxes_from_labels(labels_np[b], plan), labels_np[b])
            for b, plan in enumerate(plans)]
