"""The server's avatar requests against a real server process and a real (tiny) trained avatar:
load / unload, render (uint8 and float16, equal to ``Avatar.render`` in process), unseen poses,
render_sequence streaming, structured errors for bad input, bake jobs (PNG + MP4, progress,
cancel) and train_start end to end."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from blender_addon import wire
from backend.avatar import load_avatar
from backend.capture import SPLIT_TEST, read_tracking
from backend.data import scale_intrinsics
from backend.render.bake import straight_rgba
from backend.train.checkpoint import load_checkpoint

L_SHOULDER, R_SHOULDER, L_KNEE, R_KNEE = 16, 17, 4, 5  # SMPL-X joint indices (body_pose holds joints 1..21)


def as_array(array: wire.WireArray) -> np.ndarray:
    return np.frombuffer(array.data, dtype=array.dtype).reshape(array.shape)


@pytest.fixture(scope="module")
def held_out(tiny_sample_capture):
    """(poses, K, world_to_camera) of the tiny capture's held-out frames (never trained on)."""
    tracking = read_tracking(tiny_sample_capture / "tracking.npz")
    frames = tracking.frames_of(SPLIT_TEST)
    poses = {key: value[frames] for key, value in tracking.motion.arrays().items() if key != "betas"}
    return poses, tracking.camera.K[frames], tracking.camera.world_to_camera[frames]


@pytest.fixture(scope="module")
def local_avatar(tiny_trained_avatar):
    return load_avatar(tiny_trained_avatar, "cpu")


@pytest.fixture(scope="module")
def avatar_id(server, tiny_trained_avatar) -> str:
    with server.client(timeout=120) as client:
        return client.request("load_avatar", {"path": str(tiny_trained_avatar)}).result["avatar_id"]


def render_arrays(poses, K, world_to_camera, frames=slice(None)) -> dict[str, np.ndarray]:
    arrays = {key: np.ascontiguousarray(value[frames]) for key, value in poses.items()}
    arrays["camera_K"] = np.ascontiguousarray(K if K.ndim == 2 else K[frames])
    arrays["camera_world_to_camera"] = np.ascontiguousarray(world_to_camera if world_to_camera.ndim == 2 else world_to_camera[frames])
    return arrays


def body_mask(avatar, poses, K, world_to_camera, size) -> np.ndarray:
    """Where the posed body mesh covers a pixel centre, (B, H, W) bool."""
    return avatar.geometry(poses, K, world_to_camera, size).mask[..., 0].numpy() > 0


def assert_still_serving(server, avatar_id: str, held_out) -> None:
    assert server.alive()
    with server.client() as client:
        reply = client.request("render", {"avatar_id": avatar_id, "width": 32, "height": 32}, render_arrays(*held_out, frames=slice(0, 1)))
        assert as_array(reply.arrays["rgba"]).shape == (1, 32, 32, 4)


# ------------------------------------------------------------------ load / unload


def test_load_avatar_returns_info_and_the_same_id_for_the_same_folder(server, tiny_trained_avatar, local_avatar, avatar_id):
    with server.client() as client:
        started = time.monotonic()
        again = client.request("load_avatar", {"path": str(tiny_trained_avatar)}).result
        assert time.monotonic() - started < 1.0  # unchanged on disk: not loaded again
        listed = client.request("info", {"bodies": False}).result["avatars"]
    assert again["avatar_id"] == avatar_id and avatar_id in listed
    info = again["info"]
    expected = local_avatar.info()
    for key in ("method", "training_steps", "checkpoint", "resolution", "capture", "body_models"):
        assert info[key] == json.loads(json.dumps(expected[key])), key
    assert info["method"] == "anr" and info["training_steps"] == 60 and info["resolution"] == [64, 64]


