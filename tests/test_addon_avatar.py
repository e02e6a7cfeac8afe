"""Trained avatars in Blender against a REAL backend subprocess (bpy module, headless).

One tiny avatar trained once per session (``tiny_trained_avatar``) drives the rig imported from
the capture it was trained on. Render Frame, the camera conversion seen in the pixels, the
"Neural Avatar" render engine (F12 and -a), baking, the batch script, training with cancel, live
mode through the worker-thread client, failures (missing server, server killed mid-request) and
registering twice with live mode on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

import addon_utils  # noqa: E402
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Euler  # noqa: E402

from blender_addon import avatar_render, backend_process, job_monitor, live as live_module  # noqa: E402
from blender_addon.client import BackendClient  # noqa: E402
from blender_addon.live import live  # noqa: E402
from test_addon_backend import ADDON, addon, backend, scene_counts  # noqa: E402,F401 - fixtures shared with that module

pytestmark = pytest.mark.blender

REPOSITORY = Path(__file__).resolve().parents[1]
BATCH_SCRIPT = REPOSITORY / "blender_addon" / "batch_bake.py"


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def bound(addon, tiny_sample_capture: Path, tiny_trained_avatar: Path):
    """The capture imported as a rig (its camera active), bound to the tiny trained avatar."""
    addon.connection, addon.auto_start = "START", True
    assert bpy.ops.neural_avatar.import_motion(filepath=str(tiny_sample_capture), ground="none", frame_rate="motion") == {"FINISHED"}
    armature = bpy.context.view_layer.objects.active
    assert bpy.ops.neural_avatar.load_avatar(directory=str(tiny_trained_avatar)) == {"FINISHED"}
    scene = bpy.context.scene
    scene.render.resolution_percentage = 100
    return SimpleNamespace(armature=armature, avatar=tiny_trained_avatar, capture=tiny_sample_capture, camera=scene.camera)


def image_top_first(image: bpy.types.Image) -> np.ndarray:
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, 4)[::-1]


def projected_joint(armature: bpy.types.Object, joint: int, width: int, height: int) -> tuple[float, float]:
    """Blender's own projection of a posed joint through the scene camera, as (column, row) pixels."""
    scene = bpy.context.scene
    bpy.context.view_layer.update()
    name = armature["neural_avatar_joint_names"][joint]
    ndc = world_to_camera_view(scene, scene.camera, armature.matrix_world @ armature.pose.bones[name].head)
    return ndc.x * width - 0.5, (1.0 - ndc.y) * height - 0.5


def render_frame(size: int) -> np.ndarray:
    bpy.context.scene.neural_avatar.preview_size = size
    assert bpy.ops.neural_avatar.render_frame() == {"FINISHED"}
    return image_top_first(bpy.data.images[avatar_render.IMAGE_NAME])


def corners_empty(alpha: np.ndarray) -> bool:
    """Nothing in the image corners (their outermost 2 pixels keep a faint padding artefact after
    the tiny avatar's 60 training steps, so they are left out)."""
    return bool(alpha[2:10, 2:10].max() < 0.03 and alpha[-10:-2, -10:-2].max() < 0.03)


def alpha_centroid(alpha: np.ndarray) -> tuple[float, float]:
    rows, columns = np.indices(alpha.shape)
    return float((columns * alpha).sum() / alpha.sum()), float((rows * alpha).sum() / alpha.sum())


# ------------------------------------------------------------------ render frame and the camera


def test_render_frame_writes_the_avatars_pixels_where_blender_projects_the_body(backend, bound):
    scene = bpy.context.scene
    scene.frame_set(1)
    pixels = render_frame(128)
    assert pixels.shape == (128, 128, 4)
    column, row = projected_joint(bound.armature, 0, 128, 128)  # the pelvis
    alpha = pixels[..., 3]
    assert alpha[round(row), round(column)] > 0.5
    assert corners_empty(alpha)
    assert np.all(pixels[..., :3] <= alpha[..., None] + 1e-6)  # premultiplied
    assert any(slot.image.name == avatar_render.IMAGE_NAME for slot in bound.camera.data.background_images)
    assert bound.armature.neural_avatar.avatar_summary.startswith("ANR, 60 steps")

    # Another camera view (shifted lens, rotated about its axis): the avatar moves where Blender says.
    camera_data = bound.camera.data
    saved = (camera_data.shift_x, tuple(bound.camera.rotation_quaternion))
    try:
        camera_data.shift_x = 0.22
        bound.camera.rotation_quaternion = bound.camera.rotation_quaternion @ Euler((0.0, 0.0, 0.35)).to_quaternion()
        moved = render_frame(128)[..., 3]
        column, row = projected_joint(bound.armature, 0, 128, 128)
        assert column < 50  # the shift pushed the body into the left part of the image
        assert moved[round(row), round(column)] > 0.5
        centre_x, _ = alpha_centroid(moved)
        assert abs(centre_x - column) < 8
        assert moved[2:-2, 80:-2].max() < 0.05  # the right part is empty (inside the border artefact)
    finally:
        camera_data.shift_x, bound.camera.rotation_quaternion = saved[0], saved[1]


