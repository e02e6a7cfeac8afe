"""In-memory motion and tracking data: what a tracked capture or a mocap file holds per frame.

All rotations are axis-angle in radians. Hand poses are absolute joint rotations (smplx's
``flat_hand_mean=True`` convention, as AMASS stores them). Arrays are float32, frames first.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# The SMPL-X full pose (165 values) in the order AMASS and smplx use.
SMPLX_POSE_PARTS: tuple[tuple[str, int], ...] = (
    ("global_orient", 3),
    ("body_pose", 63),
    ("jaw_pose", 3),
    ("leye_pose", 3),
    ("reye_pose", 3),
    ("left_hand_pose", 45),
    ("right_hand_pose", 45),
)
SMPLX_POSE_WIDTH = sum(width for _, width in SMPLX_POSE_PARTS)  # 165
UP_AXES = ("y", "-y", "z")


def _identity(value: np.ndarray, name: str) -> np.ndarray:
    """(S,) float32 shape coefficients; (1, S) is accepted, per-frame (T, S) is not (identity is constant)."""
    betas = np.asarray(value, np.float32)
    if betas.ndim > 2 or (betas.ndim == 2 and betas.shape[0] != 1):
        raise ValueError(f"{name} must be (S,) - one identity for the whole motion - got shape {betas.shape}")
    return np.ascontiguousarray(betas.reshape(-1))


def _frames(array: np.ndarray, width: int, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"{name} must be (frames, {width}), got {array.shape}")
    return np.ascontiguousarray(array)


@dataclass
class SmplxMotion:
    """A sequence of SMPL-X parameters (also the normalised form of SMPL-H / SMPL mocap)."""

    fps: float
    global_orient: np.ndarray  # (T, 3)
    body_pose: np.ndarray  # (T, 63): 21 body joints
    transl: np.ndarray  # (T, 3)
    betas: np.ndarray = field(default_factory=lambda: np.zeros(10, np.float32))  # (S,)
    left_hand_pose: np.ndarray | None = None  # (T, 45)
    right_hand_pose: np.ndarray | None = None  # (T, 45)
    jaw_pose: np.ndarray | None = None  # (T, 3)
    leye_pose: np.ndarray | None = None  # (T, 3)
    reye_pose: np.ndarray | None = None  # (T, 3)
    expression: np.ndarray | None = None  # (T, E)
    gender: str = "neutral"
    up_axis: str = "y"  # which axis of the motion's world is up ("z" for AMASS)
    source_family: str = "smplx"  # what the source held: smplx | smplh | smpl

    def __post_init__(self) -> None:
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        self.fps = float(self.fps)
        frames = np.asarray(self.global_orient).shape[0] if np.ndim(self.global_orient) == 2 else -1
        for name, width in SMPLX_POSE_PARTS:
            value = getattr(self, name)
            if value is None:
                value = np.zeros((max(frames, 0), width), np.float32)
            setattr(self, name, _frames(value, width, name))
        self.transl = _frames(self.transl, 3, "transl")
        if self.expression is None:
            self.expression = np.zeros((frames if frames >= 0 else 0, 0), np.float32)
        self.expression = np.ascontiguousarray(np.asarray(self.expression, np.float32))
        if self.expression.ndim != 2:
            raise ValueError(f"expression must be (frames, E), got {self.expression.shape}")
        self.betas = _identity(self.betas, "betas")
        for name in ("body_pose", "transl", "expression", *[n for n, _ in SMPLX_POSE_PARTS]):
            if getattr(self, name).shape[0] != frames:
                raise ValueError(f"{name} has {getattr(self, name).shape[0]} frames, global_orient has {frames}")
        if self.up_axis not in UP_AXES:
            raise ValueError(f"up_axis must be one of {UP_AXES}, got {self.up_axis!r}")
        if self.gender not in ("neutral", "male", "female"):
            raise ValueError(f"gender must be neutral, male or female, got {self.gender!r}")

    @property
    def num_frames(self) -> int:
        return int(self.global_orient.shape[0])

    def full_pose(self) -> np.ndarray:
        """(T, 165) in SMPL-X / AMASS order."""
        return np.concatenate([getattr(self, name) for name, _ in SMPLX_POSE_PARTS], axis=1)

    @classmethod
    def from_full_pose(cls, poses: np.ndarray, transl: np.ndarray, fps: float, **kwargs) -> "SmplxMotion":
        poses = _frames(poses, SMPLX_POSE_WIDTH, "poses")
        parts, start = {}, 0
        for name, width in SMPLX_POSE_PARTS:
            parts[name] = poses[:, start : start + width]
            start += width
        return cls(fps=fps, transl=transl, **parts, **kwargs)

    def select(self, frames: np.ndarray | slice) -> "SmplxMotion":
        """A copy holding only the given frames (index array or slice)."""
        per_frame = {name: getattr(self, name)[frames] for name, _ in SMPLX_POSE_PARTS}
        return replace(self, transl=self.transl[frames], expression=self.expression[frames], **per_frame)

    def arrays(self) -> dict[str, np.ndarray]:
        """All per-frame arrays and betas by name (for writing and for the wire)."""
        out = {name: getattr(self, name) for name, _ in SMPLX_POSE_PARTS}
        out.update(transl=self.transl, expression=self.expression, betas=self.betas)
        return out

    def with_up_axis(self, target: str, pelvis_rest: np.ndarray) -> "SmplxMotion":
        """The same motion in a world whose up axis is ``target``.

        The root rotates about the pelvis joint, so the translation must follow the rotated pelvis:
        ``transl' = C (transl + J0) - J0`` with ``J0`` the rest pelvis (``pelvis_rest``, for these betas).
        """
        if target not in UP_AXES:
            raise ValueError(f"up_axis must be one of {UP_AXES}, got {target!r}")
        from scipy.spatial.transform import Rotation

        # Every supported up axis is perpendicular to X: the change is a rotation about X.
        angle = {"y": np.pi / 2, "-y": -np.pi / 2, "z": 0.0}
        change = Rotation.from_rotvec([angle[self.up_axis] - angle[target], 0.0, 0.0])
        orient = (change * Rotation.from_rotvec(self.global_orient.astype(np.float64))).as_rotvec()
        pelvis = np.asarray(pelvis_rest, np.float64).reshape(3)
        transl = change.apply(self.transl.astype(np.float64) + pelvis) - pelvis
        return replace(self, global_orient=orient.astype(np.float32), transl=transl.astype(np.float32), up_axis=target)

    def check_finite(self) -> None:
        for name, value in self.arrays().items():
            if not np.all(np.isfinite(value)):
                bad = int(np.argwhere(~np.isfinite(value))[0][0])
                raise ValueError(f"{name} holds NaN or infinity (first at index {bad})")


@dataclass
class CameraTrack:
    """Pinhole cameras, OpenCV convention (x right, y down, z forward), one per frame."""

    K: np.ndarray  # (T, 3, 3) intrinsics in pixels
    world_to_camera: np.ndarray  # (T, 4, 4)
    image_size: tuple[int, int]  # (height, width)

    def __post_init__(self) -> None:
        self.K = np.ascontiguousarray(np.asarray(self.K, np.float32))
        self.world_to_camera = np.ascontiguousarray(np.asarray(self.world_to_camera, np.float32))
        if self.K.ndim != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"camera K must be (frames, 3, 3), got {self.K.shape}")
        if self.world_to_camera.ndim != 3 or self.world_to_camera.shape[1:] != (4, 4):
            raise ValueError(f"camera extrinsics must be (frames, 4, 4), got {self.world_to_camera.shape}")
        if self.K.shape[0] != self.world_to_camera.shape[0]:
            raise ValueError("camera K and extrinsics have different frame counts")
        height, width = (int(v) for v in self.image_size)
        if height <= 0 or width <= 0:
            raise ValueError(f"image size must be positive, got {self.image_size}")
        self.image_size = (height, width)

    @property
    def num_frames(self) -> int:
        return int(self.K.shape[0])

    def select(self, frames: np.ndarray | slice) -> "CameraTrack":
        return CameraTrack(self.K[frames], self.world_to_camera[frames], self.image_size)


@dataclass
class FaceVerseTrack:
    """FaceVerse fit per frame: identity (constant), expression, rigid pose in the capture's world."""

    identity: np.ndarray  # (N_id,)
    expression: np.ndarray  # (T, 52)
    rotation: np.ndarray  # (T, 3) FaceVerse's Euler angles (see backend.bodies.faceverse)
    translation: np.ndarray  # (T, 3)

    def __post_init__(self) -> None:
        self.identity = np.ascontiguousarray(np.asarray(self.identity, np.float32).reshape(-1))
        self.expression = np.ascontiguousarray(np.asarray(self.expression, np.float32))
        if self.expression.ndim != 2:
            raise ValueError(f"faceverse expression must be (frames, E), got {self.expression.shape}")
        frames = self.expression.shape[0]
        self.rotation = _frames(self.rotation, 3, "faceverse rotation")
        self.translation = _frames(self.translation, 3, "faceverse translation")
        if self.rotation.shape[0] != frames or self.translation.shape[0] != frames:
            raise ValueError("faceverse expression, rotation and translation have different frame counts")

    @property
    def num_frames(self) -> int:
        return int(self.expression.shape[0])

    def select(self, frames: np.ndarray | slice) -> "FaceVerseTrack":
        return FaceVerseTrack(self.identity, self.expression[frames], self.rotation[frames], self.translation[frames])


