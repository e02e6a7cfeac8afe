"""The SMPL-X stand-in file: ``SMPLX_<GENDER>.npz`` in exactly the real (v1.0, 10 + 10 directions) layout.

Real SMPL-X is licensed and cannot ship, so by default the project generates this file from
the procedural body of :mod:`backend.bodies.standin_body` and loads it through the same code
path as a real one (``smplx.SMPLX(model_path=..., ext="npz")`` reads it unmodified):

- ``v_template (10475, 3)``, ``f``, ``weights (10475, 55)``, ``kintree_table (2, 55)``;
- ``J_regressor (55, 10475)`` fitted so that it reproduces the designed skeleton;
- ``shapedirs (10475, 3, 20)``: 10 named identity directions (:data:`SHAPE_NAMES`) followed by
  10 expression directions named after ARKit shapes (:data:`EXPRESSION_NAMES`);
- ``posedirs (10475, 3, 486)``: bulge correctives at the elbows and knees, zero elsewhere;
- hand PCA (``hands_components{l,r}``, ``hands_mean{l,r}``), the 51 static and 79 x 17 dynamic
  face landmarks, and a UV atlas (``vt``, ``ft``);
- the vertices ``smplx.vertex_ids`` names (nose, eyes, ears, fingertips, toes, heels) sit at
  those anatomical places, so smplx's extra joints land where they should.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from backend.bodies.model_files import ensure_standin, write_npz
from backend.bodies.standin_body import JOINT, SMPLX_PARENTS, BodyGeometry, build_body
from backend.bodies.standin_face import (
    CONTOUR_POINTS,
    EXPRESSION_NAMES,
    YAW_ROWS,
    contour_targets,
    contour_yaw_degrees,
    expression_offsets,
    landmark_targets,
)
from backend.bodies.standin_hand import DIGITS
from backend.bodies.standin_mesh import smoothstep
from backend.bodies.standin_rig import bend_corrective, fit_joint_regressor, hand_synergies
from backend.paths import standin_dir

GENERATOR = "neural-avatar smplx stand-in"
GENERATOR_VERSION = 1
GENDERS = ("neutral", "male", "female")

SHAPE_NAMES = (
    "height",
    "girth",
    "shoulder_width",
    "hip_width",
    "leg_length",
    "arm_length",
    "head_size",
    "belly",
    "chest",
    "muscle",
)


@dataclass
class StandinSmplx:
    arrays: dict[str, np.ndarray]  # exactly what goes into the .npz
    skeleton: np.ndarray  # (55, 3) the designed joints J_regressor reproduces


# ----------------------------------------------------------------------------- blend shapes


def _shape_directions(body: BodyGeometry) -> np.ndarray:
    """(V, 3, 10) identity directions, roughly one standard deviation of adult variation each."""
    v, axis = body.vertices, body.axis_points
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    j = body.joints
    side = np.sign(x)
    out = np.zeros((len(v), 3, len(SHAPE_NAMES)))
    torso = body.part_mask("torso")
    arms = body.part_mask("left_arm", "right_arm")
    hands = body.part_mask("left_hand", "right_hand")
    legs = body.part_mask("left_leg", "right_leg")
    feet = body.part_mask("left_foot", "right_foot")
    head = body.part_mask("head", "left_eye", "right_eye", "left_ear", "right_ear")
    limbs = arms | legs
    pelvis_y, hip_y, ankle_y = j[JOINT["pelvis"], 1], j[JOINT["left_hip"], 1], j[JOINT["left_ankle"], 1]
    shoulder_x, wrist_x = j[JOINT["left_shoulder"], 0], j[JOINT["left_wrist"], 0]

    def put(name: str, offset: np.ndarray) -> None:
        out[:, :, SHAPE_NAMES.index(name)] = offset

    zero = np.zeros_like(x)
    put("height", np.stack([zero, 0.022 * (y - pelvis_y), zero], axis=1))
    put("girth", 0.08 * (v - axis) * ((torso | body.part_mask("neck")) + 0.5 * limbs)[:, None])
    upper = smoothstep((np.abs(x) - 0.05) / 0.10) * smoothstep((y + 0.05) / 0.12) * torso
    put("shoulder_width", np.stack([0.012 * side * np.maximum(upper, arms | hands), zero, zero], axis=1))
    lower = smoothstep((np.abs(x) - 0.03) / 0.12) * smoothstep((-0.2 - y) / 0.15) * torso
    put("hip_width", np.stack([0.010 * side * np.maximum(lower, legs | feet), zero, zero], axis=1))
    below_hip = np.clip((hip_y - y) / (hip_y - ankle_y), 0.0, 1.0) * legs + feet
    put("leg_length", np.stack([zero, -0.035 * below_hip, zero], axis=1))
    past_shoulder = np.clip((np.abs(x) - shoulder_x) / (wrist_x - shoulder_x), 0.0, 1.0) * arms + hands
    put("arm_length", np.stack([0.025 * side * past_shoulder, zero, zero], axis=1))
    put("head_size", 0.05 * (v - body.head_centre) * head[:, None])
    front = smoothstep((z - axis[:, 2]) / 0.04) * torso
    belly = 0.025 * np.exp(-(((y + 0.16) / 0.09) ** 2) - (x / 0.11) ** 2) * front
    put("belly", np.stack([zero, zero, belly], axis=1))
    chest = 0.015 * np.exp(-((y / 0.07) ** 2) - ((np.abs(x) - 0.08) / 0.07) ** 2) * front
    put("chest", np.stack([0.2 * side * chest, zero, chest], axis=1))
    put("muscle", 0.07 * (v - axis) * limbs[:, None])
    return out


def _expression_directions(body: BodyGeometry) -> np.ndarray:
    """(V, 3, 10) expression directions: only head-surface vertices move (not eyeballs, not the body)."""
    out = np.zeros((len(body.vertices), 3, len(EXPRESSION_NAMES)))
    head = body.part_mask("head")
    local = (body.vertices[head] - body.head_centre) / body.head_scale
    out[head] = expression_offsets(local) * body.head_scale
    return out


def _pose_directions(body: BodyGeometry) -> np.ndarray:
    """(V, 3, 486): the inner elbow and the back of the knee bulge as they bend."""
    total = np.zeros((len(body.vertices), 3, 9 * 54))  # smplx: R - I of the 54 non-root joints
    hinges = (  # joint, part, inner side, the two diagonal entries of R - I perpendicular to the hinge axis
        ("left_elbow", "left_arm", (0.0, 0.0, 1.0), (0, 8), 0.010, 0.05),
        ("right_elbow", "right_arm", (0.0, 0.0, 1.0), (0, 8), 0.010, 0.05),
        ("left_knee", "left_leg", (0.0, 0.0, -1.0), (4, 8), 0.012, 0.06),
        ("right_knee", "right_leg", (0.0, 0.0, -1.0), (4, 8), 0.012, 0.06),
    )
    for joint, part, inner, diagonal, amplitude, reach in hinges:
        offset = bend_corrective(body.vertices, body.axis_points, body.part_mask(part), body.joints[JOINT[joint]], np.array(inner), amplitude, reach)
        for entry in diagonal:
            total[:, :, 9 * (JOINT[joint] - 1) + entry] += offset
    return total


# ----------------------------------------------------------------------------- landmarks


def _closest_faces(vertices: np.ndarray, faces: np.ndarray, candidates: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each target: the nearest candidate face and the barycentric coordinates of its nearest point."""
    tri = vertices[faces[candidates]]  # (C, 3, 3)
    _, near = cKDTree(tri.mean(axis=1)).query(targets, k=16)  # (T, K) faces with the nearest centroids
    coords = _nearest_barycentric(tri[near], targets[:, None, :])  # (T, K, 3)
    points = np.einsum("tkc,tkcd->tkd", coords, tri[near])
    best = np.argmin(np.linalg.norm(points - targets[:, None, :], axis=2), axis=1)
    rows = np.arange(len(targets))
    return candidates[near[rows, best]], coords[rows, best]


