"""Procedural geometry of the SMPL-X stand-in: a smooth mannequin in SMPL-X's rest pose and frame.

Frame and pose follow real SMPL-X: metres, Y up, facing +Z, the body's left on +X, the origin
near the chest (pelvis joint at y ≈ -0.35, soles at y ≈ -1.31), arms out along ±X with the
palms down. The skeleton is designed first (55 joints in smplx's order), then every part is
built around it from closed, smoothly profiled tubes that overlap where they meet: torso, neck,
head (a deformed sphere with nose, eye sockets, brows, lips and chin), eyeballs, ears, arms,
legs, feet and the connected hands of :mod:`backend.bodies.standin_hand`. Each vertex carries
its skinning weights, its part and the axis point it surrounds (used for girth-like shape
directions). The torso's ring sizes absorb whatever vertex count the other parts leave, so the
total is exactly SMPL-X's 10,475.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from smplx.joint_names import JOINT_NAMES

from backend.bodies.standin_face import EAR_X, EYE_PROTRUSION, EYE_RADIUS, EYE_X, EYE_Y, MOUTH_Y, face_point, head_surface
from backend.bodies.standin_hand import DIGITS, build_hand, hand_rest_joints
from backend.bodies.standin_mesh import MeshBuilder, Ring, chain_weights, normalize, perpendicular_frame, smoothstep, superellipse

SMPLX_VERTEX_COUNT = 10475
SMPLX_JOINT_NAMES = tuple(JOINT_NAMES[:55])
JOINT = {name: index for index, name in enumerate(SMPLX_JOINT_NAMES)}

# SMPL-X's kinematic tree (parent of each of the 55 joints, by name).
PARENT_NAMES = {
    "left_hip": "pelvis", "right_hip": "pelvis", "spine1": "pelvis",
    "left_knee": "left_hip", "right_knee": "right_hip", "spine2": "spine1",
    "left_ankle": "left_knee", "right_ankle": "right_knee", "spine3": "spine2",
    "left_foot": "left_ankle", "right_foot": "right_ankle", "neck": "spine3",
    "left_collar": "spine3", "right_collar": "spine3", "head": "neck",
    "left_shoulder": "left_collar", "right_shoulder": "right_collar",
    "left_elbow": "left_shoulder", "right_elbow": "right_shoulder",
    "left_wrist": "left_elbow", "right_wrist": "right_elbow",
    "jaw": "head", "left_eye_smplhf": "head", "right_eye_smplhf": "head",
}  # fmt: skip
for _side in ("left", "right"):
    for _digit in DIGITS:
        PARENT_NAMES[f"{_side}_{_digit}1"] = f"{_side}_wrist"
        PARENT_NAMES[f"{_side}_{_digit}2"] = f"{_side}_{_digit}1"
        PARENT_NAMES[f"{_side}_{_digit}3"] = f"{_side}_{_digit}2"
SMPLX_PARENTS = tuple([-1] + [JOINT[PARENT_NAMES[name]] for name in SMPLX_JOINT_NAMES[1:]])

# Designed rest joints of the neutral body, left side and midline (the right side mirrors x).
_BODY_JOINTS = {
    "pelvis": (0.0, -0.350, 0.010),
    "left_hip": (0.062, -0.450, -0.010),
    "spine1": (0.0, -0.240, -0.015),
    "left_knee": (0.108, -0.820, -0.022),
    "spine2": (0.0, -0.110, -0.020),
    "left_ankle": (0.080, -1.225, -0.050),
    "spine3": (0.0, -0.055, 0.000),
    "left_foot": (0.118, -1.285, 0.068),
    "neck": (0.0, 0.105, -0.025),
    "left_collar": (0.047, 0.027, -0.003),
    "head": (0.0, 0.265, -0.005),
    "left_shoulder": (0.160, 0.083, -0.017),
    "left_elbow": (0.420, 0.030, -0.052),
    "left_wrist": (0.670, 0.038, -0.060),
    "jaw": (0.0, 0.300, 0.012),
    "left_eye_smplhf": (0.032, 0.370, 0.070),
}
HEAD_CENTRE = np.array([0.0, 0.360, 0.015])
SOLE_Y = -1.308


@dataclass(frozen=True)
class Proportions:
    """Gender-level proportion factors of the stand-in (1 = neutral)."""

    height: float = 1.0
    shoulders: float = 1.0
    hips: float = 1.0
    waist: float = 1.0
    bust: float = 0.0  # forward chest bulge, metres
    limbs: float = 1.0  # limb girth
    hands: float = 1.0
    head: float = 1.0


PROPORTIONS = {
    "neutral": Proportions(),
    "male": Proportions(height=1.035, shoulders=1.08, hips=0.97, waist=1.03, limbs=1.07, hands=1.05, head=1.02),
    "female": Proportions(height=0.955, shoulders=0.92, hips=1.07, waist=0.9, bust=0.022, limbs=0.93, hands=0.93, head=0.97),
}


def _mirror(point: tuple[float, float, float]) -> tuple[float, float, float]:
    return (-point[0], point[1], point[2])


def _hand_frame(side: str) -> np.ndarray:
    """Columns: world directions of the hand frame's f (toward the fingers), l (thumb side), u (back)."""
    sign = 1.0 if side == "left" else -1.0
    return np.array([[sign, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).T


def design_skeleton(props: Proportions = PROPORTIONS["neutral"]) -> np.ndarray:
    """The designed rest joints (55, 3) the stand-in is built around.

    The eye joints are moved to the eyeball centres once the head is built (``BodyGeometry.joints``
    holds the final skeleton, which the fitted J_regressor reproduces).
    """
    joints = np.zeros((55, 3))
    for name, point in _BODY_JOINTS.items():
        joints[JOINT[name]] = point
        if name.startswith("left_"):
            joints[JOINT["right_" + name[5:]]] = _mirror(point)
    # shoulders and arms move with the shoulder width, legs with the hip width
    for side, sign in (("left", 1.0), ("right", -1.0)):
        arm = [JOINT[f"{side}_{n}"] for n in ("shoulder", "elbow", "wrist")]
        joints[arm, 0] += sign * (props.shoulders - 1.0) * 0.18
        joints[JOINT[f"{side}_collar"], 0] *= props.shoulders
        leg = [JOINT[f"{side}_{n}"] for n in ("hip", "knee", "ankle", "foot")]
        joints[leg, 0] += sign * (props.hips - 1.0) * 0.07
    joints *= props.height
    for side in ("left", "right"):
        wrist = joints[JOINT[f"{side}_wrist"]]
        local = hand_rest_joints(props.hands * props.height)
        frame = _hand_frame(side)
        world = wrist + (local - local[0]) @ frame.T
        for k, name in enumerate(("wrist",) + tuple(f"{d}{i}" for d in DIGITS for i in (1, 2, 3))):
            if k:
                joints[JOINT[f"{side}_{name}"]] = world[k]
    return joints


@dataclass
class BodyGeometry:
    """Everything the SMPL-X writer needs from the procedural body."""

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3)
    weights: np.ndarray  # (V, 55), rows sum to 1
    part: np.ndarray  # (V,) index into part_names
    part_names: list[str]
    axis_points: np.ndarray  # (V, 3) centre of the ring each vertex lies on
    joints: np.ndarray  # (55, 3) designed joints
    vt: np.ndarray
    ft: np.ndarray
    head_centre: np.ndarray
    head_scale: float
    anchors: dict[str, int] = field(default_factory=dict)  # anatomical vertex ids (nose tip, pupils, ...)

    def part_mask(self, *names: str) -> np.ndarray:
        ids = [self.part_names.index(n) for n in names if n in self.part_names]
        return np.isin(self.part, ids)


# ----------------------------------------------------------------------------- helpers


def _density_samples(count: int, lo: float, hi: float, density) -> np.ndarray:
    """``count`` positions in (lo, hi) spaced inversely to ``density`` (more samples where it is high)."""
    grid = np.linspace(lo, hi, 2001)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(grid[1:]) + density(grid[:-1])) * np.diff(grid))])
    targets = (np.arange(count) + 0.5) / count * cdf[-1]
    return np.interp(targets, cdf, grid)


