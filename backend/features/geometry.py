"""The fixed, non-learnable part of every avatar input: pose the body template, rasterize it (and
its *expanded* copy, pushed out along the normals) and interpolate per-pixel attributes.

Nothing here depends on learnable parameters, so a training run computes these maps once per
frame and keeps them (:mod:`backend.data`); the learnable lookups (neural texture, triplane) run
on top of them in :mod:`backend.features.textures` and :mod:`backend.features.triplane`.

Maps are channels-last ``(B, H, W, C)`` like the rasterizer's output, row 0 the top image row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from backend.bodies.base import BodyModel
from backend.raster import get_rasterizer, interpolate, project_to_clip, vertex_normals
from backend.raster.interface import check_resolution

# What a method can ask for (``Method.needs``); the mask always comes with any of them.
MAP_NAMES = ("uv", "normals", "canonical", "expanded")
# SMPL-X parameters that are per frame (everything in ``SmplxMotion.arrays()`` but betas).
PER_FRAME_KEYS = (
    "global_orient",
    "body_pose",
    "jaw_pose",
    "leye_pose",
    "reye_pose",
    "left_hand_pose",
    "right_hand_pose",
    "transl",
    "expression",
)


@dataclass
class GeometryMaps:
    """Per-pixel inputs of a batch of frames; a field is None when it was not requested.

    * ``mask`` (B, H, W, 1): 1 where the body mesh covers the pixel centre;
    * ``uv`` (B, H, W, 2): texture coordinates (OBJ convention, (0, 0) bottom-left), 0 off the body;
    * ``normals`` (B, H, W, 3): unit normals in *camera* space (x right, y down, z forward);
    * ``canonical`` (B, H, W, 3): the visible point's position on the unposed template (metres);
    * ``expanded_mask`` / ``expanded_canonical``: the same for the mesh pushed out along its normals.
    """

    mask: torch.Tensor
    uv: torch.Tensor | None = None
    normals: torch.Tensor | None = None
    canonical: torch.Tensor | None = None
    expanded_mask: torch.Tensor | None = None
    expanded_canonical: torch.Tensor | None = None

    def items(self) -> Iterable[tuple[str, torch.Tensor]]:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    def apply(self, function) -> "GeometryMaps":
        """A copy with ``function`` applied to every present tensor."""
        return GeometryMaps(**{name: function(value) for name, value in self.items()})

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "GeometryMaps":
        """Move to ``device``; ``dtype`` converts every map but ``uv`` (which keeps float32 precision)."""

        def move(name: str, value: torch.Tensor) -> torch.Tensor:
            target = torch.float32 if name == "uv" or dtype is None else dtype
            return value.to(device=device, dtype=target, non_blocking=True)

        return GeometryMaps(**{name: move(name, value) for name, value in self.items()})

    def index(self, rows: torch.Tensor | slice) -> "GeometryMaps":
        return self.apply(lambda value: value[rows])

    @staticmethod
    def cat(parts: Sequence["GeometryMaps"]) -> "GeometryMaps":
        names = [name for name, _ in parts[0].items()]
        return GeometryMaps(**{name: torch.cat([getattr(p, name) for p in parts]) for name in names})

    @property
    def batch(self) -> int:
        return int(self.mask.shape[0])

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.mask.shape[1]), int(self.mask.shape[2])

    def channels_first(self, name: str) -> torch.Tensor:
        """Map ``name`` as (B, C, H, W) for convolutional networks."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"the geometry maps hold no {name!r} map (it was not requested)")
        return value.permute(0, 3, 1, 2)


