"""Cameras for rendering a motion: the tracked ones, rescaled, or a default camera framing the body.

A motion without a camera (an AMASS file) is seen by one fixed perspective camera (square image)
placed in front of the body — along the direction the body faces in the first frame, level with
the world's up axis (``SmplxMotion.up_axis``: Y up, or Z up for AMASS) — 3.5 m from the middle of
the motion (plus half the depth it travels), with the focal length that keeps every frame of the
sequence in view (the sample capture's framing, :func:`backend.capture.sample.frame_camera`).
"""

from __future__ import annotations

import numpy as np

from backend.capture.motion import Tracking
from backend.data.dataset import scale_intrinsics, scaled_resolution
from backend.features.geometry import PER_FRAME_KEYS, BodyRasterizer

DEFAULT_SIZE = 512
FRAMING_SAMPLES = 64  # frames posed to find the sequence's extent
SAMPLE_DISTANCE = 3.5  # metres, as backend.capture.sample.frame_camera
UP_VECTORS = {"y": (0.0, 1.0, 0.0), "-y": (0.0, -1.0, 0.0), "z": (0.0, 0.0, 1.0)}


def _axis_angle_matrix(rotation: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rotation.astype(np.float64)).as_matrix()


def _view_frame(up: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """Rotation (world → view) with view Y = up and view Z = the horizontal facing direction."""
    forward = facing - up * float(facing @ up)
    if np.linalg.norm(forward) < 1e-6:  # facing straight up or down: any horizontal direction
        helper = np.array([0.0, 0.0, 1.0]) if abs(up[2]) < 0.9 else np.array([0.0, -1.0, 0.0])
        forward = helper - up * float(helper @ up)
    forward /= np.linalg.norm(forward)
    return np.stack([np.cross(up, forward), up, forward])


def default_camera(tracking: Tracking, geometry: BodyRasterizer, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(K (3, 3), world_to_camera (4, 4)) of a fixed camera framing the whole motion (module docstring)."""
    from backend.capture.sample import frame_camera

    motion = tracking.motion
    picks = np.unique(np.linspace(0, motion.num_frames - 1, min(FRAMING_SAMPLES, motion.num_frames)).round().astype(int))
    arrays = motion.arrays()
    vertices = geometry.pose({key: arrays[key][picks] for key in PER_FRAME_KEYS}).cpu().numpy().reshape(-1, 3)
    up = np.asarray(UP_VECTORS[motion.up_axis])
    facing = _axis_angle_matrix(motion.global_orient[0]) @ np.array([0.0, 0.0, 1.0])
    to_view = _view_frame(up, facing)
    view_points = vertices @ to_view.T
    # The sample capture's camera distance, plus half the depth the motion travels (keeps it in front).
    depth = 0.5 * float(view_points[:, 2].max() - view_points[:, 2].min())
    K, view_to_camera = frame_camera(view_points, size, distance=SAMPLE_DISTANCE + depth)
    world_to_view = np.eye(4)
    world_to_view[:3, :3] = to_view
    return K.astype(np.float32), (view_to_camera.astype(np.float64) @ world_to_view).astype(np.float32)


def motion_cameras(
    tracking: Tracking, geometry: BodyRasterizer, resolution: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per-frame (K (T, 3, 3), world_to_camera (T, 4, 4), (H, W)) to render ``tracking`` with.

    With a tracked camera: its intrinsics, rescaled so the longer side is ``resolution`` when
    given. Without one: :func:`default_camera` at ``resolution`` (default 512) squared.
    """
    frames = tracking.num_frames
    if tracking.camera is None:
        size = resolution or DEFAULT_SIZE
        K, world_to_camera = default_camera(tracking, geometry, size)
        return np.repeat(K[None], frames, 0), np.repeat(world_to_camera[None], frames, 0), (size, size)
    image_size = tracking.camera.image_size
    target = scaled_resolution(image_size, resolution) if resolution else image_size
    return scale_intrinsics(tracking.camera.K, image_size, target), tracking.camera.world_to_camera, target
