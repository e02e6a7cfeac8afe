"""Operators: the backend connection (start, stop, connect, log), motion import/export, avatar tools.

Operators that talk to the backend are written once as a generator of steps (``steps``) that
yields whatever it waits for (a request ticket, a starting backend). ``BackendOperator``
drives it: in background mode by blocking (timers never fire there), interactively as a modal
operator that checks on each timer tick, so Blender's UI never freezes on the backend.
Scene changes happen only in the last step, after every request has answered, and
``import_motion`` undoes its own partial work on failure: errors leave the scene unchanged.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generator

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper, ImportHelper

from . import backend_process
from .backend_process import connection_from_address, connection_from_file, resolve_backend_python
from .client import NOT_RUNNING, BackendClient, BackendError
from .importing import ImportOptions, export_motion, import_motion
from .motion_data import POSE_LAYOUTS, describe_tracks
from .preferences import addon_preferences
from .properties import UNKEPT_TRACKS_PROPERTY
from .rig import find_avatar, remove_avatar

LOG_TEXT_NAME = "Neural Avatar backend log"
LOG_MAX_BYTES = 1 << 20
TICK_SECONDS = 0.05
FRAME_RATE_ITEMS = (
    ("auto", "Automatic", "The motion's rate for the first avatar in the scene, the scene's rate after that"),
    ("motion", "Motion's Rate", "Set the scene's frame rate to the motion's and key every sample"),
    ("scene", "Scene's Rate", "Keep the scene's frame rate and resample the motion"),
)
GROUND_ITEMS = (
    ("first_frame", "First Frame", "Put the lowest point of the first frame on the floor"),
    ("sequence", "Whole Motion", "Put the lowest point over all frames on the floor"),
    ("none", "None", "Keep the motion's own height"),
)
EXPORT_FORMAT_ITEMS = (
    ("tracking", "Tracking (.npz)", "The project's tracking file: body motion, expressions, camera, up axis"),
    ("amass", "AMASS (.npz)", "AMASS SMPL-X layout (Z-up body motion only)"),
)


# ------------------------------------------------------------------ settings and the session


def _preference(context: bpy.types.Context, name: str, default: Any) -> Any:
    prefs = addon_preferences(context)
    return getattr(prefs, name) if prefs is not None else default


def state_folder(context: bpy.types.Context) -> Path:
    chosen = _preference(context, "state_folder", "").strip()
    return Path(bpy.path.abspath(chosen)) if chosen else backend_process.default_state_dir()


def model_folders(context: bpy.types.Context) -> dict[str, str]:
    prefs = addon_preferences(context)
    return prefs.model_folders() if prefs is not None else {"smplx": "", "mano": "", "faceverse": ""}


def begin_start(context: bpy.types.Context) -> backend_process.Starting:
    python = resolve_backend_python(bpy.path.abspath(_preference(context, "backend_python", "")))
    return backend_process.session().begin_start(python, state_folder(context))


def begin_connect(context: bpy.types.Context):
    """Attach to the running backend named in the preferences; returns the checking request."""
    prefs = addon_preferences(context)
    if prefs is None or prefs.connection == "START":
        raise BackendError("bad_connection", "set the connection to 'Connection File' or 'Host and Port' in the add-on preferences")
    if prefs.connection == "FILE":
        info = connection_from_file(bpy.path.abspath(prefs.connection_file))
    else:
        info = connection_from_address(prefs.host, prefs.port, prefs.token)
    return backend_process.session().connect(info)


def backend_client(context: bpy.types.Context) -> Generator[Any, None, BackendClient]:
    """Step: the connected backend, started or connected first when the preferences allow it."""
    session = backend_process.session()
    if session.connected:
        return session.client
    if session.starting is not None:
        starting = session.starting  # the session forgets it once the start ends, successful or not
        yield starting
        return starting.result()
    mode = _preference(context, "connection", "START")
    if mode == "START" and _preference(context, "auto_start", True):
        starting = begin_start(context)
        yield starting
        return starting.result()
    if mode != "START":
        check = begin_connect(context)
        yield check
        try:
            check.result()
        except BackendError:
            session.stop()
            raise
        return session.client
    if session.process is not None and not session.process.alive:
        raise BackendError("not_running", f"backend stopped (exit code {session.process.exit_code}) — start it in the Avatar panel")
    raise BackendError("not_running", NOT_RUNNING)


# ------------------------------------------------------------------ the step driver


class BackendOperator:
    """Mix-in: runs ``steps(context)`` to the end, blocking in background mode, modal otherwise."""

    def steps(self, context: bpy.types.Context) -> Generator[Any, None, None]:
        raise NotImplementedError

    def execute(self, context: bpy.types.Context) -> set[str]:
        self._steps = self.steps(context)
        self._waiting = None
        self._timer = None
        return self._advance(context)

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if event.type == "ESC":
            self._finish(context)
            self.report({"WARNING"}, "Cancelled; the backend finishes the request in the background")
            return {"CANCELLED"}
        if event.type != "TIMER" or (self._waiting is not None and not self._waiting.done):
            return {"PASS_THROUGH"}
        return self._advance(context)

    def _advance(self, context: bpy.types.Context) -> set[str]:
        try:
            while True:
                waiting = self._waiting
                if waiting is not None and not waiting.done:
                    if not bpy.app.background:
                        self._go_modal(context)
                        return {"RUNNING_MODAL"}
                    if not waiting.wait():
                        raise BackendError("timeout", "the backend did not answer in time")
                self._waiting = next(self._steps)
        except StopIteration:
            outcome = {"FINISHED"}
        except (BackendError, ValueError, OSError, RuntimeError) as error:
            self.report({"ERROR"}, str(error))
            outcome = {"CANCELLED"}
        except Exception as error:
            # A bug: the console gets the traceback, the user a report (scene changes happen only
            # in the last step, and the import undoes its own partial work).
            traceback.print_exc()
            self.report({"ERROR"}, f"Internal error ({type(error).__name__}: {error}); the traceback is in the console")
            outcome = {"CANCELLED"}
        except BaseException:
            self._finish(context)  # KeyboardInterrupt, SystemExit: stop ticking and let them through
            raise
        self._finish(context)
        return outcome

    def _go_modal(self, context: bpy.types.Context) -> None:
        if self._timer is None:
            window_manager = context.window_manager
            self._timer = window_manager.event_timer_add(TICK_SECONDS, window=context.window)
            window_manager.modal_handler_add(self)

    def _finish(self, context: bpy.types.Context) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        self._steps.close()


# ------------------------------------------------------------------ backend operators


class NEURAL_AVATAR_OT_backend_start(BackendOperator, bpy.types.Operator):
    """Start the local backend with the Python set in the add-on preferences"""

    bl_idname = "neural_avatar.backend_start"
    bl_label = "Start Backend"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        session = backend_process.session()
        return not session.connected and session.starting is None

    def steps(self, context: bpy.types.Context):
        starting = begin_start(context)
        yield starting
        starting.result()
        session = backend_process.session()
        self.report({"INFO"}, f"Backend {session.status}")


class NEURAL_AVATAR_OT_backend_connect(BackendOperator, bpy.types.Operator):
    """Connect to a backend that is already running (connection file, or host, port and token)"""

    bl_idname = "neural_avatar.backend_connect"
    bl_label = "Connect to Backend"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not backend_process.session().connected and _preference(context, "connection", "START") != "START"

    def steps(self, context: bpy.types.Context):
        check = begin_connect(context)
        yield check
        session = backend_process.session()
        try:
            check.result()
        except BackendError:
            session.stop()
            raise
        self.report({"INFO"}, f"Backend {session.status}")


class NEURAL_AVATAR_OT_backend_stop(bpy.types.Operator):
    """Stop the backend started here, or disconnect from one started elsewhere"""

    bl_idname = "neural_avatar.backend_stop"
    bl_label = "Stop Backend"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        session = backend_process.session()
        return session.client is not None or session.starting is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        session = backend_process.session()
        owned = session.owned
        session.stop()
        self.report({"INFO"}, "Backend stopped" if owned else "Disconnected from the backend (it keeps running)")
        return {"FINISHED"}


class NEURAL_AVATAR_OT_backend_show_log(bpy.types.Operator):
    """Show the backend's log in a text block (and a Text Editor, if one is open)"""

    bl_idname = "neural_avatar.backend_show_log"
    bl_label = "Show Backend Log"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return backend_process.session().log_file is not None

    def execute(self, context: bpy.types.Context) -> set[str]:
        path = backend_process.session().log_file
        try:
            with open(path, "rb") as stream:
                stream.seek(0, 2)
                size = stream.tell()
                stream.seek(max(0, size - LOG_MAX_BYTES))
                text = stream.read().decode("utf-8", errors="replace")
        except OSError as error:
            self.report({"ERROR"}, f"cannot read the backend log {path}: {error.strerror or error}")
            return {"CANCELLED"}
        block = bpy.data.texts.get(LOG_TEXT_NAME) or bpy.data.texts.new(LOG_TEXT_NAME)
        block.from_string(text)
        for area in context.screen.areas if context.screen else ():
            if area.type == "TEXT_EDITOR":
                area.spaces.active.text = block
                break
        else:
            self.report({"INFO"}, f"Backend log loaded into the text block {LOG_TEXT_NAME!r} ({path})")
        return {"FINISHED"}


