"""A trained avatar, loaded for rendering: ``load_avatar(path)`` → :class:`Avatar`.

``Avatar.render(poses, K, world_to_camera, resolution)`` turns per-frame SMPL-X parameters (the
``SmplxMotion.arrays()`` keys; any pose, including ones never seen in training) and OpenCV
cameras into **premultiplied** RGBA frames ``(B, H, W, 4)`` float32 in [0, 1], rows top-first.
Frames are processed in batches under ``torch.inference_mode``, with channels-last activations
on the CPU and float16 autocast on CUDA. ``render_sequence`` yields the frames one by one (for
long sequences: memory stays bounded); :func:`backend.render.bake` writes them to files.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.avatar.body import load_recorded_body
from backend.avatar.folder import CHECKPOINTS, AvatarRecord, read_record, record_path, validation_history
from backend.errors import CheckpointError
from backend.features.geometry import BodyRasterizer
from backend.paths import ModelFolders
from backend.server.device import select_device
from backend.train.checkpoint import Checkpoint, load_checkpoint, restore_training_state
from backend.train.config import config_from_dict
from backend.train.method import Method, method_class

PoseArrays = Mapping[str, np.ndarray]


def _resolution(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, (int, np.integer)):
        height = width = int(resolution)
    else:
        try:
            height, width = (int(v) for v in resolution)
        except (TypeError, ValueError):
            raise ValueError(f"resolution must be an int or (height, width), got {resolution!r}") from None
    if not (1 <= height <= 8192 and 1 <= width <= 8192):
        raise ValueError(f"resolution must be between 1 and 8192 pixels per side, got {height}x{width}")
    return height, width


def _frame_count(poses: PoseArrays) -> int:
    counts = {int(np.shape(value)[0]) for key, value in poses.items() if key != "betas" and np.ndim(value) == 2}
    if len(counts) != 1:
        raise ValueError(f"pose arrays must all be (frames, width) with the same frame count, got frame counts {sorted(counts)}")
    return counts.pop()


def _camera_rows(matrix: np.ndarray | torch.Tensor, shape: tuple[int, int], frames: int, name: str) -> np.ndarray:
    array = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float32)
    if array.shape == shape:
        return np.broadcast_to(array, (frames, *shape))
    if array.shape != (frames, *shape):
        raise ValueError(f"{name} must be {shape} or ({frames}, {shape[0]}, {shape[1]}) for {frames} frames, got {array.shape}")
    return array


class Avatar:
    """A trained avatar ready to render (see the module docstring)."""

    def __init__(self, path: Path, record: AvatarRecord, method: Method, geometry: BodyRasterizer, checkpoint: Checkpoint):
        self.path = path
        self.record = record
        self.method = method
        self.geometry = geometry
        self.step = checkpoint.step
        self.checkpoint_name = checkpoint.name
        self._validation = validation_history(checkpoint)

    @property
    def device(self) -> torch.device:
        return self.method.device

    def info(self) -> dict[str, Any]:
        """A JSON-ready description: method, steps, resolution, capture, body model (stand-in flag)."""
        body = self.record.body
        last_psnr = self._validation[-1]["psnr"] if self._validation else None
        return {
            "path": str(self.path),
            "method": self.record.method,
            "training_steps": self.step,
            "planned_steps": int(self.record.training.get("iterations", self.step)),
            "checkpoint": self.checkpoint_name,
            "resolution": list(self.record.resolution),
            "capture": asdict(self.record.capture),
            "body_models": {
                "smplx": {"label": body.label, "source": body.source, "is_standin": body.is_standin, "gender": body.gender}
            },
            "keyframes": len(self.record.keyframes),
            # JSON (and the wire) has no NaN: a diverged model's PSNR goes out as null.
            "validation_psnr": last_psnr if last_psnr is not None and math.isfinite(last_psnr) else None,
            "created": self.record.created,
            "device": str(self.device),
        }

    def default_batch_size(self, resolution: tuple[int, int]) -> int:
        """Frames per batch: on the CPU about 4 × 256² pixels (4 × 512² is slower per frame than 1 × 512²)."""
        if self.device.type == "cuda":
            return 8
        return max(1, (4 * 256 * 256) // (resolution[0] * resolution[1]))

    def render_batches(
        self,
        poses: PoseArrays,
        K: np.ndarray | torch.Tensor,
        world_to_camera: np.ndarray | torch.Tensor,
        resolution: int | Sequence[int],
        *,
        faceverse: Mapping[str, np.ndarray] | None = None,
        mano: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        identity: int = 0,
    ) -> Iterator[torch.Tensor]:
        """Yield (b, 4, H, W) premultiplied RGBA tensors in [0, 1], batch after batch, in frame order.

        ``poses``: per-frame SMPL-X arrays ``(B, width)`` by ``SmplxMotion.arrays()`` name (the
        avatar keeps its own body shape: ``betas`` are ignored); ``K`` (3, 3) or (B, 3, 3) and
        ``world_to_camera`` (4, 4) or (B, 4, 4) in the OpenCV convention, for an image of
        ``resolution`` (an int for square images, or (H, W)). Bad shapes or values raise a
        ValueError naming the parameter. ``faceverse`` / ``mano`` are for methods with face /
        hand branches (RAM-Avatar); ANR renders from the body alone and ignores them.
        """
        height, width = _resolution(resolution)
        frames = _frame_count(poses)
        K_rows = _camera_rows(K, (3, 3), frames, "K")
        w2c_rows = _camera_rows(world_to_camera, (4, 4), frames, "world_to_camera")
        step = batch_size or self.default_batch_size((height, width))
        if step < 1:
            raise ValueError(f"batch_size must be positive, got {step}")
        if not 0 <= identity < getattr(self.method.config, "identities", 1):
            raise ValueError(f"identity {identity} does not exist in this avatar")
        divisor = self.method.divisor
        padded = (-(-height // divisor) * divisor, -(-width // divisor) * divisor)  # extra rows/columns at the bottom/right
        for start in range(0, frames, step):
            rows = slice(start, min(start + step, frames))
            chunk = {key: value[rows] for key, value in poses.items() if key != "betas"}
            maps = self.geometry(chunk, K_rows[rows], w2c_rows[rows], padded)
            ids = torch.full((maps.batch,), identity, dtype=torch.long, device=self.device)
            yield self.method.render(maps, ids)[:, :, :height, :width]

    def render_sequence(self, poses: PoseArrays, K, world_to_camera, resolution, **options: Any) -> Iterator[np.ndarray]:
        """Yield one (H, W, 4) float32 premultiplied RGBA frame at a time (arguments as for ``render_batches``)."""
        for batch in self.render_batches(poses, K, world_to_camera, resolution, **options):
            for frame in batch.permute(0, 2, 3, 1).float().cpu().numpy():
                yield np.ascontiguousarray(frame)

    def render(self, poses: PoseArrays, K, world_to_camera, resolution, **options: Any) -> np.ndarray:
        """(B, H, W, 4) float32 premultiplied RGBA in [0, 1], rows top-first (arguments as for ``render_batches``)."""
        batches = self.render_batches(poses, K, world_to_camera, resolution, **options)
        return np.ascontiguousarray(torch.cat(list(batches)).permute(0, 2, 3, 1).float().cpu().numpy())


def build_method(record: AvatarRecord, source: Path, template_vertices: torch.Tensor, device: torch.device) -> Method:
    """The method an avatar record (read from ``source``) describes; config errors name the file."""
    try:
        cls = method_class(record.method)
        config = config_from_dict(cls.config_class, record.method_config, "method_config")
    except ValueError as error:
        raise CheckpointError(source, str(error)) from None
    return cls(config, template_vertices, device)


def load_avatar(
    path: str | Path, device: str = "auto", *, checkpoint: str = "latest", folders: ModelFolders | None = None
) -> Avatar:
    """Load the avatar in folder ``path`` for rendering.

    ``device``: auto | cpu | cuda. ``checkpoint``: ``latest`` (default), ``best`` (best held-out
    PSNR) or a checkpoint name. A missing, truncated or modified checkpoint raises
    :class:`~backend.errors.CheckpointError` naming the file; a missing body model raises
    :class:`~backend.errors.ModelFileError`.
    """
    path = Path(path)
    record = read_record(path)
    torch_device = torch.device(select_device(device))
    body = load_recorded_body(record.body, folders, torch_device)
    method = build_method(record, record_path(path), body.rest_vertices(), torch_device)
    saved = load_checkpoint(path / CHECKPOINTS, checkpoint)
    if saved.config.get("method") != record.method:
        raise CheckpointError(saved.path, f"is a {saved.config.get('method')!r} checkpoint, avatar.json says {record.method!r}")
    restore_training_state(saved, modules=method.render_modules(), global_rngs=False)
    method.prepare_inference()
    geometry = BodyRasterizer(body, np.asarray(record.body.betas, np.float32), method.needs, expand_offset=method.expand_offset)
    return Avatar(path, record, method, geometry, saved)
