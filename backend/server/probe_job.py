"""A diagnostic job: paced gradient descent on a fixed least-squares problem.

It exercises the whole job machinery with controlled timing and no model files: JSON-lines
progress with losses and ETA, preview images, checkpoints (safetensors, written atomically),
polite cancellation, and, on request, a crash at a chosen step. Started by the server as
``python -m backend.server.probe_job`` with its parameters in ``$NEURAL_AVATAR_JOB_DIR/job.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from backend.errors import CheckpointError
from backend.progress import JOB_DIR_ENV, Progress, make_progress

CHECKPOINT_NAME = "probe.safetensors"
PREVIEW_SIZE = 64


class ProbeFailure(RuntimeError):
    """The crash asked for with ``fail_at_step``."""


def _problem(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((256, 16)).astype(np.float32)
    truth = rng.standard_normal(16).astype(np.float32)
    targets = inputs @ truth + 0.01 * rng.standard_normal(256).astype(np.float32)
    return inputs, targets


def save_checkpoint(path: Path, weights: np.ndarray, step: int) -> None:
    from safetensors.numpy import save_file

    temp = path.with_name(f".{path.name}.tmp")
    save_file({"weights": weights, "step": np.array([step], dtype=np.int64)}, str(temp))
    os.replace(temp, path)


def load_checkpoint(path: Path) -> tuple[np.ndarray, int]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
        return tensors["weights"], int(tensors["step"][0])
    except (OSError, SafetensorError, KeyError, IndexError) as error:
        raise CheckpointError(path, f"not a probe checkpoint ({error})") from None


def _preview(weights: np.ndarray) -> np.ndarray:
    """The 16 weights as a 4x4 grid: red positive, blue negative."""
    scaled = np.clip(weights.reshape(4, 4) / (np.abs(weights).max() + 1e-8), -1.0, 1.0)
    image = np.zeros((4, 4, 4), dtype=np.float32)
    image[..., 0] = np.maximum(scaled, 0.0)
    image[..., 2] = np.maximum(-scaled, 0.0)
    image[..., 3] = 1.0
    return image.repeat(PREVIEW_SIZE // 4, 0).repeat(PREVIEW_SIZE // 4, 1)


def run_probe(
    out_dir: Path,
    progress: Progress,
    *,
    steps: int = 100,
    step_seconds: float = 0.05,
    fail_at_step: int | None = None,
    preview_every: int = 10,
) -> Path:
    """Run until ``steps`` or cancellation; always leaves a checkpoint. Returns its path."""
    inputs, targets = _problem()
    learning_rate = float(1.0 / np.linalg.eigvalsh(inputs.T @ inputs / len(inputs)).max())
    weights = np.zeros(inputs.shape[1], dtype=np.float32)
    checkpoint = out_dir / CHECKPOINT_NAME
    completed = 0
    try:
        while completed < steps:
            if progress.cancelled():
                progress.log(f"cancelled after step {completed}")
                break
            if fail_at_step is not None and completed + 1 == fail_at_step:
                raise ProbeFailure(f"probe job failing at step {fail_at_step} as requested (fail_at_step)")
            residual = inputs @ weights - targets
            weights = weights - learning_rate * (inputs.T @ residual / len(inputs)).astype(np.float32)
            completed += 1
            loss = float(np.mean(residual**2))
            preview = _preview(weights) if preview_every and completed % preview_every == 0 else None
            progress.update(completed, steps, losses={"mse": loss}, message="fitting", preview=preview)
            time.sleep(step_seconds)
    finally:
        save_checkpoint(checkpoint, weights, completed)
    return checkpoint


def main() -> int:
    job_dir = Path(os.environ[JOB_DIR_ENV])
    params = json.loads((job_dir / "job.json").read_text(encoding="utf-8"))["params"]
    with make_progress("jsonl", "probe") as progress:
        run_probe(job_dir, progress, **params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
