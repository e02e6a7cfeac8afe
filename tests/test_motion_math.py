"""The add-on's pure numpy motion maths (no Blender needed); references from scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from blender_addon import motion_math as mm


def random_axis_angles(count: int, seed: int = 0, max_angle: float = np.pi - 1e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(count, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    return axes * rng.uniform(0.0, max_angle, (count, 1))


# --- rotations ---------------------------------------------------------------------------


def test_axis_angle_quaternion_round_trip_and_matches_scipy():
    axis_angles = np.concatenate([random_axis_angles(500), [[0, 0, 0], [1e-9, 0, 0], [0, -3e-7, 1e-7]]])
    quaternions = mm.axis_angle_to_quaternion(axis_angles)
    np.testing.assert_allclose(np.linalg.norm(quaternions, axis=1), 1.0, atol=1e-12)
    scipy_xyzw = Rotation.from_rotvec(axis_angles).as_quat()
    np.testing.assert_allclose(quaternions, np.roll(scipy_xyzw, 1, axis=1), atol=1e-12)
    np.testing.assert_allclose(mm.quaternion_to_axis_angle(quaternions), axis_angles, atol=1e-12)
    np.testing.assert_allclose(
        mm.axis_angle_to_matrix(axis_angles), Rotation.from_rotvec(axis_angles).as_matrix(), atol=1e-12
    )


def test_quaternion_to_axis_angle_is_canonical_for_either_sign_and_long_rotations():
    axis_angles = random_axis_angles(50, seed=1)
    quaternions = mm.axis_angle_to_quaternion(axis_angles)
    np.testing.assert_allclose(mm.quaternion_to_axis_angle(-quaternions), axis_angles, atol=1e-12)
    np.testing.assert_allclose(mm.quaternion_to_axis_angle(3.0 * quaternions), axis_angles, atol=1e-12)
    # A 1.5 pi rotation comes back as the same rotation with angle 0.5 pi about the opposite axis.
    long_way = np.array([[0.0, 0.0, 1.5 * np.pi]])
    canonical = mm.quaternion_to_axis_angle(mm.axis_angle_to_quaternion(long_way))
    np.testing.assert_allclose(canonical, [[0.0, 0.0, -0.5 * np.pi]], atol=1e-12)
    with pytest.raises(ValueError, match="zero length"):
        mm.quaternion_to_axis_angle(np.zeros((1, 4)))


def test_matrix_to_quaternion_matches_scipy_including_half_turns():
    matrices = np.concatenate(
        [
            Rotation.from_rotvec(random_axis_angles(300, seed=2)).as_matrix(),
            Rotation.from_rotvec(np.pi * np.eye(3)).as_matrix(),  # 180 degrees about x, y, z
            Rotation.from_rotvec([[np.pi / np.sqrt(2), np.pi / np.sqrt(2), 0.0]]).as_matrix(),
        ]
    )
    quaternions = mm.matrix_to_quaternion(matrices)
    assert np.all(quaternions[:, 0] >= 0)
    np.testing.assert_allclose(mm.quaternion_to_matrix(quaternions), matrices, atol=1e-12)


def test_quaternion_continuity_removes_sign_flips_only():
    rng = np.random.default_rng(3)
    angles = np.linspace(0, 6 * np.pi, 400)  # three full turns: the raw quaternions flip sign
    smooth = mm.axis_angle_to_quaternion(np.stack([angles, 0 * angles, 0 * angles], 1) / 3.0)
    flipped = smooth * rng.choice([-1.0, 1.0], size=(400, 1))
    continuous = mm.make_quaternions_continuous(flipped)
    assert np.all(np.sum(continuous[1:] * continuous[:-1], axis=1) > 0)
    same_rotation = np.abs(np.sum(continuous * flipped, axis=1))
    np.testing.assert_allclose(same_rotation, 1.0, atol=1e-12)
    # Batched (T, J, 4) along axis 0 as the importer uses it.
    batch = np.stack([flipped, -flipped], axis=1)
    batch_continuous = mm.make_quaternions_continuous(batch)
    assert np.all(np.sum(batch_continuous[1:] * batch_continuous[:-1], axis=-1) > 0)


def test_slerp_endpoints_and_constant_speed():
    start = mm.axis_angle_to_quaternion([0.0, 0.0, 0.1])
    end = -mm.axis_angle_to_quaternion([0.0, 0.0, 1.1])  # opposite sign: must still take the short way
    fractions = np.array([0.0, 0.25, 0.5, 1.0])
    result = mm.quaternion_slerp(np.broadcast_to(start, (4, 4)), np.broadcast_to(end, (4, 4)), fractions)
    np.testing.assert_array_equal(result[0], start)
    np.testing.assert_allclose(mm.quaternion_to_axis_angle(result), [[0, 0, 0.1 + f] for f in fractions], atol=1e-12)


# --- frame rates and resampling ----------------------------------------------------------


@pytest.mark.parametrize(
    "fps, expected",
    [
        (24.0, (24, 1.0)),
        (120.0, (120, 1.0)),
        (29.97, (2997, 100.0)),
        (30000 / 1001, (30000, 1001.0)),
        (60000 / 1001, (30000, 500.5)),
        (23.976, (2997, 125.0)),
        (12.5, (25, 2.0)),
    ],
)
def test_blender_frame_rate_is_exact_in_single_precision(fps, expected):
    rate, base = mm.blender_frame_rate(fps)
    assert (rate, base) == expected
    assert float(np.float32(base)) == base  # survives Blender's single-precision fps_base
    assert rate / float(np.float32(base)) == fps


def test_unrepresentable_frame_rate_falls_back_to_nearest():
    with pytest.raises(ValueError, match="no exact"):
        mm.blender_frame_rate(np.pi * 10)
    rate, base = mm.nearest_blender_frame_rate(np.pi * 10)
    assert rate == 31 and base == pytest.approx(31 / (np.pi * 10), rel=1e-15)
    with pytest.raises(ValueError, match="positive"):
        mm.blender_frame_rate(0.0)
    with pytest.raises(ValueError, match="positive"):
        mm.resampling_positions(10, float("nan"), 30.0)


@pytest.mark.parametrize(
    "source_fps, target_fps, frames",
    [(120.0, 30.0, 1001), (30.0, 24.0, 301), (29.97, 30.0, 3000), (30.0, 29.97, 3000), (30000 / 1001, 30.0, 10000)],
)
def test_resampled_frames_sit_at_exact_times_without_drift(source_fps, target_fps, frames):
    positions = mm.resampling_positions(frames, source_fps, target_fps)
    k = np.arange(len(positions))
    # Frame k of the target shows the source at time k / target_fps, with no accumulated error.
    np.testing.assert_allclose(positions / source_fps, k / target_fps, rtol=1e-13, atol=1e-12)
    duration = (frames - 1) / source_fps
    assert positions[-1] <= frames - 1
    assert (len(positions) - 1) / target_fps <= duration + 1e-9 < len(positions) / target_fps
    # A linear signal is reproduced exactly at those times.
    signal = 2.0 + 0.5 * np.arange(frames) / source_fps
    np.testing.assert_allclose(mm.resample_linear(signal, positions), 2.0 + 0.5 * k / target_fps, rtol=1e-12)


def test_integer_ratio_resampling_picks_source_samples_exactly():
    positions = mm.resampling_positions(1001, 120.0, 30.0)
    np.testing.assert_array_equal(positions, 4.0 * np.arange(251))
    values = np.random.default_rng(4).normal(size=(1001, 3))
    np.testing.assert_array_equal(mm.resample_linear(values, positions), values[::4])
    np.testing.assert_array_equal(mm.resampling_positions(301, 30.0, 24.0)[:5], [0.0, 1.25, 2.5, 3.75, 5.0])


def test_quaternion_resampling_follows_constant_angular_velocity():
    source_fps, target_fps, frames = 30.0, 24.0, 91
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    speed = 1.3  # radians per second; under pi per frame so the samples are unambiguous
    source = mm.axis_angle_to_quaternion(np.outer(speed * np.arange(frames) / source_fps, axis))
    source = mm.make_quaternions_continuous(source)
    timeline = mm.Timeline.between(frames, source_fps, target_fps)
    result = timeline.rotations(source)
    k = np.arange(timeline.num_frames)
    expected = mm.axis_angle_to_quaternion(np.outer(speed * k / target_fps, axis))
    np.testing.assert_allclose(result, expected, atol=1e-12)
    assert not timeline.is_identity


def test_identity_timeline_passes_values_through_untouched():
    timeline = mm.Timeline.between(50, 29.97, 2997 / 100.0)
    assert timeline.is_identity and timeline.num_frames == 50
    values = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)
    passed = timeline.linear(values)
    assert passed.dtype == np.float32 and np.array_equal(passed, values)


# --- up axis, kinematics, grounding ------------------------------------------------------


def test_up_axis_matrices_put_up_on_blender_z():
    for axis, up in (("y", [0, 1, 0]), ("-y", [0, -1, 0]), ("z", [0, 0, 1])):
        matrix = mm.up_axis_matrix(axis)
        np.testing.assert_allclose(matrix[:3, :3] @ up, [0, 0, 1])
        assert np.linalg.det(matrix[:3, :3]) == pytest.approx(1.0)
    # SMPL-X faces +Z; in Blender a Y-up body must face -Y (front view looks along +Y).
    np.testing.assert_allclose(mm.up_axis_matrix("y")[:3, :3] @ [0, 0, 1], [0, -1, 0])
    with pytest.raises(ValueError, match="up axis"):
        mm.up_axis_matrix("x")


def reference_joint_positions(rest_joints, parents, axis_angles, translation):
    """Posed joints by the textbook recursion, with scipy rotations (T, J, 3)."""
    frames, count = axis_angles.shape[:2]
    out = np.zeros((frames, count, 3))
    for t in range(frames):
        world = [None] * count
        for j in range(count):
            local = Rotation.from_rotvec(axis_angles[t, j])
            if parents[j] < 0:
                world[j] = local
                out[t, j] = rest_joints[j] + translation[t]
            else:
                p = parents[j]
                world[j] = world[p] * local
                out[t, j] = out[t, p] + world[p].apply(rest_joints[j] - rest_joints[p])
    return out


def small_skinned_body(seed: int = 6):
    rng = np.random.default_rng(seed)
    parents = np.array([-1, 0, 1, 2, 1, 0])
    joints = rng.normal(scale=0.3, size=(6, 3))
    vertices = rng.normal(scale=0.5, size=(40, 3))
    weights = rng.random((40, 6)) ** 4
    weights /= weights.sum(axis=1, keepdims=True)
    return parents, joints, vertices, weights


def test_forward_kinematics_matches_reference_recursion():
    parents, joints, _, _ = small_skinned_body()
    axis_angles = random_axis_angles(4 * 6, seed=7).reshape(4, 6, 3)
    translation = np.random.default_rng(8).normal(size=(4, 3))
    transforms = mm.joint_world_transforms(joints, parents, mm.axis_angle_to_matrix(axis_angles), translation)
    np.testing.assert_allclose(
        transforms[..., :3, 3], reference_joint_positions(joints, parents, axis_angles, translation), atol=1e-12
    )
    # The skinning transform of a joint maps its own rest position onto its posed position.
    skin = mm.skinning_transforms(transforms, joints)
    moved = np.einsum("tjab,jb->tja", skin[..., :3], joints) + skin[..., 3]
    np.testing.assert_allclose(moved, transforms[..., :3, 3], atol=1e-12)


def test_lowest_height_equals_brute_force_skinning_over_frames():
    parents, joints, vertices, weights = small_skinned_body()
    frames = 7
    directions = np.random.default_rng(13).normal(scale=0.2, size=(len(vertices), 3, 2))
    expression = np.random.default_rng(14).normal(size=(frames, 2))
    axis_angles = random_axis_angles(frames * 6, seed=9, max_angle=1.0).reshape(frames, 6, 3)
    translation = np.random.default_rng(10).normal(size=(frames, 3))
    world = mm.up_axis_matrix("y")
    world[2, 3] = 0.25
    expected = np.inf
    for t in range(frames):  # brute force: per-vertex blend of per-joint rigid transforms
        transforms = mm.joint_world_transforms(
            joints, parents, mm.axis_angle_to_matrix(axis_angles[t : t + 1]), translation[t : t + 1]
        )[0]
        posed = np.zeros((len(vertices), 3))
        shaped = vertices + directions @ expression[t]
        for j in range(6):
            rotation, origin = transforms[j, :3, :3], transforms[j, :3, 3]
            posed += weights[:, j : j + 1] * ((shaped - joints[j]) @ rotation.T + origin)
        heights = (posed @ world[:3, :3].T)[:, 2] + world[2, 3]
        expected = min(expected, heights.min())
    for chunk in (1, 3, 256):
        got = mm.lowest_height(
            vertices, weights, joints, parents, axis_angles, translation, world, directions, expression, chunk
        )
        assert got == pytest.approx(expected, abs=1e-12)
    without = mm.lowest_height(vertices, weights, joints, parents, axis_angles, translation, world)
    assert without != pytest.approx(expected, abs=1e-6)  # the offsets matter in this test


# --- cameras -------------------------------------------------------------------------------


def look_at_world_to_camera(eye, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenCV world-to-camera for a camera at ``eye`` looking at ``target`` (y down in the image)."""
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = -rotation @ eye
    return out


