"""Neural networks: ANR's two-stage renderer, discriminators, VGG / LPIPS feature networks.

Renderer colours are in [-1, 1] (see :mod:`backend.models.anr`).
"""

from __future__ import annotations

from backend.models.anr import ANR_PRESETS, ANRConfig, ANRRenderer, composite_over_background, from_unit_range, to_unit_range
from backend.models.discriminator import (
    DISCRIMINATOR_PRESETS,
    DiscriminatorConfig,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    TemporalDiscriminator,
)
from backend.models.unet import ShallowUNet
from backend.models.vgg import VGGFeatures

__all__ = [
    "ANR_PRESETS",
    "ANRConfig",
    "ANRRenderer",
    "DISCRIMINATOR_PRESETS",
    "DiscriminatorConfig",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "ShallowUNet",
    "TemporalDiscriminator",
    "VGGFeatures",
    "composite_over_background",
    "from_unit_range",
    "to_unit_range",
]
