"""Add-on preferences: how to reach the backend, and which body-model files it should use."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

# The add-on's package as Blender installed it ("neural_avatar", "bl_ext.user_default.neural_avatar"...).
ADDON_PACKAGE = __package__
MODEL_FAMILIES = (("smplx", "SMPL-X"), ("mano", "MANO"), ("faceverse", "FaceVerse"))
CONNECTION_ITEMS = (
    ("START", "Start Local Backend", "Start the backend with the Python below and connect to it"),
    ("FILE", "Connection File", "Connect to a running backend through the connection file it wrote"),
    ("ADDRESS", "Host and Port", "Connect to a running backend at a host and port with its token (e.g. an SSH tunnel)"),
)


class NEURAL_AVATAR_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    backend_python: StringProperty(
        name="Backend Python",
        description="The backend's Python executable or virtual-environment folder "
        "(empty: the one install.py recorded in backend.json next to the add-on)",
        subtype="FILE_PATH",
    )
    connection: EnumProperty(name="Connection", items=CONNECTION_ITEMS, default="START")
    auto_start: BoolProperty(
        name="Start Automatically", description="Start the backend the first time it is needed", default=True
    )
    state_folder: StringProperty(
        name="State Folder",
        description="Where the started backend keeps its connection file, log and jobs (empty: Blender's user data folder)",
        subtype="DIR_PATH",
    )
    connection_file: StringProperty(
        name="Connection File", description="The connection file a running backend wrote", subtype="FILE_PATH"
    )
    host: StringProperty(name="Host", description="Address of a running backend", default="127.0.0.1")
    port: IntProperty(name="Port", description="Port of a running backend", default=0, min=0, max=65535)
    token: StringProperty(
        name="Token", description="The running backend's access token (printed when it starts)", subtype="PASSWORD"
    )
    smplx_folder: StringProperty(
        name="SMPL-X", description="Folder with SMPLX_NEUTRAL.npz etc. (empty: generated stand-in)", subtype="DIR_PATH"
    )
    mano_folder: StringProperty(
        name="MANO",
        description="Folder with MANO_RIGHT.pkl / MANO_LEFT.pkl (empty: generated stand-in)",
        subtype="DIR_PATH",
    )
    faceverse_folder: StringProperty(
        name="FaceVerse",
        description="FaceVerse .npy file or its folder (empty: generated stand-in)",
        subtype="DIR_PATH",
    )

    def model_folder(self, family: str) -> str:
        """The chosen folder for a family, or "" for the stand-in."""
        return getattr(self, f"{family}_folder").strip()

    def model_folders(self) -> dict[str, str]:
        """Absolute model folder per family ("" for the default), as the backend's requests take them."""
        return {family: bpy.path.abspath(self.model_folder(family)) if self.model_folder(family) else "" for family, _ in MODEL_FAMILIES}

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="Backend", icon="CONSOLE")
        box.prop(self, "connection")
        if self.connection == "START":
            box.prop(self, "backend_python")
            box.prop(self, "state_folder")
            box.prop(self, "auto_start")
        elif self.connection == "FILE":
            box.prop(self, "connection_file")
        else:
            row = box.row()
            row.prop(self, "host")
            row.prop(self, "port")
            box.prop(self, "token")

        box = layout.box()
        box.label(text="Body Models (licensed files; empty uses a generated stand-in)", icon="OUTLINER_OB_ARMATURE")
        for family, label in MODEL_FAMILIES:
            row = box.row()
            row.prop(self, f"{family}_folder", text=label)
            if not self.model_folder(family):
                row.label(text="stand-in", icon="INFO")


def addon_preferences(context: bpy.types.Context | None = None) -> NEURAL_AVATAR_AP_preferences | None:
    """The add-on's preferences, or None when the add-on is not enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon else None


def register() -> None:
    bpy.utils.register_class(NEURAL_AVATAR_AP_preferences)


def unregister() -> None:
    bpy.utils.unregister_class(NEURAL_AVATAR_AP_preferences)