def test_a_changed_checkpoint_is_reloaded_and_unload_forgets_the_avatar(server, tiny_trained_avatar, held_out, tmp_path):
    folder = tmp_path / "avatar"
    shutil.copytree(tiny_trained_avatar, folder)
    arrays = render_arrays(*held_out, frames=slice(0, 1))
    with server.client(timeout=120) as client:
        first = client.request("load_avatar", {"path": str(folder)}).result
        trained = as_array(client.request("render", {"avatar_id": first["avatar_id"], "width": 64, "height": 64}, arrays).arrays["rgba"])
        # Point "latest" at the untrained step-0 checkpoint, as if another run had replaced it.
        (folder / "checkpoints" / "latest.json").write_text(json.dumps({"name": "initial"}))
        second = client.request("load_avatar", {"path": str(folder)}).result
        assert second["avatar_id"] == first["avatar_id"]
        assert first["info"]["training_steps"] == 60 and second["info"]["training_steps"] == 0
        untrained = as_array(client.request("render", {"avatar_id": second["avatar_id"], "width": 64, "height": 64}, arrays).arrays["rgba"])
        assert np.abs(trained.astype(int) - untrained.astype(int)).mean() > 5  # the new weights are in use
        best = client.request("load_avatar", {"path": str(folder), "checkpoint": "best"}).result
        assert best["avatar_id"] == first["avatar_id"] and best["info"]["training_steps"] == 60

        assert client.request("unload_avatar", {"avatar_id": first["avatar_id"]}).result == {}
        assert first["avatar_id"] not in client.request("info", {"bodies": False}).result["avatars"]
        for request_type, params, arrays_sent in (
            ("render", {"avatar_id": first["avatar_id"], "width": 8, "height": 8}, arrays),
            ("unload_avatar", {"avatar_id": first["avatar_id"]}, None),
        ):
            with pytest.raises(wire.RemoteError) as caught:
                client.request(request_type, params, arrays_sent)
            assert caught.value.code == "no_avatar" and first["avatar_id"] in caught.value.message


# ------------------------------------------------------------------ render


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_render_equals_the_in_process_render(server, avatar_id, local_avatar, held_out, dtype):
    poses, K, w2c = held_out
    arrays = render_arrays(poses, K, w2c, frames=slice(0, 3))
    with server.client() as client:
        reply = client.request("render", {"avatar_id": avatar_id, "width": 64, "height": 64, "dtype": dtype}, arrays)
    rgba = as_array(reply.arrays["rgba"])
    assert rgba.shape == (3, 64, 64, 4) and rgba.dtype == np.dtype(dtype) and reply.result["render_ms"] > 0
    expected = local_avatar.render({k: v[:3] for k, v in poses.items()}, K[:3], w2c[:3], 64)
    if dtype == "uint8":
        assert np.abs(rgba.astype(int) - np.round(expected * 255).astype(int)).max() <= 1
        alpha = rgba[..., 3] / 255.0
    else:
        np.testing.assert_allclose(rgba.astype(np.float32), expected, atol=1e-3, rtol=0)  # fp16: 2^-11 near 1
        alpha = rgba[..., 3].astype(np.float32)
    body = body_mask(local_avatar, {k: v[:3] for k, v in poses.items()}, K[:3], w2c[:3], (64, 64))
    # The person is drawn where the body projects, and little elsewhere (a 60-step training: soft,
    # not yet opaque, but an untrained renderer's alpha is about the same everywhere).
    assert body.mean() > 0.05 and alpha[body].mean() > 0.5
    far = ~np.array([binary_dilation(mask, iterations=6) for mask in body])
    assert alpha[far].mean() < 0.1
    colour = rgba[..., :3].astype(np.float32)
    assert np.all(colour <= rgba[..., 3:].astype(np.float32) + (1 if dtype == "uint8" else 1e-3))  # premultiplied


def test_render_with_one_camera_for_all_frames_at_another_size(server, avatar_id, local_avatar, held_out):
    poses, K, w2c = held_out
    size = (48, 80)  # (height, width): K is rescaled for it
    camera_K = scale_intrinsics(K[0], (64, 64), size)
    arrays = render_arrays(poses, camera_K, w2c[0], frames=slice(0, 2))
    with server.client() as client:
        rgba = as_array(client.request("render", {"avatar_id": avatar_id, "width": 80, "height": 48}, arrays).arrays["rgba"])
    assert rgba.shape == (2, 48, 80, 4)
    expected = local_avatar.render({k: v[:2] for k, v in poses.items()}, camera_K, w2c[0], size)
    assert np.abs(rgba.astype(int) - np.round(expected * 255).astype(int)).max() <= 1
    assert rgba[..., 3].max() > 200


