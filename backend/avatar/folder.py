"""The avatar folder: what training writes and :func:`backend.avatar.load_avatar` reads.

Layout::

    AVATAR/
      avatar.json          this record: method, configs, training resolution, the capture it was
                           trained on, the body model (incl. stand-in flag and identity), keyframes
      checkpoints/         atomic safetensors + JSON checkpoints (backend.train.checkpoint);
                           ``latest.json`` / ``best.json`` name the newest / best-validated one
      validation/          the latest validation preview (PNG)

``avatar.json`` is written (atomically) once the first checkpoint of a new run exists, so a
folder holding it can always be resumed; it describes every checkpoint in the folder. A
resumed run rewrites it only to record a new iteration count.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import CheckpointError
from backend.train.checkpoint import Checkpoint, checkpoint_write_errors, write_json_atomic

AVATAR_FORMAT = "neural-avatar-avatar"
AVATAR_VERSION = 1
RECORD_NAME = "avatar.json"
CHECKPOINTS = "checkpoints"
VALIDATION = "validation"


@dataclass
class BodyRecord:
    """The body model an avatar was trained with; rendering needs the same topology and identity."""

    family: str
    label: str
    source: str  # the model file (for stand-ins: where it was generated)
    is_standin: bool
    gender: str
    num_vertices: int
    num_faces: int
    betas: list[float]


@dataclass
class CaptureRecord:
    path: str
    num_frames: int
    image_size: list[int]  # (H, W) of the capture's frames
    train_frames: int
    test_frames: int
    fps: float


@dataclass
class AvatarRecord:
    method: str
    method_config: dict[str, Any]
    training: dict[str, Any]
    resolution: list[int]  # (H, W) the avatar was trained at
    capture: CaptureRecord
    body: BodyRecord
    keyframes: list[int] = field(default_factory=list)  # capture frame indices (split optimisation)
    keyframe_coverage: float = 0.0
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"format": AVATAR_FORMAT, "format_version": AVATAR_VERSION, **asdict(self)}


def record_path(folder: str | Path) -> Path:
    return Path(folder) / RECORD_NAME


def write_record(folder: str | Path, record: AvatarRecord) -> Path:
    folder = Path(folder)
    path = record_path(folder)
    with checkpoint_write_errors(path):
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record.to_json())
    return path


def validation_history(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The held-out PSNR history training stored in ``checkpoint`` (``{"step", "psnr", "split"}``
    entries, oldest first; a diverged model's PSNR is NaN); malformed → :class:`CheckpointError`."""
    history = checkpoint.meta.get("validation") or []
    well_formed = isinstance(history, list) and all(
        isinstance(entry, dict)
        and isinstance(entry.get("step"), int)
        and isinstance(entry.get("psnr"), (int, float))
        and not isinstance(entry.get("psnr"), bool)
        for entry in history
    )
    if not well_formed:
        raise CheckpointError(checkpoint.path, "meta.validation must be a list of {\"step\": int, \"psnr\": number} entries")
    return history


def read_record(folder: str | Path) -> AvatarRecord:
    """Read and check ``avatar.json``; problems raise :class:`CheckpointError` naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "avatar folder not found")
    path = record_path(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "missing: this folder holds no trained avatar (train one with 'python -m backend train')") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(path, f"unreadable avatar record ({error})") from None
    if not isinstance(data, dict) or data.get("format") != AVATAR_FORMAT:
        raise CheckpointError(path, f"is not a {AVATAR_FORMAT} record")
    version = data.get("format_version")
    if not isinstance(version, int) or version > AVATAR_VERSION:
        raise CheckpointError(path, f"has format version {version!r}; this program reads up to {AVATAR_VERSION} (update it)")
    try:
        capture = CaptureRecord(**data["capture"])
        body = BodyRecord(**data["body"])
        record = AvatarRecord(
            method=str(data["method"]),
            method_config=dict(data["method_config"]),
            training=dict(data["training"]),
            resolution=[int(v) for v in data["resolution"]],
            capture=capture,
            body=body,
            keyframes=[int(v) for v in data.get("keyframes", [])],
            keyframe_coverage=float(data.get("keyframe_coverage", 0.0)),
            created=str(data.get("created", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(path, f"is missing fields or has fields of the wrong type ({type(error).__name__}: {error})") from None
    if len(record.resolution) != 2 or min(record.resolution) < 1:
        raise CheckpointError(path, f"resolution must be two positive sizes, got {record.resolution}")
    return record