def test_render_engine_renders_stills_and_animations_through_blenders_pipeline(backend, bound, tmp_path):
    scene = bpy.context.scene
    render = scene.render
    previous_engine = render.engine
    render.engine = "NEURAL_AVATAR"
    render.film_transparent = True
    render.dither_intensity = 0.0
    render.image_settings.file_format = "PNG"
    render.image_settings.color_mode = "RGBA"
    scene.view_settings.view_transform = "Standard"
    scene.frame_set(2)
    width, height = avatar_render.output_size(render)
    render.filepath = str(tmp_path / "still.png")
    assert bpy.ops.render.render(write_still=True) == {"FINISHED"}
    still = np.asarray(Image.open(tmp_path / "still.png")).astype(np.float32) / 255.0
    assert still.shape == (height, width, 4)
    column, row = projected_joint(bound.armature, 0, width, height)
    assert still[round(row), round(column), 3] > 0.5 and corners_empty(still[..., 3])

    # The same frame through Render Frame: the engine's colour handling gives the avatar's own colours back.
    reference = render_frame(0)
    covered = reference[..., 3] > 0.5
    assert covered.sum() > 20
    np.testing.assert_allclose(still[..., 3], reference[..., 3], atol=1.5 / 255)
    engine_premultiplied = still[..., :3] * still[..., 3:]
    assert np.abs(engine_premultiplied[covered] - reference[..., :3][covered]).max() < 4 / 255

    render.filepath = str(tmp_path / "anim_####")
    scene.frame_start, scene.frame_end = 3, 4
    assert bpy.ops.render.render(animation=True) == {"FINISHED"}
    frames = [np.asarray(Image.open(tmp_path / f"anim_{frame:04d}.png")) for frame in (3, 4)]
    assert all(frame.shape == (height, width, 4) and frame[..., 3].max() > 128 for frame in frames)
    assert not np.array_equal(frames[0], frames[1])  # the pose changed between the frames
    render.engine = previous_engine


# ------------------------------------------------------------------ jobs: bake, batch script, training


def test_bake_writes_the_frame_range_as_pngs_and_an_mp4(backend, bound, tmp_path):
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 3, 5
    out = tmp_path / "baked"
    bpy.context.view_layer.objects.active = bound.armature
    assert bpy.ops.neural_avatar.bake(directory=str(out), mp4=True) == {"FINISHED"}
    assert sorted(path.name for path in out.iterdir()) == ["frame_000003.png", "frame_000004.png", "frame_000005.png", "render.mp4"]
    assert job_monitor.baking.status == job_monitor.DONE and job_monitor.baking.fraction == 1.0
    width, height = avatar_render.output_size(scene.render)
    scene.frame_set(4)
    column, row = projected_joint(bound.armature, 0, width, height)
    frame = np.asarray(Image.open(out / "frame_000004.png"))
    assert frame.shape == (height, width, 4) and frame[round(row), round(column), 3] > 128 and corners_empty(frame[..., 3] / 255.0)
    assert (out / "render.mp4").stat().st_size > 0