# ------------------------------------------------------------------ motion import / export


def avatar_name_for(path: Path) -> str:
    """A capture folder's or motion file's name (``tracking.npz`` is named after its folder)."""
    if path.is_dir() or path.name == "tracking.npz":
        folder = path if path.is_dir() else path.parent
        return folder.name or "Avatar"
    return path.stem or "Avatar"


def motion_for_import(reply) -> dict[str, Any]:
    """``motion_read``'s reply as the motion mapping ``import_motion`` takes."""
    motion: dict[str, Any] = dict(reply.arrays)
    for key in ("fps", "up_axis", "gender", "faceverse_exp_names"):
        if key in reply.result:
            motion[key] = reply.result[key]
    return motion


class NEURAL_AVATAR_OT_import_motion(BackendOperator, bpy.types.Operator, ImportHelper):
    """Import a motion (capture folder, tracking.npz or AMASS .npz) as an animated avatar"""

    bl_idname = "neural_avatar.import_motion"
    bl_label = "Import Motion"
    bl_options = {"REGISTER", "UNDO"}

    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    avatar_name: StringProperty(name="Name", description="Name of the new avatar (empty: the file's or folder's name)")
    frame_rate: EnumProperty(name="Frame Rate", items=FRAME_RATE_ITEMS, default="auto")
    ground: EnumProperty(name="Ground", items=GROUND_ITEMS, default="first_frame")
    import_camera: BoolProperty(name="Import Camera", description="Create the capture's camera, when it has one", default=True)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return context.mode == "OBJECT"

    def steps(self, context: bpy.types.Context):
        if not self.filepath:
            raise BackendError("bad_request", "choose a capture folder, tracking.npz or AMASS .npz file")
        path = Path(bpy.path.abspath(self.filepath))
        if not path.is_absolute():
            raise BackendError("bad_request", f"{self.filepath}: save the .blend file first or give an absolute path")
        client = yield from backend_client(context)
        folders = model_folders(context)
        reading = client.submit("motion_read", {"path": str(path), "models": folders})
        yield reading
        motion = reading.result()
        betas = motion.arrays.get("betas")
        template_params = {"family": "smplx", "gender": motion.result["gender"], "models": folders}
        loading = client.submit("body_template", template_params, {"betas": betas} if betas is not None and betas.size else None)
        yield loading
        template = loading.result()
        if template.result.get("betas_dropped"):
            self.report(
                {"WARNING"},
                f"{path.name}: {template.result['betas_dropped']} shape coefficients beyond the body model's "
                f"{len(template.result['shape_names'])} were ignored",
            )
        name = self.avatar_name.strip() or avatar_name_for(path)
        options = ImportOptions(name=name, frame_rate=self.frame_rate, ground=self.ground, import_camera=self.import_camera)
        armature = import_motion(context, template.arrays, template.result, motion_for_import(motion), options)
        unkept = armature.get(UNKEPT_TRACKS_PROPERTY)
        if unkept:
            self.report({"WARNING"}, f"{path.name}: not kept on the rig, so an export leaves them out: {describe_tracks(unkept)}")
        state = armature.neural_avatar
        self.report(
            {"INFO"},
            f"Imported {find_avatar(armature).root.name}: {state.frame_count} frames at {state.motion_fps:.6g} fps "
            f"({template.result['label']})",
        )


