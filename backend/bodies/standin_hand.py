"""The procedural stand-in hand: one connected surface, 778 vertices and 1538 triangles like MANO.

Built in a hand frame ``(f, l, u)``: ``f`` from the wrist toward the fingertips, ``l`` toward
the thumb/index side, ``u`` out of the back of the hand (palm facing ``-u``). For a right hand
in MANO's and SMPL-X's rest pose that frame is ``f = -X``, ``l = +Z``, ``u = +Y`` (fingers
along -X, thumb forward, palm down); the left hand is its mirror image (``f = +X``).

The palm is a tube from an open wrist ring of 16 vertices (the hole real MANO has, which gives
exactly F = 2V - 16 = 1538), split once for the thumb and then four times at the knuckles for
the fingers, so the surface is a single genus-0 sheet. Joint placement follows MANO's mean
right hand (the MANO/SMPL-X order: wrist, index, middle, pinky, ring, thumb; three joints each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from backend.bodies.standin_mesh import MeshBuilder, Ring, chain_weights, normalize, perpendicular_frame, superellipse

HAND_VERTEX_COUNT = 778
HAND_FACE_COUNT = 1538
WRIST_RING_SIZE = 16
FINGER_RING_SIZE = 10  # 5 on the back, 5 on the palm side: the knuckle ring splits cleanly between fingers
THUMB_RING_SIZE = 10

DIGITS = ("index", "middle", "pinky", "ring", "thumb")  # MANO / SMPL-X joint order
HAND_JOINT_NAMES = ("wrist",) + tuple(f"{digit}{k}" for digit in DIGITS for k in (1, 2, 3))
HAND_PARENTS = (-1,) + tuple(p for d in range(5) for p in (0, 3 * d + 1, 3 * d + 2))

F_AXIS, L_AXIS, U_AXIS = np.eye(3)


@dataclass(frozen=True)
class Digit:
    """A finger: base joint position, direction (radians of splay toward +l), segment lengths, radii."""

    name: str
    base: tuple[float, float, float]
    splay: float
    lengths: tuple[float, float, float]  # joint1 -> joint2 -> joint3 -> tip
    radii: tuple[float, float, float, float]  # at joint1, joint2, joint3, tip


FINGERS = (  # across the knuckles from the index side (+l) to the pinky side
    Digit("index", (0.088, 0.021, -0.004), np.radians(4.0), (0.033, 0.022, 0.022), (0.0100, 0.0090, 0.0080, 0.0072)),
    Digit("middle", (0.094, -0.002, -0.002), 0.0, (0.032, 0.024, 0.023), (0.0102, 0.0092, 0.0082, 0.0074)),
    Digit("ring", (0.085, -0.025, -0.003), np.radians(-4.0), (0.030, 0.023, 0.022), (0.0096, 0.0088, 0.0078, 0.0070)),
    Digit("pinky", (0.072, -0.044, -0.008), np.radians(-9.0), (0.022, 0.017, 0.019), (0.0085, 0.0078, 0.0070, 0.0064)),
)
THUMB_JOINTS = np.array([[0.024, 0.024, -0.016], [0.046, 0.046, -0.016], [0.068, 0.062, -0.019]])
THUMB_TIP_LENGTH = 0.024
THUMB_RADII = (0.0155, 0.0118, 0.0102, 0.0088)

# Palm cross-sections: f, centre (l, u), half-width, half-thickness. Superellipse exponent 2.5.
PALM_WRIST = (0.0, (-0.001, -0.002), 0.026, 0.0165)
PALM_THUMB = (0.020, (-0.006, -0.003), 0.036, 0.016)
PALM_MIDDLE = ((0.036, (-0.009, -0.004), 0.042, 0.0145), (0.050, (-0.010, -0.004), 0.045, 0.0135))
PALM_CURVED_OFFSET = 0.024  # the second middle ring follows the knuckle line this far behind it
PALM_LAST = (0.010, (-0.011, -0.004), 0.046, 0.013)  # here f is the distance behind each knuckle vertex
PALM_EXPONENT = 2.5
THUMB_ARC_DEGREES = (135.0, 405.0)  # around the thumb base, from its palm-side inner edge to its back inner edge
PALM_ARC_DEGREES = (50.0, 300.0)  # the rest of the thumb-split ring, over the back, the pinky side and the palm
FINGER_STEP = 0.0062  # ring spacing along the digits (m)


def _digit_polyline(digit: Digit, scale: float) -> np.ndarray:
    direction = np.cos(digit.splay) * F_AXIS + np.sin(digit.splay) * L_AXIS
    base = np.asarray(digit.base) * scale
    lengths = np.cumsum((0.0,) + digit.lengths) * scale
    return base + lengths[:, None] * direction


def _thumb_polyline(scale: float) -> np.ndarray:
    joints = THUMB_JOINTS * scale
    tip = joints[2] + normalize(joints[2] - joints[1]) * THUMB_TIP_LENGTH * scale
    return np.vstack([joints, tip])


def hand_rest_joints(scale: float = 1.0) -> np.ndarray:
    """(16, 3) designed joint positions in the hand frame, in ``HAND_JOINT_NAMES`` order."""
    by_name = {finger.name: _digit_polyline(finger, scale) for finger in FINGERS}
    by_name["thumb"] = _thumb_polyline(scale)
    wrist = np.array([0.0, PALM_WRIST[1][0], PALM_WRIST[1][1]]) * scale
    return np.vstack([wrist] + [by_name[digit][:3] for digit in DIGITS])


def hand_tip_points(scale: float = 1.0) -> dict[str, np.ndarray]:
    """Fingertip positions (hand frame) by digit name."""
    tips = {finger.name: _digit_polyline(finger, scale)[3] for finger in FINGERS}
    tips["thumb"] = _thumb_polyline(scale)[3]
    return tips


@dataclass
class HandBuild:
    vertices: np.ndarray  # ids of this hand's vertices in the builder
    tips: dict[str, int]  # digit name -> fingertip vertex id
    joints: np.ndarray  # (16, 3) designed joints, world coordinates


class _HandMaker:
    """Builds one hand into a MeshBuilder; all geometry is computed in the hand frame."""

    def __init__(self, builder: MeshBuilder, scale: float, to_world: Callable[[np.ndarray], np.ndarray], columns: Sequence[int], part: str):
        self.builder, self.scale, self.to_world, self.columns, self.part = builder, scale, to_world, list(columns), part

    def weights(self, local_weights: dict[int, np.ndarray], count: int) -> np.ndarray:
        out = np.zeros((count, self.builder.num_joints))
        for joint, values in local_weights.items():
            out[:, self.columns[joint]] += values
        return out / out.sum(axis=1, keepdims=True)

    def add(self, points: np.ndarray, local_weights: dict[int, np.ndarray], centre: np.ndarray) -> np.ndarray:
        points = np.atleast_2d(points)
        world = self.to_world(points)
        axis = self.to_world(np.broadcast_to(centre, points.shape))
        return self.builder.add_points(world, self.weights(local_weights, len(points)), self.part, axis)

    def palm_ring(self, section: tuple, count: int, degrees: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points of a palm cross-section (full, or an arc between two angles) and their angles."""
        f, (lc, uc), half_width, half_thickness = section
        s = self.scale
        if degrees is None:
            angles = 2 * np.pi * (np.arange(count) + 0.5) / count
        else:
            angles = np.radians(np.linspace(degrees[0], degrees[1], count))
        flat = superellipse(angles, half_width * s, half_thickness * s, PALM_EXPONENT)
        centre = np.array([f, lc, uc]) * s
        points = centre + flat[:, :1] * L_AXIS + flat[:, 1:] * U_AXIS
        return points, angles, centre

    def digit_ring(self, centre: np.ndarray, direction: np.ndarray, radius: float, count: int, phase: float) -> tuple[np.ndarray, np.ndarray]:
        """A slightly flattened ring around a digit, counter-clockwise about ``direction``."""
        e1, e2 = perpendicular_frame(direction, L_AXIS if abs(direction @ L_AXIS) < 0.9 else U_AXIS)
        angles = 2 * np.pi * (np.arange(count) + phase) / count
        return centre + radius * (np.cos(angles)[:, None] * e1 + 0.88 * np.sin(angles)[:, None] * e2), angles


