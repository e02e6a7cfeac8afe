"""The stand-in's face: head surface, facial features, landmark positions and expression fields.

All coordinates here are *head-local*: metres relative to the head centre for the neutral head
size, Y up, the face toward +Z, the subject's left on +X (SMPL-X's frame). The body builder
scales and places them; the SMPL-X writer uses the landmark targets and expression fields.

Expressions: the stand-in has SMPL-X's old-style 10 expression directions. Each is named after
the ARKit blendshape it imitates (:data:`EXPRESSION_NAMES`), and :func:`arkit_to_expression`
maps ARKit / FaceVerse coefficients (by name) onto them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backend.bodies.standin_mesh import normalize, smoothstep

HALF_X, HALF_TOP, HALF_BOTTOM, HALF_FRONT, HALF_BACK = 0.074, 0.118, 0.122, 0.095, 0.102
HEAD_EXPONENT = 2.5  # a superellipsoid: flatter face and skull sides than an ellipsoid

EYE_X, EYE_Y = 0.032, 0.008
EYE_RADIUS = 0.0118
EYE_PROTRUSION = 0.0055  # how far the eyeball's front pokes out of the socket floor
NOSE_TIP_Y = -0.034
MOUTH_Y, MOUTH_HALF_WIDTH = -0.059, 0.024
BROW_Y = 0.030
EAR_X = 0.074
CHIN_Y = -0.100

EXPRESSION_NAMES = (
    "mouthSmile",
    "mouthFrown",
    "mouthStretch",
    "mouthPucker",
    "browInnerUp",
    "browDown",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "cheekPuff",
    "mouthLeft",
)

# ARKit blendshape -> {stand-in expression: weight}. Paired ARKit shapes (…Left/…Right) each
# drive half of the symmetric stand-in direction; mouthRight is negative mouthLeft.
ARKIT_TO_EXPRESSION: dict[str, dict[str, float]] = {
    "mouthSmileLeft": {"mouthSmile": 0.5},
    "mouthSmileRight": {"mouthSmile": 0.5},
    "mouthFrownLeft": {"mouthFrown": 0.5},
    "mouthFrownRight": {"mouthFrown": 0.5},
    "mouthStretchLeft": {"mouthStretch": 0.5},
    "mouthStretchRight": {"mouthStretch": 0.5},
    "mouthDimpleLeft": {"mouthStretch": 0.2},
    "mouthDimpleRight": {"mouthStretch": 0.2},
    "mouthPucker": {"mouthPucker": 1.0},
    "mouthFunnel": {"mouthPucker": 0.6},
    "browInnerUp": {"browInnerUp": 1.0},
    "browOuterUpLeft": {"browInnerUp": 0.3},
    "browOuterUpRight": {"browInnerUp": 0.3},
    "browDownLeft": {"browDown": 0.5},
    "browDownRight": {"browDown": 0.5},
    "eyeBlinkLeft": {"eyeBlinkLeft": 1.0},
    "eyeBlinkRight": {"eyeBlinkRight": 1.0},
    "eyeSquintLeft": {"eyeBlinkLeft": 0.3},
    "eyeSquintRight": {"eyeBlinkRight": 0.3},
    "cheekPuff": {"cheekPuff": 1.0},
    "mouthLeft": {"mouthLeft": 1.0},
    "mouthRight": {"mouthLeft": -1.0},
}


def arkit_to_expression(names: Sequence[str], coefficients: np.ndarray) -> np.ndarray:
    """Map ARKit-named coefficients (..., len(names)) to the stand-in's (..., 10) expression vector.

    Names without a stand-in counterpart (jawOpen is the jaw joint, eye look directions are the
    eye joints, ...) contribute nothing.
    """
    coefficients = np.asarray(coefficients, dtype=np.float64)
    if coefficients.shape[-1] != len(names):
        raise ValueError(f"got {coefficients.shape[-1]} coefficients for {len(names)} names")
    matrix = np.zeros((len(names), len(EXPRESSION_NAMES)))
    for row, name in enumerate(names):
        for target, weight in ARKIT_TO_EXPRESSION.get(name, {}).items():
            matrix[row, EXPRESSION_NAMES.index(target)] = weight
    return coefficients @ matrix


# ----------------------------------------------------------------------------- surface


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((x - cx) / sx) ** 2) - ((y - cy) / sy) ** 2)


def socket_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The (negative) eye-socket relief; wide and flat-bottomed across, narrow vertically."""
    dx = np.abs(x) - EYE_X
    return -0.011 * np.exp(-((dx / 0.019) ** 4) - ((y - EYE_Y) / 0.0110) ** 2)