def motion_write_request(
    exported: dict[str, Any], file_format: str, unkept_tracks: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]]:
    """``export_motion``'s arrays as a ``motion_write`` request; also returns what is left out.

    ``unkept_tracks``: arrays of the imported file that the rig did not keep.
    """
    frames = int(np.shape(exported["transl"])[0])
    params = {"fps": float(exported["fps"]), "gender": exported["gender"], "up_axis": exported["up_axis"], "format": file_format}
    arrays: dict[str, np.ndarray] = {}
    for name, _ in POSE_LAYOUTS["smplx"]:
        arrays[name] = np.ascontiguousarray(exported[name], np.float32)
    for name in ("transl", "betas", "expression"):
        if name in exported:
            arrays[name] = np.ascontiguousarray(exported[name], np.float32)
    left_out = []
    if "camera_K" in exported:
        if file_format == "tracking":
            arrays["camera_K"] = np.ascontiguousarray(np.broadcast_to(exported["camera_K"], (frames, 3, 3)), np.float32)
            arrays["camera_world_to_camera"] = np.ascontiguousarray(
                np.broadcast_to(exported["camera_world_to_camera"], (frames, 4, 4)), np.float32
            )
            arrays["image_size"] = np.asarray(exported["image_size"], np.int32)
        else:
            left_out.append("the camera (AMASS files hold only the body)")
    if "faceverse_exp" in exported:
        left_out.append("the FaceVerse expression curves (the FaceVerse head pose is not kept in Blender)")
    if unkept_tracks:
        left_out.append(f"the imported file's {describe_tracks(unkept_tracks)} (not kept in Blender)")
    return params, arrays, left_out