def _nearest_barycentric(tri: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (..., 3) of the point of each triangle (..., 3, 3) nearest to p (..., 3)."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    e0, e1, d = b - a, c - a, p - a
    d00, d01, d11 = (e0 * e0).sum(-1), (e0 * e1).sum(-1), (e1 * e1).sum(-1)
    d20, d21 = (d * e0).sum(-1), (d * e1).sum(-1)
    det = d00 * d11 - d01 * d01
    s, t = (d11 * d20 - d01 * d21) / det, (d00 * d21 - d01 * d20) / det
    inside = np.stack([1 - s - t, s, t], axis=-1)
    best_coords, best_distance = inside, np.where((s >= 0) & (t >= 0) & (s + t <= 1), 0.0, np.inf)
    for i, j in ((0, 1), (1, 2), (0, 2)):  # otherwise the nearest point is on an edge
        u, w = tri[..., i, :], tri[..., j, :]
        edge = w - u
        f = np.clip(((p - u) * edge).sum(-1) / (edge * edge).sum(-1), 0.0, 1.0)
        gap = np.linalg.norm(u + f[..., None] * edge - p, axis=-1)
        coords = np.zeros(inside.shape)
        coords[..., i], coords[..., j] = 1 - f, f
        better = gap < best_distance
        best_coords = np.where(better[..., None], coords, best_coords)
        best_distance = np.where(better, gap, best_distance)
    return best_coords


def _landmarks(body: BodyGeometry) -> dict[str, np.ndarray]:
    head_faces = np.flatnonzero(np.all(body.part_mask("head")[body.faces], axis=1))
    to_world = lambda local: body.head_centre + local * body.head_scale  # noqa: E731
    static_idx, static_bary = _closest_faces(body.vertices, body.faces, head_faces, to_world(landmark_targets()))
    yaws = np.array([contour_yaw_degrees(row) for row in range(YAW_ROWS)])
    dyn_idx, dyn_bary = _closest_faces(body.vertices, body.faces, head_faces, to_world(contour_targets(yaws).reshape(-1, 3)))
    return {
        "lmk_faces_idx": static_idx.astype(np.int64),
        "lmk_bary_coords": static_bary,
        "dynamic_lmk_faces_idx": dyn_idx.reshape(YAW_ROWS, CONTOUR_POINTS).astype(np.int64),
        "dynamic_lmk_bary_coords": dyn_bary.reshape(YAW_ROWS, CONTOUR_POINTS, 3),
    }


# ----------------------------------------------------------------------------- assembly


def _anchor_order(count: int, anchors: dict[str, int]) -> np.ndarray:
    """new -> old vertex order putting each ``smplx.vertex_ids['smplx']`` vertex at its index."""
    targets = SMPLX_VERTEX_IDS["smplx"]
    order = np.full(count, -1, dtype=np.int64)
    for name, new in targets.items():
        order[new] = anchors[name]
    placed = set(order[order >= 0].tolist())
    order[order < 0] = [old for old in range(count) if old not in placed]
    return order


def _hand_pca(body: BodyGeometry, side: str) -> tuple[np.ndarray, np.ndarray]:
    names = ["wrist"] + [f"{d}{k}" for d in DIGITS for k in (1, 2, 3)]
    joints = body.joints[[JOINT[f"{side}_{n}"] for n in names]]
    tips = body.vertices[[body.anchors[f"{side[0]}{d}"] for d in DIGITS]]
    return hand_synergies(joints, tips, palm_normal=np.array([0.0, -1.0, 0.0]), thumb_side=np.array([0.0, 0.0, 1.0]))


def build_standin_smplx(gender: str = "neutral") -> StandinSmplx:
    """All arrays of the SMPL-X stand-in for ``gender``, in the real file's keys, shapes and dtypes."""
    if gender not in GENDERS:
        raise ValueError(f"unknown gender {gender!r}; expected one of {GENDERS}")
    body = build_body(gender)
    regressor = fit_joint_regressor(body.vertices, body.weights, body.joints, SMPLX_PARENTS)
    shapedirs = np.concatenate([_shape_directions(body), _expression_directions(body)], axis=2)
    posedirs = _pose_directions(body)
    landmarks = _landmarks(body)
    hands = {side: _hand_pca(body, side) for side in ("left", "right")}

    order = _anchor_order(len(body.vertices), body.anchors)
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    kintree = np.array([SMPLX_PARENTS, range(55)], dtype=np.int32)
    arrays = {
        "v_template": body.vertices[order],
        "f": new_index[body.faces].astype(np.int32),
        "shapedirs": shapedirs[order],
        "posedirs": posedirs[order],
        "J_regressor": regressor[:, order],
        "weights": body.weights[order],
        "kintree_table": kintree,
        "hands_componentsl": hands["left"][0],
        "hands_componentsr": hands["right"][0],
        "hands_meanl": hands["left"][1],
        "hands_meanr": hands["right"][1],
        **landmarks,
        "vt": body.vt.astype(np.float64),
        "ft": body.ft.astype(np.int32),
    }
    return StandinSmplx(arrays={k: np.ascontiguousarray(v) for k, v in arrays.items()}, skeleton=body.joints)


def write_standin_smplx(path: str | Path, gender: str = "neutral") -> None:
    """Write the stand-in as an ``.npz`` (atomically, byte-identical for the same code version)."""
    write_npz(path, build_standin_smplx(gender).arrays)


def standin_smplx_file(gender: str = "neutral") -> Path:
    """The stand-in ``SMPLX_<GENDER>.npz`` in the cache, generated on first use or after a generator change."""
    if gender not in GENDERS:
        raise ValueError(f"unknown gender {gender!r}; expected one of {GENDERS}")
    path = standin_dir() / "smplx" / f"SMPLX_{gender.upper()}.npz"
    return ensure_standin(path, GENERATOR, GENERATOR_VERSION, lambda target: write_standin_smplx(target, gender))
