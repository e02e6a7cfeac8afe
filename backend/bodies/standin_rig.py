"""Rig data of the stand-ins derived from their geometry: joint regressor, pose correctives, hand PCA.

Shared by the SMPL-X and MANO stand-in writers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import nnls

from backend.bodies.standin_mesh import normalize, smoothstep


def fit_joint_regressor(
    vertices: np.ndarray,
    weights: np.ndarray,
    joints: np.ndarray,
    parents: Sequence[int],
    neighbours: int = 40,
) -> np.ndarray:
    """(J, V) non-negative rows summing to 1 with ``regressor @ vertices ≈ joints``.

    Each joint uses the vertices nearest to it among those skinned to it, its parent or its
    children (so a left-hip row never borrows right-thigh vertices); the weights come from
    non-negative least squares with the sum-to-one condition as a heavily weighted extra row.
    """
    num_joints = len(joints)
    children: list[list[int]] = [[] for _ in range(num_joints)]
    for child, parent in enumerate(parents):
        if parent >= 0:
            children[parent].append(child)
    regressor = np.zeros((num_joints, len(vertices)))
    for joint in range(num_joints):
        related = [joint] + children[joint] + ([parents[joint]] if parents[joint] >= 0 else [])
        pool = np.flatnonzero(weights[:, related].sum(axis=1) > 0.05)
        distance = np.linalg.norm(vertices[pool] - joints[joint], axis=1)
        for count in (neighbours, 2 * neighbours, 4 * neighbours, len(pool)):
            chosen = pool[np.argsort(distance, kind="stable")[:count]]
            system = np.vstack([vertices[chosen].T, np.full((1, len(chosen)), 100.0)])
            target = np.append(joints[joint], 100.0)
            solution, _ = nnls(system, target)
            if np.linalg.norm(vertices[chosen].T @ solution - joints[joint]) < 1e-6 and abs(solution.sum() - 1) < 1e-6:
                break
        else:
            raise RuntimeError(f"joint {joint} lies outside the vertices skinned to it")
        regressor[joint, chosen] = solution / solution.sum()
    return regressor


def bend_corrective(
    vertices: np.ndarray,
    axis_points: np.ndarray,
    selected: np.ndarray,
    joint_position: np.ndarray,
    inner_side: np.ndarray,
    amplitude: float,
    reach: float,
) -> np.ndarray:
    """(V, 3) pose blend shape for a hinge: the inner side of the joint bulges outward as it bends.

    smplx feeds ``R - I`` of every non-root joint to ``posedirs``; for a hinge the two diagonal
    entries perpendicular to its axis are ``cos θ - 1`` (-1 at a right angle, whichever way it
    turns), so putting ``-offset / 2`` on each of them displaces by ``offset`` at a 90° bend.
    """
    outward = normalize(vertices - axis_points + 1e-12)
    along = np.linalg.norm(axis_points - joint_position, axis=1)
    facing = smoothstep((outward @ inner_side + 0.2) / 0.8)
    strength = amplitude * np.exp(-((along / reach) ** 2)) * facing * selected
    return -0.5 * strength[:, None] * outward


def orthonormal_basis(preferred: Sequence[np.ndarray], size: int) -> np.ndarray:
    """(size, size) orthonormal rows: the ``preferred`` directions first (Gram-Schmidt), then the rest."""
    rows: list[np.ndarray] = []
    for candidate in list(preferred) + list(np.eye(size)):
        vector = np.asarray(candidate, dtype=np.float64).copy()
        for row in rows:
            vector -= (row @ vector) * row
        norm = np.linalg.norm(vector)
        if norm > 1e-6:
            rows.append(vector / norm)
        if len(rows) == size:
            break
    return np.array(rows)


def hand_synergies(joints: np.ndarray, tips: np.ndarray, palm_normal: np.ndarray, thumb_side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hand pose PCA of plausible finger motions: ``(components (45, 45), relaxed mean (45,))``.

    ``joints`` (16, 3) wrist + index, middle, pinky, ring, thumb (3 each) in the model frame,
    ``tips`` (5, 3) the fingertips in the same digit order, ``palm_normal`` the direction the
    palm faces and ``thumb_side`` the direction from the pinky toward the thumb. Rotations are
    axis-angle vectors in the model frame (SMPL-X/MANO hand pose layout: 15 joints x 3).
    """
    palm_normal, thumb_side = normalize(palm_normal), normalize(thumb_side)
    back = -palm_normal
    flex = np.zeros((15, 3))  # unit flexion axis per joint: curls the digit toward the palm
    spread = np.zeros((15, 3))  # unit abduction axis: swings the digit toward the thumb side
    for digit in range(5):
        for k in range(3):
            joint = 1 + 3 * digit + k
            child = tips[digit] if k == 2 else joints[joint + 1]
            bone = normalize(child - joints[joint])
            toward = palm_normal if digit < 4 else normalize(palm_normal - 0.7 * thumb_side)
            flex[3 * digit + k] = normalize(np.cross(bone, toward))
            # fingers swing toward the thumb side; the thumb swings away from the palm
            spread[3 * digit + k] = normalize(np.cross(bone, thumb_side if digit < 4 else back))

    def pose(curls: Sequence[Sequence[float]], splay: Sequence[float] = (0, 0, 0, 0, 0)) -> np.ndarray:
        out = np.zeros((15, 3))
        for digit in range(5):
            for k in range(3):
                out[3 * digit + k] = curls[digit][k] * flex[3 * digit + k]
            out[3 * digit] += splay[digit] * spread[3 * digit]
        return out.ravel()

    full, base, tip_only = (0.8, 1.0, 0.7), (1.0, 0.2, 0.1), (0.1, 0.9, 0.7)
    straight = (0.0, 0.0, 0.0)
    # digit order: index, middle, pinky, ring, thumb
    synergies = [
        pose([full, full, full, full, (0.3, 0.5, 0.5)]),  # fist
        pose([base, base, base, base, (0.4, 0.2, 0.0)]),  # knuckle grip
        pose([straight] * 5, (0.25, 0.05, -0.28, -0.12, 0.3)),  # fingers spread
        pose([straight, full, full, full, (0.4, 0.6, 0.5)]),  # pointing
        pose([(0.6, 0.7, 0.4), straight, straight, straight, (0.4, 0.5, 0.4)]),  # pinch
        pose([straight, straight, (0.4, 0.5, 0.3), straight, (0.9, 0.4, 0.3)]),  # thumb opposition
        pose([straight, straight, full, full, straight]),  # ring and little finger curl
        pose([tip_only, tip_only, tip_only, tip_only, (0.0, 0.4, 0.6)]),  # claw
    ]
    components = orthonormal_basis(synergies, 45)
    mean = pose([(0.15, 0.2, 0.1)] * 4 + [(0.1, 0.15, 0.1)], (0.05, 0.0, -0.05, -0.02, 0.1))
    return components, mean
