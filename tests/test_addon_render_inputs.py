"""What the add-on sends to render an avatar, checked without a backend: the pose read back from
the rig (keyed, edited, constrained), any Blender camera in the rig's body-model frame against
Blender's own projection, the bake's per-frame arrays, compositing and the engine's colours."""

from __future__ import annotations

import math

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Euler, Matrix, Vector  # noqa: E402

import blender_addon  # noqa: E402
from blender_addon import engine, motion_math  # noqa: E402
from blender_addon.avatar_render import composite, frame_inputs, output_size, preview_size, sequence_arrays  # noqa: E402
from blender_addon.client import BackendError  # noqa: E402
from blender_addon.bench_import import SMPLX_PARENTS, synthetic_motion, synthetic_template  # noqa: E402
from blender_addon.importing import ImportOptions, import_motion  # noqa: E402
from blender_addon.motion_data import POSE_LAYOUTS  # noqa: E402
from blender_addon.pose_reading import RigError, rig_pose  # noqa: E402
from blender_addon.rig import find_avatar  # noqa: E402

from blender_support import registered_addon  # noqa: E402,F401 - module fixture

pytestmark = pytest.mark.blender

FRAMES = 6
EXPRESSIONS = 4




@pytest.fixture(scope="module")
def motion() -> dict:
    return synthetic_motion(len(SMPLX_PARENTS), EXPRESSIONS, FRAMES, fps=25.0, seed=7)


@pytest.fixture(scope="module")
def armature(motion):
    """A 55-joint SMPL-X-shaped rig (synthetic mesh), Y-up motion under its Z-up root."""
    template, names = synthetic_template(vertices=600, faces=800, shapes=2, expressions=EXPRESSIONS, seed=5)
    rig = import_motion(bpy.context, template, names, motion, ImportOptions(name="Reader", frame_rate="motion", ground="first_frame"))
    rig.neural_avatar.avatar_path = "/avatars/never-loaded-here"  # bound: no backend is asked in this module
    return rig


def params_at(motion: dict, frame: int) -> dict[str, np.ndarray]:
    full = np.asarray(motion["full_pose"][frame], np.float64).reshape(-1, 3)
    out, joint = {}, 0
    for key, width in POSE_LAYOUTS["smplx"]:
        out[key] = full[joint : joint + width].reshape(-1)
        joint += width
    out["transl"] = np.asarray(motion["transl"][frame], np.float64)
    out["expression"] = np.asarray(motion["expression"][frame], np.float64)
    return out


def add_camera(name: str = "Shot") -> bpy.types.Object:
    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    bpy.context.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return camera


def test_pose_read_back_equals_the_keyed_parameters(armature, motion):
    for frame in (0, 3, FRAMES - 1):
        bpy.context.scene.frame_set(1 + frame)
        pose = rig_pose(armature, bpy.context.evaluated_depsgraph_get())
        expected = params_at(motion, frame)
        assert set(pose.params) == set(expected)
        for key, value in expected.items():
            assert pose.params[key].shape == (1, value.size) and pose.params[key].dtype == np.float32
            np.testing.assert_allclose(pose.params[key][0], value, atol=2e-5, err_msg=f"{key} at frame {frame}")
    np.testing.assert_allclose(pose.body_to_world, np.array(armature.matrix_world), atol=1e-6)


def test_an_edited_pose_and_a_constraint_are_what_is_read(armature, motion):
    scene = bpy.context.scene
    scene.frame_set(1)
    bone = armature.pose.bones[armature["neural_avatar_joint_names"][18]]  # joint 18 (an elbow in SMPL-X's order)
    child = armature.pose.bones[armature["neural_avatar_joint_names"][20]]
    saved = tuple(bone.rotation_quaternion)
    try:
        bone.rotation_quaternion = Euler((0.3, -0.2, 0.5)).to_quaternion()  # an animator's edit, not keyed
        pose = rig_pose(armature, bpy.context.evaluated_depsgraph_get())
        edited = motion_math.quaternion_to_axis_angle(np.array(bone.rotation_quaternion))
        np.testing.assert_allclose(pose.params["body_pose"][0, 3 * 17 : 3 * 18], edited, atol=1e-5)
        constraint = bone.constraints.new("LIMIT_ROTATION")  # locks the joint at its rest orientation
        constraint.use_limit_x = constraint.use_limit_y = constraint.use_limit_z = True
        constraint.owner_space = "LOCAL"
        pose = rig_pose(armature, bpy.context.evaluated_depsgraph_get())
        np.testing.assert_allclose(pose.params["body_pose"][0, 3 * 17 : 3 * 18], 0.0, atol=1e-5)
        # The child's own rotation is unchanged: it is read relative to its (constrained) parent.
        child_expected = motion_math.quaternion_to_axis_angle(np.array(child.rotation_quaternion))
        np.testing.assert_allclose(pose.params["body_pose"][0, 3 * 19 : 3 * 20], child_expected, atol=1e-5)
        bone.constraints.remove(constraint)
    finally:
        bone.rotation_quaternion = saved