def _onehot(count: int, joint: int) -> np.ndarray:
    weights = np.zeros((count, 55))
    weights[:, joint] = 1.0
    return weights


def _chain(t: np.ndarray, joints: list[str], boundaries: list[float], blends: list[float]) -> np.ndarray:
    """Blend along a tube: weights (n, 55) moving through ``joints`` at the given axial boundaries."""
    local = chain_weights(t, boundaries, blends)
    weights = np.zeros((len(t), 55))
    for k, name in enumerate(joints):
        weights[:, JOINT[name]] += local[:, k]
    return weights


class _BodyMaker:
    def __init__(self, props: Proportions):
        self.props = props
        self.joints = design_skeleton(props)
        self.builder = MeshBuilder(55)
        self.anchors: dict[str, int] = {}
        self.h = props.height
        self.head_centre = HEAD_CENTRE * props.height
        self.head_scale = props.head * props.height

    def j(self, name: str) -> np.ndarray:
        return self.joints[JOINT[name]]

    # -- generic tube along a polyline --------------------------------------------------------

    def tube(
        self,
        name: str,
        spine: np.ndarray,
        stations: np.ndarray,
        section,  # t -> (half_1, half_2, exponent, offset_1, offset_2)
        ring_size: int,
        weights,  # (t array, points) -> (n, 55)
        hint: np.ndarray,
        mirrored: bool,
        poles: tuple[float, float] | None = None,
    ) -> np.ndarray:
        """A closed tube: rings at ``stations`` (arc length on ``spine``) plus domes at both ends.

        ``section(t)`` gives the ring's half-sizes along the frame axes (e1 = ``hint`` made
        perpendicular, e2 = axis x e1), a superellipse exponent and an offset of the centre.
        ``mirrored`` builds the mirror image (x -> -x) with the winding flipped.
        """
        b = self.builder
        first_vertex, first_face = b.count, b.face_count
        seg = np.diff(spine, axis=0)
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(seg, axis=1))])
        centres = np.stack([np.interp(stations, cum, spine[:, k]) for k in range(3)], axis=1)
        tangents = normalize(np.gradient(centres, axis=0))
        sections = [section(t) for t in stations]
        widest = max(s[0] + s[1] for s in sections)
        chart = b.new_chart(name, 2.0 * widest * 1.57)
        rings: list[Ring] = []
        sign = np.array([-1.0, 1.0, 1.0]) if mirrored else np.ones(3)
        angles = 2 * np.pi * (np.arange(ring_size) + 0.5) / ring_size
        for t, centre, tangent, (h1, h2, exponent, o1, o2) in zip(stations, centres, tangents, sections):
            e1, e2 = perpendicular_frame(tangent, hint)
            flat = superellipse(angles, h1, h2, exponent)
            centre = centre + o1 * e1 + o2 * e2
            points = centre + flat[:, :1] * e1 + flat[:, 1:] * e2
            ids = b.add_points(points * sign, weights(np.full(ring_size, t), points), name, centre * sign)
            ring = Ring(ids, angles / (2 * np.pi), t)
            if rings:
                b.bridge(rings[-1], ring, chart)
            rings.append(ring)
        for at_end in (False, True):
            k = -1 if at_end else 0
            if poles is None:
                reach = 0.7 * min(sections[k][0], sections[k][1])
                pole_t = stations[k] + (reach if at_end else -reach)
            else:
                pole_t = poles[int(at_end)]
            pole = centres[k] + (pole_t - stations[k]) * tangents[k]
            pole_id = b.add_points((pole * sign)[None], weights(np.array([pole_t]), pole[None]), name, pole * sign)[0]
            b.close(rings[k], pole_id, pole_t, chart, at_end=at_end)
        if mirrored:
            b.flip_faces_from(first_face)
        return np.arange(first_vertex, b.count)

    # -- parts --------------------------------------------------------------------------------

    def torso(self, vertex_budget: int) -> None:
        p, h = self.props, self.h
        ys = np.array([-0.545, -0.50, -0.45, -0.38, -0.30, -0.20, -0.12, -0.05, 0.02, 0.075, 0.120, 0.162]) * h
        width = np.array([0.050, 0.125, 0.160, 0.168, 0.155, 0.135, 0.132, 0.146, 0.160, 0.166, 0.148, 0.085])
        front = np.array([0.040, 0.080, 0.098, 0.102, 0.100, 0.095, 0.096, 0.104, 0.108, 0.090, 0.068, 0.048])
        back = np.array([0.040, 0.085, 0.112, 0.116, 0.096, 0.086, 0.086, 0.090, 0.094, 0.086, 0.072, 0.050])
        hip_band = smoothstep((-0.22 * h - ys) / (0.15 * h))
        shoulder_band = smoothstep((ys + 0.06 * h) / (0.12 * h))
        waist_band = np.exp(-(((ys + 0.16 * h) / (0.08 * h)) ** 2))
        width = width * h * (1 + (p.hips - 1) * hip_band + (p.shoulders - 1) * shoulder_band + (p.waist - 1) * waist_band)
        front, back = front * h, back * h
        rings = 40
        stations = ys[0] + (ys[-1] - ys[0]) * (np.arange(rings) + 0.5) / rings
        # the torso takes whatever the other parts left of SMPL-X's vertex count (2 poles + rings)
        counts = np.full(rings, (vertex_budget - 2) // rings)
        counts[: (vertex_budget - 2) - counts.sum()] += 1
        b = self.builder
        chart = b.new_chart("torso", 2 * 0.17 * 3.2 * h)
        joints = ["pelvis", "spine1", "spine2", "spine3", "neck"]
        bounds = [self.j(n)[1] for n in joints[1:]]
        made: list[Ring] = []
        for y, count in zip(stations, counts):
            w = np.interp(y, ys, width)
            f = np.interp(y, ys, front)
            k = np.interp(y, ys, back)
            angles = 2 * np.pi * (np.arange(count) + 0.5) / count  # from +z (front) toward +x, CCW about +y
            s, c = np.sin(angles), np.cos(angles)
            exponent = 2.3
            x = w * np.sign(s) * np.abs(s) ** (2 / exponent)
            depth = np.where(c > 0, f, k)
            z = depth * np.sign(c) * np.abs(c) ** (2 / exponent)
            # bust and buttocks
            if p.bust:
                z += p.bust * np.exp(-(((np.abs(x) - 0.085 * h) / (0.05 * h)) ** 2) - ((y - 0.0) / (0.06 * h)) ** 2) * (c > 0)
            z -= 0.018 * h * np.exp(-(((np.abs(x) - 0.07 * h) / (0.06 * h)) ** 2) - ((y + 0.43 * h) / (0.07 * h)) ** 2) * (c < 0)
            centre = np.array([0.0, y, np.interp(y, [-0.5 * h, 0.1 * h], [0.0, -0.01 * h])])
            points = centre + np.stack([x, np.zeros_like(x), z], axis=1)
            weights = self.torso_weights(points, bounds)
            ids = b.add_points(points, weights, "torso", centre)
            ring = Ring(ids, angles / (2 * np.pi), y)
            if made:
                b.bridge(made[-1], ring, chart)
            made.append(ring)
        for at_end, ring, y in ((False, made[0], ys[0] - 0.012 * h), (True, made[-1], ys[-1] + 0.012 * h)):
            pole = np.array([0.0, y, 0.0])
            pole_id = b.add_points(pole[None], self.torso_weights(pole[None], bounds), "torso", pole)[0]
            b.close(ring, pole_id, y, chart, at_end=at_end)

    def torso_weights(self, points: np.ndarray, bounds: list[float]) -> np.ndarray:
        h = self.h
        axial = _chain(points[:, 1], ["pelvis", "spine1", "spine2", "spine3", "neck"], bounds, [0.05 * h, 0.04 * h, 0.03 * h, 0.03 * h])
        x, y = points[:, 0], points[:, 1]
        left = x > 0
        shoulder = smoothstep((np.abs(x) - 0.07 * h) / (0.09 * h)) * smoothstep((y - 0.0 * h) / (0.07 * h))
        hip = 0.6 * smoothstep((np.abs(x) - 0.03 * h) / (0.10 * h)) * smoothstep((self.j("pelvis")[1] + 0.03 * h - y) / (0.10 * h))
        out = axial * (1 - shoulder - hip)[:, None]
        for side, mask in (("left", left), ("right", ~left)):
            out[mask, JOINT[f"{side}_collar"]] += 0.75 * shoulder[mask]
            out[mask, JOINT[f"{side}_shoulder"]] += 0.25 * shoulder[mask]
            out[mask, JOINT[f"{side}_hip"]] += hip[mask]
        return out

    def neck(self) -> None:
        h = self.h
        spine = np.array([[0.0, 0.03 * h, -0.022 * h], self.j("neck"), [0.0, 0.29 * h, 0.0]])
        length = np.linalg.norm(np.diff(spine, axis=0), axis=1).sum()
        stations = np.linspace(0.0, length, 10)
        t_neck = np.linalg.norm(spine[1] - spine[0])
        t_head = t_neck + (self.j("head")[1] - self.j("neck")[1])

        def section(t):
            r = np.interp(t, [0, t_neck, length], [0.078, 0.064, 0.060]) * h
            return (r, 0.95 * r, 2.0, 0.0, 0.0)

        def weights(t, points):
            return _chain(t, ["spine3", "neck", "head"], [t_neck - 0.03 * h, t_head], [0.025 * h, 0.03 * h])

        self.tube("neck", spine, stations, section, 24, weights, np.array([1.0, 0.0, 0.0]), mirrored=False)

    def arm(self, side: str) -> None:
        h, p = self.h, self.props
        mirrored = side == "right"
        left = {n: self.j(f"left_{n}") for n in ("collar", "shoulder", "elbow", "wrist")}
        start = np.array([left["shoulder"][0] - 0.07 * h, left["shoulder"][1] + 0.004 * h, left["shoulder"][2]])
        end = left["wrist"] + np.array([0.035, -0.002, 0.0]) * h * p.hands
        spine = np.array([start, left["shoulder"], left["elbow"], left["wrist"], end])
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(spine, axis=0), axis=1))])
        stations = np.concatenate([np.linspace(0.0, cum[1], 5)[:-1], np.linspace(cum[1], cum[2], 11)[:-1], np.linspace(cum[2], cum[3], 11)[:-1], np.linspace(cum[3], cum[4], 4)])
        g = p.limbs * h

        def section(t):
            # (vertical half-size, horizontal half-size); deltoid, biceps, elbow, forearm, flattened wrist
            marks = [0.0, cum[1] - 0.02 * h, cum[1] + 0.05 * h, cum[2] - 0.06 * h, cum[2], cum[2] + 0.07 * h, cum[3], cum[4]]
            vertical = np.array([0.058, 0.060, 0.047, 0.040, 0.036, 0.038, 0.020, 0.018]) * g
            horizontal = np.array([0.060, 0.056, 0.046, 0.043, 0.038, 0.043, 0.030, 0.026]) * g
            return (np.interp(t, marks, vertical), np.interp(t, marks, horizontal), 2.0, 0.0, 0.0)

        names = [f"{side}_{n}" for n in ("collar", "shoulder", "elbow", "wrist")]

        def weights(t, points):
            return _chain(t, names, [cum[1], cum[2], cum[3]], [0.045 * h, 0.035 * h, 0.025 * h])

        self.tube(f"{side}_arm", spine, stations, section, 22, weights, np.array([0.0, 1.0, 0.0]), mirrored)

    def leg(self, side: str) -> None:
        h, p = self.h, self.props
        mirrored = side == "right"
        hip, knee, ankle = (self.j(f"left_{n}") for n in ("hip", "knee", "ankle"))
        start = hip + np.array([-0.005, 0.06, 0.0]) * h
        end = ankle + np.array([0.0, -0.035, 0.01]) * h
        spine = np.array([start, hip, knee, ankle, end])
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(spine, axis=0), axis=1))])
        stations = np.concatenate([np.linspace(0.0, cum[1], 3)[:-1], np.linspace(cum[1], cum[2], 15)[:-1], np.linspace(cum[2], cum[3], 15)[:-1], np.linspace(cum[3], cum[4], 3)])
        g = p.limbs * h
        hips = p.hips

        def section(t):
            marks = [0.0, cum[1], cum[1] + 0.18 * h, cum[2] - 0.06 * h, cum[2], cum[2] + 0.12 * h, cum[3] - 0.08 * h, cum[3], cum[4]]
            sideways = np.array([0.080, 0.086 * hips, 0.070, 0.054, 0.050, 0.053, 0.036, 0.033, 0.030]) * g
            depth = np.array([0.080, 0.086, 0.072, 0.056, 0.052, 0.058, 0.038, 0.034, 0.032]) * g
            calf = 0.012 * g * np.exp(-(((t - cum[2] - 0.12 * h) / (0.08 * h)) ** 2))
            return (np.interp(t, marks, sideways), np.interp(t, marks, depth), 2.0, 0.0, -calf)

        names = ["pelvis"] + [f"{side}_{n}" for n in ("hip", "knee", "ankle")]

        def weights(t, points):
            return _chain(t, names, [cum[1] - 0.02 * h, cum[2], cum[3]], [0.05 * h, 0.045 * h, 0.03 * h])

        self.tube(f"{side}_leg", spine, stations, section, 24, weights, np.array([1.0, 0.0, 0.0]), mirrored)

    def foot(self, side: str) -> None:
        h = self.h
        ankle, toe = self.j("left_ankle"), self.j("left_foot")
        heel_z, tip_z = ankle[2] - 0.062 * h, toe[2] + 0.085 * h
        direction = normalize(np.array([toe[0] - ankle[0], 0.0, toe[2] - ankle[2]]))
        sole = SOLE_Y * h

        def along(z: float) -> np.ndarray:
            return np.array([ankle[0] - 0.004 * h, sole, ankle[2]]) + direction * (z - ankle[2]) / direction[2]

        spine = np.array([along(heel_z), along(tip_z)])
        length = np.linalg.norm(spine[1] - spine[0])
        stations = np.linspace(0.0, length, 14)
        t_toe = (toe[2] - heel_z) / direction[2]
        marks = np.array([0.0, 0.22, 0.40, 0.63, 0.78, 0.91, 1.0]) * length
        half_width = np.array([0.026, 0.031, 0.036, 0.045, 0.046, 0.040, 0.030]) * h
        height = np.array([0.060, 0.092, 0.082, 0.046, 0.031, 0.026, 0.020]) * h

        def section(t):
            # e1 = x (across), e2 = y (up): the sole stays flat at SOLE_Y
            half_height = 0.5 * np.interp(t, marks, height)
            return (np.interp(t, marks, half_width), half_height, 3.0, 0.0, half_height)

        names = [f"{side}_ankle", f"{side}_foot"]

        def weights(t, points):
            return _chain(t, names, [t_toe], [0.02 * h])

        self.tube(f"{side}_foot", spine, stations, section, 20, weights, np.array([1.0, 0.0, 0.0]), side == "right")

    def head(self, rings: int = 44, around: int = 64) -> None:
        """The head: a superellipsoid with facial relief, densest around the face."""
        s, b = self.head_scale, self.builder
        alphas = _density_samples(rings, 0.12, np.pi - 0.10, lambda a: 1.0 + 1.7 * np.exp(-(((a - 1.25) / 0.55) ** 2)))
        # symmetric about the midline, with meridians straight down the middle of the face and the back
        half = _density_samples(around // 2 - 1, 0.0, np.pi, lambda f: 1.0 + 2.2 * np.exp(-((f / 0.75) ** 2)))
        phis = np.concatenate([[0.0], half, [np.pi], 2 * np.pi - half[::-1]])
        chart = b.new_chart("head", 2 * np.pi * 0.09 * s)
        made: list[Ring] = []
        for alpha in alphas:
            local = head_surface(np.full(around, alpha), phis)
            points = self.head_centre + local * s
            ids = b.add_points(points, head_weights(local), "head", self.head_centre + np.array([0.0, local[0, 1] * s, 0.0]))
            ring = Ring(ids, phis / (2 * np.pi), alpha * 0.11 * s)
            if made:
                b.bridge(made[-1], ring, chart)
            made.append(ring)
        for at_end, ring, alpha in ((False, made[0], 0.0), (True, made[-1], np.pi)):
            local = head_surface(np.array([alpha]), np.array([0.0]))
            pole = self.head_centre + local[0] * s
            pole_id = b.add_points(pole[None], head_weights(local), "head", pole)[0]
            b.close(ring, pole_id, alpha * 0.11 * s, chart, at_end=at_end)
        head = np.flatnonzero(b.part == b.part_id("head"))
        self.anchors["nose"] = int(head[np.argmax(b.points[head, 2])])  # the nose tip is the most forward point

    def eyes(self) -> None:
        s = self.head_scale
        for side, sign in (("left", 1.0), ("right", -1.0)):
            socket = face_point(sign * EYE_X, EYE_Y)
            centre_local = socket + np.array([0.0, 0.0, EYE_PROTRUSION - EYE_RADIUS])
            centre = self.head_centre + centre_local * s
            radius = EYE_RADIUS * s
            spine = np.array([centre - [0, 0, radius], centre + [0, 0, radius]])
            stations = radius * (1 - np.cos(np.linspace(0.25, np.pi - 0.25, 10)))

            def section(t, r=radius):
                ring_r = np.sqrt(max(r * r - (t - r) ** 2, 1e-12))
                return (ring_r, ring_r, 2.0, 0.0, 0.0)

            def weights(t, points, joint=f"{side}_eye_smplhf"):
                return _onehot(len(t), JOINT[joint])

            ids = self.tube(f"{side}_eye", spine, stations, section, 14, weights, np.array([1.0, 0.0, 0.0]), mirrored=False, poles=(0.0, 2 * radius))
            self.joints[JOINT[f"{side}_eye_smplhf"]] = centre
            self.anchors[f"{side[0]}eye"] = int(ids[np.argmax(self.builder.points[ids][:, 2])])

    def ears(self) -> None:
        s = self.head_scale
        for side in ("left", "right"):
            centre = self.head_centre + np.array([EAR_X, 0.0, -0.012]) * s
            tilt = normalize(np.array([0.0, 1.0, -0.25]))
            spine = np.array([centre - tilt * 0.030 * s, centre + tilt * 0.030 * s])
            stations = 0.030 * s * (1 - np.cos(np.linspace(0.3, np.pi - 0.3, 8)))

            def section(t, s=s):
                ring = np.sqrt(max(1.0 - ((t - 0.030 * s) / (0.030 * s)) ** 2, 1e-6))
                return (0.008 * s * ring, 0.017 * s * ring, 2.0, -0.002 * s, 0.0)

            def weights(t, points):
                return _onehot(len(t), JOINT["head"])

            ids = self.tube(f"{side}_ear", spine, stations, section, 12, weights, np.array([1.0, 0.0, 0.0]), side == "right", poles=(0.0, 0.060 * s))
            target = self.head_centre + np.array([EAR_X + 0.008, 0.0, -0.012]) * s
            target[0] *= -1 if side == "right" else 1
            self.anchors[f"{side[0]}ear"] = int(ids[np.argmin(np.linalg.norm(self.builder.points[ids] - target, axis=1))])

    def nearest(self, part: str, target: np.ndarray) -> int:
        ids = np.flatnonzero(self.builder.part == self.builder.part_id(part))
        return int(ids[np.argmin(np.linalg.norm(self.builder.points[ids] - target, axis=1))])

    def hand(self, side: str) -> None:
        wrist = self.j(f"{side}_wrist")
        frame = _hand_frame(side)
        names = ("wrist",) + tuple(f"{d}{i}" for d in DIGITS for i in (1, 2, 3))
        columns = [JOINT[f"{side}_{n}"] for n in names]
        origin = hand_rest_joints(self.props.hands * self.h)[0]

        def to_world(points: np.ndarray) -> np.ndarray:
            return wrist + (np.asarray(points) - origin) @ frame.T

        built = build_hand(self.builder, to_world, columns, f"{side}_hand", mirrored=side == "left", scale=self.props.hands * self.h)
        for digit, vertex in built.tips.items():
            self.anchors[f"{side[0]}{digit}"] = vertex


def head_weights(local: np.ndarray) -> np.ndarray:
    """Head vertices follow the head joint; the lower lip, chin and jaw follow the jaw."""
    y, z = local[:, 1], local[:, 2]
    jaw = smoothstep((MOUTH_Y + 0.001 - y) / 0.006) * smoothstep((z + 0.01) / 0.035)
    weights = np.zeros((len(local), 55))
    weights[:, JOINT["head"]] = 1.0 - jaw
    weights[:, JOINT["jaw"]] = jaw
    return weights


def build_body(gender: str = "neutral") -> BodyGeometry:
    """Build the stand-in body for ``gender`` ("neutral", "male" or "female")."""
    props = PROPORTIONS[gender]
    maker = _BodyMaker(props)
    maker.head()
    maker.eyes()
    maker.ears()
    maker.neck()
    for side in ("left", "right"):
        maker.arm(side)
        maker.hand(side)
        maker.leg(side)
        maker.foot(side)
    maker.torso(SMPLX_VERTEX_COUNT - maker.builder.count)
    h = props.height
    for side, sign, tag in (("left", 1.0, "L"), ("right", -1.0, "R")):
        ankle, toe = maker.j(f"{side}_ankle"), maker.j(f"{side}_foot")
        sole = SOLE_Y * h
        tip = toe[2] + 0.085 * h
        targets = {
            "BigToe": (toe[0] - sign * 0.018 * h, sole + 0.012 * h, tip - 0.012 * h),
            "SmallToe": (toe[0] + sign * 0.030 * h, sole + 0.010 * h, tip - 0.045 * h),
            "Heel": (ankle[0], sole + 0.008 * h, ankle[2] - 0.062 * h),
        }
        for name, target in targets.items():
            maker.anchors[f"{tag}{name}"] = maker.nearest(f"{side}_foot", np.array(target))
    b = maker.builder
    weights = b.weights
    weights /= weights.sum(axis=1, keepdims=True)
    vt, ft = b.uv_atlas()
    return BodyGeometry(
        vertices=b.points,
        faces=b.faces,
        weights=weights,
        part=b.part,
        part_names=list(b.part_names),
        axis_points=b.axis_points,
        joints=maker.joints,
        vt=vt,
        ft=ft,
        head_centre=maker.head_centre,
        head_scale=maker.head_scale,
        anchors=dict(maker.anchors),
    )
