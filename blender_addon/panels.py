"""The "Avatar" tab of the 3D View sidebar.

Sections: Backend, Import, Avatar (bind a trained avatar, train one), Render & Live, Bake. A
Retarget (MDA) section joins them when the backend has motion distribution alignment. Drawing
never talks to the backend: it shows what the session, live mode and the job monitors last learnt.
"""

from __future__ import annotations

import bpy

from . import backend_process, job_monitor
from .avatar_operators import (
    NEURAL_AVATAR_OT_bake,
    NEURAL_AVATAR_OT_cancel_job,
    NEURAL_AVATAR_OT_live_mode,
    NEURAL_AVATAR_OT_load_avatar,
    NEURAL_AVATAR_OT_render_frame,
    NEURAL_AVATAR_OT_train,
    NEURAL_AVATAR_OT_unbind_avatar,
)
from .avatar_render import is_bound, output_size, preview_size
from .engine import ENGINE_ID
from .live import live
from .operators import (
    NEURAL_AVATAR_OT_backend_connect,
    NEURAL_AVATAR_OT_backend_show_log,
    NEURAL_AVATAR_OT_backend_start,
    NEURAL_AVATAR_OT_backend_stop,
    NEURAL_AVATAR_OT_export_motion,
    NEURAL_AVATAR_OT_import_motion,
    NEURAL_AVATAR_OT_match_scene_rate,
    NEURAL_AVATAR_OT_remove_avatar,
)
from .preferences import ADDON_PACKAGE, CONNECTION_ITEMS, MODEL_FAMILIES, addon_preferences
from .rig import find_avatar

CATEGORY = "Avatar"


