"""Reference rasterizer in numpy float64: exact, dependable, slow. The test oracle and the
fallback when neither nvdiffrast nor OpenGL is available.

Each triangle is solved in 2D homogeneous coordinates (Olano & Greer 1997): with
``M = [[x0 x1 x2], [y0 y1 y2], [w0 w1 w2]]`` and a pixel centre ``p = (x_ndc, y_ndc, 1)``,
``s = adj(M) p`` gives the perspective-correct barycentrics ``s / sum(s)`` of the point of the
triangle's plane seen through ``p``, at clip ``w = det(M) / sum(s)``. The point is visible when
all barycentrics are >= 0, ``w > 0`` and ``-w <= z <= w``: exactly what clipping against the
view volume leaves on screen, without clipping any polygon. Pixels on an edge shared by two
triangles go to the nearer one, then to the lower id (a GPU's top-left rule may pick the other).

Work is vectorised over (triangle, pixel) pairs inside each triangle's screen bounding box,
in chunks of at most ``PAIRS_PER_CHUNK`` pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from backend.raster.interface import Rasterizer

PAIRS_PER_CHUNK = 1 << 21


class SoftwareRasterizer(Rasterizer):
    name = "software"

    def _rasterize(self, clip_pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> torch.Tensor:
        positions = clip_pos.cpu().double().numpy()
        face_array = faces.cpu().numpy()
        frames = [rasterize_frame(positions[b], face_array, height, width) for b in range(positions.shape[0])]
        return torch.from_numpy(np.stack(frames)) if frames else torch.zeros((0, height, width, 4))


def rasterize_frame(clip: np.ndarray, faces: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterize one frame: ``clip`` (V, 4) float64, ``faces`` (F, 3) int -> (H, W, 4) float32."""
    corners = clip[faces]  # (F, 3, 4)
    x, y, z, w = (corners[..., k] for k in range(4))

    # With M's columns c_k = (x_k, y_k, w_k), row k of adj(M) is c_(k+1) x c_(k+2): the
    # coefficients of s_k in (x_ndc, y_ndc, 1).
    columns = corners[..., [0, 1, 3]]
    adjugate = np.cross(np.roll(columns, -1, axis=1), np.roll(columns, -2, axis=1))  # (F, 3, 3)
    determinant = (columns[:, 0] * adjugate[:, 0]).sum(-1)

    # A triangle with all corners outside one clip plane shows nothing; nor does a degenerate one.
    outside_one_plane = np.zeros(len(faces), dtype=bool)
    for coordinate in (x, y, z):
        outside_one_plane |= (coordinate > w).all(1) | (coordinate < -w).all(1)
    candidates = np.nonzero(~outside_one_plane & (determinant != 0))[0]

    row_lo, row_hi, col_lo, col_hi = _pixel_bounds(x[candidates], y[candidates], w[candidates], height, width)
    keep = (row_hi >= row_lo) & (col_hi >= col_lo)
    candidates, row_lo, row_hi, col_lo, col_hi = (a[keep] for a in (candidates, row_lo, row_hi, col_lo, col_hi))

    depth = np.full(height * width, np.inf)
    result = np.zeros((height * width, 4), dtype=np.float32)
    # Units are (triangle, row) pairs so that any chunk, even a screen-filling triangle, stays
    # bounded; the parts of the edge functions that are constant along a row are computed per unit.
    unit_local = np.repeat(np.arange(len(candidates)), row_hi - row_lo + 1)
    unit_row = row_lo[unit_local] + _ranks_within_groups(row_hi - row_lo + 1)
    unit_tri = candidates[unit_local]
    row_y = (2.0 * unit_row + 1.0) / height - 1.0
    unit_slope = adjugate[unit_tri, :, 0]  # d s / d x_ndc
    unit_offset = adjugate[unit_tri, :, 1] * row_y[:, None] + adjugate[unit_tri, :, 2]
    unit_pixels = (col_hi - col_lo + 1)[unit_local]
    unit_first_pixel = unit_row * width + col_lo[unit_local]
    ends = np.cumsum(unit_pixels)
    start = 0
    while start < len(unit_tri):
        budget = (ends[start - 1] if start else 0) + max(PAIRS_PER_CHUNK, int(unit_pixels[start]))
        stop = int(np.searchsorted(ends, budget, side="right"))
        units = slice(start, stop)
        _resolve_chunk(
            unit_tri[units],
            unit_slope[units],
            unit_offset[units],
            unit_pixels[units],
            unit_first_pixel[units],
            determinant,
            z,
            width,
            depth,
            result,
        )
        start = stop
    return result.reshape(height, width, 4)


