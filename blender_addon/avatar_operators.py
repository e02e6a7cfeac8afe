"""Operators for trained avatars: bind (load) and unbind, Render Frame, live mode, train, bake, cancel.

They are written as step generators driven by ``operators.BackendOperator``: synchronous under
``blender -b`` (timers never fire there), modal otherwise, so the UI never waits on the backend.
Every request answers before the scene is touched, so a failing request (a missing or stopped
backend, a bad avatar folder) reports a clear error and leaves the scene as it was.

Long work (training, baking) runs as backend jobs; :mod:`.job_monitor` follows them for the
panel. In background mode the operators can block until the job ends (``wait``), printing
progress lines - what ``batch_bake.py`` relies on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import backend_process, job_monitor
from .avatar_render import (
    avatar_folder,
    avatar_ids,
    bound_armatures,
    frame_inputs,
    is_bound,
    output_size,
    preview_size,
    render_frames,
    sequence_arrays,
    show_frame,
    summary,
)
from .client import NOT_RUNNING, BackendClient, BackendError, Reply
from .live import live
from .operators import BackendOperator, backend_client
from .properties import CHECKPOINT_ITEMS, METHOD_ITEMS, PRESET_ITEMS
from .rig import find_avatar

JOB_ITEMS = (("TRAIN", "Training", "The training job"), ("BAKE", "Bake", "The bake job"))


# ------------------------------------------------------------------ helpers


def smplx_armature(obj: bpy.types.Object | None) -> bpy.types.Object | None:
    """The armature of the imported SMPL-X avatar ``obj`` belongs to (other rigs cannot drive one)."""
    avatar = find_avatar(obj)
    if avatar is None or avatar.armature.neural_avatar.family != "smplx":
        return None
    return avatar.armature


def avatar_armature(context: bpy.types.Context, name: str = "") -> bpy.types.Object | None:
    """The armature named ``name``, or the active object's avatar armature (SMPL-X rigs only)."""
    return smplx_armature(bpy.data.objects.get(name) if name else context.active_object)


def armature_again(uid: int, name: str) -> bpy.types.Object:
    """The avatar armature whose ``session_uid`` is ``uid`` (it was ``name``), after the scene may have changed.

    Looked up by id, which survives renames; raises when the armature was deleted or no longer
    belongs to an SMPL-X avatar.
    """
    armature = next((obj for obj in bpy.data.objects if obj.session_uid == uid), None)
    if armature is None or smplx_armature(armature) != armature:
        raise BackendError("bad_request", f"{name} was deleted or is no longer an avatar armature")
    return armature


def absolute_folder(text: str, what: str, must_exist: bool) -> Path:
    """A folder path from a property (``//`` resolved against the .blend), checked."""
    if not text.strip():
        raise BackendError("bad_request", f"choose the {what}")
    path = Path(bpy.path.abspath(text.strip()))
    if not path.is_absolute():
        raise BackendError("bad_request", f"{text}: the {what} must be an absolute path (save the .blend file first)")
    if must_exist and not path.is_dir():
        raise BackendError("bad_request", f"{path}: the {what} does not exist")
    if path.exists() and not path.is_dir():
        raise BackendError("bad_request", f"{path}: the {what} is a file, not a folder")
    return path


def connected_client() -> BackendClient:
    session = backend_process.session()
    if not session.connected or session.client is None:
        raise BackendError("not_running", NOT_RUNNING)
    return session.client


def bind(armature: bpy.types.Object, folder: str, checkpoint: str, reply: Reply) -> None:
    """Record a loaded avatar on its armature (``load_avatar``'s reply)."""
    state = armature.neural_avatar
    state.avatar_path = folder
    state.avatar_checkpoint = checkpoint
    state.avatar_id = str(reply.result["avatar_id"])
    state.avatar_summary = summary(reply.result.get("info") or {})


def visible_bound_armatures(context: bpy.types.Context) -> list[bpy.types.Object]:
    return [armature for armature in bound_armatures(context.scene.objects) if armature.visible_get()]


def has_camera(operator: type[bpy.types.Operator], context: bpy.types.Context) -> bool:
    """Poll part of the rendering operators: the scene needs an active camera."""
    if context.scene.camera is None:
        operator.poll_message_set("The scene needs an active camera")
        return False
    return True


def target_armature(context: bpy.types.Context, name: str, need_binding: bool) -> bpy.types.Object:
    """The armature an operator acts on (its ``armature`` property, else the active avatar), checked."""
    armature = avatar_armature(context, name)
    if armature is None:
        what = repr(name) if name else "the active object"
        raise BackendError("bad_request", f"{what} is not an imported SMPL-X avatar (select its armature, mesh or root)")
    if need_binding and not is_bound(armature):
        raise BackendError("bad_request", f"{armature.name} is not bound to a trained avatar (Load Trained Avatar first)")
    return armature


