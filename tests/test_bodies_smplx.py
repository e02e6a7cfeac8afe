"""SMPL-X / MANO loaders: forward kinematics, conventions, broadcasting, gradients, bad files, stand-in cache."""

from __future__ import annotations

import codecs
import io
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from scipy.spatial.transform import Rotation
from smplx.joint_names import JOINT_NAMES
from smplx.vertex_ids import vertex_ids as VERTEX_IDS

from backend.bodies.model_files import write_npz
from backend.bodies.smplx_family import load_mano, load_smplx
from backend.bodies.standin_mesh import write_obj
from backend.errors import ModelFileError

NAMES = list(JOINT_NAMES[:55])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache (stand-ins, converted files) for this module's tests."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEURAL_AVATAR_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def body(cache):
    return load_smplx(None)


@pytest.fixture(scope="module")
def arrays(body):
    with np.load(body.source) as npz:
        return {key: npz[key] for key in npz.files}


@pytest.fixture(scope="module")
def right_hand(cache):
    return load_mano(None, "right")


def pose_vector(**joints: tuple[float, float, float]) -> np.ndarray:
    """A (55, 3) axis-angle pose with the named joints set."""
    pose = np.zeros((55, 3))
    for name, value in joints.items():
        pose[NAMES.index(name)] = value
    return pose


def as_params(pose: np.ndarray, transl=(0.0, 0.0, 0.0)) -> dict[str, torch.Tensor]:
    t = lambda a: torch.tensor(np.asarray(a, dtype=np.float32).reshape(1, -1))  # noqa: E731
    return {
        "global_orient": t(pose[0]),
        "body_pose": t(pose[1:22]),
        "jaw_pose": t(pose[22]),
        "leye_pose": t(pose[23]),
        "reye_pose": t(pose[24]),
        "left_hand_pose": t(pose[25:40]),
        "right_hand_pose": t(pose[40:55]),
        "transl": t(transl),
    }


