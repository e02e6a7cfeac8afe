"""Pure numpy motion maths shared by the importer and exporter (no bpy, unit-tested on its own).

Conventions: quaternions are (w, x, y, z); axis-angle vectors are rotation axis times angle
in radians; rotation matrices act on column vectors; arrays are frames first and every
function is vectorised over leading dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# Blender's limits for RenderSettings.fps (int) and fps_base (single-precision float).
BLENDER_MAX_FPS = 32767
BLENDER_FPS_BASE_RANGE = (1e-5, 1e6)

# Rotation from a motion's world frame to Blender's Z-up world, per up axis of the motion.
# SMPL-X tracked captures are Y-up (x, y, z) -> (x, -z, y): +90 degrees about X.
UP_AXIS_ROTATIONS: dict[str, np.ndarray] = {
    "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    "-y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
    "z": np.eye(3),
}

# OpenCV cameras look down +Z with +Y down; Blender cameras look down -Z with +Y up.
OPENCV_TO_BLENDER_CAMERA_AXES = np.diag([1.0, -1.0, -1.0])

_SMALL_ANGLE = 1e-6

# Relative difference under which two frame rates are one rate: single precision (Blender's
# fps_base, float32 rates in files) shifts a rate by ~1e-7, and 29.97 as Blender's preset
# 30 / 1.001 must key the 30000/1001 motion frame for frame, not resample it.
SAME_RATE_TOLERANCE = 1e-6
# Relative to the target frame count: slack for float64 rounding of the last frame's position.
FRAME_COUNT_TOLERANCE = 1e-9


# --- rotations ---------------------------------------------------------------------------


def axis_angle_to_quaternion(axis_angle: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 4) unit quaternions (w, x, y, z), float64."""
    axis_angle = np.asarray(axis_angle, dtype=np.float64)
    angle = np.linalg.norm(axis_angle, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(angle/2)/angle, with its Taylor series near zero to stay exact for tiny rotations.
    safe = np.where(angle < _SMALL_ANGLE, 1.0, angle)
    scale = np.where(angle < _SMALL_ANGLE, 0.5 - angle**2 / 48.0, np.sin(half) / safe)
    return np.concatenate([np.cos(half), axis_angle * scale], axis=-1)


def quaternion_to_axis_angle(quaternion: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (any length, either sign) -> (..., 3) axis-angle with angle in [0, pi]."""
    q = normalize_quaternions(quaternion)
    q = np.where(q[..., :1] < 0.0, -q, q)  # the rotation with angle <= pi
    vector = q[..., 1:]
    sin_half = np.linalg.norm(vector, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    # angle / sin(angle/2) = 2 asin(s) / s, with its series near zero.
    safe = np.where(sin_half < _SMALL_ANGLE, 1.0, sin_half)
    scale = np.where(sin_half < _SMALL_ANGLE, 2.0 + sin_half**2 / 3.0, angle / safe)
    return vector * scale


def normalize_quaternions(quaternion: np.ndarray) -> np.ndarray:
    q = np.asarray(quaternion, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("a quaternion has zero length and names no rotation")
    return q / norm


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions -> (..., 3, 3) rotation matrices."""
    w, x, y, z = np.moveaxis(normalize_quaternions(quaternion), -1, 0)
    matrix = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )  # fmt: skip
    return matrix.reshape(*matrix.shape[:-1], 3, 3)


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle -> (..., 3, 3) rotation matrices."""
    return quaternion_to_matrix(axis_angle_to_quaternion(axis_angle))


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions with w >= 0.

    Picks, per matrix, the numerically best of the four standard formulas (largest of
    w, x, y, z), so it stays accurate near 180-degree rotations.
    """
    m = np.asarray(matrix, dtype=np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * squares of w, x, y, z (up to the common factor) - the largest is best conditioned.
    candidates = np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=-1
    )
    best = np.argmax(candidates, axis=-1)
    root = np.sqrt(np.maximum(np.take_along_axis(candidates, best[..., None], -1)[..., 0], 1e-300))
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    options = np.stack(
        [
            np.stack([root * root, d21, d02, d10], -1),
            np.stack([d21, root * root, s10, s02], -1),
            np.stack([d02, s10, root * root, s21], -1),
            np.stack([d10, s02, s21, root * root], -1),
        ],
        axis=-2,
    )
    q = np.take_along_axis(options, best[..., None, None], -2)[..., 0, :] / (2.0 * root[..., None])
    q = np.where(q[..., :1] < 0.0, -q, q)
    return normalize_quaternions(q)


def make_quaternions_continuous(quaternion: np.ndarray, axis: int = 0) -> np.ndarray:
    """Flip signs along ``axis`` (time) so consecutive quaternions lie in the same hemisphere.

    q and -q are the same rotation, but curves interpolate component-wise: without this a
    sign flip between two frames makes the in-between pose spin the long way round.
    """
    q = np.moveaxis(np.asarray(quaternion, dtype=np.float64), axis, 0)
    if q.shape[0] < 2:
        return np.moveaxis(q.copy(), 0, axis)
    dots = np.sum(q[1:] * q[:-1], axis=-1)
    step_sign = np.where(dots < 0.0, -1.0, 1.0)
    signs = np.concatenate([np.ones_like(step_sign[:1]), np.cumprod(step_sign, axis=0)], axis=0)
    return np.moveaxis(q * signs[..., None], 0, axis)


def quaternion_slerp(start: np.ndarray, end: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """Spherical interpolation between unit quaternions (..., 4); ``fraction`` broadcasts as (...).

    Takes the short way (flips ``end`` when needed); fraction 0 returns ``start`` exactly.
    """
    q0 = np.asarray(start, dtype=np.float64)
    q1 = np.asarray(end, dtype=np.float64)
    t = np.asarray(fraction, dtype=np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0.0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    nearly_parallel = sin_theta < 1e-8
    safe = np.where(nearly_parallel, 1.0, sin_theta)
    w0 = np.where(nearly_parallel, 1.0 - t, np.sin((1.0 - t) * theta) / safe)
    w1 = np.where(nearly_parallel, t, np.sin(t * theta) / safe)
    out = w0 * q0 + w1 * q1
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


# --- frame rates and resampling ----------------------------------------------------------


def blender_frame_rate(fps: float) -> tuple[int, float]:
    """``(fps, fps_base)`` for Blender's RenderSettings so that ``fps / fps_base`` is ``fps`` exactly.

    Blender plays ``fps / fps_base`` frames per second, with ``fps_base`` stored in single
    precision, so 29.97 as 30 / 1.001 would be off by 5e-8. Instead the rate is written as an
    exact ratio whose base survives single precision: 29.97 -> (2997, 100.0), 30000/1001 ->
    (30000, 1001.0), 60000/1001 -> (30000, 500.5), 24 -> (24, 1.0). Raises ValueError for rates
    Blender cannot represent exactly; ``nearest_blender_frame_rate`` is then the fallback.
    """
    fps = _positive_rate(fps)
    ratio = Fraction(fps).limit_denominator(1_000_000)
    if float(ratio) != fps:
        ratio = Fraction(fps)
    numerator, base = ratio.numerator, Fraction(ratio.denominator)
    while numerator > BLENDER_MAX_FPS and numerator % 2 == 0:
        numerator //= 2
        base /= 2
    base_value = float(base)
    if (
        numerator <= BLENDER_MAX_FPS
        and BLENDER_FPS_BASE_RANGE[0] <= base_value <= BLENDER_FPS_BASE_RANGE[1]
        and float(np.float32(base_value)) == base_value
        and numerator / float(np.float32(base_value)) == fps
    ):
        return numerator, base_value
    raise ValueError(f"{fps!r} frames per second has no exact fps / fps_base form in Blender")


def nearest_blender_frame_rate(fps: float) -> tuple[int, float]:
    """The exact form when there is one, else ``(round(fps), round(fps) / fps)`` (single-precision base)."""
    try:
        return blender_frame_rate(fps)
    except ValueError:
        fps = _positive_rate(fps)
        whole = int(min(max(round(fps), 1), BLENDER_MAX_FPS))
        return whole, whole / fps


def scene_frame_rate(fps: int, fps_base: float) -> float:
    """Frames per second a Blender scene plays, from its RenderSettings values."""
    return float(fps) / float(fps_base)


def resampling_positions(num_frames: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Fractional source-frame positions of target frames k = 0, 1, ... within the source's span.

    Target frame k shows time k / target_fps, i.e. source position k * source_fps / target_fps.
    Each position is computed from k directly (never by accumulating a step), so there is
    no drift: 120 -> 30 gives exactly 0, 4, 8, ...; 30 -> 24 gives 0, 1.25, 2.5, ... Rates
    within ``SAME_RATE_TOLERANCE`` of each other are the same rate: the source frames themselves.
    """
    if num_frames < 1:
        raise ValueError("cannot resample an empty motion")
    ratio = _positive_rate(source_fps) / _positive_rate(target_fps)
    if abs(ratio - 1.0) < SAME_RATE_TOLERANCE:
        return np.arange(num_frames, dtype=np.float64)
    span = (num_frames - 1) / ratio
    # Keeps a last target frame that lands on the last source frame; rounding grows with the span.
    count = int(np.floor(span + FRAME_COUNT_TOLERANCE * max(span, 1.0))) + 1
    positions = np.arange(count, dtype=np.float64) * ratio
    return np.minimum(positions, num_frames - 1)


def is_identity_resampling(positions: np.ndarray, num_frames: int, tolerance: float = 1e-6) -> bool:
    """True when the positions are the source frames themselves (nothing to interpolate)."""
    return positions.shape[0] == num_frames and bool(
        np.all(np.abs(positions - np.arange(num_frames)) <= tolerance)
    )


def _bracket(positions: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lower = np.clip(np.floor(positions).astype(np.int64), 0, num_frames - 1)
    upper = np.minimum(lower + 1, num_frames - 1)
    return lower, upper, positions - lower


def resample_linear(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` (T, ...) at fractional frame ``positions`` (K,)."""
    values = np.asarray(values, dtype=np.float64)
    lower, upper, fraction = _bracket(np.asarray(positions, np.float64), values.shape[0])
    fraction = fraction.reshape(-1, *([1] * (values.ndim - 1)))
    return values[lower] * (1.0 - fraction) + values[upper] * fraction


def resample_quaternions(quaternions: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Slerp of (T, ..., 4) quaternions at fractional frame ``positions`` (K,)."""
    q = np.asarray(quaternions, dtype=np.float64)
    lower, upper, fraction = _bracket(np.asarray(positions, np.float64), q.shape[0])
    fraction = np.broadcast_to(fraction.reshape(-1, *([1] * (q.ndim - 2))), (len(lower), *q.shape[1:-1]))
    return quaternion_slerp(q[lower], q[upper], fraction)


@dataclass(frozen=True)
class Timeline:
    """Which moment of the source motion each keyed frame shows.

    ``positions[k]`` is the fractional source frame shown by keyed frame k. When the keyed
    rate equals the source rate the positions are the source frames and values pass
    through untouched (lossless); otherwise they are interpolated at exact times.
    """

    source_frames: int
    positions: np.ndarray

    @classmethod
    def between(cls, source_frames: int, source_fps: float, target_fps: float) -> "Timeline":
        return cls(source_frames, resampling_positions(source_frames, source_fps, target_fps))

    @property
    def num_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def is_identity(self) -> bool:
        return is_identity_resampling(self.positions, self.source_frames)

    def linear(self, values: np.ndarray) -> np.ndarray:
        """(T, ...) values at the keyed frames, linearly interpolated."""
        return np.asarray(values) if self.is_identity else resample_linear(values, self.positions)

    def rotations(self, quaternions: np.ndarray) -> np.ndarray:
        """(T, ..., 4) sign-continuous quaternions at the keyed frames, by slerp."""
        return np.asarray(quaternions) if self.is_identity else resample_quaternions(quaternions, self.positions)


def _positive_rate(fps: float) -> float:
    fps = float(fps)
    if not (np.isfinite(fps) and fps > 0.0):
        raise ValueError(f"frame rate must be a positive number, got {fps!r}")
    return fps


# --- up axis, kinematics, grounding ------------------------------------------------------


def up_axis_matrix(up_axis: str) -> np.ndarray:
    """4x4 transform from a motion's world (``up_axis`` "y", "-y" or "z") to Blender's Z-up world."""
    try:
        rotation = UP_AXIS_ROTATIONS[up_axis]
    except KeyError:
        raise ValueError(f"up axis must be one of {sorted(UP_AXIS_ROTATIONS)}, got {up_axis!r}") from None
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    return matrix


def joint_world_transforms(
    rest_joints: np.ndarray, parents: np.ndarray, rotations: np.ndarray, translation: np.ndarray
) -> np.ndarray:
    """(T, J, 4, 4) world transform of each joint frame, as SMPL-family models chain them.

    ``rotations`` (T, J, 3, 3) are local joint rotations, ``translation`` (T, 3) the root
    offset (``transl``). Joint j's frame has rotation G_parent * R_j and origin at the posed
    joint; parents must come before their children.
    """
    rest_joints = np.asarray(rest_joints, np.float64)
    rotations = np.asarray(rotations, np.float64)
    frames, count = rotations.shape[:2]
    transforms = np.zeros((frames, count, 4, 4))
    transforms[..., 3, 3] = 1.0
    for joint, parent in enumerate(np.asarray(parents)):
        if parent < 0:
            transforms[:, joint, :3, :3] = rotations[:, joint]
            transforms[:, joint, :3, 3] = rest_joints[joint] + np.asarray(translation, np.float64)
        else:
            offset = rest_joints[joint] - rest_joints[parent]
            parent_transform = transforms[:, parent]
            transforms[:, joint, :3, :3] = parent_transform[:, :3, :3] @ rotations[:, joint]
            transforms[:, joint, :3, 3] = parent_transform[:, :3, :3] @ offset + parent_transform[:, :3, 3]
    return transforms


def skinning_transforms(joint_transforms: np.ndarray, rest_joints: np.ndarray) -> np.ndarray:
    """(T, J, 3, 4) transforms taking rest-pose points to posed points, one per joint (for LBS)."""
    rotation = joint_transforms[..., :3, :3]
    origin = joint_transforms[..., :3, 3] - np.einsum("tjab,jb->tja", rotation, np.asarray(rest_joints, np.float64))
    return np.concatenate([rotation, origin[..., None]], axis=-1)


def lowest_height(
    rest_vertices: np.ndarray,
    weights: np.ndarray,
    rest_joints: np.ndarray,
    parents: np.ndarray,
    axis_angles: np.ndarray,
    translation: np.ndarray,
    world_to_blender: np.ndarray,
    expression_directions: np.ndarray | None = None,
    expression: np.ndarray | None = None,
    chunk_frames: int = 128,
) -> float:
    """Lowest Blender-world Z of the skinned mesh over the given frames (for grounding).

    ``rest_vertices`` (V, 3), ``axis_angles`` (T, J, 3), ``translation`` (T, 3); per-frame
    blendshape offsets ``expression_directions`` (V, 3, E) times ``expression`` (T, E) are
    included when given. Only the height row of each blended transform is formed, in chunks
    of frames, so a long sequence stays affordable.
    """
    up_row = np.asarray(world_to_blender, np.float64)[2]
    weights = np.asarray(weights, np.float64)
    rest_vertices = np.asarray(rest_vertices, np.float64)
    axis_angles = np.asarray(axis_angles, np.float64)
    translation = np.asarray(translation, np.float64)
    with_offsets = expression is not None and expression_directions is not None and expression.shape[1] > 0
    count = weights.shape[1]
    lowest = np.inf
    for start in range(0, axis_angles.shape[0], chunk_frames):
        stop = min(start + chunk_frames, axis_angles.shape[0])
        rotations = axis_angle_to_matrix(axis_angles[start:stop])
        skin = skinning_transforms(
            joint_world_transforms(rest_joints, parents, rotations, translation[start:stop]), rest_joints
        )
        height_rows = np.einsum("a,tjab->jtb", up_row[:3], skin)  # (J, t, 4): height row per joint
        blended = (weights @ height_rows.reshape(count, -1)).reshape(weights.shape[0], stop - start, 4)
        heights = np.einsum("vtb,vb->vt", blended[..., :3], rest_vertices) + blended[..., 3]
        if with_offsets:
            offsets = np.einsum("vce,te->vtc", expression_directions, np.asarray(expression[start:stop], np.float64))
            heights += np.einsum("vtb,vtb->vt", blended[..., :3], offsets)
        lowest = min(lowest, float(heights.min() + up_row[3]))
    return lowest


# --- cameras -----------------------------------------------------------------------------


def opencv_to_blender_camera(
    intrinsics: np.ndarray, world_to_camera: np.ndarray, image_size: tuple[int, int], sensor_width: float = 36.0
) -> dict[str, np.ndarray]:
    """Blender camera settings reproducing OpenCV pinhole cameras (vectorised over frames).

    ``intrinsics`` (..., 3, 3) in pixels (no skew; OpenCV's pixel centres at integer
    coordinates), ``world_to_camera`` (..., 4, 4), ``image_size`` (height, width). The result
    uses sensor fit HORIZONTAL: ``lens`` (mm), ``shift_x``/``shift_y`` (fractions of the image
    width), ``pixel_aspect`` = fy / fx (Blender's pixel_aspect_x / pixel_aspect_y) and
    ``camera_to_world`` (..., 4, 4), the camera object's matrix in the motion's world with
    Blender's camera axes (looking down -Z, +Y up).
    """
    height, width = (float(v) for v in image_size)
    k = np.asarray(intrinsics, np.float64)
    fx, fy = k[..., 0, 0], k[..., 1, 1]
    # Continuous image coordinates put pixel centres at +0.5, Blender's frame edges at 0 and W.
    cx, cy = k[..., 0, 2] + 0.5, k[..., 1, 2] + 0.5
    aspect = fy / fx
    camera_to_world = np.linalg.inv(np.asarray(world_to_camera, np.float64))
    camera_to_world[..., :3, :3] = camera_to_world[..., :3, :3] @ OPENCV_TO_BLENDER_CAMERA_AXES
    return {
        "lens": fx * sensor_width / width,
        "sensor_width": np.full_like(fx, sensor_width),
        "shift_x": (width / 2.0 - cx) / width,
        "shift_y": (cy - height / 2.0) / (width * aspect),
        "pixel_aspect": aspect,
        "camera_to_world": camera_to_world,
    }


def blender_to_opencv_camera(
    lens: np.ndarray,
    sensor_width: np.ndarray,
    shift_x: np.ndarray,
    shift_y: np.ndarray,
    pixel_aspect: np.ndarray,
    camera_to_world: np.ndarray,
    image_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``opencv_to_blender_camera`` (sensor fit HORIZONTAL): ``(K (..., 3, 3), world_to_camera)``."""
    height, width = (float(v) for v in image_size)
    fx = np.asarray(lens, np.float64) * width / np.asarray(sensor_width, np.float64)
    fy = fx * np.asarray(pixel_aspect, np.float64)
    k = np.zeros(fx.shape + (3, 3))
    k[..., 0, 0], k[..., 1, 1], k[..., 2, 2] = fx, fy, 1.0
    k[..., 0, 2] = width / 2.0 - np.asarray(shift_x, np.float64) * width - 0.5
    k[..., 1, 2] = height / 2.0 + np.asarray(shift_y, np.float64) * width * np.asarray(pixel_aspect) - 0.5
    opencv_pose = np.array(camera_to_world, np.float64, copy=True)
    opencv_pose[..., :3, :3] = opencv_pose[..., :3, :3] @ OPENCV_TO_BLENDER_CAMERA_AXES
    return k, np.linalg.inv(opencv_pose)


def rigid_transform_parts(matrices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 4, 4) rigid transforms -> (translation (..., 3), quaternion (..., 4))."""
    matrices = np.asarray(matrices, np.float64)
    return matrices[..., :3, 3].copy(), matrix_to_quaternion(matrices[..., :3, :3])


def rigid_transform_from_parts(translation: np.ndarray, quaternion: np.ndarray) -> np.ndarray:
    translation = np.asarray(translation, np.float64)
    out = np.zeros(translation.shape[:-1] + (4, 4))
    out[..., :3, :3] = quaternion_to_matrix(quaternion)
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def projection_to_intrinsics(projection: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV K (3, 3) in pixels from a Blender camera's OpenGL projection matrix (4, 4).

    ``projection`` is what ``Object.calc_matrix_camera(depsgraph, x=width, y=height, ...)``
    returns (it applies sensor fit, lens, shift and pixel aspect). Normalised device x maps to
    continuous image coordinates as u = (x + 1) W / 2; y runs the other way (rows top-first);
    OpenCV puts pixel centres at integers, hence the -0.5.
    """
    p = np.asarray(projection, np.float64)
    if p.shape != (4, 4):
        raise ValueError(f"projection must be a 4x4 matrix, got shape {p.shape}")
    if abs(p[3, 2] + 1.0) > 1e-6 or np.any(np.abs(p[3, [0, 1, 3]]) > 1e-6):
        raise ValueError("only perspective cameras can be converted (the projection's last row is not [0, 0, -1, 0])")
    k = np.zeros((3, 3))
    k[0, 0] = 0.5 * width * p[0, 0]
    k[1, 1] = 0.5 * height * p[1, 1]
    k[0, 2] = 0.5 * width * (1.0 - p[0, 2]) - 0.5
    k[1, 2] = 0.5 * height * (1.0 + p[1, 2]) - 0.5
    k[2, 2] = 1.0
    return k


def uniform_scale(matrix: np.ndarray, tolerance: float = 1e-4) -> float:
    """The uniform scale factor of an affine 4x4 transform; ValueError when it shears or scales unevenly."""
    linear = np.asarray(matrix, np.float64)[:3, :3]
    scales = np.linalg.norm(linear, axis=0)
    scale = float(scales.mean())
    if scale <= 0.0 or np.ptp(scales) > tolerance * scale:
        raise ValueError(f"the transform scales its axes unevenly ({', '.join(f'{s:.4g}' for s in scales)})")
    rotation = linear / scale
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > tolerance or np.linalg.det(rotation) < 0.0:
        raise ValueError("the transform shears or mirrors its axes")
    return scale


def opencv_world_to_camera(camera_to_world: np.ndarray, body_to_world: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (4, 4) whose "world" is a rig's body-model frame.

    ``camera_to_world``: the Blender camera object's world matrix (looking down -Z, +Y up; its
    scale is ignored, as Blender ignores it); ``body_to_world``: the armature's world matrix
    (the body-model frame in Blender's world, e.g. the Y-up to Z-up root and grounding). A
    uniform scale s on the rig is folded into the translation: (s R x + t) and (R x + t / s)
    project to the same pixels. Uneven scale cannot be expressed and raises ValueError.
    """
    camera = np.asarray(camera_to_world, np.float64).copy()
    camera[:3, :3] /= np.linalg.norm(camera[:3, :3], axis=0)
    body = np.asarray(body_to_world, np.float64)
    scale = uniform_scale(body)
    world_to_camera = np.diag([1.0, -1.0, -1.0, 1.0]) @ np.linalg.inv(camera) @ body
    world_to_camera[:3, :3] /= scale
    world_to_camera[:3, 3] /= scale
    return world_to_camera