def test_batch_script_bakes_the_bound_armatures_of_a_blend_file(backend, bound, tmp_path):
    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), copy=True)
    out = tmp_path / "batch"
    code = (
        "import runpy, sys, bpy; "
        f"bpy.ops.wm.open_mainfile(filepath={str(blend)!r}); "
        f"sys.argv = ['blender', '--', '--out', {str(out)!r}, '--frames', '2:3', '--connection', {str(backend.process.connection_file)!r}]; "
        f"runpy.run_path({str(BATCH_SCRIPT)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(path.name for path in out.iterdir()) == ["frame_000002.png", "frame_000003.png"]
    assert "batch_bake: baked 1 avatar" in done.stdout and "Bake " in done.stdout  # progress lines were printed

    failing = subprocess.run(
        [sys.executable, "-c", code.replace("'--frames', '2:3'", "'--frames', '3:2'")], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert failing.returncode != 0 and "--frames: 3:2 is empty" in failing.stderr


def test_train_shows_progress_and_preview_and_cancel_stops_it(backend, bound, tmp_path):
    out = tmp_path / "new-avatar"
    result = bpy.ops.neural_avatar.train(capture=str(bound.capture), output=str(out), iterations=100000, resolution=64)
    assert result == {"FINISHED"}
    monitor = job_monitor.training
    assert monitor.running and monitor.job_id.startswith("train-")
    assert not bpy.ops.neural_avatar.train.poll()  # one training job at a time

    # What the panel's timer does interactively: job_status with the preview, at most twice a second.
    worker = BackendClient(backend.info, background=False, client_name="pytest-monitor")
    try:
        monitor.follow(worker, monitor.state)
        assert bpy.app.timers.is_registered(monitor._poll_timer)
        deadline = time.monotonic() + 90.0
        while monitor.preview_image is None and time.monotonic() < deadline:
            assert monitor._poll() == job_monitor.POLL_SECONDS
            time.sleep(job_monitor.POLL_SECONDS)
            worker.drain()
        assert monitor.preview_image is not None, monitor.state
        assert monitor.state["total"] == 100000 and monitor.state["losses"] and monitor.progress_text().startswith(f"{monitor.state['step']}/100000")
        assert min(monitor.preview_image.size) > 0
    finally:
        worker.close()
    assert bpy.ops.neural_avatar.cancel_job(job="TRAIN") == {"FINISHED"}
    assert monitor.status == job_monitor.CANCELLED and not monitor.running
    assert monitor._poll() is None  # a finished job: the timer ends itself
    monitor.stop()
    assert not bpy.app.timers.is_registered(monitor._poll_timer)
    with pytest.raises(RuntimeError, match="the capture folder does not exist"):
        bpy.ops.neural_avatar.train(capture=str(tmp_path / "nowhere"), output=str(out))


# ------------------------------------------------------------------ live mode


def wait_and_drain(client: BackendClient, tickets, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(ticket is None or ticket.done for ticket in tickets) and time.monotonic() < deadline:
        time.sleep(0.01)
    while client.drain() is not None and time.monotonic() < deadline:  # what the drain timer does interactively
        time.sleep(0.01)


def test_live_mode_renders_on_frame_changes_and_pose_edits_through_the_worker(backend, bound):
    worker = BackendClient(backend.info, background=False, client_name="pytest-live")  # the interactive client
    scene = bpy.context.scene
    scene.neural_avatar.live_size = 64
    try:
        live.enable(client=worker)
        assert live_module.installed() == {"frame_change_post": 1, "depsgraph_update_post": 1, "timer": 1}
        scene.frame_set(2)
        assert live.dirty
        tickets = live.submit(bpy.context)
        assert not live.dirty and len(tickets) == 1
        wait_and_drain(worker, tickets)
        assert live.stats.frames == 1 and live.stats.latency_ms > 0 and live.stats.backend_ms > 0, live.stats
        first = image_top_first(bpy.data.images[avatar_render.IMAGE_NAME]).copy()
        assert first.shape == (64, 64, 4) and first[..., 3].max() > 0.5

        unrelated = bpy.data.objects.new("prop", None)
        scene.collection.objects.link(unrelated)  # relinking updates every object once
        bpy.context.view_layer.update()
        live.submit(bpy.context)  # nothing changed since: the next update must come from an edit
        unrelated.location.x = 2.0
        bpy.context.view_layer.update()
        assert not live.dirty  # other objects do not trigger renders
        elbow = bound.armature.pose.bones[bound.armature["neural_avatar_joint_names"][18]]
        elbow.rotation_quaternion = Euler((0.0, 0.0, 1.2)).to_quaternion()
        bpy.context.view_layer.update()
        assert live.dirty  # a pose edit does
        tickets = live.submit(bpy.context)
        wait_and_drain(worker, tickets)
        edited = image_top_first(bpy.data.images[avatar_render.IMAGE_NAME])
        assert live.stats.frames >= 2 and not np.array_equal(edited, first)

        # Latest wins: frames submitted faster than rendered replace each other instead of queueing.
        burst = [live.submit(bpy.context)[0] for _ in range(5)]
        wait_and_drain(worker, burst)
        assert any(ticket.cancelled for ticket in burst[1:-1]) and not burst[-1].cancelled
    finally:
        live.disable()
        worker.close()
        bpy.data.objects.remove(bpy.data.objects["prop"])
        bpy.context.scene.frame_set(1)
    assert live_module.installed() == {"frame_change_post": 0, "depsgraph_update_post": 0, "timer": 0}


# ------------------------------------------------------------------ failures


def test_missing_server_and_server_dying_mid_render_leave_the_scene_unchanged(addon, backend, bound):
    render_frame(64)
    image = bpy.data.images[avatar_render.IMAGE_NAME]
    before_pixels = image_top_first(image).copy()
    before = scene_counts() | {"images": len(bpy.data.images), "binding": bound.armature.neural_avatar.avatar_path}

    def unchanged() -> None:
        after = scene_counts() | {"images": len(bpy.data.images), "binding": bound.armature.neural_avatar.avatar_path}
        assert after == before
        np.testing.assert_array_equal(image_top_first(image), before_pixels)

    process, client = backend.process, backend.client
    bpy.context.scene.frame_set(3)  # a different pose: a render that got through would change the image
    bpy.context.scene.neural_avatar.preview_size = 768  # seconds of rendering: the kill lands mid-render

    def kill_during_render() -> None:
        deadline = time.monotonic() + 30.0
        while client.current_request != "render" and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_during_render)
    killer.start()
    try:
        with pytest.raises(RuntimeError, match=r"backend stopped while rendering the avatar \(exit code -9"):
            bpy.ops.neural_avatar.render_frame()
    finally:
        killer.join()
    unchanged()

    addon.auto_start = False
    try:
        with pytest.raises(RuntimeError, match=r"backend stopped \(exit code -9\) — start it in the Avatar panel"):
            bpy.ops.neural_avatar.render_frame()
        assert bpy.ops.neural_avatar.backend_stop() == {"FINISHED"}
        with pytest.raises(RuntimeError, match="backend not running — start it in the Avatar panel"):
            bpy.ops.neural_avatar.render_frame()
        unchanged()
    finally:
        addon.auto_start = True
        bpy.context.scene.neural_avatar.preview_size = 64
    # A new server knows nothing of the old one's avatars: Render Frame loads the avatar again by itself.
    pixels = render_frame(64)
    assert backend_process.session().connected and pixels[..., 3].max() > 0.5


# ------------------------------------------------------------------ registration (last: it stops the backend)


def test_register_unregister_twice_with_live_mode_on_leaves_no_handlers_or_timers(addon, backend):
    state_folder = addon.state_folder
    for _ in range(2):
        worker = BackendClient(backend_process.session().info, background=False, client_name="pytest-register")
        try:
            live.enable(client=worker)
            job_monitor.training.follow(worker, {"id": "train-not-real", "status": "running"})
            worker.submit("ping")  # the client's drain timer is registered
            assert bpy.app.timers.is_registered(worker._drain_timer)
            assert live_module.installed()["timer"] == 1 and bpy.app.timers.is_registered(job_monitor.training._poll_timer)
            addon_utils.disable(ADDON, default_set=True, handle_error=None)
            assert live_module.installed() == {"frame_change_post": 0, "depsgraph_update_post": 0, "timer": 0}
            assert not bpy.app.timers.is_registered(job_monitor.training._poll_timer) and not live.enabled
            assert not hasattr(bpy.types.Scene, "neural_avatar") and "NEURAL_AVATAR" not in bpy.types.RENDER_PT_color_management.COMPAT_ENGINES
        finally:
            worker.close()
        assert not bpy.app.timers.is_registered(worker._drain_timer)
        addon_utils.enable(ADDON, default_set=True, handle_error=None)
        prefs = bpy.context.preferences.addons[ADDON].preferences
        prefs.state_folder, prefs.connection, prefs.auto_start = state_folder, "START", True
        assert bpy.ops.neural_avatar.backend_start() == {"FINISHED"}
