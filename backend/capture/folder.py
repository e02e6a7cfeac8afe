"""A tracked capture folder: ``tracking.npz`` + frames (PNG/JPEG files or one video) + optional masks.

Layout::

    CAPTURE/
      tracking.npz          per-frame parameters (backend.capture.files)
      frames/000000.png …   RGB frames, sorted by name; or a single video file CAPTURE/video.mp4
      masks/000000.png …    optional foreground masks (white = person), same names/count as frames

Every frame and mask is checked against the capture's image size as it is read. A video is
decoded on demand (:class:`VideoFrames`), never held in memory as a whole.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from backend.capture.files import TRACKING_FILENAME, read_tracking
from backend.capture.motion import Tracking
from backend.errors import CaptureFormatError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
SIXTEEN_BIT_MAX = 65535


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _width_x_height(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def _last_line(error: Exception) -> str:
    """The telling part of an ffmpeg error: imageio_ffmpeg puts ffmpeg's own message last."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, ValueError) as error:  # also a truncated file, found only when the pixels are decoded
        raise CaptureFormatError(path, f"unreadable image ({error})") from None


def _wide_pixels(image: Image.Image) -> bool:
    """32-bit integer or float pixels: how Pillow opens 16-bit grayscale PNGs ("I;16", "I") and float images."""
    return image.mode.startswith("I") or image.mode == "F"


def _gray_levels(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W) uint8. 16-bit images are scaled to 0-255: ``convert("L")`` would clip them to white."""
    if not _wide_pixels(image):
        return np.asarray(image.convert("L"))
    if image.mode == "F":
        raise CaptureFormatError(path, "has floating-point pixels; save frames and masks as 8- or 16-bit PNG or JPEG")
    values = np.asarray(image).astype(np.int64)
    if values.min() < 0 or values.max() > SIXTEEN_BIT_MAX:
        raise CaptureFormatError(path, f"pixel values {values.min()}..{values.max()} exceed the 16-bit range")
    return ((values * 255 + SIXTEEN_BIT_MAX // 2) // SIXTEEN_BIT_MAX).astype(np.uint8)


def _frame_pixels(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    if _wide_pixels(image):
        return np.repeat(_gray_levels(image, path)[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def _mask_pixels(image: Image.Image, path: Path) -> np.ndarray:
    """(H, W) uint8, 255 = person: the alpha channel when the mask has one, else the gray levels."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if "A" in image.getbands():
        alpha = np.asarray(image.getchannel("A"))
        # An entirely opaque alpha cuts nothing out: such files (RGBA exports of gray masks) carry the mask in the colour.
        if alpha.min() < 255:
            return alpha
    return _gray_levels(image, path)