class NEURAL_AVATAR_OT_export_motion(BackendOperator, bpy.types.Operator, ExportHelper):
    """Write the active avatar's motion as a tracking or AMASS .npz file"""

    bl_idname = "neural_avatar.export_motion"
    bl_label = "Export Motion"

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    file_format: EnumProperty(name="Format", items=EXPORT_FORMAT_ITEMS, default="tracking")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        avatar = find_avatar(context.active_object)
        return avatar is not None and avatar.armature.neural_avatar.family == "smplx"

    def steps(self, context: bpy.types.Context):
        avatar = find_avatar(context.active_object)
        if avatar is None:
            raise BackendError("bad_request", "select an imported avatar to export")
        path = Path(bpy.path.abspath(self.filepath))
        if not path.is_absolute():
            raise BackendError("bad_request", f"{self.filepath}: save the .blend file first or give an absolute path")
        unkept = list(avatar.armature.get(UNKEPT_TRACKS_PROPERTY, []))
        params, arrays, left_out = motion_write_request(export_motion(avatar.armature), self.file_format, unkept)
        client = yield from backend_client(context)
        writing = client.submit("motion_write", {**params, "path": str(path)}, arrays)
        yield writing
        written = writing.result().result
        for what in left_out:
            self.report({"WARNING"}, f"Not written to {path.name}: {what}")
        self.report({"INFO"}, f"Wrote {written['num_frames']} frames to {written['path']}")


# ------------------------------------------------------------------ avatar tools


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


CLASSES = (
    NEURAL_AVATAR_OT_backend_start,
    NEURAL_AVATAR_OT_backend_connect,
    NEURAL_AVATAR_OT_backend_stop,
    NEURAL_AVATAR_OT_backend_show_log,
    NEURAL_AVATAR_OT_import_motion,
    NEURAL_AVATAR_OT_export_motion,
    NEURAL_AVATAR_OT_match_scene_rate,
    NEURAL_AVATAR_OT_remove_avatar,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
