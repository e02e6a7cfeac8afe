"""Training: the ANR method's steps, the loop (validation, checkpoints, cancellation), exact resume
after cancellation and after a killed process, and rejection of damaged avatars."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.avatar import load_avatar
from backend.bodies import load_smplx
from backend.capture.folder import CaptureFolder
from backend.capture.motion import SPLIT_TRAIN
from backend.capture.sample import SampleCaptureConfig
from backend.data import CaptureData
from backend.data.sample import cached_sample_capture
from backend.errors import AvatarError, CheckpointError
from backend.features import BodyRasterizer
from backend.paths import ModelFolders
from backend.progress import CallbackProgress, ProgressEvent, parse_event
from backend.train.anr import ANR_METHOD_PRESETS, ANRMethod, ANRMethodConfig
from backend.train import checkpoint as checkpoint_module
from backend.train.checkpoint import load_checkpoint
from backend.train.config import TrainingConfig, config_from_dict, config_to_dict, training_preset
from backend.train.method import method_class, method_names
from backend.train.trainer import train

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = SampleCaptureConfig(train_frames=24, test_frames=8, size=64)
# Everything switched on (GAN from the first step, a random-weight VGG), at test sizes.
FULL = replace(
    ANR_METHOD_PRESETS["cpu"], texture_size=64, texture_levels=2, adversarial_start=0, perceptual_weights="random",
    losses=replace(ANR_METHOD_PRESETS["cpu"].losses, r1_gamma=1.0, r1_every=4),
)
SMALL = TrainingConfig(resolution=64, iterations=24, checkpoint_every=5, validate_every=12, validation_frames=4)


@pytest.fixture(scope="session")
def tiny_capture(capture_root) -> Path:
    return cached_sample_capture(TINY, capture_root)


def _method(capture: Path, config: ANRMethodConfig, resolution: int = 32):
    torch.manual_seed(0)
    body = load_smplx(ModelFolders())
    folder = CaptureFolder(capture)
    method = ANRMethod(config, body.rest_vertices(), torch.device("cpu"))
    data = CaptureData(folder, BodyRasterizer(body, folder.tracking.motion.betas, method.needs), resolution, divisor=method.divisor)
    method.setup_training(SMALL)
    return method, data


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {name for name, value in module.state_dict().items() if not torch.equal(before[name], value)}


def test_split_optimisation_steps_update_the_right_parts(tiny_capture):
    method, data = _method(tiny_capture, FULL)
    texture, renderer, discriminator = _snapshot(method.texture), _snapshot(method.renderer), _snapshot(method.discriminator)
    losses = method.train_step(data.batch([3], keyframe=False), step=1)
    assert set(losses) == {"rgb", "coarse", "mask", "vgg", "tv", "adv", "total", "disc", "d_real", "d_fake"}
    assert all(torch.isfinite(value) for value in losses.values())
    assert not _changed(texture, method.texture)  # a renderer-only step leaves the texture alone
    renderer_parameters = {name for name, _ in method.renderer.named_parameters()}
    assert _changed(renderer, method.renderer) >= renderer_parameters  # every renderer weight learns
    assert _changed(discriminator, method.discriminator)
    method.train_step(data.batch([5], keyframe=True), step=2)
    assert _changed(texture, method.texture) == {"layers.0", "layers.1"}  # every pyramid level


def test_discriminator_learns_that_ground_truth_is_real(tiny_capture):
    # The renderer is frozen (learning rate 0), so its renders stay poor; the discriminator has
    # to score the ground truth above them.
    frozen = replace(FULL, learning_rate=0.0, texture_learning_rate=0.0, discriminator_learning_rate=2e-3, perceptual_weights="")
    method, data = _method(tiny_capture, frozen)
    gaps = []
    for step in range(30):
        losses = method.train_step(data.batch([step % 20]), step)
        gaps.append(float(losses["d_real"] - losses["d_fake"]))
    assert np.mean(gaps[-5:]) > 0.2 and np.mean(gaps[-5:]) > np.mean(gaps[:5])


def test_short_training_lowers_loss_and_beats_the_untrained_model(tiny_capture, tmp_path):
    events: list[ProgressEvent] = []
    previews = []

    def on_update(event, preview):
        events.append(event)
        if preview is not None:
            previews.append(preview)

    result = train(
        tiny_capture, tmp_path / "avatar", replace(SMALL, iterations=80, validate_every=40, validation_frames=8),
        progress=CallbackProgress(on_update),
    )
    assert result.step == 80 and not result.cancelled
    psnr = [entry["psnr"] for entry in result.validation]
    assert [entry["step"] for entry in result.validation] == [0, 40, 80]
    assert psnr[-1] > psnr[0] + 5, psnr  # held-out frames, never trained on
    totals = [event.losses["total"] for event in events if "total" in event.losses]
    assert totals[-1] < 0.7 * totals[0], totals
    assert previews and previews[0].shape == (64, 128, 3)  # ground truth | render
    assert any(event.eta_seconds is not None for event in events)
    record = json.loads((tmp_path / "avatar" / "avatar.json").read_text())
    assert record["method"] == "anr" and record["resolution"] == [64, 64] and len(record["keyframes"]) == 2
    # Keyframes (which train the texture) are training frames; the held-out frames stay unseen.
    tracking = CaptureFolder(tiny_capture).tracking
    assert set(record["keyframes"]) <= set(tracking.frames_of(SPLIT_TRAIN).tolist())
    assert record["body"]["is_standin"] is True and record["capture"]["test_frames"] == 8
    # The untrained avatar is kept as the "initial" checkpoint.
    assert load_checkpoint(tmp_path / "avatar" / "checkpoints", "initial").step == 0
    assert load_checkpoint(tmp_path / "avatar" / "checkpoints", "best").step == 80


def _checkpoint_tensors(avatar: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = load_checkpoint(avatar / "checkpoints", "latest")
    return checkpoint.step, checkpoint.tensors


def _assert_identical(a: Path, b: Path) -> None:
    step_a, tensors_a = _checkpoint_tensors(a)
    step_b, tensors_b = _checkpoint_tensors(b)
    assert step_a == step_b
    assert tensors_a.keys() == tensors_b.keys()
    different = [key for key in tensors_a if not torch.equal(tensors_a[key], tensors_b[key])]
    assert not different, different[:5]


def test_cancelled_run_resumes_exactly(tiny_capture, tmp_path):
    train(tiny_capture, tmp_path / "straight", SMALL, method_config=FULL)

    def cancel_after_nine(event, preview):
        if event.step >= 9:
            progress.cancel()

    progress = CallbackProgress(cancel_after_nine)
    stopped = train(tiny_capture, tmp_path / "resumed", SMALL, method_config=FULL, progress=progress)
    assert stopped.cancelled and 9 <= stopped.step < SMALL.iterations
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints", "latest").step == stopped.step  # saved on cancel
    resumed = train(tiny_capture, tmp_path / "resumed", resume=True)
    assert resumed.start_step == stopped.step and resumed.step == SMALL.iterations
    _assert_identical(tmp_path / "straight", tmp_path / "resumed")


def test_cancel_while_preparing_writes_nothing(tiny_capture, tmp_path):
    progress = CallbackProgress(lambda event, preview: None)
    progress.cancel()
    result = train(tiny_capture, tmp_path / "avatar", SMALL, progress=progress)
    assert result.cancelled and result.step == 0
    assert not (tmp_path / "avatar").exists()


def _backend(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "backend", *arguments]


TRAIN_ARGUMENTS = ("--resolution", "64", "--checkpoint-every", "5", "--validate-every", "20", "--threads", "1")


def test_killed_process_resumes_exactly(tiny_capture, tmp_path):
    env = {**os.environ, "NEURAL_AVATAR_JOB_DIR": str(tmp_path)}
    straight = subprocess.run(
        _backend("--progress", "none", "train", str(tiny_capture), "--out", str(tmp_path / "straight"), "--iterations", "40", *TRAIN_ARGUMENTS),
        cwd=REPOSITORY, capture_output=True, text=True, timeout=180, env=env,
    )
    assert straight.returncode == 0, straight.stderr
    killed_dir = tmp_path / "killed"
    events_file = tmp_path / "events.jsonl"
    with open(events_file, "w") as sink:
        process = subprocess.Popen(
            _backend("--progress", "jsonl", "train", str(tiny_capture), "--out", str(killed_dir), "--iterations", "100000", *TRAIN_ARGUMENTS),
            cwd=REPOSITORY, stdout=sink, stderr=subprocess.DEVNULL, env=env,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    step = json.loads((killed_dir / "checkpoints" / "latest.json").read_text())["step"]
                    if step >= 10 and '"rgb"' in events_file.read_text():  # a loss report went out too
                        break
                except (OSError, ValueError):
                    pass
                time.sleep(0.02)
            os.kill(process.pid, signal.SIGKILL)  # mid-run, no chance to save anything
        finally:
            process.wait(30)
    step_at_kill = load_checkpoint(killed_dir / "checkpoints").step
    assert 10 <= step_at_kill < 40
    resumed = subprocess.run(
        _backend("--progress", "none", "train", str(tiny_capture), "--out", str(killed_dir), "--resume", "--iterations", "40", "--threads", "1"),
        cwd=REPOSITORY, capture_output=True, text=True, timeout=180, env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "trained to step 40" in resumed.stdout
    _assert_identical(tmp_path / "straight", killed_dir)

    # The killed run reported structured progress: steps, losses, a preview image file.
    events = [parse_event(line) for line in events_file.read_text().splitlines()]
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert progress and any(e.losses.get("rgb") is not None for e in progress)
    with_preview = [e for e in progress if e.preview]
    assert with_preview and Path(with_preview[0].preview).is_file()


@pytest.fixture(scope="module")
def trained(tiny_capture, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "avatar"
    train(tiny_capture, out, replace(SMALL, iterations=10))
    return out


def test_damaged_avatars_are_rejected(trained, tiny_capture, tmp_path):
    load_avatar(trained)  # intact: loads
    latest = load_checkpoint(trained / "checkpoints").path

    truncated = tmp_path / "truncated"
    shutil.copytree(trained, truncated)
    tensors = truncated / "checkpoints" / latest.with_suffix(".safetensors").name
    tensors.write_bytes(tensors.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_avatar(truncated)
    with pytest.raises(CheckpointError, match="truncated"):
        train(tiny_capture, truncated, resume=True)

    tampered = tmp_path / "tampered"
    shutil.copytree(trained, tampered)
    tensors = tampered / "checkpoints" / latest.with_suffix(".safetensors").name
    data = bytearray(tensors.read_bytes())
    data[-10] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as error:
        load_avatar(tampered)
    assert str(tensors) in str(error.value)

    other = tmp_path / "other-method"
    shutil.copytree(trained, other)
    record = json.loads((other / "avatar.json").read_text())
    record["method"] = "ram"
    (other / "avatar.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="unknown avatar method 'ram'"):
        load_avatar(other)

    with pytest.raises(CheckpointError, match="holds no trained avatar"):
        load_avatar(tmp_path)
    with pytest.raises(CheckpointError, match="avatar folder not found"):
        load_avatar(tmp_path / "missing")


def test_training_refuses_to_overwrite_and_resumes_only_matching_captures(trained, tiny_capture, tmp_path, capture_root):
    with pytest.raises(CheckpointError, match="already holds an avatar"):
        train(tiny_capture, trained, SMALL)
    bigger = cached_sample_capture(replace(TINY, size=96), capture_root)
    with pytest.raises(CheckpointError, match="was trained on 32 frames of \\[64, 64\\] at resolution \\[64, 64\\]"):
        train(bigger, trained, resume=True)


def test_tampered_checkpoint_meta_is_rejected(trained, tiny_capture, tmp_path):
    for name, meta in {"validation": {"validation": [1, 2]}, "best": {"best_psnr": "abc"}}.items():
        avatar = tmp_path / name
        shutil.copytree(trained, avatar)
        latest = load_checkpoint(avatar / "checkpoints").path
        record = json.loads(latest.read_text())
        record["meta"].update(meta)
        latest.write_text(json.dumps(record))
        with pytest.raises(CheckpointError, match=f"{latest.name}: meta.{next(iter(meta))}"):
            train(tiny_capture, avatar, resume=True, iterations=12)
    with pytest.raises(CheckpointError, match="meta.validation"):
        load_avatar(tmp_path / "validation")


def test_resume_refuses_other_settings_and_records_a_new_iteration_count(trained, tiny_capture, tmp_path):
    avatar = tmp_path / "avatar"
    shutil.copytree(trained, avatar)
    gpu = training_preset("gpu", resolution=128, batch_size=4, seed=7)
    with pytest.raises(CheckpointError, match="avatar.json: .*preset 'cpu' → 'gpu', resolution 64 → 128, seed 0 → 7"):
        train(tiny_capture, avatar, gpu, resume=True, iterations=12)
    with pytest.raises(CheckpointError, match=r"\(batch_size 1 → 2\); only the iteration count may change"):
        train(tiny_capture, avatar, replace(SMALL, batch_size=2), resume=True, iterations=12)
    assert load_checkpoint(avatar / "checkpoints").step == 10  # refused before training

    # The same settings, more steps; how the run uses the machine (threads) may differ.
    result = train(tiny_capture, avatar, replace(SMALL, threads=1), resume=True, iterations=12)
    assert result.start_step == 10 and result.step == 12
    assert json.loads((avatar / "avatar.json").read_text())["training"]["iterations"] == 12
    assert train(tiny_capture, avatar, resume=True).step == 12  # the new total is the avatar's now


def test_failed_first_checkpoint_leaves_a_folder_that_trains_again(tiny_capture, tmp_path, monkeypatch):
    def disk_full(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device", filename)

    avatar = tmp_path / "avatar"
    monkeypatch.setattr(checkpoint_module, "save_file", disk_full)
    with pytest.raises(CheckpointError, match=r"initial\.safetensors: could not be written: No space left on device") as error:
        train(tiny_capture, avatar, replace(SMALL, iterations=2))
    assert ".tmp" not in str(error.value)  # names the checkpoint, not the temporary file
    assert not (avatar / "avatar.json").exists()
    monkeypatch.undo()
    assert train(tiny_capture, avatar, replace(SMALL, iterations=2)).step == 2  # no "already holds an avatar"
    assert load_checkpoint(avatar / "checkpoints", "initial").step == 0


DIVERGENCE = replace(SMALL, iterations=12, validate_every=4, checkpoint_every=4, validation_frames=2)


def test_nan_renders_never_become_the_best_checkpoint(tiny_capture, tmp_path, monkeypatch):
    render = ANRMethod.render
    calls = []

    def nan_from_the_third_validation(self, maps, identity):  # validations at steps 0, 4, 8, 12
        calls.append(1)
        image = render(self, maps, identity)
        return image * math.nan if len(calls) >= 3 else image

    monkeypatch.setattr(ANRMethod, "render", nan_from_the_third_validation)
    result = train(tiny_capture, tmp_path / "avatar", DIVERGENCE)
    psnr = {entry["step"]: entry["psnr"] for entry in result.validation}
    assert math.isnan(psnr[8]) and math.isnan(psnr[12]) and math.isfinite(psnr[4])
    assert result.best_psnr == max(psnr[0], psnr[4])
    assert load_checkpoint(tmp_path / "avatar" / "checkpoints", "best").step == 4
    monkeypatch.undo()
    assert load_avatar(tmp_path / "avatar", "cpu").info()["validation_psnr"] is None  # JSON has no NaN


@pytest.mark.parametrize("poisoned_step, symptom", [(6, "step 7: the loss is not finite \\(.*total=nan"), (8, "step 8: the weights hold NaN")])
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tiny_capture, tmp_path, monkeypatch, poisoned_step, symptom):
    train_step = ANRMethod.train_step

    def diverging_step(self, batch, step):
        losses = train_step(self, batch, step)
        if step + 1 == poisoned_step:  # this update leaves NaN weights behind (its own loss was finite)
            with torch.no_grad():
                for parameter in self.renderer.parameters():
                    parameter.fill_(math.nan)
        return losses

    monkeypatch.setattr(ANRMethod, "train_step", diverging_step)
    with pytest.raises(AvatarError, match=f"training diverged at {symptom}.*last good checkpoint is step 4"):
        train(tiny_capture, tmp_path / "avatar", DIVERGENCE)
    checkpoints = tmp_path / "avatar" / "checkpoints"
    assert load_checkpoint(checkpoints, "latest").step == 4 and load_checkpoint(checkpoints, "best").step == 4
    assert all(torch.isfinite(value).all() for value in load_checkpoint(checkpoints).tensors.values() if value.is_floating_point())


def test_methods_and_configs():
    assert method_names() == ["anr"]
    with pytest.raises(ValueError, match="unknown avatar method 'ram'; available: anr"):
        method_class("ram")
    from backend.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "capture", "--out", "x", "--method", "ram"])
    config = ANR_METHOD_PRESETS["gpu"]
    assert config_from_dict(ANRMethodConfig, json.loads(json.dumps(config_to_dict(config)))) == config
    with pytest.raises(ValueError, match="method_config.renderer: unknown keys \\['width'\\]"):
        config_from_dict(ANRMethodConfig, {"renderer": {"width": 3}}, "method_config")
    with pytest.raises(ValueError, match="background must be one of"):
        ANRMethodConfig(background="green")
    with pytest.raises(ValueError, match="training iterations must be at least 1"):
        TrainingConfig(iterations=0)
