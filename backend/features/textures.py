"""Learnable UV neural textures (Thies et al., Deferred Neural Rendering; used by ANR).

A texture is sampled bilinearly at each pixel's rasterized UV coordinate, giving a
``(B, channels, H, W)`` "neural image" that is zero off the body. Options:

* **Laplacian pyramid** (``levels > 1``): the texture is the sum of ``levels`` layers of sizes
  ``size, size/2, size/4, …``, each sampled at the same UV. Coarse layers receive gradients
  from many pixels and learn the low frequencies quickly; the fine layer keeps the detail.
* **Identities**: one texture per identity in a single parameter (ANR's multi-identity training:
  one renderer, one texture per person); ``identity`` picks each batch element's texture.
* **UV jitter** (ANR's augmentation): the sampling grid, in ``grid_sample``'s [-1, 1] units, is
  perturbed by uniform noise in ``[-jitter, jitter]`` and clamped back to [-1, 1].

ANR initialises the texture uniformly in [-1, 1] (the same draw for every identity, so that the
renderer cannot tell identities apart by their noise). With a pyramid, the finest layer holds
that draw and the coarser layers start at zero, so the summed texture starts out the same.
"""

from __future__ import annotations

import torch
from torch import nn

from backend.raster import texture as sample_texture


class NeuralTexture(nn.Module):
    """``forward(uv (B,H,W,2), mask (B,H,W,1), identity (B,) | None, jitter=0.0) -> (B, C, H, W)``."""

    def __init__(self, channels: int = 8, size: int = 256, levels: int = 1, identities: int = 1):
        super().__init__()
        if channels < 1 or identities < 1 or levels < 1:
            raise ValueError(f"channels, identities and levels must be positive, got {channels}, {identities}, {levels}")
        if size < 2 ** (levels - 1) or size % 2 ** (levels - 1):
            raise ValueError(f"texture size {size} must be a multiple of 2^(levels-1) = {2 ** (levels - 1)}")
        self.channels, self.size, self.identities = channels, size, identities
        first = torch.rand(1, channels, size, size) * 2 - 1
        layers = [first.expand(identities, -1, -1, -1).clone()]
        layers += [torch.zeros(identities, channels, size >> level, size >> level) for level in range(1, levels)]
        self.layers = nn.ParameterList(nn.Parameter(layer) for layer in layers)

    @property
    def levels(self) -> int:
        return len(self.layers)

    def forward(
        self,
        uv: torch.Tensor,
        mask: torch.Tensor,
        identity: torch.Tensor | None = None,
        jitter: float = 0.0,
    ) -> torch.Tensor:
        if uv.dim() != 4 or uv.shape[-1] != 2:
            raise ValueError(f"uv must have shape (B, H, W, 2), got {tuple(uv.shape)}")
        if mask.shape != (*uv.shape[:3], 1):
            raise ValueError(f"mask must have shape {(*uv.shape[:3], 1)}, got {tuple(mask.shape)}")
        uv = uv.float()
        if jitter > 0:
            # ±jitter in grid units ([-1, 1] spans the texture) is ±jitter/2 in UV units ([0, 1]).
            uv = (uv + (torch.rand_like(uv) * 2 - 1) * (jitter / 2)).clamp(0.0, 1.0)
        batch = uv.shape[0]
        if identity is None:
            if self.identities != 1:
                raise ValueError(f"this texture holds {self.identities} identities: pass identity (B,) indices")
            index = None
        else:
            index = identity.to(device=uv.device, dtype=torch.long).reshape(-1)
            if index.numel() != batch or int(index.min()) < 0 or int(index.max()) >= self.identities:
                raise ValueError(f"identity must be {batch} indices in [0, {self.identities}), got {identity.tolist()}")
        image = None
        for layer in self.layers:
            # Every batch element using identity 0 (the common case) broadcasts one texture.
            tex = layer[:1] if index is None or bool((index == 0).all()) else layer[index]
            sampled = sample_texture(tex, uv)
            image = sampled if image is None else image + sampled
        assert image is not None
        return image * mask.permute(0, 3, 1, 2).to(image.dtype)
