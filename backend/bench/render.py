"""``python -m backend bench render``: avatar rendering speed per method and size.

For each method, a real avatar (trained for one step on a small sample capture: the cost does
not depend on the weights) renders held-out poses of the sample capture through the public
path, ``Avatar.render`` (posing, rasterization, feature lookup, generator, read-back), at batch 1
and 4. Beside it:

* the parts: geometry maps (pose + rasterize + interpolate) and the generator alone;
* the **baseline**: the same generator in plain float32, contiguous (NCHW) eager mode under
  ``no_grad`` (none of the inference optimisations ``Method.prepare_inference`` applies);
* the generator's FLOPs per frame (``torch.utils.flop_counter``) and the fraction of this
  machine's peak FLOP/s it reaches, the peak measured in the same run as the median rate of a
  large float32 matmul.

Target on a 2-core CPU: ANR renders 256² frames at ≥ 8 frames/s. Other processes on the machine
slow every figure down; the load average is printed.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from backend.avatar import load_avatar
from backend.bench.stream import machine_description
from backend.capture.folder import CaptureFolder
from backend.capture.motion import SPLIT_TEST
from backend.capture.sample import SampleCaptureConfig
from backend.data.dataset import scale_intrinsics
from backend.data.sample import cached_sample_capture
from backend.models.benchmark import median_ms
from backend.raster import project_to_clip
from backend.train.config import TrainingConfig
from backend.train.method import method_names
from backend.train.trainer import train

BENCH_CAPTURE = SampleCaptureConfig(train_frames=24, test_frames=8, size=64)
MATMUL_SIZE = 2048
TARGET_FPS_256 = 8.0


def peak_matmul_flops(size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """FLOP/s of a large float32 matrix product on this machine (the practical peak)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    seconds = median_ms(lambda: a @ b, repeats) / 1e3
    return 2 * size**3 / seconds


def count_flops(function) -> float:
    with FlopCounterMode(display=False) as counter:
        function()
    return float(counter.get_total_flops())


def _bench_avatar(method: str, root: Path) -> Path:
    capture = cached_sample_capture(BENCH_CAPTURE)
    out = root / f"{method}-avatar"
    train(capture, out, TrainingConfig(method=method, resolution=64, iterations=1, validation_frames=0))
    return out


def _row(label: str, ms: float, extra: str = "") -> str:
    return f"  {label:50s} {ms:8.1f} ms/frame {1e3 / ms:7.1f} frames/s  {extra}"


def run(resolutions: list[int] | None = None, repeats: int = 20) -> dict[str, float]:
    resolutions = resolutions or [256, 512]
    figures: dict[str, float] = {}
    print(f"Machine: {machine_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f} (other processes slow every figure down)")
    peak = peak_matmul_flops()
    print(f"Peak: {peak / 1e9:.1f} GFLOP/s (median of a {MATMUL_SIZE}² float32 matmul)")
    capture = CaptureFolder(cached_sample_capture(BENCH_CAPTURE))
    tracking = capture.tracking
    frames = tracking.frames_of(SPLIT_TEST)[:4]
    poses = {key: value[frames] for key, value in tracking.motion.arrays().items() if key != "betas"}
    with tempfile.TemporaryDirectory(prefix="neural-avatar-bench-") as root:
        for method in method_names():
            avatar = load_avatar(_bench_avatar(method, Path(root)), "auto")
            renderer = getattr(avatar.method, "renderer", None)
            print(f"\n{method.upper()} ({avatar.device}); held-out poses of the sample capture; median of {repeats}")
            for size in resolutions:
                K = scale_intrinsics(tracking.camera.K[frames], capture.image_size, (size, size))
                w2c = tracking.camera.world_to_camera[frames]
                one = {key: value[:1] for key, value in poses.items()}
                full1 = median_ms(lambda: avatar.render(one, K[:1], w2c[:1], size, batch_size=1), repeats)
                full4 = median_ms(lambda: avatar.render(poses, K, w2c, size, batch_size=4), max(3, repeats // 4)) / 4
                maps = avatar.geometry(one, K[:1], w2c[:1], (size, size))
                identity = torch.zeros(1, dtype=torch.long, device=avatar.device)
                geometry_ms = median_ms(lambda: avatar.geometry(one, K[:1], w2c[:1], (size, size)), repeats)
                clip = project_to_clip(avatar.geometry.pose(one), torch.from_numpy(K[:1]), torch.from_numpy(w2c[:1]), (size, size))
                rast_ms = median_ms(lambda: avatar.geometry.rasterizer.rasterize(clip, avatar.geometry.faces, (size, size)), repeats)
                network_ms = median_ms(lambda: avatar.method.render(maps, identity), repeats)
                print(f" {size}²:")
                print(_row("Avatar.render, batch 1 (everything)", full1))
                print(_row("Avatar.render, batch 4 (per frame)", full4))
                print(_row("  geometry maps (pose + raster + interpolate)", geometry_ms))
                print(_row("  rasterization alone", rast_ms))
                print(_row("  features + generator (inference path)", network_ms))
                figures[f"{method} {size} batch1 ms"] = full1
                figures[f"{method} {size} batch4 ms"] = full4
                if renderer is not None:
                    _generator_rows(avatar, renderer, maps, identity, size, repeats, peak, figures, method)
            if 256 in resolutions:
                fps = 1e3 / figures[f"{method} 256 batch4 ms"]
                state = "meets" if fps >= TARGET_FPS_256 else "misses"
                print(f" 256² target ≥ {TARGET_FPS_256:.0f} frames/s: {fps:.1f} frames/s (batch 4) - {state} it")
    return figures


def _generator_rows(avatar, renderer, maps, identity, size, repeats, peak, figures, method) -> None:
    """Generator-only timings, FLOPs and the plain-eager baseline (methods with a ``renderer``)."""
    with torch.inference_mode():
        neural = avatar.method.texture(maps.uv, maps.mask, identity)
    normals = maps.channels_first("normals").contiguous()
    optimised_ms = median_ms(lambda: renderer.render(neural, normals), repeats)
    baseline = copy.deepcopy(renderer).to(memory_format=torch.contiguous_format).float()

    def plain() -> None:
        with torch.no_grad():
            baseline(neural.contiguous(), normals)

    baseline_ms = median_ms(plain, repeats)
    flops = count_flops(lambda: baseline(neural.clone(), normals.clone()))
    for label, ms in (("generator, optimised (inference, channels-last)", optimised_ms), ("baseline: fp32 NCHW eager, no_grad", baseline_ms)):
        rate = flops / (ms / 1e3)
        print(_row(f"  {label}", ms, f"{flops / 1e9:.2f} GFLOP, {rate / 1e9:.1f} GFLOP/s = {rate / peak:.0%} of peak"))
    figures[f"{method} {size} generator ms"] = optimised_ms
    figures[f"{method} {size} baseline generator ms"] = baseline_ms
    figures[f"{method} {size} peak fraction"] = flops / (optimised_ms / 1e3) / peak
