"""The add-on driving a REAL backend subprocess (bpy module, headless).

Register the add-on, start the backend through the operator, import AMASS and tracking files
through the import operator and check the rig numerically against the body model's own forward
pass, export through the operator and re-read the files, and break things (malformed file,
stopped server, server killed mid-request, wrong token): every failure must give a clear report
and leave the scene unchanged. The worker-thread mode of the client is exercised against the
same server (timers never fire here, so the test drains the result queue itself).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

bpy = pytest.importorskip("bpy")

import addon_utils  # noqa: E402

from blender_addon import backend_process, client as client_module, wire  # noqa: E402
from blender_addon.animation import Channels, data_path_item  # noqa: E402
from blender_addon.rig import find_avatar  # noqa: E402
from backend.bodies import load_smplx  # noqa: E402
from backend.bodies.faceverse import ARKIT_BLENDSHAPE_NAMES  # noqa: E402
from backend.capture import CameraTrack, FaceVerseTrack, SmplxMotion, Tracking, read_amass, read_tracking, write_tracking  # noqa: E402
from backend.capture.motion import SMPLX_POSE_PARTS  # noqa: E402
from test_addon_panels import draw  # noqa: E402

from blender_support import scene_counts  # noqa: E402

pytestmark = pytest.mark.blender

ADDON = "blender_addon"
Y_UP_TO_Z_UP = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def addon(tmp_path_factory: pytest.TempPathFactory, model_cache_env: Path):
    """The add-on enabled as Blender does it, its backend Python = this interpreter, state in tmp."""
    previous = os.environ.get(backend_process.BACKEND_PYTHON_ENV)
    os.environ[backend_process.BACKEND_PYTHON_ENV] = sys.executable
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable(ADDON, default_set=True, handle_error=None)
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.state_folder = str(tmp_path_factory.mktemp("backend-state"))
    try:
        yield prefs
    finally:
        addon_utils.disable(ADDON, default_set=True, handle_error=None)  # stops the backend
        bpy.ops.wm.read_factory_settings(use_empty=True)
        if previous is None:
            os.environ.pop(backend_process.BACKEND_PYTHON_ENV, None)
        else:
            os.environ[backend_process.BACKEND_PYTHON_ENV] = previous


@pytest.fixture()
def backend(addon):
    """The session's running backend (started through the operator if a test stopped it)."""
    addon.connection, addon.auto_start = "START", True
    session = backend_process.session()
    if not session.connected:
        assert bpy.ops.neural_avatar.backend_start() == {"FINISHED"}
    assert session.connected and session.owned
    return session




def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def smplx_motion(frames: int, seed: int, gender: str, up_axis: str, fps: float = 30.0, expressions: int = 10) -> SmplxMotion:
    """A motion with canonical axis-angles (|angle| < pi), 10 betas and ``expressions`` expression curves."""
    rng = np.random.default_rng(seed)
    return SmplxMotion.from_full_pose(
        rng.uniform(-0.35, 0.35, (frames, 165)).astype(np.float32),
        transl=rng.normal(0.0, 0.3, (frames, 3)).astype(np.float32),
        fps=fps,
        betas=rng.normal(0.0, 1.0, 10).astype(np.float32),
        expression=rng.normal(0.0, 0.5, (frames, expressions)).astype(np.float32),
        gender=gender,
        up_axis=up_axis,
    )


def write_amass_file(path: Path, motion: SmplxMotion) -> Path:
    data = {
        "poses": motion.full_pose(),
        "trans": motion.transl,
        "betas": motion.betas,
        "gender": np.array(motion.gender),
        "mocap_frame_rate": np.array(motion.fps),
    }
    if motion.expression.shape[1]:
        data["expression"] = motion.expression
    np.savez(path, **data)
    return path


def body_model_joints(motion: SmplxMotion, frames: list[int], with_expression: bool = True) -> np.ndarray:
    """(len(frames), 55, 3) joints from the body model's own forward pass (this process, same stand-ins)."""
    model = load_smplx(gender=motion.gender)
    params = {name: torch.from_numpy(getattr(motion, name)[frames]) for name, _ in SMPLX_POSE_PARTS}
    if with_expression and motion.expression.shape[1]:
        params["expression"] = torch.from_numpy(motion.expression[frames])
    with torch.no_grad():
        out = model(
            **params, transl=torch.from_numpy(motion.transl[frames]), betas=torch.from_numpy(motion.betas)[None].expand(len(frames), -1)
        )
    return out.joints.numpy().astype(np.float64)


