"""Discriminators: a multi-scale PatchGAN (pix2pixHD style) and RAM-Avatar's temporal variant.

Each scale is a PatchGAN: 4×4 convolutions, stride 2 for ``n_layers`` layers, then two stride-1
layers ending in a one-channel logit map. Scale ``s`` sees the input average-pooled ``s`` times.
Spectral normalisation (default) keeps the discriminator Lipschitz-bounded without a norm layer.

Outputs are raw logits: positive means "looks real". The losses in
:mod:`backend.train.losses` fix the labels (ground truth = real).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from backend.models.config import PresetConfig
from backend.models.unet import make_norm


@dataclass(frozen=True)
class DiscriminatorConfig(PresetConfig):
    """Size of a (multi-scale) PatchGAN; ``in_channels`` counts image + condition channels.

    Presets: ``cpu`` (2 scales of width 32, fast on a few cores), ``gpu`` (pix2pixHD: 3 scales of 64).
    """

    KIND = "discriminator"

    in_channels: int = 3
    base_width: int = 64
    n_layers: int = 3
    num_scales: int = 3
    max_width: int = 512
    spectral: bool = True
    norm: str = "none"  # used only without spectral normalisation

    def __post_init__(self) -> None:
        for name in ("in_channels", "base_width", "n_layers", "num_scales"):
            if getattr(self, name) < 1:
                raise ValueError(f"discriminator {name} must be at least 1, got {getattr(self, name)}")


DISCRIMINATOR_PRESETS: dict[str, DiscriminatorConfig] = {
    "cpu": DiscriminatorConfig(base_width=32, n_layers=3, num_scales=2, max_width=256),
    "gpu": DiscriminatorConfig(base_width=64, n_layers=3, num_scales=3, max_width=512),
}
DiscriminatorConfig.PRESETS = DISCRIMINATOR_PRESETS


class PatchDiscriminator(nn.Module):
    """One PatchGAN scale: ``(B, in_channels, H, W)`` → features per layer, the last is the logit map."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()

        def conv(cin: int, cout: int, stride: int) -> nn.Conv2d:
            layer = nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=2)
            return spectral_norm(layer) if config.spectral else layer

        norm = "none" if config.spectral else config.norm
        width = config.base_width
        layers: list[nn.Module] = [nn.Sequential(conv(config.in_channels, width, 2), nn.LeakyReLU(0.2))]
        for index in range(1, config.n_layers + 1):
            previous, width = width, min(width * 2, config.max_width)
            stride = 2 if index < config.n_layers else 1
            layers.append(nn.Sequential(conv(previous, width, stride), make_norm(norm, width), nn.LeakyReLU(0.2)))
        layers.append(conv(width, 1, 1))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """``forward(image, condition=None)`` → one logit map per scale (finest first).

    With ``return_features=True`` it returns ``(logits, features)`` where ``features[s]`` lists
    the intermediate activations of scale ``s`` (for a feature-matching loss).
    """

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config or DISCRIMINATOR_PRESETS["cpu"]
        self.scales = nn.ModuleList(PatchDiscriminator(self.config) for _ in range(self.config.num_scales))

    def forward(
        self, image: torch.Tensor, condition: torch.Tensor | None = None, *, return_features: bool = False
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        x = image if condition is None else torch.cat([condition, image], dim=1)
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"discriminator expects {self.config.in_channels} input channels (image + condition), "
                f"got a tensor of shape {tuple(x.shape)}"
            )
        logits: list[torch.Tensor] = []
        features: list[list[torch.Tensor]] = []
        for index, scale in enumerate(self.scales):
            if index:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            out = scale(x)
            logits.append(out[-1])
            features.append(out[:-1])
        return (logits, features) if return_features else logits


class TemporalDiscriminator(nn.Module):
    """RAM-Avatar's temporal discriminator: judges a frame triplet (previous, current, next).

    The three frames are stacked into 9 channels (plus an optional condition). A fake triplet is
    (ground truth t−1, rendered t, ground truth t+1), a real one is three ground-truth frames, so
    the discriminator judges both realism and temporal coherence.
    """

    FRAMES = 3

    def __init__(self, config: DiscriminatorConfig | None = None, *, image_channels: int = 3, condition_channels: int = 0):
        super().__init__()
        # The input width follows from the frames and the condition; the config gives the rest.
        base = config or DiscriminatorConfig.preset("cpu", num_scales=1)
        in_channels = self.FRAMES * image_channels + condition_channels
        self.config = DiscriminatorConfig.from_dict({**base.to_dict(), "in_channels": in_channels})
        self.image_channels = image_channels
        self.discriminator = MultiScaleDiscriminator(self.config)

    def forward(
        self,
        previous: torch.Tensor,
        current: torch.Tensor,
        following: torch.Tensor,
        condition: torch.Tensor | None = None,
        *,
        return_features: bool = False,
    ):
        shapes = {tuple(t.shape) for t in (previous, current, following)}
        if len(shapes) != 1:
            raise ValueError(f"the three frames must have the same shape, got {sorted(shapes)}")
        if current.dim() != 4 or current.shape[1] != self.image_channels:
            raise ValueError(f"frames must have shape (B, {self.image_channels}, H, W), got {tuple(current.shape)}")
        triplet = torch.cat([previous, current, following], dim=1)
        return self.discriminator(triplet, condition, return_features=return_features)