# ------------------------------------------------------------------ binding


class NEURAL_AVATAR_OT_load_avatar(BackendOperator, bpy.types.Operator):
    """Load a trained avatar folder in the backend and bind it to the active avatar's armature"""

    bl_idname = "neural_avatar.load_avatar"
    bl_label = "Load Trained Avatar"
    bl_options = {"REGISTER", "UNDO"}

    directory: StringProperty(
        name="Avatar Folder", description="Folder of a trained avatar (avatar.json, checkpoints/)", subtype="DIR_PATH", options={"SKIP_SAVE"}
    )
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    checkpoint: EnumProperty(name="Checkpoint", items=CHECKPOINT_ITEMS, default="latest")
    armature: StringProperty(
        name="Armature", description="Avatar armature to bind (empty: the active object's avatar)", options={"SKIP_SAVE"}
    )

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        # Blender polls before the operator has properties: a script naming ``armature`` makes it active too.
        if avatar_armature(context) is None:
            cls.poll_message_set("Select an imported SMPL-X avatar: its armature drives the trained avatar")
            return False
        return True

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if self.directory:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def steps(self, context: bpy.types.Context):
        armature = target_armature(context, self.armature, need_binding=False)
        folder = str(absolute_folder(self.directory, "avatar folder", must_exist=True))
        name, uid = armature.name, armature.session_uid
        client = yield from backend_client(context)
        loading = client.submit("load_avatar", {"path": folder, "checkpoint": self.checkpoint})
        yield loading
        reply = loading.result()
        armature = armature_again(uid, name)  # the scene may have changed while loading
        name = armature.name
        avatar_ids.remember(client, folder, self.checkpoint, str(reply.result["avatar_id"]))
        bind(armature, folder, self.checkpoint, reply)
        self.report({"INFO"}, f"{name}: bound to {folder} ({armature.neural_avatar.avatar_summary})")


class NEURAL_AVATAR_OT_unbind_avatar(bpy.types.Operator):
    """Stop driving a trained avatar with this armature (the avatar folder is left untouched)"""

    bl_idname = "neural_avatar.unbind_avatar"
    bl_label = "Unbind Avatar"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return is_bound(avatar_armature(context))

    def execute(self, context: bpy.types.Context) -> set[str]:
        armature = avatar_armature(context)
        state = armature.neural_avatar
        folder, avatar_id = state.avatar_path, state.avatar_id
        state.avatar_path = state.avatar_id = state.avatar_summary = ""
        session = backend_process.session()
        still_used = any(obj.neural_avatar.avatar_path == folder for obj in bpy.data.objects if obj != armature)
        if session.connected and session.client is not None and avatar_id and not still_used:
            # Frees the backend's memory; nothing waits for it, and failing is harmless.
            session.client.submit("unload_avatar", {"avatar_id": avatar_id})
            avatar_ids.forget(session.client, str(Path(bpy.path.abspath(folder))))
        self.report({"INFO"}, f"{armature.name}: unbound")
        return {"FINISHED"}


# ------------------------------------------------------------------ render frame and live mode


class NEURAL_AVATAR_OT_render_frame(BackendOperator, bpy.types.Operator):
    """Render the bound avatars as posed now, seen by the active camera, into the "Neural Avatar" image"""

    bl_idname = "neural_avatar.render_frame"
    bl_label = "Render Frame"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if not has_camera(cls, context):
            return False
        if not bound_armatures(context.scene.objects):
            cls.poll_message_set("Bind an avatar armature to a trained avatar first (Load Trained Avatar)")
            return False
        return True

    def steps(self, context: bpy.types.Context):
        scene = context.scene
        armatures = visible_bound_armatures(context)
        if not armatures:
            raise BackendError("bad_request", "no visible armature is bound to a trained avatar (Load Trained Avatar first)")
        width, height = preview_size(scene.render, scene.neural_avatar.preview_size)
        started = time.perf_counter()
        depsgraph = context.evaluated_depsgraph_get()
        inputs = [frame_inputs(depsgraph, armature, width, height) for armature in armatures]  # the pose at the click
        client = yield from backend_client(context)
        frames = yield from render_frames(client, inputs, width, height)
        image = show_frame(bpy.context.scene, [(item.depth, frame) for item, frame in zip(inputs, frames)])
        seconds = time.perf_counter() - started
        self.report({"INFO"}, f"Rendered {len(frames)} avatar{'s' if len(frames) != 1 else ''} at {width}x{height} into {image.name!r} in {seconds * 1000:.0f} ms")


