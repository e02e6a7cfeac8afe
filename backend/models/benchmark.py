"""Timing of the networks against their budgets; prints figures (``run()``), asserts nothing.

Budgets on a 2-core CPU: the ``cpu`` ANR preset renders a 256² frame in ≤ 60 ms, and one
training iteration at 128², batch 1 (renderer, discriminator and VGG loss, each forward and
backward, plus the optimizer steps) takes well under 0.5 s. Inputs are random: the cost of
these networks does not depend on the values.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from backend.models.anr import ANRConfig, ANRRenderer, composite_over_background
from backend.models.discriminator import DiscriminatorConfig, MultiScaleDiscriminator
from backend.train.losses import PerceptualLoss, discriminator_loss, generator_loss, mask_loss, photometric_loss


def median_ms(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _frame(config: ANRConfig, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    neural = torch.rand(1, config.texture_channels, size, size, generator=generator) * 2 - 1
    normals = torch.rand(1, 3, size, size, generator=generator) * 2 - 1
    return neural, normals


def render_time(preset: str = "cpu", size: int = 256, repeats: int = 20) -> float:
    """Median ms of one ``ANRRenderer.render`` (inference mode, channels-last) at ``size``²."""
    config = ANRConfig.preset(preset)
    renderer = ANRRenderer(config).eval().to(memory_format=torch.channels_last)
    neural, normals = _frame(config, size, torch.Generator().manual_seed(0))
    return median_ms(lambda: renderer.render(neural, normals), repeats)


def training_times(preset: str = "cpu", size: int = 128, repeats: int = 10) -> dict[str, float]:
    """Median ms of each part of a training iteration at ``size``², batch 1, and of a whole iteration."""
    generator = torch.Generator().manual_seed(0)
    config = ANRConfig.preset(preset)
    renderer = ANRRenderer(config).to(memory_format=torch.channels_last)
    discriminator = MultiScaleDiscriminator(DiscriminatorConfig.preset(preset, in_channels=6))
    discriminator.to(memory_format=torch.channels_last)
    perceptual = PerceptualLoss("random")  # same cost as the pretrained network
    optimizer_r = torch.optim.Adam(renderer.parameters(), lr=1e-3)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=1e-3)

    cl = torch.channels_last
    neural, normals = (t.contiguous(memory_format=cl) for t in _frame(config, size, generator))
    truth = (torch.rand(1, 3, size, size, generator=generator) * 2 - 1).contiguous(memory_format=cl)
    truth_mask = (torch.rand(1, 1, size, size, generator=generator) > 0.5).float()
    background = torch.zeros(1, 3, size, size)
    condition = normals

    def renderer_step() -> torch.Tensor:
        out = renderer(neural, normals)
        loss = (
            photometric_loss(out["rgb"], truth)
            + photometric_loss(out["rgb_coarse"], truth)
            + mask_loss(out["mask_logits"], truth_mask)
        )
        loss.backward()
        return loss

    def discriminator_step() -> None:
        with torch.no_grad():
            fake = renderer(neural, normals)["rgb"]
        loss = discriminator_loss(discriminator(truth, condition), discriminator(fake, condition))
        loss.backward()

    def vgg_step() -> None:
        prediction = truth.detach().clone().requires_grad_(True)
        perceptual(prediction, truth).backward()

    def iteration() -> None:
        out = renderer(neural, normals)
        blended = composite_over_background(out["rgb"], out["mask_logits"], background)
        loss_r = (
            photometric_loss(out["rgb"], truth, kind="smooth_l1")
            + photometric_loss(out["rgb_coarse"], truth, kind="smooth_l1")
            + mask_loss(out["mask_logits"], truth_mask)
            + 0.03 * perceptual(blended, truth)
            + 0.001 * generator_loss(discriminator(blended, condition))
        )
        optimizer_r.zero_grad(set_to_none=True)
        loss_r.backward()
        optimizer_r.step()
        loss_d = discriminator_loss(discriminator(truth, condition), discriminator(blended.detach(), condition))
        optimizer_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimizer_d.step()

    return {
        "renderer forward+backward": median_ms(renderer_step, repeats),
        "discriminator forward+backward (real+fake)": median_ms(discriminator_step, repeats),
        "VGG19 loss forward+backward": median_ms(vgg_step, repeats),
        "full iteration (incl. optimizer steps)": median_ms(iteration, repeats),
    }


def run(
    preset: str = "cpu", render_size: int = 256, train_size: int = 128, repeats: int = 10, threads: int | None = None
) -> dict[str, float]:
    """Print and return the timings (``threads`` sets torch's intra-op thread count first)."""
    if threads is not None:
        torch.set_num_threads(threads)
    figures = {f"ANR {preset} render {render_size}² (ms)": render_time(preset, render_size, repeats * 2)}
    for name, value in training_times(preset, train_size, repeats).items():
        figures[f"{name} {train_size}² (ms)"] = value
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, value in figures.items():
        print(f"{name:55s} {value:8.1f}")
    full = next(value for name, value in figures.items() if name.startswith("full iteration"))
    print(f"{'training iterations per second':55s} {1e3 / full:8.2f}")
    return figures


if __name__ == "__main__":
    run()
