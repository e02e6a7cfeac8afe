"""The README's demo: stand-in body models, the sample capture and a contact sheet of it, then a
small ANR avatar trained on the sample capture, its renders of the held-out (unseen) poses, and
the evaluation of the trained against the untrained avatar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backend.bodies import describe_models
from backend.capture.sample import SampleCaptureConfig, contact_sheet, generate_sample_capture
from backend.paths import ModelFolders
from backend.progress import Progress

# About three minutes on 2 CPU cores (reconstruction only, then 1000 steps with the GAN).
DEMO_ITERATIONS = 1500


def run_demo(out: Path, progress: Progress) -> dict[str, Any]:
    """Generate everything the demo shows into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print("Body models in use:\n" + describe_models(ModelFolders()))
    capture = generate_sample_capture(out / "sample_capture", SampleCaptureConfig(), progress=progress)
    sheet = contact_sheet(capture, out / "contact_sheet.png")
    print(f"Sample capture: {capture}\nContact sheet (frames above, masks below): {sheet}")
    avatar = train_demo_avatar(capture, out, progress)
    return {"capture": capture, "contact_sheet": sheet, **avatar}


def train_demo_avatar(capture: Path, out: Path, progress: Progress, iterations: int = DEMO_ITERATIONS) -> dict[str, Any]:
    """Train the CPU-preset ANR avatar on ``capture`` into ``out/avatar`` (continuing an earlier
    run there), render the held-out poses into ``out/held_out_renders`` (PNG + MP4), evaluate the
    trained and the untrained avatar into ``out/evaluation`` and ``out/evaluation_untrained``,
    and print both PSNRs. Returns the paths and the two metric reports."""
    from backend.avatar import load_avatar
    from backend.avatar.folder import record_path
    from backend.capture.files import read_tracking
    from backend.capture.motion import SPLIT_TEST
    from backend.render import bake, evaluate
    from backend.train.config import training_preset
    from backend.train.method import method_config
    from backend.train.trainer import INITIAL_CHECKPOINT, train

    out = Path(out)
    avatar_dir = out / "avatar"
    resume = record_path(avatar_dir).exists()
    print(f"{'Continuing' if resume else 'Training'} an ANR avatar ({iterations} steps at 128², CPU preset): {avatar_dir}")
    train(
        capture, avatar_dir, training_preset("cpu", iterations=iterations, validate_every=250, checkpoint_every=250),
        method_config=method_config("anr", "cpu"), resume=resume, iterations=iterations, progress=progress,
    )
    trained = load_avatar(avatar_dir)
    untrained = load_avatar(avatar_dir, checkpoint=INITIAL_CHECKPOINT)
    report = evaluate(trained, capture, out / "evaluation", progress=progress)
    baseline = evaluate(untrained, capture, out / "evaluation_untrained", progress=progress)
    held_out = [int(frame) for frame in read_tracking(capture).frames_of(SPLIT_TEST)] or None
    renders = bake(trained, capture, out / "held_out_renders", frames=held_out, mp4=True, progress=progress)
    summary = {
        key: {name: result[name] for name in ("psnr", "ssim", "lpips", "temporal_error")}
        for key, result in (("trained", report), ("untrained", baseline))
    }
    (out / "evaluation" / "trained_vs_untrained.json").write_text(json.dumps(summary, indent=1))
    print(
        f"Held-out PSNR: trained {report['psnr']:.2f} dB vs untrained {baseline['psnr']:.2f} dB "
        f"(SSIM {report['ssim']:.3f} vs {baseline['ssim']:.3f}, {len(report['frames'])} unseen poses)\n"
        f"Comparison (ground truth | render | error): {report['files']['comparison']}\n"
        f"Renders of the held-out poses: {renders.out_dir} (+ {renders.video.name})"
    )
    return {
        "avatar": avatar_dir,
        "comparison": Path(report["files"]["comparison"]),
        "renders": renders.out_dir,
        "metrics": report,
        "untrained_metrics": baseline,
    }