def test_an_unseen_pose_given_by_a_few_parameters_renders(server, avatar_id, local_avatar, held_out):
    """Arms overhead and knees bent (no frame shows that), with only the body parameters sent."""
    poses, K, w2c = held_out
    body_pose = poses["body_pose"][:1].copy().reshape(1, 21, 3)
    body_pose[0, L_SHOULDER - 1, 2], body_pose[0, R_SHOULDER - 1, 2] = 1.2, -1.2
    body_pose[0, L_KNEE - 1, 0] = body_pose[0, R_KNEE - 1, 0] = 0.9
    pose = {"global_orient": poses["global_orient"][:1], "body_pose": body_pose.reshape(1, 63), "transl": poses["transl"][:1]}
    arrays = {**pose, "camera_K": K[0], "camera_world_to_camera": w2c[0]}
    with server.client() as client:
        rgba = as_array(client.request("render", {"avatar_id": avatar_id, "width": 64, "height": 64}, arrays).arrays["rgba"])
    body = body_mask(local_avatar, pose, K[0], w2c[0], (64, 64))
    far = ~binary_dilation(body[0], iterations=6)
    assert rgba[0, ..., 3][body[0]].mean() > 0.5 * 255 and rgba[0, ..., 3][far].mean() < 0.1 * 255
    expected = local_avatar.render(pose, K[0], w2c[0], 64)
    assert np.abs(rgba.astype(int) - np.round(expected * 255).astype(int)).max() <= 1


def test_render_sequence_streams_the_frames_in_order(server, avatar_id, held_out):
    arrays = render_arrays(*held_out, frames=slice(0, 6))
    with server.client() as client:
        batch = as_array(client.request("render", {"avatar_id": avatar_id, "width": 64, "height": 64}, arrays).arrays["rgba"])
        messages = list(client.stream("render_sequence", {"avatar_id": avatar_id, "width": 64, "height": 64}, arrays))
    events, reply = messages[:-1], messages[-1]
    assert reply.kind == "reply" and reply.result == {"frames": 6}
    assert [event.header["event"] for event in events] == ["frame"] * 6
    assert [event.data["index"] for event in events] == list(range(6))
    frames = np.concatenate([as_array(event.arrays["rgba"]) for event in events])
    assert frames.shape == (6, 64, 64, 4)
    assert np.abs(frames.astype(int) - batch.astype(int)).max() <= 1


def test_renders_from_several_connections_at_once_all_come_back_right(server, avatar_id, held_out):
    """Connections render the same avatar in parallel threads; its lock takes them one at a time."""
    arrays = [render_arrays(*held_out, frames=slice(index, index + 1)) for index in range(3)]
    params = {"avatar_id": avatar_id, "width": 64, "height": 64}
    with server.client() as client:
        expected = [as_array(client.request("render", params, frame).arrays["rgba"]).copy() for frame in arrays]
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            with server.client() as client:
                for round_ in range(4):
                    index = (seed + round_) % 3
                    rgba = as_array(client.request("render", params, arrays[index]).arrays["rgba"])
                    assert np.abs(rgba.astype(int) - expected[index].astype(int)).max() <= 1
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures


def test_a_client_leaving_mid_sequence_leaves_the_server_serving(server, avatar_id, held_out):
    poses, K, w2c = held_out
    many = {key: np.repeat(value, 25, axis=0) for key, value in poses.items()}  # 200 frames
    arrays = render_arrays(many, K[0], w2c[0])
    client = server.client()
    stream = client.stream("render_sequence", {"avatar_id": avatar_id, "width": 64, "height": 64}, arrays)
    assert next(stream).data["index"] == 0
    client._sock.shutdown(socket.SHUT_RDWR)  # gone without a goodbye
    client._sock.close()
    deadline = time.monotonic() + 60
    while "went away" not in server.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert_still_serving(server, avatar_id, held_out)


