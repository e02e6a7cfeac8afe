"""A procedural, format-identical stand-in for the FaceVerse v3 model file (``faceverse_v3_1.npy``).

The generator writes the same pickled-dict ``.npy`` a released v3 file is, with the real
dimensions (150 identity, 52 ARKit expressions, 251 colour components), and the loader reads it
through the same code path. It exists so everything runs without the licensed model; it is not
FaceVerse's data and is labelled as a stand-in wherever it is shown.

Stored like a real v3 file: millimetres, Y up, the face toward +Z, +X = the subject's left.
Origin: the centre of the head at ear-canal height (midway between the ears), so a rotation
about the origin turns the head roughly about its own centre.

Mesh: a front-head surface (forehead with hairline, brows, eye openings with lids, nose, cheeks,
lips with a mouth slit, chin, jaw) plus a mouth cavity with a tongue, then two eyeballs at the
end (``ver_inds`` / ``tri_inds`` give their ranges, left eye first). Expression directions are
exact displacements of the intended regions at weight 1 (lids stay on a shell in front of the
eyeballs, the jaw rotates about a pivot, ...); identity directions are smooth, one standard
deviation each.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.spatial import Delaunay

from backend.bodies.faceverse import ARKIT_BLENDSHAPE_NAMES
from backend.bodies.model_files import atomic_writer, ensure_standin, standin_record
from backend.paths import standin_dir

GENERATOR = "neural-avatar faceverse stand-in"
GENERATOR_VERSION = 1
FILE_NAME = "faceverse_v3_1.npy"
SEED = 20240601
IDENTITY_DIMS, TEXTURE_DIMS = 150, 251

# Proportions in metres (model frame; left eye / left mouth corner at +X).
TOP_Y, BOTTOM_Y = 0.128, -0.097  # scalp above the hairline, under the chin
HAIRLINE_Y = 0.108
ROW_SPACING, COLUMN_SPACING = 0.0028, 0.0025
SIDE_LIMIT = 0.93  # lateral extent as a fraction of the half-width (the sides wrap back toward the ears)
SUPERELLIPSE = 2.4  # cross-section exponent: flatter than an ellipse across the front of the face
MOUTH_Y, LIP_HALF_WIDTH = -0.040, 0.025
EYE_X, EYE_Y = 0.0315, 0.028
EYE_HALF_WIDTH, EYE_HALF_HEIGHT_UP, EYE_HALF_HEIGHT_DOWN = 0.012, 0.0055, 0.0045
EYE_CLEARED = 1.6  # grid points are replaced by rings of points inside this normalised eye radius
# The eyeball is wider than the opening so its corners still lie over the ball (no see-through gap).
EYEBALL_RADIUS = 0.014
LID_SHELL_RADIUS = EYEBALL_RADIUS + 0.0008  # lids lie on or in front of this sphere
JAW_PIVOT = (-0.030, -0.010)  # (y, z): an effective hinge below and behind the ear for opening
JAW_OPEN_ANGLE = 0.25  # radians at jawOpen = 1
GAZE_YAW, GAZE_PITCH = 0.40, 0.35  # eyeball rotation at eyeLook* = 1

SKIN, CAVITY, EYEBALL = 0, 1, 2
_WIDTH = PchipInterpolator(
    [-0.097, -0.090, -0.080, -0.065, -0.045, -0.020, 0.005, 0.030, 0.060, 0.090, 0.128],
    [0.028, 0.036, 0.046, 0.056, 0.064, 0.071, 0.076, 0.076, 0.074, 0.071, 0.066],
)
_DEPTH = PchipInterpolator(
    [-0.097, -0.090, -0.080, -0.060, -0.040, -0.020, 0.000, 0.020, 0.040, 0.060, 0.085, 0.105, 0.128],
    [0.072, 0.082, 0.086, 0.088, 0.090, 0.091, 0.091, 0.089, 0.092, 0.093, 0.091, 0.086, 0.076],
)
_NOSE_HEIGHT = PchipInterpolator(  # nose profile from below the subnasale up past the nasion
    [-0.024, -0.021, -0.018, -0.014, -0.010, -0.005, 0.005, 0.020, 0.036, 0.050],
    [0.000, 0.003, 0.010, 0.019, 0.021, 0.019, 0.013, 0.008, 0.004, 0.000],
)
_NOSE_HALF_WIDTH = PchipInterpolator(
    [-0.024, -0.016, -0.008, 0.010, 0.036, 0.050], [0.012, 0.013, 0.011, 0.008, 0.0065, 0.006]
)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _smooth_max(a: np.ndarray, b: np.ndarray, softness: float = 0.001) -> np.ndarray:
    return 0.5 * (a + b + np.sqrt((a - b) ** 2 + softness**2))


# --------------------------------------------------------------------------------------------
# Surface


class _Surface:
    """The front-head surface: lateral arc parameter ``p`` and height ``y`` -> a 3D point."""

    def __init__(self) -> None:
        s = np.linspace(0.0, SIDE_LIMIT, 4001)
        ref_a, ref_b = float(_WIDTH(EYE_Y)), float(_DEPTH(EYE_Y))
        x, z = ref_a * s, ref_b * (1 - s**SUPERELLIPSE) ** (1 / SUPERELLIPSE)
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(z)))])
        self.s_table, self.arc_table = s, arc  # arc length at eye height, used as the lateral parameter
        self.max_arc = float(arc[-1])

    def s_of_arc(self, p: np.ndarray) -> np.ndarray:
        return np.sign(p) * np.interp(np.abs(p), self.arc_table, self.s_table)

    def arc_of_s(self, s: np.ndarray) -> np.ndarray:
        return np.sign(s) * np.interp(np.abs(s), self.s_table, self.arc_table)

    @staticmethod
    def base(s: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = _WIDTH(y) * s
        z = _DEPTH(y) * (1 - np.abs(s) ** SUPERELLIPSE) ** (1 / SUPERELLIPSE)
        return np.stack([x, y, z], -1)

    @staticmethod
    def skin_z(s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Depth of base surface + facial relief (the relief fades where the surface turns sideways)."""
        base = _Surface.base(s, y)
        return base[:, 2] + _relief(base[:, 0], y) * np.clip(base[:, 2] / _DEPTH(y), 0, 1)

    @staticmethod
    def depth_at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Final depth at (x, y): the skin, pushed out over the eyeballs where the lids wrap them."""
        return _smooth_max(_Surface.skin_z(x / _WIDTH(y), y), _lid_shell_z(x, y))

    def point(self, s: np.ndarray, y: np.ndarray) -> np.ndarray:
        points = self.base(s, y)
        points[:, 2] = self.depth_at(points[:, 0], y)
        return points


def _nose(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    inside = (y <= 0.050) & (y >= -0.024)
    yc = np.clip(y, -0.024, 0.050)
    height = np.where(inside, _NOSE_HEIGHT(yc), 0.0)
    width = _NOSE_HALF_WIDTH(yc)
    ridge = height * np.exp(-((np.abs(x) / width) ** 2.5))
    alae = 0.005 * _gauss(np.abs(x), y, 0.0125, -0.0135, 0.0045, 0.0055)
    return ridge + alae


def _lip_lateral(ax: np.ndarray) -> np.ndarray:
    return 1 - _smoothstep(0.6 * LIP_HALF_WIDTH, 1.1 * LIP_HALF_WIDTH, ax)


def _relief(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Facial features as a depth offset (+Z) on top of the base surface."""
    ax = np.abs(x)
    depth = -0.004 * _gauss(ax, y, EYE_X, EYE_Y, 0.016, 0.012)  # eye sockets
    depth += 0.0045 * _gauss(ax, y, 0.030, 0.046, 0.020, 0.007)  # brow ridge
    depth += 0.0025 * _gauss(x, y, 0.0, 0.040, 0.010, 0.010)  # glabella
    depth += _nose(x, y)
    depth += 0.007 * _gauss(ax, y, 0.040, -0.004, 0.017, 0.018)  # cheeks
    depth += 0.005 * _gauss(x, y, 0.0, -0.030, 0.020, 0.010)  # upper lip over the teeth
    lips = _lip_lateral(ax)
    depth += 0.0045 * lips * np.exp(-(((y - (MOUTH_Y + 0.0045)) / 0.0035) ** 2))
    depth += 0.0055 * lips * np.exp(-(((y - (MOUTH_Y - 0.0055)) / 0.0045) ** 2))
    depth -= 0.0025 * (1 - _smoothstep(0.020, 0.030, ax)) * np.exp(-(((y - MOUTH_Y) / 0.0016) ** 2))  # lip line
    depth -= 0.002 * _gauss(ax, y, LIP_HALF_WIDTH + 0.002, MOUTH_Y, 0.004, 0.005)  # mouth corners
    depth -= 0.003 * _gauss(x, y, 0.0, -0.060, 0.016, 0.004)  # mentolabial sulcus
    depth += 0.007 * _gauss(x, y, 0.0, -0.077, 0.015, 0.010)  # chin
    return depth


