"""The arrays the add-on receives from the backend, validated into typed records (numpy only).

The backend sends a body template (``BodyModel.template()``: rest mesh, skeleton, skinning,
blendshapes) with its names, and a motion: per-frame SMPL-family parameters plus optional
FaceVerse expression curves and an OpenCV camera. Everything is checked here, before any
Blender data is created, and every problem names the value at fault.

Motion keys (the tracking-file names of ``backend.capture``): ``fps``, ``up_axis``
("y", "-y" or "z"), ``transl`` (T, 3), the family's pose parts (SMPL-X: ``global_orient``,
``body_pose``, ``jaw_pose``, ``leye_pose``, ``reye_pose``, ``left_hand_pose``,
``right_hand_pose``; MANO: ``global_orient``, ``hand_pose``) or ``full_pose`` (T, 3J) for any
family, ``expression`` (T, E), ``betas`` (S,), ``faceverse_exp`` (T, N) with
``faceverse_exp_names``, and ``camera_K`` (3, 3) or (T, 3, 3), ``camera_world_to_camera``
(4, 4) or (T, 4, 4), ``image_size`` (height, width). Other arrays (the FaceVerse head pose and
identity, MANO hand tracks, ...) are not kept: ``Motion.unkept_tracks`` names them for a warning.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# Axis-angle parts of the full pose, in joint order, per body family (widths in joints).
POSE_LAYOUTS: dict[str, tuple[tuple[str, int], ...]] = {
    "smplx": (
        ("global_orient", 1),
        ("body_pose", 21),
        ("jaw_pose", 1),
        ("leye_pose", 1),
        ("reye_pose", 1),
        ("left_hand_pose", 15),
        ("right_hand_pose", 15),
    ),
    "mano": (("global_orient", 1), ("hand_pose", 15)),
}
# Pose parts a motion must contain; the others default to zero rotations.
REQUIRED_POSE_PARTS = {"smplx": ("global_orient", "body_pose"), "mano": ("global_orient", "hand_pose")}
UP_AXES = ("y", "-y", "z")
# Blender clamps shape-key values to the slider range, which cannot exceed [-10, 10].
SHAPE_KEY_LIMIT = 10.0
# Blender truncates longer names (bones, shape keys, vertex groups) to 63 bytes and refuses
# longer custom property names.
MAX_NAME_BYTES = 63
FACEVERSE_CURVE_PREFIX = "faceverse_"  # + ARKit name: animated custom property per FaceVerse expression
BASIS_NAME = "Basis"
# Motion keys that describe the motion rather than hold a track (never reported as unkept).
MOTION_SETTINGS = ("fps", "up_axis", "gender", "faceverse_exp_names")
# Tracks kept whatever the body family (the pose arrays depend on it).
KEPT_TRACKS = ("transl", "expression", "betas", "faceverse_exp", "camera_K", "camera_world_to_camera", "image_size")


class AvatarDataError(ValueError):
    """Received arrays or names do not follow the format; the message names the value."""


@dataclass(frozen=True)
class BodyTemplate:
    """A body model's rest mesh and skeleton in its own frame (metres; SMPL-X: Y up, facing +Z)."""

    family: str
    source: str
    is_standin: bool
    joint_names: tuple[str, ...]
    shape_names: tuple[str, ...]
    expression_names: tuple[str, ...]
    rest_vertices: np.ndarray  # (V, 3) float32, identity (betas) included
    rest_joints: np.ndarray  # (J, 3) float32
    faces: np.ndarray  # (F, 3) int32
    skinning_weights: np.ndarray  # (V, J) float32
    parents: np.ndarray  # (J,) int32, -1 for the root, parents before children
    shape_directions: np.ndarray  # (V, 3, S) float32
    expression_directions: np.ndarray  # (V, 3, E) float32
    uv_coords: np.ndarray | None = None  # (T, 2) float32
    uv_faces: np.ndarray | None = None  # (F, 3) int32

    @property
    def num_joints(self) -> int:
        return int(self.rest_joints.shape[0])

    @property
    def num_vertices(self) -> int:
        return int(self.rest_vertices.shape[0])


