"""The per-frame SMPL-X parameters and OpenCV cameras that ``render``, ``render_sequence`` and
``bake`` requests carry as binary arrays.

Pose arrays use the ``SmplxMotion.arrays()`` names, ``(B, width)`` float32/float64, in the body
model's frame of the avatar's training capture; any may be left out (zeros). ``camera_K``
(pixels) and ``camera_world_to_camera`` (OpenCV: x right, y down, z forward) are either one
camera for every frame, ``(3, 3)`` / ``(4, 4)``, or one per frame, ``(B, 3, 3)`` / ``(B, 4, 4)``.
The connection has already checked dtypes, shapes, the shared frame count B and finiteness
against :func:`pose_camera_schema`; :func:`pose_frames` adds the frame-count and value limits
and fills in the missing parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from backend.capture.motion import SMPLX_POSE_PARTS
from backend.server.schema import Array, BadRequest

FLOATS = ("float32", "float64")
FRAMES = "B"
# Per-frame width of every SMPL-X parameter; the expression width is the client's (padded or cut
# to the body model's by the renderer).
POSE_WIDTHS: dict[str, int | None] = {**dict(SMPLX_POSE_PARTS), "transl": 3, "expression": None}
CAMERA_SHAPES = {"camera_K": (3, 3), "camera_world_to_camera": (4, 4)}
# Radians, metres and expression coefficients beyond this are no pose (and overflow the posed mesh).
POSE_LIMIT = 1e4


def pose_camera_schema() -> dict[str, Array]:
    """The array declaration shared by the render and bake requests."""
    schema = {
        name: Array(FLOATS, (FRAMES, width), required=False, doc=f"SMPL-X {name} per frame (zeros when left out)")
        for name, width in POSE_WIDTHS.items()
    }
    schema["camera_K"] = Array(FLOATS, (FRAMES, 3, 3), or_shapes=((3, 3),), doc="intrinsics in pixels (OpenCV)")
    schema["camera_world_to_camera"] = Array(
        FLOATS, (FRAMES, 4, 4), or_shapes=((4, 4),), doc="world-to-camera transform (OpenCV: x right, y down, z forward)"
    )
    return schema


@dataclass(frozen=True)
class PoseFrames:
    """Validated frames: every SMPL-X parameter as float32 (count, width), and the cameras."""

    poses: dict[str, np.ndarray]
    K: np.ndarray  # (3, 3) or (count, 3, 3) float32
    world_to_camera: np.ndarray  # (4, 4) or (count, 4, 4) float32
    count: int

    def select(self, start: int, stop: int) -> "PoseFrames":
        """Frames ``start`` to ``stop - 1`` (a shared camera stays shared)."""
        rows = slice(start, stop)
        return PoseFrames(
            poses={name: value[rows] for name, value in self.poses.items()},
            K=self.K[rows] if self.K.ndim == 3 else self.K,
            world_to_camera=self.world_to_camera[rows] if self.world_to_camera.ndim == 3 else self.world_to_camera,
            count=len(range(self.count)[rows]),
        )

    def per_frame_cameras(self) -> tuple[np.ndarray, np.ndarray]:
        """(K (count, 3, 3), world_to_camera (count, 4, 4)), a shared camera repeated."""
        K = np.broadcast_to(self.K, (self.count, 3, 3)) if self.K.ndim == 2 else self.K
        w2c = np.broadcast_to(self.world_to_camera, (self.count, 4, 4)) if self.world_to_camera.ndim == 2 else self.world_to_camera
        return np.ascontiguousarray(K), np.ascontiguousarray(w2c)


def pose_frames(arrays: Mapping[str, np.ndarray], max_frames: int) -> PoseFrames:
    """The request's frames; a frame count outside 1..``max_frames`` is a ``bad_request``."""
    given = [arrays[name] for name in POSE_WIDTHS if name in arrays]
    given += [arrays[name] for name, shape in CAMERA_SHAPES.items() if arrays[name].ndim == len(shape) + 1]
    count = int(given[0].shape[0]) if given else 1  # the schema made every B the same
    if not 1 <= count <= max_frames:
        raise BadRequest(f"arrays: {count} frames (axis {FRAMES}); this request takes 1..{max_frames}")
    poses = {
        name: _float32(name, arrays[name]) if name in arrays else np.zeros((count, width or 0), np.float32)
        for name, width in POSE_WIDTHS.items()
    }
    for name, value in poses.items():
        if value.size and np.abs(value).max() > POSE_LIMIT:
            raise BadRequest(f"arrays.{name}: values beyond ±{POSE_LIMIT:g} are not a pose")
    K = _float32("camera_K", arrays["camera_K"])
    world_to_camera = _float32("camera_world_to_camera", arrays["camera_world_to_camera"])
    return PoseFrames(poses, K, world_to_camera, count)


def _float32(name: str, value: np.ndarray) -> np.ndarray:
    converted = np.ascontiguousarray(value, dtype=np.float32)
    if value.dtype != np.float32 and not np.isfinite(converted).all():  # float64 beyond the float32 range
        raise BadRequest(f"arrays.{name}: values beyond the float32 range")
    return converted
