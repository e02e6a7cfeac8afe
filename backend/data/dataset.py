"""A tracked capture prepared for training: frames and masks at the training resolution, the
cameras scaled to match, and the geometry maps of every frame (computed once: they are fixed).

What fits in ``cache_bytes`` is kept in memory (frames as uint8, maps as float16 with float32
UVs); anything larger is re-read / re-rasterized per batch, so long high-resolution captures do
not exhaust the memory. ``memory_bytes`` says what a capture would need.

Preparation can take minutes for a long capture; a ``cancelled`` callable (``Progress.cancelled``)
is polled after every frame read and every batch rasterized, and stops it with
:class:`PreparationCancelled`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from backend.capture.folder import CaptureFolder
from backend.capture.motion import SPLIT_TEST, SPLIT_TRAIN
from backend.errors import CaptureFormatError
from backend.features.geometry import PER_FRAME_KEYS, BodyRasterizer, GeometryMaps

DEFAULT_CACHE_BYTES = 2 << 30
PREPARE_BATCH = 16
MAP_CHANNELS = {"uv": 2, "normals": 3, "canonical": 3, "expanded": 4}  # expanded: its mask + canonical


class PreparationCancelled(Exception):
    """``cancelled()`` turned true while :class:`CaptureData` was reading or rasterizing frames."""


def map_bytes_per_pixel(needs: frozenset[str] | set[str]) -> int:
    """Cached bytes per pixel of the maps ``needs`` asks for: the mask (always there) and every
    map in float16, except the UVs, which stay float32 (``GeometryMaps.to``)."""
    half_channels = 1 + sum(MAP_CHANNELS[name] for name in needs if name != "uv")
    return 2 * half_channels + 4 * MAP_CHANNELS["uv"] * ("uv" in needs)


def scaled_resolution(image_size: Sequence[int], long_side: int, divisor: int = 1) -> tuple[int, int]:
    """(H, W) with the longer side about ``long_side`` and both sides multiples of ``divisor``."""
    height, width = (int(v) for v in image_size)
    if long_side < divisor or long_side < 1:
        raise ValueError(f"resolution {long_side} is smaller than the network's size step {divisor}")
    scale = long_side / max(height, width)
    return (
        max(divisor, round(height * scale / divisor) * divisor),
        max(divisor, round(width * scale / divisor) * divisor),
    )


def scale_intrinsics(K: np.ndarray, image_size: Sequence[int], resolution: Sequence[int]) -> np.ndarray:
    """Intrinsics (…, 3, 3) for ``image_size`` (H, W) rescaled to ``resolution`` (H', W')."""
    K = np.array(K, dtype=np.float32, copy=True)
    K[..., 0, :] *= resolution[1] / image_size[1]
    K[..., 1, :] *= resolution[0] / image_size[0]
    return K


def resize_image(image: np.ndarray, resolution: Sequence[int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, 3) uint8 image to (H', W'): area average when shrinking."""
    height, width = resolution
    if image.shape[:2] == (height, width):
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(image).resize((width, height), method))


@dataclass
class FrameBatch:
    """What a training or validation step sees."""

    frames: torch.Tensor  # (B,) capture frame indices
    images: torch.Tensor  # (B, 3, H, W) ground truth in [-1, 1] (the renderers' range)
    masks: torch.Tensor  # (B, 1, H, W) foreground masks in [0, 1]
    maps: GeometryMaps  # geometry of the posed template, float32
    identity: torch.Tensor  # (B,) identity index (multi-identity training)
    keyframe: bool = False  # ANR split optimisation: a keyframe step also trains the texture


