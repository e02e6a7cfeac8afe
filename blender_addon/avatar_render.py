"""Rendering bound avatars through the backend: what Render Frame, live mode, the render engine
and baking share.

An armature is *bound* to a trained avatar when its ``neural_avatar.avatar_path`` names the
avatar folder. For each frame the rig's evaluated pose (:mod:`.pose_reading`) and the scene
camera (:func:`.camera.opencv_view`, in the rig's body-model frame) become one ``render``
request; the backend answers with premultiplied RGBA, rows top-first.

Several avatars are rendered one request each and composited back to front by the camera
depth of their root joint (the nearer avatar is laid over the farther one). They do not
occlude each other per pixel, and other scene objects are not rendered.

The backend knows avatars by an id that ``load_avatar`` hands out; :data:`avatar_ids`
remembers it per server, so a restarted server (new address or token) gets the folder loaded
again without the user noticing, and a ``no_avatar`` answer makes the caller load it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator, Iterable

import bpy
import numpy as np

from . import wire
from .camera import opencv_view
from .client import BackendClient, BackendError, Ticket
from .motion_math import uniform_scale
from .pose_reading import RigError, rig_pose
from .viewport import FrameWriter, show_behind_camera, show_in_image_editors

IMAGE_NAME = "Neural Avatar"
NO_AVATAR = "no_avatar"  # the backend's code for an unknown avatar id
MAX_RENDER_BATCH = 64
MAX_BAKE_FRAMES = 100_000
_UINT8_SCALE = np.float32(1.0 / 255.0)


# ------------------------------------------------------------------ bindings


def is_bound(obj: bpy.types.Object | None) -> bool:
    """True for an avatar armature bound to a trained avatar folder."""
    return obj is not None and obj.type == "ARMATURE" and obj.neural_avatar.role == "ARMATURE" and bool(obj.neural_avatar.avatar_path)


def bound_armatures(objects: Iterable[bpy.types.Object]) -> list[bpy.types.Object]:
    """The bound armatures among ``objects`` (originals; evaluated objects are mapped back)."""
    return [obj.original for obj in objects if is_bound(obj.original)]


def avatar_folder(armature: bpy.types.Object) -> str:
    """The bound avatar folder as an absolute path (``//`` paths resolved against the .blend)."""
    text = armature.neural_avatar.avatar_path
    path = Path(bpy.path.abspath(text))
    if not text or not path.is_absolute():
        raise BackendError("bad_request", f"{armature.name}: the avatar folder {text!r} must be absolute (save the .blend file first)")
    return str(path)


class AvatarIds:
    """Which avatar folders the current server has loaded, by folder and checkpoint choice."""

    def __init__(self) -> None:
        self._server: tuple[str, int, str] | None = None
        self._ids: dict[tuple[str, str], str] = {}

    def _for(self, client: BackendClient) -> dict[tuple[str, str], str]:
        server = (client.info.host, client.info.port, client.info.token)
        if server != self._server:  # another (or restarted) server knows none of our ids
            self._server, self._ids = server, {}
        return self._ids

    def get(self, client: BackendClient, folder: str, checkpoint: str) -> str | None:
        return self._for(client).get((folder, checkpoint))

    def remember(self, client: BackendClient, folder: str, checkpoint: str, avatar_id: str) -> None:
        self._for(client)[(folder, checkpoint)] = avatar_id

    def forget(self, client: BackendClient, folder: str) -> None:
        ids = self._for(client)
        for key in [key for key in ids if key[0] == folder]:
            del ids[key]


avatar_ids = AvatarIds()


def load_params(folder: str, checkpoint: str) -> dict[str, Any]:
    return {"path": folder, "checkpoint": checkpoint}


def summary(info: dict[str, Any]) -> str:
    """One line about a loaded avatar (from ``Avatar.info()``)."""
    height, width = (list(info.get("resolution") or [0, 0]) + [0, 0])[:2]
    steps = info.get("training_steps", "?")
    planned = info.get("planned_steps")
    progress = f"{steps}/{planned} steps" if planned and planned != steps else f"{steps} steps"
    body = next(iter((info.get("body_models") or {}).values()), {})
    standin = ", stand-in body" if body.get("is_standin") else ""
    return f"{str(info.get('method', '?')).upper()}, {progress}, trained at {width}x{height}{standin}"


# ------------------------------------------------------------------ sizes and inputs


def output_size(render: bpy.types.RenderSettings) -> tuple[int, int]:
    """(width, height) Blender renders at: the resolution times its percentage."""
    scale = render.resolution_percentage / 100.0
    return max(1, round(render.resolution_x * scale)), max(1, round(render.resolution_y * scale))


def preview_size(render: bpy.types.RenderSettings, longest: int) -> tuple[int, int]:
    """The output size scaled so its longer side is ``longest`` (0: the output size itself)."""
    width, height = output_size(render)
    if longest <= 0:
        return width, height
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass
class FrameInputs:
    """Everything one ``render`` request of one avatar needs for one frame."""

    armature_name: str
    folder: str
    checkpoint: str
    params: dict[str, np.ndarray]  # SMPL-X parameters, (1, width) each
    intrinsics: np.ndarray  # (3, 3)
    world_to_camera: np.ndarray  # (4, 4), OpenCV, body-model frame
    depth: float  # camera depth of the root joint (compositing order)

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {key: np.ascontiguousarray(value, np.float32) for key, value in self.params.items()}
        arrays["camera_K"] = np.ascontiguousarray(self.intrinsics, np.float32)
        arrays["camera_world_to_camera"] = np.ascontiguousarray(self.world_to_camera, np.float32)
        return arrays


def frame_inputs(
    depsgraph: bpy.types.Depsgraph, armature: bpy.types.Object, width: int, height: int, camera: bpy.types.Object | None = None
) -> FrameInputs:
    """The render inputs of a bound armature as evaluated in ``depsgraph``, seen by ``camera``
    (default: the depsgraph scene's active camera)."""
    scene = depsgraph.scene
    camera = camera or scene.camera
    if camera is None:
        raise BackendError("no_camera", f"scene {scene.name!r} has no active camera to render {armature.name!r} from")
    try:
        pose = rig_pose(armature, depsgraph)
        render = scene.render
        intrinsics, world_to_camera = opencv_view(
            camera.original.evaluated_get(depsgraph), depsgraph, width, height, pose.body_to_world, (render.pixel_aspect_x, render.pixel_aspect_y)
        )
    except (RigError, ValueError) as error:
        raise BackendError("bad_request", f"{armature.name}: {error}") from None
    # In world units: the body-model frame may be scaled (``world_to_camera`` folds the scale away).
    depth = float((world_to_camera[:3, :3] @ pose.root_position + world_to_camera[:3, 3])[2]) * uniform_scale(pose.body_to_world)
    state = armature.original.neural_avatar
    return FrameInputs(
        armature.original.name, avatar_folder(armature.original), state.avatar_checkpoint, pose.params, intrinsics, world_to_camera, depth
    )


def render_params(avatar_id: str, width: int, height: int) -> dict[str, Any]:
    return {"avatar_id": avatar_id, "width": int(width), "height": int(height), "dtype": "uint8"}


# ------------------------------------------------------------------ requests


def ensure_loaded(client: BackendClient, folder: str, checkpoint: str, fresh: bool = False) -> Generator[Ticket, None, str]:
    """Step: the backend's id for ``folder`` (``load_avatar`` unless known; ``fresh`` always asks,
    so a checkpoint changed on disk is picked up)."""
    known = None if fresh else avatar_ids.get(client, folder, checkpoint)
    if known is not None:
        return known
    loading = client.submit("load_avatar", load_params(folder, checkpoint))
    yield loading
    avatar_id = str(loading.result().result["avatar_id"])
    avatar_ids.remember(client, folder, checkpoint, avatar_id)
    return avatar_id


def render_frames(
    client: BackendClient, inputs: list[FrameInputs], width: int, height: int, fresh: bool = True
) -> Generator[Ticket, None, list[np.ndarray]]:
    """Step: render each avatar's inputs; returns (H, W, 4) uint8 premultiplied frames, top row first.

    An id the server no longer knows (it was restarted or unloaded the avatar) is loaded again once.
    """
    frames = []
    for item in inputs:
        for attempt in range(2):
            avatar_id = yield from ensure_loaded(client, item.folder, item.checkpoint, fresh=fresh and attempt == 0)
            rendering = client.submit("render", render_params(avatar_id, width, height), item.arrays())
            yield rendering
            try:
                reply = rendering.result()
            except BackendError as error:
                if error.code == NO_AVATAR and attempt == 0:
                    avatar_ids.forget(client, item.folder)
                    continue
                raise
            frames.append(checked_frame(reply.arrays, width, height, item.armature_name))
            break
    return frames


def checked_frame(arrays: dict[str, np.ndarray], width: int, height: int, name: str) -> np.ndarray:
    """The first frame of a ``render`` reply's ``rgba``, after checking it is what was asked for."""
    rgba = arrays.get("rgba")
    if rgba is None or rgba.ndim != 4 or rgba.shape[1:] != (height, width, 4) or rgba.shape[0] < 1:
        shape = None if rgba is None else tuple(rgba.shape)
        raise BackendError(wire.BAD_FRAME, f"{name}: the backend sent rgba of shape {shape}, expected (1, {height}, {width}, 4)")
    return rgba[0]


def run_blocking(steps: Generator[Any, None, Any]) -> Any:
    """Drive a step generator to its end on this thread (every yielded item has ``wait``)."""
    try:
        waiting = next(steps)
        while True:
            if not waiting.wait():
                raise BackendError(wire.TIMEOUT, "the backend did not answer in time")
            waiting = steps.send(None)
    except StopIteration as stop:
        return stop.value


# ------------------------------------------------------------------ compositing and showing


def composite(layers: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Premultiplied (H, W, 4) frames with camera depths → one float32 frame, nearest on top."""
    if not layers:
        raise ValueError("nothing to composite")
    ordered = sorted(layers, key=lambda layer: -layer[0])  # farthest first
    out = np.zeros(ordered[0][1].shape, np.float32)
    for _, frame in ordered:
        layer = frame.astype(np.float32) * _UINT8_SCALE if frame.dtype == np.uint8 else frame.astype(np.float32)
        out *= 1.0 - layer[..., 3:4]
        out += layer
    return out


def show_frame(scene: bpy.types.Scene, layers: list[tuple[float, np.ndarray]], writer: FrameWriter | None = None) -> bpy.types.Image:
    """Write the composited layers into the "Neural Avatar" image and show it (camera background
    when the scene asks for it, and every open Image Editor)."""
    writer = writer or FrameWriter(IMAGE_NAME)
    frame = layers[0][1] if len(layers) == 1 else composite(layers)
    image = writer.write(frame)
    camera = scene.camera
    if scene.neural_avatar.show_behind_camera and camera is not None and camera.type == "CAMERA":
        if not any(slot.image == image for slot in camera.data.background_images):  # set once: no update churn
            show_behind_camera(image, camera)
    show_in_image_editors(image)
    return image


def sequence_arrays(context: bpy.types.Context, armature: bpy.types.Object, frames: range, width: int, height: int) -> dict[str, np.ndarray]:
    """The ``bake`` request's arrays for ``frames``: every frame evaluated in turn (``frame_set``),
    so the sequence is exactly what the viewport shows at each frame (see :mod:`.pose_reading`).
    Cameras are sent once when they never change. The current frame is restored afterwards."""
    if not 0 < len(frames) <= MAX_BAKE_FRAMES:
        raise BackendError("bad_request", f"{len(frames)} frames to bake; the backend takes 1 to {MAX_BAKE_FRAMES} per job")
    scene = context.scene
    current, subframe = scene.frame_current, scene.frame_subframe
    per_frame: list[FrameInputs] = []
    try:
        for frame in frames:
            scene.frame_set(frame)
            per_frame.append(frame_inputs(context.evaluated_depsgraph_get(), armature, width, height))
    finally:
        scene.frame_set(current, subframe=subframe)
    arrays = {key: np.ascontiguousarray(np.concatenate([item.params[key] for item in per_frame]), np.float32) for key in per_frame[0].params}
    intrinsics = np.stack([item.intrinsics for item in per_frame]).astype(np.float32)
    world_to_camera = np.stack([item.world_to_camera for item in per_frame]).astype(np.float32)
    constant = bool(np.all(intrinsics == intrinsics[:1]) and np.all(world_to_camera == world_to_camera[:1]))
    arrays["camera_K"] = np.ascontiguousarray(intrinsics[0] if constant else intrinsics)
    arrays["camera_world_to_camera"] = np.ascontiguousarray(world_to_camera[0] if constant else world_to_camera)
    return arrays
