"""A procedural full-body performance in SMPL-X parameters: walking, turning, arm swings, hand
gestures, talking and facial expressions (training), and a held-out set of unseen poses (test).

Frame of reference: SMPL-X's own (Y up, the body facing +Z in the rest pose, T-pose arms along
±X). Facial expressions come as ARKit blendshape curves, which the sample-capture generator maps
onto the FaceVerse model and onto the SMPL-X expression directions that carry ARKit names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.capture.motion import SmplxMotion

# SMPL-X kinematic joint indices (smplx order); body_pose holds joints 1..21.
PELVIS, L_HIP, R_HIP, SPINE1, L_KNEE, R_KNEE, SPINE2, L_ANKLE, R_ANKLE, SPINE3 = range(10)
L_FOOT, R_FOOT, NECK, L_COLLAR, R_COLLAR, HEAD, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW = range(10, 20)
L_WRIST, R_WRIST = 20, 21
# Finger order inside each hand's 15 joints (smplx / MANO): index, middle, pinky, ring, thumb; 3 joints each.
FINGERS = ("index", "middle", "pinky", "ring", "thumb")


@dataclass
class Performance:
    motion: SmplxMotion
    arkit: dict[str, np.ndarray]  # ARKit blendshape name -> (T,) weight in [0, 1]


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _window(t: np.ndarray, start: float, end: float, ramp: float = 0.5) -> np.ndarray:
    """1 inside [start, end], 0 outside, with smooth ramps."""
    return smoothstep((t - start) / ramp + 1.0) * smoothstep((end - t) / ramp + 1.0)


class _Pose:
    """Accumulates per-joint axis-angle rotations (small compositions are summed, which is
    accurate enough for procedural motion and keeps every channel smooth)."""

    def __init__(self, frames: int):
        self.joints = np.zeros((frames, 55, 3), np.float64)

    def add(self, joint: int, axis: int, angle: np.ndarray) -> None:
        self.joints[:, joint, axis] += angle

    def hand(self, side: str, finger: str, curl: np.ndarray, spread: np.ndarray | float = 0.0) -> None:
        """Curl a finger (all three joints) towards the palm; spread it sideways at the base."""
        base = 25 if side == "left" else 40
        first = base + 3 * FINGERS.index(finger)
        sign = -1.0 if side == "left" else 1.0  # fingers point along +X (left) / -X (right); palm faces -Y
        for k in range(3):
            if finger == "thumb":  # the thumb curls across the palm, around the hand's long axis
                self.add(first + k, 1, -sign * 0.6 * curl)
                self.add(first + k, 2, sign * 0.4 * curl)
            else:
                self.add(first + k, 2, sign * curl * (1.0 if k else 0.8))
        if finger != "thumb":
            self.add(first, 1, np.asarray(spread) * (-sign))


def _blink_curve(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    curve = np.zeros_like(t)
    time = 0.4
    while time < t[-1] + 1:
        curve = np.maximum(curve, np.exp(-(((t - time) / 0.06) ** 2)))
        time += rng.uniform(1.8, 3.5)
    return curve


def _arms_lowered(pose: _Pose, lower: np.ndarray) -> None:
    """Bring the T-pose arms down by ``lower`` radians (left arm: -Z, right arm: +Z)."""
    pose.add(L_SHOULDER, 2, -lower)
    pose.add(R_SHOULDER, 2, lower)


def training_performance(frames: int = 360, fps: float = 30.0, seed: int = 0) -> Performance:
    """Walk along an arc, stop and turn, then talk with gestures and expressions."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    duration = t[-1] if frames > 1 else 1.0
    phase_walk = _window(t, -1.0, 0.36 * duration, 0.4)
    phase_turn = _window(t, 0.36 * duration, 0.58 * duration, 0.4)
    phase_talk = _window(t, 0.58 * duration, duration + 1.0, 0.4)
    pose = _Pose(frames)

    # Walking: 1 stride per second, hips flex/extend in antiphase, knees bend in the swing phase.
    stride = 2 * np.pi * 1.0 * t
    hip = 0.45 * np.sin(stride) * phase_walk
    pose.add(L_HIP, 0, -hip)
    pose.add(R_HIP, 0, hip)
    pose.add(L_KNEE, 0, 0.7 * np.clip(np.sin(stride - 1.3), 0, None) * phase_walk)
    pose.add(R_KNEE, 0, 0.7 * np.clip(np.sin(stride + np.pi - 1.3), 0, None) * phase_walk)
    pose.add(L_ANKLE, 0, -0.2 * np.sin(stride - 0.6) * phase_walk)
    pose.add(R_ANKLE, 0, 0.2 * np.sin(stride - 0.6) * phase_walk)
    pose.add(SPINE1, 1, 0.08 * np.sin(stride) * phase_walk)  # counter-rotation of the torso

    # Arms: down from the T-pose; swing opposite to the legs while walking.
    _arms_lowered(pose, np.full(frames, 1.25))
    swing = 0.35 * np.sin(stride) * phase_walk
    pose.add(L_SHOULDER, 1, swing)
    pose.add(R_SHOULDER, 1, swing)
    pose.add(L_ELBOW, 1, -0.25 * phase_walk)
    pose.add(R_ELBOW, 1, 0.25 * phase_walk)

    # Turning in place: shuffle steps, torso leads the turn, arms swing out a little.
    shuffle = np.sin(2 * np.pi * 1.5 * t) * phase_turn
    pose.add(L_HIP, 0, -0.15 * shuffle)
    pose.add(R_HIP, 0, 0.15 * shuffle)
    pose.add(L_KNEE, 0, 0.25 * np.clip(shuffle, 0, None))
    pose.add(R_KNEE, 0, 0.25 * np.clip(-shuffle, 0, None))
    pose.add(SPINE2, 1, 0.15 * np.sin(2 * np.pi * 0.5 * t) * phase_turn)
    _arms_lowered(pose, -0.5 * phase_turn * (0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t)))

    # Talking: gesturing forearms, head nods, weight shifts.
    gesture_l = 0.5 + 0.5 * np.sin(2 * np.pi * 0.6 * t + 0.3)
    gesture_r = 0.5 + 0.5 * np.sin(2 * np.pi * 0.45 * t + 2.0)
    pose.add(L_SHOULDER, 1, 0.5 * gesture_l * phase_talk)  # arm forward
    pose.add(R_SHOULDER, 1, -0.5 * gesture_r * phase_talk)
    pose.add(L_ELBOW, 1, -1.2 * gesture_l * phase_talk)
    pose.add(R_ELBOW, 1, 1.2 * gesture_r * phase_talk)
    pose.add(L_WRIST, 0, 0.4 * np.sin(2 * np.pi * 0.9 * t) * phase_talk)
    pose.add(R_WRIST, 0, 0.4 * np.sin(2 * np.pi * 0.8 * t + 1) * phase_talk)
    pose.add(NECK, 0, 0.12 * np.sin(2 * np.pi * 0.7 * t) * phase_talk)
    pose.add(HEAD, 1, 0.25 * np.sin(2 * np.pi * 0.25 * t) * (phase_talk + phase_turn))
    pose.add(SPINE3, 2, 0.05 * np.sin(2 * np.pi * 0.3 * t) * phase_talk)
    pose.add(L_HIP, 2, 0.05 * np.sin(2 * np.pi * 0.3 * t) * phase_talk)
    pose.add(R_HIP, 2, 0.05 * np.sin(2 * np.pi * 0.3 * t) * phase_talk)

    # Hand gestures: relaxed curl while walking, then fist / point / open / thumbs-up cycles.
    cycle = (t * 0.5) % 4.0  # a new gesture every 2 s
    fist = _window(cycle, 0.2, 0.8, 0.2)
    point = _window(cycle, 1.2, 1.8, 0.2)
    spread = _window(cycle, 2.2, 2.8, 0.2)
    thumbs = _window(cycle, 3.2, 3.8, 0.2)
    relaxed = 0.35
    for side, delay in (("left", 0.0), ("right", 0.7)):
        active = np.roll(1 - phase_walk, int(delay * fps))
        for finger in FINGERS:
            curl = relaxed + active * (0.9 * fist + (0.0 if finger == "index" else 0.9) * point - 0.35 * spread)
            curl = curl + active * thumbs * (1.0 if finger != "thumb" else -0.3)
            pose.hand(side, finger, curl, spread=0.25 * active * spread * (FINGERS.index(finger) - 1.5) / 1.5)

    # Facial performance: talking jaw, smiles, brow raises, blinks.
    talk = phase_talk * np.clip(0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t) * np.sin(2 * np.pi * 0.7 * t), 0, 1)
    smile = 0.8 * _window(t, 0.66 * duration, 0.8 * duration, 0.3)
    brows = 0.9 * _window(t, 0.84 * duration, 0.92 * duration, 0.2)
    blink = _blink_curve(t, rng)
    pose.add(22, 0, 0.25 * talk)  # jaw
    look = 0.2 * np.sin(2 * np.pi * 0.2 * t)
    pose.add(23, 1, look)
    pose.add(24, 1, look)
    arkit = {
        "jawOpen": 0.8 * talk,
        "mouthSmileLeft": smile,
        "mouthSmileRight": smile,
        "browInnerUp": brows,
        "browOuterUpLeft": 0.6 * brows,
        "browOuterUpRight": 0.6 * brows,
        "eyeBlinkLeft": blink,
        "eyeBlinkRight": blink,
        "mouthFunnel": 0.3 * talk * (0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)),
    }

    # Root: walk along a circular arc across the view, turn round to face the camera, then stay.
    radius, start_angle = 0.7, -0.9
    walked = np.cumsum(np.diff(t, prepend=0.0) * 0.35 * phase_walk)
    angle = start_angle + walked / radius
    walk_heading = np.arctan2(np.cos(angle), -np.sin(angle))  # the arc's tangent
    turn = smoothstep((t - 0.36 * duration) / (0.22 * duration))
    heading = walk_heading * (1 - turn) + 0.15 * np.sin(2 * np.pi * 0.2 * t) * phase_talk
    bob = 0.02 * np.abs(np.sin(stride)) * phase_walk
    transl = np.stack([radius * np.sin(angle), bob, radius * np.cos(angle) - radius], axis=1)
    return _performance(pose, heading, transl, fps, arkit, lean=0.05 * phase_walk)


