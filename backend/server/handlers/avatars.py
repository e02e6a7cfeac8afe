"""Trained avatars in the server: load_avatar, unload_avatar, render and render_sequence.

A loaded avatar is known by an id derived from its folder, so loading a folder again returns
the same id; it is reloaded when its ``avatar.json``, the chosen checkpoint pointer or the
checkpoint files it was loaded from changed on disk (e.g. training went on). Renders run on
the requesting connection's thread, never queued behind jobs (those are child processes), and
are serialised per avatar by its own lock; the lock is held only while rendering, never while
sending. Frames go out as premultiplied RGBA, rows top-first, ``uint8`` (0–255) or
``float16`` (0–1).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from blender_addon import wire
from backend.server.device import release_device
from backend.server.pose_arrays import PoseFrames, pose_camera_schema, pose_frames
from backend.server.registry import Request, RequestError, Result, handler
from backend.server.schema import BadRequest, FilePath, Integer, String

if TYPE_CHECKING:
    import torch

    from backend.avatar import Avatar
    from backend.server.context import ServerContext

log = logging.getLogger("backend.server")

NO_AVATAR = "no_avatar"
CHECKPOINT_CHOICES = ("latest", "best")
RGBA_DTYPES = {"uint8": 1, "float16": 2}
MAX_SIDE = 8192  # Avatar.render's own limit
MAX_RENDER_FRAMES = 64
MAX_SEQUENCE_FRAMES = 100_000

AVATAR_ID = String(max_length=128, doc="the id load_avatar returned")
IMAGE_PARAMS = {
    "avatar_id": AVATAR_ID,
    "width": Integer(min=1, max=MAX_SIDE, doc="image width in pixels (camera_K is for this size)"),
    "height": Integer(min=1, max=MAX_SIDE, doc="image height in pixels"),
    "dtype": String(choices=tuple(RGBA_DTYPES), default="uint8", doc="uint8 0-255 or float16 0-1, premultiplied"),
}

# One load at a time: loading is rare and slow, and two requests for the same folder load it once.
_loading = threading.Lock()


@dataclass
class LoadedAvatar:
    """An avatar in ``ServerContext.avatars``; ``lock`` serialises its renders and reloads."""

    id: str
    path: Path
    checkpoint: str
    avatar: "Avatar"
    signature: tuple[Any, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)


def avatar_id_for(path: Path) -> str:
    return "avatar-" + hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:12]


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


def _pointer_state(path: Path, checkpoint: str) -> tuple[Any, ...]:
    """Which checkpoint the folder would load now: its record and the pointer file, as stats."""
    from backend.avatar.folder import CHECKPOINTS, record_path

    return _stat(record_path(path)), _stat(path / CHECKPOINTS / f"{checkpoint}.json")


def _checkpoint_state(path: Path, name: str) -> tuple[Any, ...]:
    from backend.avatar.folder import CHECKPOINTS

    folder = path / CHECKPOINTS
    return _stat(folder / f"{name}.json"), _stat(folder / f"{name}.safetensors")


def _current_signature(entry: LoadedAvatar) -> tuple[Any, ...]:
    return _pointer_state(entry.path, entry.checkpoint) + _checkpoint_state(entry.path, entry.avatar.checkpoint_name)


def loaded_avatar(server: "ServerContext", avatar_id: str) -> LoadedAvatar:
    with server.avatars_lock:
        entry = server.avatars.get(avatar_id)
    if entry is None:
        raise RequestError(NO_AVATAR, f"no avatar {avatar_id!r} is loaded (load_avatar returns the id to use)")
    return entry


@handler(
    "load_avatar",
    params={
        "path": FilePath(doc="the avatar folder (avatar.json + checkpoints/)"),
        "checkpoint": String(choices=CHECKPOINT_CHOICES, default="latest", doc="latest or best (held-out PSNR)"),
    },
)
def load_avatar_request(request: Request) -> dict:
    """Load a trained avatar for rendering (again only if it changed on disk); returns its id and info."""
    from backend.avatar import load_avatar

    server = request.server
    path = request.params["path"].resolve()
    checkpoint = request.params["checkpoint"]
    avatar_id = avatar_id_for(path)
    with _loading:
        with server.avatars_lock:
            entry = server.avatars.get(avatar_id)
        if entry is not None and entry.checkpoint == checkpoint and entry.signature == _current_signature(entry):
            return {"avatar_id": avatar_id, "info": entry.avatar.info()}
        pointer = _pointer_state(path, checkpoint)  # taken before loading: a change meanwhile reloads next time
        started = time.perf_counter()
        avatar = load_avatar(path, server.device, checkpoint=checkpoint)  # CheckpointError / ModelFileError name the file
        signature = pointer + _checkpoint_state(path, avatar.checkpoint_name)
        if entry is None:
            entry = LoadedAvatar(avatar_id, path, checkpoint, avatar, signature)
        else:
            with entry.lock:  # renders in progress finish with the previous weights
                entry.avatar, entry.checkpoint, entry.signature = avatar, checkpoint, signature
        with server.avatars_lock:
            server.avatars[avatar_id] = entry
    log.info(
        "avatar %s loaded from %s (checkpoint %s, step %d) in %.1f s",
        avatar_id, path, avatar.checkpoint_name, avatar.step, time.perf_counter() - started,
    )
    return {"avatar_id": avatar_id, "info": avatar.info()}


@handler("unload_avatar", params={"avatar_id": AVATAR_ID})
def unload_avatar_request(request: Request) -> dict:
    """Forget a loaded avatar and free its memory."""
    server = request.server
    avatar_id = request.params["avatar_id"]
    with server.avatars_lock:
        entry = server.avatars.pop(avatar_id, None)
    if entry is None:
        raise RequestError(NO_AVATAR, f"no avatar {avatar_id!r} is loaded")
    del entry  # our reference: the weights go once a render still using them has finished
    release_device(server.device)
    log.info("avatar %s unloaded", avatar_id)
    return {}


def _rgba(batch: "torch.Tensor", dtype: str) -> np.ndarray:
    """(b, 4, H, W) float premultiplied RGBA → (b, H, W, 4) ``dtype`` on the CPU."""
    import torch

    channels_last = batch.permute(0, 2, 3, 1).float()
    if dtype == "uint8":
        return (channels_last.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
    return channels_last.to(torch.float16).cpu().numpy()


def render_frames(entry: LoadedAvatar, frames: PoseFrames, size: tuple[int, int], dtype: str) -> np.ndarray:
    """(count, H, W, 4) premultiplied RGBA of ``frames``, holding the avatar's lock while rendering."""
    out = np.empty((frames.count, *size, 4), dtype=dtype)
    position = 0
    with entry.lock:
        try:
            for batch in entry.avatar.render_batches(frames.poses, frames.K, frames.world_to_camera, size):
                out[position : position + batch.shape[0]] = _rgba(batch, dtype)
                position += batch.shape[0]
        except ValueError as error:  # Avatar.render's own input checks
            raise BadRequest(f"arrays: {error}") from None
    return out