def test_non_smplx_objects_are_refused(armature):
    empty = bpy.data.objects.new("not a rig", None)
    with pytest.raises(RigError, match="not the armature of an imported avatar"):
        rig_pose(empty, bpy.context.evaluated_depsgraph_get())
    bpy.data.objects.remove(empty)


@pytest.mark.parametrize("sensor_fit, size, aspect", [("AUTO", (640, 480), (1.0, 1.0)), ("VERTICAL", (300, 500), (1.0, 1.25))])
def test_any_camera_projects_the_rig_where_blender_does(armature, sensor_fit, size, aspect):
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 50
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = aspect
    camera = add_camera(f"camera {sensor_fit}")
    camera.data.sensor_fit, camera.data.lens = sensor_fit, 42.0
    camera.data.shift_x, camera.data.shift_y = 0.07, -0.05
    camera.location = (0.6, -3.5, 1.4)
    camera.rotation_euler = (math.radians(80), 0.0, math.radians(8))
    camera.scale = (2.0, 2.0, 2.0)  # Blender ignores a camera's scale
    root = find_avatar(armature).root
    saved_root = root.matrix_world.copy()
    root.matrix_world = Matrix.Translation((0.2, 0.4, 0.1)) @ Matrix.Rotation(0.4, 4, "Z") @ Matrix.Scale(1.3, 4) @ saved_root
    try:
        scene.frame_set(3)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        width, height = output_size(scene.render)
        assert (width, height) == (size[0] // 2, size[1] // 2)
        inputs = frame_inputs(depsgraph, armature, width, height)
        names = armature["neural_avatar_joint_names"]
        body_points = np.array([armature.pose.bones[name].head for name in names], np.float64)
        camera_points = body_points @ inputs.world_to_camera[:3, :3].T + inputs.world_to_camera[:3, 3]
        pixels = camera_points @ inputs.intrinsics.T
        ours = pixels[:, :2] / pixels[:, 2:]
        theirs = []
        for point in body_points:
            ndc = world_to_camera_view(scene, camera, armature.matrix_world @ Vector(point))
            theirs.append([ndc.x * width - 0.5, (1.0 - ndc.y) * height - 0.5])
        np.testing.assert_allclose(ours, np.array(theirs), atol=2e-3)  # pixels
        assert inputs.depth == pytest.approx(1.3 * camera_points[0, 2], abs=1e-6) and inputs.depth > 0  # metres in the world
        np.testing.assert_allclose(inputs.world_to_camera[:3, :3].T @ inputs.world_to_camera[:3, :3], np.eye(3), atol=1e-6)
    finally:
        root.matrix_world = saved_root
        scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
        scene.render.resolution_percentage = 100


def test_unrenderable_cameras_and_rigs_are_refused_clearly(armature):
    camera = add_camera("ortho")
    camera.data.type = "ORTHO"
    depsgraph = bpy.context.evaluated_depsgraph_get()
    with pytest.raises(BackendError, match="'ortho' is ortho; the avatar renders through perspective cameras only"):
        frame_inputs(depsgraph, armature, 64, 64)
    camera.data.type = "PERSP"
    root = find_avatar(armature).root
    saved = root.scale.copy()
    root.scale = (1.0, 2.0, 1.0)
    try:
        with pytest.raises(BackendError, match="Reader skeleton: the avatar's rig cannot be scaled unevenly"):
            frame_inputs(bpy.context.evaluated_depsgraph_get(), armature, 64, 64)
    finally:
        root.scale = saved


def test_projection_to_intrinsics_inverts_the_capture_camera_conversion():
    intrinsics = np.array([[900.0, 0.0, 250.3], [0.0, 900.0 * 1.1, 260.7], [0.0, 0.0, 1.0]])
    settings = motion_math.opencv_to_blender_camera(intrinsics, np.eye(4), (512, 500))
    camera = add_camera("from capture")
    camera.data.sensor_fit, camera.data.sensor_width = "HORIZONTAL", 36.0
    camera.data.lens = float(settings["lens"])
    camera.data.shift_x, camera.data.shift_y = float(settings["shift_x"]), float(settings["shift_y"])
    depsgraph = bpy.context.evaluated_depsgraph_get()
    projection = camera.calc_matrix_camera(depsgraph, x=500, y=512, scale_x=1.1, scale_y=1.0)  # fy / fx = aspect x / y
    np.testing.assert_allclose(motion_math.projection_to_intrinsics(np.array(projection), 500, 512), intrinsics, atol=1e-3)
    with pytest.raises(ValueError, match="perspective"):
        motion_math.projection_to_intrinsics(np.eye(4), 10, 10)


def test_bake_arrays_hold_every_frame_and_restore_the_current_one(armature, motion):
    scene = bpy.context.scene
    add_camera("bake camera").location = (0.0, -4.0, 1.0)
    scene.camera.rotation_euler = (math.radians(90), 0.0, 0.0)
    scene.frame_set(4)
    arrays = sequence_arrays(bpy.context, armature, range(2, 6), 48, 64)
    assert scene.frame_current == 4
    assert arrays["body_pose"].shape == (4, 63) and arrays["expression"].shape == (4, EXPRESSIONS)
    np.testing.assert_allclose(arrays["transl"], motion["transl"][1:5], atol=2e-5)
    assert arrays["camera_K"].shape == (3, 3) and arrays["camera_world_to_camera"].shape == (4, 4)  # a still camera: sent once
    scene.camera.keyframe_insert("location", frame=2)
    scene.camera.location.x += 1.0
    scene.camera.keyframe_insert("location", frame=5)
    arrays = sequence_arrays(bpy.context, armature, range(2, 6), 48, 64)
    assert arrays["camera_world_to_camera"].shape == (4, 4, 4)  # an animated one: per frame
    assert not np.allclose(arrays["camera_world_to_camera"][0], arrays["camera_world_to_camera"][3])
    with pytest.raises(BackendError, match="0 frames to bake; the backend takes 1 to 100000 per job"):
        sequence_arrays(bpy.context, armature, range(0), 48, 64)


def test_sizes_and_compositing_nearest_on_top():
    render = bpy.context.scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = 1920, 1080, 50
    assert output_size(render) == (960, 540)
    assert preview_size(render, 256) == (256, 144) and preview_size(render, 0) == (960, 540)
    render.resolution_percentage = 100
    near = np.zeros((2, 2, 4), np.uint8)
    near[0, 0] = (255, 0, 0, 255)  # opaque red
    near[0, 1] = (0, 0, 64, 128)  # half-covered blue (premultiplied)
    far = np.zeros((2, 2, 4), np.uint8)
    far[0] = (0, 200, 0, 200)
    out = composite([(1.0, near), (5.0, far)])
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.0, 200 / 255 * (1 - 128 / 255), 64 / 255, 128 / 255 + 200 / 255 * (1 - 128 / 255)], atol=1e-6)
    assert np.all(out[1] == 0)
    np.testing.assert_allclose(composite([(5.0, far), (1.0, near)]), out)  # order given does not matter