def _stations(lengths: Sequence[float], end: float, step: float) -> np.ndarray:
    """Axial ring positions (excluding 0) with a ring at every joint, up to ``end``."""
    marks = np.concatenate([[0.0], np.cumsum(lengths)])
    marks = np.append(marks[marks < end - 1e-9], end)
    out = []
    for a, b in zip(marks[:-1], marks[1:]):
        n = max(1, int(round((b - a) / step)))
        out.extend(a + (b - a) * np.arange(1, n + 1) / n)
    return np.asarray(out)


def _polyline_at(polyline: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points and unit directions at arc lengths ``t`` (joint rings use the mean of both segments)."""
    seg = np.diff(polyline, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    k = np.clip(np.searchsorted(cum, t, side="right") - 1, 0, len(seg) - 1)
    points = polyline[k] + (seg[k] / seg_len[k, None]) * (t - cum[k])[:, None]
    dirs = seg / seg_len[:, None]
    directions = dirs[k].copy()
    at_joint = np.isclose(t, cum[k]) & (k > 0)
    directions[at_joint] = normalize(dirs[k[at_joint]] + dirs[k[at_joint] - 1])
    return points, directions


def _digit_radius(t: np.ndarray, cum: np.ndarray, radii: Sequence[float]) -> np.ndarray:
    """Radius profile: linear between joints, a slight knuckle bulge at each joint."""
    base = np.interp(t, cum[: len(radii)], radii)
    bulge = sum(np.exp(-(((t - c) / (0.35 * r)) ** 2)) for c, r in zip(cum[:3], radii[:3]))
    return base * (1.0 + 0.06 * bulge)


def build_hand(
    builder: MeshBuilder,
    to_world: Callable[[np.ndarray], np.ndarray],
    joint_columns: Sequence[int],
    part: str,
    mirrored: bool,
    scale: float = 1.0,
) -> HandBuild:
    """Add one hand (778 vertices, 1538 faces) to ``builder``.

    ``to_world`` maps hand-frame points to the builder's frame; ``mirrored`` says it has
    determinant -1 (a left hand), so the winding is flipped to stay counter-clockwise from
    outside. ``joint_columns[k]`` is the builder's joint index of ``HAND_JOINT_NAMES[k]``.
    """
    maker = _HandMaker(builder, scale, to_world, joint_columns, part)
    first_vertex, first_face = builder.count, builder.face_count
    s = scale
    wrist_id = 0
    digit_joint = {digit: 1 + 3 * i for i, digit in enumerate(DIGITS)}  # joint1 of each digit
    fingers = [(finger, _digit_polyline(finger, s)) for finger in FINGERS]
    thumb_line = _thumb_polyline(s)

    # Ring counts of the fingers and thumb are fixed; the palm's middle rings absorb the rest.
    finger_rings = []
    for finger, line in fingers:
        length = sum(finger.lengths) * s
        finger_rings.append(_stations(np.asarray(finger.lengths) * s, length - finger.radii[3] * s, FINGER_STEP * s))
    thumb_length = np.linalg.norm(np.diff(thumb_line, axis=0), axis=1)
    thumb_stations = _stations(thumb_length, thumb_length.sum() - THUMB_RADII[3] * s, FINGER_STEP * s)
    dome_rings = 1  # one ring between the last cylinder ring and the tip vertex
    digit_vertices = sum((len(r) + dome_rings) * FINGER_RING_SIZE + 1 for r in finger_rings)
    digit_vertices += (len(thumb_stations) + dome_rings) * THUMB_RING_SIZE + 1
    palm_arc = 16
    knuckle_count = 4 * FINGER_RING_SIZE
    fixed = WRIST_RING_SIZE + THUMB_RING_SIZE + palm_arc + 2 * knuckle_count + digit_vertices
    spare = HAND_VERTEX_COUNT - fixed  # shared by the two free palm rings
    middle_counts = [spare // 2, spare - spare // 2]
    if min(middle_counts) < 16:
        raise RuntimeError(f"hand resolution leaves too few palm vertices ({middle_counts})")

    palm_chart = builder.new_chart(f"{part}_palm", 0.20 * s)

    # Wrist ring: open boundary (inside the forearm on the body, the wrist opening on MANO).
    points, angles, centre = maker.palm_ring(PALM_WRIST, WRIST_RING_SIZE)
    wrist_ring = Ring(maker.add(points, {wrist_id: np.ones(len(points))}, centre), angles / (2 * np.pi), PALM_WRIST[0] * s)

    # Thumb-split ring: an arc around the thumb base followed by an arc around the palm.
    thumb_dir = normalize(thumb_line[1] - thumb_line[0])
    e1, e2 = perpendicular_frame(thumb_dir, U_AXIS)
    phi = np.radians(np.linspace(*THUMB_ARC_DEGREES, THUMB_RING_SIZE))
    thumb_points = thumb_line[0] + THUMB_RADII[0] * s * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    axial = (thumb_points - thumb_line[0]) @ thumb_dir
    thumb_weights = chain_weights(axial, [-0.004 * s], 0.008 * s)
    thumb_ids = maker.add(thumb_points, {wrist_id: thumb_weights[:, 0], digit_joint["thumb"]: thumb_weights[:, 1]}, thumb_line[0])
    arc_points, arc_angles, arc_centre = maker.palm_ring(PALM_THUMB, palm_arc, PALM_ARC_DEGREES)
    arc_ids = maker.add(arc_points, {wrist_id: np.ones(palm_arc)}, arc_centre)
    gap = np.radians(PALM_ARC_DEGREES[1]), np.radians(PALM_ARC_DEGREES[0]) + 2 * np.pi
    thumb_u = (gap[0] + (gap[1] - gap[0]) * (np.arange(THUMB_RING_SIZE) + 1) / (THUMB_RING_SIZE + 1)) / (2 * np.pi)
    split_ring = Ring(np.concatenate([thumb_ids, arc_ids]), np.concatenate([thumb_u, arc_angles / (2 * np.pi)]), PALM_THUMB[0] * s)
    builder.bridge(wrist_ring, split_ring, palm_chart)
    thumb_base, palm_rest = builder.split(split_ring.indices, THUMB_RING_SIZE, f"{part}_thumb_web")
    previous = Ring(palm_rest, arc_angles / (2 * np.pi), PALM_THUMB[0] * s)

    # Knuckle ring: the four finger base rings side by side (backs index -> pinky, then palms back).
    half = FINGER_RING_SIZE // 2
    finger_angle = 2 * np.pi * (np.arange(FINGER_RING_SIZE) + 0.5) / FINGER_RING_SIZE  # k < half: back side
    knuckle_ids, knuckle_local = {}, {}
    for finger, line in fingers:
        direction = normalize(line[1] - line[0])
        points, _ = maker.digit_ring(line[0], direction, 1.06 * finger.radii[0] * s, FINGER_RING_SIZE, 0.5)
        joint = digit_joint[finger.name]
        knuckle_ids[finger.name] = maker.add(points, {wrist_id: np.full(len(points), 0.5), joint: np.full(len(points), 0.5)}, line[0])
        knuckle_local.update(zip(knuckle_ids[finger.name].tolist(), points))
    order = [f.name for f in FINGERS]
    tops = np.concatenate([knuckle_ids[name][:half] for name in order])  # backs, index -> pinky
    bottoms = np.concatenate([knuckle_ids[name][half:][::-1] for name in order])  # palm sides, index -> pinky
    knuckle_ring = np.concatenate([tops, bottoms[::-1]])
    knuckle_points = np.array([knuckle_local[i] for i in knuckle_ring.tolist()])
    # u from the across-the-hand coordinate (monotonic along both rows), matching the palm rings' angles.
    across = knuckle_points[:, 1] - PALM_LAST[1][0] * s
    across = np.arccos(across / (1.02 * np.abs(across).max()))
    knuckle_u = np.where(np.arange(len(knuckle_ring)) < len(tops), across, 2 * np.pi - across) / (2 * np.pi)

    # Palm between thumb and knuckles: a flat ring, a ring following the knuckle line, and a ring
    # just behind the knuckles with one vertex behind each knuckle vertex (a clean quad band).
    knuckle_line = np.array(sorted((f.base[1], f.base[0]) for f in FINGERS)) * s
    for section, count, behind in zip(PALM_MIDDLE, middle_counts, (None, PALM_CURVED_OFFSET)):
        points, angles, centre = maker.palm_ring(section, int(count))
        if behind is not None:
            points[:, 0] = np.maximum(np.interp(points[:, 1], knuckle_line[:, 0], knuckle_line[:, 1]) - behind * s, section[0] * s)
        ring = Ring(maker.add(points, {wrist_id: np.ones(len(points))}, centre), angles / (2 * np.pi), section[0] * s)
        builder.bridge(previous, ring, palm_chart)
        previous = ring
    flat = superellipse(2 * np.pi * knuckle_u, PALM_LAST[2] * s, PALM_LAST[3] * s, PALM_EXPONENT)
    centre = np.array([0.0, *PALM_LAST[1]]) * s
    aligned = 0.5 * (centre + flat[:, :1] * L_AXIS + flat[:, 1:] * U_AXIS + knuckle_points)
    aligned[:, 0] = knuckle_points[:, 0] - PALM_LAST[0] * s
    ring = Ring(maker.add(aligned, {wrist_id: np.ones(len(aligned))}, centre), knuckle_u, 0.070 * s)
    builder.bridge(previous, ring, palm_chart)
    builder.bridge(ring, Ring(knuckle_ring, knuckle_u, 0.080 * s), palm_chart)

    # Split the knuckle ring into the four finger base rings.
    remaining = np.roll(knuckle_ring, half)  # start with the index finger's palm-side vertices
    base_rings = {}
    for position, name in enumerate(order):
        if position < len(order) - 1:
            base_rings[name], remaining = builder.split(remaining, FINGER_RING_SIZE, f"{part}_{name}_web")
            remaining = np.roll(remaining, half)
        else:
            base_rings[name] = remaining
    tips: dict[str, int] = {}

    def grow_digit(name: str, base_ids: np.ndarray, base_u: np.ndarray, line: np.ndarray, radii: Sequence[float], stations: np.ndarray, ring_size: int, boundaries: np.ndarray) -> None:
        seg_len = np.linalg.norm(np.diff(line, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg_len)])
        chart = builder.new_chart(f"{part}_{name}", 2 * np.pi * radii[0] * s)
        previous_ring = Ring(base_ids, base_u, 0.0)
        joint = digit_joint[name]

        def ring_weights(t: np.ndarray) -> dict[int, np.ndarray]:
            w = chain_weights(t, boundaries, 0.5 * radii[0] * s)
            return {wrist_id: w[:, 0], joint: w[:, 1], joint + 1: w[:, 2], joint + 2: w[:, 3]}

        radius_tip = radii[3] * s
        dome_t = cum[-1] - radius_tip
        ring_t = list(stations) + [dome_t + radius_tip * np.sin(np.radians(50.0))]
        for k, t in enumerate(ring_t):
            centre, direction = _polyline_at(line, np.array([t]))
            if k < len(stations):
                radius = _digit_radius(np.array([t]), cum, np.asarray(radii) * s)[0]
            else:
                radius = radius_tip * np.cos(np.radians(50.0))
            points, angles = maker.digit_ring(centre[0], direction[0], radius, ring_size, 0.5)
            ids = maker.add(points, ring_weights(np.full(ring_size, t)), centre[0])
            ring = Ring(ids, angles / (2 * np.pi), t)
            builder.bridge(previous_ring, ring, chart)
            previous_ring = ring
        tip = maker.add(line[-1][None], ring_weights(np.array([cum[-1]])), line[-1])[0]
        builder.close(previous_ring, tip, cum[-1], chart, at_end=True)
        tips[name] = int(tip)

    for (finger, line), stations in zip(fingers, finger_rings):
        base_u = np.roll(finger_angle, half) / (2 * np.pi)  # base ring starts with its palm-side half
        joints_t = np.cumsum(np.concatenate([[0.0], finger.lengths[:2]])) * s
        grow_digit(finger.name, base_rings[finger.name], base_u, line, finger.radii, stations, FINGER_RING_SIZE, joints_t)
    thumb_base_u = phi / (2 * np.pi)
    thumb_cum = np.concatenate([[0.0], np.cumsum(thumb_length)])
    grow_digit("thumb", thumb_base, thumb_base_u, thumb_line, THUMB_RADII, thumb_stations, THUMB_RING_SIZE, thumb_cum[:3] - np.array([0.004 * s, 0.0, 0.0]))

    if mirrored:
        builder.flip_faces_from(first_face)
    vertices = np.arange(first_vertex, builder.count)
    if len(vertices) != HAND_VERTEX_COUNT or builder.face_count - first_face != HAND_FACE_COUNT:
        raise RuntimeError(f"hand has {len(vertices)} vertices / {builder.face_count - first_face} faces")
    return HandBuild(vertices=vertices, tips=tips, joints=to_world(hand_rest_joints(s)))
