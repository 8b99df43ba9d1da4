"""Embedding networks of MobileDeepPill: the AlexNet-like teacher (Table 3) and student model E
(Table 4), one per stream (colour: 3 input channels; gray, gradient: 1), each ending in a 128-d
L2-normalised embedding.

At 227 px the layer sizes are the paper's; a smaller `image_size` keeps every layer and shrinks
only fc1 (its input is whatever the last pool leaves), so the 2-core default can run at 112 px.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("teacher", "student")
STREAM_CHANNELS = {"color": 3, "gray": 1, "gradient": 1}
PAPER_SIZE = 227
EMBED_DIM = 128
# smallest input whose last pool still sees a 3x3 window (conv1 11/4, then three 3/2 pools)
MIN_SIZE = {"teacher": 67, "student": 99}


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, 2)


def teacher_features(in_channels: int, norm: bool) -> nn.Sequential:
    """Table 3: conv1 11/4 96, pool, conv2 5 256, pool, conv3-4 3 384, conv5 3 256, pool."""
    return nn.Sequential(
        *_conv(in_channels, 96, 11, 4, 0, norm), _pool(),
        *_conv(96, 256, 5, 1, 2, norm), _pool(),
        *_conv(256, 384, 3, 1, 1, norm),
        *_conv(384, 384, 3, 1, 1, norm),
        *_conv(384, 256, 3, 1, 1, norm), _pool(),
    )


def student_features(in_channels: int, norm: bool) -> nn.Sequential:
    """Table 4 (model E): conv2 split in two 3x3 (128), conv3/4 split (128), conv5 stride 2,
    a 1x1 conv6 to 64 channels, pool."""
    return nn.Sequential(
        *_conv(in_channels, 96, 11, 4, 0, norm), _pool(),
        *_conv(96, 128, 3, 1, 1, norm),
        *_conv(128, 128, 3, 1, 1, norm), _pool(),
        *_conv(128, 128, 3, 1, 1, norm),
        *_conv(128, 128, 3, 1, 1, norm),
        *_conv(128, 128, 3, 1, 1, norm),
        *_conv(128, 128, 3, 1, 1, norm),
        *_conv(128, 128, 3, 2, 1, norm),
        *_conv(128, 64, 1, 1, 0, norm), _pool(),
    )


class EmbeddingNet(nn.Module):
    """features (convs) -> classifier (fc1 1024, ReLU, fc2 128) -> L2 normalisation.

    `.features` / `.classifier` is the framework's backbone/head contract; here the head embeds.
    """

    def __init__(self, arch: str = "teacher", in_channels: int = 3, image_size: int = PAPER_SIZE,
                 embed_dim: int = EMBED_DIM, norm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch={arch!r}: choose one of {ARCHS}")
        if image_size < MIN_SIZE[arch]:
            raise ValueError(f"image_size={image_size} is below the {arch}'s minimum "
                             f"{MIN_SIZE[arch]} px")
        self.arch, self.in_channels, self.image_size = arch, in_channels, image_size
        self.embed_dim = embed_dim
        make = teacher_features if arch == "teacher" else student_features
        self.features = make(in_channels, norm)
        with torch.no_grad():
            flat = self.features.eval()(torch.zeros(1, in_channels, image_size, image_size))
        self.features.train()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat.numel(), 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(1024, embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, embed_dim), unit L2 norm."""
        return F.normalize(self.classifier(self.features(x)), dim=1)


class MultiStream(nn.Module):
    """Independent embedding nets, one per stream; identical except conv1's input channels."""

    def __init__(self, arch: str = "teacher",
                 streams: Sequence[str] = ("color", "gray", "gradient"),
                 image_size: int = PAPER_SIZE, embed_dim: int = EMBED_DIM, norm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        unknown = sorted(set(streams) - set(STREAM_CHANNELS))
        if unknown or not streams:
            raise ValueError(f"streams={list(streams)}: choose from {list(STREAM_CHANNELS)}")
        self.arch, self.image_size, self.norm = arch, image_size, norm
        self.nets = nn.ModuleDict({
            s: EmbeddingNet(arch, STREAM_CHANNELS[s], image_size, embed_dim, norm, dropout)
            for s in streams
        })

    @property
    def streams(self) -> list[str]:
        """The stream names, in order."""
        return list(self.nets)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{stream: (B, C_s, S, S)} -> {stream: (B, D)} unit-norm embeddings."""
        return {s: net(inputs[s]) for s, net in self.nets.items()}


def save_model(model: MultiStream, path: str | Path, meta: dict | None = None) -> Path:
    """The trained streams, what rebuilds them and `meta` (what they were trained on), to `path`
    (`load_model` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(model.nets.values()))
    torch.save({"arch": model.arch, "streams": model.streams, "image_size": model.image_size,
                "embed_dim": first.embed_dim, "norm": model.norm, "meta": meta or {},
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}},
               path)
    return path


def load_model(path: str | Path) -> MultiStream:
    """A `MultiStream` saved by `save_model`, in eval mode on the CPU; its `meta` as `.meta`."""
    saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = MultiStream(saved["arch"], saved["streams"], int(saved["image_size"]),
                        int(saved["embed_dim"]), bool(saved["norm"]))
    model.load_state_dict(saved["state_dict"])
    model.meta = dict(saved.get("meta") or {})
    return model.eval()


def count_params(model: nn.Module) -> int:
    """Learnable parameters (BatchNorm's affine pair included)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass of one (C, S, S) image, on Conv2d and Linear."""
    from fedray.distill.profile import count_macs as macs_at

    channels, height, width = input_shape
    if height != width:
        raise ValueError(f"count_macs: square inputs only, got {tuple(input_shape)}")
    return macs_at(model, int(height), channels=int(channels))
