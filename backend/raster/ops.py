"""Differentiable torch operations on a rasterizer's output: attribute interpolation, texture
lookup, vertex normals, normal maps and coverage masks. Backend-independent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.raster.interface import check_faces, check_rast


def coverage_mask(rast: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: True where a triangle covers the pixel centre."""
    return check_rast(rast)[..., 3] > 0


def interpolate(attr: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Interpolate attributes at every covered pixel: ``u * a0 + v * a1 + (1 - u - v) * a2``.

    ``attr`` is (V, C) or (B, V, C) (a batch of 1 broadcasts); ``faces`` (F, 3) indexes its rows
    and must list the triangles in the order they were rasterized. The index buffer need not be
    the one used for rasterizing: UVs with seams work as
    ``interpolate(uv_coords[T, 2], rast, uv_faces[F, 3])``.

    Returns (B, H, W, C) in ``attr``'s dtype, zero on background; differentiable with respect to
    ``attr`` (``rast`` is treated as a constant).
    """
    check_rast(rast)
    if not isinstance(attr, torch.Tensor) or not attr.is_floating_point() or attr.dim() not in (2, 3):
        raise ValueError(f"attr must be a floating-point tensor of shape (V, C) or (B, V, C), got {_describe(attr)}")
    table = attr if attr.dim() == 3 else attr.unsqueeze(0)
    batch, height, width, _ = rast.shape
    if table.shape[0] not in (1, batch):
        raise ValueError(f"attr has batch size {table.shape[0]} but rast has {batch} (use 1 to broadcast)")
    num_vertices, channels = table.shape[1:]
    faces = check_faces(faces, num_vertices).to(attr.device)

    flat = rast.detach().to(attr.device).reshape(-1, 4)
    covered = torch.nonzero(flat[:, 3] > 0).squeeze(1)
    triangle = flat[covered, 3].long() - 1
    if covered.numel() and int(triangle.max()) >= faces.shape[0]:
        raise ValueError(
            f"rast refers to triangle {int(triangle.max())} but faces has only {faces.shape[0]} "
            "(was it rasterized with a different mesh?)"
        )
    rows = faces[triangle]  # (N, 3) rows of the flattened attribute table
    if table.shape[0] > 1:
        rows = rows + (covered // (height * width) * num_vertices).unsqueeze(1)
    u = flat[covered, 0].to(attr.dtype)
    v = flat[covered, 1].to(attr.dtype)
    weights = torch.stack([u, v, 1 - u - v], dim=1)
    # A weighted sum of three table rows per pixel, fused (no (N, 3, C) temporary).
    values = F.embedding_bag(rows, table.reshape(-1, channels), per_sample_weights=weights, mode="sum")
    out = values.new_zeros(batch * height * width, channels)
    out.index_copy_(0, covered, values)
    return out.reshape(batch, height, width, channels)


def texture(tex: torch.Tensor, uv: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Bilinear texture lookup; differentiable with respect to ``tex`` (and ``uv``).

    ``tex`` is (B or 1, C, Ht, Wt) with row 0 the top row of the image, as images are stored.
    ``uv`` (B, H, W, 2) follows the OBJ/OpenGL convention: (0, 0) is the bottom-left corner
    of the texture image, (1, 1) the top-right; u runs right, v runs up. Texel centres sit at
    ``((j + 0.5) / Wt, 1 - (i + 0.5) / Ht)`` (``grid_sample`` with ``align_corners=False``).
    ``padding_mode`` ("border", "zeros" or "reflection") decides samples outside [0, 1].

    Returns (B, C, H, W): output row i is ``uv`` row i.
    """
    if tex.dim() != 4:
        raise ValueError(f"tex must have shape (B, C, Ht, Wt), got {tuple(tex.shape)}")
    if uv.dim() != 4 or uv.shape[3] != 2:
        raise ValueError(f"uv must have shape (B, H, W, 2), got {tuple(uv.shape)}")
    if tex.shape[0] not in (1, uv.shape[0]):
        raise ValueError(f"tex has batch size {tex.shape[0]} but uv has {uv.shape[0]} (use 1 to broadcast)")
    if tex.shape[0] != uv.shape[0]:
        tex = tex.expand(uv.shape[0], -1, -1, -1)
    # grid_sample's grid: x = -1 is the left edge, y = -1 the top edge (row 0).
    grid = torch.stack([2 * uv[..., 0] - 1, 1 - 2 * uv[..., 1]], dim=-1).to(tex.dtype)
    return F.grid_sample(tex, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of (B, V, 3) or (V, 3) vertices; differentiable.

    Faces wind counter-clockwise seen from the side the normal points to. A vertex used by no
    (non-degenerate) face gets a zero normal.
    """
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"verts must have shape (B, V, 3) or (V, 3), got {tuple(verts.shape)}")
    faces = check_faces(faces, verts.shape[-2]).to(verts.device)
    corners = [verts.index_select(-2, faces[:, k]) for k in range(3)]
    # The cross product's length is twice the triangle's area: that is the area weighting.
    face_normals = torch.linalg.cross(corners[1] - corners[0], corners[2] - corners[0], dim=-1)
    normals = torch.zeros_like(verts)
    for k in range(3):
        normals = normals.index_add(-2, faces[:, k], face_normals)
    return F.normalize(normals, dim=-1)


def normal_map(normals: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) unit normals at each covered pixel, zero on background.

    ``normals`` are per-vertex, (V, 3) or (B, V, 3), in whatever space the caller wants the map
    in (e.g. :func:`vertex_normals` of camera-space vertices).
    """
    return F.normalize(interpolate(normals, rast, faces), dim=-1)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
