"""The rasterizer interface every backend implements, with nvdiffrast's output convention.

``rasterize(clip_pos[B, V, 4], faces[F, 3], (H, W)) -> rast[B, H, W, 4]`` holds, per pixel,
``(u, v, z/w, triangle_id + 1)``:

* ``(u, v)`` are perspective-correct barycentrics of the visible surface point: the point is
  ``u * v0 + v * v1 + (1 - u - v) * v2`` for the triangle's vertices in ``faces`` order.
* ``z/w`` is the normalised-device depth in [-1, 1]; the depth test keeps the smallest
  (OpenGL ``GL_LESS``; -1 is the near plane). On equal depth the earlier triangle wins.
* Pixels no triangle covers are 0 in all four channels.
* Pixel ``(i, j)`` samples the NDC point ``x = 2 (j + 0.5) / W - 1``, ``y = 2 (i + 0.5) / H - 1``,
  so row 0 is clip-space ``y = -1`` (OpenGL and nvdiffrast store images bottom-up). With
  :func:`backend.raster.camera.project_to_clip` row 0 is the top image row instead.
* Geometry outside the clip volume ``-w <= x, y, z <= w`` is clipped as a GPU does; there is
  no back-face culling.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch

# Triangle ids travel as float32 (``id + 1``); above 2**24 they would no longer be exact.
MAX_TRIANGLES = 2**24 - 1


def check_resolution(resolution: Sequence[int]) -> tuple[int, int]:
    """``(H, W)`` as two positive ints, or a ValueError naming the bad value."""
    try:
        height, width = (int(size) for size in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be a pair (height, width) of ints, got {resolution!r}") from None
    if height <= 0 or width <= 0 or (height, width) != tuple(resolution):
        raise ValueError(f"resolution must be two positive integers (height, width), got {tuple(resolution)!r}")
    return height, width


def check_faces(faces: torch.Tensor, num_vertices: int, what: str = "faces") -> torch.Tensor:
    """Validate an (F, 3) integer index buffer into ``num_vertices`` entries; returns it as int64."""
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(faces).__name__}")
    if faces.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{what} must be int32 or int64, got {faces.dtype}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"{what} must have shape (F, 3), got {tuple(faces.shape)}")
    if faces.shape[0] > MAX_TRIANGLES:
        raise ValueError(f"{what} has {faces.shape[0]} triangles; at most {MAX_TRIANGLES} keep their ids exact")
    if faces.numel():
        low, high = int(faces.min()), int(faces.max())
        if low < 0 or high >= num_vertices:
            raise ValueError(f"{what} index {low if low < 0 else high} is out of range for {num_vertices} vertices")
    return faces.long()


def check_clip_positions(clip_pos: torch.Tensor) -> torch.Tensor:
    """Validate (B, V, 4) floating clip-space positions."""
    if not isinstance(clip_pos, torch.Tensor):
        raise TypeError(f"clip_pos must be a torch.Tensor, got {type(clip_pos).__name__}")
    if not clip_pos.is_floating_point():
        raise ValueError(f"clip_pos must be a floating-point tensor, got {clip_pos.dtype}")
    if clip_pos.dim() != 3 or clip_pos.shape[2] != 4:
        raise ValueError(f"clip_pos must have shape (B, V, 4), got {tuple(clip_pos.shape)}")
    if not bool(torch.isfinite(clip_pos).all()):
        raise ValueError("clip_pos contains NaN or infinite coordinates")
    return clip_pos


def check_rast(rast: torch.Tensor) -> torch.Tensor:
    """Validate a (B, H, W, 4) rasterizer output."""
    if not isinstance(rast, torch.Tensor):
        raise TypeError(f"rast must be a torch.Tensor, got {type(rast).__name__}")
    if rast.dim() != 4 or rast.shape[3] != 4:
        raise ValueError(f"rast must have shape (B, H, W, 4), got {tuple(rast.shape)}")
    return rast


class Rasterizer(abc.ABC):
    """A rasterizer backend. Use :func:`backend.raster.get_rasterizer` to obtain one.

    ``rasterize`` validates its inputs and returns float32 ``rast`` on ``clip_pos``'s device.
    Unlike nvdiffrast, ``rast`` carries no gradient back to ``clip_pos`` (vertex positions are
    not optimised through it here); gradients reach attributes through
    :func:`backend.raster.interpolate`.
    """

    name: str

    def rasterize(self, clip_pos: torch.Tensor, faces: torch.Tensor, resolution: Sequence[int]) -> torch.Tensor:
        clip_pos = check_clip_positions(clip_pos)
        faces = check_faces(faces, clip_pos.shape[1])
        height, width = check_resolution(resolution)
        with torch.no_grad():
            rast = self._rasterize(clip_pos.detach(), faces, height, width)
        return rast.to(clip_pos.device)

    @abc.abstractmethod
    def _rasterize(self, clip_pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Backend work on validated inputs: faces is int64, clip_pos detached."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
