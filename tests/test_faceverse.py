"""FaceVerse: the stand-in and the real-file loader (v2 and v3 layouts), the rotation convention,
and refusal of malformed or malicious files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from backend.bodies import faceverse as fv
from backend.bodies import standin_faceverse as standin
from backend.bodies.faceverse import ARKIT_BLENDSHAPE_NAMES, euler_to_matrix, load_faceverse, matrix_to_euler
from backend.bodies.model_files import sha256_file
from backend.errors import ModelFileError

FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model(cache) -> fv.FaceVerseModel:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NEURAL_AVATAR_CACHE", str(cache))
        return load_faceverse(None)  # generates the stand-in on first use


@pytest.fixture(scope="module")
def standin_folder(model, cache) -> Path:
    return cache / "standins" / "faceverse"


def expression_offsets(model: fv.FaceVerseModel, name: str, weight: float = 1.0) -> np.ndarray:
    params = model.zero_parameters(1)
    params["exp"][0, model.expression_names.index(name)] = weight
    with torch.no_grad():
        return (model(**params).vertices[0] - model.mean).numpy()


# ----------------------------------------------------------------------------- the stand-in


def test_standin_loads_through_the_file_loader(model, standin_folder):
    assert model.is_standin and "[stand-in]" in model.label
    assert model.source == standin_folder / standin.FILE_NAME
    assert model.version == "v3"
    assert 5000 <= model.num_vertices <= 9000
    assert model.expression_names == ARKIT_BLENDSHAPE_NAMES and len(set(model.expression_names)) == 52
    assert model.parameter_widths == {"id": 150, "exp": 52, "rotation": 3, "translation": 3}
    assert model.shape_names[0] == "id_000" and len(model.shape_names) == 150
    assert model.texture_dims == 251
    assert model.keypoint_indices.shape == (68,)
    uv_coords, uv_faces = model.uv
    assert uv_coords.min() >= 0 and uv_coords.max() <= 1 and uv_faces.shape == model.faces.shape
    (left_start, left_end), (right_start, right_end) = model.eyeball_vertex_ranges
    assert left_start < left_end == right_start < right_end == model.num_vertices
    assert model.mean[left_start:left_end, 0].min() > 0  # left eyeball on the subject's left (+X)

    template = model.template()
    assert template["rest_vertices"].shape == (model.num_vertices, 3)
    assert template["shape_directions"].shape == (model.num_vertices, 3, 150)
    assert template["expression_directions"].shape == (model.num_vertices, 3, 52)
    assert np.all(template["skinning_weights"] == 1) and template["parents"].tolist() == [-1]

    # The raw file keeps the real v3 convention: millimetres.
    raw = fv.read_pickled_dict(model.source)
    assert np.allclose(raw["meanshape"] * 0.001, model.mean.numpy(), atol=1e-7)


def test_standin_generation_is_deterministic(standin_folder):
    assert standin.standin_bytes() == (standin_folder / standin.FILE_NAME).read_bytes()


def test_standin_file_is_reused_and_regenerated(standin_folder, monkeypatch):
    path = standin_folder / standin.FILE_NAME
    sidecar_path = standin_folder / f"{standin.FILE_NAME}.standin.json"  # the sidecar every stand-in family uses
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["version"] == standin.GENERATOR_VERSION
    written = path.stat().st_mtime_ns
    assert standin.ensure_standin_file(standin_folder) == path
    assert path.stat().st_mtime_ns == written  # reused as is
    assert load_faceverse(path).is_standin  # labelled a stand-in even when chosen by path

    with open(path, "ab") as handle:  # damaged: the sha256 no longer matches
        handle.write(b"x")
    standin.ensure_standin_file(standin_folder)
    assert sha256_file(path) == sidecar["sha256"]

    monkeypatch.setattr(standin, "GENERATOR_VERSION", standin.GENERATOR_VERSION + 1)
    standin.ensure_standin_file(standin_folder)
    renewed = json.loads(sidecar_path.read_text())
    assert renewed["version"] == standin.GENERATOR_VERSION
    assert not list(standin_folder.glob("*.tmp"))


def test_standin_is_an_adult_face_in_the_smplx_frame(model):
    v = model.mean.numpy()
    kp = v[model.keypoint_indices.numpy()]
    face = v[: model.eyeball_vertex_ranges[0][0]]
    assert 0.13 <= np.ptp(face[:, 0]) <= 0.16  # width
    assert 0.12 <= kp[17:27, 1].mean() - kp[8, 1] <= 0.16  # brows to chin
    assert 0.080 <= np.linalg.norm(kp[36] - kp[45]) <= 0.100  # outer eye corners
    # Y up, face toward +Z, the subject's left at +X (iBUG: 36-41 right eye, 42-47 left eye).
    assert kp[36:42, 0].max() < 0 < kp[42:48, 0].min()
    assert kp[8, 1] < kp[57, 1] < kp[51, 1] < kp[33, 1] < kp[30, 1] < kp[36:48, 1].mean() < kp[17:27, 1].mean()
    assert kp[30, 2] == kp[:, 2].max()  # the nose tip is the most forward landmark


def test_expressions_move_their_own_regions(model):
    kp = model.keypoint_indices.numpy()
    mouth = kp[48:68]

    blink = expression_offsets(model, "eyeBlinkLeft")
    assert blink[kp[[43, 44]], 1].max() < -0.003  # left upper lid comes down
    assert np.abs(blink[kp[[37, 38]]]).max() < 1e-5  # right eye untouched
    assert np.abs(blink[mouth]).max() < 1e-5

    jaw = expression_offsets(model, "jawOpen")
    assert jaw[kp[8], 1] < -0.015  # chin
    assert jaw[kp[[57, 66]], 1].max() < -0.010  # lower lip
    assert np.abs(jaw[kp[[51, 62]], 1]).max() < 0.002  # upper lip stays

    smile = expression_offsets(model, "mouthSmileLeft")
    assert smile[kp[54], 1] > 0.003 and smile[kp[54], 0] > 0  # left corner up and out
    assert np.abs(smile[kp[48]]).max() < 1e-4  # right corner stays

    brows = expression_offsets(model, "browInnerUp")
    assert brows[kp[[21, 22]], 1].min() > 0.003
    assert brows[kp[[21, 22]], 1].min() > brows[kp[[17, 26]], 1].max()  # inner more than outer

    look = expression_offsets(model, "eyeLookOutLeft")
    (left_start, left_end), (right_start, right_end) = model.eyeball_vertex_ranges
    left_ball = model.mean.numpy()[left_start:left_end]
    cornea = np.argmax(left_ball[:, 2])
    assert look[left_start + cornea, 0] > 0.003  # the left gaze turns outward (+X)
    assert np.abs(look[right_start:right_end]).max() < 1e-6


def test_every_expression_stays_inside_the_face(model):
    x, y = model.mean.numpy()[:, :2].T
    outside = (np.abs(x) > 0.065) | (y > 0.095) | (y < -0.105)
    assert outside.sum() > 500  # forehead top and sides exist, so the check means something
    motion = np.linalg.norm(model.expression_directions().numpy(), axis=1)  # (V, 52)
    for index, name in enumerate(model.expression_names):
        assert motion[:, index].max() > 0.002, f"{name} barely moves anything"
        assert motion[outside, index].max() < 0.0005, f"{name} moves vertices outside the face"


def test_identity_directions_are_smooth_and_plausible(model):
    directions = model.shape_directions().numpy()
    per_vertex_sd = np.sqrt((directions**2).sum((1, 2)))
    assert 0.002 < per_vertex_sd.mean() < 0.006
    # At 3 sigma along any single direction no vertex moves more than 3 cm.
    assert 3 * np.linalg.norm(directions, axis=1).max() < 0.03


# ----------------------------------------------------------------------------- pose


def hand_built_faceverse_matrix(x: float, y: float, z: float) -> np.ndarray:
    rot_x = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    rot_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rot_z = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x  # FaceVerse's compute_rotation_matrix, in its camera frame


def test_rotation_and_translation_give_the_expected_vertices(model):
    angles, translation = (0.3, -0.5, 0.8), (0.01, -0.02, 0.5)
    expected_rotation = FLIP_YZ @ hand_built_faceverse_matrix(*angles) @ FLIP_YZ
    params = model.zero_parameters(1)
    params["rotation"][0] = torch.tensor(angles)
    params["translation"][0] = torch.tensor(translation)
    params["exp"][0, 17] = 0.5
    with torch.no_grad():
        out = model(**params)
        unposed = model(exp=params["exp"]).vertices[0].numpy()
    expected = unposed @ expected_rotation.T + np.array(translation)
    assert np.allclose(out.vertices[0].numpy(), expected, atol=1e-6)
    assert np.allclose(out.joints[0, 0].numpy(), translation)
    assert np.allclose(out.joint_transforms[0, 0, :3, :3].numpy(), expected_rotation, atol=1e-6)
    assert np.allclose(out.joint_transforms[0, 0, 3].numpy(), [0, 0, 0, 1])


def test_euler_conversions_round_trip():
    rng = np.random.default_rng(3)
    angles = np.stack([rng.uniform(-3, 3, 50), rng.uniform(-1.5, 1.5, 50), rng.uniform(-3, 3, 50)], -1)
    matrices = euler_to_matrix(torch.tensor(angles))
    # scipy's extrinsic "xyz" is Rz @ Ry @ Rx: an independent implementation of the same convention.
    reference = FLIP_YZ @ Rotation.from_euler("xyz", angles).as_matrix() @ FLIP_YZ
    assert np.allclose(matrices.numpy(), reference, atol=1e-12)
    assert np.allclose(matrix_to_euler(matrices).numpy(), angles, atol=1e-9)
    locked = euler_to_matrix(torch.tensor([0.4, np.pi / 2, 0.0], dtype=torch.float64))
    assert np.allclose(euler_to_matrix(matrix_to_euler(locked)).numpy(), locked.numpy(), atol=1e-7)


def test_forward_is_batched_and_differentiable(model):
    rng = np.random.default_rng(0)
    params = {
        "id": torch.tensor(rng.normal(size=(3, 150)), dtype=torch.float32),
        "exp": torch.tensor(rng.uniform(0, 1, size=(3, 52)), dtype=torch.float32, requires_grad=True),
        "rotation": torch.tensor(rng.normal(scale=0.3, size=(3, 3)), dtype=torch.float32, requires_grad=True),
        "translation": torch.tensor(rng.normal(size=(3, 3)), dtype=torch.float32, requires_grad=True),
    }
    out = model(**params)
    single = model(**{name: value[1:2] for name, value in params.items()})
    assert out.vertices.shape == (3, model.num_vertices, 3)
    assert torch.allclose(out.vertices[1], single.vertices[0], atol=1e-6)
    out.vertices.square().sum().backward()
    for name in ("exp", "rotation", "translation"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exp"):
        model(exp=torch.zeros(1, 51))


def test_mean_texture(model):
    colours = model.mean_texture()
    assert colours.shape == (model.num_vertices, 3) and colours.min() >= 0 and colours.max() <= 1
    kp = model.keypoint_indices
    assert colours[kp[[62, 66]], 1].max() < colours[kp[30], 1] - 0.1  # lips darker/redder than the nose skin
    tex = torch.zeros(2, model.texture_dims)
    tex[1, 0] = 1.0  # the first colour direction brightens the skin
    varied = model.mean_texture(tex)
    assert varied.shape == (2, model.num_vertices, 3)
    assert torch.equal(varied[0], colours) and (varied[1, kp[30]] > colours[kp[30]]).all()


# ----------------------------------------------------------------------------- real layouts


def v2_dict(rng: np.random.Generator, vertices: int = 80) -> dict:
    """A small dict in the released v2 layout (Y down, face toward -Z, own units)."""
    mean = rng.normal(size=(vertices, 3))
    faces = np.stack([np.arange(vertices - 2), np.arange(1, vertices - 1), np.arange(2, vertices)], -1)
    return {
        "meanshape": mean,
        "meantex": rng.uniform(0, 255, size=(vertices, 3)),
        "idBase": rng.normal(size=(3 * vertices, 7)),
        "exBase": rng.normal(size=(3 * vertices, 5)),
        "texBase": rng.normal(size=(3 * vertices, 4)),
        "tri": faces,
        "point_buf": np.repeat(np.minimum(np.arange(vertices), len(faces) - 1)[:, None], 8, 1),
        "skinmask": np.ones((1, vertices)),
        "keypoints": rng.permutation(vertices)[:68],
        "exp_name_list": ["jawOpen", "eyeBlinkLeft", "eyeBlinkRight", "mouthPucker", "tongueOut"],
    }


def save_dict(path: Path, data: dict) -> Path:
    np.save(path, np.array(data, dtype=object), allow_pickle=True)
    return path


def test_v2_layout_gives_the_linear_model_exactly(tmp_path):
    rng = np.random.default_rng(1)
    data = v2_dict(rng)
    path = save_dict(tmp_path / "faceverse_simple_v2.npy", data)
    model = load_faceverse(tmp_path)  # found in the folder by its released name
    assert model.version == "v2" and not model.is_standin and model.source == path
    assert model.expression_names == tuple(data["exp_name_list"])
    assert model.parameter_widths == {"id": 7, "exp": 5, "rotation": 3, "translation": 3}

    identity, expression = rng.normal(size=7), rng.normal(size=5)
    raw = data["meanshape"] + (data["idBase"] @ identity).reshape(-1, 3) + (data["exBase"] @ expression).reshape(-1, 3)
    corners = data["meanshape"][data["keypoints"][[36, 45]]]
    scale = 0.09 / np.linalg.norm(corners[0] - corners[1])
    assert np.allclose(model.raw_to_metres, [scale, -scale, -scale])
    as_batch = lambda values: torch.tensor(values[None], dtype=torch.float32)  # noqa: E731
    out = model(id=as_batch(identity), exp=as_batch(expression))
    assert np.allclose(out.vertices[0].numpy(), raw * [scale, -scale, -scale], atol=1e-6)
    expected_colour = np.clip((data["meantex"] + (data["texBase"] @ np.ones(4)).reshape(-1, 3)) / 255, 0, 1)
    assert np.allclose(model.mean_texture(torch.ones(4)).numpy(), expected_colour, atol=1e-6)
    assert model.uv is None


def test_v2_simplified_subset(tmp_path):
    rng = np.random.default_rng(2)
    data = v2_dict(rng)
    select = np.sort(rng.permutation(80)[:70])
    data.update(
        select_id=select,
        tri_select=np.stack([np.arange(68), np.arange(1, 69), np.arange(2, 70)], -1),
        keypoints_select=rng.permutation(70)[:68],
        point_buf_select=np.zeros((70, 8), np.int64),
        skinmask_select=np.ones((1, 70)),
    )
    path = save_dict(tmp_path / "v2.npy", data)
    model = load_faceverse(path, simplified=True)
    assert model.num_vertices == 70 and model.faces.shape == (68, 3)
    mean = data["meanshape"][select]
    corners = mean[data["keypoints_select"][[36, 45]]]
    scale = 0.09 / np.linalg.norm(corners[0] - corners[1])
    assert np.allclose(model.mean.numpy(), mean * [scale, -scale, -scale], atol=1e-6)


def test_v3_without_the_arkit_basis_uses_exbase(tmp_path):
    rng = np.random.default_rng(4)
    data = v2_dict(rng, vertices=30)
    data["exBase"] = rng.normal(size=(90, 11))
    data["ver_inds"] = np.array([20, 25, 30])  # v3 marker: the eyeball ranges
    for key in ("exp_name_list", "skinmask"):
        del data[key]
    model = load_faceverse(save_dict(tmp_path / "faceverse_v3_6_s.npy", data))
    assert model.version == "v3" and model.expression_names[:2] == ("exp_000", "exp_001")
    assert model.parameter_widths["exp"] == 11
    assert np.allclose(model.mean.numpy(), data["meanshape"] * 0.001)
    assert model.eyeball_vertex_ranges == ((20, 25), (25, 30))


# ----------------------------------------------------------------------------- bad files


class RunsACommand:
    """Pickles as a call of os.system, as a malicious model file would."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def malformed(tmp_path: Path, name: str) -> tuple[Path, str]:
    """Write one kind of broken model file; return its path and the words the error must contain."""
    rng = np.random.default_rng(5)
    path = tmp_path / f"{name}.npy"
    data = v2_dict(rng)
    if name == "missing_key":
        del data["idBase"]
        save_dict(path, data)
        return path, "missing key 'idBase'"
    if name == "wrong_shape":
        data["exBase"] = data["exBase"][:-3]
        save_dict(path, data)
        return path, "'exBase' must be (3N, K)"
    if name == "bad_index":
        data["tri"][0, 0] = 80
        save_dict(path, data)
        return path, "'tri' has indices"
    if name == "nan":
        data["meanshape"][3, 1] = np.nan
        save_dict(path, data)
        return path, "'meanshape' contains NaN"
    if name == "plain_array":
        np.save(path, np.arange(12.0))
        return path, "not the pickled dict"
    if name == "not_a_dict":
        np.save(path, np.array(["meanshape", {"a": 1}], dtype=object), allow_pickle=True)
        return path, "not the dict"
    if name == "truncated":
        save_dict(path, data)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "truncated or corrupt"
    if name == "not_npy":
        path.write_text("meanshape = [1, 2, 3]\n")
        return path, "not a readable .npy file"
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name", ["missing_key", "wrong_shape", "bad_index", "nan", "plain_array", "not_a_dict", "truncated", "not_npy"]
)
def test_malformed_files_are_refused_clearly(tmp_path, name):
    path, words = malformed(tmp_path, name)
    with pytest.raises(ModelFileError) as error:
        load_faceverse(path)
    assert error.value.path == path
    assert words in str(error.value) and str(path) in str(error.value)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    data = v2_dict(np.random.default_rng(6))
    data["payload"] = RunsACommand(f"touch {marker}")
    path = save_dict(tmp_path / "faceverse_v3_1.npy", data)
    with pytest.raises(ModelFileError, match=r"refused to unpickle (posix|os)\.system") as error:
        load_faceverse(tmp_path)
    assert error.value.path == path
    assert not marker.exists()


def test_missing_paths(tmp_path):
    with pytest.raises(ModelFileError, match="faceverse_v3_1.npy"):
        load_faceverse(tmp_path)  # an empty folder names the files it looked for
    with pytest.raises(ModelFileError, match="does not exist"):
        load_faceverse(tmp_path / "nowhere.npy")
