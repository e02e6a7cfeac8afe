"""A tracked capture folder: ``tracking.npz`` + frames (PNG/JPEG files or one video) + optional masks.

Layout::

    CAPTURE/
      tracking.npz          per-frame parameters (backend.capture.files)
      frames/000000.png …   RGB frames, sorted by name; or a single video file CAPTURE/video.mp4
      masks/000000.png …    optional foreground masks (white = person), same names/count as frames
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from backend.capture.files import TRACKING_FILENAME, read_tracking
from backend.capture.motion import Tracking
from backend.errors import CaptureFormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert(mode))
    except (OSError, ValueError) as error:
        raise CaptureFormatError(path, f"unreadable image ({error})") from None


class CaptureFolder:
    """Validated access to a capture folder's frames, masks and tracking."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CaptureFormatError(self.path, "capture folder not found")
        self.tracking: Tracking = read_tracking(self.path / TRACKING_FILENAME)
        frames_dir = self.path / "frames"
        videos = sorted(p for p in self.path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        self._frame_files: list[Path] = []
        self._video: Path | None = None
        if frames_dir.is_dir():
            self._frame_files = _image_files(frames_dir)
            if not self._frame_files:
                raise CaptureFormatError(frames_dir, "holds no .png/.jpg frames")
        elif videos:
            self._video = videos[0]
        else:
            raise CaptureFormatError(self.path, "no frames: expected a 'frames/' folder of images or a video file")
        masks_dir = self.path / "masks"
        self._mask_files = _image_files(masks_dir) if masks_dir.is_dir() else []
        count = self.tracking.num_frames
        if self._frame_files and len(self._frame_files) != count:
            raise CaptureFormatError(frames_dir, f"holds {len(self._frame_files)} frames, tracking has {count}")
        if self._mask_files and len(self._mask_files) != count:
            raise CaptureFormatError(masks_dir, f"holds {len(self._mask_files)} masks, tracking has {count}")
        first = self.frame(0)
        if self.tracking.camera is not None and first.shape[:2] != self.tracking.camera.image_size:
            raise CaptureFormatError(
                self._frame_files[0] if self._frame_files else self._video,
                f"frame size {first.shape[1]}x{first.shape[0]} differs from the tracking's image_size "
                f"{self.tracking.camera.image_size[1]}x{self.tracking.camera.image_size[0]}",
            )
        self.image_size: tuple[int, int] = first.shape[:2]

    @property
    def num_frames(self) -> int:
        return self.tracking.num_frames

    @property
    def has_masks(self) -> bool:
        return bool(self._mask_files)

    @cached_property
    def _video_frames(self) -> np.ndarray:
        import imageio_ffmpeg

        assert self._video is not None
        try:
            reader = imageio_ffmpeg.read_frames(str(self._video))
            meta = next(reader)
            width, height = meta["size"]
            frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
        except (OSError, RuntimeError, StopIteration) as error:
            raise CaptureFormatError(self._video, f"unreadable video ({error})") from None
        if len(frames) != self.tracking.num_frames:
            raise CaptureFormatError(self._video, f"holds {len(frames)} frames, tracking has {self.tracking.num_frames}")
        return np.stack(frames)

    def frame(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        if self._video is not None:
            return self._video_frames[index]
        return _read_image(self._frame_files[index], "RGB")

    def mask(self, index: int) -> np.ndarray | None:
        """(H, W) uint8 (255 = person), or None when the capture has no masks."""
        if not self._mask_files:
            return None
        return _read_image(self._mask_files[index], "L")