class NEURAL_AVATAR_OT_live_mode(BackendOperator, bpy.types.Operator):
    """Re-render the bound avatars whenever the frame or a pose changes (interactive Blender only)"""

    bl_idname = "neural_avatar.live_mode"
    bl_label = "Live Mode"

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if bpy.app.background:
            cls.poll_message_set("Live mode needs interactive Blender (use Render Frame or Bake here)")
            return False
        return live.enabled or bool(bound_armatures(context.scene.objects))

    def steps(self, context: bpy.types.Context):
        if live.enabled:
            live.disable()
            self.report({"INFO"}, "Live mode off")
            return
        yield from backend_client(context)
        live.enable()
        self.report({"INFO"}, "Live mode on")


# ------------------------------------------------------------------ jobs: train, bake, cancel


def _monitor(which: str) -> job_monitor.JobMonitor:
    return job_monitor.training if which == "TRAIN" else job_monitor.baking


def _bind_when_trained(uid: int, name: str, folder: str, client: BackendClient):
    """``on_finished`` of a training job (interactive): load the avatar and bind it to armature ``uid``, without waiting."""

    def finished(state: dict[str, Any]) -> None:
        if state.get("status") != job_monitor.DONE or client.closed:
            return

        def loaded(ticket) -> None:
            try:
                reply = ticket.result()
            except BackendError as error:
                job_monitor.training.error = f"training finished, but loading {folder} failed: {error}"
                return
            avatar_ids.remember(client, folder, "latest", str(reply.result["avatar_id"]))
            try:
                bind(armature_again(uid, name), folder, "latest", reply)
            except BackendError as error:
                job_monitor.training.error = f"training finished, but {error}: bind {folder} with Load Trained Avatar"
            backend_process.redraw_sidebars()

        client.submit("load_avatar", {"path": folder, "checkpoint": "latest"}, on_done=loaded)

    return finished


class NEURAL_AVATAR_OT_train(BackendOperator, bpy.types.Operator):
    """Train an avatar on a tracked capture with the backend (a job: progress, preview and cancel in the panel)"""

    bl_idname = "neural_avatar.train"
    bl_label = "Train Avatar"

    capture: StringProperty(name="Capture", description="Tracked capture folder (frames/, masks/, tracking.npz)", subtype="DIR_PATH")
    output: StringProperty(name="Avatar Folder", description="Where the trained avatar is written", subtype="DIR_PATH")
    method: EnumProperty(name="Method", items=METHOD_ITEMS, default="anr")
    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default="cpu")
    iterations: IntProperty(name="Iterations", description="Training steps (0: the preset's)", default=0, min=0)
    resolution: IntProperty(name="Resolution", description="Longer image side (0: the preset's)", default=0, min=0)
    resume: BoolProperty(name="Resume", description="Continue the avatar folder's latest checkpoint", default=False)
    bind_to: StringProperty(
        name="Bind To",
        description="Avatar armature to bind the result to when training ends (empty: the active avatar, if any)",
        options={"SKIP_SAVE"},
    )
    auto_load: BoolProperty(name="Load When Done", default=True)
    wait: BoolProperty(name="Wait", description="Background mode: block until training ends, printing progress", default=False)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not job_monitor.training.running

    def steps(self, context: bpy.types.Context):
        capture = absolute_folder(self.capture, "capture folder", must_exist=True)
        output = absolute_folder(self.output, "avatar folder", must_exist=False)
        if not (capture / "tracking.npz").is_file():
            raise BackendError("bad_request", f"{capture}: not a capture folder (no tracking.npz)")
        target = avatar_armature(context, self.bind_to) if self.auto_load else None
        if self.bind_to and target is None:
            raise BackendError("bad_request", f"{self.bind_to!r} is not an imported SMPL-X avatar")
        # Kept by id: the armature may be renamed or deleted while training runs.
        target_uid, target_name = (target.session_uid, target.name) if target is not None else (None, "")
        params: dict[str, Any] = {"capture": str(capture), "out": str(output), "method": self.method, "preset": self.preset, "resume": self.resume}
        if self.iterations:
            params["iterations"] = self.iterations
        if self.resolution:
            params["resolution"] = self.resolution
        client = yield from backend_client(context)
        starting = client.submit("train_start", params)
        yield starting
        state = starting.result().result["job"]
        monitor = job_monitor.training
        bind_later = target_uid is not None and not client.background
        monitor.follow(client, state, _bind_when_trained(target_uid, target_name, str(output), client) if bind_later else None)
        self.report({"INFO"}, f"Training {output.name} on {capture.name}: job {monitor.job_id}")
        if not (client.background and self.wait):
            return
        final = yield from monitor.wait_steps(client, print)
        if final.get("status") != job_monitor.DONE:
            raise BackendError("job_failed", f"training {final.get('status')}: {final.get('error') or final.get('message') or 'see the backend log'}")
        if target_uid is not None:
            loading = client.submit("load_avatar", {"path": str(output), "checkpoint": "latest"})
            yield loading
            reply = loading.result()
            armature = armature_again(target_uid, target_name)
            bind(armature, str(output), "latest", reply)
            self.report({"INFO"}, f"{armature.name}: bound to {output}")


