"""Rendering with trained avatars: baking sequences to files, cameras for motions, evaluation."""

from __future__ import annotations

from backend.render.bake import BakeResult, bake
from backend.render.camera import default_camera, motion_cameras
from backend.render.evaluate import evaluate

__all__ = ["BakeResult", "bake", "default_camera", "evaluate", "motion_cameras"]
