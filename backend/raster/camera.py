"""Camera helpers in the project's OpenCV pinhole convention.

Camera space: x right, y down, z forward (into the scene). Intrinsics ``K`` (3x3) map a
camera-space point to pixel coordinates ``(x, y) = (fx X/Z + s Y/Z + cx, fy Y/Z + cy)`` where
pixel (column j, row i) spans ``[j, j+1) x [i, i+1)`` with its centre at ``(j + 0.5, i + 0.5)``.
Extrinsics are a 4x4 world-to-camera matrix.

:func:`project_to_clip` builds clip coordinates such that rasterizing them at ``(H, W)`` puts
image row i (counted from the top) in ``rast[:, i]`` and column j in ``rast[:, :, j]``: a point
that ``K`` sends to pixel ``(x, y)`` lands in ``rast[:, floor(y), floor(x)]``. Clip ``w`` is the
camera depth Z and ``z/w`` runs from -1 at ``near`` to +1 at ``far``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from backend.raster.interface import check_rast, check_resolution


def _check_planes(near: float, far: float) -> None:
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")


def projection_from_intrinsics(
    K: torch.Tensor, resolution: Sequence[int], near: float = 0.01, far: float = 100.0
) -> torch.Tensor:
    """(..., 4, 4) camera-to-clip matrices for OpenCV intrinsics ``K`` (..., 3, 3) at ``(H, W)``.

    NDC x = 2 x_pixel / W - 1 and NDC y = 2 y_pixel / H - 1 (no flip: rast row 0 = image row 0).
    """
    height, width = check_resolution(resolution)
    _check_planes(near, far)
    if K.shape[-2:] != (3, 3):
        raise ValueError(f"K must have shape (..., 3, 3), got {tuple(K.shape)}")
    projection = K.new_zeros(*K.shape[:-2], 4, 4)
    projection[..., 0, 0] = 2 * K[..., 0, 0] / width
    projection[..., 0, 1] = 2 * K[..., 0, 1] / width
    projection[..., 0, 2] = 2 * K[..., 0, 2] / width - 1
    projection[..., 1, 1] = 2 * K[..., 1, 1] / height
    projection[..., 1, 2] = 2 * K[..., 1, 2] / height - 1
    projection[..., 2, 2] = (far + near) / (far - near)
    projection[..., 2, 3] = -2 * far * near / (far - near)
    projection[..., 3, 2] = 1
    return projection


def project_to_clip(
    verts_world: torch.Tensor,
    K: torch.Tensor,
    world_to_camera: torch.Tensor,
    resolution: Sequence[int],
    near: float = 0.01,
    far: float = 100.0,
) -> torch.Tensor:
    """Clip coordinates (B, V, 4) of world-space vertices (B, V, 3); differentiable.

    ``K`` is (B, 3, 3) or (3, 3) and ``world_to_camera`` (B, 4, 4) or (4, 4); a single matrix
    serves the whole batch.
    """
    if verts_world.dim() != 3 or verts_world.shape[2] != 3:
        raise ValueError(f"verts_world must have shape (B, V, 3), got {tuple(verts_world.shape)}")
    if world_to_camera.shape[-2:] != (4, 4):
        raise ValueError(f"world_to_camera must have shape (B, 4, 4) or (4, 4), got {tuple(world_to_camera.shape)}")
    full = projection_from_intrinsics(K.to(verts_world), resolution, near, far) @ world_to_camera.to(verts_world)
    if full.dim() == 2:
        full = full.unsqueeze(0)
    if full.shape[0] not in (1, verts_world.shape[0]):
        raise ValueError(f"camera batch {full.shape[0]} does not match vertex batch {verts_world.shape[0]}")
    # Homogeneous points with w = 1: rotate/scale by the 4x3 block, then add the last column.
    return verts_world @ full[:, :, :3].transpose(1, 2) + full[:, :, 3].unsqueeze(1)


def look_at(
    eye: torch.Tensor | Sequence[float],
    target: torch.Tensor | Sequence[float],
    up: torch.Tensor | Sequence[float] = (0.0, 1.0, 0.0),
) -> torch.Tensor:
    """World-to-camera (..., 4, 4) for a camera at ``eye`` looking at ``target``.

    The camera's z axis points at the target, its y axis (image down) opposite to ``up``, so
    ``up`` appears at the top of the image.
    """
    eye = torch.as_tensor(eye)
    if not eye.is_floating_point():
        eye = eye.to(torch.get_default_dtype())
    target = torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device)
    forward = target - eye
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    if bool((forward.norm(dim=-1) == 0).any()) or bool((right.norm(dim=-1) <= 1e-9 * forward.norm(dim=-1)).any()):
        raise ValueError("look_at needs eye != target and a viewing direction not parallel to up")
    z_axis = forward / forward.norm(dim=-1, keepdim=True)
    x_axis = right / right.norm(dim=-1, keepdim=True)
    y_axis = torch.linalg.cross(z_axis, x_axis, dim=-1)
    rotation = torch.stack([x_axis, y_axis, z_axis], dim=-2)
    matrix = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    matrix[..., :3, :3] = rotation
    matrix[..., :3, 3] = -(rotation @ eye.unsqueeze(-1)).squeeze(-1)
    matrix[..., 3, 3] = 1
    return matrix


def ndc_depth_to_camera_depth(ndc_depth: torch.Tensor, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """Camera-space depth Z from ``z/w`` produced by :func:`projection_from_intrinsics`."""
    _check_planes(near, far)
    # z/w = a - b / Z with a = (f + n) / (f - n), b = 2 f n / (f - n).
    a = (far + near) / (far - near)
    b = 2 * far * near / (far - near)
    return b / (a - ndc_depth)


def camera_depth(rast: torch.Tensor, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
    """(B, H, W) camera-space depth Z of each covered pixel, 0 on background.

    ``near`` and ``far`` must be those given to :func:`project_to_clip`.
    """
    check_rast(rast)
    covered = rast[..., 3] > 0
    depth = ndc_depth_to_camera_depth(rast[..., 2], near, far)
    return torch.where(covered, depth, torch.zeros_like(depth))
