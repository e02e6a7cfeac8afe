"""Per-object avatar state, stored on the objects themselves so several avatars coexist.

Every object of an avatar (root, armature, body mesh, camera) carries ``Object.neural_avatar``
with its role and the avatar id; the armature also holds what describes the motion. Arrays
of varying length (betas, expression names) are custom properties on the armature object
(see the ``*_PROPERTY`` names).
"""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    IntVectorProperty,
    PointerProperty,
    StringProperty,
)

ROLE_ITEMS = (
    ("NONE", "None", "Not part of an avatar"),
    ("ROOT", "Root", "Avatar root: converts the motion's up axis to Blender's Z-up and grounds it"),
    ("ARMATURE", "Armature", "The avatar's skeleton, carrying the motion"),
    ("MESH", "Body", "The skinned body mesh with identity and expression shape keys"),
    ("CAMERA", "Camera", "The capture camera"),
)
GENDER_ITEMS = (
    ("neutral", "Neutral", "Gender-neutral body model"),
    ("male", "Male", "Male body model"),
    ("female", "Female", "Female body model"),
)
UP_AXIS_ITEMS = (
    ("y", "Y up", "Tracked captures in the body-model frame"),
    ("-y", "-Y up", "Worlds whose Y axis points down"),
    ("z", "Z up", "AMASS and other Z-up mocap"),
)

# Custom properties on the armature object.
BETAS_PROPERTY = "neural_avatar_betas"
JOINT_NAMES_PROPERTY = "neural_avatar_joint_names"  # joint order (Blender keeps bones in tree order)
EXPRESSION_NAMES_PROPERTY = "neural_avatar_expression_names"
FACEVERSE_NAMES_PROPERTY = "neural_avatar_faceverse_names"
FACEVERSE_CURVE_PREFIX = "faceverse_"  # + ARKit name: animated custom property per FaceVerse expression


class NEURAL_AVATAR_PG_object(bpy.types.PropertyGroup):
    role: EnumProperty(name="Role", items=ROLE_ITEMS, default="NONE")
    avatar_id: StringProperty(name="Avatar ID", description="The backend's id of the trained avatar, if any")
    family: StringProperty(name="Body Model", description="smplx, mano or faceverse")
    source: StringProperty(name="Model File", description="The body-model file the template came from")
    is_standin: BoolProperty(name="Stand-in", description="The body model is a generated stand-in, not the real one")
    gender: EnumProperty(name="Gender", description="Which SMPL-X model the body was built from", items=GENDER_ITEMS, default="neutral")
    # The keyed frames' rate as Blender's exact (fps, fps_base) pair, as set on the scene at import.
    fps: IntProperty(name="FPS", description="Keyed frames play at fps / fps_base frames per second", min=1)
    fps_base: FloatProperty(
        name="FPS Base", description="Keyed frames play at fps / fps_base frames per second", default=1.0, min=1e-5
    )
    motion_fps: FloatProperty(
        name="Motion Rate",
        description="Frames per second of the keyed frames",
        get=lambda self: self.fps / self.fps_base,
    )
    up_axis: EnumProperty(name="Up Axis", items=UP_AXIS_ITEMS, default="y")
    frame_start: IntProperty(name="First Frame", description="Scene frame of the motion's first keyed frame")
    frame_count: IntProperty(name="Frames", description="Number of keyed frames", min=0)
    image_size: IntVectorProperty(name="Image Size", description="Camera image (height, width) in pixels", size=2)
    pixel_aspect: FloatProperty(name="Pixel Aspect", description="Camera fy / fx", default=1.0, min=0.0)


def register() -> None:
    bpy.utils.register_class(NEURAL_AVATAR_PG_object)
    bpy.types.Object.neural_avatar = PointerProperty(type=NEURAL_AVATAR_PG_object)


def unregister() -> None:
    del bpy.types.Object.neural_avatar
    bpy.utils.unregister_class(NEURAL_AVATAR_PG_object)
