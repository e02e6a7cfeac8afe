"""Training data: a capture at the training resolution with cached geometry, and the frame schedule."""

from __future__ import annotations

from backend.data.dataset import (
    CaptureData,
    FrameBatch,
    PreparationCancelled,
    resize_image,
    scale_intrinsics,
    scaled_resolution,
)
from backend.data.schedule import FrameSchedule

__all__ = [
    "CaptureData",
    "FrameBatch",
    "FrameSchedule",
    "PreparationCancelled",
    "resize_image",
    "scale_intrinsics",
    "scaled_resolution",
]