def test_bad_render_input_gets_structured_errors_and_the_server_keeps_serving(server, avatar_id, held_out, tiny_trained_avatar, tmp_path):
    poses, K, w2c = held_out
    good = render_arrays(poses, K, w2c, frames=slice(0, 3))
    nan_pose = good["body_pose"].copy()
    nan_pose[1, 5] = np.nan
    many = {key: np.repeat(value[:1], 65, axis=0) for key, value in poses.items()}
    params = {"avatar_id": avatar_id, "width": 64, "height": 64}
    cases = [
        ("render", params, {**good, "body_pose": nan_pose}, "bad_request", "arrays.body_pose: contains NaN"),
        ("render", params, {**good, "expression": np.full((3, 10), 1e30)}, "bad_request", "arrays.expression: values beyond"),
        ("render", params, {**good, "transl": np.ascontiguousarray(good["transl"][:, :2])}, "bad_request", "arrays.transl: shape [3, 2] does not match (B, 3)"),
        ("render", params, {**good, "camera_K": K[:2]}, "bad_request", "arrays.camera_K: axis 0 (B) is 2 but"),
        ("render", params, {**good, "camera_world_to_camera": np.ascontiguousarray(w2c[:3, :3])}, "bad_request", "arrays.camera_world_to_camera: shape [3, 3, 4]"),
        ("render", params, {k: v for k, v in good.items() if k != "camera_K"}, "bad_request", "arrays.camera_K: required"),
        ("render", params, {**good, "pose": good["transl"]}, "bad_request", "arrays: unexpected 'pose'"),
        ("render", params, render_arrays(many, K[0], w2c[0]), "bad_request", "65 frames (axis B); this request takes 1..64"),
        ("render", {**params, "width": 4096, "height": 4096, "dtype": "float16"}, good, "bad_request", "above the 256 MiB"),
        ("render", {**params, "width": 0}, good, "bad_request", "params.width: 0 is outside"),
        ("render", {**params, "avatar_id": "avatar-nothing"}, good, "no_avatar", "no avatar 'avatar-nothing' is loaded"),
        ("render_sequence", {**params, "avatar_id": "avatar-nothing"}, good, "no_avatar", "no avatar 'avatar-nothing'"),
        ("load_avatar", {"path": str(tmp_path / "missing")}, None, "checkpoint", "avatar folder not found"),
        ("load_avatar", {"path": str(tmp_path)}, None, "checkpoint", "holds no trained avatar"),
        ("load_avatar", {"path": "relative/avatar"}, None, "bad_request", "must be an absolute path"),
        ("load_avatar", {"path": str(tiny_trained_avatar), "checkpoint": "step-1"}, None, "bad_request", "not one of latest, best"),
    ]
    with server.client(timeout=120) as client:
        for request_type, request_params, arrays, code, text in cases:
            with pytest.raises(wire.RemoteError) as caught:
                client.request(request_type, request_params, arrays)
            assert caught.value.code == code and text in caught.value.message, (text, caught.value)

        tampered = tmp_path / "tampered"
        shutil.copytree(tiny_trained_avatar, tampered)
        tensors = tampered / "checkpoints" / load_checkpoint(tampered / "checkpoints").path.with_suffix(".safetensors").name
        data = bytearray(tensors.read_bytes())
        data[-10] ^= 0xFF
        tensors.write_bytes(bytes(data))
        with pytest.raises(wire.RemoteError) as caught:
            client.request("load_avatar", {"path": str(tampered)})
        assert caught.value.code == "checkpoint" and str(tensors) in caught.value.message and "sha256" in caught.value.message
        assert not client.closed
    assert "Traceback" not in server.log_text()
    assert_still_serving(server, avatar_id, held_out)


# ------------------------------------------------------------------ bake


def bake_params(avatar: Path, out_dir: Path, **options) -> dict:
    return {"avatar": str(avatar), "out_dir": str(out_dir), "width": 64, "height": 64, "fps": 25.0, **options}


