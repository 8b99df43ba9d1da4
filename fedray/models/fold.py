"""BatchNorm folded into the convolution before it, for inference on a frozen network.

In eval mode a BatchNorm after a convolution is an affine map per channel, so it can be
folded into that convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``):
the same function, one pass over each activation map fewer: the frozen pill backbone's
features (8 views a crop, 25 BatchNorms) 1.07x faster on one thread and 1.15x on two here, with
fedray's malloc setting (``bench/fold.py``; without it each BatchNorm output is a fresh mmap
and the gap was up to 2x). What stays the same is the maths, up to
float rounding (1e-6 relative on the pooled features); what changes is only the cost.

Only a Conv2d followed directly by a BatchNorm2d inside one ``nn.Sequential`` is folded (the
pill SqueezeNet's blocks, torchvision's ``Conv2dNormActivation``, VGG-BN); any other BatchNorm
is left as it is, so any model can be passed.
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_into(module: nn.Module) -> int:
    """Fold in place, recursively; returns how many BatchNorms were folded."""
    folded = 0
    if isinstance(module, nn.Sequential):
        for prev, name in pairwise(list(module._modules)):
            conv, bn = module._modules[prev], module._modules[name]
            if (
                isinstance(conv, nn.Conv2d)
                and type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and bn.running_mean is not None
                and conv.out_channels == bn.num_features
            ):
                module._modules[prev] = fuse_conv_bn_eval(conv, bn)
                module._modules[name] = nn.Identity()
                folded += 1
    for child in module.children():
        folded += _fold_into(child)
    return folded


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with every Conv2d -> BatchNorm2d pair of a Sequential folded
    into one Conv2d (the original is not touched). Its memory format is kept (channels-last
    weights stay channels-last), and so are its parameters' dtypes and device."""
    was = module.training
    module.eval()
    try:
        out = copy.deepcopy(module)
    finally:
        module.train(was)
    if _fold_into(out) and _channels_last(module):
        out = out.to(memory_format=torch.channels_last)  # the folded weights as the originals
    return out.eval()


def _channels_last(module: nn.Module) -> bool:
    last = torch.channels_last
    return any(
        p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=last)
        for p in module.parameters()
    )
