"""LPIPS v0.1 (Zhang et al., CVPR 2018), defined here to load the ``lpips`` package's weights.

Layout: a torchvision backbone (AlexNet ``features`` or VGG16 ``features``), five tapped ReLU
outputs, each unit-normalised over channels, squared difference, a 1×1 linear head without bias
(``lin{i}.model.1.weight`` as in the package's ``weights/v0.1/{alex,vgg}.pth``), spatial mean,
sum over the five layers. Inputs are in [-1, 1] and pass through the package's scaling layer.
"""

from __future__ import annotations

import torch
from torch import nn

from backend.models.vgg import VGGFeatures

# The lpips package's ScalingLayer constants (applied to [-1, 1] inputs).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
BACKBONES = ("alex", "vgg")
_CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
_VGG16_TAPS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# Weight kinds in backend.pretrained: (backbone file, linear-head file).
WEIGHT_KEYS = {"alex": ("alexnet", "lpips_alex"), "vgg": ("vgg16", "lpips_vgg")}


class AlexNetFeatures(nn.Module):
    """torchvision's ``alexnet().features`` (keys ``features.0.weight`` …) tapped after each ReLU."""

    TAPS = (1, 4, 7, 9, 11)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                outputs.append(x)
        return outputs


class LinearHead(nn.Module):
    """The package's ``NetLinLayer``: (dropout, 1×1 conv to one channel, no bias)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LinearHeads(nn.Module):
    """``lin0`` … ``lin4``: named so the package's weight files (``lin{i}.model.1.weight``) load as they are."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        for index, width in enumerate(channels):
            self.add_module(f"lin{index}", LinearHead(width))

    def heads(self) -> list[LinearHead]:
        return list(self.children())  # type: ignore[arg-type]


def _unit_normalise(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (torch.sqrt(torch.sum(features**2, dim=1, keepdim=True)) + eps)


class LPIPSNetwork(nn.Module):
    """``forward(a, b) -> (B,)`` perceptual distances for images in [-1, 1].

    Build it with pretrained weights through :func:`backend.metrics.load_lpips`; a freshly
    constructed network has random weights.
    """

    def __init__(self, backbone: str = "alex"):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"LPIPS backbone must be one of {BACKBONES}, got {backbone!r}")
        self.backbone = backbone
        self.net: nn.Module = AlexNetFeatures() if backbone == "alex" else VGGFeatures("vgg16", "relu5_3", _VGG16_TAPS)
        self.lins = LinearHeads(_CHANNELS[backbone])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(
                f"LPIPS compares two (B, 3, H, W) images of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        both = (torch.cat([a, b]) - self.shift) / self.scale
        total = a.new_zeros(a.shape[0])
        for features, head in zip(self.net(both), self.lins.heads()):
            fa, fb = _unit_normalise(features).chunk(2)
            total = total + head((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total
