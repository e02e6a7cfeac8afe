"""The sample capture: deterministic bytes, and tracking consistent with the rendered frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.bodies import load_faceverse, load_mano, load_smplx
from backend.capture import SPLIT_TEST, SPLIT_TRAIN
from backend.capture.folder import CaptureFolder
from backend.capture.sample import STANDINS, _landmarks, SampleCaptureConfig, contact_sheet, generate_sample_capture
from backend.cli import main as cli_main

CONFIG = SampleCaptureConfig(train_frames=10, test_frames=4, size=96, seed=3)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return generate_sample_capture(tmp_path_factory.mktemp("sample") / "capture", CONFIG)


def _project(points: np.ndarray, K: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    camera = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    pixels = camera @ K.T
    return pixels[:, :2] / pixels[:, 2:]


def test_same_seed_same_bytes(capture, tmp_path):
    again = generate_sample_capture(tmp_path / "again", CONFIG)
    names = sorted(p.relative_to(capture) for p in capture.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in names:
        assert (capture / name).read_bytes() == (again / name).read_bytes(), name


def test_layout_split_and_tracking(capture):
    folder = CaptureFolder(capture)
    tracking = folder.tracking
    assert folder.num_frames == 14 and folder.has_masks and folder.image_size == (96, 96)
    assert list(tracking.frames_of(SPLIT_TRAIN)) == list(range(10))
    assert list(tracking.frames_of(SPLIT_TEST)) == list(range(10, 14))
    assert tracking.camera is not None and tracking.faceverse is not None and set(tracking.mano) == {"left", "right"}
    assert np.abs(tracking.motion.expression).max() > 0.1  # the face performs
    tracking.motion.check_finite()


def test_mask_covers_the_projected_body(capture):
    folder = CaptureFolder(capture)
    tracking = folder.tracking
    body = load_smplx(STANDINS)
    params = {k: torch.from_numpy(v) for k, v in tracking.motion.arrays().items() if k != "betas"}
    with torch.no_grad():
        vertices = body(**params).vertices.numpy()
    for frame in (0, 7, 12):
        pixels = _project(vertices[frame], tracking.camera.K[frame], tracking.camera.world_to_camera[frame])
        inside = (pixels >= 0).all(1) & (pixels < 96).all(1)
        assert inside.all(), "the camera keeps the whole body in view"
        mask = folder.mask(frame)
        covered = mask[pixels[:, 1].astype(int), pixels[:, 0].astype(int)] > 0
        assert covered.mean() > 0.97, f"frame {frame}: only {covered.mean():.3f} of the body is inside the mask"
        # and the mask is not just everything: the background is most of the frame
        assert (mask == 0).mean() > 0.5


def test_face_and_hands_follow_the_body(capture):
    tracking = CaptureFolder(capture).tracking
    body, face = load_smplx(STANDINS), load_faceverse(STANDINS)
    params = {k: torch.from_numpy(v) for k, v in tracking.motion.arrays().items() if k != "betas"}
    with torch.no_grad():
        posed = body(**params)
        joints = posed.joints.numpy()
        landmarks = _landmarks(body, posed.vertices).numpy()
        fv = tracking.faceverse
        face_vertices = face(
            exp=torch.from_numpy(fv.expression), rotation=torch.from_numpy(fv.rotation),
            translation=torch.from_numpy(fv.translation),
        ).vertices.numpy()
        # The FaceVerse face sits on the SMPL-X face in every frame: its landmarks match the body's.
        face_landmarks = face_vertices[:, face.keypoint_indices[17:68]]
        error = np.linalg.norm(face_landmarks - landmarks, axis=2).mean(1)
        assert error.max() < 0.01, error
        for side, wrist, first in (("left", 20, 25), ("right", 21, 40)):
            track = tracking.mano[side]
            hand = load_mano(STANDINS, side=side)
            out = hand(
                global_orient=torch.from_numpy(track.global_orient), hand_pose=torch.from_numpy(track.hand_pose),
                transl=torch.from_numpy(track.transl),
            )
            expected = joints[:, [wrist, *range(first, first + 15)]]
            assert np.abs(out.joints.numpy() - expected).max() < 1e-4, side


def test_noise_changes_tracking_not_frames(capture, tmp_path):
    noisy = generate_sample_capture(tmp_path / "noisy", SampleCaptureConfig(**{**CONFIG.__dict__, "noise": 0.05}))
    clean, dirty = CaptureFolder(capture), CaptureFolder(noisy)
    assert (clean.frame(5) == dirty.frame(5)).all()
    difference = dirty.tracking.motion.body_pose - clean.tracking.motion.body_pose
    assert 0.03 < difference.std() < 0.07


def test_cli_and_contact_sheet(tmp_path):
    out = tmp_path / "cli_capture"
    code = cli_main(["--progress", "none", "sample-capture", str(out), "--train-frames", "4", "--test-frames", "2",
                     "--size", "32", "--contact-sheet", str(tmp_path / "sheet.png")])
    assert code == 0 and CaptureFolder(out).num_frames == 6
    from PIL import Image

    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (64, 8 * 32, 3)
    assert contact_sheet(out, tmp_path / "again.png").exists()


# --------------------------------------------------------------------------------------------
# Reading a capture folder: every frame and mask is checked; odd image formats are read right


def _copy(capture, tmp_path):
    import shutil

    return shutil.copytree(capture, tmp_path / "copy")


def _gray(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).convert("L")).astype(int)


def test_every_frame_and_mask_size_is_checked(capture, tmp_path):
    from PIL import Image

    from backend.errors import CaptureFormatError

    copy = _copy(capture, tmp_path)
    Image.open(copy / "frames/000003.png").resize((40, 40)).save(copy / "frames/000003.png")
    Image.open(copy / "masks/000005.png").resize((40, 30)).save(copy / "masks/000005.png")
    folder = CaptureFolder(copy)  # frame 0 is fine: the others are checked as they are read
    assert folder.frame(2).shape == (96, 96, 3) and folder.mask(3).shape == (96, 96)
    for read, name, size in ((folder.frame, "frames/000003.png", "40x40"), (folder.mask, "masks/000005.png", "40x30")):
        with pytest.raises(CaptureFormatError) as error:
            read(3 if name.startswith("frames") else 5)
        assert error.value.path == copy / name and f"size {size} differs" in str(error.value) and "96x96" in str(error.value)


def test_sixteen_bit_frames_and_masks_are_scaled(capture, tmp_path):
    from PIL import Image

    copy = _copy(capture, tmp_path)
    original_frame, original_mask = CaptureFolder(capture).frame(3), CaptureFolder(capture).mask(3)
    assert 0 < original_mask.mean() < 255
    Image.fromarray(_gray(original_frame).astype(np.uint16) * 257).save(copy / "frames/000003.png")
    Image.fromarray(original_mask.astype(np.uint16) * 257).save(copy / "masks/000003.png")
    assert Image.open(copy / "frames/000003.png").mode.startswith("I")  # Pillow's 16-bit grayscale
    folder = CaptureFolder(copy)
    frame = folder.frame(3)
    assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
    assert (frame == frame[..., :1]).all() and (frame[..., 0] == _gray(original_frame)).all()  # not clipped to white
    assert (folder.mask(3) == original_mask).all()


def test_mask_alpha_channel_is_the_mask(capture, tmp_path):
    from PIL import Image

    copy = _copy(capture, tmp_path)
    mask = CaptureFolder(capture).mask(4)
    assert 0 < mask.mean() < 255
    cutout = np.zeros((96, 96, 4), np.uint8)  # black colour, the person in the alpha channel
    cutout[..., 3] = mask
    Image.fromarray(cutout, "RGBA").save(copy / "masks/000004.png")
    Image.fromarray(np.stack([np.zeros_like(mask), mask], axis=2), "LA").save(copy / "masks/000005.png")
    opaque = np.full((96, 96, 4), 255, np.uint8)  # an RGBA export of a gray mask: the alpha cuts nothing out
    opaque[..., :3] = mask[..., None]
    Image.fromarray(opaque, "RGBA").save(copy / "masks/000006.png")
    folder = CaptureFolder(copy)
    for index in (4, 5):
        assert (folder.mask(index) == mask).all(), index
    assert (folder.mask(6) == mask).all()


def test_masks_pair_with_frames_by_name(capture, tmp_path):
    from PIL import Image

    from backend.errors import CaptureFormatError

    copy = _copy(capture, tmp_path)
    (copy / "masks/000005.png").rename(copy / "masks/zzz.png")
    with pytest.raises(CaptureFormatError) as error:
        CaptureFolder(copy)
    assert error.value.path == copy / "masks"
    assert "no mask for frame 000005.png" in str(error.value) and "zzz.png matches no frame" in str(error.value)
    # The extension may differ (PNG masks for JPEG frames): pairing goes by name, not by sorted position.
    (copy / "masks/zzz.png").rename(copy / "masks/000005.png")
    for path in sorted((copy / "frames").iterdir()):
        Image.open(path).save(path.with_suffix(".jpg"), quality=95)
        path.unlink()
    folder = CaptureFolder(copy)
    assert (folder.mask(5) == CaptureFolder(capture).mask(5)).all()


def _video_capture(capture, tmp_path):
    import shutil

    import imageio_ffmpeg

    copy = _copy(capture, tmp_path)
    frames = [CaptureFolder(capture).frame(i) for i in range(14)]
    shutil.rmtree(copy / "frames")
    writer = imageio_ffmpeg.write_frames(str(copy / "video.mp4"), (96, 96), fps=30, quality=10)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return copy, frames


def test_video_frames_are_decoded_on_demand(capture, tmp_path, monkeypatch):
    import imageio_ffmpeg

    copy, frames = _video_capture(capture, tmp_path)
    decoded = []
    read_frames = imageio_ffmpeg.read_frames

    def counting_read_frames(*args, **kwargs):
        stream = read_frames(*args, **kwargs)
        yield next(stream)  # the metadata
        for raw in stream:
            decoded.append(1)
            yield raw

    monkeypatch.setattr(imageio_ffmpeg, "read_frames", counting_read_frames)
    folder = CaptureFolder(copy)
    assert folder.image_size == (96, 96) and folder.num_frames == 14
    assert not decoded  # opening reads the size and count, no frame
    in_order = [folder.frame(i).copy() for i in range(5)]
    assert len(decoded) == 5  # each frame decoded once when read in order
    assert (folder.frame(9) == folder.frame(9)).all() and (folder.frame(-1) == folder.frame(13)).all()
    assert all((folder.frame(i) == in_order[i]).all() for i in (3, 0, 4))  # going back restarts the stream
    for index in (0, 6, 13):  # the right frame, up to compression
        assert np.abs(folder.frame(index).astype(int) - frames[index]).mean() < 3, index
    with pytest.raises(IndexError):
        folder.frame(14)


def test_video_frame_count_and_size_are_checked(capture, tmp_path):
    from backend.capture import read_tracking, write_tracking
    from backend.errors import CaptureFormatError

    copy, _ = _video_capture(capture, tmp_path)
    tracking = read_tracking(copy)
    write_tracking(copy / "tracking.npz", tracking.select(slice(0, 12)))
    with pytest.raises(CaptureFormatError, match="holds 14 frames, tracking has 12") as error:
        CaptureFolder(copy)
    assert error.value.path == copy / "video.mp4"
    tracking.camera.image_size = (96, 128)
    write_tracking(copy / "tracking.npz", tracking)
    with pytest.raises(CaptureFormatError, match="frame size 96x96 differs from the capture's image size 128x96"):
        CaptureFolder(copy)
    (copy / "video.mp4").write_bytes(b"not a video")
    with pytest.raises(CaptureFormatError, match="unreadable video"):
        CaptureFolder(copy)