@dataclass
class ManoTrack:
    """MANO fit of one hand per frame (absolute finger rotations)."""

    side: str  # "left" | "right"
    global_orient: np.ndarray  # (T, 3)
    hand_pose: np.ndarray  # (T, 45)
    transl: np.ndarray  # (T, 3)
    betas: np.ndarray = field(default_factory=lambda: np.zeros(10, np.float32))

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise ValueError(f"MANO side must be left or right, got {self.side!r}")
        self.global_orient = _frames(self.global_orient, 3, f"mano_{self.side} global_orient")
        self.hand_pose = _frames(self.hand_pose, 45, f"mano_{self.side} hand_pose")
        self.transl = _frames(self.transl, 3, f"mano_{self.side} transl")
        self.betas = _identity(self.betas, f"mano_{self.side}_betas")
        if not (self.global_orient.shape[0] == self.hand_pose.shape[0] == self.transl.shape[0]):
            raise ValueError(f"mano_{self.side} arrays have different frame counts")

    @property
    def num_frames(self) -> int:
        return int(self.global_orient.shape[0])

    def select(self, frames: np.ndarray | slice) -> "ManoTrack":
        return replace(
            self, global_orient=self.global_orient[frames], hand_pose=self.hand_pose[frames], transl=self.transl[frames]
        )


