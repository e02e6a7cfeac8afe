"""VGG16 / VGG19 convolutional stacks with torchvision's layer layout.

Only ``features`` is built (as an ``nn.Sequential`` named ``features``), so the state-dict keys
are torchvision's (``features.0.weight``, ``features.2.weight``, …) and a torchvision checkpoint
such as ``vgg19-dcbb9e9d.pth`` loads directly (see :mod:`backend.pretrained`). The stack can be
cut after any named layer (``relu5_1`` for the perceptual loss), which saves the deeper layers'
time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

POOL = "M"
# torchvision's configurations "D" (VGG16) and "E" (VGG19).
VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    "vgg19": (64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
}


def vgg_layer_names(variant: str) -> list[str]:
    """Names of the ``features`` layers in order: ``conv1_1, relu1_1, conv1_2, …, pool5``."""
    try:
        layout = VGG_LAYOUTS[variant]
    except KeyError:
        raise ValueError(f"unknown VGG variant {variant!r}; choose one of {sorted(VGG_LAYOUTS)}") from None
    names: list[str] = []
    block, conv = 1, 0
    for item in layout:
        if item == POOL:
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


class VGGFeatures(nn.Module):
    """``features`` of a torchvision VGG, truncated after ``last_layer``.

    ``forward(x)`` returns the activations at ``taps`` (layer names) in the order given. Inputs
    are expected ImageNet-normalised (the caller normalises; see the perceptual loss).
    """

    def __init__(self, variant: str = "vgg19", last_layer: str = "relu5_1", taps: Sequence[str] | None = None):
        super().__init__()
        names = vgg_layer_names(variant)
        if last_layer not in names:
            raise ValueError(f"{variant} has no layer {last_layer!r}; layers are {names}")
        taps = list(taps) if taps is not None else [last_layer]
        for tap in taps:
            if tap not in names[: names.index(last_layer) + 1]:
                raise ValueError(f"tap {tap!r} is not a layer of {variant} up to {last_layer}")
        self.variant = variant
        self.layer_names = names[: names.index(last_layer) + 1]
        self.taps = taps
        self._tap_index = {names.index(tap): position for position, tap in enumerate(taps)}

        layers: list[nn.Module] = []
        channels = 3
        for item in VGG_LAYOUTS[variant]:
            if len(layers) >= len(self.layer_names):
                break
            if item == POOL:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers[: len(self.layer_names)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor | None] = [None] * len(self.taps)
        last_tap = max(self._tap_index)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._tap_index:
                outputs[self._tap_index[index]] = x
            if index == last_tap:
                break
        return outputs  # type: ignore[return-value]
