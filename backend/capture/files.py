"""Reading and writing motion files: the project's ``tracking.npz`` and AMASS-style ``.npz``.

Both are plain ``.npz`` archives read with ``allow_pickle=False``; every problem is reported
as a ``CaptureFormatError`` naming the file and the key. The layouts are documented in the
README ("Data formats").
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from backend.capture.motion import (
    SMPLX_POSE_PARTS,
    CameraTrack,
    FaceVerseTrack,
    ManoTrack,
    SmplxMotion,
    Tracking,
)
from backend.errors import CaptureFormatError

TRACKING_FORMAT = "neural-avatar-tracking"
TRACKING_VERSION = 1
TRACKING_FILENAME = "tracking.npz"

# AMASS pose widths: SMPL-X (55 joints), SMPL-H (52 joints), SMPL (24 joints).
AMASS_FAMILIES = {165: "smplx", 156: "smplh", 72: "smpl"}
AMASS_FPS_KEYS = ("mocap_frame_rate", "mocap_framerate", "fps")


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise CaptureFormatError(path, "file not found")
    if path.is_dir():
        raise CaptureFormatError(path, "is a folder, expected an .npz file")
    with open(path, "rb") as stream:
        if stream.read(4) != b"PK\x03\x04":
            raise CaptureFormatError(path, "not an .npz archive (no zip signature at the start)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise CaptureFormatError(path, "holds Python objects (pickled data), which are not accepted") from None
        raise CaptureFormatError(path, f"unreadable .npz: {error}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise CaptureFormatError(path, f"not a valid .npz archive ({error})") from None


def _string(data: dict[str, np.ndarray], key: str, default: str) -> str:
    if key not in data:
        return default
    value = data[key]
    if value.size != 1:
        raise ValueError(f"'{key}' must be one string, got an array of shape {value.shape}")
    if value.dtype.kind == "S":
        return value.item().decode("utf-8", "replace").strip().lower()
    if value.dtype.kind == "U":
        return str(value.item()).strip().lower()
    raise ValueError(f"'{key}' must be a string, got an array of {value.dtype}")


def _scalar(data: dict[str, np.ndarray], key: str) -> float:
    value = np.asarray(data[key])
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise ValueError(f"'{key}' must be a single number, got shape {value.shape} of {value.dtype}")
    return float(value.reshape(-1)[0])


def _per_frame_or_constant(value: np.ndarray, frames: int, shape: tuple[int, ...], key: str) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if value.shape == shape:
        return np.broadcast_to(value, (frames, *shape)).copy()
    if value.shape == (frames, *shape):
        return value
    raise ValueError(f"'{key}' must be {shape} or ({frames}, {', '.join(map(str, shape))}), got {value.shape}")


def _check_numeric(data: dict[str, np.ndarray]) -> None:
    for key, value in data.items():
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            raise ValueError(f"'{key}' holds NaN or infinity")


def read_tracking(path: str | Path) -> Tracking:
    """Read a ``tracking.npz`` (or the one inside a capture folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRACKING_FILENAME
    data = _open_npz(path)
    try:
        return _tracking_from_arrays(data)
    except ValueError as error:
        raise CaptureFormatError(path, str(error)) from None


def _tracking_from_arrays(data: dict[str, np.ndarray]) -> Tracking:
    if "poses" in data and "global_orient" not in data:
        raise ValueError("looks like an AMASS motion file (has 'poses'), not a tracking file")
    if "format" in data and _string(data, "format", "") != TRACKING_FORMAT:
        raise ValueError(f"'format' is {_string(data, 'format', '')!r}, expected {TRACKING_FORMAT!r}")
    if "format_version" in data and int(_scalar(data, "format_version")) > TRACKING_VERSION:
        raise ValueError(
            f"format_version {int(_scalar(data, 'format_version'))} is newer than this version reads "
            f"({TRACKING_VERSION}); update the add-on"
        )
    for key in ("fps", "global_orient", "body_pose", "transl"):
        if key not in data:
            raise ValueError(f"missing required key '{key}'")
    _check_numeric(data)
    frames = int(np.shape(data["global_orient"])[0]) if np.ndim(data["global_orient"]) == 2 else 0
    if frames == 0:
        raise ValueError("'global_orient' must be (frames, 3) with at least one frame")
    per_frame = {name: data[name] for name, _ in SMPLX_POSE_PARTS if name in data}
    motion = SmplxMotion(
        fps=_scalar(data, "fps"),
        transl=data["transl"],
        betas=data.get("betas", np.zeros(10, np.float32)),
        expression=data.get("expression"),
        gender=_string(data, "gender", "neutral"),
        up_axis=_string(data, "up_axis", "y"),
        **per_frame,
    )
    camera = None
    if "camera_K" in data or "camera_world_to_camera" in data:
        missing = [k for k in ("camera_K", "camera_world_to_camera", "image_size") if k not in data]
        if missing:
            raise ValueError(f"camera given but missing {', '.join(repr(m) for m in missing)}")
        size = np.asarray(data["image_size"]).reshape(-1)
        if size.shape != (2,):
            raise ValueError(f"'image_size' must be (height, width), got shape {data['image_size'].shape}")
        if size.dtype.kind not in "iuf" or not np.all(np.isfinite(size)) or np.any(size != np.round(size)) or np.any(size < 1):
            raise ValueError(f"'image_size' must be two positive integers (height, width), got {size.tolist()}")
        camera = CameraTrack(
            K=_per_frame_or_constant(data["camera_K"], frames, (3, 3), "camera_K"),
            world_to_camera=_per_frame_or_constant(
                data["camera_world_to_camera"], frames, (4, 4), "camera_world_to_camera"
            ),
            image_size=(int(size[0]), int(size[1])),
        )
    faceverse = None
    if "faceverse_exp" in data:
        missing = [k for k in ("faceverse_rotation", "faceverse_translation") if k not in data]
        if missing:
            raise ValueError(f"faceverse_exp given but missing {', '.join(repr(m) for m in missing)}")
        faceverse = FaceVerseTrack(
            identity=data.get("faceverse_id", np.zeros(0, np.float32)),
            expression=data["faceverse_exp"],
            rotation=data["faceverse_rotation"],
            translation=data["faceverse_translation"],
        )
    mano = {}
    for side in ("left", "right"):
        keys = {name: f"mano_{side}_{name}" for name in ("global_orient", "hand_pose", "transl")}
        present = [key for key in keys.values() if key in data]
        if not present:
            continue
        if len(present) != len(keys):
            missing = sorted(set(keys.values()) - set(present))
            raise ValueError(f"MANO {side} hand given but missing {', '.join(repr(m) for m in missing)}")
        mano[side] = ManoTrack(
            side=side,
            betas=data.get(f"mano_{side}_betas", np.zeros(10, np.float32)),
            **{name: data[key] for name, key in keys.items()},
        )
    return Tracking(motion=motion, camera=camera, faceverse=faceverse, mano=mano, split=data.get("split"))


def tracking_arrays(tracking: Tracking) -> dict[str, np.ndarray]:
    """The ``tracking.npz`` contents for a Tracking (inverse of the reader)."""
    motion = tracking.motion
    out: dict[str, np.ndarray] = {
        "format": np.array(TRACKING_FORMAT),
        "format_version": np.array(TRACKING_VERSION, np.int32),
        "fps": np.array(motion.fps, np.float64),
        "gender": np.array(motion.gender),
        "up_axis": np.array(motion.up_axis),
        **motion.arrays(),
    }
    if tracking.camera is not None:
        out["camera_K"] = tracking.camera.K
        out["camera_world_to_camera"] = tracking.camera.world_to_camera
        out["image_size"] = np.array(tracking.camera.image_size, np.int32)
    if tracking.faceverse is not None:
        face = tracking.faceverse
        out.update(
            faceverse_id=face.identity,
            faceverse_exp=face.expression,
            faceverse_rotation=face.rotation,
            faceverse_translation=face.translation,
        )
    for side, track in tracking.mano.items():
        out.update(
            {
                f"mano_{side}_global_orient": track.global_orient,
                f"mano_{side}_hand_pose": track.hand_pose,
                f"mano_{side}_transl": track.transl,
                f"mano_{side}_betas": track.betas,
            }
        )
    if tracking.split is not None:
        out["split"] = tracking.split
    return out


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray], compress: bool = True) -> Path:
    """Write an .npz so that a crash never leaves a partial file at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            (np.savez_compressed if compress else np.savez)(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_tracking(path: str | Path, tracking: Tracking) -> Path:
    return write_npz_atomic(path, tracking_arrays(tracking))


def read_amass(path: str | Path) -> SmplxMotion:
    """Read an AMASS-style motion; the family (SMPL-X / SMPL-H / SMPL) follows from the pose width.

    Missing parts (SMPL-H has no jaw/eyes, SMPL no fingers) are zeros. AMASS data is Z-up.
    An optional ``expression`` (T, E) array is read too (not in AMASS itself).
    """
    path = Path(path)
    data = _open_npz(path)
    try:
        return _amass_from_arrays(data)
    except ValueError as error:
        raise CaptureFormatError(path, str(error)) from None


def _amass_from_arrays(data: dict[str, np.ndarray]) -> SmplxMotion:
    if "poses" not in data:
        hint = " (this looks like a tracking file)" if "global_orient" in data else ""
        raise ValueError(f"missing required key 'poses'{hint}")
    poses = np.asarray(data["poses"])
    if poses.ndim != 2 or poses.shape[0] == 0:
        raise ValueError(f"'poses' must be (frames, width) with at least one frame, got {poses.shape}")
    family = AMASS_FAMILIES.get(poses.shape[1])
    if family is None:
        raise ValueError(
            f"'poses' has width {poses.shape[1]}; expected 165 (SMPL-X), 156 (SMPL-H) or 72 (SMPL)"
        )
    if "trans" not in data:
        raise ValueError("missing required key 'trans'")
    fps_key = next((key for key in AMASS_FPS_KEYS if key in data), None)
    if fps_key is None:
        raise ValueError(f"no frame rate: expected one of {', '.join(repr(k) for k in AMASS_FPS_KEYS)}")
    _check_numeric(data)
    frames = poses.shape[0]
    trans = np.asarray(data["trans"], np.float32)
    if trans.shape != (frames, 3):
        raise ValueError(f"'trans' must be ({frames}, 3) to match 'poses', got {trans.shape}")
    poses = poses.astype(np.float32)
    zeros3 = np.zeros((frames, 3), np.float32)
    if family == "smplx":
        full = poses
    elif family == "smplh":  # 22 body joints, then 15 + 15 hand joints; no jaw or eyes
        full = np.concatenate([poses[:, :66], zeros3, zeros3, zeros3, poses[:, 66:]], axis=1)
    else:  # SMPL: 22 body joints + two hand joints that SMPL-X models with fingers instead
        full = np.concatenate([poses[:, :66], zeros3, zeros3, zeros3, np.zeros((frames, 90), np.float32)], axis=1)
    gender = _string(data, "gender", "neutral")
    if gender not in ("neutral", "male", "female"):
        raise ValueError(f"'gender' is {gender!r}; expected neutral, male or female")
    expression = data.get("expression")
    if expression is not None and (expression.ndim != 2 or expression.shape[0] != frames):
        raise ValueError(f"'expression' must be ({frames}, E) to match 'poses', got shape {expression.shape}")
    return SmplxMotion.from_full_pose(
        full,
        transl=trans,
        fps=_scalar(data, fps_key),
        betas=data.get("betas", np.zeros(10, np.float32)),
        expression=expression,
        gender=gender,
        up_axis="z",
        source_family=family,
    )


def amass_arrays(motion: SmplxMotion) -> dict[str, np.ndarray]:
    """AMASS SMPL-X layout for a motion (inverse of ``read_amass`` for SMPL-X data)."""
    out = {
        "poses": motion.full_pose(),
        "trans": motion.transl,
        "betas": motion.betas,
        "gender": np.array(motion.gender),
        "mocap_frame_rate": np.array(motion.fps, np.float64),
        "surface_model_type": np.array("smplx"),
    }
    if motion.expression.shape[1]:
        out["expression"] = motion.expression
    return out


def write_amass(path: str | Path, motion: SmplxMotion) -> Path:
    return write_npz_atomic(path, amass_arrays(motion))


def read_motion(path: str | Path) -> Tracking:
    """Read either format (a capture folder, ``tracking.npz`` or AMASS ``.npz``), detected by its keys."""
    path = Path(path)
    if path.is_dir():
        return read_tracking(path)
    data = _open_npz(path)
    try:
        if "poses" in data and "global_orient" not in data:
            return Tracking(motion=_amass_from_arrays(data))
        return _tracking_from_arrays(data)
    except ValueError as error:
        raise CaptureFormatError(path, str(error)) from None