def _image_request(request: Request, max_frames: int) -> tuple[LoadedAvatar, PoseFrames, tuple[int, int], str]:
    params = request.params
    entry = loaded_avatar(request.server, params["avatar_id"])
    frames = pose_frames(request.arrays, max_frames)
    return entry, frames, (params["height"], params["width"]), params["dtype"]


def _check_reply_size(frames: int, size: tuple[int, int], dtype: str, hint: str) -> None:
    nbytes = frames * size[0] * size[1] * 4 * RGBA_DTYPES[dtype]
    if nbytes > wire.MAX_PAYLOAD_BYTES:
        raise BadRequest(
            f"{frames} frames of {size[1]}x{size[0]} {dtype} RGBA are {nbytes / 2**20:.0f} MiB, above the "
            f"{wire.MAX_PAYLOAD_BYTES >> 20} MiB a reply may carry; {hint}"
        )


@handler("render", params=IMAGE_PARAMS, arrays=pose_camera_schema())
def render_request(request: Request) -> Result:
    """Render B ≤ 64 frames: array ``rgba`` (B, H, W, 4) premultiplied, rows top-first; ``render_ms``."""
    entry, frames, size, dtype = _image_request(request, MAX_RENDER_FRAMES)
    _check_reply_size(frames.count, size, dtype, "request fewer frames or use render_sequence")
    started = time.perf_counter()
    rgba = render_frames(entry, frames, size, dtype)
    return Result({"render_ms": (time.perf_counter() - started) * 1e3}, {"rgba": rgba})


@handler("render_sequence", params=IMAGE_PARAMS, arrays=pose_camera_schema())
def render_sequence_request(request: Request) -> dict:
    """Stream frames one by one: events ``frame`` {index} with array ``rgba`` (1, H, W, 4); reply {frames}."""
    entry, frames, size, dtype = _image_request(request, MAX_SEQUENCE_FRAMES)
    _check_reply_size(1, size, dtype, "request a smaller image")
    chunk = entry.avatar.default_batch_size(size)  # the lock is released between chunks: live renders interleave
    for start in range(0, frames.count, chunk):
        rgba = render_frames(entry, frames.select(start, min(start + chunk, frames.count)), size, dtype)
        for offset in range(rgba.shape[0]):
            request.send_event("frame", {"index": start + offset}, {"rgba": rgba[offset : offset + 1]})
    return {"frames": frames.count}
