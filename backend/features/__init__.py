"""Per-pixel avatar inputs: posed-template geometry maps (fixed, cached during training) and the
learnable lookups on top of them (UV neural texture, triplane), plus ANR's keyframe selection.

Typical use::

    geometry = BodyRasterizer(body, betas, needs=("uv", "normals"))
    maps = geometry(poses, K, world_to_camera, (H, W))      # GeometryMaps, no gradients
    neural = NeuralTexture(8, 256)(maps.uv, maps.mask)       # (B, 8, H, W), differentiable
"""

from __future__ import annotations

from backend.features.geometry import MAP_NAMES, PER_FRAME_KEYS, BodyRasterizer, GeometryMaps, smplx_parameters
from backend.features.keyframes import KeyframeSelection, keyframe_count, select_keyframes
from backend.features.textures import NeuralTexture
from backend.features.triplane import Triplane

__all__ = [
    "MAP_NAMES",
    "PER_FRAME_KEYS",
    "BodyRasterizer",
    "GeometryMaps",
    "KeyframeSelection",
    "NeuralTexture",
    "Triplane",
    "keyframe_count",
    "select_keyframes",
    "smplx_parameters",
]