@dataclass(frozen=True)
class CameraTrack:
    """OpenCV pinhole camera (x right, y down, z forward), constant or one per frame."""

    intrinsics: np.ndarray  # (3, 3) or (T, 3, 3)
    world_to_camera: np.ndarray  # (4, 4) or (T, 4, 4)
    image_size: tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Motion:
    """A validated motion for one template; rotations are assembled into joint order."""

    fps: float
    up_axis: str
    axis_angles: np.ndarray  # (T, J, 3) float64
    translation: np.ndarray  # (T, 3) float64
    expression: np.ndarray  # (T, E) float64, E = the template's expression count
    betas: np.ndarray  # (S,) float32 (kept for export; the template already includes them)
    faceverse_expression: np.ndarray | None = None  # (T, N)
    faceverse_names: tuple[str, ...] = ()
    camera: CameraTrack | None = None
    unkept_tracks: tuple[str, ...] = ()  # the given arrays nothing above holds (sorted keys)

    @property
    def num_frames(self) -> int:
        return int(self.axis_angles.shape[0])


# --- template ------------------------------------------------------------------------------


def template_from_arrays(arrays: Mapping[str, object], names: Mapping[str, object]) -> BodyTemplate:
    """Validate a template as sent by the backend.

    ``arrays``: ``BodyModel.template()``'s keys. ``names``: the JSON part sent alongside -
    ``joint_names``, ``shape_names``, ``expression_names`` and optionally ``family``,
    ``source`` (model file) and ``is_standin``.
    """
    vertices = _array(arrays, "rest_vertices", np.float32, "template", ndim=2, trailing=(3,))
    count = vertices.shape[0]
    joints = _array(arrays, "rest_joints", np.float32, "template", ndim=2, trailing=(3,))
    joint_count = joints.shape[0]
    faces = _indices(arrays, "faces", count, "template")
    weights = _array(arrays, "skinning_weights", np.float32, "template", shape=(count, joint_count))
    parents = _array(arrays, "parents", np.int32, "template", shape=(joint_count,))
    shape_dirs = _array(arrays, "shape_directions", np.float32, "template", ndim=3, leading=(count, 3))
    expr_dirs = _array(arrays, "expression_directions", np.float32, "template", ndim=3, leading=(count, 3))
    if count == 0 or joint_count == 0 or faces.shape[0] == 0:
        raise AvatarDataError("template: the mesh needs vertices, faces and at least one joint")

    expected_parents = np.arange(joint_count) - 1
    if parents[0] != -1 or np.any(parents[1:] < 0) or np.any(parents[1:] > expected_parents[1:]):
        raise AvatarDataError(
            "template: parents must hold -1 for joint 0 and, for every other joint j, a parent index "
            f"in [0, j) (parents before children); got {parents.tolist()}"
        )
    if np.any(weights < 0.0):
        raise AvatarDataError("template: skinning_weights has negative entries")
    sums = weights.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > 1e-3):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise AvatarDataError(f"template: skinning_weights row {worst} sums to {sums[worst]:.6f}, expected 1")

    uv_coords = uv_faces = None
    if ("uv_coords" in arrays) != ("uv_faces" in arrays):
        raise AvatarDataError("template: uv_coords and uv_faces must be given together")
    if "uv_coords" in arrays:
        uv_coords = _array(arrays, "uv_coords", np.float32, "template", ndim=2, trailing=(2,))
        uv_faces = _indices(arrays, "uv_faces", uv_coords.shape[0], "template")
        if uv_faces.shape != faces.shape:
            raise AvatarDataError(f"template: uv_faces has shape {uv_faces.shape}, faces has {faces.shape}")

    joint_names = _names(names, "joint_names", joint_count)
    shape_names = _names(names, "shape_names", shape_dirs.shape[2])
    expression_names = _names(names, "expression_names", expr_dirs.shape[2])
    keys = shape_names + expression_names
    duplicates = sorted({name for name in keys if keys.count(name) > 1})
    if duplicates:
        raise AvatarDataError(f"template: shape and expression names must be distinct; repeated: {duplicates}")
    if BASIS_NAME in keys:
        raise AvatarDataError(f"template: {BASIS_NAME!r} is reserved for the rest shape key")
    return BodyTemplate(
        family=str(names.get("family", "smplx")),
        source=str(names.get("source", "")),
        is_standin=bool(names.get("is_standin", False)),
        joint_names=joint_names,
        shape_names=shape_names,
        expression_names=expression_names,
        rest_vertices=vertices,
        rest_joints=joints,
        faces=faces,
        skinning_weights=weights,
        parents=parents,
        shape_directions=shape_dirs,
        expression_directions=expr_dirs,
        uv_coords=uv_coords,
        uv_faces=uv_faces,
    )