def forward_kinematics(rest: np.ndarray, parents, pose: np.ndarray, transl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rotations and positions of joints, chaining rotation matrices from the root by hand."""
    rotations = np.zeros((len(rest), 3, 3))
    positions = np.zeros((len(rest), 3))
    for joint, parent in enumerate(parents):
        local = Rotation.from_rotvec(pose[joint]).as_matrix()
        if parent < 0:
            rotations[joint], positions[joint] = local, rest[joint]
        else:
            rotations[joint] = rotations[parent] @ local
            positions[joint] = positions[parent] + rotations[parent] @ (rest[joint] - rest[parent])
    return rotations, positions + transl


# ----------------------------------------------------------------------------- SMPL-X loader


def test_standin_loads_through_the_loader(body):
    assert body.is_standin and "stand-in" in body.label
    assert body.family == "smplx" and body.num_vertices == 10475
    assert body.joint_names == tuple(NAMES)
    assert body.parents[:4] == (-1, 0, 0, 0) and body.parents[NAMES.index("left_index1")] == NAMES.index("left_wrist")
    assert body.parameter_widths == {
        "betas": 10, "global_orient": 3, "body_pose": 63, "left_hand_pose": 45, "right_hand_pose": 45,
        "jaw_pose": 3, "leye_pose": 3, "reye_pose": 3, "expression": 10, "transl": 3,
    }  # fmt: skip
    assert body.shape_names[0] == "height" and body.expression_names[6] == "eyeBlinkLeft"
    assert sum(1 for p in body.parameters()) == 0  # nothing trainable hides in the wrapped smplx layer
    vt, ft = body.uv
    assert ft.shape == body.faces.shape and vt.shape[1] == 2
    template = body.template()
    assert template["rest_vertices"].shape == (10475, 3) and template["uv_faces"].dtype == np.int32


@pytest.mark.parametrize(
    "joints",
    [
        {"left_elbow": (0.0, -np.pi / 2, 0.0)},
        {"pelvis": (0.3, -0.8, 0.2)},
        {"right_knee": (1.3, 0.0, 0.0), "right_hip": (-0.6, 0.1, 0.0)},
        {"left_index1": (0.0, 0.0, -1.0), "left_index2": (0.0, 0.0, -1.2), "left_index3": (0.0, 0.0, -0.8)},
        {"pelvis": (0.0, 0.5, 0.0), "spine2": (0.2, 0.0, 0.1), "left_shoulder": (0.1, 0.2, -0.9), "right_thumb2": (0.3, 0.4, 0.0), "jaw": (0.3, 0.0, 0.0)},
    ],
)
def test_forward_kinematics_matches_hand_computed_chain(body, joints):
    pose = pose_vector(**joints)
    transl = np.array([0.1, -0.2, 0.3])
    out = body(**as_params(pose, transl))
    rest = body.rest_joints().detach().numpy().astype(np.float64)
    rotations, positions = forward_kinematics(rest, body.parents, pose, transl)
    np.testing.assert_allclose(out.joints[0].detach().numpy(), positions, atol=1e-5)
    transforms = out.joint_transforms[0].detach().numpy()
    np.testing.assert_allclose(transforms[:, :3, :3], rotations, atol=1e-5)
    np.testing.assert_allclose(transforms[:, :3, 3], positions, atol=1e-5)
    np.testing.assert_allclose(transforms[:, 3], np.tile([0, 0, 0, 1], (55, 1)), atol=0)


def test_joint_transforms_carry_rigidly_skinned_vertices(body):
    """A vertex skinned 100% to a joint (the eyeballs) lands at T_j @ [v - J_j, 1]."""
    pose = pose_vector(pelvis=(0.1, 0.7, 0.0), neck=(0.2, 0.3, 0.0), head=(0.0, 0.4, 0.2), left_eye_smplhf=(0.0, 0.3, 0.0))
    out = body(**as_params(pose, (0.5, 0.0, -1.0)))
    eye = NAMES.index("left_eye_smplhf")
    rigid = torch.nonzero(body.skinning_weights[:, eye] == 1.0).flatten()
    assert len(rigid) > 50
    rest_v, rest_j = body.rest_vertices(), body.rest_joints()
    local = torch.cat([rest_v[rigid] - rest_j[eye], torch.ones(len(rigid), 1)], dim=1)
    carried = (out.joint_transforms[0, eye] @ local.T).T[:, :3]
    torch.testing.assert_close(carried, out.vertices[0, rigid], atol=1e-5, rtol=0)


def test_zero_hand_pose_is_the_flat_template_hand(body, arrays):
    out = body(body_pose=torch.zeros(1, 63))
    np.testing.assert_allclose(out.vertices[0].numpy(), arrays["v_template"], atol=1e-6)
    hands_mean = arrays["hands_meanl"]
    assert np.abs(hands_mean).max() > 0.05  # the file's relaxed mean exists and is not used
    ids = VERTEX_IDS["smplx"]
    v = out.vertices[0].numpy()
    assert v[ids["lmiddle"], 0] == pytest.approx(v[:, 0].max(), abs=0.003)  # fingers straight out along +X
    assert v[ids["rmiddle"], 0] == pytest.approx(v[:, 0].min(), abs=0.003)


def test_batched_forward_with_broadcast_betas(body):
    rng = np.random.default_rng(1)
    batch = 5
    params = {
        "betas": torch.tensor(rng.normal(size=(1, 10)), dtype=torch.float32),
        "body_pose": torch.tensor(rng.normal(scale=0.3, size=(batch, 63)), dtype=torch.float32),
        "expression": torch.tensor(rng.normal(size=(batch, 10)), dtype=torch.float32),
        "right_hand_pose": torch.tensor(rng.normal(scale=0.3, size=(batch, 45)), dtype=torch.float32),
    }
    out = body(**params)
    assert out.vertices.shape == (batch, 10475, 3) and out.joint_transforms.shape == (batch, 55, 4, 4)
    for k in (0, 3):
        single = body(**{name: (value if name == "betas" else value[k : k + 1]) for name, value in params.items()})
        torch.testing.assert_close(single.vertices[0], out.vertices[k], atol=1e-5, rtol=0)
        torch.testing.assert_close(single.joint_transforms[0], out.joint_transforms[k], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="batch"):
        body(body_pose=torch.zeros(2, 63), transl=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="unknown parameter"):
        body(hand_pose=torch.zeros(1, 45))


def test_forward_is_differentiable_in_every_parameter(body):
    params = {name: torch.full((2, width), 0.05, requires_grad=True) for name, width in body.parameter_widths.items()}
    out = body(**params)
    weights = torch.linspace(0.5, 1.5, out.vertices.numel()).reshape(out.vertices.shape)
    (out.vertices * weights).sum().backward()
    for name, value in params.items():
        assert value.grad is not None and value.grad.abs().sum() > 0, name


def test_expressions_and_betas(body, arrays):
    neutral = body()
    smile = torch.zeros(1, 10)
    smile[0, body.expression_names.index("mouthSmile")] = 1.0
    smiling = body(expression=smile)
    moved = (smiling.vertices - neutral.vertices).norm(dim=-1)[0]
    below_neck = torch.tensor(arrays["v_template"][:, 1] < body.rest_joints()[NAMES.index("neck"), 1].item())
    assert moved.max() > 0.003 and moved[below_neck].max() == 0
    taller = torch.zeros(1, 10)
    taller[0, body.shape_names.index("height")] = 2.0
    v = body(betas=taller).vertices[0]
    assert np.ptp(v[:, 1].numpy()) > np.ptp(neutral.vertices[0, :, 1].numpy()) + 0.05
    assert body.rest_vertices(taller[0]).shape == (10475, 3)
    torch.testing.assert_close(body.rest_joints(taller[0]), body(betas=taller).joints[0], atol=1e-5, rtol=0)


def test_pca_hands_are_optional(cache, arrays):
    pca = load_smplx(None, use_pca=True, num_pca_comps=6)
    assert pca.parameter_widths["left_hand_pose"] == 6 and pca.parameter_widths["right_hand_pose"] == 6
    coefficients = torch.zeros(1, 6)
    coefficients[0, 0] = 1.2
    full = torch.tensor(1.2 * arrays["hands_componentsl"][0], dtype=torch.float32)[None]
    body_full = load_smplx(None)
    torch.testing.assert_close(pca(left_hand_pose=coefficients).vertices, body_full(left_hand_pose=full).vertices, atol=1e-5, rtol=0)


def test_genders_load(cache):
    female = load_smplx(None, gender="female")
    assert female.is_standin and female.source.name == "SMPLX_FEMALE.npz"
    with pytest.raises(ValueError, match="gender"):
        load_smplx(None, gender="other")


# ----------------------------------------------------------------------------- MANO loader


def test_mano_loads_and_poses(right_hand, cache):
    hand = right_hand
    assert hand.is_standin and hand.family == "mano" and hand.num_vertices == 778
    assert hand.joint_names[:4] == ("right_wrist", "right_index1", "right_index2", "right_index3")
    assert hand.joint_names[-1] == "right_thumb3" and hand.parameter_widths == {"betas": 10, "global_orient": 3, "hand_pose": 45, "transl": 3}
    pose = np.zeros((16, 3))
    pose[0] = (0.2, -0.4, 0.1)
    pose[1:4] = (0.0, 0.0, 0.9)  # index curl (flexion about +Z for the right hand)
    transl = np.array([0.0, 0.1, 0.0])
    out = hand(global_orient=torch.tensor(pose[:1], dtype=torch.float32), hand_pose=torch.tensor(pose[1:].reshape(1, 45), dtype=torch.float32), transl=torch.tensor(transl[None], dtype=torch.float32))
    rest = hand.rest_joints().numpy().astype(np.float64)
    rotations, positions = forward_kinematics(rest, hand.parents, pose, transl)
    np.testing.assert_allclose(out.joints[0].numpy(), positions, atol=1e-5)
    np.testing.assert_allclose(out.joint_transforms[0, :, :3, :3].numpy(), rotations, atol=1e-5)
    flat = hand().vertices[0]
    tip = VERTEX_IDS["mano"]["index"]
    curled = hand(hand_pose=torch.tensor(pose[1:].reshape(1, 45), dtype=torch.float32)).vertices[0]
    assert curled[tip, 1] < flat[tip, 1] - 0.03  # curls toward the palm (-Y)
    left = load_mano(None, "left")
    assert left.joint_names[0] == "left_wrist"
    np.testing.assert_allclose(left.rest_vertices().numpy(), flat.numpy() * [-1, 1, 1], atol=1e-6)


def test_mano_left_shapedirs_defect_is_corrected(cache, tmp_path, right_hand):
    from backend.bodies.standin_mano import build_standin_mano

    right, left = build_standin_mano("right").arrays, build_standin_mano("left").arrays
    buggy = dict(left)
    buggy["shapedirs"] = left["shapedirs"].copy()
    buggy["shapedirs"][:, 0] = right["shapedirs"][:, 0]  # what the real MANO_LEFT.pkl ships
    for name, content in (("MANO_RIGHT.pkl", right), ("MANO_LEFT.pkl", buggy)):
        (tmp_path / name).write_bytes(pickle.dumps(content, protocol=2))
    fixed = load_mano(tmp_path, "left")
    np.testing.assert_allclose(fixed.shape_directions().numpy(), left["shapedirs"], atol=1e-6)
    (tmp_path / "MANO_RIGHT.pkl").unlink()  # without the right hand to compare with, the file is used as is
    np.testing.assert_allclose(load_mano(tmp_path, "left").shape_directions().numpy(), buggy["shapedirs"], atol=1e-6)


# ----------------------------------------------------------------------------- bad files


def test_missing_file_lists_what_was_looked_for(tmp_path):
    with pytest.raises(ModelFileError) as error:
        load_smplx(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "SMPLX_NEUTRAL.npz" in message and "smplx/SMPLX_NEUTRAL.pkl" in message
    with pytest.raises(ModelFileError, match="does not exist"):
        load_mano(tmp_path / "nowhere")


def test_missing_key_and_wrong_shape_are_named(cache, tmp_path, arrays):
    broken = {k: v for k, v in arrays.items() if k != "posedirs"}
    write_npz(tmp_path / "SMPLX_NEUTRAL.npz", broken)
    with pytest.raises(ModelFileError) as error:
        load_smplx(tmp_path)
    assert "missing key 'posedirs'" in str(error.value) and "SMPLX_NEUTRAL.npz" in str(error.value)
    broken = dict(arrays)
    broken["shapedirs"] = arrays["shapedirs"].transpose(0, 2, 1)
    write_npz(tmp_path / "SMPLX_NEUTRAL.npz", broken)
    with pytest.raises(ModelFileError, match=r"shapedirs has shape \(10475, 20, 3\), expected \(V, 3, S\)"):
        load_smplx(tmp_path)
    broken = dict(arrays)
    broken["f"] = arrays["f"] + 20000
    write_npz(tmp_path / "SMPLX_NEUTRAL.npz", broken)
    with pytest.raises(ModelFileError, match="f must hold integer vertex indices"):
        load_smplx(tmp_path)


def test_truncated_npz_is_reported(cache, tmp_path, body):
    data = Path(body.source).read_bytes()
    (tmp_path / "SMPLX_NEUTRAL.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        load_smplx(tmp_path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_without_running(tmp_path, arrays):
    marker = tmp_path / "pwned"
    (tmp_path / "MANO_RIGHT.pkl").write_bytes(pickle.dumps({"v_template": _Exploit(marker)}, protocol=2))
    with pytest.raises(ModelFileError, match="refusing to load") as error:
        load_mano(tmp_path)
    assert "MANO_RIGHT.pkl" in str(error.value) and ("system" in str(error.value))
    # the same payload inside an object member of an .npz
    payload = dict(arrays)
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", **payload, extra=np.array([_Exploit(marker)], dtype=object))
    with pytest.raises(ModelFileError, match="refusing to load"):
        load_smplx(tmp_path)
    assert not marker.exists()


class _Call:
    """Pickles as a call of ``function(*arguments)``."""

    def __init__(self, function, *arguments):
        self.reduced = (function, arguments)

    def __reduce__(self):
        return self.reduced


# Allowed globals called with arguments they refuse: the unpickling fails inside the call.
MISUSED_GLOBALS = {
    "LookupError": _Call(codecs.encode, "a", "nope"),  # unknown codec
    "TypeError": _Call(dict, 5),
    "ValueError": _Call(bytes, -1),
    "OverflowError": _Call(bytes, 10**30),
}


@pytest.mark.parametrize("kind", sorted(MISUSED_GLOBALS))
def test_misused_allowed_globals_are_reported_with_the_file(tmp_path, arrays, kind):
    payload = MISUSED_GLOBALS[kind]
    (tmp_path / "MANO_RIGHT.pkl").write_bytes(pickle.dumps({"v_template": payload}, protocol=2))
    with pytest.raises(ModelFileError, match=f"MANO_RIGHT.pkl: truncated or corrupt pickle \\({kind}"):
        load_mano(tmp_path)
    np.savez(tmp_path / "SMPLX_NEUTRAL.npz", **arrays, extra=np.array([payload], dtype=object))
    with pytest.raises(ModelFileError, match=f"SMPLX_NEUTRAL.npz: truncated or corrupt object member extra.npy \\({kind}"):
        load_smplx(tmp_path)


def test_broken_pickle_streams_are_reported_with_the_file(tmp_path, arrays):
    good = pickle.dumps({"v_template": np.zeros((3, 3))}, protocol=2)
    broken = {
        "truncated": good[: len(good) // 2],
        "empty stack": b"\x80\x02.",  # STOP with nothing built
        "bad opcode": b"\x80\x02\xff",
        "bad memo": b"\x80\x02h\x07.",  # BINGET of a memo entry never stored
    }
    for name, data in broken.items():
        (tmp_path / "MANO_RIGHT.pkl").write_bytes(data)
        with pytest.raises(ModelFileError, match="MANO_RIGHT.pkl: truncated or corrupt pickle"):
            load_mano(tmp_path)
        member = np.lib.format.header_data_from_array_1_0(np.array([None], dtype=object))
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, member)
        write_npz(tmp_path / "SMPLX_NEUTRAL.npz", arrays)
        with zipfile.ZipFile(tmp_path / "SMPLX_NEUTRAL.npz", "a") as archive:
            archive.writestr("extra.npy", buffer.getvalue() + data)
        with pytest.raises(ModelFileError, match="SMPLX_NEUTRAL.npz: truncated or corrupt object member extra.npy"):
            load_smplx(tmp_path)


def _pickle_with_fake_chumpy(content: dict) -> bytes:
    """Pickle ``content`` with 'shapedirs' as a chumpy.ch.Ch object, as real SMPL/MANO pickles have it."""

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()

        def __getstate__(self):
            return dict(self.__dict__)

    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    module.Ch, package.ch = Ch, module
    sys.modules.update({"chumpy": package, "chumpy.ch": module})
    try:
        content = dict(content, shapedirs=Ch(content["shapedirs"]))
        return pickle.dumps(content, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_pkl_with_chumpy_and_sparse_is_converted_once(cache, tmp_path, arrays):
    content = dict(arrays, J_regressor=scipy.sparse.csc_matrix(arrays["J_regressor"]))
    (tmp_path / "SMPLX_NEUTRAL.pkl").write_bytes(_pickle_with_fake_chumpy(content))
    assert "chumpy" not in sys.modules
    loaded = load_smplx(tmp_path)
    assert loaded.source.name == "SMPLX_NEUTRAL.pkl" and not loaded.is_standin and "stand-in" not in loaded.label
    np.testing.assert_allclose(loaded.shape_directions().numpy(), arrays["shapedirs"][:, :, :10], atol=1e-6)
    assert loaded.shape_names[0] == "beta_000"
    converted = list((cache / "converted").glob("*.npz"))
    assert len(converted) == 1
    stamp = converted[0].stat().st_mtime_ns
    load_smplx(tmp_path / "SMPLX_NEUTRAL.pkl")
    assert converted[0].stat().st_mtime_ns == stamp  # reused, not rewritten


def test_mano_pkl_with_chumpy_loads(cache, tmp_path):
    from backend.bodies.standin_mano import build_standin_mano

    content = build_standin_mano("right").arrays
    (tmp_path / "MANO_RIGHT.pkl").write_bytes(_pickle_with_fake_chumpy(content))
    hand = load_mano(tmp_path / "MANO_RIGHT.pkl")
    np.testing.assert_allclose(hand.shape_directions().numpy(), content["shapedirs"], atol=1e-6)
    with pytest.raises(ModelFileError, match="right hand"):
        load_mano(tmp_path / "MANO_RIGHT.pkl", side="left")


def test_smplx_subfolder_and_uv_obj(cache, tmp_path, arrays):
    folder = tmp_path / "smplx"
    write_npz(folder / "SMPLX_MALE.npz", {k: v for k, v in arrays.items() if k not in ("vt", "ft")})
    write_obj(folder / "smplx_uv.obj", arrays["v_template"], arrays["f"], (arrays["vt"], arrays["ft"]))
    male = load_smplx(tmp_path, gender="male")
    assert male.source == folder / "SMPLX_MALE.npz" and not male.is_standin
    vt, ft = male.uv
    np.testing.assert_allclose(vt.numpy(), arrays["vt"], atol=1e-6)
    np.testing.assert_array_equal(ft.numpy(), arrays["ft"])


# ----------------------------------------------------------------------------- stand-in cache


def test_standin_is_reused_and_regenerated_when_stale(cache, body):
    path = body.source
    sidecar = path.with_name(path.name + ".standin.json")
    stamp = path.stat().st_mtime_ns
    assert load_smplx(None).source == path and path.stat().st_mtime_ns == stamp  # reused
    data = path.read_bytes()
    path.write_bytes(data[:1000])  # a damaged file no longer matches its sha256
    assert load_smplx(None).num_vertices == 10475 and path.read_bytes() == data
    sidecar.write_text(sidecar.read_text().replace('"version": ', '"version": 1000 + '))
    load_smplx(None)
    assert '"version": 1000' not in sidecar.read_text()  # an older/newer generator's file is replaced
    assert not list(path.parent.glob(".*.tmp"))  # no temp files left behind
