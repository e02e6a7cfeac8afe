"""ANR's keyframe selection: greedily add the frame that shows the most body surface not yet
seen by the frames chosen so far ("cumulative silhouette coverage"), so that a few keyframes
(under 10% of the video in the paper) cover the whole body for learning the neural texture.

Surface is measured on the template: each visible triangle counts with its rest-pose area.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeyframeSelection:
    frames: tuple[int, ...]  # chosen rows, in the order they were picked
    gains: tuple[float, ...]  # surface each one added (same units as the weights)
    coverage: float  # fraction of the total visible surface the chosen frames cover together


def select_keyframes(visible: torch.Tensor, weights: torch.Tensor, count: int) -> KeyframeSelection:
    """Pick up to ``count`` rows of ``visible`` (N, F) bool (frame × triangle) greedily.

    Each step takes the frame adding the largest ``weights`` (F,) sum of newly covered triangles
    (the earliest frame on ties); it stops early once no frame adds anything.
    """
    if visible.dim() != 2 or visible.dtype != torch.bool:
        raise ValueError(f"visible must be a (frames, triangles) bool tensor, got {visible.dtype} {tuple(visible.shape)}")
    if weights.shape != (visible.shape[1],):
        raise ValueError(f"weights must have shape ({visible.shape[1]},), got {tuple(weights.shape)}")
    if count < 1:
        raise ValueError(f"keyframe count must be at least 1, got {count}")
    seen = visible.double()
    weights = weights.to(seen)
    total = float((visible.any(0).double() * weights).sum())
    uncovered = torch.ones_like(weights)
    frames, gains = [], []
    for _ in range(min(count, visible.shape[0])):
        gain = seen @ (weights * uncovered)
        best = int(torch.argmax(gain))
        if float(gain[best]) <= 0:
            break
        frames.append(best)
        gains.append(float(gain[best]))
        uncovered = uncovered * (~visible[best]).to(uncovered)
    covered = float(((1 - uncovered) * weights).sum())
    return KeyframeSelection(tuple(frames), tuple(gains), covered / total if total > 0 else 0.0)


def keyframe_count(frames: int, fraction: float) -> int:
    """How many keyframes a fraction of ``frames`` asks for (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"keyframe fraction must be in (0, 1], got {fraction}")
    return max(1, round(frames * fraction))
