"""Import pipeline in Blender (bpy module, headless): rig structure, posed joints against forward
kinematics, skinned vertices against numpy LBS, export round trip, action APIs, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

bpy = pytest.importorskip("bpy")
smplx_names = pytest.importorskip("smplx.joint_names")

import blender_addon  # noqa: E402
from blender_addon import animation, operators  # noqa: E402
from blender_addon.bench_import import SMPLX_PARENTS, synthetic_motion, synthetic_template  # noqa: E402
from blender_addon.importing import ImportOptions, export_motion, import_motion  # noqa: E402
from blender_addon.motion_data import POSE_LAYOUTS, AvatarDataError  # noqa: E402
from blender_addon.properties import UNKEPT_TRACKS_PROPERTY  # noqa: E402
from blender_addon.rig import find_avatar, remove_avatar  # noqa: E402

from blender_support import registered_addon, scene_counts  # noqa: E402,F401 - module fixture

pytestmark = pytest.mark.blender

JOINT_NAMES = tuple(smplx_names.JOINT_NAMES[:55])
FRAMES = 24




@pytest.fixture()
def clean_scene():
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    for collection in (bpy.data.meshes, bpy.data.armatures, bpy.data.actions, bpy.data.cameras, bpy.data.images):
        for block in list(collection):
            collection.remove(block)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 24, 1.0
    scene.frame_start, scene.frame_end = 1, 250
    return scene


@pytest.fixture(scope="module")
def template():
    return synthetic_template(vertices=1500, faces=2800, shapes=4, expressions=5, joint_names=JOINT_NAMES, seed=1)


def layout_motion(frames: int = FRAMES, fps: float = 30.0, seed: int = 2) -> dict[str, object]:
    """SMPL-X motion split into the named pose parts, angles below pi (canonical axis-angle)."""
    motion = synthetic_motion(55, 5, frames, fps=fps, seed=seed)
    motion["betas"] = motion["betas"][:4]
    full = motion.pop("full_pose")
    start = 0
    for name, width in POSE_LAYOUTS["smplx"]:
        motion[name] = full[:, 3 * start : 3 * (start + width)]
        start += width
    return motion


def reference_posed_joints(rest_joints, parents, axis_angles, translation):
    """(J, 3) posed joints and (J, 3, 4) skinning transforms by the textbook SMPL recursion (scipy)."""
    count = len(parents)
    rotations = [None] * count
    joints = np.zeros((count, 3))
    skin = np.zeros((count, 3, 4))
    for j in range(count):
        local = Rotation.from_rotvec(axis_angles[j])
        if parents[j] < 0:
            rotations[j] = local
            joints[j] = rest_joints[j] + translation
        else:
            rotations[j] = rotations[parents[j]] * local
            joints[j] = joints[parents[j]] + rotations[parents[j]].apply(rest_joints[j] - rest_joints[parents[j]])
        matrix = rotations[j].as_matrix()
        skin[j, :, :3] = matrix
        skin[j, :, 3] = joints[j] - matrix @ rest_joints[j]
    return joints, skin


def reference_skinned_vertices(weights, skin, rest):
    blended = np.einsum("vj,jab->vab", weights.astype(np.float64), skin)
    return np.einsum("vab,vb->va", blended[:, :, :3], rest) + blended[:, :, 3]


def full_pose(motion) -> np.ndarray:
    return np.concatenate([motion[name] for name, _ in POSE_LAYOUTS["smplx"]], axis=1).reshape(-1, 55, 3)




# --- registration ------------------------------------------------------------------------


def test_register_and_unregister_cleanly_twice():
    for _ in range(2):
        blender_addon.unregister()
        assert not hasattr(bpy.types.Object, "neural_avatar")
        assert not hasattr(bpy.types, "NEURAL_AVATAR_PT_main")
        blender_addon.unregister()  # a second unregister is a no-op
        blender_addon.register()
        assert hasattr(bpy.types.Object, "neural_avatar")
        assert hasattr(bpy.types, "NEURAL_AVATAR_PT_avatar")
        assert hasattr(bpy.ops.neural_avatar, "remove_avatar")


def test_enabling_as_an_addon_gives_preferences():
    import addon_utils

    blender_addon.unregister()
    try:
        addon_utils.enable("blender_addon", default_set=True, handle_error=None)
        prefs = bpy.context.preferences.addons["blender_addon"].preferences
        assert prefs.connection == "START" and prefs.auto_start
        assert prefs.model_folder("smplx") == ""  # empty means the stand-in
        prefs.smplx_folder = "/models/smplx"
        assert prefs.model_folder("smplx") == "/models/smplx"
    finally:
        addon_utils.disable("blender_addon", default_set=True, handle_error=None)
        blender_addon.register()


# --- structure -----------------------------------------------------------------------------


def test_import_builds_bones_groups_shape_keys_and_keys(clean_scene, template):
    arrays, names = template
    motion = layout_motion()
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Ada", ground="none"))
    avatar = find_avatar(armature)
    assert avatar.root.name == "Ada" and avatar.armature == armature and avatar.camera is None

    bones = armature.data.bones
    assert sorted(bone.name for bone in bones) == sorted(JOINT_NAMES)
    for index, name in enumerate(JOINT_NAMES):
        bone = bones[name]
        parent = SMPLX_PARENTS[index]
        assert (bone.parent.name if bone.parent else None) == (JOINT_NAMES[parent] if parent >= 0 else None)
        np.testing.assert_allclose(np.array(bone.matrix_local)[:3, :3], np.eye(3), atol=1e-6)  # the rig convention
        np.testing.assert_allclose(bone.head_local, arrays["rest_joints"][index], atol=1e-6)
    assert all(pose_bone.rotation_mode == "QUATERNION" for pose_bone in armature.pose.bones)

    mesh = avatar.mesh
    assert len(mesh.data.vertices) == 1500 and len(mesh.data.polygons) == 2800
    assert [group.name for group in mesh.vertex_groups] == list(JOINT_NAMES)
    for vertex_index in (0, 77, 1499):
        stored = {mesh.vertex_groups[g.group].name: g.weight for g in mesh.data.vertices[vertex_index].groups}
        expected = {JOINT_NAMES[j]: w for j, w in enumerate(arrays["skinning_weights"][vertex_index]) if w > 0}
        assert stored.keys() == expected.keys()
        np.testing.assert_allclose([stored[k] for k in expected], list(expected.values()), atol=1e-7)
    assert mesh.modifiers[0].type == "ARMATURE" and mesh.modifiers[0].object == armature
    assert mesh.data.uv_layers.active is not None
    assert all(polygon.use_smooth for polygon in mesh.data.polygons[:10])

    keys = mesh.data.shape_keys.key_blocks
    assert [key.name for key in keys] == ["Basis", *names["shape_names"], *names["expression_names"]]
    coordinates = np.empty(1500 * 3, np.float32)
    keys["expression_002"].data.foreach_get("co", coordinates)
    expected = arrays["rest_vertices"] + arrays["expression_directions"][:, :, 2]
    np.testing.assert_allclose(coordinates.reshape(-1, 3), expected, atol=1e-6)

    channels = animation.Channels.of(armature)
    assert len(channels) == 55 * 4 + 3
    for name in ("pelvis", "left_index3"):
        curve = channels.find(animation.data_path_item("pose.bones", name, "rotation_quaternion"), 3)
        assert len(curve.keyframe_points) == FRAMES and curve.group.name == name
        assert curve.keyframe_points[0].interpolation == "LINEAR"
    shape_channels = animation.Channels.of(mesh.data.shape_keys)
    assert len(shape_channels) == 5
    assert len(shape_channels.find('key_blocks["expression_004"].value').keyframe_points) == FRAMES
    state = armature.neural_avatar
    assert (state.role, state.family, state.is_standin, state.up_axis) == ("ARMATURE", "smplx", True, "y")
    assert (state.frame_start, state.frame_count) == (1, FRAMES)
    assert mesh.neural_avatar.role == "MESH" and avatar.root.neural_avatar.role == "ROOT"
    assert bpy.context.scene.render.fps == 30 and bpy.context.scene.frame_end == FRAMES


# --- the rig moves correctly ----------------------------------------------------------------


def test_posed_joints_and_skinned_vertices_match_numpy_reference(clean_scene, template):
    arrays, names = template
    motion = layout_motion(seed=3)
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Bo", ground="first_frame"))
    avatar = find_avatar(armature)
    pose = full_pose(motion).astype(np.float64)
    translation = np.asarray(motion["transl"], np.float64)
    expression = np.asarray(motion["expression"], np.float64)
    rest_joints = arrays["rest_joints"].astype(np.float64)
    rest_vertices = arrays["rest_vertices"].astype(np.float64)
    directions = arrays["expression_directions"].astype(np.float64)

    # Expected root: Y-up -> Z-up, lifted so the lowest vertex of frame 0 touches z = 0.
    to_z_up = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)
    _, skin0 = reference_posed_joints(rest_joints, SMPLX_PARENTS, pose[0], translation[0])
    first = reference_skinned_vertices(arrays["skinning_weights"], skin0, rest_vertices + directions @ expression[0])
    lift = -(first @ to_z_up.T)[:, 2].min()
    np.testing.assert_allclose(np.array(avatar.root.matrix_world)[:3, :3], to_z_up, atol=1e-7)
    assert avatar.root.matrix_world[2][3] == pytest.approx(lift, abs=1e-6)

    scene = bpy.context.scene
    depsgraph = bpy.context.evaluated_depsgraph_get()
    for frame in (0, 9, FRAMES - 1):
        scene.frame_set(1 + frame)
        bpy.context.view_layer.update()
        joints, skin = reference_posed_joints(rest_joints, SMPLX_PARENTS, pose[frame], translation[frame])
        world_joints = joints @ to_z_up.T + [0.0, 0.0, lift]
        blender_joints = np.array([armature.matrix_world @ armature.pose.bones[name].head for name in JOINT_NAMES])
        np.testing.assert_allclose(blender_joints, world_joints, atol=2e-5)

        evaluated = avatar.mesh.evaluated_get(depsgraph).data
        coordinates = np.empty(len(evaluated.vertices) * 3, np.float32)
        evaluated.vertices.foreach_get("co", coordinates)
        expected = reference_skinned_vertices(
            arrays["skinning_weights"], skin, rest_vertices + directions @ expression[frame]
        )
        np.testing.assert_allclose(coordinates.reshape(-1, 3), expected, atol=5e-5)


def test_sequence_grounding_puts_the_lowest_vertex_of_all_frames_on_the_floor(clean_scene, template):
    arrays, names = template
    motion = layout_motion(seed=9)
    motion["transl"] = motion["transl"] + np.linspace(0, 1.0, FRAMES)[:, None] * [0.0, 0.8, 0.0]  # rises over time
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Floor", ground="sequence"))
    mesh = find_avatar(armature).mesh
    depsgraph = bpy.context.evaluated_depsgraph_get()
    lowest_per_frame = []
    for frame in range(FRAMES):
        bpy.context.scene.frame_set(1 + frame)
        evaluated = mesh.evaluated_get(depsgraph)
        coordinates = np.empty(len(evaluated.data.vertices) * 3, np.float32)
        evaluated.data.vertices.foreach_get("co", coordinates)
        matrix = np.array(evaluated.matrix_world)
        world = coordinates.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]
        lowest_per_frame.append(world[:, 2].min())
    assert min(lowest_per_frame) == pytest.approx(0.0, abs=2e-5)
    assert lowest_per_frame[-1] > lowest_per_frame[0] + 0.3  # only the early frames touch the floor


def test_export_round_trip_is_lossless(clean_scene, template):
    arrays, names = template
    motion = layout_motion(seed=4)
    motion["faceverse_exp"] = np.random.default_rng(5).random((FRAMES, 3)).astype(np.float32)
    motion["faceverse_exp_names"] = ["eyeBlinkLeft", "jawOpen", "mouthSmileLeft"]
    motion["fps"] = 30000 / 1001
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Cy"))
    exported = export_motion(armature)
    for key in [name for name, _ in POSE_LAYOUTS["smplx"]] + ["transl", "expression", "betas", "faceverse_exp"]:
        np.testing.assert_allclose(exported[key], motion[key], atol=1e-6, err_msg=key)
        assert exported[key].dtype == np.float32
    assert exported["fps"] == motion["fps"] and exported["up_axis"] == "y"
    assert exported["faceverse_exp_names"] == motion["faceverse_exp_names"]
    bpy.context.scene.frame_set(armature.neural_avatar.frame_start + 2)  # the curves drive the properties
    assert armature["faceverse_jawOpen"] == pytest.approx(motion["faceverse_exp"][2, 1])
    # What comes out imports again.
    again = import_motion(bpy.context, arrays, names, exported, ImportOptions(name="Cy2"))
    np.testing.assert_allclose(export_motion(again)["body_pose"], motion["body_pose"], atol=1e-6)


def test_tracks_the_rig_does_not_keep_are_recorded_and_reported_on_export(clean_scene, template):
    arrays, names = template
    motion = layout_motion()
    motion["faceverse_rotation"] = np.zeros((FRAMES, 3), np.float32)
    motion["mano_left_hand_pose"] = np.zeros((FRAMES, 45), np.float32)
    motion["mano_left_transl"] = np.zeros((FRAMES, 3), np.float32)
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Partial"))
    unkept = list(armature[UNKEPT_TRACKS_PROPERTY])
    assert unkept == ["faceverse_rotation", "mano_left_hand_pose", "mano_left_transl"]
    _, written, left_out = operators.motion_write_request(export_motion(armature), "tracking", unkept)
    assert not any(key in written for key in unkept)
    assert left_out == ["the imported file's faceverse_rotation, mano_left_* (not kept in Blender)"]
    plain = import_motion(bpy.context, arrays, names, layout_motion(), ImportOptions(name="Whole"))
    assert list(plain[UNKEPT_TRACKS_PROPERTY]) == []


def test_export_without_the_bodys_shape_keys_fails_clearly(clean_scene, template, tmp_path):
    arrays, names = template
    armature = import_motion(bpy.context, arrays, names, layout_motion(), ImportOptions(name="Keyless"))
    find_avatar(armature).mesh.shape_key_clear()  # the user deletes the shape keys
    with pytest.raises(ValueError, match="'Keyless body' has no shape keys"):
        export_motion(armature)
    bpy.context.view_layer.objects.active = armature
    with pytest.raises(RuntimeError, match=r"^Error: 'Keyless body' has no shape keys"):
        bpy.ops.neural_avatar.export_motion(filepath=str(tmp_path / "out.npz"))


def test_export_samples_edited_curves(clean_scene, template):
    arrays, names = template
    motion = layout_motion(seed=6)
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Ed", ground="none"))
    curve = animation.Channels.of(armature).find(animation.data_path_item("pose.bones", "pelvis", "location"), 0)
    curve.keyframe_points.remove(curve.keyframe_points[5])  # an animator deletes a key
    exported = export_motion(armature)
    transl = np.asarray(motion["transl"])
    np.testing.assert_allclose(exported["transl"][5, 0], 0.5 * (transl[4, 0] + transl[6, 0]), atol=1e-6)
    np.testing.assert_allclose(exported["transl"][6:, 0], transl[6:, 0], atol=1e-6)


# --- frame rates, several avatars, up axes ------------------------------------------------------


def test_ntsc_motion_sets_exact_scene_rate(clean_scene, template):
    arrays, names = template
    motion = layout_motion()
    motion["fps"] = 29.97
    import_motion(bpy.context, arrays, names, motion, ImportOptions(frame_rate="motion"))
    render = bpy.context.scene.render
    assert (render.fps, render.fps_base) == (2997, 100.0)
    assert render.fps / render.fps_base == 29.97


def test_resampling_to_scene_rate_keys_exact_times(clean_scene, template):
    arrays, names = template
    motion = layout_motion(frames=41, fps=120.0, seed=7)
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Hi", frame_rate="scene"))
    scene = bpy.context.scene
    assert (scene.render.fps, scene.render.fps_base) == (24, 1.0)  # untouched
    exported = export_motion(armature)
    assert exported["fps"] == 24.0
    assert len(exported["transl"]) == 9  # 0, 5, 10, ..., 40 at 120 fps
    np.testing.assert_allclose(exported["transl"], motion["transl"][::5], atol=1e-6)
    np.testing.assert_allclose(exported["body_pose"], motion["body_pose"][::5], atol=1e-6)


def test_rates_equal_in_single_precision_key_every_source_frame_untouched(clean_scene, template):
    arrays, names = template
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = 30, 1.001  # Blender's 29.97 preset (fps_base is float32)
    motion = layout_motion(seed=9)
    motion["fps"] = 30000 / 1001
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Preset", frame_rate="scene"))
    assert armature.neural_avatar.frame_count == FRAMES  # not resampled, the last frame kept
    np.testing.assert_array_equal(export_motion(armature)["transl"], motion["transl"])

    long_motion = layout_motion(frames=300, seed=10)
    long_motion["fps"] = np.float32(59.94)  # a rate stored in single precision in the file
    armature = import_motion(bpy.context, arrays, names, long_motion, ImportOptions(name="Float32", frame_rate="motion"))
    assert armature.neural_avatar.frame_count == 300
    np.testing.assert_array_equal(export_motion(armature)["transl"], long_motion["transl"])


def test_second_avatar_keeps_scene_rate_and_first_avatar_intact(clean_scene, template):
    arrays, names = template
    first = import_motion(bpy.context, arrays, names, layout_motion(fps=30.0), ImportOptions(name="One"))
    second = import_motion(bpy.context, arrays, names, layout_motion(frames=25, fps=25.0), ImportOptions(name="Two"))
    assert bpy.context.scene.render.fps == 30
    assert find_avatar(first).root != find_avatar(second).root
    assert second.neural_avatar.frame_count == 29  # 0.96 s at 25 fps, keyed at 30 fps: frames 0..28
    assert first.neural_avatar.frame_count == FRAMES


def test_z_up_motion_gets_no_rotation_on_the_root(clean_scene, template):
    arrays, names = template
    motion = layout_motion()
    motion["up_axis"] = "z"
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(ground="none"))
    np.testing.assert_allclose(np.array(find_avatar(armature).root.matrix_world), np.eye(4), atol=1e-7)


def test_full_pose_for_other_families(clean_scene):
    arrays, names = synthetic_template(
        vertices=200, faces=300, shapes=2, expressions=0, parents=(-1, 0, 1, 1), seed=8
    )
    motion = {"fps": 60.0, "up_axis": "y", "full_pose": np.full((5, 12), 0.1), "transl": np.zeros((5, 3))}
    armature = import_motion(bpy.context, arrays, names, motion, ImportOptions(ground="none"))
    exported = export_motion(armature)
    np.testing.assert_allclose(exported["full_pose"], motion["full_pose"], atol=1e-6)
    assert "expression" not in exported and find_avatar(armature).mesh.data.shape_keys.animation_data is None


# --- action APIs ------------------------------------------------------------------------------


def test_action_api_detection():
    assert animation.choose_action_api(slots_take_id_type=False, has_channelbag_helper=False) == "legacy"
    assert animation.choose_action_api(slots_take_id_type=False, has_channelbag_helper=True) == "legacy"
    assert animation.choose_action_api(slots_take_id_type=True, has_channelbag_helper=False) == "layered"
    assert animation.choose_action_api(slots_take_id_type=True, has_channelbag_helper=True) == "channelbag"
    version = bpy.app.version
    expected = "channelbag" if version >= (5, 0, 0) else ("layered" if version >= (4, 4, 0) else "legacy")
    assert animation.detect_action_api() == expected


@pytest.mark.parametrize("api", ["channelbag", "layered"])
def test_both_slotted_paths_write_read_and_evaluate(clean_scene, api):
    empty = bpy.data.objects.new("Mover", None)
    bpy.context.scene.collection.objects.link(empty)
    channels = animation.Channels.create(empty, "Mover motion", api=api)
    frames = animation.frame_numbers(1, 10)
    values = np.stack([np.arange(10) * 0.5, -np.arange(10), np.full(10, 2.0)], axis=1)
    curves = channels.write("location", frames, values, group="Root")
    assert [curve.array_index for curve in curves] == [0, 1, 2] and curves[0].group.name == "Root"
    assert empty.animation_data.action == channels.action and empty.animation_data.action_slot == channels.slot
    again = animation.Channels.of(empty)
    np.testing.assert_array_equal(again.read("location", 3, frames), values)
    bpy.context.scene.frame_set(4)
    np.testing.assert_allclose(empty.location, values[3], atol=1e-7)
    bpy.context.scene.frame_set(1)
    with pytest.raises(ValueError, match="increasing"):
        channels.write("scale", frames[::-1], values)


@pytest.mark.skipif(bpy.app.version < (5, 0, 0), reason="4.2-4.5 still have action.fcurves")
def test_legacy_path_is_refused_clearly_where_blender_removed_it(clean_scene):
    empty = bpy.data.objects.new("Old", None)
    bpy.context.scene.collection.objects.link(empty)
    actions = len(bpy.data.actions)
    with pytest.raises(animation.AnimationError, match="legacy"):
        animation.Channels.create(empty, "old style", api="legacy")
    assert len(bpy.data.actions) == actions and empty.animation_data is None


# --- bad input leaves the scene unchanged --------------------------------------------------------


def corrupt(template, motion, **changes):
    arrays, names = dict(template[0]), dict(template[1])
    motion = dict(motion)
    for key, value in changes.items():
        target = arrays if key in arrays else names if key in names else motion
        if value is None:
            del target[key]
        else:
            target[key] = value
    return arrays, names, motion


BAD_INPUTS = {
    "nan in pose": ({"body_pose": np.full((FRAMES, 63), np.nan)}, r"body_pose holds NaN"),
    "wrong pose width": ({"body_pose": np.zeros((FRAMES, 60))}, r"body_pose has shape \(24, 60\), expected \(24, 63\)"),
    "missing transl": ({"transl": None}, r"missing 'transl'"),
    "frame mismatch": ({"jaw_pose": np.zeros((FRAMES - 1, 3))}, r"jaw_pose has shape"),
    "bad parents": ({"parents": np.array([-1] + [5] * 54, np.int32)}, r"parents must hold"),
    "weights": ({"skinning_weights": np.full((1500, 55), 0.5, np.float32)}, r"skinning_weights row 0 sums to"),
    "face index": ({"faces": np.full((2800, 3), 1500, np.int32)}, r"faces indexes outside \[0, 1500\)"),
    "names": ({"joint_names": ["a"] * 55}, r"joint_names has repeated names"),
    "expression range": ({"expression": np.full((FRAMES, 5), 12.0)}, r"outside \[-10, 10\]"),
    "fps": ({"fps": -3.0}, r"fps must be a positive number"),
    "up axis": ({"up_axis": "x"}, r"up_axis must be one of"),
    "camera": (
        {"camera_K": np.eye(3), "camera_world_to_camera": np.eye(4)},
        r"camera_K, camera_world_to_camera and image_size must be given together",
    ),
    "faceverse name too long for its property": (
        {"faceverse_exp": np.zeros((FRAMES, 1)), "faceverse_exp_names": ["x" * 60]},
        r"faceverse_exp_names entry 'x{60}' must be 1 to 53 bytes long .*'faceverse_x{60}'",
    ),
    "inf in vertices": (
        {"rest_vertices": np.full((1500, 3), np.inf, np.float32)},
        r"rest_vertices holds NaN or infinity",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_malformed_input_raises_clear_error_and_changes_nothing(clean_scene, template, case):
    changes, message = BAD_INPUTS[case]
    arrays, names, motion = corrupt(template, layout_motion(), **changes)
    before = scene_counts()
    with pytest.raises(AvatarDataError, match=message):
        import_motion(bpy.context, arrays, names, motion, ImportOptions(frame_rate="motion"))
    assert scene_counts() == before


def test_failure_during_build_removes_everything_and_restores_settings(clean_scene, template):
    arrays, names = template
    import_motion(bpy.context, arrays, names, layout_motion(), ImportOptions(name="Kept"))
    bpy.context.scene.render.fps = 24
    before = scene_counts()
    hidden = bpy.data.collections.new("not in the view layer")  # bones cannot be edited there
    motion = layout_motion()
    motion.update(camera_K=np.array([[500.0, 0, 320], [0, 500, 240], [0, 0, 1]]), camera_world_to_camera=np.eye(4))
    motion["image_size"] = np.array([480, 640])
    with pytest.raises(RuntimeError):
        options = ImportOptions(name="Lost", frame_rate="motion", collection=hidden)
        import_motion(bpy.context, arrays, names, motion, options)
    assert scene_counts() == before
    assert "Lost" not in bpy.data.objects and find_avatar(bpy.data.objects["Kept"]) is not None
    bpy.data.collections.remove(hidden)


# --- operators ---------------------------------------------------------------------------------


def test_operators_match_rate_and_remove_avatar(clean_scene, template):
    arrays, names = template
    before = scene_counts()
    armature = import_motion(bpy.context, arrays, names, layout_motion(fps=50.0), ImportOptions(name="Op"))
    scene = bpy.context.scene
    scene.render.fps, scene.frame_end = 24, 500
    assert bpy.ops.neural_avatar.match_scene_rate() == {"FINISHED"}
    assert (scene.render.fps, scene.render.fps_base, scene.frame_end) == (50, 1.0, FRAMES)
    bpy.context.view_layer.objects.active = find_avatar(armature).mesh
    assert bpy.ops.neural_avatar.remove_avatar() == {"FINISHED"}
    after = scene_counts()
    for key in ("objects", "meshes", "armatures", "actions", "cameras", "shape_keys"):
        assert after[key] == before[key], key
    assert bpy.ops.neural_avatar.remove_avatar.poll() is False


def test_an_unexpected_error_in_an_operator_step_is_reported_with_its_traceback(clean_scene, template, tmp_path, monkeypatch, capsys):
    arrays, names = template
    import_motion(bpy.context, arrays, names, layout_motion(), ImportOptions(name="Buggy"))

    def broken_export(armature):
        raise KeyError("a bug")

    monkeypatch.setattr(operators, "export_motion", broken_export)
    before = scene_counts()
    with pytest.raises(RuntimeError, match=r"^Error: Internal error \(KeyError: 'a bug'\); the traceback is in the console"):
        bpy.ops.neural_avatar.export_motion(filepath=str(tmp_path / "out.npz"))
    assert scene_counts() == before
    assert "Traceback" in capsys.readouterr().err


def test_remove_avatar_helper_leaves_other_avatars(clean_scene, template):
    arrays, names = template
    keep = import_motion(bpy.context, arrays, names, layout_motion(), ImportOptions(name="Keep"))
    drop = import_motion(bpy.context, arrays, names, layout_motion(), ImportOptions(name="Drop"))
    remove_avatar(find_avatar(drop))
    assert find_avatar(keep) is not None and "Drop" not in bpy.data.objects
    assert len(bpy.data.actions) == 2  # Keep's armature and expression actions
