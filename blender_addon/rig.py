"""Build an avatar's objects from a body template: root, armature, skinned mesh with shape keys.

Rig convention (checked numerically in the tests): the armature data lives in the body
model's own frame (SMPL-X: metres, Y up, facing +Z); every bone has its head at the joint,
its tail straight along the model's +Y and roll 0, so each bone's rest matrix has identity
rotation. An axis-angle joint rotation of the model is then exactly the pose bone's
``rotation_quaternion``, and ``transl`` is exactly the root bone's ``location``. The
conversion to Blender's Z-up world (and grounding) sits on a root empty above the armature.

Identity: the template's rest vertices and joints already include the betas, so the
identity is baked into the Basis shape and the skeleton. The identity shape keys are still
created (value 0) as deltas from that identity; changing them reshapes the mesh but not the
skeleton - re-import with new betas to refit both. Expression keys carry the animation.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Matrix

from .motion_data import BASIS_NAME, SHAPE_KEY_LIMIT, BodyTemplate
from .scene_changes import SceneChanges

# Skinning weights below this are dropped (the Armature modifier renormalises the rest).
WEIGHT_EPSILON = 1e-6
BONE_LENGTH_RANGE = (0.005, 0.1)  # metres; display only, it does not affect the deformation


@dataclass
class AvatarObjects:
    root: bpy.types.Object
    armature: bpy.types.Object
    mesh: bpy.types.Object
    camera: bpy.types.Object | None = None


def build_avatar(
    context: bpy.types.Context,
    template: BodyTemplate,
    name: str,
    root_matrix: np.ndarray,
    changes: SceneChanges,
    collection: bpy.types.Collection | None = None,
) -> AvatarObjects:
    """Create root empty, armature and skinned mesh in ``collection`` (default: the active one).

    ``root_matrix`` (4, 4) places the body model's frame in Blender's world. Everything
    created is logged in ``changes`` so a failing import can remove it.
    """
    collection = collection or context.collection
    root = changes.created(bpy.data.objects.new(name, None))
    root.empty_display_type = "PLAIN_AXES"
    root.empty_display_size = 0.25
    root.matrix_world = blender_matrix(root_matrix)
    collection.objects.link(root)

    armature_data = changes.created(bpy.data.armatures.new(f"{name} skeleton"))
    armature = changes.created(bpy.data.objects.new(f"{name} skeleton", armature_data))
    armature.parent = root
    armature.show_in_front = True
    collection.objects.link(armature)
    _add_bones(context, armature, template, changes)
    for pose_bone in armature.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"

    mesh_data = changes.created(_build_mesh(template, f"{name} body"))
    mesh = changes.created(bpy.data.objects.new(f"{name} body", mesh_data))
    mesh.parent = armature
    collection.objects.link(mesh)
    _add_vertex_groups(mesh, template.joint_names, template.skinning_weights)
    modifier = mesh.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature
    modifier.use_vertex_groups = True
    modifier.use_bone_envelopes = False
    _add_shape_keys(mesh, template)
    return AvatarObjects(root=root, armature=armature, mesh=mesh)


def bone_lengths(rest_joints: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Half the distance to the parent joint (the root gets the maximum), clipped for display."""
    lengths = np.full(rest_joints.shape[0], BONE_LENGTH_RANGE[1])
    has_parent = parents >= 0
    offsets = rest_joints[has_parent] - rest_joints[parents[has_parent]]
    lengths[has_parent] = 0.5 * np.linalg.norm(offsets, axis=1)
    return np.clip(lengths, *BONE_LENGTH_RANGE)


def _add_bones(
    context: bpy.types.Context, armature: bpy.types.Object, template: BodyTemplate, changes: SceneChanges
) -> None:
    changes.set(context.view_layer.objects, "active", armature)
    lengths = bone_lengths(template.rest_joints.astype(np.float64), template.parents)
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        edit_bones = armature.data.edit_bones
        bones = []
        for joint, name in enumerate(template.joint_names):
            bone = edit_bones.new(name)
            head = template.rest_joints[joint].astype(np.float64)
            bone.head = head
            bone.tail = head + (0.0, lengths[joint], 0.0)
            bone.roll = 0.0
            bone.use_deform = True
            bones.append(bone)
        for joint, parent in enumerate(template.parents):
            if parent >= 0:
                bones[joint].parent = bones[parent]
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")


