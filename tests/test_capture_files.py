"""tracking.npz and AMASS readers: valid files load; each kind of malformed file is rejected clearly."""

from __future__ import annotations

import numpy as np
import pytest

from backend.capture import (
    SPLIT_TEST,
    CameraTrack,
    FaceVerseTrack,
    ManoTrack,
    SmplxMotion,
    Tracking,
    read_amass,
    read_motion,
    read_tracking,
    write_amass,
    write_tracking,
)
from backend.capture.files import tracking_arrays
from backend.errors import CaptureFormatError

FRAMES = 7


def make_tracking(rng: np.random.Generator) -> Tracking:
    def r(*shape):
        return rng.normal(scale=0.3, size=shape).astype(np.float32)

    motion = SmplxMotion(
        fps=29.97,
        global_orient=r(FRAMES, 3),
        body_pose=r(FRAMES, 63),
        transl=r(FRAMES, 3),
        betas=r(10),
        left_hand_pose=r(FRAMES, 45),
        right_hand_pose=r(FRAMES, 45),
        jaw_pose=r(FRAMES, 3),
        leye_pose=r(FRAMES, 3),
        reye_pose=r(FRAMES, 3),
        expression=r(FRAMES, 10),
        gender="female",
    )
    K = np.array([[300, 0, 128], [0, 300, 128], [0, 0, 1]], np.float32)
    camera = CameraTrack(np.repeat(K[None], FRAMES, 0), np.repeat(np.eye(4, dtype=np.float32)[None], FRAMES, 0), (256, 256))
    face = FaceVerseTrack(identity=r(150), expression=r(FRAMES, 52), rotation=r(FRAMES, 3), translation=r(FRAMES, 3))
    mano = {
        side: ManoTrack(side=side, global_orient=r(FRAMES, 3), hand_pose=r(FRAMES, 45), transl=r(FRAMES, 3))
        for side in ("left", "right")
    }
    split = np.zeros(FRAMES, np.uint8)
    split[-2:] = SPLIT_TEST
    return Tracking(motion=motion, camera=camera, faceverse=face, mano=mano, split=split)


def test_tracking_round_trip(tmp_path):
    original = make_tracking(np.random.default_rng(0))
    path = write_tracking(tmp_path / "tracking.npz", original)
    loaded = read_tracking(tmp_path)  # the folder works too
    for key, value in tracking_arrays(original).items():
        np.testing.assert_array_equal(tracking_arrays(loaded)[key], value, err_msg=key)
    assert loaded.motion.fps == pytest.approx(29.97)
    assert loaded.motion.gender == "female"
    assert list(loaded.frames_of(SPLIT_TEST)) == [5, 6]
    assert read_motion(path).num_frames == FRAMES


def test_tracking_single_camera_broadcasts(tmp_path):
    arrays = tracking_arrays(make_tracking(np.random.default_rng(1)))
    arrays["camera_K"] = arrays["camera_K"][0]
    arrays["camera_world_to_camera"] = arrays["camera_world_to_camera"][0]
    np.savez(tmp_path / "t.npz", **arrays)
    camera = read_tracking(tmp_path / "t.npz").camera
    assert camera.K.shape == (FRAMES, 3, 3) and camera.world_to_camera.shape == (FRAMES, 4, 4)


