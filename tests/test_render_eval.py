"""Rendering with a trained avatar (unseen poses, any size, streaming), baking to PNG/MP4, the
default camera for motions without one, evaluation, and the render / eval commands."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
import torch
from scipy.spatial.transform import Rotation

from backend.avatar import load_avatar
from backend.capture import read_motion, read_tracking, write_amass
from backend.capture.motion import SPLIT_TEST, SmplxMotion
from backend.capture.sample import SampleCaptureConfig
from backend.data import scale_intrinsics
from backend.data.sample import cached_sample_capture
from backend.errors import CaptureFormatError
from backend.render import bake, evaluate, motion_cameras
from backend.render.bake import over_background, straight_rgba
from backend.render.evaluate import EvaluationFrames, consecutive_runs, image_metrics
from backend.train.config import TrainingConfig
from backend.train.trainer import train

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = SampleCaptureConfig(train_frames=24, test_frames=8, size=64)
L_SHOULDER, R_SHOULDER, L_KNEE, R_KNEE = 16, 17, 4, 5


@pytest.fixture(scope="session")
def tiny_capture(capture_root) -> Path:
    return cached_sample_capture(TINY, capture_root)


@pytest.fixture(scope="module")
def avatar_dir(tiny_capture, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("render") / "avatar"
    train(tiny_capture, out, TrainingConfig(resolution=64, iterations=100, validate_every=100, checkpoint_every=100))
    return out


@pytest.fixture(scope="module")
def avatar(avatar_dir):
    return load_avatar(avatar_dir, "cpu")


def _test_frames(capture: Path):
    tracking = read_tracking(capture / "tracking.npz")
    frames = tracking.frames_of(SPLIT_TEST)
    poses = {key: value[frames] for key, value in tracking.motion.arrays().items() if key != "betas"}
    return tracking, frames, poses


def test_render_unseen_poses(avatar, tiny_capture):
    tracking, frames, poses = _test_frames(tiny_capture)
    # Held-out poses, and one no frame shows at all: arms overhead, knees bent.
    pose = {key: value[:1].copy() for key, value in poses.items()}
    body_pose = pose["body_pose"].reshape(1, 21, 3)
    body_pose[0, L_SHOULDER - 1, 2], body_pose[0, R_SHOULDER - 1, 2] = 1.2, -1.2
    body_pose[0, L_KNEE - 1, 0] = body_pose[0, R_KNEE - 1, 0] = 0.9
    pose["body_pose"] = body_pose.reshape(1, 63)
    poses = {key: np.concatenate([poses[key], pose[key]]) for key in poses}
    K = np.concatenate([tracking.camera.K[frames], tracking.camera.K[:1]])
    w2c = np.concatenate([tracking.camera.world_to_camera[frames], tracking.camera.world_to_camera[:1]])
    rgba = avatar.render(poses, K, w2c, 64)
    assert rgba.shape == (9, 64, 64, 4) and rgba.dtype == np.float32
    assert rgba.min() >= 0 and rgba.max() <= 1
    assert np.all(rgba[..., :3] <= rgba[..., 3:] + 1e-6)  # premultiplied
    body = avatar.geometry(poses, K, w2c, (64, 64)).mask[..., 0].numpy() > 0
    alpha = rgba[..., 3]
    assert alpha[body].mean() > 0.6  # opaque where the body is (a short training: not perfect)
    far = ~np.array([_dilate(mask, 6) for mask in body])
    assert alpha[far].mean() < 0.05


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=radius)


def test_render_any_size_and_streaming(avatar, tiny_capture):
    tracking, frames, poses = _test_frames(tiny_capture)
    K = scale_intrinsics(tracking.camera.K[frames[:3]], (64, 64), (70, 50))
    w2c = tracking.camera.world_to_camera[frames[:3]]
    three = {key: value[:3] for key, value in poses.items()}
    batch = avatar.render(three, K, w2c, (70, 50), batch_size=2)
    assert batch.shape == (3, 70, 50, 4)  # not a multiple of the network's step: padded, then cropped
    streamed = list(avatar.render_sequence(three, K, w2c, (70, 50), batch_size=1))
    assert len(streamed) == 3 and np.allclose(np.stack(streamed), batch, atol=1e-5)


def test_render_rejects_bad_input(avatar, tiny_capture):
    tracking, frames, poses = _test_frames(tiny_capture)
    K, w2c = tracking.camera.K[0], tracking.camera.world_to_camera[0]
    with pytest.raises(ValueError, match="K must be \\(3, 3\\) or \\(8, 3, 3\\)"):
        avatar.render(poses, np.eye(4), w2c, 64)
    with pytest.raises(ValueError, match="unknown pose parameters"):
        avatar.render({**poses, "pose": np.zeros((8, 3))}, K, w2c, 64)
    with pytest.raises(ValueError, match="same frame count"):
        avatar.render({**poses, "transl": np.zeros((3, 3))}, K, w2c, 64)
    with pytest.raises(ValueError, match="resolution must be"):
        avatar.render(poses, K, w2c, (0, 64))


def test_info(avatar, avatar_dir, tiny_capture):
    info = avatar.info()
    assert info["method"] == "anr" and info["training_steps"] == 100 and info["resolution"] == [64, 64]
    assert info["capture"]["path"] == str(tiny_capture.resolve()) and info["capture"]["test_frames"] == 8
    assert info["body_models"]["smplx"]["is_standin"] is True and "[stand-in]" in info["body_models"]["smplx"]["label"]
    assert info["validation_psnr"] > 15
    json.dumps(info)  # ready for the wire


def test_bake_writes_straight_alpha_pngs_and_mp4(avatar, tiny_capture, tmp_path):
    tracking, frames, poses = _test_frames(tiny_capture)
    result = bake(avatar, tiny_capture, tmp_path / "out", frames=list(frames[:5]), mp4=True)
    assert result.frames == list(frames[:5]) and result.resolution == (64, 64)
    assert [p.name for p in result.files] == [f"{f:06d}.png" for f in frames[:5]]
    expected = avatar.render({k: v[:5] for k, v in poses.items()}, tracking.camera.K[frames[:5]], tracking.camera.world_to_camera[frames[:5]], 64)
    for path, frame in zip(result.files, expected):
        image = Image.open(path)
        assert image.mode == "RGBA"
        pixels = np.asarray(image).astype(np.float32) / 255
        assert np.abs(pixels[..., 3] - frame[..., 3]).max() <= 1 / 255
        solid = frame[..., 3] > 0.99
        assert np.abs(pixels[..., :3][solid] - frame[..., :3][solid]).max() <= 2 / 255
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(result.video))
    meta = next(reader)
    assert tuple(meta["size"]) == (64, 64) and sum(1 for _ in reader) == 5


def test_default_camera_frames_an_amass_motion(avatar, tiny_capture, tmp_path):
    """A Z-up motion without a camera: the default camera sees the whole body, head up."""
    tracking = read_tracking(tiny_capture / "tracking.npz")
    motion = tracking.motion.select(slice(0, 6))
    # Turn the Y-up performance into Z-up (AMASS) exactly: rotate the root about the pelvis.
    pelvis = avatar.geometry.body.rest_joints(None)[0].detach().numpy()
    turn = Rotation.from_euler("x", 90, degrees=True)
    orient = (turn * Rotation.from_rotvec(motion.global_orient)).as_rotvec().astype(np.float32)
    transl = (turn.apply(motion.transl + pelvis) - pelvis).astype(np.float32)
    arrays = {key: value for key, value in motion.arrays().items() if key not in ("global_orient", "transl", "betas")}
    amass = SmplxMotion(fps=motion.fps, global_orient=orient, transl=transl, betas=motion.betas, **arrays)
    path = write_amass(tmp_path / "motion.npz", amass)
    result = bake(avatar, path, tmp_path / "out", resolution=96)
    assert result.resolution == (96, 96) and len(result.files) == 6
    read_back = read_motion(path)
    K, w2c, _ = motion_cameras(read_back, avatar.geometry, 96)
    poses = {key: value for key, value in read_back.motion.arrays().items() if key != "betas"}
    body = avatar.geometry(poses, K, w2c, (96, 96)).mask[..., 0].numpy() > 0
    rows, columns = np.nonzero(body.any(0))
    assert rows.min() > 0 and rows.max() < 95 and columns.min() > 0 and columns.max() < 95  # every frame in view
    assert body.mean() > 0.05  # and not a speck
    alpha = np.stack([np.asarray(Image.open(p))[..., 3] for p in result.files]) / 255
    assert alpha[body].mean() > 0.6  # the avatar is drawn where the body is
    # Up is up: the highest point (largest z) projects above the lowest.
    vertices = avatar.geometry.pose({k: v[:1] for k, v in poses.items()})[0].numpy()
    camera = vertices @ w2c[0, :3, :3].T + w2c[0, :3, 3]
    image_rows = (camera @ K[0].T)[:, 1] / camera[:, 2]
    assert image_rows[vertices[:, 2].argmax()] < image_rows[vertices[:, 2].argmin()] - 30
    assert np.all(camera[:, 2] > 0)


def test_evaluation_metrics_and_comparison(avatar, avatar_dir, tiny_capture, tmp_path):
    report = evaluate(avatar, tiny_capture, tmp_path)
    assert report["split"] == "test" and len(report["frames"]) == 8 and report["resolution"] == [64, 64]
    assert 15 < report["psnr"] < 60 and 0 < report["ssim"] <= 1 and report["temporal_error"] > 0
    assert report["lpips"] is None or report["lpips"] >= 0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(report["psnr"])
    comparison = np.asarray(Image.open(tmp_path / "comparison.png"))
    assert comparison.shape == (4 * 64, 3 * 64, 3)
    untrained = evaluate(load_avatar(avatar_dir, "cpu", checkpoint="initial"), tiny_capture)
    assert report["psnr"] > untrained["psnr"] + 5 and report["ssim"] > untrained["ssim"]


def test_evaluation_needs_masks(avatar, tiny_capture, tmp_path):
    capture = tmp_path / "capture"
    shutil.copytree(tiny_capture, capture)
    shutil.rmtree(capture / "masks")
    with pytest.raises(CaptureFormatError, match=f"{capture}: has no masks/ folder"):
        evaluate(avatar, capture, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()


def test_diverged_avatar_scores_nan(avatar_dir, tiny_capture, tmp_path):
    diverged = load_avatar(avatar_dir, "cpu")
    with torch.no_grad():
        for module in diverged.method.render_modules().values():
            for parameter in module.parameters():
                parameter.fill_(math.nan)
    report = evaluate(diverged, tiny_capture, tmp_path)
    assert math.isnan(report["psnr"])  # honestly unknown, never +inf ("perfect")
    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    assert saved["psnr"] is None and saved["frame_psnr"] == [None] * 8


def test_image_metrics_on_known_images():
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.2, 0.8, size=(5, 16, 16, 3)).astype(np.float32)
    frames = np.array([3, 4, 5, 9, 10])
    exact = image_metrics(EvaluationFrames(frames, truth, truth.copy()))
    assert exact["psnr"] == float("inf") and exact["ssim"] == pytest.approx(1.0) and exact["temporal_error"] == 0
    shifted = image_metrics(EvaluationFrames(frames, truth, truth + 0.1))
    assert shifted["psnr"] == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert shifted["temporal_error"] == pytest.approx(0.0, abs=1e-6)  # a constant offset does not flicker
    flicker = truth.copy()
    flicker[1] += 0.1  # frame 4 flickers: pairs (3,4) and (4,5) see it, (5,9) is not a pair
    result = image_metrics(EvaluationFrames(frames, truth, flicker))
    assert result["temporal_error"] == pytest.approx((0.1 + 0.1 + 0) / 3, abs=1e-5)
    assert [list(run) for run in consecutive_runs(frames)] == [[0, 1, 2], [3, 4]]
    one_nan = truth + 0.1
    one_nan[2] = np.nan
    assert math.isnan(image_metrics(EvaluationFrames(frames, truth, one_nan))["psnr"])  # not the mean of the others


def test_alpha_conversions():
    premultiplied = np.array([[[0.25, 0.1, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]], np.float32)
    rgba = straight_rgba(premultiplied)
    assert rgba.tolist() == [[[128, 51, 0, 128], [0, 0, 0, 0], [255, 255, 255, 255]]]
    assert over_background(premultiplied, (1.0, 1.0, 1.0)).tolist() == [[[191, 153, 128], [255, 255, 255], [255, 255, 255]]]


def test_render_and_eval_commands(avatar_dir, tiny_capture, tmp_path):
    def run(*arguments):
        result = subprocess.run(
            [sys.executable, "-m", "backend", "--progress", "none", *arguments],
            cwd=REPOSITORY, capture_output=True, text=True, timeout=180,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = run("render", str(avatar_dir), "--tracking", str(tiny_capture / "tracking.npz"), "--out", str(tmp_path / "r"),
              "--frames", "24:28", "--mp4", "--resolution", "96")
    assert "wrote 4 frames (96x96)" in out
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["000024.png", "000025.png", "000026.png", "000027.png", "render.mp4"]
    summary = json.loads(run("eval", str(avatar_dir), str(tiny_capture), "--out", str(tmp_path / "e")))
    assert summary["frames"] == 8 and summary["psnr"] > 15 and Path(summary["comparison"]).is_file()
    failed = subprocess.run(
        [sys.executable, "-m", "backend", "render", str(tmp_path / "nothing"), "--tracking", str(tiny_capture), "--out", str(tmp_path / "x")],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=180,
    )
    assert failed.returncode == 2 and "avatar folder not found" in failed.stderr