class CaptureData:
    """Frames, masks, cameras and geometry maps of one capture at a training resolution.

    ``resolution`` is the longer image side (both sides become multiples of ``divisor``);
    ``identity`` labels the batches (multi-identity training); with ``visibility``, also finds
    which template triangles each training frame shows (``visible_faces``, for keyframes).
    ``cancelled`` (polled while preparing) stops the preparation with :class:`PreparationCancelled`.
    """

    def __init__(
        self,
        capture: str | Path | CaptureFolder,
        geometry: BodyRasterizer,
        resolution: int,
        *,
        divisor: int = 1,
        identity: int = 0,
        device: str | torch.device = "cpu",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        visibility: bool = False,
        cancelled: Callable[[], bool] | None = None,
    ):
        self.capture = capture if isinstance(capture, CaptureFolder) else CaptureFolder(capture)
        tracking = self.capture.tracking
        if tracking.camera is None:
            raise CaptureFormatError(self.capture.path / "tracking.npz", "has no camera; training needs camera_K and camera_world_to_camera")
        if not self.capture.has_masks:
            raise CaptureFormatError(self.capture.path, "has no masks/ folder; training needs a foreground mask per frame")
        self.geometry = geometry
        self.device = torch.device(device)
        self.identity = identity
        self.resolution = scaled_resolution(self.capture.image_size, resolution, divisor)
        self.K = scale_intrinsics(tracking.camera.K, self.capture.image_size, self.resolution)
        self.world_to_camera = tracking.camera.world_to_camera
        arrays = tracking.motion.arrays()
        self._poses = {key: arrays[key] for key in PER_FRAME_KEYS}
        self.train_frames = tracking.frames_of(SPLIT_TRAIN)
        self.test_frames = tracking.frames_of(SPLIT_TEST)
        if len(self.train_frames) == 0:
            raise CaptureFormatError(self.capture.path / "tracking.npz", "its split marks no frame for training")

        count, (height, width) = self.capture.num_frames, self.resolution
        self.image_bytes = count * height * width * 4  # uint8 RGB + mask
        self.map_bytes = count * height * width * map_bytes_per_pixel(geometry.needs)
        self.cache_images = self.image_bytes <= cache_bytes
        self.cache_maps = self.image_bytes * self.cache_images + self.map_bytes <= cache_bytes
        self._images: torch.Tensor | None = None
        self._maps: GeometryMaps | None = None
        self.visible_faces: torch.Tensor | None = None  # (len(train_frames), F) when visibility=True
        self._cancelled = cancelled
        self._prepare(visibility)

    @property
    def memory_bytes(self) -> int:
        """Bytes the in-memory caches hold."""
        return self.image_bytes * self.cache_images + self.map_bytes * self.cache_maps

    # ------------------------------------------------------------------ preparation

    def _poses_of(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {key: value[frames] for key, value in self._poses.items()}

    def _stop_if_cancelled(self) -> None:
        if self._cancelled is not None and self._cancelled():
            raise PreparationCancelled(f"cancelled while preparing {self.capture.path}")

    def _prepare(self, visibility: bool) -> None:
        count = self.capture.num_frames
        if self.cache_images:
            # Filled in place, in frame order (a video capture streams through once): no second copy.
            rgba = np.empty((count, 4, *self.resolution), np.uint8)
            for index in range(count):
                self._stop_if_cancelled()
                rgba[index] = self._read_rgba(index)
            self._images = torch.from_numpy(rgba)
        if not (self.cache_maps or visibility):
            return
        maps, visible = [], []
        train = np.zeros(count, bool)
        train[self.train_frames] = True
        for start in range(0, count, PREPARE_BATCH):
            self._stop_if_cancelled()
            frames = np.arange(start, min(start + PREPARE_BATCH, count))
            vertices = self.geometry.pose(self._poses_of(frames))
            K, w2c = self.K[frames], self.world_to_camera[frames]
            if self.cache_maps:
                maps.append(self.geometry.render(vertices, K, w2c, self.resolution).to("cpu", torch.float16))
            if visibility and train[frames].any():
                chosen = train[frames]
                visible.append(self.geometry.visible_faces(vertices[chosen], K[chosen], w2c[chosen], self.resolution).cpu())
        if maps:
            self._maps = GeometryMaps.cat(maps)
        if visible:
            self.visible_faces = torch.cat(visible)

    def _read_rgba(self, index: int) -> np.ndarray:
        """(4, H, W) uint8: RGB and mask at the training resolution."""
        image = resize_image(self.capture.frame(index), self.resolution)
        mask = resize_image(self.capture.mask(index), self.resolution)  # CaptureFolder checked both sizes
        return np.concatenate([image, mask[..., None]], axis=2).transpose(2, 0, 1)

    # ------------------------------------------------------------------ access

    def maps(self, frames: Sequence[int] | np.ndarray) -> GeometryMaps:
        """float32 geometry maps of ``frames`` on the training device."""
        frames = np.asarray(frames, dtype=np.int64)
        if self._maps is not None:
            maps = self._maps.index(torch.from_numpy(frames))
        else:
            maps = self.geometry(self._poses_of(frames), self.K[frames], self.world_to_camera[frames], self.resolution)
        return maps.to(self.device, torch.float32)

    def batch(self, frames: Sequence[int] | np.ndarray, keyframe: bool = False) -> FrameBatch:
        frames = np.asarray(frames, dtype=np.int64)
        if self._images is not None:
            rgba = self._images[torch.from_numpy(frames)]
        else:
            # Read in increasing order: a video capture decodes forward, restarting at most once per batch.
            read = {index: self._read_rgba(index) for index in sorted(set(frames.tolist()))}
            rgba = torch.from_numpy(np.stack([read[index] for index in frames.tolist()]))
        rgba = rgba.to(self.device).float() / 255.0
        return FrameBatch(
            frames=torch.from_numpy(frames),
            images=rgba[:, :3] * 2 - 1,
            masks=rgba[:, 3:4],
            maps=self.maps(frames),
            identity=torch.full((len(frames),), self.identity, dtype=torch.long, device=self.device),
            keyframe=keyframe,
        )
