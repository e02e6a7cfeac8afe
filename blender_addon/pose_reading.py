"""Read an avatar rig's pose back as SMPL-X parameters, as Blender shows it right now.

What is read (the same for Render Frame, live mode, the render engine and baking): the
**evaluated** pose of the armature in a depsgraph - F-curves, NLA, drivers, constraints and IK
included, i.e. what the viewport shows at that frame. Each joint's rotation is recovered from
the final bone matrices as ``parent⁻¹ · child`` (relative to the rest pose), which equals the
pose bone's ``matrix_basis`` rotation when no constraint acts; the root bone's posed head minus
its rest head gives ``transl``; bone scale and non-root bone translation are ignored (SMPL-X
has neither). Expressions are the evaluated values of the body mesh's expression shape keys.
FaceVerse curves are not part of the render request.

All values are in the rig's body-model frame (the armature's object space); where that frame
sits in Blender's world is the armature's world matrix (:attr:`RigPose.body_to_world`).
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .motion_data import POSE_LAYOUTS
from .motion_math import matrix_to_quaternion, quaternion_to_axis_angle
from .properties import EXPRESSION_NAMES_PROPERTY, JOINT_NAMES_PROPERTY
from .rig import find_avatar


class RigError(ValueError):
    """The object cannot be read as an SMPL-X avatar rig; the message names it."""


@dataclass
class RigPose:
    """One frame of a rig: SMPL-X parameters ``(1, width)`` float32 and where the rig is."""

    params: dict[str, np.ndarray]
    body_to_world: np.ndarray  # (4, 4) the armature's world matrix
    root_position: np.ndarray  # (3,) the posed root joint in the body-model frame


def _bone_matrices(bones: bpy.types.bpy_prop_collection, attribute: str) -> np.ndarray:
    """(N, 4, 4) matrices of every bone, in collection order (one bulk read)."""
    flat = np.empty(len(bones) * 16, np.float32)
    bones.foreach_get(attribute, flat)
    return flat.reshape(-1, 4, 4).transpose(0, 2, 1).astype(np.float64)  # stored column by column


def _nearest_rotations(matrices: np.ndarray) -> np.ndarray:
    """The rotation part of (N, 3, 3) matrices that may carry bone scale (polar decomposition)."""
    u, _, vt = np.linalg.svd(matrices)
    rotations = u @ vt
    flip = np.linalg.det(rotations) < 0.0
    if np.any(flip):
        u[flip, :, -1] *= -1.0
        rotations = u @ vt
    return rotations


def rig_pose(armature: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> RigPose:
    """The evaluated pose of ``armature`` (an avatar armature, original or evaluated) in ``depsgraph``."""
    original = armature.original
    avatar = find_avatar(original)
    if avatar is None or avatar.armature != original:
        raise RigError(f"{original.name!r} is not the armature of an imported avatar")
    state = original.neural_avatar
    layout = POSE_LAYOUTS.get(state.family)
    joint_names = list(original.get(JOINT_NAMES_PROPERTY, []))
    if state.family != "smplx" or layout is None or len(joint_names) != sum(width for _, width in layout):
        raise RigError(f"{original.name!r} is a {state.family or 'unknown'} rig; avatars are driven by SMPL-X rigs (55 joints)")
    evaluated = original.evaluated_get(depsgraph)
    pose_bones = evaluated.pose.bones
    order = [pose_bones.find(name) for name in joint_names]
    if min(order) < 0:
        missing = [name for name, index in zip(joint_names, order) if index < 0]
        raise RigError(f"{original.name!r} lacks the bones {missing[:5]} (renamed or deleted?)")
    joint_of_bone = {index: joint for joint, index in enumerate(order)}
    parents = [
        joint_of_bone.get(pose_bones.find(pose_bones[index].parent.name), -1) if pose_bones[index].parent else -1 for index in order
    ]

    posed = _bone_matrices(pose_bones, "matrix")[order]
    rest = _bone_matrices(original.data.bones, "matrix_local")[[original.data.bones.find(name) for name in joint_names]]
    # Each joint's rotation relative to its rest orientation, in the body-model frame.
    global_rotations = _nearest_rotations(posed[:, :3, :3]) @ np.swapaxes(rest[:, :3, :3], 1, 2)
    parent_rotations = np.stack([global_rotations[p] if p >= 0 else np.eye(3) for p in parents])
    local = np.swapaxes(parent_rotations, 1, 2) @ global_rotations
    axis_angles = quaternion_to_axis_angle(matrix_to_quaternion(local)).astype(np.float32)

    params: dict[str, np.ndarray] = {}
    joint = 0
    for key, width in layout:
        params[key] = np.ascontiguousarray(axis_angles[joint : joint + width].reshape(1, 3 * width))
        joint += width
    root_position = posed[0, :3, 3]
    params["transl"] = (root_position - rest[0, :3, 3]).astype(np.float32).reshape(1, 3)
    expression = expression_values(avatar.mesh, original, depsgraph)
    if expression.size:
        params["expression"] = expression.reshape(1, -1)
    return RigPose(params, np.array(evaluated.matrix_world, np.float64), root_position)


def expression_values(mesh: bpy.types.Object, armature: bpy.types.Object, depsgraph: bpy.types.Depsgraph) -> np.ndarray:
    """(E,) float32 evaluated values of the rig's expression shape keys (E = 0 when it has none)."""
    names = list(armature.get(EXPRESSION_NAMES_PROPERTY, []))
    key = mesh.data.shape_keys
    if not names or key is None:
        return np.zeros(0, np.float32)
    blocks = key.evaluated_get(depsgraph).key_blocks
    values = np.empty(len(blocks), np.float32)
    blocks.foreach_get("value", values)
    indices = [blocks.find(name) for name in names]
    if min(indices) < 0:
        missing = [name for name, index in zip(names, indices) if index < 0]
        raise RigError(f"{mesh.name!r} lacks the expression shape keys {missing[:5]} (renamed or deleted?)")
    return values[indices]