def test_camera_conversion_round_trips_and_points_blender_camera_down_minus_z():
    intrinsics = np.array([[1200.0, 0, 300.3], [0, 1250.0, 420.7], [0, 0, 1]])
    world_to_camera = look_at_world_to_camera(np.array([0.5, 1.2, 3.0]), [0.0, 0.9, 0.0])
    settings = mm.opencv_to_blender_camera(intrinsics, world_to_camera, (800, 640))
    assert settings["lens"] == pytest.approx(1200.0 * 36.0 / 640)
    assert settings["pixel_aspect"] == pytest.approx(1250.0 / 1200.0)
    target_in_camera = np.linalg.inv(settings["camera_to_world"]) @ [0.0, 0.9, 0.0, 1.0]
    assert target_in_camera[2] < 0 and abs(target_in_camera[0]) < 1e-9  # straight ahead is -Z
    back_k, back_pose = mm.blender_to_opencv_camera(
        settings["lens"],
        settings["sensor_width"],
        settings["shift_x"],
        settings["shift_y"],
        settings["pixel_aspect"],
        settings["camera_to_world"],
        (800, 640),
    )
    np.testing.assert_allclose(back_k, intrinsics, atol=1e-9)
    np.testing.assert_allclose(back_pose, world_to_camera, atol=1e-12)


def test_rigid_transform_parts_round_trip():
    matrices = np.tile(np.eye(4), (5, 1, 1))
    matrices[:, :3, :3] = Rotation.from_rotvec(random_axis_angles(5, seed=11)).as_matrix()
    matrices[:, :3, 3] = np.random.default_rng(12).normal(size=(5, 3))
    translation, quaternion = mm.rigid_transform_parts(matrices)
    np.testing.assert_allclose(mm.rigid_transform_from_parts(translation, quaternion), matrices, atol=1e-12)
