"""The capture camera in Blender projects points exactly where the OpenCV camera does."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Vector  # noqa: E402

import blender_addon  # noqa: E402
from blender_addon.bench_import import synthetic_motion, synthetic_template  # noqa: E402
from blender_addon.importing import ImportOptions, export_motion, import_motion  # noqa: E402
from blender_addon.rig import find_avatar  # noqa: E402

from blender_support import registered_addon  # noqa: E402,F401 - module fixture

pytestmark = pytest.mark.blender

HEIGHT, WIDTH = 720, 540
FRAMES = 12




@pytest.fixture(scope="module")
def template():
    return synthetic_template(vertices=300, faces=400, shapes=1, expressions=1, parents=(-1, 0, 1), seed=3)


def look_at(eye, target) -> np.ndarray:
    """OpenCV world-to-camera (x right, y down, z forward) for a Y-up world."""
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    rotation = np.stack([right, np.cross(forward, right), forward])
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, -rotation @ eye
    return out


def opencv_project(intrinsics, world_to_camera, points):
    camera = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    pixels = camera @ intrinsics.T
    return pixels[:, :2] / pixels[:, 2:]


def blender_project(scene, camera, root, points):
    out = []
    for point in points:
        ndc = world_to_camera_view(scene, camera, root.matrix_world @ Vector(point))
        out.append([ndc.x * WIDTH - 0.5, (1.0 - ndc.y) * HEIGHT - 0.5])  # OpenCV pixel centres
    return np.array(out)


def motion_with_camera(intrinsics, world_to_camera):
    motion = synthetic_motion(3, 1, FRAMES, fps=25.0, seed=4)
    motion.update(camera_K=intrinsics, camera_world_to_camera=world_to_camera, image_size=np.array([HEIGHT, WIDTH]))
    return motion


def test_static_camera_projection_matches_opencv(template):
    intrinsics = np.array([[900.0, 0.0, 250.3], [0.0, 960.0, 371.8], [0.0, 0.0, 1.0]])  # non-square pixels
    world_to_camera = look_at(np.array([0.4, 0.3, 2.5]), [0.0, 0.1, 0.0])
    arrays, names = template
    armature = import_motion(
        bpy.context, arrays, names, motion_with_camera(intrinsics, world_to_camera), ImportOptions(name="Static")
    )
    avatar = find_avatar(armature)
    scene = bpy.context.scene
    assert scene.camera == avatar.camera and avatar.camera.parent == avatar.root
    assert (scene.render.resolution_x, scene.render.resolution_y) == (WIDTH, HEIGHT)
    assert avatar.root.matrix_world[2][3] != 0.0  # grounded: the camera must follow the root
    points = np.random.default_rng(5).uniform(-0.4, 0.4, (20, 3))
    np.testing.assert_allclose(
        blender_project(scene, avatar.camera, avatar.root, points),
        opencv_project(intrinsics, world_to_camera, points),
        atol=2e-3,
    )
    exported = export_motion(armature)
    np.testing.assert_allclose(exported["camera_K"], intrinsics, rtol=1e-5)
    np.testing.assert_allclose(exported["camera_world_to_camera"], world_to_camera, atol=1e-5)
    np.testing.assert_array_equal(exported["image_size"], [HEIGHT, WIDTH])


def test_animated_camera_projection_matches_opencv_every_frame(template):
    rng = np.random.default_rng(6)
    intrinsics = np.tile(np.array([[800.0, 0.0, 270.0], [0.0, 800.0, 360.0], [0.0, 0.0, 1.0]]), (FRAMES, 1, 1))
    intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = np.linspace(700.0, 1100.0, FRAMES)  # zoom
    intrinsics[:, 0, 2] += rng.uniform(-20, 20, FRAMES)
    angles = np.linspace(0.0, 2.5, FRAMES)  # orbit more than 90 degrees around the body
    eyes = np.stack([2.0 * np.sin(angles), np.full(FRAMES, 0.4), 2.0 * np.cos(angles)], axis=1)
    world_to_camera = np.stack([look_at(eye, [0.0, 0.0, 0.0]) for eye in eyes])
    arrays, names = template
    armature = import_motion(
        bpy.context, arrays, names, motion_with_camera(intrinsics, world_to_camera), ImportOptions(name="Orbit")
    )
    avatar = find_avatar(armature)
    scene = bpy.context.scene
    points = rng.uniform(-0.3, 0.3, (8, 3))
    for frame in (0, 5, FRAMES - 1):
        scene.frame_set(avatar.armature.neural_avatar.frame_start + frame)
        np.testing.assert_allclose(
            blender_project(scene, avatar.camera, avatar.root, points),
            opencv_project(intrinsics[frame], world_to_camera[frame], points),
            atol=2e-3,
            err_msg=f"frame {frame}",
        )
    exported = export_motion(armature)
    np.testing.assert_allclose(exported["camera_K"], intrinsics, rtol=1e-5)
    np.testing.assert_allclose(exported["camera_world_to_camera"], world_to_camera, atol=1e-5)