def blender_joints(armature: bpy.types.Object, frame: int) -> np.ndarray:
    bpy.context.scene.frame_set(frame)
    bpy.context.view_layer.update()
    names = armature["neural_avatar_joint_names"]
    return np.array([armature.matrix_world @ armature.pose.bones[name].head for name in names], np.float64)


def import_file(path: Path, **options) -> bpy.types.Object:
    result = bpy.ops.neural_avatar.import_motion(filepath=str(path), **options)
    assert result == {"FINISHED"}
    return bpy.context.view_layer.objects.active


# ------------------------------------------------------------------ settings


def test_backend_python_comes_from_preference_then_backend_json_then_environment(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    addon_dir = tmp_path / "installed" / "neural_avatar"
    addon_dir.mkdir(parents=True)
    environ = {backend_process.BACKEND_PYTHON_ENV: str(python)}

    chosen = backend_process.resolve_backend_python(str(venv), addon_dir, environ)
    assert (chosen.python, chosen.origin) == (python, "preference")
    assert backend_process.resolve_backend_python(str(python), addon_dir, {}).python == python
    chosen = backend_process.resolve_backend_python("", addon_dir, environ)
    assert (chosen.python, chosen.origin, chosen.project) == (python, backend_process.BACKEND_PYTHON_ENV, None)
    (addon_dir / "backend.json").write_text(json.dumps({"python": str(python), "project": str(tmp_path)}))
    chosen = backend_process.resolve_backend_python("", addon_dir, environ)
    assert (chosen.python, chosen.origin, chosen.project) == (python, "backend.json", tmp_path)

    with pytest.raises(client_module.BackendError, match="not a virtual environment"):
        backend_process.resolve_backend_python(str(tmp_path / "installed"), addon_dir, {})
    with pytest.raises(client_module.BackendError, match="does not exist"):
        backend_process.resolve_backend_python(str(tmp_path / "nope" / "python"), addon_dir, {})
    (addon_dir / "backend.json").write_text("{broken")
    with pytest.raises(client_module.BackendError, match="backend.json: unreadable.*install.py"):
        backend_process.resolve_backend_python("", addon_dir, environ)
    (addon_dir / "backend.json").unlink()
    with pytest.raises(client_module.BackendError, match="no backend Python configured"):
        backend_process.resolve_backend_python("", addon_dir, {})
    # The source tree's add-on knows its project folder.
    assert backend_process.source_project() == Path(backend_process.__file__).resolve().parents[1]


def failing_python(folder: Path) -> backend_process.BackendPython:
    """A "Python" that complains on stderr and exits with code 3."""
    broken = folder / "python"
    broken.write_text("#!/bin/sh\necho 'cannot import torch: no module' >&2\nexit 3\n")
    broken.chmod(0o755)
    return backend_process.BackendPython(broken, None, "test")


def test_start_failure_reports_the_end_of_the_log(addon, tmp_path):
    session = backend_process.BackendSession()
    starting = session.begin_start(failing_python(tmp_path), tmp_path / "state")
    assert starting.wait(30.0)
    with pytest.raises(client_module.BackendError, match=r"exit code 3.*console.log: cannot import torch"):
        starting.result()
    assert not session.connected and "exit code 3" in session.status


def test_an_operator_waiting_on_a_failing_start_reports_why_it_failed(addon, tmp_path):
    session = backend_process.session()
    session.begin_start(failing_python(tmp_path), tmp_path / "state")  # Start pressed
    before = scene_counts()
    with pytest.raises(RuntimeError, match=r"^Error: .*exit code 3.*cannot import torch"):  # then Import, before it ended
        bpy.ops.neural_avatar.import_motion(filepath=str(tmp_path / "take.npz"))
    assert scene_counts() == before and session.starting is None and not session.connected


# ------------------------------------------------------------------ start, import, rig, export


def test_start_operator_runs_a_real_backend_with_its_log(backend):
    process = backend.process
    assert process.alive and backend.info.pid == process.pid
    assert backend.device == "cpu" and backend.status.startswith("running on 127.0.0.1:")
    assert any(line.startswith("smplx") and "[stand-in]" in line for line in backend.server_info["bodies"])
    assert bpy.ops.neural_avatar.backend_show_log() == {"FINISHED"}
    assert "listening on 127.0.0.1" in bpy.data.texts["Neural Avatar backend log"].as_string()
    log = draw(bpy.types.NEURAL_AVATAR_PT_backend, bpy.context)
    assert ("operator", "neural_avatar.backend_stop") in log and ("operator", "neural_avatar.backend_show_log") in log
    assert ("label", "SMPL-X: stand-in") in log and any("Device: cpu" in text for kind, text in log if kind == "label")
    assert ("operator", "neural_avatar.import_motion") in draw(bpy.types.NEURAL_AVATAR_PT_import, bpy.context)


def test_import_amass_through_the_operator_builds_a_correct_rig(backend, tmp_path):
    motion = smplx_motion(frames=16, seed=1, gender="female", up_axis="z", expressions=0)  # AMASS has no face
    path = write_amass_file(tmp_path / "dance_poses.npz", motion)
    armature = import_file(path, ground="none", frame_rate="motion")
    avatar = find_avatar(armature)
    assert avatar.root.name == "dance_poses" and armature.neural_avatar.gender == "female"
    assert armature.neural_avatar.is_standin and armature.neural_avatar.up_axis == "z"

    assert len(armature.data.bones) == 55 and "left_wrist" in armature.data.bones
    channels = Channels.of(armature)
    assert len(channels) == 55 * 4 + 3
    for name in ("pelvis", "jaw", "right_thumb3"):
        curve = channels.find(data_path_item("pose.bones", name, "rotation_quaternion"), 0)
        assert len(curve.keyframe_points) == 16
    keys = avatar.mesh.data.shape_keys
    assert len(keys.key_blocks) == 1 + 10 + 10  # Basis, identity, expressions
    assert len(Channels.of(keys)) == 10
    last_expression = data_path_item("key_blocks", keys.key_blocks[-1].name, "value")
    assert len(Channels.of(keys).find(last_expression).keyframe_points) == 16

    frames = [0, 7, 15]
    expected = body_model_joints(motion, frames)  # Z-up, not grounded: Blender's world is the motion's
    for index, frame in enumerate(frames):
        np.testing.assert_allclose(blender_joints(armature, 1 + frame), expected[index], atol=1e-4)


def test_import_tracking_through_the_operator_and_export_it_back(backend, tmp_path):
    motion = smplx_motion(frames=12, seed=2, gender="male", up_axis="y", fps=25.0)
    intrinsics = np.array([[900.0, 0.0, 250.0], [0.0, 900.0, 260.0], [0.0, 0.0, 1.0]], np.float32)
    world_to_camera = np.repeat(np.eye(4, dtype=np.float32)[None], 12, 0)
    world_to_camera[:, :3, :3] = np.diag([1.0, -1.0, -1.0])  # looking down -Z of the capture world
    world_to_camera[:, 2, 3] = 3.0 + 0.05 * np.arange(12)
    camera = CameraTrack(np.repeat(intrinsics[None], 12, 0), world_to_camera, (512, 500))
    rng = np.random.default_rng(3)
    face = FaceVerseTrack(rng.normal(0, 1, 150), rng.uniform(0, 1, (12, 52)), np.zeros((12, 3)), np.zeros((12, 3)))
    capture = tmp_path / "studio_take"
    write_tracking(capture / "tracking.npz", Tracking(motion, camera=camera, faceverse=face))

    armature = import_file(capture, ground="none", frame_rate="motion", import_camera=True)
    avatar = find_avatar(armature)
    assert avatar.root.name == "studio_take" and avatar.camera is not None
    assert armature.neural_avatar.gender == "male" and bpy.context.scene.render.fps == 25
    bpy.context.scene.frame_set(1 + 4)
    jaw_open = ARKIT_BLENDSHAPE_NAMES.index("jawOpen")
    assert armature["faceverse_jawOpen"] == pytest.approx(face.expression[4, jaw_open], abs=1e-6)
    # SMPL-X regresses its joints from the expression-shaped mesh, so expressions move the eye
    # joints slightly (sub-millimetre here); the rig's skeleton is fixed at the identity, so its
    # joints are the model's with the expression left out - exactly, including the eyes.
    shown = np.stack([blender_joints(armature, 1), blender_joints(armature, 12)])
    without = body_model_joints(motion, [0, 11], with_expression=False) @ Y_UP_TO_Z_UP.T
    np.testing.assert_allclose(shown, without, atol=1e-4)
    with_face = body_model_joints(motion, [0, 11]) @ Y_UP_TO_Z_UP.T
    eyes = [23, 24]
    body = [j for j in range(55) if j not in eyes]
    np.testing.assert_allclose(shown[:, body], with_face[:, body], atol=1e-4)
    assert np.abs(shown[:, eyes] - with_face[:, eyes]).max() < 2e-3

    out = tmp_path / "exported" / "take.npz"
    bpy.context.view_layer.objects.active = armature
    assert bpy.ops.neural_avatar.export_motion(filepath=str(out), file_format="tracking") == {"FINISHED"}
    again = read_tracking(out)
    assert (again.motion.fps, again.motion.gender, again.motion.up_axis) == (25.0, "male", "y")
    for name, _ in SMPLX_POSE_PARTS:
        np.testing.assert_allclose(getattr(again.motion, name), getattr(motion, name), atol=2e-6, err_msg=name)
    np.testing.assert_allclose(again.motion.transl, motion.transl, atol=1e-6)
    np.testing.assert_array_equal(again.motion.betas, motion.betas)
    np.testing.assert_allclose(again.motion.expression, motion.expression, atol=1e-6)
    np.testing.assert_allclose(again.camera.K, camera.K, rtol=1e-5)
    np.testing.assert_allclose(again.camera.world_to_camera, camera.world_to_camera, atol=1e-5)
    assert again.camera.image_size == (512, 500)
    assert again.faceverse is None  # reported as left out: the head pose is not kept in Blender


def test_export_amass_round_trip_and_refusals(backend, tmp_path):
    motion = smplx_motion(frames=10, seed=4, gender="neutral", up_axis="z", fps=60.0)
    armature = import_file(write_amass_file(tmp_path / "jump.npz", motion), frame_rate="motion")
    out = tmp_path / "jump_out.npz"
    assert bpy.ops.neural_avatar.export_motion(filepath=str(out), file_format="amass") == {"FINISHED"}
    again = read_amass(out)
    np.testing.assert_allclose(again.full_pose(), motion.full_pose(), atol=2e-6)
    np.testing.assert_allclose(again.transl, motion.transl, atol=1e-6)
    np.testing.assert_allclose(again.expression, motion.expression, atol=1e-6)
    np.testing.assert_array_equal(again.betas, motion.betas)
    assert (again.fps, again.gender, again.up_axis) == (60.0, "neutral", "z")

    folder = tmp_path / "a-folder.npz"
    folder.mkdir()
    bpy.context.view_layer.objects.active = armature
    with pytest.raises(RuntimeError, match="is a folder"):
        bpy.ops.neural_avatar.export_motion(filepath=str(folder), file_format="tracking")
    assert folder.is_dir()


# ------------------------------------------------------------------ failures leave the scene unchanged


def test_malformed_file_gives_a_clear_report_and_no_changes(backend, tmp_path):
    bad = tmp_path / "broken.npz"
    np.savez(bad, poses=np.zeros((5, 100)), trans=np.zeros((5, 3)), mocap_frame_rate=np.array(30.0))
    before = scene_counts()
    with pytest.raises(RuntimeError, match=re.escape(f"{bad}: 'poses' has width 100")):
        bpy.ops.neural_avatar.import_motion(filepath=str(bad))
    missing = tmp_path / "missing.npz"
    with pytest.raises(RuntimeError, match=re.escape(f"{missing}: file not found")):
        bpy.ops.neural_avatar.import_motion(filepath=str(missing))
    assert scene_counts() == before
    assert backend.connected  # request errors do not break the connection


def test_stopped_backend_gives_a_clear_report_then_auto_start_brings_it_back(addon, backend, tmp_path):
    path = write_amass_file(tmp_path / "walk.npz", smplx_motion(frames=6, seed=5, gender="neutral", up_axis="z"))
    pid = backend.process.pid
    assert bpy.ops.neural_avatar.backend_stop() == {"FINISHED"}
    assert not pid_alive(pid) and not backend.connected
    assert not (Path(addon.state_folder) / "connection.json").exists()

    addon.auto_start = False
    before = scene_counts()
    with pytest.raises(RuntimeError, match="backend not running — start it in the Avatar panel"):
        bpy.ops.neural_avatar.import_motion(filepath=str(path))
    assert scene_counts() == before

    addon.auto_start = True  # the import starts the backend itself
    import_file(path)
    assert backend.connected and backend.process.pid != pid


def test_backend_killed_mid_request_gives_a_clear_report_and_no_changes(backend, tmp_path):
    path = write_amass_file(tmp_path / "run.npz", smplx_motion(frames=6, seed=6, gender="neutral", up_axis="z"))
    process = backend.process
    client = backend.client

    def kill_during_motion_read() -> None:
        deadline = time.monotonic() + 30.0
        while client.current_request != "motion_read" and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)  # the request is on the wire; the frozen server cannot answer it
        os.kill(process.pid, signal.SIGKILL)

    before = scene_counts()
    os.kill(process.pid, signal.SIGSTOP)  # frozen: the request is certainly in flight when it dies
    killer = threading.Thread(target=kill_during_motion_read)
    killer.start()
    try:
        with pytest.raises(RuntimeError, match=r"backend stopped while reading the motion file \(exit code -9"):
            bpy.ops.neural_avatar.import_motion(filepath=str(path))
    finally:
        killer.join()
    assert scene_counts() == before
    assert not backend.connected and "exit code -9" in backend.status