def relief(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Outward displacement (m) of the face at head-local (x, y): nose, sockets, brows, cheeks, lips, chin."""
    ax = np.abs(x)
    along = np.clip((0.012 - y) / (0.012 - NOSE_TIP_Y), 0.0, None)
    ridge = (0.003 + 0.017 * np.minimum(along, 1.0) ** 1.3) * np.exp(-((x / (0.0065 + 0.004 * np.minimum(along, 1.0))) ** 2))
    ridge *= np.where(y < NOSE_TIP_Y, np.exp(-(((y - NOSE_TIP_Y) / 0.0055) ** 2)), 1.0)
    ridge *= np.where(y > 0.012, np.exp(-(((y - 0.012) / 0.012) ** 2)), 1.0)
    alae = 0.007 * _gauss(ax, y, 0.012, NOSE_TIP_Y - 0.002, 0.006, 0.006)
    brows = 0.004 * np.exp(-(((y - BROW_Y) / 0.009) ** 2) - ((ax - 0.028) / 0.022) ** 2)
    cheeks = 0.005 * _gauss(ax, y, 0.046, -0.014, 0.016, 0.016)
    upper_lip = 0.0065 * _gauss(x, y, 0.0, MOUTH_Y + 0.007, 0.019, 0.0055)
    lower_lip = 0.0065 * _gauss(x, y, 0.0, MOUTH_Y - 0.007, 0.017, 0.0055)
    crease = -0.0035 * _gauss(x, y, 0.0, MOUTH_Y, 0.022, 0.0018)
    chin = 0.009 * _gauss(x, y, 0.0, CHIN_Y + 0.004, 0.020, 0.012)
    return ridge + alae + socket_depth(x, y) + brows + cheeks + upper_lip + lower_lip + crease + chin


def _superellipsoid(direction: np.ndarray) -> np.ndarray:
    d = np.asarray(direction, dtype=np.float64)
    half = np.stack(
        [
            np.full(len(d), HALF_X),
            np.where(d[:, 1] > 0, HALF_TOP, HALF_BOTTOM),
            np.where(d[:, 2] > 0, HALF_FRONT, HALF_BACK),
        ],
        axis=1,
    )
    radius = np.sum(np.abs(d / half) ** HEAD_EXPONENT, axis=1) ** (-1.0 / HEAD_EXPONENT)
    base = d * radius[:, None]
    base[:, 0] *= 1.0 - 0.20 * smoothstep(-base[:, 1] / 0.11)  # narrower jaw
    return base


def _with_relief(base: np.ndarray) -> np.ndarray:
    front = smoothstep((base[:, 2] - 0.03) / 0.035)
    return base + normalize(base) * (relief(base[:, 0], base[:, 1]) * front)[:, None]


def head_surface(alpha: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Head-local points at latitude ``alpha`` (0 = bottom pole) and azimuth ``phi`` (0 = front, toward +X)."""
    alpha, phi = np.asarray(alpha, dtype=np.float64), np.asarray(phi, dtype=np.float64)
    direction = np.stack([np.sin(alpha) * np.sin(phi), -np.cos(alpha), np.sin(alpha) * np.cos(phi)], axis=1)
    return _with_relief(_superellipsoid(direction))


def face_point(x: float, y: float) -> np.ndarray:
    """The point of the front head surface whose head-local (x, y) is the given one."""
    target = np.array([x, y], dtype=np.float64)
    g = target / HALF_FRONT  # x and y components of the direction from the centre
    for _ in range(30):
        direction = np.append(g, np.sqrt(max(1.0 - g @ g, 1e-6)))[None]
        point = _with_relief(_superellipsoid(direction))[0]
        g = g + (target - point[:2]) / np.linalg.norm(point)
    return point


def surface_at(phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 3) head surface points at azimuths ``phi`` and head-local heights ``y`` (bisection on latitude)."""
    phi, y = np.asarray(phi, dtype=np.float64), np.asarray(y, dtype=np.float64)
    lo, hi = np.zeros_like(phi), np.full_like(phi, np.pi)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        below = head_surface(mid, phi)[:, 1] < y
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return head_surface(0.5 * (lo + hi), phi)


# ----------------------------------------------------------------------------- landmarks


def landmark_targets() -> np.ndarray:
    """(51, 3) head-local positions of the 68-point (iBUG) landmarks 17-67: brows, nose, eyes, lips.

    Image-left first, i.e. the subject's right (-X) before the left, as in the 68-point convention.
    """
    m, e, n = MOUTH_Y, EYE_Y, NOSE_TIP_Y
    points = [
        *[(-x, BROW_Y + dy) for x, dy in ((0.052, -0.002), (0.042, 0.003), (0.031, 0.005), (0.020, 0.004), (0.010, 0.002))],
        *[(x, BROW_Y + dy) for x, dy in ((0.010, 0.002), (0.020, 0.004), (0.031, 0.005), (0.042, 0.003), (0.052, -0.002))],
        (0.0, 0.012), (0.0, -0.003), (0.0, -0.018), (0.0, n),
        (-0.013, n - 0.004), (-0.0065, n - 0.007), (0.0, n - 0.008), (0.0065, n - 0.007), (0.013, n - 0.004),
        (-EYE_X - 0.013, e), (-EYE_X - 0.005, e + 0.005), (-EYE_X + 0.005, e + 0.005),
        (-EYE_X + 0.012, e), (-EYE_X + 0.005, e - 0.004), (-EYE_X - 0.005, e - 0.004),
        (EYE_X - 0.012, e), (EYE_X - 0.005, e + 0.005), (EYE_X + 0.005, e + 0.005),
        (EYE_X + 0.013, e), (EYE_X + 0.005, e - 0.004), (EYE_X - 0.005, e - 0.004),
        (-0.024, m), (-0.016, m + 0.006), (-0.007, m + 0.009), (0.0, m + 0.0085), (0.007, m + 0.009), (0.016, m + 0.006),
        (0.024, m), (0.016, m - 0.008), (0.007, m - 0.011), (0.0, m - 0.0115), (-0.007, m - 0.011), (-0.016, m - 0.008),
        (-0.019, m), (-0.008, m + 0.002), (0.0, m + 0.002), (0.008, m + 0.002),
        (0.019, m), (0.008, m - 0.002), (0.0, m - 0.002), (-0.008, m - 0.002),
    ]  # fmt: skip
    return np.array([face_point(x, y) for x, y in points])


CONTOUR_POINTS = 17
YAW_ROWS = 79  # smplx's look-up table: rows 0..39 for yaw 0..-39 degrees, rows 40..78 for +1..+39


def contour_yaw_degrees(row: int) -> float:
    """The head yaw (rotation about +Y, degrees) that smplx maps to ``dynamic_lmk_*`` row ``row``."""
    return -float(row) if row <= 39 else float(row - 39)


def contour_targets(yaw_degrees: np.ndarray) -> np.ndarray:
    """(len(yaw), 17, 3) head-local jaw-contour points (subject's right ear -> chin -> left ear) per yaw.

    Turning the face toward +X (positive yaw) moves the left silhouette forward over the cheek
    and the right one back behind the jaw angle.
    """
    yaw = np.atleast_1d(np.asarray(yaw_degrees, dtype=np.float64))[:, None]
    s = np.linspace(-1.0, 1.0, CONTOUR_POINTS)[None, :]
    azimuth = np.radians(np.clip(s * 80.0 - yaw * np.abs(s), -100.0, 100.0))
    height = np.broadcast_to(CHIN_Y - 0.003 + 0.072 * np.abs(s) ** 1.6, azimuth.shape)
    return surface_at(azimuth.ravel(), height.ravel()).reshape(len(yaw), CONTOUR_POINTS, 3)


# ----------------------------------------------------------------------------- expressions


def expression_offsets(local: np.ndarray) -> np.ndarray:
    """(n, 3, 10) displacements of head-surface points (head-local) for each expression at +1."""
    x, y, z = local[:, 0], local[:, 1], local[:, 2]
    ax, side = np.abs(x), np.sign(x)
    front = smoothstep((z - 0.03) / 0.03)
    outward = normalize(local)
    out = np.zeros((len(local), 3, len(EXPRESSION_NAMES)))

    def put(name: str, offset: np.ndarray) -> None:
        out[:, :, EXPRESSION_NAMES.index(name)] = offset * front[:, None]

    corners = _gauss(ax, y, MOUTH_HALF_WIDTH, MOUTH_Y, 0.012, 0.011)
    lips = _gauss(x, y, 0.0, MOUTH_Y, 0.026, 0.013)
    put("mouthSmile", corners[:, None] * np.stack([0.004 * side, np.full_like(x, 0.005), np.full_like(x, -0.002)], axis=1))
    put("mouthFrown", corners[:, None] * np.stack([0.001 * side, np.full_like(x, -0.0045), np.zeros_like(x)], axis=1))
    wide = _gauss(ax, y, MOUTH_HALF_WIDTH, MOUTH_Y - 0.002, 0.015, 0.013)
    thin = _gauss(x, y, 0.0, MOUTH_Y, 0.02, 0.009) * np.sign(y - MOUTH_Y)
    put("mouthStretch", wide[:, None] * np.stack([0.006 * side, np.full_like(x, -0.002), np.zeros_like(x)], axis=1) + thin[:, None] * [0.0, -0.0015, 0.0])
    put("mouthPucker", lips[:, None] * np.stack([-0.3 * x, np.zeros_like(x), np.full_like(x, 0.007)], axis=1))
    brows = np.exp(-(((y - BROW_Y) / 0.010) ** 2) - ((ax - 0.030) / 0.03) ** 2)
    inner = np.exp(-(((ax - 0.016) / 0.022) ** 2))
    put("browInnerUp", (brows * (0.4 + 0.6 * inner))[:, None] * [0.0, 0.005, 0.0])
    put("browDown", brows[:, None] * np.stack([-0.003 * side * inner, np.full_like(x, -0.004), np.full_like(x, 0.001)], axis=1))
    for name, sign in (("eyeBlinkLeft", 1.0), ("eyeBlinkRight", -1.0)):
        on_side = (side == sign) | (ax < 1e-9)
        depth = -socket_depth(x, y) * on_side  # fill the socket back in: the lid closes over the eyeball
        upper = smoothstep((y - EYE_Y + 0.004) / 0.01) * on_side * np.exp(-((ax - EYE_X) / 0.02) ** 2 - ((y - EYE_Y) / 0.02) ** 2)
        put(name, 0.9 * depth[:, None] * outward + upper[:, None] * [0.0, -0.003, 0.0])
    puff = _gauss(ax, y, 0.040, MOUTH_Y + 0.012, 0.017, 0.017)
    put("cheekPuff", 0.007 * puff[:, None] * outward)
    put("mouthLeft", _gauss(x, y, 0.0, MOUTH_Y, 0.03, 0.016)[:, None] * [0.005, 0.0, 0.0])
    return out
