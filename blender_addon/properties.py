"""Per-object avatar state, stored on the objects themselves so several avatars coexist.

Every object of an avatar (root, armature, body mesh, camera) carries ``Object.neural_avatar``
with its role and the avatar id; the armature also holds what describes the motion and the
trained avatar it is bound to (``avatar_path``). Arrays of varying length (betas, expression
names) are custom properties on the armature object (see the ``*_PROPERTY`` names).

``Scene.neural_avatar`` holds the scene's render, bake and training settings (the panel's
fields; the operators take them as their own properties).
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
CHECKPOINT_ITEMS = (
    ("latest", "Latest", "The newest checkpoint of the avatar folder"),
    ("best", "Best", "The checkpoint with the best held-out PSNR"),
)
METHOD_ITEMS = (("anr", "ANR", "Articulated Neural Rendering: neural texture + two U-Nets (the baseline)"),)
PRESET_ITEMS = (
    ("cpu", "CPU", "Small networks at 128 px: minutes on a CPU"),
    ("gpu", "GPU", "Full-size networks at 512 px: needs a CUDA GPU"),
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
UNKEPT_TRACKS_PROPERTY = "neural_avatar_unkept_tracks"  # the imported motion's arrays the rig does not hold
# (The FaceVerse curve properties' prefix is motion_data.FACEVERSE_CURVE_PREFIX: names are checked there.)


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
    # The trained avatar this armature drives (armatures only).
    avatar_path: StringProperty(
        name="Trained Avatar", description="Folder of the trained avatar this armature drives", subtype="DIR_PATH"
    )
    avatar_checkpoint: EnumProperty(name="Checkpoint", items=CHECKPOINT_ITEMS, default="latest")
    avatar_summary: StringProperty(name="Avatar", description="Method, training steps and resolution of the bound avatar")


def _live_settings_changed(settings: "NEURAL_AVATAR_PG_scene", context: bpy.types.Context) -> None:
    from .live import live  # imported here: live mode's module needs these properties registered first

    live.mark_dirty()


class NEURAL_AVATAR_PG_scene(bpy.types.PropertyGroup):
    preview_size: IntProperty(
        name="Preview Size",
        description="Longer side in pixels of 'Render Frame' images (0: the scene's output size)",
        default=512,
        min=0,
        max=8192,
    )
    live_size: IntProperty(
        name="Live Size",
        description="Longer side in pixels of live-mode frames",
        default=256,
        min=16,
        max=2048,
        update=_live_settings_changed,
    )
    show_behind_camera: BoolProperty(
        name="Behind Camera",
        description="Show rendered frames as the active camera's background image",
        default=True,
        update=_live_settings_changed,
    )
    bake_directory: StringProperty(
        name="Output Folder", description="Where baked PNG frames (and render.mp4) are written", default="//neural_avatar/", subtype="DIR_PATH"
    )
    bake_mp4: BoolProperty(name="MP4", description="Also write render.mp4 (over black)", default=False)
    train_capture: StringProperty(
        name="Capture", description="Tracked capture folder (frames/, masks/, tracking.npz)", subtype="DIR_PATH"
    )
    train_output: StringProperty(name="Avatar Folder", description="Where the trained avatar is written", subtype="DIR_PATH")
    train_method: EnumProperty(name="Method", items=METHOD_ITEMS, default="anr")
    train_preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default="cpu")
    train_iterations: IntProperty(
        name="Iterations", description="Training steps (0: the preset's)", default=0, min=0, max=10_000_000
    )
    train_resolution: IntProperty(
        name="Resolution", description="Longer image side for training (0: the preset's)", default=0, min=0, max=4096
    )
    train_resume: BoolProperty(name="Resume", description="Continue the avatar folder's latest checkpoint", default=False)
    train_auto_load: BoolProperty(
        name="Load When Done",
        description="Bind the trained avatar to the armature that was active when training started, once it ends",
        default=True,
    )


def register() -> None:
    bpy.utils.register_class(NEURAL_AVATAR_PG_object)
    bpy.utils.register_class(NEURAL_AVATAR_PG_scene)
    bpy.types.Object.neural_avatar = PointerProperty(type=NEURAL_AVATAR_PG_object)
    bpy.types.Scene.neural_avatar = PointerProperty(type=NEURAL_AVATAR_PG_scene)


def unregister() -> None:
    del bpy.types.Scene.neural_avatar
    del bpy.types.Object.neural_avatar
    bpy.utils.unregister_class(NEURAL_AVATAR_PG_scene)
    bpy.utils.unregister_class(NEURAL_AVATAR_PG_object)