def test_connect_to_a_running_server_by_file_and_by_address_and_take_one_over(addon, tmp_path, shared_cache_server):
    backend_process.session().stop()
    server = shared_cache_server  # started elsewhere: Blender only attaches to it
    try:
        addon.connection, addon.connection_file = "FILE", str(server.connection_file)
        assert bpy.ops.neural_avatar.backend_connect() == {"FINISHED"}
        session = backend_process.session()
        assert session.connected and not session.owned and session.status.startswith("connected to")
        path = write_amass_file(tmp_path / "skip.npz", smplx_motion(frames=4, seed=7, gender="neutral", up_axis="z"))
        import_file(path)
        assert bpy.ops.neural_avatar.backend_stop() == {"FINISHED"}
        assert server.alive()  # disconnecting leaves it running

        info = server.info()
        addon.connection, addon.host, addon.port, addon.token = "ADDRESS", info.host, info.port, "wrong-token"
        with pytest.raises(RuntimeError, match="the backend refused the connection: wrong token"):
            bpy.ops.neural_avatar.backend_connect()
        assert not session.connected
        addon.token = info.token
        assert bpy.ops.neural_avatar.backend_connect() == {"FINISHED"}
        assert session.server_info["pid"] == server.process.pid
        session.stop()
        addon.connection_file = str(tmp_path / "nowhere.json")
        addon.connection = "FILE"
        with pytest.raises(RuntimeError, match="backend not running"):
            bpy.ops.neural_avatar.backend_connect()
        assert server.alive()

        # Starting with a state folder a live server already serves takes that server over
        # (e.g. one left behind by a crashed Blender) instead of failing; stopping shuts it down.
        adopter = backend_process.BackendSession()
        python = backend_process.BackendPython(Path(sys.executable), None, "test")
        assert adopter.begin_start(python, server.state_dir).done
        assert adopter.connected and adopter.owned and adopter.process is None
        assert adopter.info.pid == server.process.pid and adopter.server_info["pid"] == server.process.pid
        adopter.stop()
        assert server.process.wait(15) == 0 and not server.connection_file.exists()
    finally:
        backend_process.session().stop()
        addon.connection = "START"