def test_engine_colours_are_scene_linear_over_the_world_or_transparent():
    np.testing.assert_allclose(engine.srgb_to_linear(np.array([0.0, 0.04045, 0.5, 1.0])), [0.0, 0.04045 / 12.92, 0.21404, 1.0], atol=1e-5)
    frame = np.zeros((2, 3, 4), np.uint8)
    frame[0, 0] = (128, 128, 128, 255)  # top-left: opaque mid grey
    frame[1, 2] = (64, 0, 0, 128)  # bottom-right: half-covered red, premultiplied
    background = np.array([0.1, 0.2, 0.3], np.float32)
    pixels = engine.render_pixels([(1.0, frame)], 2, 3, background).reshape(2, 3, 4)
    np.testing.assert_allclose(pixels[1, 0, :3], engine.srgb_to_linear(np.full(3, 128 / 255)), atol=1e-6)  # rows bottom-first
    red = engine.srgb_to_linear(np.array([64 / 128]))[0] * 128 / 255
    np.testing.assert_allclose(pixels[0, 2], [red + 0.1 * (1 - 128 / 255), 0.2 * (1 - 128 / 255), 0.3 * (1 - 128 / 255), 1.0], atol=1e-5)
    transparent = engine.render_pixels([(1.0, frame)], 2, 3, None).reshape(2, 3, 4)
    assert transparent[1, 1, 3] == 0 and transparent[0, 2, 3] == pytest.approx(128 / 255)
    world = bpy.data.worlds.new("Sky")
    scene = bpy.context.scene
    scene.world = world
    background_node = next(node for node in world.node_tree.nodes if node.type == "BACKGROUND")
    background_node.inputs["Color"].default_value = (0.2, 0.4, 0.6, 1.0)
    background_node.inputs["Strength"].default_value = 0.5
    np.testing.assert_allclose(engine.world_colour(scene), [0.1, 0.2, 0.3], atol=1e-6)
    scene.world = None
    np.testing.assert_array_equal(engine.world_colour(scene), [0, 0, 0])


def test_the_engine_is_registered_with_blenders_panels():
    assert bpy.types.RenderEngine.bl_rna_get_subclass_py(engine.ENGINE_ID) is engine.NeuralAvatarRenderEngine
    assert engine.ENGINE_ID in bpy.types.RENDER_PT_color_management.COMPAT_ENGINES
    assert "VIEWLAYER_PT_layer_passes" not in {panel.__name__ for panel in engine._compatible_panels()}