def test_performance(frames: int = 60, fps: float = 30.0, seed: int = 1) -> Performance:
    """Poses the training performance never shows: arms overhead, a squat, a lunge, waving,
    a side bend and a head tilt, with a wide-open mouth and a frown."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / fps
    duration = max(t[-1], 1e-6)
    u = t / duration
    pose = _Pose(frames)
    overhead = _window(u, 0.0, 0.3, 0.1)
    squat = _window(u, 0.3, 0.55, 0.08)
    lunge = _window(u, 0.55, 0.8, 0.08)
    wave = _window(u, 0.8, 1.1, 0.08)

    _arms_lowered(pose, 1.25 * (1 - overhead) - 1.1 * overhead)
    pose.add(L_ELBOW, 1, -0.4 * overhead)
    pose.add(R_ELBOW, 1, 0.4 * overhead)
    pose.add(SPINE2, 2, 0.25 * np.sin(2 * np.pi * 2 * u) * overhead)  # side bend

    pose.add(L_HIP, 0, -1.3 * squat)
    pose.add(R_HIP, 0, -1.3 * squat)
    pose.add(L_KNEE, 0, 2.0 * squat)
    pose.add(R_KNEE, 0, 2.0 * squat)
    pose.add(L_ANKLE, 0, -0.5 * squat)
    pose.add(R_ANKLE, 0, -0.5 * squat)
    pose.add(L_SHOULDER, 1, 1.2 * squat)  # arms forward for balance
    pose.add(R_SHOULDER, 1, -1.2 * squat)

    pose.add(L_HIP, 0, -1.0 * lunge)
    pose.add(L_KNEE, 0, 1.4 * lunge)
    pose.add(R_HIP, 0, 0.5 * lunge)
    pose.add(R_KNEE, 0, 0.6 * lunge)
    pose.add(SPINE1, 1, 0.4 * lunge)

    pose.add(R_SHOULDER, 2, -1.9 * wave)  # right arm up
    pose.add(R_ELBOW, 1, (1.2 + 0.5 * np.sin(2 * np.pi * 3 * t)) * wave)
    pose.add(HEAD, 2, 0.35 * wave)  # head tilt
    for finger in FINGERS:
        pose.hand("right", finger, 0.1 * wave + 1.3 * squat, spread=0.3 * wave * (FINGERS.index(finger) - 1.5) / 1.5)
        pose.hand("left", finger, 1.4 * lunge + 0.2)

    drop = -0.35 * squat - 0.15 * lunge  # the pelvis goes down in a squat / lunge
    heading = np.deg2rad(-30) * lunge + np.deg2rad(20) * overhead
    transl = np.stack([0.05 * rng.standard_normal() + 0 * t, drop, 0 * t], axis=1)
    pose.add(22, 0, 0.45 * squat)
    arkit = {
        "jawOpen": 0.9 * squat,
        "mouthFrownLeft": 0.8 * lunge,
        "mouthFrownRight": 0.8 * lunge,
        "browDownLeft": 0.7 * lunge,
        "browDownRight": 0.7 * lunge,
        "mouthPucker": 0.8 * overhead,
        "eyeBlinkLeft": 0.9 * wave,  # a wink
        "cheekPuff": 0.6 * wave,
    }
    return _performance(pose, heading, transl, fps, arkit, lean=0.25 * squat)


def _performance(
    pose: _Pose, heading: np.ndarray, transl: np.ndarray, fps: float, arkit: dict[str, np.ndarray], lean: np.ndarray
) -> Performance:
    frames = pose.joints.shape[0]
    from scipy.spatial.transform import Rotation

    # The root turns about the world's up axis; composing (not summing) keeps large turns exact.
    yaw = Rotation.from_rotvec(np.stack([np.zeros(frames), heading, np.zeros(frames)], axis=1))
    tilt = Rotation.from_rotvec(np.stack([lean, np.zeros(frames), np.zeros(frames)], axis=1))
    pose.joints[:, PELVIS] = (yaw * tilt * Rotation.from_rotvec(pose.joints[:, PELVIS])).as_rotvec()
    joints = pose.joints.astype(np.float32)
    motion = SmplxMotion(
        fps=fps,
        global_orient=joints[:, 0],
        body_pose=joints[:, 1:22].reshape(frames, 63),
        jaw_pose=joints[:, 22],
        leye_pose=joints[:, 23],
        reye_pose=joints[:, 24],
        left_hand_pose=joints[:, 25:40].reshape(frames, 45),
        right_hand_pose=joints[:, 40:55].reshape(frames, 45),
        transl=transl.astype(np.float32),
    )
    return Performance(motion, {name: np.clip(curve, 0, 1).astype(np.float32) for name, curve in arkit.items()})