def _expect_error(tmp_path, arrays: dict, needle: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CaptureFormatError) as info:
        read_tracking(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda a: a.pop("body_pose"), "missing required key 'body_pose'"),
        (lambda a: a.__setitem__("body_pose", np.zeros((FRAMES, 60))), "body_pose must be (frames, 63)"),
        (lambda a: a.__setitem__("transl", np.zeros((FRAMES + 1, 3))), "transl has 8 frames"),
        (lambda a: a["global_orient"].__setitem__((2, 1), np.nan), "'global_orient' holds NaN"),
        (lambda a: a.__setitem__("fps", np.array(-5.0)), "fps must be a positive number"),
        (lambda a: a.pop("image_size"), "missing 'image_size'"),
        (lambda a: a.__setitem__("camera_K", np.zeros((FRAMES, 3, 4))), "'camera_K' must be (3, 3)"),
        (lambda a: a.pop("faceverse_rotation"), "missing 'faceverse_rotation'"),
        (lambda a: a.pop("mano_left_transl"), "missing 'mano_left_transl'"),
        (lambda a: a.__setitem__("split", np.full(FRAMES, 3, np.uint8)), "split entries must be 0"),
        # checked before the uint8 cast, which would make 257 a test frame and 0.7 a training frame
        (lambda a: a.__setitem__("split", np.full(FRAMES, 257, np.int64)), "split[0] is 257"),
        (lambda a: a.__setitem__("split", np.full(FRAMES, 0.7)), "split[0] is 0.7"),
        (lambda a: a.__setitem__("split", np.array(["0"] * FRAMES)), "split[0] is '0'"),
        (lambda a: a.__setitem__("format", np.array("something-else")), "expected 'neural-avatar-tracking'"),
        (lambda a: a.__setitem__("format_version", np.array(99)), "newer than this version reads"),
        (lambda a: a.__setitem__("gender", np.array("robot")), "gender must be"),
        (lambda a: a.__setitem__("gender", np.array(["male", "female"])), "'gender' must be one string"),
        (lambda a: a.__setitem__("image_size", np.array([64.5, 64.0])), "'image_size' must be two positive integers"),
        (lambda a: a.__setitem__("image_size", np.array([0, 64])), "'image_size' must be two positive integers"),
        (lambda a: a.__setitem__("betas", np.zeros((FRAMES, 10))), "betas must be (S,)"),
        (lambda a: a.__setitem__("mano_left_betas", np.zeros((FRAMES, 10))), "mano_left_betas must be (S,)"),
    ],
)
def test_tracking_rejects_malformed(tmp_path, mutate, needle):
    arrays = tracking_arrays(make_tracking(np.random.default_rng(2)))
    mutate(arrays)
    _expect_error(tmp_path, arrays, needle)


def test_split_of_any_integer_or_bool_type_is_read(tmp_path):
    arrays = tracking_arrays(make_tracking(np.random.default_rng(2)))
    for split in (np.array([0, 0, 0, 0, 0, 1, 1], np.int64), np.array([0, 0, 0, 0, 0, 1, 1], bool)):
        np.savez(tmp_path / "t.npz", **{**arrays, "split": split})
        loaded = read_tracking(tmp_path / "t.npz")
        assert loaded.split.dtype == np.uint8 and list(loaded.frames_of(SPLIT_TEST)) == [5, 6]


def test_unreadable_files(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an archive at all")
    with pytest.raises(CaptureFormatError, match="no zip signature"):
        read_tracking(garbage)
    truncated = tmp_path / "truncated.npz"
    write_tracking(tmp_path / "good.npz", make_tracking(np.random.default_rng(3)))
    truncated.write_bytes((tmp_path / "good.npz").read_bytes()[:300])
    with pytest.raises(CaptureFormatError, match="truncated.npz"):
        read_tracking(truncated)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, global_orient=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CaptureFormatError, match="pickled data"):
        read_tracking(pickled)
    with pytest.raises(CaptureFormatError, match="file not found"):
        read_tracking(tmp_path / "missing.npz")


def _amass_arrays(width: int, frames: int = 12, fps_key: str = "mocap_framerate") -> dict:
    rng = np.random.default_rng(width)
    return {
        "poses": rng.normal(scale=0.2, size=(frames, width)),
        "trans": rng.normal(size=(frames, 3)),
        "betas": rng.normal(size=16),
        "gender": np.array(b"male"),
        fps_key: np.array(120.0),
    }


@pytest.mark.parametrize("width, family", [(165, "smplx"), (156, "smplh"), (72, "smpl")])
def test_amass_families(tmp_path, width, family):
    arrays = _amass_arrays(width, fps_key="mocap_frame_rate" if width == 165 else "mocap_framerate")
    np.savez(tmp_path / "m.npz", **arrays)
    motion = read_amass(tmp_path / "m.npz")
    assert motion.source_family == family and motion.up_axis == "z" and motion.gender == "male"
    assert motion.fps == 120.0 and motion.num_frames == 12
    poses = arrays["poses"].astype(np.float32)
    np.testing.assert_array_equal(motion.global_orient, poses[:, :3])
    np.testing.assert_array_equal(motion.body_pose, poses[:, 3:66])
    if family == "smplx":
        np.testing.assert_array_equal(motion.full_pose(), poses)
    elif family == "smplh":  # fingers kept, jaw/eyes zero
        np.testing.assert_array_equal(motion.left_hand_pose, poses[:, 66:111])
        np.testing.assert_array_equal(motion.right_hand_pose, poses[:, 111:156])
        assert not motion.jaw_pose.any()
    else:  # SMPL's two hand joints have no SMPL-X counterpart
        assert not motion.left_hand_pose.any() and not motion.right_hand_pose.any()


