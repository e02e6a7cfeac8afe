"""Evaluation of an avatar on a capture's held-out frames: metrics JSON + comparison image.

The avatar renders the held-out poses with the capture's cameras at the avatar's training
resolution (or ``resolution``); the ground truth is the frame times its mask, i.e. the person
over black, and the render is the premultiplied foreground (also over black). Reported: mean
PSNR, SSIM, LPIPS (when LPIPS weights are present), and temporal consistency over consecutive
held-out frames — ``temporal_error`` (how much frame-to-frame change differs from the ground
truth's) and tLPIPS (when LPIPS weights are present).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.avatar.avatar import Avatar
from backend.capture.folder import CaptureFolder
from backend.capture.motion import SPLIT_TEST
from backend.data.dataset import resize_image, scale_intrinsics, scaled_resolution
from backend.errors import CaptureFormatError
from backend.metrics import images_to_tensor, load_lpips, lpips, psnr, ssim, temporal_error, tlpips
from backend.progress import Progress, make_progress
from backend.train.checkpoint import write_json_atomic

METRICS_NAME = "metrics.json"
COMPARISON_NAME = "comparison.png"
COMPARISON_ROWS = 4
ERROR_GAIN = 4.0  # the error panel shows |render − truth| × 4


@dataclass
class EvaluationFrames:
    frames: np.ndarray  # capture frame indices
    truth: np.ndarray  # (N, H, W, 3) float32 in [0, 1]: the person over black
    render: np.ndarray  # (N, H, W, 3) float32 in [0, 1]: the premultiplied render


def error_panel(render: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(H, W, 3) float heat map of the mean absolute error (black → red → yellow → white)."""
    error = np.clip(np.abs(render - truth).mean(axis=-1) * ERROR_GAIN, 0.0, 1.0)
    return np.stack([np.clip(3 * error, 0, 1), np.clip(3 * error - 1, 0, 1), np.clip(3 * error - 2, 0, 1)], axis=-1)


def comparison_image(result: EvaluationFrames, rows: int = COMPARISON_ROWS) -> np.ndarray:
    """uint8 grid: one row per frame (evenly spaced), columns ground truth | render | error."""
    picks = np.unique(np.linspace(0, len(result.frames) - 1, min(rows, len(result.frames))).round().astype(int))
    lines = [np.concatenate([result.truth[i], result.render[i], error_panel(result.render[i], result.truth[i])], axis=1) for i in picks]
    grid = np.nan_to_num(np.concatenate(lines, axis=0))  # a diverged render's NaN pixels show black
    return (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8)


def mean_psnr(frame_psnr: torch.Tensor) -> float:
    """Mean of per-frame PSNRs (dB). NaN when any frame is NaN (a render holding NaN: a diverged
    model must not score well); +inf frames (a perfect match, e.g. nobody in view) are left out
    unless every frame is perfect."""
    if frame_psnr.isnan().any():
        return math.nan
    finite = frame_psnr[torch.isfinite(frame_psnr)]
    return float(finite.mean()) if finite.numel() else math.inf


def consecutive_runs(frames: np.ndarray) -> list[np.ndarray]:
    """Positions of runs of consecutive frame indices (temporal metrics only compare neighbours)."""
    breaks = np.flatnonzero(np.diff(frames) != 1) + 1
    return [run for run in np.split(np.arange(len(frames)), breaks) if len(run) >= 2]


def render_held_out(
    avatar: Avatar,
    capture: CaptureFolder,
    *,
    resolution: int | None = None,
    progress: Progress | None = None,
) -> EvaluationFrames:
    """Render the capture's test frames (all frames when it has no split) next to their ground truth."""
    progress = progress or make_progress("none")
    tracking = capture.tracking
    if tracking.camera is None:
        raise CaptureFormatError(capture.path / "tracking.npz", "has no camera, so renders cannot be compared with the frames")
    if not capture.has_masks:
        # Without masks the comparison would include the background, which the avatar never renders.
        raise CaptureFormatError(
            capture.path, "has no masks/ folder; evaluation compares with frame x mask and needs a foreground mask per frame"
        )
    frames = tracking.frames_of(SPLIT_TEST)
    if len(frames) == 0:
        frames = np.arange(capture.num_frames)
    size = scaled_resolution(capture.image_size, resolution or max(avatar.record.resolution))
    K = scale_intrinsics(tracking.camera.K[frames], capture.image_size, size)
    arrays = tracking.motion.arrays()
    poses = {key: value[frames] for key, value in arrays.items() if key != "betas"}
    renders = []
    for index, frame in enumerate(avatar.render_sequence(poses, K, tracking.camera.world_to_camera[frames], size)):
        renders.append(frame[..., :3])
        progress.update(index + 1, len(frames), message="rendering held-out frames")
    truth = []
    for index in frames:
        image = resize_image(capture.frame(int(index)), size).astype(np.float32) / 255.0
        mask = resize_image(capture.mask(int(index)), size).astype(np.float32) / 255.0
        truth.append(image * mask[..., None])
    return EvaluationFrames(frames=frames, truth=np.stack(truth), render=np.stack(renders))


def image_metrics(result: EvaluationFrames) -> dict[str, Any]:
    """Mean PSNR / SSIM / LPIPS and the temporal figures of rendered frames against the truth."""
    render, truth = images_to_tensor(result.render), images_to_tensor(result.truth)
    frame_psnr = psnr(render, truth)
    network = load_lpips()
    frame_lpips = lpips(render, truth, network=network) if network is not None else None
    runs = consecutive_runs(result.frames)
    pairs = sum(len(run) - 1 for run in runs)
    temporal = tl = None
    if pairs:
        temporal = sum(float(temporal_error(render[run], truth[run])) * (len(run) - 1) for run in runs) / pairs
        if network is not None:
            tl = sum(float(tlpips(render[run], truth[run], network=network)) * (len(run) - 1) for run in runs) / pairs
    return {
        "psnr": mean_psnr(frame_psnr),
        "ssim": float(ssim(render, truth).mean()),
        "lpips": None if frame_lpips is None else float(frame_lpips.mean()),
        "temporal_error": temporal,
        "tlpips": tl,
        "frame_psnr": [float(v) for v in frame_psnr],
    }


def evaluate(
    avatar: Avatar,
    capture: str | Path | CaptureFolder,
    out_dir: str | Path | None = None,
    *,
    resolution: int | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of ``avatar`` on the held-out frames of ``capture``; with ``out_dir``, also writes
    ``metrics.json`` and ``comparison.png`` (ground truth | render | error) there."""
    folder = capture if isinstance(capture, CaptureFolder) else CaptureFolder(capture)
    result = render_held_out(avatar, folder, resolution=resolution, progress=progress)
    metrics = image_metrics(result)
    report = {
        "avatar": str(avatar.path),
        "checkpoint": avatar.checkpoint_name,
        "training_steps": avatar.step,
        "capture": str(folder.path),
        "split": "test" if len(folder.tracking.frames_of(SPLIT_TEST)) else "all",
        "frames": [int(f) for f in result.frames],
        "resolution": list(result.truth.shape[1:3]),
        "background": "black (ground truth = frame x mask, render = premultiplied foreground)",
        **metrics,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / METRICS_NAME, _json_safe(report))
        Image.fromarray(comparison_image(result)).save(out / COMPARISON_NAME)
        report["files"] = {"metrics": str(out / METRICS_NAME), "comparison": str(out / COMPARISON_NAME)}
    return report


def _json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null (JSON has neither), lists included (frame_psnr)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value