class NEURAL_AVATAR_OT_cancel_job(BackendOperator, bpy.types.Operator):
    """Stop the training or bake job (training keeps its last checkpoint; a bake keeps the frames written)"""

    bl_idname = "neural_avatar.cancel_job"
    bl_label = "Cancel Job"

    job: EnumProperty(name="Job", items=JOB_ITEMS, default="TRAIN")

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return job_monitor.training.running or job_monitor.baking.running

    def steps(self, context: bpy.types.Context):
        monitor = _monitor(self.job)
        if not monitor.running:
            raise BackendError("bad_request", f"no {monitor.title.lower()} job is running")
        state = yield from monitor.cancel_steps(connected_client())
        self.report({"INFO"}, f"{monitor.title} job {monitor.job_id}: {state.get('status')} at step {state.get('step', 0)}")


class NEURAL_AVATAR_OT_bake(BackendOperator, bpy.types.Operator):
    """Render the scene's frame range of the active avatar to PNG frames (and an MP4) with the backend"""

    bl_idname = "neural_avatar.bake"
    bl_label = "Bake Frames"

    directory: StringProperty(name="Output Folder", description="Where frame_NNNNNN.png (and render.mp4) go", subtype="DIR_PATH")
    frame_start: IntProperty(name="Start", description="First frame (-1: the scene's)", default=-1, min=-1)
    frame_end: IntProperty(name="End", description="Last frame, included (-1: the scene's)", default=-1, min=-1)
    mp4: BoolProperty(name="MP4", description="Also write render.mp4", default=False)
    armature: StringProperty(name="Armature", description="Bound armature to bake (empty: the active object's avatar)", options={"SKIP_SAVE"})
    wait: BoolProperty(name="Wait", description="Background mode: block until the bake ends, printing progress", default=True)

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        if job_monitor.baking.running:
            cls.poll_message_set("A bake is running (cancel it in the Bake panel)")
            return False
        if not has_camera(cls, context):
            return False
        # Blender polls before the operator has properties: a script naming ``armature`` makes it active too.
        if not is_bound(avatar_armature(context)):
            cls.poll_message_set("Select an avatar bound to a trained avatar (Load Trained Avatar)")
            return False
        return True

    def steps(self, context: bpy.types.Context):
        armature = target_armature(context, self.armature, need_binding=True)
        scene = context.scene
        out_dir = absolute_folder(self.directory or scene.neural_avatar.bake_directory, "output folder", must_exist=False)
        first = scene.frame_start if self.frame_start < 0 else self.frame_start
        last = scene.frame_end if self.frame_end < 0 else self.frame_end
        if last < first:
            raise BackendError("bad_request", f"frame range {first}-{last} is empty")
        width, height = output_size(scene.render)
        arrays = sequence_arrays(context, armature, range(first, last + 1), width, height)
        fps = scene.render.fps / scene.render.fps_base
        params = {
            "avatar": avatar_folder(armature),
            "out_dir": str(out_dir),
            "width": width,
            "height": height,
            "fps": fps,
            "first_frame": first,
            "mp4": self.mp4,
        }
        client = yield from backend_client(context)
        starting = client.submit("bake", params, arrays)
        yield starting
        monitor = job_monitor.baking
        monitor.follow(client, starting.result().result["job"])
        self.report({"INFO"}, f"Baking {armature.name}, frames {first}-{last} at {width}x{height}, to {out_dir}: job {monitor.job_id}")
        if not (client.background and self.wait):
            return
        final = yield from monitor.wait_steps(client, print)
        if final.get("status") != job_monitor.DONE:
            raise BackendError("job_failed", f"bake {final.get('status')}: {final.get('error') or final.get('message') or 'see the backend log'}")
        self.report({"INFO"}, f"Baked {last - first + 1} frames of {armature.name} to {out_dir}")


CLASSES = (
    NEURAL_AVATAR_OT_load_avatar,
    NEURAL_AVATAR_OT_unbind_avatar,
    NEURAL_AVATAR_OT_render_frame,
    NEURAL_AVATAR_OT_live_mode,
    NEURAL_AVATAR_OT_train,
    NEURAL_AVATAR_OT_cancel_job,
    NEURAL_AVATAR_OT_bake,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
