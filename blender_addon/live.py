"""Live mode (interactive Blender only): re-render the bound avatars as the frame or a pose changes.

Handlers only mark the view dirty: ``frame_change_post`` always, ``depsgraph_update_post`` when
an update touches a watched data-block (a bound armature, its root, body mesh and shape keys,
the scene camera and its lens) or any avatar armature or root (a new binding); changing the
live settings does too. A ``bpy.app.timers`` tick, at most ``1 / LIVE_RATE`` s apart, turns a dirty view into
one ``render`` request per visible bound avatar with ``submit_latest`` keyed by the armature: a
request still queued for that avatar is replaced, so there is never a backlog. The socket lives
in the client's worker thread, which never touches ``bpy``; replies come back through the
client's drain timer, where the frames are composited into the "Neural Avatar" image. Nothing
on the main thread waits for the backend. Turning live mode off removes the handlers and the tick.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from functools import partial

import bpy
import numpy as np

from . import backend_process
from .avatar_render import (
    IMAGE_NAME,
    NO_AVATAR,
    FrameInputs,
    avatar_ids,
    bound_armatures,
    checked_frame,
    frame_inputs,
    load_params,
    preview_size,
    render_params,
    show_frame,
)
from .backend_process import redraw_sidebars
from .client import NOT_RUNNING, BackendClient, BackendError, Ticket
from .rig import find_avatar
from .viewport import FrameWriter

LIVE_RATE = 30.0  # requests per second at most
SMOOTHING = 0.2  # weight of the newest frame in the running latency average


@dataclass
class LiveStats:
    """What the panel shows about live mode."""

    frames: int = 0
    latency_ms: float = 0.0  # pose read -> image written, running average
    last_latency_ms: float = 0.0
    backend_ms: float = 0.0  # the backend's own render time of the last frame
    pose_ms: float = 0.0  # reading poses and cameras for the last request
    error: str = ""

    def record(self, latency_ms: float, backend_ms: float) -> None:
        self.frames += 1
        self.last_latency_ms = latency_ms
        self.latency_ms = latency_ms if self.frames == 1 else (1 - SMOOTHING) * self.latency_ms + SMOOTHING * latency_ms
        self.backend_ms = backend_ms
        self.error = ""

    def text(self) -> str:
        if not self.frames:
            return "waiting for the first frame"
        return f"{self.latency_ms:.0f} ms per frame (backend {self.backend_ms:.0f} ms, pose {self.pose_ms:.1f} ms), {self.frames} frames"


class LiveMode:
    """The live-mode state of this Blender session (see the module docstring)."""

    def __init__(self) -> None:
        self.enabled = False
        self.stats = LiveStats()
        self.client_override: BackendClient | None = None  # another client than the session's (tests)
        self._dirty = False
        self._last_submit = 0.0
        self._size: tuple[int, int] = (0, 0)
        self._shown: list[str] = []  # armatures of the newest request, in order
        self._layers: dict[str, tuple[float, np.ndarray]] = {}
        self._watched: set[int] = set()
        self._loading: set[tuple[str, str]] = set()
        self._writer = FrameWriter(IMAGE_NAME)

    # ---------------------------------------------------------------- on / off

    def enable(self, client: BackendClient | None = None) -> None:
        """Install the handlers and the tick (again: a no-op)."""
        self.client_override = client
        if self.enabled:
            return
        self.enabled, self.stats, self._dirty = True, LiveStats(), True
        self._layers.clear()
        for handlers, function in _handlers():
            if function not in handlers:
                handlers.append(function)
        if not bpy.app.timers.is_registered(_tick):
            bpy.app.timers.register(_tick, first_interval=0.0, persistent=True)

    def disable(self) -> None:
        """Remove the handlers and the tick; requests in flight are left to finish unseen."""
        self.enabled = False
        self.client_override = None
        for handlers, function in _handlers():
            while function in handlers:
                handlers.remove(function)
        if bpy.app.timers.is_registered(_tick):
            bpy.app.timers.unregister(_tick)
        self._layers.clear()
        self._loading.clear()

    def mark_dirty(self) -> None:
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    # ---------------------------------------------------------------- handlers

    def on_depsgraph_update(self, scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph) -> None:
        if self._dirty:
            return
        for update in depsgraph.updates:
            original = update.id.original
            if original.as_pointer() in self._watched:
                self._dirty = True
                return
            if isinstance(original, bpy.types.Object) and original.neural_avatar.role in ("ARMATURE", "ROOT"):
                self._dirty = True
                return

    def _client(self) -> BackendClient:
        if self.client_override is not None:
            return self.client_override
        session = backend_process.session()
        if not session.connected or session.client is None:
            raise BackendError("not_running", NOT_RUNNING)
        return session.client

    def tick(self) -> float | None:
        """Timer body: submit a frame when the view is dirty and the rate allows."""
        if not self.enabled:
            return None
        wait = 1.0 / LIVE_RATE - (time.perf_counter() - self._last_submit)
        if self._dirty and wait <= 0.0:
            try:
                self.submit(bpy.context)
            except BackendError as error:
                self.stats.error = str(error)
                redraw_sidebars()
            except Exception as error:  # noqa: BLE001 - a raising timer is dropped by Blender: live mode would die silently
                traceback.print_exc()
                self.stats.error = f"{type(error).__name__}: {error}"
                redraw_sidebars()
            return 1.0 / LIVE_RATE
        return max(wait, 0.005) if self._dirty else 1.0 / LIVE_RATE

    # ---------------------------------------------------------------- requests

    def submit(self, context: bpy.types.Context) -> list[Ticket]:
        """Read every visible bound avatar's pose and send its render request (never waits)."""
        self._dirty = False
        self._last_submit = started = time.perf_counter()
        client = self._client()
        scene = context.scene
        armatures = [armature for armature in bound_armatures(scene.objects) if armature.visible_get()]
        self._watch(scene, armatures)
        if not armatures or scene.camera is None:
            self.stats.error = "no bound avatar is visible" if not armatures else "the scene has no active camera"
            return []
        width, height = preview_size(scene.render, scene.neural_avatar.live_size)
        if (width, height) != self._size:
            self._size = (width, height)
            self._layers.clear()
        depsgraph = context.evaluated_depsgraph_get()
        inputs = [frame_inputs(depsgraph, armature, width, height) for armature in armatures]
        self.stats.pose_ms = 1000.0 * (time.perf_counter() - started)
        self._shown = [item.armature_name for item in inputs]
        tickets = []
        for item in inputs:
            avatar_id = avatar_ids.get(client, item.folder, item.checkpoint)
            if avatar_id is None:
                tickets.append(self._load(client, item))
                continue
            on_done = partial(self._rendered, item, started, (width, height))
            tickets.append(client.submit_latest("render", render_params(avatar_id, width, height), item.arrays(), on_done=on_done, key=item.armature_name))
        return tickets

    def _watch(self, scene: bpy.types.Scene, armatures: list[bpy.types.Object]) -> None:
        watched: set[int] = set()  # not the scene: it is updated along with any object
        for armature in armatures:
            avatar = find_avatar(armature)
            watched.update(obj.as_pointer() for obj in (avatar.root, avatar.armature, avatar.mesh))
            if avatar.mesh.data.shape_keys is not None:
                watched.add(avatar.mesh.data.shape_keys.as_pointer())
        if scene.camera is not None:
            watched.update((scene.camera.as_pointer(), scene.camera.data.as_pointer()))
        self._watched = watched

    def _load(self, client: BackendClient, item: FrameInputs) -> Ticket | None:
        key = (item.folder, item.checkpoint)
        if key in self._loading:
            return None
        self._loading.add(key)

        def loaded(ticket: Ticket) -> None:
            self._loading.discard(key)
            try:
                avatar_ids.remember(client, item.folder, item.checkpoint, str(ticket.result().result["avatar_id"]))
            except BackendError as error:
                self.stats.error = f"{item.armature_name}: {error}"
                redraw_sidebars()
                return
            self._dirty = True

        return client.submit("load_avatar", load_params(item.folder, item.checkpoint), on_done=loaded)

    def _rendered(self, item: FrameInputs, started: float, size: tuple[int, int], ticket: Ticket) -> None:
        """Reply handler (main thread, from the client's drain)."""
        if not self.enabled:
            return
        try:
            reply = ticket.result()
            frame = checked_frame(reply.arrays, size[0], size[1], item.armature_name)
        except BackendError as error:
            if error.code == NO_AVATAR:  # the server forgot it (restarted, unloaded): load again
                client = self.client_override or backend_process.session().client
                if client is not None:
                    avatar_ids.forget(client, item.folder)
                self._dirty = True
            else:
                self.stats.error = f"{item.armature_name}: {error}"
            redraw_sidebars()
            return
        if size != self._size:
            return  # the live size changed meanwhile
        self._layers[item.armature_name] = (item.depth, frame)
        layers = [self._layers[name] for name in self._shown if name in self._layers]
        if not layers:
            return
        show_frame(bpy.context.scene, layers, self._writer)
        self.stats.record(1000.0 * (time.perf_counter() - started), float(reply.result.get("render_ms", 0.0)))
        redraw_sidebars()


live = LiveMode()


@bpy.app.handlers.persistent
def _on_frame_change(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph | None = None) -> None:
    live.mark_dirty()


@bpy.app.handlers.persistent
def _on_depsgraph_update(scene: bpy.types.Scene, depsgraph: bpy.types.Depsgraph) -> None:
    live.on_depsgraph_update(scene, depsgraph)


def _tick() -> float | None:
    return live.tick()


def _handlers() -> tuple[tuple[list, object], ...]:
    return (
        (bpy.app.handlers.frame_change_post, _on_frame_change),
        (bpy.app.handlers.depsgraph_update_post, _on_depsgraph_update),
    )


def installed() -> dict[str, int]:
    """How many of live mode's handlers and timers are installed (for checks and tests)."""
    return {
        "frame_change_post": bpy.app.handlers.frame_change_post.count(_on_frame_change),
        "depsgraph_update_post": bpy.app.handlers.depsgraph_update_post.count(_on_depsgraph_update),
        "timer": int(bpy.app.timers.is_registered(_tick)),
    }


def register() -> None:
    pass


def unregister() -> None:
    live.disable()