# --- motion --------------------------------------------------------------------------------


def motion_from_arrays(motion: Mapping[str, object], template: BodyTemplate) -> Motion:
    """Validate a motion for ``template`` (see the module docstring for the keys)."""
    fps = _scalar_float(motion, "fps")
    if not (np.isfinite(fps) and fps > 0.0):
        raise AvatarDataError(f"motion: fps must be a positive number, got {fps!r}")
    up_axis = _text(motion, "up_axis", "y")
    if up_axis not in UP_AXES:
        raise AvatarDataError(f"motion: up_axis must be one of {UP_AXES}, got {up_axis!r}")

    translation = _array(motion, "transl", np.float64, "motion", ndim=2, trailing=(3,))
    frames = translation.shape[0]
    if frames == 0:
        raise AvatarDataError("motion: transl has no frames")
    axis_angles = _pose(motion, template, frames)

    expression = np.zeros((frames, len(template.expression_names)))
    if "expression" in motion:
        given = _array(motion, "expression", np.float64, "motion", ndim=2)
        if given.shape[0] != frames or given.shape[1] > expression.shape[1]:
            raise AvatarDataError(
                f"motion: expression must be ({frames}, <= {expression.shape[1]}) for this template, got {given.shape}"
            )
        expression[:, : given.shape[1]] = given
    _check_shape_key_range(expression, template.expression_names, "expression")

    betas = np.zeros(len(template.shape_names), np.float32)
    if "betas" in motion:
        betas = _array(motion, "betas", np.float32, "motion", ndim=1)

    face = None
    face_names: tuple[str, ...] = ()
    if "faceverse_exp" in motion:
        face = _array(motion, "faceverse_exp", np.float64, "motion", ndim=2)
        if face.shape[0] != frames:
            raise AvatarDataError(f"motion: faceverse_exp has {face.shape[0]} frames, transl has {frames}")
        face_names = _names(motion, "faceverse_exp_names", face.shape[1], owner="motion", prefix=FACEVERSE_CURVE_PREFIX)

    return Motion(
        fps=fps,
        up_axis=up_axis,
        axis_angles=axis_angles,
        translation=translation,
        expression=expression,
        betas=betas,
        faceverse_expression=face,
        faceverse_names=face_names,
        camera=_camera(motion, frames),
        unkept_tracks=_unkept_tracks(motion, template),
    )


def describe_tracks(keys: Iterable[str]) -> str:
    """Track keys for a report, each MANO hand's arrays as one ``mano_<side>_*``."""
    return ", ".join(sorted({re.sub(r"^mano_([a-z]+)_.+$", r"mano_\1_*", key) for key in keys}))


def _unkept_tracks(motion: Mapping[str, object], template: BodyTemplate) -> tuple[str, ...]:
    pose_keys = ("full_pose",) if "full_pose" in motion else tuple(name for name, _ in POSE_LAYOUTS.get(template.family, ()))
    kept = {*MOTION_SETTINGS, *KEPT_TRACKS, *pose_keys}
    return tuple(sorted(key for key in motion if key not in kept))


