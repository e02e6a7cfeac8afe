"""Mesh-building primitives for the procedural stand-in bodies: rings, tubes, caps, splits, UV charts.

A part is a *tube*: a sequence of closed vertex rings joined by triangle bands and closed by
domes. Rings may have different vertex counts (bands are zipped by each ring's angular
parameter ``u``), and one ring can be split into two child rings with a two-triangle "web"
(fingers leaving the palm). Winding is counter-clockwise seen from outside everywhere:
every ring is ordered counter-clockwise about the direction in which its tube continues.

Every triangle corner also gets a UV in its part's chart (u around, v along, in metres), and
:meth:`MeshBuilder.uv_atlas` packs the charts into one non-overlapping ``[0, 1]²`` atlas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """0 below 0, 1 above 1, C1-smooth in between."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def chain_weights(t: np.ndarray, boundaries: np.ndarray, blends: np.ndarray | float) -> np.ndarray:
    """Skinning weights along a tube: (n, K + 1) for K joint ``boundaries`` on the axial coordinate.

    Segment k lies between boundary k - 1 and k; weight moves from one segment to the next
    with a smoothstep of half-width ``blends`` around each boundary. Rows sum to 1.
    """
    t = np.asarray(t, dtype=np.float64)[:, None]
    boundaries = np.asarray(boundaries, dtype=np.float64)[None, :]
    blends = np.broadcast_to(np.asarray(blends, dtype=np.float64), boundaries.shape[1:])[None, :]
    reached = smoothstep((t - boundaries + blends) / (2.0 * blends))  # (n, K): past boundary k
    ones, zeros = np.ones((len(t), 1)), np.zeros((len(t), 1))
    cumulative = np.concatenate([ones, reached, zeros], axis=1)
    return np.clip(cumulative[:, :-1] - cumulative[:, 1:], 0.0, 1.0)


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def perpendicular_frame(axis: np.ndarray, hint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit ``e1`` (``hint`` made perpendicular to ``axis``) and ``e2 = axis × e1``: a right-handed ring frame."""
    axis = normalize(axis)
    e1 = normalize(hint - axis * np.dot(hint, axis))
    return e1, np.cross(axis, e1)


def superellipse(angles: np.ndarray, half_1: float, half_2: float, exponent: float = 2.0) -> np.ndarray:
    """Points (n, 2) on ``|x/a|^p + |y/b|^p = 1`` at the given polar angles (p = 2: an ellipse)."""
    cos, sin = np.cos(angles), np.sin(angles)
    power = 2.0 / exponent
    return np.stack(
        [half_1 * np.sign(cos) * np.abs(cos) ** power, half_2 * np.sign(sin) * np.abs(sin) ** power], axis=-1
    )


@dataclass
class Ring:
    """A closed loop of vertex ids, counter-clockwise about its tube's direction of travel.

    ``u`` is each vertex's angular parameter in [0, 1) (increasing along the ring, one wrap);
    ``v`` is the ring's coordinate along its tube's UV chart, in metres.
    """

    indices: np.ndarray
    u: np.ndarray
    v: float

    def __post_init__(self) -> None:
        self.indices = np.asarray(self.indices, dtype=np.int64)
        self.u = np.mod(np.asarray(self.u, dtype=np.float64), 1.0)
        if len(self.indices) != len(self.u) or len(self.indices) < 3:
            raise ValueError("a ring needs at least 3 vertices and one u per vertex")

    def unrolled(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices and u starting at the smallest u, closed by repeating the first with u + 1."""
        order = np.roll(np.arange(len(self.u)), -int(np.argmin(self.u)))
        u = self.u[order]
        if np.any(np.diff(u) <= 0):
            raise ValueError("ring u values must increase around the ring (one wrap)")
        return np.append(self.indices[order], self.indices[order[0]]), np.append(u, u[0] + 1.0)


class MeshBuilder:
    """Accumulates vertices (with per-vertex rig attributes), triangles and per-corner chart UVs."""

    def __init__(self, num_joints: int):
        self.num_joints = num_joints
        self._points: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        self._part: list[np.ndarray] = []
        self._axis: list[np.ndarray] = []
        self.count = 0
        self.part_names: list[str] = []
        self._faces: list[tuple[int, int, int]] = []
        self._corner_uv: list[tuple[tuple[float, float], ...]] = []
        self._face_chart: list[int] = []
        self.chart_names: list[str] = []
        self.chart_width: list[float] = []

    # -- vertices ---------------------------------------------------------------------------

    def part_id(self, name: str) -> int:
        if name not in self.part_names:
            self.part_names.append(name)
        return self.part_names.index(name)

    def add_points(self, points: np.ndarray, weights: np.ndarray, part: str, axis_points: np.ndarray | None = None) -> np.ndarray:
        """Add vertices with their skinning weights (n, num_joints) and the axis point they surround."""
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
        if weights.shape != (len(points), self.num_joints):
            raise ValueError(f"weights must be ({len(points)}, {self.num_joints}), got {weights.shape}")
        axis = points if axis_points is None else np.broadcast_to(axis_points, points.shape)
        self._points.append(points)
        self._weights.append(weights)
        self._part.append(np.full(len(points), self.part_id(part)))
        self._axis.append(np.array(axis, dtype=np.float64))
        first = self.count
        self.count += len(points)
        return np.arange(first, self.count)

    @property
    def points(self) -> np.ndarray:
        return np.concatenate(self._points) if self._points else np.zeros((0, 3))

    @property
    def weights(self) -> np.ndarray:
        return np.concatenate(self._weights)

    @property
    def part(self) -> np.ndarray:
        return np.concatenate(self._part)

    @property
    def axis_points(self) -> np.ndarray:
        return np.concatenate(self._axis)

    @property
    def faces(self) -> np.ndarray:
        return np.asarray(self._faces, dtype=np.int64).reshape(-1, 3)

    @property
    def face_chart(self) -> np.ndarray:
        return np.asarray(self._face_chart, dtype=np.int64)

    # -- faces ------------------------------------------------------------------------------

    def new_chart(self, name: str, width: float) -> int:
        """A UV chart whose ``u`` in [0, 1] spans ``width`` metres."""
        self.chart_names.append(name)
        self.chart_width.append(float(width))
        return len(self.chart_names) - 1

    def triangle(self, corners: tuple[int, int, int], uvs: tuple[tuple[float, float], ...], chart: int) -> None:
        self._faces.append(tuple(int(c) for c in corners))
        self._corner_uv.append(tuple((float(u), float(v)) for u, v in uvs))
        self._face_chart.append(chart)

    def bridge(self, lower: Ring, upper: Ring, chart: int) -> None:
        """Join two rings of any sizes with a band of ``len(lower) + len(upper)`` triangles."""
        width = self.chart_width[chart]
        a, ua = lower.unrolled()
        b, ub = upper.unrolled()
        i = j = 0
        while i < len(a) - 1 or j < len(b) - 1:
            advance_lower = j == len(b) - 1 or (i < len(a) - 1 and ua[i + 1] <= ub[j + 1])
            if advance_lower:
                self.triangle(
                    (a[i], a[i + 1], b[j]),
                    ((ua[i] * width, lower.v), (ua[i + 1] * width, lower.v), (ub[j] * width, upper.v)),
                    chart,
                )
                i += 1
            else:
                self.triangle(
                    (a[i], b[j + 1], b[j]),
                    ((ua[i] * width, lower.v), (ub[j + 1] * width, upper.v), (ub[j] * width, upper.v)),
                    chart,
                )
                j += 1

    def close(self, ring: Ring, pole: int, pole_v: float, chart: int, at_end: bool) -> None:
        """Fan ``ring`` to a single ``pole`` vertex; ``at_end``: the pole lies beyond the ring."""
        width = self.chart_width[chart]
        idx, u = ring.unrolled()
        for k in range(len(idx) - 1):
            mid = 0.5 * (u[k] + u[k + 1]) * width
            if at_end:
                self.triangle((idx[k], idx[k + 1], pole), ((u[k] * width, ring.v), (u[k + 1] * width, ring.v), (mid, pole_v)), chart)
            else:
                self.triangle((idx[k + 1], idx[k], pole), ((u[k + 1] * width, ring.v), (u[k] * width, ring.v), (mid, pole_v)), chart)

    def split(self, ring_indices: np.ndarray, first_count: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Split a ring (ordered as it continues) into two child loops joined by a web quad.

        The first ``first_count`` vertices form one child, the rest the other; both children
        keep the parent's orientation. Returns the two children's vertex ids.
        """
        c = np.asarray(ring_indices)
        first, second = c[:first_count], c[first_count:]
        if len(first) < 3 or len(second) < 3:
            raise ValueError("both children of a split need at least 3 vertices")
        a_end, b_start, b_end, a_start = first[-1], second[0], second[-1], first[0]
        points = self.points
        side = np.linalg.norm(points[b_start] - points[a_end])
        depth = np.linalg.norm(points[a_start] - points[a_end])
        chart = self.new_chart(name, 1.0)
        quad_uv = ((0.0, 0.0), (side, 0.0), (side, depth), (0.0, depth))
        self.triangle((a_end, b_start, b_end), (quad_uv[0], quad_uv[1], quad_uv[2]), chart)
        self.triangle((a_end, b_end, a_start), (quad_uv[0], quad_uv[2], quad_uv[3]), chart)
        return first, second

    @property
    def face_count(self) -> int:
        return len(self._faces)

    def flip_faces_from(self, first_face: int) -> None:
        """Reverse the winding of faces added since ``first_face`` (after building a part mirrored)."""
        for k in range(first_face, len(self._faces)):
            a, b, c = self._faces[k]
            ua, ub, uc = self._corner_uv[k]
            self._faces[k] = (a, c, b)
            self._corner_uv[k] = (ua, uc, ub)

    # -- output -----------------------------------------------------------------------------

    def uv_atlas(self, padding: float = 0.004) -> tuple[np.ndarray, np.ndarray]:
        """Pack the charts (shelf packing, uniform texel density) into [0, 1]²: ``(vt (T, 2), ft (F, 3))``."""
        corner_uv = np.asarray(self._corner_uv, dtype=np.float64)  # (F, 3, 2), metres
        charts = self.face_chart
        num_charts = len(self.chart_names)
        lows = np.zeros((num_charts, 2))
        sizes = np.zeros((num_charts, 2))
        for chart in range(num_charts):
            uv = corner_uv[charts == chart].reshape(-1, 2)
            if len(uv):
                lows[chart] = uv.min(axis=0)
                sizes[chart] = uv.max(axis=0) - lows[chart]
        total_area = float(np.sum((sizes[:, 0] + padding) * (sizes[:, 1] + padding)))
        shelf_width = max(np.sqrt(total_area) * 1.15, float(sizes[:, 0].max()) + padding)
        order = sorted(range(num_charts), key=lambda c: (-sizes[c, 1], -sizes[c, 0], c))
        offsets = np.zeros((num_charts, 2))
        x = y = shelf_height = 0.0
        for chart in order:
            w, h = sizes[chart] + padding
            if x + w > shelf_width:
                x, y, shelf_height = 0.0, y + shelf_height, 0.0
            offsets[chart] = (x + padding / 2, y + padding / 2)
            x += w
            shelf_height = max(shelf_height, h)
        extent = max(shelf_width, y + shelf_height)
        placed = (corner_uv - lows[charts][:, None, :] + offsets[charts][:, None, :]) / extent
        flat = np.round(placed.reshape(-1, 2), 7)
        vt, inverse = np.unique(flat, axis=0, return_inverse=True)
        return vt, inverse.reshape(-1, 3)


def write_obj(path, vertices: np.ndarray, faces: np.ndarray, uv: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Write a mesh (and optionally its UVs, ``(vt, ft)``) as a Wavefront OBJ, e.g. to preview a stand-in."""
    from backend.bodies.model_files import atomic_writer

    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in np.asarray(vertices, dtype=np.float64)]
    faces = np.asarray(faces, dtype=np.int64) + 1
    if uv is None:
        lines += [f"f {a} {b} {c}" for a, b, c in faces]
    else:
        vt, ft = np.asarray(uv[0], dtype=np.float64), np.asarray(uv[1], dtype=np.int64) + 1
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in vt]
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(faces, ft)]
    with atomic_writer(path) as stream:
        stream.write(("\n".join(lines) + "\n").encode())
