"""A learnable triplane sampled at each pixel's canonical (unposed template) position.

Three axis-aligned feature planes (XY, XZ, YZ) span a box around the template. A surface point
``p`` reads ``plane_xy(p.x, p.y) ‖ plane_xz(p.x, p.z) ‖ plane_yz(p.y, p.z)`` (bilinear), giving
``3 · channels`` features per pixel. Unlike a UV texture this needs no UV layout and has no
seams; it is what RAM-Avatar's released code uses as the body's neural texture (16 channels
per plane at 512², tanh). Points outside the box read the border features.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Plane axes (into the canonical x, y, z): XY, XZ, YZ.
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


class Triplane(nn.Module):
    """``forward(canonical (B,H,W,3), mask (B,H,W,1)) -> (B, 3·channels, H, W)``.

    ``bounds_min`` / ``bounds_max`` (3,) delimit the box in canonical space; use
    :meth:`around` to build one from template vertices with a margin.
    """

    def __init__(
        self,
        bounds_min: torch.Tensor,
        bounds_max: torch.Tensor,
        channels: int = 16,
        size: int = 256,
        *,
        activation: str = "tanh",
        init_scale: float = 0.1,
    ):
        super().__init__()
        if channels < 1 or size < 2:
            raise ValueError(f"triplane needs channels >= 1 and size >= 2, got {channels}, {size}")
        if activation not in ("tanh", "none"):
            raise ValueError(f"triplane activation must be 'tanh' or 'none', got {activation!r}")
        low, high = torch.as_tensor(bounds_min, dtype=torch.float32), torch.as_tensor(bounds_max, dtype=torch.float32)
        if low.shape != (3,) or high.shape != (3,) or not bool((high > low).all()):
            raise ValueError(f"triplane bounds must be two (3,) vectors with max > min, got {low.tolist()}, {high.tolist()}")
        self.channels, self.size, self.activation = channels, size, activation
        self.register_buffer("centre", (low + high) / 2)
        self.register_buffer("half_extent", (high - low) / 2)
        self.planes = nn.Parameter(torch.randn(3, channels, size, size) * init_scale)

    @classmethod
    def around(cls, vertices: torch.Tensor, margin: float = 0.05, **options) -> "Triplane":
        """A triplane whose box holds ``vertices`` (V, 3) plus ``margin`` metres on every side."""
        vertices = vertices.detach().float()
        return cls(vertices.amin(0) - margin, vertices.amax(0) + margin, **options)

    def forward(self, canonical: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if canonical.dim() != 4 or canonical.shape[-1] != 3:
            raise ValueError(f"canonical must have shape (B, H, W, 3), got {tuple(canonical.shape)}")
        if mask.shape != (*canonical.shape[:3], 1):
            raise ValueError(f"mask must have shape {(*canonical.shape[:3], 1)}, got {tuple(mask.shape)}")
        batch = canonical.shape[0]
        unit = (canonical.float() - self.centre) / self.half_extent  # the box maps to [-1, 1]³
        features = []
        for plane, (a, b) in zip(self.planes, PLANE_AXES):
            # grid_sample: x indexes width (plane axis a), y indexes height (plane axis b).
            grid = torch.stack([unit[..., a], unit[..., b]], dim=-1)
            features.append(
                F.grid_sample(plane[None].expand(batch, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=False)
            )
        out = torch.cat(features, dim=1)
        if self.activation == "tanh":
            out = torch.tanh(out)
        return out * mask.permute(0, 3, 1, 2).to(out.dtype)
