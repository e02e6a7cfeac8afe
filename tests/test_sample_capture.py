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