def _pose(motion: Mapping[str, object], template: BodyTemplate, frames: int) -> np.ndarray:
    joint_count = template.num_joints
    if "full_pose" in motion:
        full = _array(motion, "full_pose", np.float64, "motion", shape=(frames, 3 * joint_count))
        return full.reshape(frames, joint_count, 3)
    layout = POSE_LAYOUTS.get(template.family)
    if layout is None:
        raise AvatarDataError(
            f"motion: family {template.family!r} has no named pose parts; send full_pose ({frames}, {3 * joint_count})"
        )
    if sum(width for _, width in layout) != joint_count:
        raise AvatarDataError(
            f"motion: the {template.family} pose parts cover {sum(w for _, w in layout)} joints, "
            f"the template has {joint_count}"
        )
    missing = [name for name in REQUIRED_POSE_PARTS[template.family] if name not in motion]
    if missing:
        raise AvatarDataError(f"motion: missing {', '.join(repr(name) for name in missing)}")
    parts = []
    for name, width in layout:
        if name in motion:
            parts.append(_array(motion, name, np.float64, "motion", shape=(frames, 3 * width)))
        else:
            parts.append(np.zeros((frames, 3 * width)))
    return np.concatenate(parts, axis=1).reshape(frames, joint_count, 3)


def _camera(motion: Mapping[str, object], frames: int) -> CameraTrack | None:
    present = [key for key in ("camera_K", "camera_world_to_camera", "image_size") if key in motion]
    if not present:
        return None
    if len(present) != 3:
        raise AvatarDataError("motion: camera_K, camera_world_to_camera and image_size must be given together")
    intrinsics = _array(motion, "camera_K", np.float64, "motion", trailing=(3, 3))
    extrinsics = _array(motion, "camera_world_to_camera", np.float64, "motion", trailing=(4, 4))
    for key, value in (("camera_K", intrinsics), ("camera_world_to_camera", extrinsics)):
        if value.ndim == 3 and value.shape[0] != frames:
            raise AvatarDataError(f"motion: {key} has {value.shape[0]} frames, transl has {frames}")
        if value.ndim not in (2, 3):
            raise AvatarDataError(f"motion: {key} must be one matrix or one per frame, got shape {value.shape}")
    size = _array(motion, "image_size", np.float64, "motion", shape=(2,))
    if np.any(size < 1) or np.any(size != np.round(size)):
        raise AvatarDataError(f"motion: image_size must be two positive integers (height, width), got {size.tolist()}")

    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    if np.any(fx <= 0) or np.any(fy <= 0):
        raise AvatarDataError("motion: camera_K focal lengths must be positive")
    if np.any(np.abs(intrinsics[..., 0, 1]) > 1e-6 * fx):
        raise AvatarDataError("motion: camera_K has skew (K[0, 1] != 0), which Blender cameras cannot express")
    if np.any(np.abs(intrinsics[..., 2, :] - [0.0, 0.0, 1.0]) > 1e-9) or np.any(np.abs(intrinsics[..., 1, 0]) > 0):
        raise AvatarDataError("motion: camera_K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
    aspect = fy / fx
    if np.ptp(aspect) > 1e-6 * float(np.max(aspect)):
        raise AvatarDataError("motion: camera_K's fy / fx changes over time; Blender's pixel aspect is per scene")
    if np.any(np.abs(extrinsics[..., 3, :] - [0.0, 0.0, 0.0, 1.0]) > 1e-9):
        raise AvatarDataError("motion: camera_world_to_camera's last row must be [0, 0, 0, 1]")
    rotation = extrinsics[..., :3, :3]
    orthogonality = np.abs(np.swapaxes(rotation, -1, -2) @ rotation - np.eye(3)).max()
    if orthogonality > 1e-4 or np.any(np.linalg.det(rotation) < 0):
        raise AvatarDataError("motion: camera_world_to_camera must be a rigid transform (rotation + translation)")
    return CameraTrack(intrinsics, extrinsics, (int(size[0]), int(size[1])))


def _check_shape_key_range(values: np.ndarray, names: Sequence[str], what: str) -> None:
    outside = np.abs(values) > SHAPE_KEY_LIMIT
    if np.any(outside):
        column = int(np.argwhere(outside)[0][1])
        raise AvatarDataError(
            f"motion: {what} value {values[outside][0]:.3f} for {names[column]!r} is outside "
            f"[-{SHAPE_KEY_LIMIT:g}, {SHAPE_KEY_LIMIT:g}], the range Blender allows for shape keys"
        )


# --- helpers -------------------------------------------------------------------------------


def _array(
    source: Mapping[str, object],
    key: str,
    dtype: type,
    owner: str,
    *,
    shape: tuple[int, ...] | None = None,
    ndim: int | None = None,
    leading: tuple[int, ...] = (),
    trailing: tuple[int, ...] = (),
) -> np.ndarray:
    """``source[key]`` as a C-contiguous array of ``dtype``, with its shape and finiteness checked."""
    if key not in source:
        raise AvatarDataError(f"{owner}: missing {key!r}")
    try:
        raw = np.asarray(source[key])
    except (TypeError, ValueError) as error:
        raise AvatarDataError(f"{owner}: {key} is not an array ({error})") from None
    if raw.dtype.kind not in "biuf":
        raise AvatarDataError(f"{owner}: {key} must be numeric, got dtype {raw.dtype}")
    wanted = "(" + ", ".join(str(v) for v in shape) + ")" if shape is not None else None
    if shape is not None and raw.shape != tuple(shape):
        raise AvatarDataError(f"{owner}: {key} has shape {raw.shape}, expected {wanted}")
    if ndim is not None and raw.ndim != ndim:
        raise AvatarDataError(f"{owner}: {key} must have {ndim} dimensions, got shape {raw.shape}")
    if leading and raw.shape[: len(leading)] != tuple(leading):
        raise AvatarDataError(f"{owner}: {key} has shape {raw.shape}, expected it to start with {tuple(leading)}")
    if trailing and raw.shape[-len(trailing) :] != tuple(trailing):
        raise AvatarDataError(f"{owner}: {key} has shape {raw.shape}, expected it to end with {tuple(trailing)}")
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(raw))[0])
        raise AvatarDataError(f"{owner}: {key} holds NaN or infinity (first at index {index})")
    if np.dtype(dtype).kind in "iu" and raw.dtype.kind == "f":
        raise AvatarDataError(f"{owner}: {key} must hold integers, got dtype {raw.dtype}")
    return np.ascontiguousarray(raw, dtype=dtype)