def test_amass_round_trip(tmp_path):
    motion = make_tracking(np.random.default_rng(4)).motion
    write_amass(tmp_path / "a.npz", motion)
    back = read_amass(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.full_pose(), motion.full_pose())
    np.testing.assert_array_equal(back.expression, motion.expression)
    np.testing.assert_array_equal(back.transl, motion.transl)
    assert back.fps == pytest.approx(motion.fps)


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda a: a.__setitem__("poses", np.zeros((5, 100))), "width 100; expected 165"),
        (lambda a: a.pop("trans"), "missing required key 'trans'"),
        (lambda a: a.pop("mocap_framerate"), "no frame rate"),
        (lambda a: a.__setitem__("trans", np.zeros((3, 3))), "'trans' must be (12, 3)"),
        (lambda a: a.__setitem__("poses", np.zeros((0, 156))), "at least one frame"),
        (lambda a: a["poses"].__setitem__((0, 0), np.inf), "'poses' holds NaN or infinity"),
        (lambda a: a.__setitem__("expression", np.array(0.5)), "'expression' must be (12, E) to match 'poses', got shape ()"),
        (lambda a: a.__setitem__("expression", np.zeros(12)), "'expression' must be (12, E) to match 'poses', got shape (12,)"),
        (lambda a: a.__setitem__("expression", np.zeros((11, 10))), "'expression' must be (12, E)"),
    ],
)
def test_amass_rejects_malformed(tmp_path, mutate, needle):
    arrays = _amass_arrays(156)
    mutate(arrays)
    path = tmp_path / "bad_amass.npz"
    np.savez(path, **arrays)
    with pytest.raises(CaptureFormatError) as info:
        read_amass(path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_formats_are_told_apart(tmp_path):
    np.savez(tmp_path / "amass.npz", **_amass_arrays(165))
    assert read_motion(tmp_path / "amass.npz").motion.up_axis == "z"
    with pytest.raises(CaptureFormatError, match="looks like an AMASS motion file"):
        read_tracking(tmp_path / "amass.npz")
    write_tracking(tmp_path / "tracking.npz", make_tracking(np.random.default_rng(5)))
    with pytest.raises(CaptureFormatError, match="looks like a tracking file"):
        read_amass(tmp_path / "tracking.npz")


@pytest.mark.parametrize("source", ["y", "-y"])
def test_up_axis_change_keeps_the_posed_body(source):
    """Posing the converted motion gives the original body rotated into the new world."""
    import torch
    from scipy.spatial.transform import Rotation

    from backend.bodies import load_smplx
    from backend.paths import ModelFolders

    body = load_smplx(ModelFolders())
    motion = make_tracking(np.random.default_rng(6)).motion
    motion.up_axis = source
    pelvis = body.rest_joints(torch.from_numpy(motion.betas)).detach().numpy()[0]
    converted = motion.with_up_axis("z", pelvis)
    assert converted.up_axis == "z"

    def pose(m):
        params = {k: torch.from_numpy(v) for k, v in m.arrays().items() if k != "betas"}
        with torch.no_grad():
            return body(betas=torch.from_numpy(m.betas)[None], **params).vertices.numpy()

    up = {"y": np.array([0, 1, 0]), "-y": np.array([0, -1, 0])}[source]
    change, _ = Rotation.align_vectors([[0, 0, 1], [1, 0, 0]], [up, [1, 0, 0]])
    expected = pose(motion) @ change.as_matrix().T
    np.testing.assert_allclose(pose(converted), expected, atol=2e-5)
    back = converted.with_up_axis(source, pelvis)
    np.testing.assert_allclose(back.transl, motion.transl, atol=1e-5)
