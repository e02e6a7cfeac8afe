"""Requests ``body_template``, ``motion_read`` and ``motion_write`` against a real server subprocess.

Templates are compared exactly with ``BodyModel.template()`` computed in this process from the
same (shared) stand-in files; motion files are written and read on both sides of the socket.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch
import pytest

from blender_addon import wire
from backend.bodies import load_faceverse, load_mano, load_smplx
from backend.bodies.faceverse import ARKIT_BLENDSHAPE_NAMES
from backend.capture import CameraTrack, FaceVerseTrack, ManoTrack, SmplxMotion, Tracking, read_amass, read_tracking, write_tracking
from backend.capture.files import tracking_arrays
from backend.server.handlers.bodies import BodyModelCache, fit_betas
from backend.server.schema import as_numpy


@pytest.fixture(scope="module")
def client(shared_cache_server):
    with shared_cache_server.client(timeout=120.0) as connection:
        yield connection


def numpy_arrays(message: wire.Message) -> dict[str, np.ndarray]:
    return {name: as_numpy(array) for name, array in message.arrays.items()}


def remote_error(client, request_type: str, params: dict, arrays: dict | None = None) -> wire.RemoteError:
    with pytest.raises(wire.RemoteError) as caught:
        client.request(request_type, params, arrays)
    assert not client.closed  # a request-level error leaves the connection usable
    return caught.value


def sample_tracking(frames: int = 12, seed: int = 0) -> Tracking:
    rng = np.random.default_rng(seed)
    full = rng.uniform(-0.4, 0.4, (frames, 165)).astype(np.float32)
    motion = SmplxMotion.from_full_pose(
        full,
        transl=rng.normal(0, 0.3, (frames, 3)).astype(np.float32),
        fps=30.0,
        betas=rng.normal(0, 1, 10).astype(np.float32),
        expression=rng.normal(0, 0.5, (frames, 10)).astype(np.float32),
        gender="female",
    )
    K = np.array([[800.0, 0, 256], [0, 800.0, 256], [0, 0, 1]], np.float32)
    world_to_camera = np.repeat(np.eye(4, dtype=np.float32)[None], frames, 0)
    world_to_camera[:, 2, 3] = 3.0
    camera = CameraTrack(np.repeat(K[None], frames, 0), world_to_camera, (512, 512))
    face = FaceVerseTrack(
        identity=rng.normal(0, 1, 150),
        expression=rng.uniform(0, 1, (frames, 52)),
        rotation=rng.normal(0, 0.1, (frames, 3)),
        translation=rng.normal(0, 0.1, (frames, 3)),
    )
    hand = ManoTrack("left", rng.normal(0, 0.2, (frames, 3)), rng.normal(0, 0.2, (frames, 45)), rng.normal(0, 0.2, (frames, 3)))
    split = (np.arange(frames) % 4 == 3).astype(np.uint8)
    return Tracking(motion=motion, camera=camera, faceverse=face, mano={"left": hand}, split=split)


def amass_file(path: Path, frames: int = 9, width: int = 156, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {
        "poses": rng.uniform(-0.5, 0.5, (frames, width)),
        "trans": rng.normal(0, 0.5, (frames, 3)),
        "betas": rng.normal(0, 1, 16),
        "gender": np.array("male"),
        "mocap_framerate": np.array(120.0),
    }
    np.savez(path, **data)
    return data


# --- body_template -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, params, load",
    [
        ("smplx", {"gender": "female"}, lambda: load_smplx(gender="female")),
        ("mano", {"side": "left"}, lambda: load_mano(side="left")),
        ("faceverse", {}, load_faceverse),
    ],
)
def test_body_template_matches_the_model_exactly(client, family, params, load):
    model = load()
    betas = np.random.default_rng(1).normal(0, 1, len(model.shape_names)).astype(np.float32)
    reply = client.request("body_template", {"family": family, **params}, {"betas": betas})
    expected = model.template(betas)
    received = numpy_arrays(reply)
    assert sorted(received) == sorted(expected)
    for key, value in expected.items():
        assert received[key].dtype == value.dtype, key
        np.testing.assert_array_equal(received[key], value, err_msg=key)
    result = reply.result
    assert result["family"] == family and result["label"] == model.label and result["is_standin"] is True
    assert Path(result["source"]).resolve() == model.source.resolve()  # the server reaches the cache through a link
    assert result["joint_names"] == list(model.joint_names)
    assert result["shape_names"] == list(model.shape_names)
    assert result["expression_names"] == list(model.expression_names)
    assert result["betas_dropped"] == 0
    # Without betas: the mean identity.
    plain = numpy_arrays(client.request("body_template", {"family": family, **params}))
    np.testing.assert_array_equal(plain["rest_vertices"], model.template()["rest_vertices"])


def test_body_template_pads_short_and_cuts_long_betas(client):
    model = load_smplx()
    long_betas = np.linspace(-1, 1, 16)  # AMASS files carry 16 betas; the stand-in has 10 directions
    reply = client.request("body_template", {"family": "smplx"}, {"betas": long_betas})
    assert reply.result["betas_dropped"] == 6 and reply.result["gender"] == "neutral"
    np.testing.assert_array_equal(as_numpy(reply.arrays["rest_joints"]), model.template(long_betas[:10].astype(np.float32))["rest_joints"])
    short = client.request("body_template", {"family": "smplx"}, {"betas": np.array([0.5, -0.5], np.float32)})
    padded = np.array([0.5, -0.5] + [0.0] * 8, np.float32)
    np.testing.assert_array_equal(as_numpy(short.arrays["rest_vertices"]), model.template(padded)["rest_vertices"])
    assert fit_betas(None, 10) == (None, 0)


def test_body_template_bad_input_gives_structured_errors(client, tmp_path):
    error = remote_error(client, "body_template", {"family": "smpl"})
    assert error.code == "bad_request" and "params.family" in error.message and "smplx, mano, faceverse" in error.message
    error = remote_error(client, "body_template", {"family": "smplx", "gender": "other"})
    assert error.code == "bad_request" and "params.gender" in error.message and "'other'" in error.message
    error = remote_error(client, "body_template", {"family": "smplx", "models": {"smplx": "relative/folder"}})
    assert error.code == "bad_request" and "params.models.smplx" in error.message and "absolute" in error.message
    error = remote_error(client, "body_template", {"family": "smplx", "models": {"smpl": ""}})
    assert error.code == "bad_request" and "'smpl'" in error.message
    error = remote_error(client, "body_template", {"family": "smplx"}, {"betas": np.zeros((2, 5), np.float32)})
    assert error.code == "bad_request" and "arrays.betas" in error.message
    missing = tmp_path / "no-models-here"
    error = remote_error(client, "body_template", {"family": "smplx", "models": {"smplx": str(missing)}})
    assert error.code == "model_file" and str(missing) in error.message
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "SMPLX_NEUTRAL.npz").write_bytes(b"this is not a model")
    error = remote_error(client, "body_template", {"family": "smplx", "models": {"smplx": str(broken)}})
    assert error.code == "model_file" and "SMPLX_NEUTRAL.npz" in error.message


def test_model_cache_loads_each_key_once_under_concurrency():
    cache = BodyModelCache()
    loads: list[str] = []

    def slow_load(name: str):
        def load():
            loads.append(name)
            time.sleep(0.05)
            return object()

        return load

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(("a",), slow_load("a")))) for _ in range(6)]
    threads += [threading.Thread(target=lambda: results.append(cache.get(("b",), slow_load("b")))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(loads) == ["a", "b"]
    assert len({id(result) for result in results}) == 2

    def failing():
        raise RuntimeError("bad file")

    with pytest.raises(RuntimeError):
        cache.get(("c",), failing)
    assert cache.get(("c",), slow_load("c")) is not None  # a failed load is retried, not remembered


# --- motion_read ---------------------------------------------------------------------------


def test_motion_read_of_a_tracking_file_and_its_capture_folder(client, tmp_path):
    tracking = sample_tracking()
    folder = tmp_path / "capture"
    write_tracking(folder / "tracking.npz", tracking)
    expected = tracking_arrays(tracking)
    for path in (folder / "tracking.npz", folder):
        reply = client.request("motion_read", {"path": str(path)})
        result = reply.result
        assert result["fps"] == 30.0 and result["up_axis"] == "y" and result["gender"] == "female"
        assert result["num_frames"] == 12 and result["source_family"] == "smplx" and result["has_camera"]
        assert result["mano_sides"] == ["left"]
        assert result["faceverse_exp_names"] == list(ARKIT_BLENDSHAPE_NAMES)
        arrays = numpy_arrays(reply)
        assert set(arrays) == set(expected) - {"format", "format_version", "fps", "gender", "up_axis"}
        for key, value in arrays.items():
            want = np.asarray(expected[key])
            assert value.dtype == (np.float32 if want.dtype.kind == "f" else want.dtype), key
            np.testing.assert_array_equal(value, want.astype(value.dtype), err_msg=key)


def test_motion_read_of_an_amass_file(client, tmp_path):
    path = tmp_path / "walk_poses.npz"
    data = amass_file(path)
    reply = client.request("motion_read", {"path": str(path)})
    result = reply.result
    assert (result["fps"], result["up_axis"], result["gender"], result["source_family"]) == (120.0, "z", "male", "smplh")
    assert result["num_frames"] == 9 and not result["has_camera"] and "faceverse_exp_names" not in result
    arrays = numpy_arrays(reply)
    np.testing.assert_array_equal(arrays["body_pose"], data["poses"][:, 3:66].astype(np.float32))
    np.testing.assert_array_equal(arrays["left_hand_pose"], data["poses"][:, 66:111].astype(np.float32))
    np.testing.assert_array_equal(arrays["jaw_pose"], np.zeros((9, 3), np.float32))  # SMPL-H has no jaw
    np.testing.assert_array_equal(arrays["transl"], data["trans"].astype(np.float32))
    np.testing.assert_array_equal(arrays["betas"], data["betas"].astype(np.float32))
    assert all(value.dtype == np.float32 for value in arrays.values())


def test_motion_read_of_malformed_files_names_the_file(client, tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    error = remote_error(client, "motion_read", {"path": str(text)})
    assert error.code == "capture_format" and str(text) in error.message and "zip" in error.message
    keyless = tmp_path / "keyless.npz"
    np.savez(keyless, poses=np.zeros((4, 165)))
    error = remote_error(client, "motion_read", {"path": str(keyless)})
    assert error.code == "capture_format" and str(keyless) in error.message and "'trans'" in error.message
    absent = tmp_path / "absent.npz"
    error = remote_error(client, "motion_read", {"path": str(absent)})
    assert error.code == "capture_format" and str(absent) in error.message and "not found" in error.message
    error = remote_error(client, "motion_read", {"path": "relative.npz"})
    assert error.code == "bad_request" and "absolute" in error.message


def test_faceverse_expression_count_must_match_the_model(client, tmp_path):
    tracking = sample_tracking()
    tracking.faceverse = FaceVerseTrack(np.zeros(150), np.zeros((12, 40)), np.zeros((12, 3)), np.zeros((12, 3)))
    path = write_tracking(tmp_path / "tracking.npz", tracking)
    error = remote_error(client, "motion_read", {"path": str(path)})
    assert error.code == "capture_format" and str(path) in error.message and "40 expressions" in error.message


# --- motion_write --------------------------------------------------------------------------


def write_request(tracking: Tracking, path: Path, file_format: str = "tracking") -> tuple[dict, dict]:
    motion = tracking.motion
    params = {"path": str(path), "format": file_format, "fps": motion.fps, "gender": motion.gender, "up_axis": motion.up_axis}
    arrays = dict(motion.arrays())
    if tracking.camera is not None:
        arrays.update(
            camera_K=tracking.camera.K,
            camera_world_to_camera=tracking.camera.world_to_camera,
            image_size=np.array(tracking.camera.image_size, np.int32),
        )
    if tracking.faceverse is not None:
        face = tracking.faceverse
        arrays.update(
            faceverse_id=face.identity, faceverse_exp=face.expression, faceverse_rotation=face.rotation, faceverse_translation=face.translation
        )
    return params, arrays


def test_motion_write_tracking_round_trip(client, tmp_path):
    tracking = sample_tracking(seed=5)
    tracking.mano, tracking.split = {}, None  # not carried by the add-on
    path = tmp_path / "out" / "edited.npz"
    params, arrays = write_request(tracking, path)
    reply = client.request("motion_write", params, arrays)
    assert reply.result == {"path": str(path), "format": "tracking", "num_frames": 12}
    again = read_tracking(path)
    expected, written = tracking_arrays(tracking), tracking_arrays(again)
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    assert not list(path.parent.glob(".*.tmp"))  # the atomic writer left no temporary file
    # The written file reads back through the server too.
    assert client.request("motion_read", {"path": str(path)}).result["gender"] == "female"


def test_motion_write_amass_round_trip_of_a_long_motion(client, tmp_path):
    frames = 10_000  # ~7 MB of poses: well within the request limits
    rng = np.random.default_rng(8)
    motion = SmplxMotion.from_full_pose(
        rng.uniform(-1, 1, (frames, 165)).astype(np.float32),
        transl=rng.normal(0, 1, (frames, 3)).astype(np.float32),
        fps=59.94,
        betas=rng.normal(0, 1, 16).astype(np.float32),
        gender="male",
        up_axis="z",
    )
    path = tmp_path / "long.npz"
    params, arrays = write_request(Tracking(motion), path, "amass")
    assert client.request("motion_write", params, arrays).result["num_frames"] == frames
    again = read_amass(path)
    np.testing.assert_array_equal(again.full_pose(), motion.full_pose())
    np.testing.assert_array_equal(again.transl, motion.transl)
    np.testing.assert_array_equal(again.betas, motion.betas)
    assert (again.fps, again.gender, again.up_axis) == (59.94, "male", "z")
    back = client.request("motion_read", {"path": str(path)})
    np.testing.assert_array_equal(as_numpy(back.arrays["body_pose"]), motion.body_pose)


def test_motion_write_refuses_bad_requests(client, tmp_path):
    tracking = sample_tracking()
    tracking.mano, tracking.split = {}, None
    params, arrays = write_request(tracking, tmp_path / "a.npz")

    folder = tmp_path / "a-folder"
    folder.mkdir()
    error = remote_error(client, "motion_write", {**params, "path": str(folder)}, arrays)
    assert error.code == "bad_request" and str(folder) in error.message and "folder" in error.message
    assert folder.is_dir()
    error = remote_error(client, "motion_write", {**params, "path": "out.npz"}, arrays)
    assert error.code == "bad_request" and "absolute" in error.message
    error = remote_error(client, "motion_write", {**params, "format": "amass"}, arrays)
    assert error.code == "bad_request" and "only the body motion" in error.message
    partial = {key: value for key, value in arrays.items() if key != "image_size"}
    error = remote_error(client, "motion_write", params, partial)
    assert error.code == "bad_request" and "image_size" in error.message
    short = dict(arrays, transl=arrays["transl"][:5])
    error = remote_error(client, "motion_write", params, short)
    assert error.code == "bad_request" and "arrays.transl" in error.message
    error = remote_error(client, "motion_write", {**params, "gender": "robot"}, arrays)
    assert error.code == "bad_request" and "params.gender" in error.message
    error = remote_error(client, "motion_write", params, dict(arrays, body_pose=np.full((12, 63), np.nan, np.float32)))
    assert error.code == "bad_request" and "NaN" in error.message
    assert not (tmp_path / "a.npz").exists()  # nothing was written by any of these


def test_motion_write_turns_a_y_up_motion_into_z_up_amass(client, tmp_path):
    """AMASS is Z-up: a Y-up rig exported as AMASS is rotated about its rest pelvis, not just relabelled."""
    from backend.bodies import load_smplx
    from backend.capture import read_amass
    from backend.paths import ModelFolders

    tracking = sample_tracking()
    motion = tracking.motion
    params = {"path": str(tmp_path / "y_up.npz"), "format": "amass", "fps": motion.fps, "gender": motion.gender, "up_axis": "y"}
    client.request("motion_write", params, motion.arrays())
    written = read_amass(tmp_path / "y_up.npz")
    assert written.up_axis == "z"
    body = load_smplx(ModelFolders(), gender=motion.gender)

    def joints(m):
        betas = torch.from_numpy(m.betas[: len(body.shape_names)])[None]
        per_frame = {k: torch.from_numpy(v) for k, v in m.arrays().items() if k != "betas"}
        with torch.no_grad():
            return body(betas=betas, **per_frame).joints.numpy()

    y_to_z = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], np.float32)  # (x, y, z) -> (x, -z, y)
    np.testing.assert_allclose(joints(written), joints(motion) @ y_to_z.T, atol=3e-5)
