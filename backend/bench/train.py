"""``python -m backend bench train``: training speed, quality after a fixed budget, and memory.

Trains the CPU preset on the sample capture (360 training + 60 held-out frames at 256²,
generated once into the cache) for a fixed number of steps at 128², batch 1, and prints the wall
time per step (median, and separately before / after the adversarial loss starts), steps per
second, the held-out PSNR of the untrained and the trained avatar (all 60 test frames), and the
process's peak resident memory. A short extra run times a step with the VGG19 perceptual loss
switched on (random weights cost the same as the pretrained ones), as when VGG weights are present.

Targets on a 2-core CPU: ≥ 2 steps/s at 128², batch 1; peak RSS < 4 GiB.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from backend.bench.stream import machine_description
from backend.capture.sample import SampleCaptureConfig
from backend.data.sample import cached_sample_capture
from backend.train.config import training_preset
from backend.train.method import method_config
from backend.train.trainer import train

TARGET_STEPS_PER_SECOND = 2.0
TARGET_RSS_GIB = 4.0
VGG_STEPS = 30


def _sample_capture() -> Path:
    """The sample capture, generated in a child process so its memory is not counted here."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return Path(pool.apply(cached_sample_capture, (SampleCaptureConfig(),)))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3 if values else float("nan")


def run(iterations: int = 600, resolution: int = 128, repeats: int = 1) -> dict[str, float]:
    print(f"Machine: {machine_description()}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} "
          "(other processes slow every figure down)")
    capture = _sample_capture()
    print(f"Sample capture: {capture}")
    config = training_preset("cpu", resolution=resolution, iterations=iterations, validate_every=iterations,
                             checkpoint_every=iterations, validation_frames=60)
    anr = method_config("anr", "cpu")
    runs = []
    for index in range(repeats):
        with tempfile.TemporaryDirectory(prefix="neural-avatar-bench-train-") as root:
            start = time.perf_counter()
            result = train(capture, Path(root) / "avatar", config, method_config=anr)
            wall = time.perf_counter() - start
        steps = result.step_seconds
        gan_from = anr.adversarial_start
        runs.append({
            "median step ms": _median_ms(steps),
            "reconstruction-only step ms": _median_ms(steps[:gan_from]),
            "step with GAN ms": _median_ms(steps[gan_from:]),
            "mean step ms": 1e3 * float(np.mean(steps)),
            "steps/s": len(steps) / result.seconds,
            "training seconds": result.seconds,
            "wall seconds (incl. data preparation)": wall,
            "untrained PSNR": result.validation[0]["psnr"],
            "trained PSNR": result.validation[-1]["psnr"],
        })
        print(f"run {index + 1}: {runs[-1]['steps/s']:.2f} steps/s, held-out PSNR {runs[-1]['trained PSNR']:.2f} dB")
    figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    figures["peak RSS GiB"] = peak_rss_gib()

    print(f"\nANR cpu preset, {resolution}², batch 1, {iterations} steps, {torch.get_num_threads()} threads "
          f"(median of {repeats} run{'s' * (repeats > 1)}); adversarial loss from step {anr.adversarial_start}")
    for key, value in figures.items():
        print(f"  {key:40s} {value:10.2f}")
    print(f"  target ≥ {TARGET_STEPS_PER_SECOND} steps/s: {'met' if figures['steps/s'] >= TARGET_STEPS_PER_SECOND else 'missed'}; "
          f"target peak RSS < {TARGET_RSS_GIB} GiB: {'met' if figures['peak RSS GiB'] < TARGET_RSS_GIB else 'missed'}")

    with tempfile.TemporaryDirectory(prefix="neural-avatar-bench-vgg-") as root:
        vgg = replace(anr, perceptual_weights="random", adversarial_start=0)
        short = replace(config, iterations=VGG_STEPS, validate_every=VGG_STEPS, checkpoint_every=VGG_STEPS, validation_frames=0)
        result = train(capture, Path(root) / "avatar", short, method_config=vgg)
    figures["step with GAN + VGG19 ms"] = _median_ms(result.step_seconds[2:])
    print(f"  {'step with GAN + VGG19 loss ms':40s} {figures['step with GAN + VGG19 ms']:10.2f}  "
          f"({1e3 / figures['step with GAN + VGG19 ms']:.2f} steps/s, as with VGG19 weights present)")
    return figures