class VideoFrames:
    """The frames of a video, decoded on demand from one ffmpeg stream.

    The frame count and size come from the video itself when it is opened, without keeping any
    frame. Reading in increasing order (how :class:`backend.data.CaptureData` prepares its cache,
    and how held-out frames are evaluated) decodes each frame once and holds one frame at a time;
    reading an earlier frame than the last one restarts the stream from the beginning.
    """

    def __init__(self, path: Path):
        import imageio_ffmpeg

        self.path = path
        try:
            self.count = int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
        except (OSError, RuntimeError, ValueError) as error:
            raise CaptureFormatError(path, f"unreadable video ({_last_line(error)})") from None
        self._lock = threading.Lock()  # the stream is shared state: one reader at a time
        self._stream = None
        self._next_index = 0  # the frame the open stream yields next
        self._open()  # for the frame size; closed again until a frame is asked for
        self._close()

    def _open(self) -> None:
        import imageio_ffmpeg

        self._close()
        # The stream count_frames_and_secs counts (the first video stream), one output frame per decoded
        # frame as it counts them (passthrough: none duplicated or dropped to reach a constant rate).
        output = ["-map", "0:v:0", "-fps_mode", "passthrough"]
        stream = imageio_ffmpeg.read_frames(str(self.path), output_params=output)
        try:
            meta = next(stream)
        except (OSError, RuntimeError, StopIteration) as error:
            stream.close()
            raise CaptureFormatError(self.path, f"unreadable video ({_last_line(error)})") from None
        width, height = meta["size"]
        self.size: tuple[int, int] = (int(height), int(width))
        self._stream, self._next_index = stream, 0

    def _close(self) -> None:
        if self._stream is not None:
            self._stream.close()  # stops ffmpeg
            self._stream = None

    def read(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of frame ``index`` (0 <= index < count)."""
        with self._lock:
            if self._stream is None or index < self._next_index:
                self._open()
            while self._next_index <= index:
                try:
                    raw = next(self._stream)
                except StopIteration:
                    raise CaptureFormatError(
                        self.path, f"ended after {self._next_index} frames, but ffmpeg counted {self.count}"
                    ) from None
                except (OSError, RuntimeError) as error:
                    raise CaptureFormatError(
                        self.path, f"frame {self._next_index} is unreadable ({_last_line(error)})"
                    ) from None
                self._next_index += 1
            if self._next_index == self.count:
                self._close()  # read to the end: let ffmpeg exit
            return np.frombuffer(raw, np.uint8).reshape(*self.size, 3)


class CaptureFolder:
    """Validated access to a capture folder's frames, masks and tracking."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CaptureFormatError(self.path, "capture folder not found")
        self.tracking: Tracking = read_tracking(self.path / TRACKING_FILENAME)
        count = self.tracking.num_frames
        frames_dir = self.path / "frames"
        videos = sorted(p for p in self.path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        self._frame_files: list[Path] = []
        self._video: VideoFrames | None = None
        if frames_dir.is_dir():
            self._frame_files = _image_files(frames_dir)
            if not self._frame_files:
                raise CaptureFormatError(frames_dir, "holds no .png/.jpg frames")
            if len(self._frame_files) != count:
                raise CaptureFormatError(frames_dir, f"holds {len(self._frame_files)} frames, tracking has {count}")
            with _open_image(self._frame_files[0]) as image:  # the header only: no pixels decoded
                first_size = (image.height, image.width)
        elif videos:
            self._video = VideoFrames(videos[0])
            if self._video.count != count:
                raise CaptureFormatError(self._video.path, f"holds {self._video.count} frames, tracking has {count}")
            first_size = self._video.size
        else:
            raise CaptureFormatError(self.path, "no frames: expected a 'frames/' folder of images or a video file")
        masks_dir = self.path / "masks"
        self._mask_files = self._paired_masks(masks_dir) if masks_dir.is_dir() else []
        camera = self.tracking.camera
        self.image_size: tuple[int, int] = camera.image_size if camera is not None else first_size
        self._size_source = "the image_size in tracking.npz" if camera is not None else "the first frame"
        self._check_size(self._frame_files[0] if self._frame_files else self._video.path, first_size, "frame")

    def _paired_masks(self, masks_dir: Path) -> list[Path]:
        """The mask files in frame order (empty when ``masks_dir`` holds none)."""
        masks = _image_files(masks_dir)
        count = self.tracking.num_frames
        if masks and len(masks) != count:
            raise CaptureFormatError(masks_dir, f"holds {len(masks)} masks, tracking has {count}")
        if not masks or not self._frame_files:
            return masks  # a video's masks pair with its frames by sorted position
        # Masks pair with frames by file name (the extension may differ: JPEG frames, PNG masks); pairing
        # by sorted position alone would silently shift every mask after a missing or misnamed one.
        by_name = {mask.stem: mask for mask in masks}
        unmasked = next((frame for frame in self._frame_files if frame.stem not in by_name), None)
        if unmasked is not None:
            frame_names = {frame.stem for frame in self._frame_files}
            stray = next((mask for mask in masks if mask.stem not in frame_names), None)
            also = f" and {stray.name} matches no frame" if stray is not None else ""
            raise CaptureFormatError(
                masks_dir,
                f"has no mask for frame {unmasked.name}{also}; masks need the frames' file names (the extension may differ)",
            )
        return [by_name[frame.stem] for frame in self._frame_files]

    def _check_size(self, path: Path, size: tuple[int, int], what: str) -> None:
        if size != self.image_size:
            raise CaptureFormatError(
                path,
                f"{what} size {_width_x_height(size)} differs from the capture's image size "
                f"{_width_x_height(self.image_size)} ({self._size_source})",
            )

    def _read_image(self, path: Path, what: str, pixels: Callable[[Image.Image, Path], np.ndarray]) -> np.ndarray:
        with _open_image(path) as image:
            self._check_size(path, (image.height, image.width), what)
            return pixels(image, path)

    @property
    def num_frames(self) -> int:
        return self.tracking.num_frames

    @property
    def has_masks(self) -> bool:
        return bool(self._mask_files)

    def frame(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        index = range(self.num_frames)[index]  # negative indices count from the end; IndexError past it
        if self._video is not None:
            return self._video.read(index)
        return self._read_image(self._frame_files[index], "frame", _frame_pixels)

    def mask(self, index: int) -> np.ndarray | None:
        """(H, W) uint8 (255 = person), or None when the capture has no masks."""
        if not self._mask_files:
            return None
        return self._read_image(self._mask_files[index], "mask", _mask_pixels)