# Per-frame split labels in a tracking file.
SPLIT_TRAIN, SPLIT_TEST = 0, 1


@dataclass
class Tracking:
    """Everything ``tracking.npz`` holds: the body motion plus optional camera, face, hands, split."""

    motion: SmplxMotion
    camera: CameraTrack | None = None
    faceverse: FaceVerseTrack | None = None
    mano: dict[str, ManoTrack] = field(default_factory=dict)
    split: np.ndarray | None = None  # (T,) uint8: SPLIT_TRAIN / SPLIT_TEST

    def __post_init__(self) -> None:
        frames = self.motion.num_frames
        parts = {"camera": self.camera, "faceverse": self.faceverse, **{f"mano_{k}": v for k, v in self.mano.items()}}
        for name, part in parts.items():
            if part is None:
                continue
            if part.num_frames != frames:
                raise ValueError(f"{name} has {part.num_frames} frames, the body motion has {frames}")
        if self.split is not None:
            # Checked before the uint8 cast, which would turn 257 into 1 and 0.7 into 0.
            split = np.asarray(self.split).reshape(-1)
            if split.shape[0] != frames:
                raise ValueError(f"split has {split.shape[0]} entries, the body motion has {frames} frames")
            valid = np.isin(split, (SPLIT_TRAIN, SPLIT_TEST)) if split.dtype.kind in "biuf" else np.zeros(split.shape, bool)
            if not valid.all():
                first = int(np.flatnonzero(~valid)[0])
                raise ValueError(f"split entries must be 0 (train) or 1 (test) exactly; split[{first}] is {split[first].item()!r}")
            self.split = split.astype(np.uint8)

    @property
    def num_frames(self) -> int:
        return self.motion.num_frames

    def frames_of(self, split: int) -> np.ndarray:
        """Frame indices of a split; without split labels every frame is a training frame."""
        if self.split is None:
            return np.arange(self.num_frames) if split == SPLIT_TRAIN else np.zeros(0, np.int64)
        return np.flatnonzero(self.split == split)

    def select(self, frames: np.ndarray | slice) -> "Tracking":
        return Tracking(
            motion=self.motion.select(frames),
            camera=None if self.camera is None else self.camera.select(frames),
            faceverse=None if self.faceverse is None else self.faceverse.select(frames),
            mano={side: track.select(frames) for side, track in self.mano.items()},
            split=None if self.split is None else self.split[frames],
        )