# ------------------------------------------------------------------ the worker-thread mode


def test_worker_thread_client_delivers_in_order_and_latest_wins(backend):
    results: list[tuple[str, object]] = []
    worker = client_module.BackendClient(backend.info, background=False, client_name="pytest-worker")
    try:
        slow = worker.submit("ping", {"width": 1024, "height": 1024, "dtype": "float32"}, on_done=lambda t: results.append(("slow", t)))
        first = worker.submit_latest("ping", {"width": 8, "height": 8}, on_done=lambda t: results.append(("first", t)))
        second = worker.submit_latest("ping", {"width": 16, "height": 16}, on_done=lambda t: results.append(("second", t)))
        failing = worker.submit("motion_read", {"path": "relative.npz"}, on_done=lambda t: results.append(("bad", t)))
        deadline = time.monotonic() + 30.0
        while not failing.done and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not results  # callbacks run only when the main thread drains
        while worker.drain() is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        if first.cancelled:  # queued behind the slow one, so replaced before it started
            assert [name for name, _ in results] == ["slow", "second", "bad"]
            with pytest.raises(client_module.BackendError, match="superseded"):
                first.result()
        else:  # the worker had already taken it: nothing to replace, all delivered in order
            assert [name for name, _ in results] == ["slow", "first", "second", "bad"]
        assert slow.result().arrays["image"].shape == (1024, 1024, 4)
        assert second.result().arrays["image"].shape == (16, 16, 4)
        with pytest.raises(client_module.BackendError, match="absolute path") as error:
            failing.result()
        assert error.value.code == "bad_request"
    finally:
        worker.close()
    assert worker.closed and worker.submit("ping").done  # refused at once after close
    with pytest.raises(client_module.BackendError):
        worker.submit("ping").result()