def _as_batch(value: np.ndarray | torch.Tensor, name: str, frames: int | None) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(value, dtype=np.float32) if not isinstance(value, torch.Tensor) else value)
    tensor = tensor.to(torch.float32)
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2:
        raise ValueError(f"pose parameter {name!r} must be (frames, width), got shape {tuple(tensor.shape)}")
    if frames is not None and tensor.shape[0] != frames:
        raise ValueError(f"pose parameter {name!r} has {tensor.shape[0]} frames, other parameters have {frames}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"pose parameter {name!r} holds NaN or infinite values")
    return tensor


def _fit_width(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Pad with zeros or cut to ``width`` columns (shape / expression spaces differ between files)."""
    if tensor.shape[1] >= width:
        return tensor[:, :width]
    return torch.cat([tensor, tensor.new_zeros(tensor.shape[0], width - tensor.shape[1])], dim=1)


def smplx_parameters(
    body: BodyModel, poses: Mapping[str, np.ndarray | torch.Tensor], betas: np.ndarray | torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Turn per-frame SMPL-X arrays (``SmplxMotion.arrays()`` keys) into ``body.forward`` arguments.

    ``betas`` is the avatar's identity and wins over any ``betas`` in ``poses`` (an avatar keeps
    its own body shape whatever motion drives it). Expression and betas are padded with zeros or
    cut to the model's widths; missing parts are zeros. Unknown keys, wrong shapes and non-finite
    values raise a ValueError naming the key.
    """
    unknown = sorted(set(poses) - set(PER_FRAME_KEYS) - {"betas"})
    if unknown:
        raise ValueError(f"unknown pose parameters {unknown}; expected some of {list(PER_FRAME_KEYS)} (+ betas)")
    if "global_orient" not in poses and "body_pose" not in poses:
        raise ValueError("poses must hold at least 'global_orient' or 'body_pose' (frames, width) arrays")
    device = body.faces.device
    frames: int | None = None
    params: dict[str, torch.Tensor] = {}
    for name in PER_FRAME_KEYS:
        if name not in poses or name not in body.parameter_widths:
            continue
        tensor = _as_batch(poses[name], name, frames)
        frames = tensor.shape[0]
        width = body.parameter_widths[name]
        if name == "expression":
            tensor = _fit_width(tensor, width)
        elif tensor.shape[1] != width:
            raise ValueError(f"pose parameter {name!r} must have width {width}, got {tensor.shape[1]}")
        params[name] = tensor.to(device)
    assert frames is not None
    if betas is None:
        betas = poses.get("betas")
    if betas is not None and "betas" in body.parameter_widths:
        shape = _fit_width(_as_batch(betas, "betas", None)[:1], body.parameter_widths["betas"])
        params["betas"] = shape.to(device).expand(frames, -1)
    return params


def _batched(matrix: np.ndarray | torch.Tensor, shape: tuple[int, int], frames: int, name: str, device) -> torch.Tensor:
    tensor = matrix if isinstance(matrix, torch.Tensor) else torch.from_numpy(np.array(matrix, dtype=np.float32))
    tensor = tensor.to(device=device, dtype=torch.float32)
    if tensor.shape == shape:
        tensor = tensor.expand(frames, *shape)
    if tuple(tensor.shape) != (frames, *shape):
        raise ValueError(f"{name} must be {shape} or ({frames}, {shape[0]}, {shape[1]}), got {tuple(tensor.shape)}")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} holds NaN or infinite values")
    return tensor


class BodyRasterizer:
    """Poses a body model with a fixed identity and renders its geometry maps.

    ``needs`` picks the maps (a subset of :data:`MAP_NAMES`); ``expand_offset`` is how far (metres)
    the expanded mesh is pushed out along the vertex normals.
    """

    def __init__(
        self,
        body: BodyModel,
        betas: np.ndarray | torch.Tensor | None = None,
        needs: Iterable[str] = ("uv", "normals"),
        *,
        expand_offset: float = 0.01,
        rasterizer: str = "auto",
        near: float = 0.01,
        far: float = 100.0,
    ):
        self.needs = frozenset(needs)
        unknown = sorted(self.needs - set(MAP_NAMES))
        if unknown:
            raise ValueError(f"unknown geometry maps {unknown}; choose from {list(MAP_NAMES)}")
        if "uv" in self.needs and body.uv is None:
            raise ValueError(f"{body.label} has no UV layout, so a UV neural texture cannot be used (try a triplane)")
        self.body = body
        self.device = body.faces.device
        self.betas = None if betas is None else torch.as_tensor(np.asarray(betas, np.float32)).reshape(-1)
        self.expand_offset = float(expand_offset)
        self.near, self.far = near, far
        self.faces = body.faces.long()
        self.rasterizer = get_rasterizer(rasterizer, device=self.device)
        with torch.no_grad():
            shape = None
            if self.betas is not None and "betas" in body.parameter_widths:
                shape = _fit_width(self.betas[None], body.parameter_widths["betas"])[0].to(self.device)
            rest = body.rest_vertices(shape)
            self.rest_vertices = rest.detach().float()
            self.rest_normals = vertex_normals(self.rest_vertices, self.faces)

    def pose(self, poses: Mapping[str, np.ndarray | torch.Tensor]) -> torch.Tensor:
        """(B, V, 3) posed world-space vertices for per-frame SMPL-X arrays."""
        with torch.no_grad():
            return self.body(**smplx_parameters(self.body, poses, self.betas)).vertices.float()

    def render(
        self,
        vertices: torch.Tensor,
        K: np.ndarray | torch.Tensor,
        world_to_camera: np.ndarray | torch.Tensor,
        resolution: Sequence[int],
    ) -> GeometryMaps:
        """Geometry maps of posed vertices (B, V, 3) seen by cameras ``K`` (3×3 or B×3×3) and
        ``world_to_camera`` (4×4 or B×4×4) at ``resolution`` (H, W)."""
        resolution = check_resolution(resolution)
        K, world_to_camera = self._cameras(K, world_to_camera, vertices.shape[0])
        with torch.no_grad():
            normals_world = vertex_normals(vertices, self.faces)
            maps = self._maps(vertices, normals_world, K, world_to_camera, resolution, expanded=False)
            if "expanded" in self.needs:
                pushed = vertices + self.expand_offset * normals_world
                extra = self._maps(pushed, normals_world, K, world_to_camera, resolution, expanded=True)
                maps.expanded_mask, maps.expanded_canonical = extra.mask, extra.canonical
        return maps

    def __call__(self, poses, K, world_to_camera, resolution) -> GeometryMaps:
        return self.render(self.pose(poses), K, world_to_camera, resolution)

    def _cameras(self, K, world_to_camera, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames, 3, 3) intrinsics and (frames, 4, 4) extrinsics on the body's device, validated."""
        return (
            _batched(K, (3, 3), frames, "K", self.device),
            _batched(world_to_camera, (4, 4), frames, "world_to_camera", self.device),
        )

    def _rasterize(self, vertices, K, world_to_camera, resolution) -> torch.Tensor:
        clip = project_to_clip(vertices, K, world_to_camera, resolution, self.near, self.far)
        return self.rasterizer.rasterize(clip, self.faces, resolution)

    def _maps(self, vertices, normals_world, K, world_to_camera, resolution, *, expanded: bool) -> GeometryMaps:
        rast = self._rasterize(vertices, K, world_to_camera, resolution)
        mask = (rast[..., 3:4] > 0).float()
        maps = GeometryMaps(mask=mask)
        if expanded:
            canonical_rest = self.rest_vertices + self.expand_offset * self.rest_normals
            maps.canonical = interpolate(canonical_rest, rast, self.faces)
            return maps
        if "uv" in self.needs:
            uv_coords, uv_faces = self.body.uv  # type: ignore[misc]
            maps.uv = interpolate(uv_coords.float(), rast, uv_faces.long())
        if "normals" in self.needs:
            rotation = world_to_camera[:, :3, :3]
            normals_camera = normals_world @ rotation.transpose(1, 2)
            maps.normals = torch.nn.functional.normalize(interpolate(normals_camera, rast, self.faces), dim=-1)
        if "canonical" in self.needs:
            maps.canonical = interpolate(self.rest_vertices, rast, self.faces)
        return maps

    def visible_faces(
        self,
        vertices: torch.Tensor,
        K: np.ndarray | torch.Tensor,
        world_to_camera: np.ndarray | torch.Tensor,
        resolution: Sequence[int],
    ) -> torch.Tensor:
        """(B, F) bool: which triangles are visible in each frame (for keyframe selection)."""
        frames = vertices.shape[0]
        K, world_to_camera = self._cameras(K, world_to_camera, frames)
        with torch.no_grad():
            rast = self._rasterize(vertices, K, world_to_camera, check_resolution(resolution))
            ids = rast[..., 3].long().reshape(frames, -1)  # triangle id + 1, 0 = background
            seen = torch.zeros(frames, self.faces.shape[0] + 1, dtype=torch.bool, device=ids.device)
            seen.scatter_(1, ids, True)
        return seen[:, 1:]

    def face_areas(self) -> torch.Tensor:
        """(F,) rest-pose triangle areas (m²): how much surface each visible triangle stands for."""
        corners = self.rest_vertices[self.faces]
        return 0.5 * torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1).norm(dim=-1)