def test_bake_writes_numbered_pngs_and_an_mp4_with_progress(server, tiny_trained_avatar, local_avatar, held_out, tmp_path):
    poses, K, w2c = held_out
    out = tmp_path / "baked"
    size = (48, 80)
    camera_K = scale_intrinsics(K[:4], (64, 64), size)
    arrays = render_arrays(poses, camera_K, w2c, frames=slice(0, 4))
    params = bake_params(tiny_trained_avatar, out, width=80, height=48, first_frame=7, mp4=True, stream=True)
    with server.client(timeout=120) as client:
        messages = list(client.stream("bake", params, arrays))
    final = messages[-1].result["job"]
    assert final["kind"] == "bake" and final["status"] == "done" and final["step"] == final["total"] == 4, final
    steps = [message.data["step"] for message in messages[:-1]]
    assert steps == sorted(steps) and steps and steps[-1] == 4
    assert sorted(p.name for p in out.iterdir()) == [f"frame_{n:06d}.png" for n in range(7, 11)] + ["render.mp4"]
    expected = local_avatar.render({k: v[:4] for k, v in poses.items()}, camera_K, w2c[:4], size)
    for index, frame in enumerate(expected):
        with Image.open(out / f"frame_{7 + index:06d}.png") as image:
            assert image.mode == "RGBA" and image.size == (80, 48)
            pixels = np.asarray(image).astype(int)
        straight = straight_rgba(frame).astype(int)
        assert np.abs(pixels[..., 3] - straight[..., 3]).max() <= 1
        visible = straight[..., 3] >= 26  # colour = premultiplied / alpha: compared where alpha is not tiny
        assert np.abs(pixels[..., :3][visible] - straight[..., :3][visible]).max() <= 1  # straight alpha
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(out / "render.mp4"))
    meta = next(reader)
    assert tuple(meta["size"]) == (80, 48) and meta["fps"] == 25 and sum(1 for _ in reader) == 4


def test_bake_can_be_cancelled_and_refuses_bad_input_at_once(server, tiny_trained_avatar, held_out, tmp_path):
    poses, K, w2c = held_out
    many = {key: np.repeat(value, 250, axis=0) for key, value in poses.items()}  # 2000 frames: minutes of work
    out = tmp_path / "baked"
    with server.client(timeout=120) as client:
        job = client.request("bake", bake_params(tiny_trained_avatar, out, first_frame=100), render_arrays(many, K[0], w2c[0])).result["job"]
        deadline = time.monotonic() + 90
        while client.request("job_status", {"job": job["id"]}).result["job"]["step"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        final = client.request("job_cancel", {"job": job["id"], "wait": True}).result["job"]
        assert final["status"] == "cancelled" and final["exit_code"] == 0, final
        written = sorted(p.name for p in out.iterdir())
        assert 3 <= len(written) < 2000
        assert written == [f"frame_{n:06d}.png" for n in range(100, 100 + len(written))]

        jobs_before = len(client.request("job_list").result["jobs"])
        cases = [
            (bake_params(tmp_path / "missing", out), render_arrays(poses, K, w2c), "checkpoint", "avatar folder not found"),
            (bake_params(tiny_trained_avatar, out, fps=0), render_arrays(poses, K, w2c), "bad_request", "params.fps"),
            (bake_params(tiny_trained_avatar, out), {**render_arrays(poses, K, w2c), "camera_K": K[:3]}, "bad_request", "axis 0 (B) is 3"),
        ]
        for params, arrays, code, text in cases:
            with pytest.raises(wire.RemoteError) as caught:
                client.request("bake", params, arrays)
            assert caught.value.code == code and text in caught.value.message, caught.value
        assert len(client.request("job_list").result["jobs"]) == jobs_before  # no job was started


# ------------------------------------------------------------------ train_start end to end


def test_train_start_trains_an_avatar_that_then_loads_and_renders(server, tiny_sample_capture, held_out, tmp_path):
    out = tmp_path / "avatar"
    params = {
        "capture": str(tiny_sample_capture), "out": str(out), "iterations": 10, "resolution": 64, "threads": 1,
        "validate_every": 10, "stream": True,
    }
    with server.client(timeout=120) as client:
        final = list(client.stream("train_start", params))[-1].result["job"]
        assert final["status"] == "done" and final["step"] == 10, final
        loaded = client.request("load_avatar", {"path": str(out)}).result
        assert loaded["info"]["training_steps"] == 10 and loaded["info"]["capture"]["path"] == str(tiny_sample_capture.resolve())
        reply = client.request("render", {"avatar_id": loaded["avatar_id"], "width": 64, "height": 64}, render_arrays(*held_out, frames=slice(0, 2)))
    assert as_array(reply.arrays["rgba"]).shape == (2, 64, 64, 4)
