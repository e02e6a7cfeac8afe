"""OpenCV <-> Blender cameras.

Import: the capture camera as a Blender camera (OpenCV intrinsics/extrinsics in, lens/shift/pose
out). The camera object is a child of the avatar root, so it lives in the motion's world like
the armature (same up-axis conversion and grounding). Sensor fit is HORIZONTAL with a 36 mm
sensor; non-square pixels (fy != fx) become the scene's pixel aspect.

Rendering: any perspective scene camera back to OpenCV form in a rig's body-model frame
(:func:`opencv_view`), which is what the backend renders avatars with.
"""

from __future__ import annotations

import bpy
import numpy as np

from .animation import Channels, frame_numbers
from .motion_data import CameraTrack
from .motion_math import (
    Timeline,
    blender_to_opencv_camera,
    make_quaternions_continuous,
    opencv_to_blender_camera,
    opencv_world_to_camera,
    projection_to_intrinsics,
    rigid_transform_from_parts,
    rigid_transform_parts,
)
from .scene_changes import SceneChanges

SENSOR_WIDTH_MM = 36.0
CLIP_RANGE = (0.01, 1000.0)
_LENS_CHANNELS = ("lens", "shift_x", "shift_y")


def build_camera(
    context: bpy.types.Context,
    track: CameraTrack,
    name: str,
    root: bpy.types.Object,
    timeline: Timeline,
    start_frame: int,
    changes: SceneChanges,
    collection: bpy.types.Collection,
    make_active: bool = True,
) -> bpy.types.Object:
    """Create the camera under ``root``; per-frame intrinsics or poses become F-curves."""
    settings = opencv_to_blender_camera(track.intrinsics, track.world_to_camera, track.image_size, SENSOR_WIDTH_MM)
    data = changes.created(bpy.data.cameras.new(name))
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = SENSOR_WIDTH_MM
    data.clip_start, data.clip_end = CLIP_RANGE
    camera = changes.created(bpy.data.objects.new(name, data))
    camera.parent = root
    camera.rotation_mode = "QUATERNION"
    collection.objects.link(camera)
    frames = frame_numbers(start_frame, timeline.num_frames)

    location, quaternion = rigid_transform_parts(settings["camera_to_world"])
    if location.ndim == 2:
        location = timeline.linear(location)
        quaternion = timeline.rotations(make_quaternions_continuous(quaternion))
        channels = Channels.create(camera, f"{name} motion")
        changes.created(channels.action)
        channels.write("location", frames, location, group="Camera")
        channels.write("rotation_quaternion", frames, quaternion, group="Camera")
        location, quaternion = location[0], quaternion[0]
    camera.location = location.tolist()
    camera.rotation_quaternion = quaternion.tolist()

    lens_values = np.stack([np.asarray(settings[key], np.float64) for key in _LENS_CHANNELS], axis=-1)
    if lens_values.ndim == 2:
        lens_values = timeline.linear(lens_values)
        channels = Channels.create(data, f"{name} lens")
        changes.created(channels.action)
        for column, key in enumerate(_LENS_CHANNELS):
            channels.write(key, frames, lens_values[:, column], group="Lens")
        lens_values = lens_values[0]
    data.lens, data.shift_x, data.shift_y = (float(v) for v in lens_values)

    aspect = float(np.asarray(settings["pixel_aspect"]).reshape(-1)[0])
    height, width = track.image_size
    render = context.scene.render
    changes.set(render, "resolution_x", width)
    changes.set(render, "resolution_y", height)
    changes.set(render, "pixel_aspect_x", max(aspect, 1.0))
    changes.set(render, "pixel_aspect_y", max(1.0 / aspect, 1.0))
    if make_active:
        changes.set(context.scene, "camera", camera)

    state = camera.neural_avatar
    state.role = "CAMERA"
    state.image_size = (height, width)
    state.pixel_aspect = aspect
    return camera


def read_camera(camera: bpy.types.Object, frames: np.ndarray) -> dict[str, np.ndarray]:
    """The camera back in OpenCV form: ``camera_K``, ``camera_world_to_camera`` (one per
    frame when animated, else one matrix) and ``image_size`` (height, width)."""
    data = camera.data
    object_channels = Channels.of(camera)
    if object_channels is not None and object_channels.has("location"):
        location = object_channels.read("location", 3, frames)
        quaternion = object_channels.read("rotation_quaternion", 4, frames)
    else:
        location = np.array(camera.location, np.float64)
        quaternion = np.array(camera.rotation_quaternion, np.float64)
    lens_channels = Channels.of(data)
    if lens_channels is not None and lens_channels.has("lens"):
        lens, shift_x, shift_y = (lens_channels.read(key, 1, frames)[:, 0] for key in _LENS_CHANNELS)
    else:
        lens, shift_x, shift_y = (np.array(getattr(data, key), np.float64) for key in _LENS_CHANNELS)
    state = camera.neural_avatar
    image_size = (int(state.image_size[0]), int(state.image_size[1]))
    intrinsics, world_to_camera = blender_to_opencv_camera(
        lens,
        np.full_like(lens, data.sensor_width),
        shift_x,
        shift_y,
        np.full_like(lens, state.pixel_aspect),
        rigid_transform_from_parts(location, quaternion),
        image_size,
    )
    return {
        "camera_K": intrinsics,
        "camera_world_to_camera": world_to_camera,
        "image_size": np.array(image_size, np.int32),
    }


def opencv_view(
    camera: bpy.types.Object,
    depsgraph: bpy.types.Depsgraph,
    width: int,
    height: int,
    body_to_world: np.ndarray,
    pixel_aspect: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """A Blender camera as OpenCV ``(K (3, 3), world_to_camera (4, 4))`` for a ``width`` x ``height``
    image, with the rig's body-model frame (``body_to_world``) as the world.

    ``camera`` should be the evaluated object (animated lens, parents and constraints applied).
    Blender's own ``calc_matrix_camera`` supplies the projection, so sensor fit, shift and
    pixel aspect (``(pixel_aspect_x, pixel_aspect_y)`` of the render settings) follow Blender's
    rules exactly. Only perspective cameras are supported.
    """
    if camera is None or camera.type != "CAMERA":
        raise ValueError("the scene has no active camera to render the avatar from")
    if camera.data.type != "PERSP":
        raise ValueError(f"camera {camera.name!r} is {camera.data.type.lower()}; the avatar renders through perspective cameras only")
    projection = camera.calc_matrix_camera(depsgraph, x=int(width), y=int(height), scale_x=pixel_aspect[0], scale_y=pixel_aspect[1])
    intrinsics = projection_to_intrinsics(np.array(projection, np.float64), width, height)
    try:
        world_to_camera = opencv_world_to_camera(np.array(camera.matrix_world, np.float64), body_to_world)
    except ValueError as error:
        raise ValueError(f"the avatar's rig cannot be scaled unevenly: {error}") from None
    return intrinsics, world_to_camera
