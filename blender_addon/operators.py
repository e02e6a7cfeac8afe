"""Operators that work on avatars already in the scene (the backend-driven ones come later)."""

from __future__ import annotations

import bpy

from .rig import find_avatar, remove_avatar


class NEURAL_AVATAR_OT_match_scene_rate(bpy.types.Operator):
    """Set the scene's frame rate and range to the active avatar's keyed frames"""

    bl_idname = "neural_avatar.match_scene_rate"
    bl_label = "Match Scene to Motion"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return find_avatar(context.active_object) is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        state = find_avatar(context.active_object).armature.neural_avatar
        scene = context.scene
        scene.render.fps, scene.render.fps_base = state.fps, state.fps_base
        scene.frame_start = state.frame_start
        scene.frame_end = state.frame_start + max(state.frame_count, 1) - 1
        return {"FINISHED"}


class NEURAL_AVATAR_OT_remove_avatar(bpy.types.Operator):
    """Delete the active avatar: its objects, mesh, skeleton, camera and animation"""

    bl_idname = "neural_avatar.remove_avatar"
    bl_label = "Remove Avatar"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.mode == "OBJECT" and find_avatar(context.active_object) is not None

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context: bpy.types.Context) -> set[str]:
        remove_avatar(find_avatar(context.active_object))
        return {"FINISHED"}


CLASSES = (NEURAL_AVATAR_OT_match_scene_rate, NEURAL_AVATAR_OT_remove_avatar)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
