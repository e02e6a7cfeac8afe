"""Rasterization with nvdiffrast's interface and output convention, on CUDA (nvdiffrast), any
OpenGL 3.3 driver (moderngl/EGL, incl. Mesa llvmpipe on CPU) or a numpy reference.

Typical use::

    clip = project_to_clip(verts, K, world_to_camera, (H, W))
    rast = rasterize(clip, faces, (H, W))           # (B, H, W, 4): u, v, z/w, triangle_id + 1
    uv = interpolate(uv_coords, rast, uv_faces)      # (B, H, W, 2), differentiable in uv_coords
    feat = texture(neural_texture, uv)               # (B, C, H, W), differentiable in the texture

Conventions are documented in :mod:`backend.raster.interface` (rast) and
:mod:`backend.raster.camera` (OpenCV cameras; rast row 0 = top image row).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backend.raster.camera import (
    camera_depth,
    look_at,
    ndc_depth_to_camera_depth,
    project_to_clip,
    projection_from_intrinsics,
)
from backend.raster.interface import Rasterizer
from backend.raster.ops import coverage_mask, interpolate, normal_map, texture, vertex_normals
from backend.raster.selection import BACKENDS, RASTERIZER_ENV, available_backends, get_rasterizer


def rasterize(
    clip_pos: torch.Tensor, faces: torch.Tensor, resolution: Sequence[int], backend: str = "auto"
) -> torch.Tensor:
    """Rasterize with the backend :func:`get_rasterizer` picks for ``clip_pos``'s device."""
    return get_rasterizer(backend, device=clip_pos.device).rasterize(clip_pos, faces, resolution)


__all__ = [
    "BACKENDS",
    "RASTERIZER_ENV",
    "Rasterizer",
    "available_backends",
    "camera_depth",
    "coverage_mask",
    "get_rasterizer",
    "interpolate",
    "look_at",
    "ndc_depth_to_camera_depth",
    "normal_map",
    "project_to_clip",
    "projection_from_intrinsics",
    "rasterize",
    "texture",
    "vertex_normals",
]