def _pixel_bounds(x: np.ndarray, y: np.ndarray, w: np.ndarray, height: int, width: int):
    """Inclusive pixel row/column ranges covering each triangle's on-screen extent.

    A triangle with a corner at or behind the camera plane (w <= 0) may project anywhere, so it
    gets the whole screen; the exact per-pixel test then does the clipping.
    """
    in_front = (w > 0).all(1)
    safe_w = np.where(w > 0, w, 1.0)
    x_ndc, y_ndc = x / safe_w, y / safe_w
    # Pixel centre j sits at x_ndc = 2 (j + 0.5) / W - 1, so j = (x_ndc + 1) W / 2 - 0.5; the
    # slack keeps centres exactly on a corner's coordinate despite rounding.
    slack = 1e-6
    col_lo = np.ceil((x_ndc.min(1) + 1) * width / 2 - 0.5 - slack)
    col_hi = np.floor((x_ndc.max(1) + 1) * width / 2 - 0.5 + slack)
    row_lo = np.ceil((y_ndc.min(1) + 1) * height / 2 - 0.5 - slack)
    row_hi = np.floor((y_ndc.max(1) + 1) * height / 2 - 0.5 + slack)
    col_lo = np.where(in_front, np.clip(col_lo, 0, width), 0).astype(np.int64)
    col_hi = np.where(in_front, np.clip(col_hi, -1, width - 1), width - 1).astype(np.int64)
    row_lo = np.where(in_front, np.clip(row_lo, 0, height), 0).astype(np.int64)
    row_hi = np.where(in_front, np.clip(row_hi, -1, height - 1), height - 1).astype(np.int64)
    return row_lo, row_hi, col_lo, col_hi


def _ranks_within_groups(sizes: np.ndarray) -> np.ndarray:
    """For consecutive groups of the given sizes: 0, 1, ..., size-1 for each group, concatenated."""
    total = int(sizes.sum())
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.arange(total) - starts


def _resolve_chunk(
    unit_tri: np.ndarray,
    unit_slope: np.ndarray,
    unit_offset: np.ndarray,
    unit_pixels: np.ndarray,
    unit_first_pixel: np.ndarray,
    determinant: np.ndarray,
    z: np.ndarray,
    width: int,
    depth: np.ndarray,
    result: np.ndarray,
) -> None:
    """Test every pixel of a run of (triangle, row) units and merge the winners into the buffers."""
    rank = _ranks_within_groups(unit_pixels)
    pixel = np.repeat(unit_first_pixel, unit_pixels) + rank
    px = (2.0 * (pixel % width) + 1.0) / width - 1.0
    s = np.repeat(unit_slope, unit_pixels, axis=0) * px[:, None] + np.repeat(unit_offset, unit_pixels, axis=0)
    tri = np.repeat(unit_tri, unit_pixels)
    total = s.sum(1)
    # Barycentrics s / total are >= 0 iff every s_k shares total's sign; w = det / total > 0.
    sign = np.sign(total)
    visible = (s * sign[:, None] >= 0).all(1) & (determinant[tri] * sign > 0)
    s, total, tri, pixel = s[visible], total[visible], tri[visible], pixel[visible]
    bary = s / total[:, None]
    clip_w = determinant[tri] / total
    clip_z = (bary * z[tri]).sum(1)
    in_depth_range = (clip_z >= -clip_w) & (clip_z <= clip_w)
    bary, tri, pixel = bary[in_depth_range], tri[in_depth_range], pixel[in_depth_range]
    ndc_depth = clip_z[in_depth_range] / clip_w[in_depth_range]

    # Nearest per pixel (ties: lowest id), then merge: a later chunk holds higher ids, so it
    # replaces only strictly nearer surfaces.
    order = np.lexsort((tri, ndc_depth, pixel))
    sorted_pixel = pixel[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_pixel[1:] != sorted_pixel[:-1]
    winner = order[first]
    winner = winner[ndc_depth[winner] < depth[pixel[winner]]]
    target = pixel[winner]
    depth[target] = ndc_depth[winner]
    result[target, 0] = bary[winner, 0]
    result[target, 1] = bary[winner, 1]
    result[target, 2] = ndc_depth[winner]
    result[target, 3] = tri[winner] + 1
