"""The ANR avatar method (Raj et al., "ANR: Articulated Neural Rendering for Virtual Avatars", CVPR 2021).

Inputs: a UV neural texture (8 channels, initialised uniformly in [-1, 1]) sampled at the
rasterized UVs of the posed body template (with ±0.02 sampling-grid jitter while training), and
the camera-space normal map. The two-stage renderer (:class:`backend.models.ANRRenderer`) gives
a coarse RGB, the final RGB and a soft mask that may reach beyond the coarse mesh; the output is
composited over the background with that soft mask.

Losses (Eq. 3-8): L1 on the blended image and on the coarse RGB (inside the ground-truth mask),
mask BCE, VGG19 feature loss (when weights are present), total variation of the blended image
and mask, and a multi-scale adversarial loss (the ground-truth sample is *real*; the spectrally
normalised discriminator can also take lazy R1, off by default). VGG and the discriminator see
the box around the person only. **Split optimisation** (Eq. 9-10): keyframe steps update the texture and the
renderer, the other steps only the renderer.

Backgrounds: the ground truth is composited over a background (a random colour per sample by
default, drawn from torch's generator), so the mask cannot cheat by copying the capture's
backdrop and the colour outside the mask is irrelevant.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from backend.data.dataset import FrameBatch
from backend.features.geometry import GeometryMaps
from backend.features.textures import NeuralTexture
from backend.models.anr import ANR_PRESETS, ANRConfig, ANRRenderer, composite_over_background, to_unit_range
from backend.models.discriminator import DISCRIMINATOR_PRESETS, DiscriminatorConfig, MultiScaleDiscriminator
from backend.train.config import TrainingConfig
from backend.train.losses import (
    GAN_KINDS,
    LazyR1,
    LossWeights,
    PerceptualLoss,
    discriminator_loss,
    generator_loss,
    mask_loss,
    photometric_loss,
    total_variation,
)
from backend.train.method import Method

IMAGE_CHANNELS = 3
CONDITION_CHANNELS = 3  # the discriminator sees the normal map next to the image
BACKGROUNDS = ("random", "black")

# ANR's loss weights (photometric terms are L1 in the [-1, 1] range).
ANR_LOSS_WEIGHTS = LossWeights(
    photometric=1.0,
    coarse_photometric=1.0,
    perceptual=1.0,
    mask=1.0,
    total_variation=1e-4,
    r1_gamma=0.0,  # spectral normalisation already bounds the discriminator; R1 on top stalls it here
    r1_every=16,
    grad_clip_norm=1.0,
)


@dataclass(frozen=True)
class ANRMethodConfig:
    renderer: ANRConfig = ANR_PRESETS["cpu"]
    discriminator: DiscriminatorConfig = replace(DISCRIMINATOR_PRESETS["cpu"], in_channels=IMAGE_CHANNELS + CONDITION_CHANNELS)
    losses: LossWeights = ANR_LOSS_WEIGHTS
    texture_size: int = 256  # the paper's texture is 256² × 8 for 1024² images
    texture_levels: int = 4  # Laplacian-pyramid layers (1 = a plain texture)
    identities: int = 1  # one texture per identity, one shared renderer
    uv_jitter: float = 0.02  # sampling-grid noise in grid units (the paper's ±0.02)
    keyframe_fraction: float = 0.1  # "less than 10 % of training frames"
    keyframe_every: int = 2  # keyframe (texture) steps alternate with renderer-only steps
    background: str = "random"
    learning_rate: float = 1e-3
    texture_learning_rate: float = 1e-2
    discriminator_learning_rate: float = 1e-3
    adam_betas: tuple[float, float] = (0.5, 0.999)
    adversarial: float = 0.02  # weight of the generator's adversarial loss
    adversarial_start: int = 500  # steps of reconstruction-only training before the GAN starts
    discriminator_every: int = 1
    gan_kind: str = "lsgan"
    perceptual_weights: str = ""  # "" = look for local VGG19 weights; "random" (tests); or a path

    def __post_init__(self) -> None:
        expected = IMAGE_CHANNELS + CONDITION_CHANNELS
        if self.discriminator.in_channels != expected:
            raise ValueError(f"discriminator.in_channels must be {expected} (RGB + normal map), got {self.discriminator.in_channels}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.gan_kind not in GAN_KINDS:
            raise ValueError(f"gan_kind must be one of {GAN_KINDS}, got {self.gan_kind!r}")
        if not 0 <= self.keyframe_fraction <= 1:
            raise ValueError(f"keyframe_fraction must be in [0, 1], got {self.keyframe_fraction}")
        if self.uv_jitter < 0 or self.adversarial < 0 or self.adversarial_start < 0:
            raise ValueError("uv_jitter, adversarial and adversarial_start must not be negative")
        if self.keyframe_every < 1 or self.discriminator_every < 1:
            raise ValueError("keyframe_every and discriminator_every must be at least 1")


ANR_METHOD_PRESETS: dict[str, ANRMethodConfig] = {
    "cpu": ANRMethodConfig(),
    "gpu": ANRMethodConfig(
        renderer=ANR_PRESETS["gpu"],
        discriminator=replace(DISCRIMINATOR_PRESETS["gpu"], in_channels=IMAGE_CHANNELS + CONDITION_CHANNELS),
        texture_size=512,
        texture_levels=4,
        texture_learning_rate=1e-3,
        learning_rate=2e-4,
        discriminator_learning_rate=2e-4,
        adversarial=0.05,
        adversarial_start=5000,
    ),
}


def person_box(masks: torch.Tensor, margin: int = 8, step: int = 16, minimum: int = 32) -> tuple[slice, slice]:
    """Rows and columns of the box around every mask of the batch (``margin`` px more, sides
    rounded up to multiples of ``step``); the whole image when the masks are empty.

    The VGG loss and the discriminator only look inside it: most of a full-body frame is
    background, which teaches them nothing and costs time (VGG19 costs more than the renderer).
    """
    height, width = masks.shape[-2:]
    present = masks.detach().amax(dim=(0, 1)) > 0.5
    rows, columns = torch.nonzero(present.any(1)).flatten(), torch.nonzero(present.any(0)).flatten()
    if rows.numel() == 0:
        return slice(0, height), slice(0, width)

    def span(low: int, high: int, size: int) -> slice:
        low, high = max(0, low - margin), min(size, high + 1 + margin)
        length = min(size, max(minimum, -(-(high - low) // step) * step))
        low = min(low, size - length)
        return slice(low, low + length)

    return span(int(rows[0]), int(rows[-1]), height), span(int(columns[0]), int(columns[-1]), width)


class ANRMethod(Method):
    name = "anr"
    config_class = ANRMethodConfig
    presets: ClassVar[dict[str, Any]] = ANR_METHOD_PRESETS

    def __init__(self, config: ANRMethodConfig, template_vertices: torch.Tensor, device: torch.device):
        super().__init__(config, template_vertices, device)
        c = config
        self.texture = NeuralTexture(c.renderer.texture_channels, c.texture_size, c.texture_levels, c.identities).to(self.device)
        self.renderer = ANRRenderer(c.renderer).to(self.device)
        self.discriminator: MultiScaleDiscriminator | None = None
        self.perceptual: PerceptualLoss | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        self._r1 = LazyR1(c.losses.r1_gamma, c.losses.r1_every)

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"uv", "normals"})

    @property
    def divisor(self) -> int:
        return 2**self.config.renderer.depth

    @property
    def keyframe_fraction(self) -> float:
        return self.config.keyframe_fraction

    @property
    def keyframe_every(self) -> int:
        return self.config.keyframe_every

    def render_modules(self) -> dict[str, nn.Module]:
        return {"texture": self.texture, "renderer": self.renderer}

    def modules(self) -> dict[str, nn.Module]:
        modules = self.render_modules()
        if self.discriminator is not None:
            modules["discriminator"] = self.discriminator
        return modules

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return dict(self._optimizers)

    def scalers(self) -> dict[str, Any]:
        return dict(self._scalers)

    # ------------------------------------------------------------------ training

    def setup_training(self, training: TrainingConfig) -> None:
        c = self.config
        self.training = training
        self.discriminator = MultiScaleDiscriminator(c.discriminator).to(self.device)
        weights = c.perceptual_weights or None
        self.perceptual = PerceptualLoss(weights).to(self.device) if c.losses.perceptual > 0 else None
        if self.device.type == "cpu":
            # Channels-last convolutions are markedly faster with oneDNN on the CPU.
            for module in (self.renderer, self.discriminator):
                module.to(memory_format=torch.channels_last)
        adam = dict(betas=tuple(c.adam_betas))
        self._optimizers = {
            "renderer": torch.optim.Adam(self.renderer.parameters(), lr=c.learning_rate, **adam),
            "texture": torch.optim.Adam(self.texture.parameters(), lr=c.texture_learning_rate, **adam),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=c.discriminator_learning_rate, **adam),
        }
        if self.autocast_dtype is not None:
            self._scalers = {"generator": torch.amp.GradScaler("cuda"), "discriminator": torch.amp.GradScaler("cuda")}
        self.train_mode(True)

    def _autocast(self):
        dtype = self.autocast_dtype
        return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _background(self, batch: FrameBatch) -> torch.Tensor:
        size = (batch.images.shape[0], IMAGE_CHANNELS, 1, 1)
        if self.config.background == "black":
            return batch.images.new_full(size, -1.0)
        return torch.rand(size, device=self.device) * 2 - 1

    def _step(self, name: str, loss: torch.Tensor, parameters: list[nn.Parameter], optimizers: list[str]) -> None:
        """Backward, clip and step the named optimizers (through a GradScaler on CUDA)."""
        scaler = self._scalers.get(name)
        for key in optimizers:
            self._optimizers[key].zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            for key in optimizers:
                scaler.unscale_(self._optimizers[key])
        clip = self.config.losses.grad_clip_norm
        if clip > 0:
            nn.utils.clip_grad_norm_(parameters, clip)
        for key in optimizers:
            if scaler:
                scaler.step(self._optimizers[key])
            else:
                self._optimizers[key].step()
        if scaler:
            scaler.update()

    def train_step(self, batch: FrameBatch, step: int) -> dict[str, torch.Tensor]:
        """One ANR step; returns detached scalar loss terms."""
        if self.discriminator is None:
            raise RuntimeError("call setup_training() before train_step()")
        c, w = self.config, self.config.losses
        train_texture = batch.keyframe or c.keyframe_fraction == 0
        maps = batch.maps
        normals = maps.channels_first("normals")
        with torch.set_grad_enabled(train_texture):
            neural = self.texture(maps.uv, maps.mask, batch.identity, jitter=c.uv_jitter)
        background = self._background(batch)
        target = batch.images * batch.masks + background * (1 - batch.masks)
        adversarial = c.adversarial > 0 and step >= c.adversarial_start
        rows, columns = person_box(batch.masks)  # VGG and discriminator look at the person only

        losses: dict[str, torch.Tensor] = {}
        with self._autocast():
            out = self.renderer(neural, normals)
            blended = composite_over_background(out["rgb"], out["mask_logits"], background)
            losses["rgb"] = w.photometric * photometric_loss(blended, target)
            losses["coarse"] = w.coarse_photometric * photometric_loss(out["rgb_coarse"], batch.images, batch.masks)
            losses["mask"] = w.mask * mask_loss(out["mask_logits"], batch.masks)
            if self.perceptual is not None and self.perceptual.enabled:
                losses["vgg"] = w.perceptual * self.perceptual(blended[..., rows, columns], target[..., rows, columns])
            if w.total_variation > 0:
                soft_mask = torch.sigmoid(out["mask_logits"])
                losses["tv"] = w.total_variation * (total_variation(blended) + total_variation(soft_mask))
            if adversarial:
                self.discriminator.requires_grad_(False)
                fake_logits = self.discriminator(blended[..., rows, columns], normals[..., rows, columns])
                losses["adv"] = c.adversarial * generator_loss(fake_logits, c.gan_kind)
                self.discriminator.requires_grad_(True)
            total = sum(losses.values())
        parameters = list(self.renderer.parameters()) + (list(self.texture.parameters()) if train_texture else [])
        self._step("generator", total, parameters, ["renderer"] + (["texture"] if train_texture else []))

        out_losses = {name: value.detach() for name, value in losses.items()}
        if adversarial and step % c.discriminator_every == 0:
            crop = (Ellipsis, rows, columns)
            out_losses.update(
                self._discriminator_step(target[crop], blended.detach()[crop], normals[crop], step // c.discriminator_every)
            )
        out_losses["total"] = total.detach()
        return out_losses

    def _discriminator_step(
        self, real: torch.Tensor, fake: torch.Tensor, condition: torch.Tensor, d_step: int
    ) -> dict[str, torch.Tensor]:
        """One discriminator update; returns its loss and the mean real / fake logits (diagnostics)."""
        assert self.discriminator is not None
        regularise = self._r1.due(d_step)
        real = real.detach().requires_grad_(regularise)
        with self._autocast():
            real_logits = self.discriminator(real, condition)
            fake_logits = self.discriminator(fake, condition)
            loss = discriminator_loss(real_logits, fake_logits, self.config.gan_kind)
        # R1 on each image's mean realness per scale (summing a PatchGAN's logit map would scale
        # the penalty with the number of patches).
        image_scores = [logit.float().flatten(1).mean(1) for logit in real_logits]
        total = loss + self._r1(real, image_scores) if regularise else loss
        self._step("discriminator", total, list(self.discriminator.parameters()), ["discriminator"])
        mean = lambda logits: torch.stack([x.detach().float().mean() for x in logits]).mean()  # noqa: E731
        return {"disc": loss.detach(), "d_real": mean(real_logits), "d_fake": mean(fake_logits)}

    # ------------------------------------------------------------------ rendering

    def prepare_inference(self) -> None:
        super().prepare_inference()
        if self.device.type == "cpu":
            self.renderer.to(memory_format=torch.channels_last)

    def render(self, maps: GeometryMaps, identity: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            neural = self.texture(maps.uv, maps.mask, identity)
            with self._autocast():
                out = self.renderer.render(neural, maps.channels_first("normals"))
            alpha = torch.sigmoid(out["mask_logits"].float())
            rgb = to_unit_range(out["rgb"].float()).clamp(0.0, 1.0)
            return torch.cat([rgb * alpha, alpha], dim=1)
