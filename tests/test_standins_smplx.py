"""The procedural SMPL-X / MANO stand-ins: real file layout, geometry, rig data, determinism."""

from __future__ import annotations

import contextlib
import io
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from scipy.sparse.csgraph import connected_components
import smplx
import torch
from smplx.joint_names import JOINT_NAMES
from smplx.vertex_ids import vertex_ids as VERTEX_IDS

from backend.bodies.model_files import ModelData, validate_mano, validate_smplx
from backend.bodies.standin_face import EXPRESSION_NAMES, arkit_to_expression
from backend.bodies.standin_mano import build_standin_mano, write_standin_mano
from backend.bodies.standin_smplx import SHAPE_NAMES, build_standin_smplx, write_standin_smplx

# SMPL-X's kinematic tree, written out by name independently of the generator.
EXPECTED_PARENTS = {
    "left_hip": "pelvis", "right_hip": "pelvis", "spine1": "pelvis", "left_knee": "left_hip",
    "right_knee": "right_hip", "spine2": "spine1", "left_ankle": "left_knee", "right_ankle": "right_knee",
    "spine3": "spine2", "left_foot": "left_ankle", "right_foot": "right_ankle", "neck": "spine3",
    "left_collar": "spine3", "right_collar": "spine3", "head": "neck", "left_shoulder": "left_collar",
    "right_shoulder": "right_collar", "left_elbow": "left_shoulder", "right_elbow": "right_shoulder",
    "left_wrist": "left_elbow", "right_wrist": "right_elbow", "jaw": "head",
    "left_eye_smplhf": "head", "right_eye_smplhf": "head",
}  # fmt: skip
for side in ("left", "right"):
    for digit in ("index", "middle", "pinky", "ring", "thumb"):
        EXPECTED_PARENTS[f"{side}_{digit}1"] = f"{side}_wrist"
        EXPECTED_PARENTS[f"{side}_{digit}2"] = f"{side}_{digit}1"
        EXPECTED_PARENTS[f"{side}_{digit}3"] = f"{side}_{digit}2"
NAMES = list(JOINT_NAMES[:55])


