"""A shallow U-Net: the building block of ANR's two renderer stages.

Encoder: a full-resolution stem, then ``depth`` levels that each halve the size with a
strided 3×3 convolution followed by one more 3×3 convolution. Decoder: up-sample, concatenate
the encoder feature of the same size (skip), one 3×3 convolution. Every convolution is
conv → norm → LeakyReLU(0.2); the head is a plain 1×1 convolution (no activation), so callers
choose their own output non-linearity.

Widths double per level (``base_width · 2^level``, capped at ``max_width``). The full-resolution
levels dominate the cost, so the CPU preset keeps ``base_width`` small.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Norm = Literal["none", "instance", "group", "batch"]
Upsample = Literal["nearest", "bilinear"]
NORMS: tuple[str, ...] = ("none", "instance", "group", "batch")
UPSAMPLES: tuple[str, ...] = ("nearest", "bilinear")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A normalisation layer by name (``none`` gives an identity)."""
    if kind == "none":
        return nn.Identity()
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        # Up to 8 groups; a group count has to divide the channel count.
        groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class ConvNormAct(nn.Sequential):
    """3×3 (or k×k) convolution → normalisation → LeakyReLU(0.2)."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, stride: int = 1, norm: str = "none"):
        super().__init__(
            # A bias right before a normalisation layer would be cancelled by it.
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.LeakyReLU(0.2, inplace=True),
        )


def check_divisible(height: int, width: int, factor: int, what: str) -> None:
    """Raise a ValueError naming the size when it is not a multiple of ``factor``."""
    if height % factor or width % factor:
        def up(size: int) -> int:
            return -(-size // factor) * factor

        raise ValueError(
            f"{what}: image size {height}×{width} is not divisible by {factor}; "
            f"use a multiple of {factor} (e.g. {up(height)}×{up(width)}) or pad the input"
        )


class ShallowUNet(nn.Module):
    """``(B, in_channels, H, W) → (B, out_channels, H, W)`` for H, W divisible by ``2**depth``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        base_width: int = 16,
        depth: int = 3,
        max_width: int = 256,
        norm: Norm = "none",
        upsample: Upsample = "nearest",
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if min(in_channels, out_channels, base_width) < 1:
            raise ValueError(
                f"channel counts must be positive, got in={in_channels}, out={out_channels}, base_width={base_width}"
            )
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {UPSAMPLES}, got {upsample!r}")
        make_norm(norm, base_width)  # validates the name early
        self.depth = depth
        self.upsample_mode = upsample
        widths = [min(base_width * 2**level, max_width) for level in range(depth + 1)]
        self.widths = tuple(widths)

        self.stem = ConvNormAct(in_channels, widths[0], norm=norm)
        self.down = nn.ModuleList(
            nn.Sequential(
                ConvNormAct(widths[level - 1], widths[level], stride=2, norm=norm),
                ConvNormAct(widths[level], widths[level], norm=norm),
            )
            for level in range(1, depth + 1)
        )
        # up[level - 1] brings level `level` back to the size of level `level - 1`.
        self.up = nn.ModuleList(
            ConvNormAct(widths[level] + widths[level - 1], widths[level - 1], norm=norm) for level in range(1, depth + 1)
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ShallowUNet expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        check_divisible(x.shape[2], x.shape[3], 2**self.depth, f"U-Net of depth {self.depth}")
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = skips.pop()
        for level in range(self.depth, 0, -1):
            skip = skips.pop()
            if self.upsample_mode == "nearest":
                y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            else:
                y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = self.up[level - 1](torch.cat([y, skip], dim=1))
        return self.head(y)
