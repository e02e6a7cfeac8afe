"""Baking: render a pose sequence with an avatar into RGBA PNG files (and optionally an MP4).

The CLI's ``render`` command and the server's ``bake`` request both call :func:`bake`.
PNGs hold *straight* (unassociated) alpha, as the PNG format defines; the MP4 shows the avatar
composited over a plain background (black by default), since H.264 has no alpha channel.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from backend.avatar.avatar import Avatar
from backend.capture.files import read_motion
from backend.capture.motion import Tracking
from backend.errors import CaptureFormatError
from backend.progress import Progress, make_progress
from backend.render.camera import motion_cameras

VIDEO_NAME = "render.mp4"


@dataclass
class BakeResult:
    out_dir: Path
    frames: list[int]  # motion frame indices rendered, in order
    files: list[Path] = field(default_factory=list)
    video: Path | None = None
    resolution: tuple[int, int] = (0, 0)
    cancelled: bool = False
    seconds: float = 0.0


def straight_rgba(premultiplied: np.ndarray) -> np.ndarray:
    """(H, W, 4) premultiplied float RGBA in [0, 1] → uint8 RGBA with straight alpha."""
    alpha = premultiplied[..., 3:4]
    colour = np.where(alpha > 1e-6, premultiplied[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    rgba = np.concatenate([colour, alpha], axis=-1)
    return (np.clip(rgba, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def over_background(premultiplied: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """(…, 4) premultiplied RGBA over an opaque colour → (…, 3) uint8."""
    colour = premultiplied[..., :3] + (1.0 - premultiplied[..., 3:4]) * np.asarray(background, np.float32)
    return (np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def frame_file_name(index: int, first_frame: int | None = None) -> str:
    """``{index:06d}.png`` for motion frame ``index``; with ``first_frame`` (the scene frame of motion
    frame 0) ``frame_{first_frame + index:06d}.png``, the names the add-on's bake expects."""
    if first_frame is None:
        return f"{index:06d}.png"
    return f"frame_{first_frame + index:06d}.png"


class _VideoWriter:
    """H.264 through imageio-ffmpeg; odd sizes get one padding row/column (yuv420p needs even sizes)."""

    def __init__(self, path: Path, resolution: tuple[int, int], fps: float):
        import imageio_ffmpeg

        self.height, self.width = resolution
        self.pad = (self.height % 2, self.width % 2)
        size = (self.width + self.pad[1], self.height + self.pad[0])
        self._writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, macro_block_size=1, quality=7)
        self._writer.send(None)

    def write(self, rgb: np.ndarray) -> None:
        if any(self.pad):
            rgb = np.pad(rgb, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        self._writer.send(np.ascontiguousarray(rgb))

    def close(self) -> None:
        self._writer.close()


def bake(
    avatar: Avatar,
    tracking: Tracking | str | Path,
    out_dir: str | Path,
    frames: Sequence[int] | None = None,
    mp4: bool = False,
    progress: Progress | None = None,
    *,
    resolution: int | None = None,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    batch_size: int | None = None,
    first_frame: int | None = None,
) -> BakeResult:
    """Render ``frames`` (default: all) of a motion into ``out_dir/000000.png …`` (+ ``render.mp4``).

    ``tracking``: a :class:`Tracking`, or a path to a capture folder, ``tracking.npz`` or AMASS
    ``.npz``. Tracked cameras are used (rescaled to ``resolution`` on the longer side when
    given); a motion without a camera gets :func:`backend.render.camera.default_camera`
    (``resolution`` squared, default 512). PNG names are the motion's frame indices, or with
    ``first_frame`` the scene's frame numbers as Blender counts them (:func:`frame_file_name`).
    Cancelling through ``progress`` stops after the current frame and keeps what was written.
    """
    progress = progress or make_progress("none")
    source = Path("<tracking>")
    if not isinstance(tracking, Tracking):
        source = Path(tracking)
        tracking = read_motion(source)
    count = tracking.num_frames
    chosen = list(range(count)) if frames is None else [int(f) for f in frames]
    bad = [f for f in chosen if not 0 <= f < count]
    if bad or not chosen:
        raise CaptureFormatError(source, f"frames {bad[:5] or chosen} are not all in the motion's range 0..{count - 1}")
    K, world_to_camera, size = motion_cameras(tracking, avatar.geometry, resolution)
    arrays = tracking.motion.arrays()
    poses = {key: value[chosen] for key, value in arrays.items() if key != "betas"}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = BakeResult(out_dir=out, frames=[], resolution=size)
    video = _VideoWriter(out / VIDEO_NAME, size, tracking.motion.fps) if mp4 else None
    start = time.perf_counter()
    try:
        stream = avatar.render_sequence(poses, K[chosen], world_to_camera[chosen], size, batch_size=batch_size)
        for index, frame in zip(chosen, stream):
            path = out / frame_file_name(index, first_frame)
            Image.fromarray(straight_rgba(frame), "RGBA").save(path, format="PNG", compress_level=3)
            if video is not None:
                video.write(over_background(frame, background))
            result.frames.append(index)
            result.files.append(path)
            progress.update(len(result.frames), len(chosen), message=f"rendered frame {index}")
            if progress.cancelled():
                result.cancelled = True
                break
    finally:
        if video is not None:
            video.close()
            result.video = out / VIDEO_NAME
    result.seconds = time.perf_counter() - start
    return result
