"""The MANO stand-in files: ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` in the real files' layout.

Plain-numpy pickles (no chumpy) with MANO's keys, shapes and dtypes: ``v_template (778, 3)``,
``f (1538, 3)``, ``shapedirs (778, 3, 10)``, ``posedirs (778, 3, 135)``, ``J_regressor (16, 778)``
as a scipy sparse matrix, ``weights (778, 16)``, ``kintree_table (2, 16)``,
``hands_components (45, 45)``, ``hands_mean (45,)`` (+ ``J``, ``bs_style``, ``bs_type``).
``smplx.MANO(model_path=..., is_rhand=...)`` loads them unmodified.

The hand is the SMPL-X stand-in's hand (same mesh, joints and size) placed like real MANO's
mean right hand: wrist at (0.0957, 0.0064, 0.0062), fingers along -X, thumb toward +Z, palm
facing -Y. The left hand is its mirror image (x -> -x, winding reversed). The fingertip
vertices sit at the indices ``smplx.vertex_ids['mano']`` names.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from backend.bodies.model_files import atomic_writer, ensure_standin
from backend.bodies.standin_hand import DIGITS, HAND_PARENTS, build_hand, hand_rest_joints
from backend.bodies.standin_mesh import MeshBuilder, normalize
from backend.bodies.standin_rig import fit_joint_regressor, hand_synergies
from backend.paths import standin_dir

GENERATOR = "neural-avatar mano stand-in"
GENERATOR_VERSION = 1
MANO_WRIST = np.array([0.0957, 0.0064, 0.0062])  # real MANO's mean right-hand wrist joint
SHAPE_NAMES = (
    "size",
    "finger_length",
    "palm_width",
    "finger_girth",
    "palm_thickness",
    "thumb_length",
    "index_vs_pinky",
    "palm_length",
    "finger_spread",
    "fleshiness",
)
_ROOT_PARENT = 4294967295  # real MANO stores the root's parent as uint32 -1


@dataclass
class StandinMano:
    arrays: dict[str, object]  # exactly what goes into the pickle
    skeleton: np.ndarray  # (16, 3) designed joints J_regressor reproduces


def _shape_directions(vertices: np.ndarray, axis_points: np.ndarray, weights: np.ndarray, joints: np.ndarray, tips: np.ndarray) -> np.ndarray:
    """(778, 3, 10) hand shape directions, roughly one standard deviation each."""
    out = np.zeros((len(vertices), 3, len(SHAPE_NAMES)))
    wrist = joints[0]
    digit_share = np.stack([weights[:, 1 + 3 * d : 4 + 3 * d].sum(axis=1) for d in range(5)], axis=1)  # (V, 5)
    digit = np.argmax(digit_share, axis=1)
    on_digit = digit_share.max(axis=1)
    base = joints[1 + 3 * digit]
    direction = normalize(tips[digit] - base)
    along = np.clip(np.einsum("vk,vk->v", vertices - base, direction), 0.0, None)[:, None]
    radial = vertices - axis_points
    across = np.array([0.0, 0.0, 1.0])  # thumb side in MANO's frame (both hands)
    forward = normalize(joints[[1, 4, 7, 10]].mean(axis=0) - wrist)
    palm = (1.0 - on_digit)[:, None]
    is_thumb = (digit == 4)[:, None] * on_digit[:, None]
    fingers = on_digit[:, None] - is_thumb

    def put(name: str, offset: np.ndarray) -> None:
        out[:, :, SHAPE_NAMES.index(name)] = offset

    put("size", 0.06 * (vertices - wrist))
    put("finger_length", 0.10 * along * direction * fingers)
    put("palm_width", 0.10 * ((vertices - wrist) @ across)[:, None] * across)
    put("finger_girth", 0.12 * radial * on_digit[:, None])
    put("palm_thickness", 0.15 * (radial * [0.0, 1.0, 0.0]) * palm)
    put("thumb_length", 0.12 * along * direction * is_thumb)
    lean = np.select([digit == 0, digit == 3, digit == 2], [1.0, -0.5, -1.0], 0.0)[:, None]
    put("index_vs_pinky", 0.08 * lean * along * direction * fingers)
    reach = np.clip((vertices - wrist) @ forward / np.linalg.norm(base - wrist, axis=1), 0.0, 1.0)[:, None]
    put("palm_length", 0.006 * np.maximum(reach * palm, fingers + is_thumb) * forward)
    put("finger_spread", 0.25 * ((base - wrist) @ across)[:, None] * across * along / 0.08 * fingers)
    put("fleshiness", 0.06 * radial)
    return out


def build_standin_mano(side: str = "right") -> StandinMano:
    """All entries of the MANO stand-in for ``side``, in the real file's keys, shapes and dtypes."""
    if side not in ("right", "left"):
        raise ValueError(f"unknown side {side!r}")
    mirror = np.array([-1.0, 1.0, 1.0]) if side == "left" else np.ones(3)
    frame = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).T  # columns: f, l, u in MANO's frame
    origin = hand_rest_joints()[0]

    def to_world(points: np.ndarray) -> np.ndarray:
        return (MANO_WRIST + (np.asarray(points) - origin) @ frame.T) * mirror

    builder = MeshBuilder(16)
    hand = build_hand(builder, to_world, range(16), "hand", mirrored=side == "left")
    vertices, faces, weights, axis = builder.points, builder.faces, builder.weights, builder.axis_points
    tips = vertices[[hand.tips[d] for d in DIGITS]]
    regressor = fit_joint_regressor(vertices, weights, hand.joints, HAND_PARENTS)
    shapedirs = _shape_directions(vertices, axis, weights, hand.joints, tips)
    components, mean = hand_synergies(hand.joints, tips, palm_normal=np.array([0.0, -1.0, 0.0]), thumb_side=np.array([0.0, 0.0, 1.0]))

    order = np.full(len(vertices), -1, dtype=np.int64)  # new -> old: fingertips where vertex_ids['mano'] expects them
    for digit, new in SMPLX_VERTEX_IDS["mano"].items():
        order[new] = hand.tips[digit]
    placed = set(order[order >= 0].tolist())
    order[order < 0] = [old for old in range(len(vertices)) if old not in placed]
    new_index = np.empty_like(order)
    new_index[order] = np.arange(len(order))
    kintree = np.array([[_ROOT_PARENT, *HAND_PARENTS[1:]], range(16)], dtype=np.int64)
    arrays: dict[str, object] = {
        "v_template": vertices[order],
        "f": new_index[faces].astype(np.uint32),
        "shapedirs": np.ascontiguousarray(shapedirs[order]),
        "posedirs": np.zeros((len(vertices), 3, 9 * 15)),
        "J_regressor": scipy.sparse.csc_matrix(regressor[:, order]),
        "weights": weights[order],
        "kintree_table": kintree,
        "hands_components": components,
        "hands_mean": mean,
        "J": regressor[:, order] @ vertices[order],
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    return StandinMano(arrays=arrays, skeleton=hand.joints)


def write_standin_mano(path: str | Path, side: str = "right") -> None:
    """Write the stand-in pickle atomically (protocol 2, like the Python 2 era originals)."""
    with atomic_writer(path) as stream:
        pickle.dump(build_standin_mano(side).arrays, stream, protocol=2)


def standin_mano_file(side: str = "right") -> Path:
    """The stand-in ``MANO_<SIDE>.pkl`` in the cache, generated on first use or after a generator change."""
    if side not in ("right", "left"):
        raise ValueError(f"unknown side {side!r}")
    path = standin_dir() / "mano" / f"MANO_{side.upper()}.pkl"
    return ensure_standin(path, GENERATOR, GENERATOR_VERSION, lambda target: write_standin_mano(target, side))