def _eye_frame(x: np.ndarray, y: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Offsets from one eye's centre and the normalised radius (1 on the lid margin)."""
    dx, dy = x - side * EYE_X, y - EYE_Y
    half_height = np.where(dy >= 0, EYE_HALF_HEIGHT_UP, EYE_HALF_HEIGHT_DOWN)
    return dx, dy, np.hypot(dx / EYE_HALF_WIDTH, dy / half_height)


def _eye_front_z() -> float:
    """Depth of the cornea apex: just in front of the socket surface at the eye centre."""
    return float(_Surface.skin_z(np.array([EYE_X / float(_WIDTH(EYE_Y))]), np.array([EYE_Y]))[0]) + 0.001


def _eyeball_centre(side: int) -> np.ndarray:
    return np.array([side * EYE_X, EYE_Y, _eye_front_z() - EYEBALL_RADIUS])


def _lid_shell_z(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The sphere around each eyeball the lids may not sink behind (far back outside its footprint)."""
    shell = np.full(x.shape, -1.0)
    for side in (1, -1):
        centre = _eyeball_centre(side)
        inside = LID_SHELL_RADIUS**2 - (x - centre[0]) ** 2 - (y - centre[1]) ** 2
        shell = np.maximum(shell, np.where(inside > 0, centre[2] + np.sqrt(np.clip(inside, 0, None)), -1.0))
    return shell


# --------------------------------------------------------------------------------------------
# Mesh layout


class _Mesh:
    """Rest mesh in metres plus the per-vertex facts the bases need."""

    def __init__(self) -> None:
        surface = _Surface()
        self.surface = surface
        row_heights = MOUTH_Y + ROW_SPACING * np.arange(
            int(np.ceil((BOTTOM_Y - MOUTH_Y) / ROW_SPACING)), int(np.floor((TOP_Y - MOUTH_Y) / ROW_SPACING)) + 1
        )
        columns = int(round(2 * surface.max_arc / COLUMN_SPACING)) + 1
        p_grid, y_grid = np.meshgrid(np.linspace(-surface.max_arc, surface.max_arc, columns), row_heights)
        p, y = p_grid.ravel(), y_grid.ravel()
        x = _WIDTH(y) * surface.s_of_arc(p)
        keep = np.ones(len(p), bool)
        for side in (1, -1):
            keep &= _eye_frame(x, y, side)[2] >= EYE_CLEARED
        p, y = p[keep], y[keep]
        ring_ids: dict[int, np.ndarray] = {}
        for side in (1, -1):  # rings of points following each lid margin
            for radius, offset in ((1.0, 0.0), (1.3, 0.5)):
                angle = 2 * np.pi * (np.arange(28) + offset) / 28
                ring_x = side * EYE_X + radius * EYE_HALF_WIDTH * np.cos(angle)
                half_height = np.where(np.sin(angle) >= 0, EYE_HALF_HEIGHT_UP, EYE_HALF_HEIGHT_DOWN)
                ring_y = EYE_Y + radius * half_height * np.sin(angle)
                if radius == 1.0:
                    ring_ids[side] = len(p) + np.arange(28)
                p = np.concatenate([p, surface.arc_of_s(ring_x / _WIDTH(ring_y))])
                y = np.concatenate([y, ring_y])
        s = surface.s_of_arc(p)
        skin = surface.point(s, y)
        triangles = Delaunay(np.stack([p, y], -1)).simplices
        centroid = skin[triangles].mean(1)
        in_opening = np.zeros(len(triangles), bool)
        for side in (1, -1):
            in_opening |= _eye_frame(centroid[:, 0], centroid[:, 1], side)[2] < 1.0
        triangles = _counter_clockwise(triangles[~in_opening], np.stack([p, y], -1))

        # Mouth slit: the row on the mouth line is split between the lips (corners stay shared).
        on_line = (np.abs(y - MOUTH_Y) < 1e-9) & (np.abs(skin[:, 0]) < LIP_HALF_WIDTH - 0.5 * COLUMN_SPACING)
        line_ids = np.flatnonzero(on_line)
        mouth_row = np.flatnonzero((np.abs(y - MOUTH_Y) < 1e-9) & ~on_line)
        corners = [int(mouth_row[np.argmin(np.abs(skin[mouth_row, 0] - side * LIP_HALF_WIDTH))]) for side in (-1, 1)]
        tri_y = y[triangles]
        crossing = (tri_y.max(1) > MOUTH_Y + 1e-9) & (tri_y.min(1) < MOUTH_Y - 1e-9) & on_line[triangles].any(1)
        if crossing.any():
            raise RuntimeError("stand-in generator: a triangle crosses the mouth line")
        duplicate_of = np.full(len(p), -1)
        duplicate_of[line_ids] = len(p) + np.arange(len(line_ids))
        below = tri_y.mean(1) < MOUTH_Y
        swap = below[:, None] & on_line[triangles]
        triangles = np.where(swap, duplicate_of[triangles], triangles)
        skin = np.concatenate([skin, skin[line_ids]])
        param = np.concatenate([np.stack([p, y], -1), np.stack([p, y], -1)[line_ids]])
        lower_dup = np.zeros(len(skin), bool)
        lower_dup[len(p) :] = True

        # Mouth cavity: a cup behind the lips; its lower half belongs to the jaw, with the tongue.
        cavity, cavity_tris, cavity_disk = _cavity(skin)
        eyes = [_eyeball(side) for side in (1, -1)]

        self.points = np.concatenate([skin, cavity] + [eye[0] for eye in eyes])
        self.part = np.concatenate(
            [np.full(len(skin), SKIN), np.full(len(cavity), CAVITY)] + [np.full(len(eye[0]), EYEBALL) for eye in eyes]
        )
        offsets = np.cumsum([0, len(skin), len(cavity), len(eyes[0][0]), len(eyes[1][0])])
        self.faces = np.concatenate(
            [triangles, cavity_tris + offsets[1], eyes[0][1] + offsets[2], eyes[1][1] + offsets[3]]
        ).astype(np.int64)
        self.ver_inds = offsets[2:5].copy()
        self.tri_inds = np.cumsum([len(triangles) + len(cavity_tris), len(eyes[0][1]), len(eyes[1][1])])
        self.skin_count = len(skin)
        self.skin_param = param  # (p, y) of the skin vertices
        self.lower_lip_side = np.concatenate([lower_dup, np.zeros(len(self.points) - len(skin), bool)])
        order = np.argsort(skin[line_ids, 0])
        self.line_ids = line_ids[order]  # the upper lip's edge along the slit, from the subject's right
        self.line_duplicates = duplicate_of[line_ids][order]  # the lower lip's edge
        self.mouth_corners = corners  # (right, left): shared by both lips
        self.eye_rings = ring_ids
        self.cavity_disk = cavity_disk  # (u, v) in the unit disk for the cavity vertices
        self.eyeball_ids = {side: np.arange(offsets[2 + i], offsets[3 + i]) for i, side in enumerate((1, -1))}
        self.eyeball_polar = {side: eye[2] for side, eye in zip((1, -1), eyes)}
        used = np.zeros(len(self.points), bool)
        used[self.faces.ravel()] = True
        if not used.all():
            raise RuntimeError(f"stand-in generator: {int((~used).sum())} vertices belong to no triangle")

    def side_of_lips(self) -> tuple[np.ndarray, np.ndarray]:
        """(upper, lower) booleans: which lip a vertex goes with where the mouth slit separates them."""
        y = self.points[:, 1]
        lower = self.lower_lip_side | (y < MOUTH_Y - 1e-9)
        return ~lower, lower


def _counter_clockwise(triangles: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """Orient triangles counter-clockwise in (x-like, y) so normals face the viewer (+Z)."""
    a, b, c = (plane[triangles[:, i]] for i in range(3))
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    flipped = triangles.copy()
    flipped[area < 0] = flipped[area < 0][:, [0, 2, 1]]
    return flipped[np.abs(area) > 1e-14]


def _cavity(skin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    radii = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    angle = 2 * np.pi * np.arange(16) / 16
    u = np.concatenate([[0.0], (radii[:, None] * np.cos(angle)).ravel()])
    v = np.concatenate([[0.0], (radii[:, None] * np.sin(angle)).ravel()])
    # As wide as the slit (no see-through gaps at the corners), no taller than the lips; the rim
    # stays a few millimetres behind the lip line all along it, corners included.
    row = np.flatnonzero(np.abs(skin[:, 1] - MOUTH_Y) < 1e-9)
    row = row[np.argsort(skin[row, 0])]
    x = LIP_HALF_WIDTH * u
    rim_z = np.interp(x, skin[row, 0], skin[row, 2]) - 0.004
    points = np.stack([x, MOUTH_Y + 0.009 * v, rim_z - 0.020 * np.sqrt(np.clip(1 - u**2 - v**2, 0, 1))], -1)
    disk = np.stack([u, v], -1)
    triangles = _counter_clockwise(Delaunay(disk).simplices, disk)
    return points, triangles, disk


def _tongue_weight(disk: np.ndarray) -> np.ndarray:
    """The tongue: the lower middle of the cavity cup, from its (u, v) unit-disk coordinates."""
    return (1 - _smoothstep(-0.3, 0.1, disk[:, 1])) * (1 - _smoothstep(0.4, 0.8, np.abs(disk[:, 0])))


def _eyeball(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sphere whose rings are concentric around the gaze axis (+Z), so the iris edge is a ring."""
    polar = np.radians([8, 16, 24, 32, 45, 60, 75, 90, 110, 130, 155])
    segments = 18
    azimuth = 2 * np.pi * np.arange(segments) / segments
    directions = [np.array([[0.0, 0.0, 1.0]])]
    for theta in polar:
        ring = [np.sin(theta) * np.cos(azimuth), np.sin(theta) * np.sin(azimuth), np.full(segments, np.cos(theta))]
        directions.append(np.stack(ring, -1))
    directions.append(np.array([[0.0, 0.0, -1.0]]))
    unit = np.concatenate(directions)
    triangles = []
    for k in range(segments):  # front cap
        triangles.append([0, 1 + k, 1 + (k + 1) % segments])
    for ring in range(len(polar) - 1):
        first, second = 1 + ring * segments, 1 + (ring + 1) * segments
        for k in range(segments):
            a, b = first + k, first + (k + 1) % segments
            c, d = second + k, second + (k + 1) % segments
            triangles += [[a, c, d], [a, d, b]]
    back = len(unit) - 1
    last = 1 + (len(polar) - 1) * segments
    for k in range(segments):
        triangles.append([back, last + (k + 1) % segments, last + k])
    triangles = np.array(triangles)
    # Outward normals: flip any triangle whose normal points into the sphere.
    a, b, c = (unit[triangles[:, i]] for i in range(3))
    inward = (np.cross(b - a, c - a) * (a + b + c)).sum(1) < 0
    triangles[inward] = triangles[inward][:, [0, 2, 1]]
    polar_angle = np.arccos(np.clip(unit[:, 2], -1, 1))
    return _eyeball_centre(side) + EYEBALL_RADIUS * unit, triangles, polar_angle


def _point_buf(faces: np.ndarray, vertices: int) -> np.ndarray:
    """Triangles around each vertex, (N, K), padded by repeating the first one (FaceVerse's layout)."""
    order = np.argsort(faces.ravel(), kind="stable")
    owners = faces.ravel()[order]
    triangles = order // 3
    counts = np.bincount(owners, minlength=vertices)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(owners)) - starts[owners]
    table = np.repeat(triangles[starts][:, None], counts.max(), 1)
    table[owners, rank] = triangles
    return table


# --------------------------------------------------------------------------------------------
# Expression directions


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


class _Expressions:
    """Builds the 52 ARKit directions as rest-to-target displacements (metres) at weight 1."""

    def __init__(self, mesh: _Mesh):
        self.mesh = mesh
        points = mesh.points
        self.x, self.y, self.z = points.T
        self.skin = mesh.part == SKIN
        self.cavity = mesh.part == CAVITY
        self.upper_side, self.lower_side = mesh.side_of_lips()
        ax = np.abs(self.x)
        # Where the slit separates the lips (1 mid-mouth on the line, 0 at the corners and away from it).
        along_slit = 1 - _smoothstep(0.6 * LIP_HALF_WIDTH, LIP_HALF_WIDTH, ax)
        self.openness = along_slit * np.exp(-(((self.y - MOUTH_Y) / 0.008) ** 2))
        lateral = _lip_lateral(ax)
        upper_band = lateral * np.exp(-(((self.y - (MOUTH_Y + 0.004)) / 0.0055) ** 2))
        lower_band = lateral * np.exp(-(((self.y - (MOUTH_Y - 0.005)) / 0.0065) ** 2))
        self.upper_lip = self._skin(upper_band * np.where(self.upper_side, 1.0, 1 - self.openness))
        self.lower_lip = self._skin(lower_band * np.where(self.lower_side, 1.0, 1 - self.openness))
        self.jaw = self._jaw_weight()
        self.jaw_motion = self._rotate_about_jaw_pivot(points)
        # Every skin displacement fades out before the forehead top and the sides of the mesh.
        self.support = np.where(
            self.skin, (1 - _smoothstep(0.085, 0.095, self.y)) * (1 - _smoothstep(0.054, 0.062, ax)), 1.0
        )

    def _skin(self, weight: np.ndarray) -> np.ndarray:
        return np.where(self.skin, weight, 0.0)

    def _region(self, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
        return self._skin(_gauss(self.x, self.y, cx, cy, sx, sy))

    def _jaw_weight(self) -> np.ndarray:
        ax = np.abs(self.x)
        field = _smoothstep(MOUTH_Y + 0.012, MOUTH_Y - 0.014, self.y) * (1 - 0.8 * _smoothstep(0.035, 0.065, ax))
        skin = np.where(self.lower_side, field + (1 - field) * self.openness, field * (1 - self.openness))
        return self._skin(skin)

    def follow_lips(self, move: np.ndarray) -> np.ndarray:
        """Move the mouth cavity with the lip edges it sits behind (its lower half with the lower lip)."""
        mesh = self.mesh
        right, left = mesh.mouth_corners
        upper_edge = np.concatenate([[right], mesh.line_ids, [left]])
        lower_edge = np.concatenate([[right], mesh.line_duplicates, [left]])
        edge_x = mesh.points[upper_edge, 0]
        cavity = np.flatnonzero(self.cavity)
        at_x = self.x[cavity]
        upper = np.stack([np.interp(at_x, edge_x, move[upper_edge, k]) for k in range(3)], -1)
        lower = np.stack([np.interp(at_x, edge_x, move[lower_edge, k]) for k in range(3)], -1)
        u, v = mesh.cavity_disk.T
        with_lower = _smoothstep(0.3, -0.3, v)[:, None]
        depth_share = with_lower + (1 - with_lower) * (0.5 + 0.5 * np.hypot(u, v))[:, None]
        followed = move.copy()
        followed[cavity] = ((1 - with_lower) * upper + with_lower * lower) * depth_share
        return followed

    def _rotate_about_jaw_pivot(self, points: np.ndarray) -> np.ndarray:
        pivot = np.array([0.0, *JAW_PIVOT])
        return (points - pivot) @ (_rotation_x(JAW_OPEN_ANGLE) - np.eye(3)).T

    def lids(self, side: int, upper: float, lower: float, shift_x: float = 0.0) -> np.ndarray:
        """Move one eye's lid margins by ``upper``/``lower`` x the local opening half-height (+ = up)."""
        dx, dy, rho = _eye_frame(self.x, self.y, side)
        profile = np.sqrt(np.clip(1 - (dx / EYE_HALF_WIDTH) ** 2, 0, 1))
        reach = self._skin(1 - _smoothstep(1.0, 2.2, rho))
        above = dy >= 0
        half_height = np.where(above, EYE_HALF_HEIGHT_UP, EYE_HALF_HEIGHT_DOWN)
        move_y = np.where(above, upper, lower) * half_height * profile * reach
        move_x = shift_x * reach
        # Lid skin slides along the rest surface, which wraps the eyeball: closing lids stay in front of it.
        moving = reach > 0
        move_z = np.zeros(len(self.x))
        x, y = self.x[moving], self.y[moving]
        move_z[moving] = _Surface.depth_at(x + move_x[moving], y + move_y[moving]) - _Surface.depth_at(x, y)
        return np.stack([move_x, move_y, move_z], -1)

    def eyeball(self, side: int, yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
        """Rotate one eyeball; yaw > 0 turns the gaze toward +X, pitch > 0 up."""
        ids = self.mesh.eyeball_ids[side]
        centre = _eyeball_centre(side)
        rotation = _rotation_y(yaw) @ _rotation_x(-pitch)
        move = np.zeros((len(self.x), 3))
        move[ids] = (self.mesh.points[ids] - centre) @ (rotation - np.eye(3)).T
        return move

    def build(self) -> np.ndarray:
        """(N, 3, 52) in ARKit order."""
        x, y = self.x, self.y
        up, low = self.upper_lip, self.lower_lip

        def vec(weight: np.ndarray, dx: float, dy: float, dz: float) -> np.ndarray:
            return weight[:, None] * np.array([dx, dy, dz])

        def corner(side: int) -> np.ndarray:
            return self._region(side * LIP_HALF_WIDTH, MOUTH_Y, 0.009, 0.009)

        def half(side: int) -> np.ndarray:  # the subject's left (+X) or right half of the mouth
            return _smoothstep(-0.006, 0.010, side * x)

        def brow(side: int, cx: float, sx: float) -> np.ndarray:
            return self._region(side * cx, 0.047, sx, 0.011)

        closed = -(1 + 0.3 * EYE_HALF_HEIGHT_DOWN / EYE_HALF_HEIGHT_UP)  # upper lid travel that meets the lower
        shapes: dict[str, np.ndarray] = {}
        for side, suffix in ((1, "Left"), (-1, "Right")):
            lids, ball, region = self.lids, self.eyeball, self._region
            shapes[f"eyeBlink{suffix}"] = lids(side, closed, 0.7)
            shapes[f"eyeLookDown{suffix}"] = lids(side, -0.30, -0.25) + ball(side, pitch=-GAZE_PITCH)
            shapes[f"eyeLookIn{suffix}"] = lids(side, 0, 0, shift_x=-side * 0.0008) + ball(side, yaw=-side * GAZE_YAW)
            shapes[f"eyeLookOut{suffix}"] = lids(side, 0, 0, shift_x=side * 0.0008) + ball(side, yaw=side * GAZE_YAW)
            shapes[f"eyeLookUp{suffix}"] = lids(side, 0.30, 0.10) + ball(side, pitch=GAZE_PITCH)
            under_eye = region(side * 0.036, 0.010, 0.014, 0.008)
            shapes[f"eyeSquint{suffix}"] = lids(side, -0.15, 0.45) + vec(under_eye, 0, 0.002, 0.0005)
            shapes[f"eyeWide{suffix}"] = lids(side, 0.45, -0.15)
            smile_cheek = region(side * 0.034, -0.022, 0.012, 0.012)
            shapes[f"mouthSmile{suffix}"] = vec(corner(side), side * 0.004, 0.006, -0.002)
            shapes[f"mouthSmile{suffix}"] += vec(smile_cheek, 0, 0.002, 0.001)
            shapes[f"mouthFrown{suffix}"] = vec(corner(side), side * 0.0005, -0.005, 0)
            shapes[f"mouthDimple{suffix}"] = vec(corner(side), side * 0.002, 0, -0.004)
            lower_half, upper_half = low * half(side), up * half(side)
            stretch = vec(corner(side), side * 0.005, -0.002, -0.001)
            shapes[f"mouthStretch{suffix}"] = stretch + vec(lower_half, 0, -0.001, 0)
            shapes[f"mouthPress{suffix}"] = vec(lower_half, 0, 0.002, -0.001) + vec(upper_half, 0, -0.001, -0.0005)
            shapes[f"mouthLowerDown{suffix}"] = vec(lower_half, 0, -0.004, 0.0005)
            shapes[f"mouthUpperUp{suffix}"] = vec(upper_half, 0, 0.004, 0.0005)
            shapes[f"browDown{suffix}"] = vec(brow(side, 0.038, 0.016), 0, -0.0045, -0.0015)
            shapes[f"browOuterUp{suffix}"] = vec(brow(side, 0.046, 0.012), 0, 0.006, 0)
            shapes[f"cheekSquint{suffix}"] = vec(region(side * 0.036, 0.006, 0.013, 0.009), 0, 0.003, 0.001)
            nose_wing = region(side * 0.011, -0.008, 0.007, 0.010)
            shapes[f"noseSneer{suffix}"] = vec(nose_wing, 0, 0.003, 0.0005) + vec(upper_half, 0, 0.001, 0)

        jaw = self.jaw[:, None]
        shapes["jawForward"] = jaw * np.array([0.0, 0.0, 0.005])
        shapes["jawLeft"] = jaw * np.array([0.006, 0.0, 0.0])
        shapes["jawRight"] = jaw * np.array([-0.006, 0.0, 0.0])
        shapes["jawOpen"] = jaw * self.jaw_motion
        # With jawOpen = 1 the lips meet again, each having travelled part of the jaw's way.
        lip_line = _lip_lateral(np.abs(x)) * np.exp(-(((y - MOUTH_Y) / 0.010) ** 2))
        closing = 0.4 * self._skin(lip_line * self.upper_side) - 0.6 * self._skin(lip_line * self.lower_side)
        shapes["mouthClose"] = closing[:, None] * self.jaw_motion
        inward = -np.tanh(x / 0.01)
        corners = corner(1) + corner(-1)
        mouth = self._region(0.0, MOUTH_Y + 0.002, 0.030, 0.016)
        rounding = vec(up, 0, 0.002, 0) + vec(low, 0, -0.002, 0)
        shapes["mouthFunnel"] = vec(up + low, 0, 0, 0.005) + rounding + vec(corners * inward, 0.004, 0, 0)
        narrowing = vec(corners * inward, 0.008, 0, 0) + vec(mouth * inward, 0.003, 0, 0)
        shapes["mouthPucker"] = vec(up + low, 0, 0, 0.008) + narrowing
        shapes["mouthLeft"] = vec(mouth, 0.006, 0, 0)
        shapes["mouthRight"] = vec(mouth, -0.006, 0, 0)
        shapes["mouthRollLower"] = vec(low, 0, 0.0015, -0.004)
        shapes["mouthRollUpper"] = vec(up, 0, -0.0015, -0.004)
        chin = self._region(0.0, -0.077, 0.015, 0.012)
        shapes["mouthShrugLower"] = vec(low, 0, 0.003, 0.002) + vec(chin, 0, 0.002, 0.001)
        shapes["mouthShrugUpper"] = vec(up, 0, 0.003, 0.002)
        shapes["browInnerUp"] = vec(brow(1, 0.017, 0.010) + brow(-1, 0.017, 0.010), 0, 0.006, 0.0005)
        puff = self._region(0.038, -0.030, 0.014, 0.016) + self._region(-0.038, -0.030, 0.014, 0.016)
        outward = np.stack([0.0045 * np.tanh(x / 0.01), np.zeros_like(x), np.full_like(x, 0.0055)], -1)
        shapes["cheekPuff"] = puff[:, None] * outward
        shapes["tongueOut"] = vec(low, 0, -0.002, 0.001)  # the lower lip yields a little
        missing = set(ARKIT_BLENDSHAPE_NAMES) - set(shapes)
        if missing:
            raise RuntimeError(f"stand-in generator: no direction for {sorted(missing)}")

        directions = [self.follow_lips(shapes[name] * self.support[:, None]) for name in ARKIT_BLENDSHAPE_NAMES]
        # The tongue (inside the cup) comes forward; it only shows once the jaw is open.
        disk = np.zeros((len(x), 2))
        disk[self.cavity] = self.mesh.cavity_disk
        interior = 1 - _smoothstep(0.7, 0.9, np.hypot(disk[:, 0], disk[:, 1]))
        tongue = np.where(self.cavity, _tongue_weight(disk) * interior, 0)
        directions[ARKIT_BLENDSHAPE_NAMES.index("tongueOut")] += vec(tongue, 0, -0.002, 0.012)
        return np.stack(directions, -1)


# --------------------------------------------------------------------------------------------
# Identity and colour


def _identity_directions(mesh: _Mesh, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, 150) smooth directions, one standard deviation each.

    Each eyeball follows the field at its cornea, rigidly, and so does the skin around it.
    """
    proxy = mesh.points.copy()
    for side, ids in mesh.eyeball_ids.items():
        proxy[ids] = _eyeball_centre(side) + np.array([0, 0, EYEBALL_RADIUS])
    x, y, z = proxy.T
    ax, zero = np.abs(x), np.zeros(len(x))
    odd = np.tanh(x / 0.01)
    nose = np.exp(-((ax / 0.016) ** 2)) * _smoothstep(0.045, 0.030, y) * _smoothstep(-0.028, -0.018, y)
    nose_tip = nose * _smoothstep(0.020, -0.008, y)
    eyes = _gauss(ax, y, EYE_X, EYE_Y, 0.020, 0.016)
    mouth = _gauss(x, y, 0.0, MOUTH_Y, 0.030, 0.014)
    cheeks = _gauss(ax, y, 0.042, 0.000, 0.016, 0.016)
    lower_cheeks = _gauss(ax, y, 0.050, -0.030, 0.015, 0.020)
    lower_face = _smoothstep(-0.020, -0.075, y)
    chin = _gauss(x, y, 0.0, -0.080, 0.016, 0.014)
    named = [
        (0.03 * x, zero, zero),  # face width
        (zero, 0.025 * y, zero),  # face height
        (zero, zero, 0.03 * z),  # face depth
        (0.06 * x * lower_face, zero, zero),  # jaw width
        (zero, -0.004 * _smoothstep(-0.050, -0.097, y), 0.001 * _smoothstep(-0.050, -0.097, y)),  # chin height
        (zero, zero, 0.004 * chin),  # chin projection
        (zero, -0.0025 * nose_tip, 0.001 * nose_tip),  # nose length
        (0.12 * x * nose * _smoothstep(0.0, -0.015, y), zero, zero),  # nose width at the alae
        (zero, zero, 0.0025 * nose * _smoothstep(0.036, -0.010, y)),  # nose projection
        (zero, zero, 0.0015 * _gauss(x, y, 0.0, 0.028, 0.008, 0.012)),  # nasal bridge
        (0.0018 * odd * eyes, zero, zero),  # eye spacing
        (zero, 0.002 * eyes, zero),  # eye height
        (zero, zero, 0.002 * _gauss(ax, y, 0.030, 0.046, 0.020, 0.008)),  # brow ridge
        (0.002 * odd * cheeks, zero, 0.0025 * cheeks),  # cheekbones
        (zero, zero, 0.0015 * _lip_lateral(ax) * np.exp(-(((y - MOUTH_Y) / 0.009) ** 2))),  # lip fullness
        (0.08 * x * mouth, zero, zero),  # mouth width
        (zero, 0.002 * mouth, zero),  # mouth height
        (zero, zero, -0.004 * _smoothstep(0.060, 0.128, y)),  # forehead slope
        (0.003 * odd * lower_cheeks, zero, 0.001 * lower_cheeks),  # lower-face fullness
    ]
    directions = [np.stack(field, -1) for field in named]
    for index in range(len(named), IDENTITY_DIMS):
        amplitude = 0.0006 * np.exp(-index / 60) + 0.0001  # all 150 at N(0, 1): ~4 mm per-vertex SD in total
        symmetric = rng.random() < 0.75
        field = np.zeros((len(x), 3))
        for _ in range(int(rng.integers(2, 4))):
            cx, cy = rng.uniform(-0.055, 0.055), rng.uniform(-0.085, 0.090)
            sigma = rng.uniform(0.015, 0.035)
            direction = rng.normal(size=3) * np.array([1.0, 1.0, 1.5])
            direction /= np.linalg.norm(direction)
            field += _gauss(x, y, cx, cy, sigma, sigma)[:, None] * direction
            if symmetric:
                field += _gauss(x, y, -cx, cy, sigma, sigma)[:, None] * (direction * np.array([-1.0, 1.0, 1.0]))
        directions.append(amplitude * field / np.abs(field).max())
    directions = np.stack(directions, -1)
    # The skin over and around each eyeball moves rigidly with it, so no identity pushes a lid into the ball.
    skin = mesh.part == SKIN
    for side, ids in mesh.eyeball_ids.items():
        distance = np.hypot(mesh.points[:, 0] - side * EYE_X, mesh.points[:, 1] - EYE_Y)
        rigid = np.where(skin, 1 - _smoothstep(EYEBALL_RADIUS + 0.001, EYEBALL_RADIUS + 0.024, distance), 0.0)
        directions += rigid[:, None, None] * (directions[ids[0]][None] - directions)
    return directions


def _colours(mesh: _Mesh, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """meantex (N, 3) and texBase (N, 3, 251), in FaceVerse's 0..255 colour range."""
    x, y, _ = mesh.points.T
    ax = np.abs(x)
    skin = (mesh.part == SKIN).astype(float)
    lips = skin * _lip_lateral(ax) * np.clip(
        np.exp(-(((y - (MOUTH_Y + 0.004)) / 0.0045) ** 2)) + np.exp(-(((y - (MOUTH_Y - 0.005)) / 0.0055) ** 2)), 0, 1
    )
    brow_centre = 0.047 + 0.003 * (1 - ((ax - 0.032) / 0.022) ** 2)
    brow_thickness = 0.0035 - 0.0015 * _smoothstep(0.015, 0.055, ax)
    brow_span = _smoothstep(0.010, 0.014, ax) * (1 - _smoothstep(0.052, 0.058, ax))
    brows = skin * np.exp(-(((y - brow_centre) / brow_thickness) ** 4)) * brow_span
    hair = skin * _smoothstep(HAIRLINE_Y - 0.005, HAIRLINE_Y + 0.004, y)
    cheeks = skin * _gauss(ax, y, 0.040, -0.008, 0.014, 0.014)
    nostrils = skin * _gauss(ax, y, 0.0075, -0.0175, 0.003, 0.002)
    lash_line = np.zeros(len(x))
    under_eyes = np.zeros(len(x))
    for side in (1, -1):
        dx, dy, rho = _eye_frame(x, y, side)
        lash_line = np.maximum(lash_line, skin * (dy > 0) * (1 - _smoothstep(1.0, 1.15, rho)))
        under_eyes = np.maximum(under_eyes, skin * _gauss(dx, dy, 0.0, -0.009, 0.010, 0.004))
    colour = np.tile(np.array([224.0, 172.0, 142.0]), (len(x), 1))

    def paint(weight: np.ndarray, rgb: tuple[float, float, float]) -> None:
        colour[:] = colour * (1 - weight[:, None]) + np.array(rgb) * weight[:, None]

    paint(0.35 * cheeks, (232, 156, 136))
    paint(0.25 * under_eyes, (190, 140, 120))
    paint(lips, (176, 88, 88))
    paint(brows, (72, 52, 40))
    paint(0.8 * lash_line, (60, 45, 40))
    paint(nostrils, (90, 50, 45))
    paint(hair, (52, 36, 28))
    cavity = mesh.part == CAVITY
    colour[cavity] = (112, 40, 48)
    tongue = np.zeros(len(x))
    tongue[cavity] = _tongue_weight(mesh.cavity_disk)
    paint(tongue, (186, 92, 100))
    iris = np.zeros(len(x))
    for side, ids in mesh.eyeball_ids.items():
        polar = mesh.eyeball_polar[side]
        colour[ids] = np.where((polar < np.radians(20))[:, None], (92, 68, 50), (236, 232, 224))
        colour[ids[polar < np.radians(5)]] = (18, 16, 16)
        iris[ids] = (polar < np.radians(20)) & (polar > np.radians(5))

    skin_only = skin * (1 - hair)
    named = [
        (skin_only, (12, 12, 12)),  # brightness
        (skin_only, (8, -3, -3)),  # redness
        (skin_only, (4, 4, -6)),  # yellowness
        (lips, (-12, -10, -6)),  # lip colour
        (brows, (-15, -12, -10)),  # brow darkness
        (cheeks, (10, -4, -2)),  # blush
        (under_eyes, (-8, -8, -5)),  # under-eye shadow
        (iris, (-20, -15, -10)),  # iris
        (hair, (20, 15, 10)),  # hair
    ]
    basis = [weight[:, None] * np.array(rgb, float) for weight, rgb in named]
    for index in range(len(named), TEXTURE_DIMS):
        amplitude = 6.0 * np.exp(-index / 80) + 1.5
        field = np.zeros((len(x), 3))
        for _ in range(2):
            cx, cy, sigma = rng.uniform(0, 0.055), rng.uniform(-0.085, 0.10), rng.uniform(0.010, 0.040)
            rgb = rng.normal() * np.ones(3) + rng.normal(scale=0.5, size=3)
            blob = _gauss(x, y, cx, cy, sigma, sigma) + _gauss(x, y, -cx, cy, sigma, sigma)
            field += blob[:, None] * rgb
        basis.append(amplitude * skin_only[:, None] * field / max(np.abs(field).max(), 1e-9))
    return colour, np.stack(basis, -1)


def _uv(mesh: _Mesh) -> np.ndarray:
    """Per-vertex UVs in [0, 1]: the skin unrolled over most of the square, the rest in the bottom strip."""
    uv = np.zeros((len(mesh.points), 2))
    p, y = mesh.skin_param.T
    uv[: mesh.skin_count, 0] = 0.02 + 0.96 * (p + mesh.surface.max_arc) / (2 * mesh.surface.max_arc)
    uv[: mesh.skin_count, 1] = 0.22 + 0.76 * (y - BOTTOM_Y) / (TOP_Y - BOTTOM_Y)
    cavity = mesh.part == CAVITY
    uv[cavity] = np.array([0.50, 0.10]) + 0.08 * mesh.cavity_disk
    for corner, (side, ids) in zip((0.10, 0.90), mesh.eyeball_ids.items()):
        offsets = mesh.points[ids, :2] - _eyeball_centre(side)[:2]
        uv[ids] = np.array([corner, 0.10]) + 0.08 * offsets / EYEBALL_RADIUS
    return uv


# --------------------------------------------------------------------------------------------
# Landmarks


def _keypoints(mesh: _Mesh) -> np.ndarray:
    """68 landmarks in iBUG order (0 = the subject's right jaw, 36-41 right eye, 42-47 left eye, ...)."""
    points = mesh.points
    skin_front = np.flatnonzero((mesh.part == SKIN) & ~mesh.lower_lip_side)

    def nearest(targets: np.ndarray, candidates: np.ndarray) -> list[int]:
        distance = np.linalg.norm(points[candidates, None, :2] - targets[None], axis=-1)
        return candidates[distance.argmin(0)].tolist()

    t = np.arange(17) / 16
    jaw = np.stack([0.066 * -np.cos(np.pi * t), 0.022 - 0.114 * np.sin(np.pi * t) ** 1.3], -1)
    brow_x = np.linspace(0.052, 0.014, 5)
    brow_y = 0.047 + 0.004 * np.sin(np.pi * np.linspace(0, 1, 5) * 0.9)
    right_brow = np.stack([-brow_x, brow_y], -1)
    left_brow = np.stack([brow_x[::-1], brow_y[::-1]], -1)
    nose = np.array([[0, 0.036], [0, 0.022], [0, 0.008], [0, -0.008]])
    nostrils = np.array([[-0.014, -0.017], [-0.007, -0.019], [0, -0.020], [0.007, -0.019], [0.014, -0.017]])
    ids = nearest(np.concatenate([jaw, right_brow, left_brow, nose, nostrils]), skin_front)

    def eye(side: int) -> list[int]:
        cx, w, up, down = side * EYE_X, EYE_HALF_WIDTH, EYE_HALF_HEIGHT_UP, EYE_HALF_HEIGHT_DOWN
        outer, inner = cx + side * w, cx - side * w
        upper_y = EYE_Y + up * np.sqrt(1 - 0.4**2)
        lower_y = EYE_Y - down * np.sqrt(1 - 0.4**2)
        # iBUG goes clockwise on the image from the corner at the image's left: the subject's right eye
        # starts at its outer corner, the left eye at its inner corner; then two upper-lid points,
        # the other corner and two lower-lid points.
        first, third = (outer, inner) if side < 0 else (inner, outer)
        lid_x = (cx - 0.4 * w, cx + 0.4 * w)
        targets = [
            [first, EYE_Y], [lid_x[0], upper_y], [lid_x[1], upper_y],
            [third, EYE_Y], [lid_x[1], lower_y], [lid_x[0], lower_y],
        ]  # fmt: skip
        return nearest(np.array(targets), mesh.eye_rings[side])

    ids += eye(-1) + eye(1)
    outer_lips = np.array(
        [[-0.025, MOUTH_Y], [-0.017, MOUTH_Y + 0.006], [-0.007, MOUTH_Y + 0.0085], [0, MOUTH_Y + 0.008],
         [0.007, MOUTH_Y + 0.0085], [0.017, MOUTH_Y + 0.006], [0.025, MOUTH_Y], [0.017, MOUTH_Y - 0.008],
         [0.007, MOUTH_Y - 0.011], [0, MOUTH_Y - 0.0115], [-0.007, MOUTH_Y - 0.011], [-0.017, MOUTH_Y - 0.008]]
    )  # fmt: skip
    ids += nearest(outer_lips, skin_front)
    line_x = points[mesh.line_ids, 0]

    def on_line(x: float, lower: bool) -> int:
        k = int(np.argmin(np.abs(line_x - x)))
        return int(mesh.line_duplicates[k] if lower else mesh.line_ids[k])

    ids += [on_line(-0.021, False), on_line(-0.008, False), on_line(0.0, False), on_line(0.008, False)]
    ids += [on_line(0.021, False), on_line(0.008, True), on_line(0.0, True), on_line(-0.008, True)]
    keypoints = np.array(ids, np.int64)
    if len(set(keypoints.tolist())) != 68:
        raise RuntimeError("stand-in generator: two landmarks landed on the same vertex")
    return keypoints


# --------------------------------------------------------------------------------------------
# The file


def build_standin() -> dict:
    """The stand-in model as a v3-layout dict (raw units: millimetres, float32 bases)."""
    rng = np.random.default_rng(SEED)
    mesh = _Mesh()
    expressions = _Expressions(mesh).build()
    identity = _identity_directions(mesh, rng)
    mean_colour, colour_basis = _colours(mesh, rng)
    vertices = len(mesh.points)
    uv = _uv(mesh)
    to_mm = 1000.0

    def flat_basis(directions: np.ndarray) -> np.ndarray:
        return directions.reshape(3 * vertices, directions.shape[2]).astype(np.float32)

    face_mask = ((mesh.part == SKIN) & (mesh.points[:, 1] < HAIRLINE_Y)).astype(np.float32)
    return {
        "meanshape": (mesh.points * to_mm).astype(np.float32),
        "meantex": mean_colour.astype(np.float32),
        "idBase": flat_basis(identity * to_mm),
        "exBase_52": flat_basis(expressions * to_mm),
        "texBase": flat_basis(colour_basis),
        "exp_name_list_52": list(ARKIT_BLENDSHAPE_NAMES),
        "tri": mesh.faces.astype(np.int32),
        "point_buf": _point_buf(mesh.faces, vertices).astype(np.int32),
        "keypoints": _keypoints(mesh),
        "uv_per_ver": uv.astype(np.float32),
        "uv": uv.astype(np.float32),
        "tri_uv": mesh.faces.astype(np.int32),
        "ver_inds": mesh.ver_inds.astype(np.int64),
        "tri_inds": mesh.tri_inds.astype(np.int64),
        "face_mask": face_mask,
    }


def standin_bytes() -> bytes:
    """The stand-in ``.npy`` file's bytes (deterministic)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array(build_standin(), dtype=object), allow_pickle=True)
    return buffer.getvalue()


def write_standin(path: Path) -> None:
    """Write the stand-in file to ``path`` atomically."""
    with atomic_writer(path) as stream:
        stream.write(standin_bytes())


def is_standin_file(path: Path) -> bool:
    """True for a file this generator wrote (so it is labelled a stand-in wherever it is loaded from)."""
    record = standin_record(path)
    return record is not None and record.get("generator") == GENERATOR


def ensure_standin_file(folder: Path | None = None) -> Path:
    """The stand-in file, generated on first use and regenerated when the generator changes.

    The sidecar ``<file>.standin.json`` (see ``model_files.ensure_standin``) records the generator,
    its version and the file's sha256; a missing, stale or mismatching sidecar makes the file be
    written again.
    """
    folder = Path(folder) if folder is not None else standin_dir() / "faceverse"
    return ensure_standin(folder / FILE_NAME, GENERATOR, GENERATOR_VERSION, write_standin)