def _build_mesh(template: BodyTemplate, name: str) -> bpy.types.Mesh:
    mesh = bpy.data.meshes.new(name)
    vertex_count, face_count = template.num_vertices, template.faces.shape[0]
    mesh.vertices.add(vertex_count)
    mesh.vertices.foreach_set("co", template.rest_vertices.ravel())
    mesh.loops.add(3 * face_count)
    mesh.loops.foreach_set("vertex_index", template.faces.ravel())
    mesh.polygons.add(face_count)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * face_count, 3, dtype=np.int32))
    if template.uv_coords is not None:
        layer = mesh.uv_layers.new(name="UVMap")
        layer.data.foreach_set("uv", template.uv_coords[template.uv_faces].ravel())
    mesh.update(calc_edges=True)
    if hasattr(mesh, "shade_smooth"):  # 4.1+
        mesh.shade_smooth()
    else:
        mesh.polygons.foreach_set("use_smooth", np.ones(face_count, dtype=bool))
    return mesh


def _add_vertex_groups(mesh: bpy.types.Object, joint_names: tuple[str, ...], weights: np.ndarray) -> None:
    """One group per joint; vertices sharing a weight value are added in one call."""
    for joint, name in enumerate(joint_names):
        group = mesh.vertex_groups.new(name=name)
        column = weights[:, joint]
        members = np.flatnonzero(column > WEIGHT_EPSILON)
        if members.size == 0:
            continue
        values, inverse = np.unique(column[members], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        boundaries = np.searchsorted(inverse[order], np.arange(values.size + 1))
        for value_index, value in enumerate(values.tolist()):
            indices = members[order[boundaries[value_index] : boundaries[value_index + 1]]]
            group.add(indices.tolist(), value, "REPLACE")


def _add_shape_keys(mesh: bpy.types.Object, template: BodyTemplate) -> None:
    basis = mesh.shape_key_add(name=BASIS_NAME, from_mix=False)
    basis.data.foreach_set("co", template.rest_vertices.ravel())
    mesh.data.shape_keys.name = f"{mesh.name} keys"
    sets = (
        (template.shape_names, template.shape_directions),
        (template.expression_names, template.expression_directions),
    )
    for names, directions in sets:
        for index, name in enumerate(names):
            key = mesh.shape_key_add(name=name, from_mix=False)
            key.slider_min, key.slider_max = -SHAPE_KEY_LIMIT, SHAPE_KEY_LIMIT
            key.value = 0.0  # shape_key_add leaves new keys at 1.0 (Blender 5.0)
            key.data.foreach_set("co", (template.rest_vertices + directions[:, :, index]).ravel())


def blender_matrix(array: np.ndarray) -> Matrix:
    """A (4, 4) numpy array as a mathutils Matrix."""
    return Matrix(np.asarray(array, dtype=np.float64).tolist())


def find_avatar(obj: bpy.types.Object | None) -> AvatarObjects | None:
    """The avatar ``obj`` belongs to (any of its objects), or None."""
    root = obj
    while root is not None and root.neural_avatar.role != "ROOT":
        root = root.parent
    if root is None:
        return None
    armature = _child_with_role(root, "ARMATURE")
    mesh = _child_with_role(armature, "MESH") if armature else None
    if armature is None or mesh is None:
        return None
    return AvatarObjects(root=root, armature=armature, mesh=mesh, camera=_child_with_role(root, "CAMERA"))


def _child_with_role(parent: bpy.types.Object, role: str) -> bpy.types.Object | None:
    return next((child for child in parent.children if child.neural_avatar.role == role), None)


def remove_avatar(avatar: AvatarObjects) -> None:
    """Delete an avatar's objects with their meshes, armature, camera and actions."""
    owners = [avatar.armature, avatar.mesh, avatar.mesh.data.shape_keys, avatar.camera]
    if avatar.camera is not None:
        owners.append(avatar.camera.data)
    actions = {owner.animation_data.action for owner in owners if owner is not None and owner.animation_data}
    data = [avatar.mesh.data, avatar.armature.data] + ([avatar.camera.data] if avatar.camera else [])
    for obj in (avatar.camera, avatar.mesh, avatar.armature, avatar.root):
        if obj is not None:
            bpy.data.objects.remove(obj)
    collections = {"MESH": bpy.data.meshes, "ARMATURE": bpy.data.armatures, "CAMERA": bpy.data.cameras}
    for block in data:
        if block.users == 0:
            collections[block.id_type].remove(block)
    for action in actions:
        if action is not None and action.users == 0:
            bpy.data.actions.remove(action)