class NEURAL_AVATAR_UL_shape_keys(bpy.types.UIList):
    """Shape keys with their value sliders (Blender 5.0 replaced its own list with a tree view)."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_property, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=item.name, icon="SHAPEKEY_DATA")
        if item != data.reference_key:
            row.prop(item, "value", text="", emboss=False)


class _AvatarTab:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY


class NEURAL_AVATAR_PT_main(_AvatarTab, bpy.types.Panel):
    bl_label = "Neural Avatar"

    def draw(self, context: bpy.types.Context) -> None:
        avatars = sum(1 for obj in context.scene.objects if obj.neural_avatar.role == "ARMATURE")
        self.layout.label(text=f"{avatars} avatar{'s' if avatars != 1 else ''} in this scene")


class NEURAL_AVATAR_PT_backend(_AvatarTab, bpy.types.Panel):
    bl_label = "Backend"
    bl_parent_id = "NEURAL_AVATAR_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        prefs = addon_preferences(context)
        if prefs is None:
            layout.label(text="Add-on preferences unavailable", icon="ERROR")
            return
        session = backend_process.session()
        column = layout.column(align=True)
        column.label(text=f"Backend: {session.status}", icon="CHECKMARK" if session.connected else "CONSOLE")
        info = session.server_info
        if session.connected and info:
            column.label(text=f"Device: {session.device}, version {info.get('version', '?')}")
        elif session.client is None and session.starting is None:
            mode = next(label for key, label, _ in CONNECTION_ITEMS if key == prefs.connection)
            column.label(text=mode)

        column = layout.column(align=True)
        for family, label in MODEL_FAMILIES:
            folder = prefs.model_folder(family).rstrip("/\\")
            if folder:
                column.label(text=f"{label}: {bpy.path.basename(folder)}")
            else:
                column.label(text=f"{label}: {server_model_label(info, family) if session.connected else 'stand-in'}")

        row = layout.row(align=True)
        if session.client is not None or session.starting is not None:
            row.operator(NEURAL_AVATAR_OT_backend_stop.bl_idname, icon="CANCEL", text="Stop" if session.owned else "Disconnect")
        elif prefs.connection == "START":
            row.operator(NEURAL_AVATAR_OT_backend_start.bl_idname, icon="PLAY", text="Start")
        else:
            row.operator(NEURAL_AVATAR_OT_backend_connect.bl_idname, icon="LINKED", text="Connect")
        if session.log_file is not None:
            row.operator(NEURAL_AVATAR_OT_backend_show_log.bl_idname, icon="TEXT", text="Log")
        layout.operator("preferences.addon_show", text="Settings", icon="PREFERENCES").module = ADDON_PACKAGE


def server_model_label(info: dict, family: str) -> str:
    """What the backend uses for a family when no folder is set (from ``info``'s body-model lines)."""
    lines = info.get("bodies")
    if not isinstance(lines, list):
        return "default (see the backend log)" if lines else "default"
    for line in lines:
        name, _, rest = str(line).partition(" ")
        if name == family:
            label = rest.strip().split(":", 1)[0]
            return "stand-in" if label.endswith("[stand-in]") else label
    return "default"


class NEURAL_AVATAR_PT_import(_AvatarTab, bpy.types.Panel):
    bl_label = "Import"
    bl_parent_id = "NEURAL_AVATAR_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        render = context.scene.render
        layout.label(text=f"Scene rate: {render.fps / render.fps_base:.6g} fps")
        column = layout.column(align=True)
        column.operator(NEURAL_AVATAR_OT_import_motion.bl_idname, icon="IMPORT")
        column.operator(NEURAL_AVATAR_OT_export_motion.bl_idname, icon="EXPORT")


class NEURAL_AVATAR_PT_avatar(_AvatarTab, bpy.types.Panel):
    bl_label = "Avatar"
    bl_parent_id = "NEURAL_AVATAR_PT_main"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        avatar = find_avatar(context.active_object)
        if avatar is None:
            layout.label(text="Select an avatar")
            return
        state = avatar.armature.neural_avatar
        column = layout.column(align=True)
        family = state.family.upper() + (" (stand-in)" if state.is_standin else "")
        column.label(text=f"{avatar.root.name}: {family}", icon="ARMATURE_DATA")
        if state.source:
            column.label(text=bpy.path.basename(state.source))
        last = state.frame_start + state.frame_count - 1
        column.label(text=f"Frames {state.frame_start}-{last} at {state.motion_fps:.6g} fps, {state.up_axis} up")
        layout.operator(NEURAL_AVATAR_OT_match_scene_rate.bl_idname, icon="TIME")

        box = layout.box()
        box.label(text="Trained Avatar", icon="OUTLINER_OB_ARMATURE")
        if is_bound(avatar.armature):
            box.label(text=bpy.path.basename(state.avatar_path.rstrip("/\\")) or state.avatar_path)
            if state.avatar_summary:
                box.label(text=state.avatar_summary)
            if state.avatar_id:
                box.label(text=f"Avatar ID: {state.avatar_id}")
            row = box.row(align=True)
            row.operator(NEURAL_AVATAR_OT_load_avatar.bl_idname, icon="FILE_REFRESH", text="Change")
            row.operator(NEURAL_AVATAR_OT_unbind_avatar.bl_idname, icon="X", text="Unbind")
        elif state.family == "smplx":
            box.label(text="Not bound: load a trained avatar folder")
            box.operator(NEURAL_AVATAR_OT_load_avatar.bl_idname, icon="FILE_FOLDER")
        else:
            box.label(text=f"{state.family.upper()} rigs cannot drive a trained avatar")

        key = avatar.mesh.data.shape_keys
        if key is not None:
            layout.label(text="Shape Keys")
            list_type = NEURAL_AVATAR_UL_shape_keys.__name__
            layout.template_list(list_type, "", key, "key_blocks", avatar.mesh, "active_shape_key_index", rows=4)
        layout.operator(NEURAL_AVATAR_OT_remove_avatar.bl_idname, icon="TRASH")


def draw_job(layout: bpy.types.UILayout, monitor: job_monitor.JobMonitor, which: str) -> None:
    """A job's progress bar, losses, message or error, and its Cancel button."""
    if not monitor.job_id:
        return
    layout.progress(factor=monitor.fraction, type="BAR", text=f"{monitor.title}: {monitor.progress_text()}")
    losses = monitor.losses_text()
    if losses:
        layout.label(text=losses)
    message = monitor.error or monitor.state.get("error") or monitor.state.get("message")
    if message:
        layout.label(text=str(message)[:120], icon="ERROR" if monitor.error or monitor.state.get("error") else "INFO")
    if monitor.running:
        layout.operator(NEURAL_AVATAR_OT_cancel_job.bl_idname, icon="CANCEL").job = which


class NEURAL_AVATAR_PT_train(_AvatarTab, bpy.types.Panel):
    bl_label = "Train"
    bl_parent_id = "NEURAL_AVATAR_PT_avatar"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.neural_avatar
        column = layout.column()
        for name in ("train_capture", "train_output", "train_method", "train_preset", "train_iterations", "train_resolution"):
            column.prop(settings, name)
        row = layout.row()
        row.prop(settings, "train_resume")
        row.prop(settings, "train_auto_load")
        monitor = job_monitor.training
        if not monitor.running:
            op = layout.operator(NEURAL_AVATAR_OT_train.bl_idname, icon="PLAY")
            op.capture, op.output = settings.train_capture, settings.train_output
            op.method, op.preset, op.resume = settings.train_method, settings.train_preset, settings.train_resume
            op.iterations, op.resolution, op.auto_load = settings.train_iterations, settings.train_resolution, settings.train_auto_load
        draw_job(layout, monitor, "TRAIN")
        image = monitor.preview_image
        if image is not None and monitor.job_id:
            layout.template_icon(icon_value=image.preview_ensure().icon_id, scale=8.0)


class NEURAL_AVATAR_PT_render(_AvatarTab, bpy.types.Panel):
    bl_label = "Render & Live"
    bl_parent_id = "NEURAL_AVATAR_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = context.scene
        settings = scene.neural_avatar
        width, height = preview_size(scene.render, settings.preview_size)
        column = layout.column(align=True)
        column.prop(settings, "preview_size")
        column.prop(settings, "live_size")
        column.prop(settings, "show_behind_camera")
        layout.operator(NEURAL_AVATAR_OT_render_frame.bl_idname, icon="RENDER_STILL", text=f"Render Frame ({width}x{height})")
        if not bpy.app.background:
            layout.operator(
                NEURAL_AVATAR_OT_live_mode.bl_idname, icon="PAUSE" if live.enabled else "PLAY", text="Stop Live" if live.enabled else "Live Mode", depress=live.enabled
            )
        if live.enabled:
            layout.label(text=f"Live: {live.stats.text()}")
            if live.stats.error:
                layout.label(text=live.stats.error[:120], icon="ERROR")
        if scene.render.engine == ENGINE_ID:
            layout.label(text="F12 / -a render with the Neural Avatar engine", icon="CHECKMARK")
        else:
            layout.prop(scene.render, "engine")


class NEURAL_AVATAR_PT_bake(_AvatarTab, bpy.types.Panel):
    bl_label = "Bake"
    bl_parent_id = "NEURAL_AVATAR_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        scene = context.scene
        settings = scene.neural_avatar
        layout.prop(settings, "bake_directory")
        layout.prop(settings, "bake_mp4")
        width, height = output_size(scene.render)
        layout.label(text=f"Frames {scene.frame_start}-{scene.frame_end} at {width}x{height}")
        monitor = job_monitor.baking
        if not monitor.running:
            op = layout.operator(NEURAL_AVATAR_OT_bake.bl_idname, icon="RENDER_ANIMATION")
            op.directory, op.mp4 = settings.bake_directory, settings.bake_mp4
        draw_job(layout, monitor, "BAKE")


PANELS = (
    NEURAL_AVATAR_PT_main,
    NEURAL_AVATAR_PT_backend,
    NEURAL_AVATAR_PT_import,
    NEURAL_AVATAR_PT_avatar,
    NEURAL_AVATAR_PT_train,
    NEURAL_AVATAR_PT_render,
    NEURAL_AVATAR_PT_bake,
)
CLASSES = (NEURAL_AVATAR_UL_shape_keys, *PANELS)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
