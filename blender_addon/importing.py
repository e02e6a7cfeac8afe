"""Import a motion (arrays from the backend) as an animated avatar, and export it back.

``import_motion`` is the one pipeline the import operators call after fetching arrays from
the backend: validate everything, then build the rig and write all keys in bulk, all or
nothing. ``export_motion`` reads the action back into the same arrays (losslessly for
unedited data: values are stored as single-precision floats, as the backend sends them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import bpy
import numpy as np

from . import motion_math
from .animation import Channels, custom_property_path, data_path_item, frame_numbers
from .camera import build_camera, read_camera
from .motion_data import (
    FACEVERSE_CURVE_PREFIX,
    POSE_LAYOUTS,
    AvatarDataError,
    BodyTemplate,
    Motion,
    motion_from_arrays,
    template_from_arrays,
)
from .properties import (
    BETAS_PROPERTY,
    EXPRESSION_NAMES_PROPERTY,
    FACEVERSE_NAMES_PROPERTY,
    JOINT_NAMES_PROPERTY,
    UNKEPT_TRACKS_PROPERTY,
)
from .rig import AvatarObjects, build_avatar, find_avatar
from .scene_changes import SceneChanges, undo_on_error

FRAME_RATE_MODES = ("auto", "motion", "scene")
GROUND_MODES = ("none", "first_frame", "sequence")
FACEVERSE_GROUP = "FaceVerse"
GENDERS = ("neutral", "male", "female")


@dataclass
class ImportOptions:
    """How a motion is placed in the scene.

    frame_rate: "motion" sets the scene's rate to the motion's (exactly, see
    ``motion_math.blender_frame_rate``) and keys every sample; "scene" keeps the scene's rate
    and resamples the motion at the scene's frame times (slerp for rotations, linear
    otherwise); "auto" is "motion" for the first avatar in a scene and "scene" afterwards, so
    avatars already there keep their timing.
    ground: "first_frame" puts the lowest vertex of the first frame on the floor (z = 0),
    "sequence" the lowest vertex over all frames, "none" keeps the motion's own height.
    """

    name: str = "Avatar"
    avatar_id: str = ""
    frame_rate: str = "auto"
    ground: str = "first_frame"
    start_frame: int | None = None  # None: the scene's first frame
    set_frame_range: bool = True
    import_camera: bool = True
    make_camera_active: bool = True
    collection: bpy.types.Collection | None = None

    def check(self) -> None:
        if self.frame_rate not in FRAME_RATE_MODES:
            raise ValueError(f"frame_rate must be one of {FRAME_RATE_MODES}, got {self.frame_rate!r}")
        if self.ground not in GROUND_MODES:
            raise ValueError(f"ground must be one of {GROUND_MODES}, got {self.ground!r}")
        if not self.name:
            raise ValueError("the avatar needs a name")


def import_motion(
    context: bpy.types.Context,
    template: Mapping[str, object],
    names: Mapping[str, object],
    motion: Mapping[str, object],
    options: ImportOptions | None = None,
) -> bpy.types.Object:
    """Build an avatar for ``template`` animated by ``motion``; returns its armature object.

    ``template``: ``BodyModel.template()`` arrays; ``names``: joint/shape/expression names
    (+ family, source, is_standin, gender); ``motion``: see ``motion_data``. Raises
    ``motion_data.AvatarDataError`` for malformed input before touching the scene; any
    later failure removes everything created and restores changed scene settings.
    """
    options = options or ImportOptions()
    options.check()
    body = template_from_arrays(template, names)
    moves = motion_from_arrays(motion, body)
    gender = str(names.get("gender", "neutral"))
    if gender not in GENDERS:
        raise AvatarDataError(f"template: gender must be one of {GENDERS}, got {gender!r}")
    scene = context.scene
    if context.mode != "OBJECT" and context.view_layer.objects.active is not None:
        bpy.ops.object.mode_set(mode="OBJECT")

    with undo_on_error() as changes:
        timeline = _choose_timeline(scene, moves, options, changes)
        start = scene.frame_start if options.start_frame is None else int(options.start_frame)
        root_matrix = motion_math.up_axis_matrix(moves.up_axis)
        root_matrix[2, 3] = -_ground_height(body, moves, root_matrix, options.ground)
        collection = options.collection or context.collection
        avatar = build_avatar(context, body, options.name, root_matrix, changes, collection)
        frames = frame_numbers(start, timeline.num_frames)
        _write_body_motion(avatar, body, moves, timeline, frames, changes)
        if moves.camera is not None and options.import_camera:
            avatar.camera = build_camera(
                context,
                moves.camera,
                f"{options.name} camera",
                avatar.root,
                timeline,
                start,
                changes,
                collection,
                options.make_camera_active,
            )
        _store_state(avatar, body, moves, options, scene.render, start, timeline.num_frames, gender)
        if options.set_frame_range:
            changes.set(scene, "frame_start", start)
            changes.set(scene, "frame_end", start + timeline.num_frames - 1)
        for obj in context.view_layer.objects:
            obj.select_set(False)
        avatar.armature.select_set(True)
        context.view_layer.objects.active = avatar.armature
    context.view_layer.update()  # world matrices of the new objects are valid for the caller
    return avatar.armature


def _choose_timeline(
    scene: bpy.types.Scene, moves: Motion, options: ImportOptions, changes: SceneChanges
) -> motion_math.Timeline:
    mode = options.frame_rate
    if mode == "auto":
        has_avatars = any(obj.neural_avatar.role == "ARMATURE" for obj in scene.objects)
        mode = "scene" if has_avatars else "motion"
    if mode == "motion":
        fps, fps_base = motion_math.nearest_blender_frame_rate(moves.fps)
        changes.set(scene.render, "fps", fps)
        changes.set(scene.render, "fps_base", fps_base)
    # Frame times come from what Blender actually stores (fps_base is single precision).
    keyed_fps = motion_math.scene_frame_rate(scene.render.fps, scene.render.fps_base)
    return motion_math.Timeline.between(moves.num_frames, moves.fps, keyed_fps)


def _ground_height(body: BodyTemplate, moves: Motion, world: np.ndarray, mode: str) -> float:
    """Lowest Blender-world height of the skinned mesh, expressions included (0 when not grounding)."""
    if mode == "none":
        return 0.0
    frames = slice(0, 1) if mode == "first_frame" else slice(None)
    return motion_math.lowest_height(
        body.rest_vertices,
        body.skinning_weights,
        body.rest_joints,
        body.parents,
        moves.axis_angles[frames],
        moves.translation[frames],
        world,
        body.expression_directions,
        moves.expression[frames],
    )


def _write_body_motion(
    avatar: AvatarObjects,
    body: BodyTemplate,
    moves: Motion,
    timeline: motion_math.Timeline,
    frames: np.ndarray,
    changes: SceneChanges,
) -> None:
    armature = avatar.armature
    quaternions = motion_math.make_quaternions_continuous(motion_math.axis_angle_to_quaternion(moves.axis_angles))
    quaternions = timeline.rotations(quaternions)
    channels = Channels.create(armature, f"{armature.name} motion")
    changes.created(channels.action)
    for joint, name in enumerate(body.joint_names):
        path = data_path_item("pose.bones", name, "rotation_quaternion")
        channels.write(path, frames, quaternions[:, joint], group=name)
    root_name = body.joint_names[0]
    location = data_path_item("pose.bones", root_name, "location")
    channels.write(location, frames, timeline.linear(moves.translation), group=root_name)

    if moves.faceverse_expression is not None:
        curves = timeline.linear(moves.faceverse_expression)
        for column, name in enumerate(moves.faceverse_names):
            key = FACEVERSE_CURVE_PREFIX + name
            armature[key] = float(curves[0, column])
            channels.write(custom_property_path(key), frames, curves[:, column], group=FACEVERSE_GROUP)

    if body.expression_names:
        key_block = avatar.mesh.data.shape_keys
        shape_channels = Channels.create(key_block, f"{avatar.mesh.name} expressions")
        changes.created(shape_channels.action)
        expression = timeline.linear(moves.expression)
        for column, name in enumerate(body.expression_names):
            path = data_path_item("key_blocks", name, "value")
            shape_channels.write(path, frames, expression[:, column], group="Expressions")


def _store_state(
    avatar: AvatarObjects,
    body: BodyTemplate,
    moves: Motion,
    options: ImportOptions,
    render: bpy.types.RenderSettings,
    start: int,
    count: int,
    gender: str,
) -> None:
    roles = ((avatar.root, "ROOT"), (avatar.armature, "ARMATURE"), (avatar.mesh, "MESH"), (avatar.camera, "CAMERA"))
    for obj, role in roles:
        if obj is None:
            continue
        state = obj.neural_avatar
        state.role = role
        state.avatar_id = options.avatar_id
        state.family = body.family
        state.source = body.source
        state.is_standin = body.is_standin
        state.gender = gender
        state.fps, state.fps_base = render.fps, render.fps_base
        state.up_axis = moves.up_axis
        state.frame_start = start
        state.frame_count = count
    armature = avatar.armature
    armature[JOINT_NAMES_PROPERTY] = list(body.joint_names)
    armature[BETAS_PROPERTY] = moves.betas.astype(np.float64).tolist()
    armature[EXPRESSION_NAMES_PROPERTY] = list(body.expression_names)
    armature[FACEVERSE_NAMES_PROPERTY] = list(moves.faceverse_names)
    armature[UNKEPT_TRACKS_PROPERTY] = list(moves.unkept_tracks)


def export_motion(armature: bpy.types.Object) -> dict[str, object]:
    """The avatar's motion as the arrays ``import_motion`` takes (float32, axis-angle).

    Rotations come back in canonical axis-angle form (angle in [0, pi]); keyed values are
    read in bulk, edited curves are sampled at every keyed frame. ``fps`` is the rate of the
    keyed frames (the scene's when the import resampled).
    """
    avatar = find_avatar(armature)
    if avatar is None or avatar.armature != armature:
        raise ValueError(f"{armature.name!r} is not the armature of an imported avatar")
    state = armature.neural_avatar
    frames = frame_numbers(state.frame_start, state.frame_count)
    channels = Channels.of(armature)
    if channels is None:
        raise ValueError(f"{armature.name!r} has no motion (no action assigned)")
    bone_names = list(armature.get(JOINT_NAMES_PROPERTY, []))
    if not bone_names:
        raise ValueError(f"{armature.name!r} does not record its joint order ({JOINT_NAMES_PROPERTY!r})")
    quaternions = np.stack(
        [channels.read(data_path_item("pose.bones", name, "rotation_quaternion"), 4, frames) for name in bone_names],
        axis=1,
    )
    axis_angles = motion_math.quaternion_to_axis_angle(quaternions).astype(np.float32)
    out: dict[str, object] = {
        "fps": motion_math.scene_frame_rate(state.fps, state.fps_base),
        "up_axis": state.up_axis,
        "gender": state.gender,
        "transl": channels.read(data_path_item("pose.bones", bone_names[0], "location"), 3, frames).astype(np.float32),
        "betas": np.asarray(armature.get(BETAS_PROPERTY, []), np.float32),
    }
    layout = POSE_LAYOUTS.get(state.family)
    if layout is not None and sum(width for _, width in layout) == len(bone_names):
        joint = 0
        for key, width in layout:
            out[key] = np.ascontiguousarray(axis_angles[:, joint : joint + width].reshape(len(frames), 3 * width))
            joint += width
    else:
        out["full_pose"] = axis_angles.reshape(len(frames), -1)

    expression_names = list(armature.get(EXPRESSION_NAMES_PROPERTY, []))
    if expression_names:
        key_block = avatar.mesh.data.shape_keys
        if key_block is None:
            raise ValueError(
                f"{avatar.mesh.name!r} has no shape keys: its {len(expression_names)} expression curves were deleted "
                "with them (import the motion again to export it)"
            )
        shape_channels = Channels.of(key_block)
        if shape_channels is None:
            raise ValueError(f"{avatar.mesh.name!r} has no expression animation")
        out["expression"] = np.concatenate(
            [shape_channels.read(data_path_item("key_blocks", name, "value"), 1, frames) for name in expression_names],
            axis=1,
        ).astype(np.float32)
    face_names = list(armature.get(FACEVERSE_NAMES_PROPERTY, []))
    if face_names:
        out["faceverse_exp"] = np.concatenate(
            [channels.read(custom_property_path(FACEVERSE_CURVE_PREFIX + name), 1, frames) for name in face_names],
            axis=1,
        ).astype(np.float32)
        out["faceverse_exp_names"] = face_names
    if avatar.camera is not None:
        camera = read_camera(avatar.camera, frames)
        out["camera_K"] = camera["camera_K"].astype(np.float32)
        out["camera_world_to_camera"] = camera["camera_world_to_camera"].astype(np.float32)
        out["image_size"] = camera["image_size"]
    return out