def quiet(factory, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return factory(*args, **kwargs)


@pytest.fixture(scope="module")
def neutral():
    return build_standin_smplx("neutral")


@pytest.fixture(scope="module")
def smplx_folder(tmp_path_factory, neutral):
    from backend.bodies.model_files import write_npz

    folder = tmp_path_factory.mktemp("smplx")
    write_npz(folder / "SMPLX_NEUTRAL.npz", neutral.arrays)
    return folder


@pytest.fixture(scope="module")
def mano():
    return {side: build_standin_mano(side) for side in ("right", "left")}


def edges_are_consistent(faces: np.ndarray) -> tuple[bool, int]:
    """(every directed edge used once, number of boundary edges)."""
    directed = Counter()
    for a, b, c in faces:
        directed.update([(a, b), (b, c), (c, a)])
    boundary = sum(1 for (a, b) in directed if (b, a) not in directed)
    return max(directed.values()) == 1, boundary


# ----------------------------------------------------------------------------- SMPL-X file layout


def test_smplx_standin_has_the_real_layout(neutral):
    a = neutral.arrays
    expected = {
        "v_template": ((10475, 3), "f"), "shapedirs": ((10475, 3, 20), "f"), "posedirs": ((10475, 3, 486), "f"),
        "J_regressor": ((55, 10475), "f"), "weights": ((10475, 55), "f"), "kintree_table": ((2, 55), "i"),
        "hands_componentsl": ((45, 45), "f"), "hands_componentsr": ((45, 45), "f"),
        "hands_meanl": ((45,), "f"), "hands_meanr": ((45,), "f"), "lmk_faces_idx": ((51,), "i"),
        "lmk_bary_coords": ((51, 3), "f"), "dynamic_lmk_faces_idx": ((79, 17), "i"),
        "dynamic_lmk_bary_coords": ((79, 17, 3), "f"),
    }  # fmt: skip
    for key, (shape, kind) in expected.items():
        assert a[key].shape == shape, key
        assert a[key].dtype.kind == kind, key
    faces = a["f"]
    assert faces.ndim == 2 and faces.shape[1] == 3 and abs(len(faces) - 20908) < 300
    assert a["vt"].shape[1] == 2 and a["ft"].shape == faces.shape
    sizes = validate_smplx(ModelData(Path("standin.npz"), dict(a), needs_conversion=False))
    assert sizes["V"] == 10475 and sizes["S"] == 20


def test_smplx_standin_loads_with_smplx_unmodified(smplx_folder, neutral):
    model = quiet(smplx.SMPLX, str(smplx_folder), ext="npz", use_pca=False, flat_hand_mean=True, use_face_contour=True)
    out = model()
    assert out.vertices.shape == (1, 10475, 3)
    assert model.faces.shape == neutral.arrays["f"].shape
    rest = out.vertices[0].detach().numpy()
    np.testing.assert_allclose(rest, neutral.arrays["v_template"], atol=1e-5)
    relaxed = quiet(smplx.SMPLX, str(smplx_folder), ext="npz", use_pca=False)().vertices[0].detach().numpy()
    moved = np.linalg.norm(relaxed - rest, axis=1) > 1e-4  # smplx's default adds hands_mean: only the fingers curl
    hands = neutral.arrays["weights"][:, 25:55].sum(axis=1) > 0
    assert moved.any() and not (moved & ~hands).any()
    # joints 0..54 are the designed skeleton; the extra joints are smplx's vertex / landmark picks
    np.testing.assert_allclose(out.joints[0, :55].detach().numpy(), neutral.skeleton, atol=1e-5)
    assert out.joints.shape[1] == 55 + 21 + 51 + 17


def test_joint_names_and_parents_match_smplx(neutral):
    parents = neutral.arrays["kintree_table"][0].astype(np.int64)
    assert parents[0] == -1
    for index, name in enumerate(NAMES[1:], start=1):
        assert NAMES[parents[index]] == EXPECTED_PARENTS[name], name
    assert list(neutral.arrays["kintree_table"][1]) == list(range(55))


def test_joint_regressor_reproduces_the_skeleton(neutral):
    a = neutral.arrays
    regressor = a["J_regressor"]
    assert (regressor >= 0).all()
    np.testing.assert_allclose(regressor.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(regressor @ a["v_template"], neutral.skeleton, atol=1e-6)
    # each joint is regressed from vertices around it, not from far away
    for joint in range(55):
        support = a["v_template"][regressor[joint] > 1e-6]
        assert np.linalg.norm(support - neutral.skeleton[joint], axis=1).max() < 0.25, NAMES[joint]


def test_skeleton_is_a_standing_adult_in_smplx_rest_pose(neutral):
    j = dict(zip(NAMES, neutral.skeleton))
    v = neutral.arrays["v_template"]
    assert -0.45 < j["pelvis"][1] < -0.25  # real SMPL-X: pelvis below the origin
    assert -1.4 < v[:, 1].min() < -1.2  # soles
    assert 1.6 < v[:, 1].max() - v[:, 1].min() < 1.9  # height
    assert j["left_wrist"][0] > 0.55 and j["right_wrist"][0] < -0.55  # T-pose, left on +X
    assert j["head"][1] > j["neck"][1] > j["spine3"][1] > j["pelvis"][1] > j["left_knee"][1] > j["left_ankle"][1]
    assert j["left_foot"][2] > j["left_ankle"][2]  # toes forward (+Z)
    np.testing.assert_allclose(neutral.skeleton[:, 0] @ np.ones(55), 0.0, atol=1e-6)  # left/right symmetric


def test_skinning_weights(neutral):
    a = neutral.arrays
    w = a["weights"]
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-9)
    ids = VERTEX_IDS["smplx"]
    dominant = lambda vertex: NAMES[int(np.argmax(w[vertex]))]  # noqa: E731
    for tip in ("thumb", "index", "middle", "ring", "pinky"):
        assert dominant(ids[f"l{tip}"]) == f"left_{tip}3"
        assert dominant(ids[f"r{tip}"]) == f"right_{tip}3"
    assert w[ids["leye"], NAMES.index("left_eye_smplhf")] == 1.0
    assert w[ids["reye"], NAMES.index("right_eye_smplhf")] == 1.0
    assert dominant(ids["nose"]) == "head"
    assert dominant(ids["LBigToe"]) == "left_foot" and dominant(ids["RHeel"]) == "right_ankle"
    # the chin follows the jaw, the forehead the head
    v = a["v_template"]
    skeleton = dict(zip(NAMES, neutral.skeleton))
    chin = np.argmin(np.where(np.abs(v[:, 0]) < 0.01, np.abs(v[:, 1] - (skeleton["head"][1] - 0.01)) + 10 * (v[:, 2] < 0.05), 9))
    assert w[chin, NAMES.index("jaw")] > 0.9
    # knees blend thigh and shin, mid-thigh is the hip joint alone
    knee_y = skeleton["left_knee"][1]
    near_knee = (np.abs(v[:, 1] - knee_y) < 0.01) & (np.abs(v[:, 0] - skeleton["left_knee"][0]) < 0.07)
    assert (w[near_knee, NAMES.index("left_hip")] > 0.2).all() and (w[near_knee, NAMES.index("left_knee")] > 0.2).all()


def test_mesh_is_clean_and_outward_facing(neutral):
    a = neutral.arrays
    v, f = a["v_template"], a["f"].astype(np.int64)
    assert np.unique(f).size == len(v)  # every vertex is used
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    assert area.min() > 1e-8  # no degenerate triangles
    consistent, boundary = edges_are_consistent(f)
    assert consistent  # consistent winding, no non-manifold edges
    assert boundary == 32  # only the two wrist openings of the hands (16 edges each), hidden in the forearms
    # consistent winding + positive enclosed volume per connected part = every face points outward
    count, label = connected_components(scipy.sparse.coo_matrix((np.ones(f.size), (np.repeat(f[:, 0], 3), f.ravel())), shape=(len(v),) * 2))
    assert count == 15  # head, eyes, ears, neck, torso, arms, hands, legs, feet
    for part in range(count):
        faces = f[label[f[:, 0]] == part]
        tri = v[faces] - v[label == part].mean(axis=0)
        volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
        assert volume > 1e-6, f"part {part} is inside out"


def test_vertex_ids_sit_at_their_anatomical_places(neutral):
    v = neutral.arrays["v_template"]
    ids = VERTEX_IDS["smplx"]
    head = v[:, 1] > 0.25
    nose = v[ids["nose"]]
    assert abs(nose[0]) < 0.005 and nose[2] == v[head & (np.abs(v[:, 0]) < 0.02), 2].max()
    assert v[ids["leye"], 0] > 0.02 and v[ids["reye"], 0] < -0.02
    assert v[ids["leye"], 1] > nose[1] and v[ids["leye"], 2] < nose[2]
    assert v[ids["lear"], 0] > v[ids["leye"], 0] + 0.03 and v[ids["rear"], 0] < v[ids["reye"], 0] - 0.03
    for side, sign in (("l", 1), ("r", -1)):
        assert sign * v[ids[f"{side}middle"], 0] == pytest.approx(np.max(sign * v[:, 0]), abs=0.003)  # the longest finger reaches furthest
        assert v[ids[f"{side}thumb"], 2] > v[ids[f"{side}index"], 2] > v[ids[f"{side}pinky"], 2]  # thumb forward, pinky back
    for tag, sign in (("L", 1), ("R", -1)):
        big, small, heel = v[ids[f"{tag}BigToe"]], v[ids[f"{tag}SmallToe"]], v[ids[f"{tag}Heel"]]
        assert big[2] > small[2] > heel[2] and heel[2] < -0.08 and big[1] < -1.25
        assert sign * big[0] < sign * small[0]  # big toe on the inner side


def test_landmarks_lie_on_the_face(neutral):
    a = neutral.arrays
    v, f = a["v_template"], a["f"].astype(np.int64)
    points = np.einsum("lk,lkd->ld", a["lmk_bary_coords"], v[f[a["lmk_faces_idx"]]])
    np.testing.assert_allclose(a["lmk_bary_coords"].sum(axis=1), 1.0, atol=1e-9)
    assert (a["lmk_bary_coords"] >= -1e-9).all()
    assert (points[:, 2] > 0.05).all() and (points[:, 1] > 0.25).all()  # front of the head
    brows, nose, eyes, mouth = points[:10], points[10:19], points[19:31], points[31:]
    assert (brows[:5, 0] < 0).all() and (brows[5:, 0] > 0).all()  # subject's right first
    assert brows[:, 1].min() > eyes[:, 1].max() > nose[-5:, 1].max() > mouth[:, 1].max()
    assert nose[3, 2] == pytest.approx(points[:, 2].max())  # landmark 30 is the nose tip
    assert mouth[0, 0] < 0 < mouth[6, 0]  # mouth corners 48 and 54
    dynamic = a["dynamic_lmk_faces_idx"]
    assert dynamic.min() >= 0 and dynamic.max() < len(f)
    contour = np.einsum("rlk,rlkd->rld", a["dynamic_lmk_bary_coords"], v[f[dynamic]])
    assert (contour[0, :8, 0] < 0).all() and (contour[0, 9:, 0] > 0).all()  # straight ahead: right jaw, chin, left jaw
    assert contour[0, 8, 1] < contour[0, 0, 1]  # the chin is the lowest contour point
    assert not np.allclose(contour[20], contour[60])  # the contour follows the yaw


def test_uv_atlas_is_inside_the_unit_square_and_does_not_overlap(neutral):
    vt, ft = neutral.arrays["vt"], neutral.arrays["ft"]
    assert vt.min() >= 0.0 and vt.max() <= 1.0
    assert np.unique(ft).size == len(vt)
    tri = vt[ft]
    area = 0.5 * np.abs(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
    assert area.min() > 0 and area.sum() < 1.0
    # sample points and count how many UV triangles contain each: never more than one
    rng = np.random.default_rng(0)
    samples = rng.random((40000, 2))
    grid = 48
    cell_of = lambda p: np.minimum((p * grid).astype(int), grid - 1)  # noqa: E731
    lo, hi = cell_of(tri.min(axis=1)), cell_of(tri.max(axis=1))
    cells: dict[tuple[int, int], list[int]] = {}
    for k in range(len(tri)):
        for i in range(lo[k, 0], hi[k, 0] + 1):
            for j in range(lo[k, 1], hi[k, 1] + 1):
                cells.setdefault((i, j), []).append(k)
    sample_cells = cell_of(samples)
    for (i, j), members in cells.items():
        points = samples[(sample_cells[:, 0] == i) & (sample_cells[:, 1] == j)]
        if len(points) == 0 or len(members) < 2:
            continue
        t = tri[members]  # (M, 3, 2)
        d = points[:, None, None, :] - t[None]  # (P, M, 3, 2)
        edges = np.roll(t, -1, axis=1) - t
        cross = edges[None, :, :, 0] * d[..., 1] - edges[None, :, :, 1] * d[..., 0]  # (P, M, 3)
        inside = (np.all(cross > 1e-12, axis=2) | np.all(cross < -1e-12, axis=2)).sum(axis=1)
        assert inside.max() <= 1, f"UV triangles overlap in cell {(i, j)}"


# ----------------------------------------------------------------------------- blend shapes


def test_expressions_move_only_the_face(neutral):
    a = neutral.arrays
    v, expressions = a["v_template"], a["shapedirs"][:, :, 10:]
    ids = VERTEX_IDS["smplx"]
    neck_y = neutral.skeleton[NAMES.index("neck")][1]
    assert np.abs(expressions[v[:, 1] < neck_y + 0.1]).max() == 0.0  # nothing below the neck
    eyeballs = a["weights"][:, NAMES.index("left_eye_smplhf")] + a["weights"][:, NAMES.index("right_eye_smplhf")] > 0
    assert np.abs(expressions[eyeballs]).max() == 0.0
    for k, name in enumerate(EXPRESSION_NAMES):
        assert np.linalg.norm(expressions[:, :, k], axis=1).max() > 0.003, name
    eye_y = v[ids["leye"], 1]
    nose = v[ids["nose"]]

    def moved(name: str) -> np.ndarray:
        return np.linalg.norm(expressions[:, :, EXPRESSION_NAMES.index(name)], axis=1) > 1e-3

    mouth_region = lambda m: (v[m, 1] < eye_y - 0.01).all() and (v[m, 1] > nose[1] - 0.08).all()  # noqa: E731
    for name in ("mouthSmile", "mouthFrown", "mouthStretch", "mouthPucker", "mouthLeft", "cheekPuff"):
        assert mouth_region(moved(name)), name
    smile = expressions[:, :, EXPRESSION_NAMES.index("mouthSmile")]
    assert smile[moved("mouthSmile"), 1].max() > 0.003  # corners go up
    brows = moved("browInnerUp")
    assert (v[brows, 1] > eye_y).all() and expressions[brows, 1, EXPRESSION_NAMES.index("browInnerUp")].min() >= 0
    assert (expressions[moved("browDown"), 1, EXPRESSION_NAMES.index("browDown")] <= 1e-12).all()
    left_blink, right_blink = moved("eyeBlinkLeft"), moved("eyeBlinkRight")
    assert (v[left_blink, 0] >= 0).all() and (v[right_blink, 0] <= 0).all()
    assert (np.abs(v[left_blink, 1] - eye_y) < 0.03).all()


def test_expression_names_map_from_arkit():
    names = ["eyeBlinkLeft", "jawOpen", "mouthSmileLeft", "mouthSmileRight", "mouthRight"]
    mapped = arkit_to_expression(names, np.array([[1.0, 0.7, 0.4, 0.6, 0.5]]))
    expected = np.zeros((1, 10))
    expected[0, EXPRESSION_NAMES.index("eyeBlinkLeft")] = 1.0
    expected[0, EXPRESSION_NAMES.index("mouthSmile")] = 0.5
    expected[0, EXPRESSION_NAMES.index("mouthLeft")] = -0.5
    np.testing.assert_allclose(mapped, expected)


def test_identity_directions_change_the_body_as_named(neutral):
    a = neutral.arrays
    v, shapes = a["v_template"], a["shapedirs"][:, :, :10]
    regressor = a["J_regressor"]

    def shaped(name: str, amount: float = 2.0) -> np.ndarray:
        return v + amount * shapes[:, :, SHAPE_NAMES.index(name)]

    height = lambda verts: np.ptp(verts[:, 1])  # noqa: E731
    assert height(shaped("height")) > height(v) + 0.05
    assert height(shaped("height", -2.0)) < height(v) - 0.05
    joints = lambda verts: dict(zip(NAMES, regressor @ verts))  # noqa: E731
    j0 = joints(v)
    j_leg = joints(shaped("leg_length"))
    assert j_leg["left_ankle"][1] < j0["left_ankle"][1] - 0.05 and j_leg["head"][1] == pytest.approx(j0["head"][1])
    j_arm = joints(shaped("arm_length"))
    assert j_arm["left_wrist"][0] > j0["left_wrist"][0] + 0.03 and j_arm["right_wrist"][0] < j0["right_wrist"][0] - 0.03
    j_shoulder = joints(shaped("shoulder_width"))
    assert j_shoulder["left_shoulder"][0] > j0["left_shoulder"][0] + 0.01
    head = v[:, 1] > 0.24
    assert np.ptp(shaped("head_size")[head][:, 0]) > np.ptp(v[head][:, 0]) * 1.05
    belly = shaped("belly")
    waist = (np.abs(v[:, 1] + 0.15) < 0.03) & (np.abs(v[:, 0]) < 0.03) & (v[:, 2] > 0)
    assert (belly[waist, 2] > v[waist, 2] + 0.02).all()
    assert np.abs(shapes[:, :, SHAPE_NAMES.index("muscle")]).max() > 0.002


def test_pose_correctives_bulge_the_bent_elbow(neutral):
    a = neutral.arrays
    posedirs = a["posedirs"]
    elbow = NAMES.index("left_elbow")
    columns = 9 * (elbow - 1) + np.array([0, 8])
    bend = posedirs[:, :, columns].sum(axis=2) * -1.0  # R - I diagonal entries at a 90° bend are -1
    moved = np.linalg.norm(bend, axis=1)
    assert 0.005 < moved.max() < 0.03
    v = a["v_template"]
    assert np.linalg.norm(v[moved > 1e-3] - neutral.skeleton[elbow], axis=1).max() < 0.15
    assert (v[moved > 1e-3, 2] > neutral.skeleton[elbow][2] - 0.01).all()  # the inner (front) side


def test_hand_pca_is_orthonormal_and_relaxed_mean_curls(neutral):
    for side in "lr":
        components = neutral.arrays[f"hands_components{side}"]
        np.testing.assert_allclose(components @ components.T, np.eye(45), atol=1e-9)
        mean = neutral.arrays[f"hands_mean{side}"]
        assert 0.0 < np.abs(mean).max() < 0.5
    # left = mirror of right: axis-angle (x, y, z) -> (x, -y, -z)
    mirror = np.tile([1.0, -1.0, -1.0], 15)
    np.testing.assert_allclose(neutral.arrays["hands_meanl"], neutral.arrays["hands_meanr"] * mirror, atol=1e-9)
    np.testing.assert_allclose(neutral.arrays["hands_componentsl"][:8], neutral.arrays["hands_componentsr"][:8] * mirror, atol=1e-9)


def test_genders_differ_in_proportions(neutral):
    male, female = build_standin_smplx("male"), build_standin_smplx("female")
    span = lambda s, axis: np.ptp(s.arrays["v_template"][:, axis])  # noqa: E731
    assert span(male, 1) > span(neutral, 1) > span(female, 1)
    hip_width = lambda s: s.skeleton[1, 0] - s.skeleton[2, 0]  # noqa: E731
    shoulder_width = lambda s: s.skeleton[16, 0] - s.skeleton[17, 0]  # noqa: E731
    assert hip_width(female) / shoulder_width(female) > hip_width(male) / shoulder_width(male)
    np.testing.assert_allclose(male.arrays["J_regressor"] @ male.arrays["v_template"], male.skeleton, atol=1e-6)


def test_generation_is_deterministic(tmp_path):
    write_standin_smplx(tmp_path / "a.npz")
    write_standin_smplx(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    write_standin_mano(tmp_path / "a.pkl", "left")
    write_standin_mano(tmp_path / "b.pkl", "left")
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()


# ----------------------------------------------------------------------------- MANO


def test_mano_standin_has_the_real_layout(mano):
    for side, standin in mano.items():
        a = standin.arrays
        assert a["v_template"].shape == (778, 3) and a["f"].shape == (1538, 3)
        assert a["shapedirs"].shape == (778, 3, 10) and a["posedirs"].shape == (778, 3, 135)
        assert a["weights"].shape == (778, 16) and a["kintree_table"].shape == (2, 16)
        assert a["hands_components"].shape == (45, 45) and a["hands_mean"].shape == (45,)
        assert scipy.sparse.issparse(a["J_regressor"]) and a["J_regressor"].shape == (16, 778)
        arrays = {k: v for k, v in a.items() if not isinstance(v, str)}
        validate_mano(ModelData(Path(f"MANO_{side}.pkl"), arrays, needs_conversion=True))
        np.testing.assert_allclose(a["J_regressor"] @ a["v_template"], standin.skeleton, atol=1e-6)
        consistent, boundary = edges_are_consistent(a["f"].astype(np.int64))
        assert consistent and boundary == 16  # one wrist opening, like real MANO
        for digit, vertex in VERTEX_IDS["mano"].items():
            assert np.argmax(a["weights"][vertex]) == 1 + 3 * ("index", "middle", "pinky", "ring", "thumb").index(digit) + 2


def test_mano_standin_loads_with_smplx_unmodified(mano, tmp_path):
    for side in ("right", "left"):
        with open(tmp_path / f"MANO_{side.upper()}.pkl", "wb") as stream:
            pickle.dump(mano[side].arrays, stream, protocol=2)
        model = quiet(smplx.MANO, str(tmp_path), is_rhand=side == "right", use_pca=False, flat_hand_mean=True)
        out = model(hand_pose=torch.zeros(1, 45))
        assert out.vertices.shape == (1, 778, 3) and out.joints.shape == (1, 16, 3)
        np.testing.assert_allclose(out.joints[0].detach().numpy(), mano[side].skeleton, atol=1e-5)


def test_mano_is_a_right_hand_in_mano_frame_and_left_mirrors_it(mano):
    right, left = mano["right"], mano["left"]
    wrist = right.skeleton[0]
    np.testing.assert_allclose(wrist, [0.0957, 0.0064, 0.0062], atol=0.003)
    middle_tip = right.arrays["v_template"][VERTEX_IDS["mano"]["middle"]]
    assert middle_tip[0] < wrist[0] - 0.15  # fingers along -X
    assert right.skeleton[13, 2] > wrist[2] + 0.01  # thumb toward +Z
    np.testing.assert_allclose(left.arrays["v_template"], right.arrays["v_template"] * [-1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(left.arrays["shapedirs"], right.arrays["shapedirs"] * np.array([-1, 1, 1])[:, None], atol=1e-12)


def test_mano_matches_the_smplx_standin_hand(mano, neutral):
    hand = [NAMES.index("right_wrist")] + [NAMES.index(f"right_{d}{k}") for d in ("index", "middle", "pinky", "ring", "thumb") for k in (1, 2, 3)]
    smplx_offsets = neutral.skeleton[hand] - neutral.skeleton[hand[0]]
    mano_offsets = mano["right"].skeleton - mano["right"].skeleton[0]
    np.testing.assert_allclose(mano_offsets, smplx_offsets, atol=1e-6)