def test_request_queue_replaces_only_queued_latest_requests_of_the_same_kind():
    queue = client_module.RequestQueue()
    ticket = lambda kind, latest: client_module.Ticket(kind, {}, None, 1.0, latest=latest)  # noqa: E731
    render_1, job, render_2, status = ticket("render", True), ticket("job_status", False), ticket("render", True), ticket("render", False)
    for item in (render_1, job, render_2, status):
        queue.put(item)
    assert render_1.cancelled and render_1.done and not render_2.done
    assert [queue.get() for _ in range(3)] == [job, render_2, status]  # order kept, plain requests never replaced
    render_3 = ticket("render", True)
    queue.put(render_3)
    assert queue.close() == [render_3] and queue.get() is None
    with pytest.raises(client_module.BackendError, match="closed"):
        queue.put(ticket("render", True))


def test_a_frozen_backend_times_out_instead_of_hanging(backend, monkeypatch):
    monkeypatch.setattr(client_module, "CONNECT_TIMEOUT", 0.5)
    frozen = client_module.BackendClient(backend.info, background=True)
    try:
        assert frozen.call("ping").result["echoed"] == []
        os.kill(backend.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(client_module.BackendError, match=r"did not answer within 0.5 s while answering 'ping'"):
                frozen.call("ping", timeout=0.5)
            assert frozen.lost
            with pytest.raises(client_module.BackendError, match="accepted the connection but did not answer within 0.5 s"):
                frozen.call("ping")  # reconnecting: the kernel accepts, the frozen server never says hello
        finally:
            os.kill(backend.process.pid, signal.SIGCONT)
        assert frozen.call("ping").result["echoed"] == [] and not frozen.lost  # reconnects once it answers
    finally:
        frozen.close()
    assert backend.connected


def test_unreachable_server_fails_fast_with_a_clear_message():
    info = wire.ConnectionInfo("127.0.0.1", 9, "token", pid=0)  # the discard port: nothing listens
    quick = client_module.BackendClient(info, background=True)
    started = time.monotonic()
    with pytest.raises(client_module.BackendError, match="backend not running — start it in the Avatar panel"):
        quick.call("ping")
    assert time.monotonic() - started < client_module.CONNECT_TIMEOUT
    quick.close()


# ------------------------------------------------------------------ registration


def test_unregister_twice_with_the_backend_running_leaves_no_process(addon):
    state_folder = addon.state_folder  # the preferences are rebuilt on every enable
    pids = []
    for _ in range(2):
        addon_utils.disable(ADDON, default_set=True, handle_error=None)
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
        prefs = bpy.context.preferences.addons[ADDON].preferences
        prefs.state_folder, prefs.connection, prefs.auto_start = state_folder, "START", True
        if not backend_process.session().connected:
            assert bpy.ops.neural_avatar.backend_start() == {"FINISHED"}
        pids.append(backend_process.session().process.pid)
        assert pid_alive(pids[-1])
        addon_utils.disable(ADDON, default_set=True, handle_error=None)
        assert not pid_alive(pids[-1])
        assert not (Path(state_folder) / "connection.json").exists()
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
        prefs = bpy.context.preferences.addons[ADDON].preferences
        prefs.state_folder = state_folder
    assert len(set(pids)) == 2