def _indices(source: Mapping[str, object], key: str, count: int, owner: str) -> np.ndarray:
    indices = _array(source, key, np.int64, owner, ndim=2, trailing=(3,))
    if indices.size and (indices.min() < 0 or indices.max() >= count):
        raise AvatarDataError(f"{owner}: {key} indexes outside [0, {count}) (min {indices.min()}, max {indices.max()})")
    return indices.astype(np.int32)


def _names(
    source: Mapping[str, object], key: str, count: int, owner: str = "template", prefix: str = ""
) -> tuple[str, ...]:
    """``source[key]``: ``count`` distinct names that fit Blender's limit once stored as ``prefix + name``."""
    if key not in source:
        raise AvatarDataError(f"{owner}: missing {key!r}")
    value = source[key]
    if isinstance(value, str) or not isinstance(value, (Sequence, np.ndarray)):
        raise AvatarDataError(f"{owner}: {key} must be a list of strings")
    names = tuple(str(name) for name in value)
    if len(names) != count:
        raise AvatarDataError(f"{owner}: {key} lists {len(names)} names, the arrays have {count}")
    limit = MAX_NAME_BYTES - len(prefix.encode("utf-8"))
    for name in names:
        if not name or len(name.encode("utf-8")) > limit:
            stored_as = f" of {MAX_NAME_BYTES} bytes for the custom property name {prefix + name!r}" if prefix else ""
            raise AvatarDataError(f"{owner}: {key} entry {name!r} must be 1 to {limit} bytes long (Blender's limit{stored_as})")
    if len(set(names)) != len(names):
        raise AvatarDataError(f"{owner}: {key} has repeated names")
    return names


def _scalar_float(source: Mapping[str, object], key: str) -> float:
    if key not in source:
        raise AvatarDataError(f"motion: missing {key!r}")
    try:
        value = np.asarray(source[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise AvatarDataError(f"motion: {key} must be a number, got {source[key]!r}") from None
    if value.size != 1:
        raise AvatarDataError(f"motion: {key} must be a single number, got shape {value.shape}")
    return float(value.reshape(()))


def _text(source: Mapping[str, object], key: str, default: str) -> str:
    value = source.get(key, default)
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, str):
        raise AvatarDataError(f"motion: {key} must be a string, got {value!r}")
    return value
