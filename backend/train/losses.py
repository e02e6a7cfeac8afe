"""Training losses for the neural renderers (ANR and RAM-Avatar).

Colours are in the renderer's range, **[-1, 1]** (see :mod:`backend.models.anr`); masks are in
[0, 1]. Every loss returns a scalar tensor (mean over the batch).

GAN convention, stated once and used everywhere: discriminator logits are "realness" scores;
**ground-truth samples are real (label 1), rendered samples are fake (label 0)**. (The released
RAM-Avatar code swaps these labels; this module does not.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from backend import pretrained
from backend.models.anr import to_unit_range
from backend.models.vgg import VGGFeatures, vgg_layer_names


Logits = torch.Tensor | Sequence[torch.Tensor]  # one map, or one per discriminator scale
GanKind = Literal["nonsaturating", "lsgan", "hinge"]
GAN_KINDS: tuple[str, ...] = ("nonsaturating", "lsgan", "hinge")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms; the defaults are RAM-Avatar's released values where it has them."""

    photometric: float = 5.0  # SmoothL1(β = 0.05) on the final RGB
    smooth_l1_beta: float = 0.05
    coarse_photometric: float = 5.0  # ANR: the same loss on R1's RGB estimate
    perceptual: float = 0.03  # VGG19 feature L1
    hand_lpips: float = 0.1  # LPIPS on 128² hand crops
    mask: float = 1.0  # ANR: BCE against the matting mask
    total_variation: float = 0.0  # ANR's TV term (off by default; its ablation found it neutral)
    feature_matching: float = 0.0  # pix2pixHD-style discriminator feature matching
    r1_gamma: float = 10.0  # R1 penalty strength (missing from the released RAM-Avatar code)
    r1_every: int = 16  # lazy R1: applied every k discriminator steps
    grad_clip_norm: float = 1.0


# --------------------------------------------------------------------------------------------
# Pixel losses


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


def photometric_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: Literal["l1", "smooth_l1"] = "l1",
    beta: float = 0.05,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean L1 / SmoothL1 difference; with ``mask`` (B, 1 or C, H, W) a mask-weighted mean.

    The weighted mean divides by the mask's total weight, so the loss does not shrink with the
    size of the masked region. Pass a detached mask unless gradients should reach it.
    """
    _check_same_shape(prediction, target, "photometric_loss")
    if kind == "l1":
        per_pixel = (prediction - target).abs()
    elif kind == "smooth_l1":
        per_pixel = F.smooth_l1_loss(prediction, target, reduction="none", beta=beta)
    else:
        raise ValueError(f"photometric loss kind must be 'l1' or 'smooth_l1', got {kind!r}")
    if mask is None:
        return per_pixel.mean()
    if mask.dim() != 4 or mask.shape[0] != prediction.shape[0] or mask.shape[2:] != prediction.shape[2:]:
        raise ValueError(
            f"mask must have shape (B, 1 or C, H, W) matching {tuple(prediction.shape)}, got {tuple(mask.shape)}"
        )
    weights = mask.expand_as(per_pixel)
    return (per_pixel * weights).sum() / (weights.sum() + eps)


def mask_loss(mask_logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between the predicted soft mask (as logits) and a [0, 1] target mask."""
    _check_same_shape(mask_logits, target_mask, "mask_loss")
    return F.binary_cross_entropy_with_logits(mask_logits, target_mask.to(mask_logits.dtype))


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation: mean absolute difference of vertical and of horizontal neighbours."""
    if image.dim() != 4:
        raise ValueError(f"total_variation expects (B, C, H, W), got shape {tuple(image.shape)}")
    vertical = (image[:, :, 1:, :] - image[:, :, :-1, :]).abs().mean()
    horizontal = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().mean()
    return vertical + horizontal


# --------------------------------------------------------------------------------------------
# Perceptual (VGG19 feature) loss

VGG_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG_LAYER_WEIGHTS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)  # pix2pixHD's weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    """Σ_j w_j · mean |φ_j(prediction) − φ_j(target)| over VGG19 activations (images in [-1, 1]).

    ``weights``: ``None`` searches for the torchvision VGG19 file (:mod:`backend.pretrained`) and,
    when there is none, disables the loss (it then returns 0) after one logged warning;
    ``"random"`` uses a randomly initialised VGG19 (seeded; a real network, just not pretrained:
    for tests and for running without the file); a path loads that file or raises.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        layers: Sequence[str] = VGG_LAYERS,
        layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
        seed: int = 0,
    ):
        super().__init__()
        if len(layers) != len(layer_weights):
            raise ValueError(f"{len(layers)} layers but {len(layer_weights)} layer weights")
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        if weights == "random":
            path = None
        else:
            path = pretrained.find_weights("vgg19", weights)
            if path is None:
                pretrained.warn_missing_once("vgg19", "The VGG perceptual loss is disabled (it contributes 0).")
        self.enabled = weights == "random" or path is not None
        self.weights_path = path
        self.vgg: VGGFeatures | None = None
        if self.enabled:
            # A private RNG stream: building the loss must not shift the caller's random sequence.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.vgg = VGGFeatures("vgg19", last_layer=_deepest(layers), taps=layers)
            if path is not None:
                pretrained.load_into(self.vgg, path)
            self.vgg.requires_grad_(False).eval()
            self.vgg.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()  # a fixed feature extractor: never in training mode
        return self

    def _features(self, image: torch.Tensor) -> list[torch.Tensor]:
        assert self.vgg is not None
        normalised = (to_unit_range(image) - self.mean) / self.std
        return self.vgg(normalised.contiguous(memory_format=torch.channels_last))

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_same_shape(prediction, target, "PerceptualLoss")
        if not self.enabled:
            return prediction.new_zeros(())
        with torch.no_grad():
            target_features = self._features(target)
        loss = prediction.new_zeros(())
        for weight, fp, ft in zip(self.layer_weights, self._features(prediction), target_features):
            loss = loss + weight * (fp - ft).abs().mean()
        return loss


def _deepest(layers: Sequence[str]) -> str:
    names = vgg_layer_names("vgg19")
    unknown = [layer for layer in layers if layer not in names]
    if unknown:
        raise ValueError(f"unknown VGG19 layers {unknown}; layers are {names}")
    return max(layers, key=names.index)


# --------------------------------------------------------------------------------------------
# Adversarial losses


def _as_list(logits: Logits) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def _check_kind(kind: str) -> None:
    if kind not in GAN_KINDS:
        raise ValueError(f"GAN loss kind must be one of {GAN_KINDS}, got {kind!r}")


def discriminator_loss(real_logits: Logits, fake_logits: Logits, kind: GanKind = "nonsaturating") -> torch.Tensor:
    """Discriminator loss (averaged over scales): pushes ground truth (real) up, renders (fake) down.

    nonsaturating: softplus(−D(real)) + softplus(D(fake)), i.e. BCE with real = 1, fake = 0;
    lsgan: (D(real) − 1)² + D(fake)²; hinge: relu(1 − D(real)) + relu(1 + D(fake)).
    """
    _check_kind(kind)
    reals, fakes = _as_list(real_logits), _as_list(fake_logits)
    if len(reals) != len(fakes):
        raise ValueError(f"{len(reals)} real but {len(fakes)} fake logit maps")
    total = reals[0].new_zeros(())
    for real, fake in zip(reals, fakes):
        if kind == "nonsaturating":
            total = total + F.softplus(-real).mean() + F.softplus(fake).mean()
        elif kind == "lsgan":
            total = total + (real - 1).pow(2).mean() + fake.pow(2).mean()
        else:
            total = total + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return total / len(reals)


def generator_loss(fake_logits: Logits, kind: GanKind = "nonsaturating") -> torch.Tensor:
    """Generator's adversarial loss (averaged over scales): wants its renders scored as real.

    nonsaturating: softplus(−D(fake)); lsgan: (D(fake) − 1)²; hinge: −D(fake).
    """
    _check_kind(kind)
    fakes = _as_list(fake_logits)
    total = fakes[0].new_zeros(())
    for fake in fakes:
        if kind == "nonsaturating":
            total = total + F.softplus(-fake).mean()
        elif kind == "lsgan":
            total = total + (fake - 1).pow(2).mean()
        else:
            total = total - fake.mean()
    return total / len(fakes)


def feature_matching_loss(
    real_features: Sequence[Sequence[torch.Tensor]], fake_features: Sequence[Sequence[torch.Tensor]]
) -> torch.Tensor:
    """pix2pixHD feature matching: mean L1 between discriminator activations of fake and (detached) real."""
    pairs = [(r, f) for rs, fs in zip(real_features, fake_features) for r, f in zip(rs, fs)]
    if not pairs:
        raise ValueError("feature_matching_loss needs at least one pair of feature maps")
    return sum((f - r.detach()).abs().mean() for r, f in pairs) / len(pairs)


def r1_penalty(real_images: torch.Tensor | Sequence[torch.Tensor], real_logits: Logits) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E‖∇ₓ D(x)‖² on real samples.

    ``real_images`` must have had ``requires_grad_(True)`` before the discriminator saw them; the
    result keeps the graph so it can be back-propagated into the discriminator.
    """
    inputs = [real_images] if isinstance(real_images, torch.Tensor) else list(real_images)
    logits = _as_list(real_logits)
    if not all(x.requires_grad for x in inputs):
        raise ValueError("r1_penalty: call real_images.requires_grad_(True) before running the discriminator on them")
    zero = inputs[0].new_zeros(())
    if not any(logit.requires_grad for logit in logits):
        return zero  # the logits do not depend on the inputs at all
    score = sum(logit.sum() for logit in logits)
    grads = torch.autograd.grad(score, inputs, create_graph=True, allow_unused=True)
    batch = inputs[0].shape[0]
    return sum((g.pow(2).sum() for g in grads if g is not None), zero) / batch


class LazyR1:
    """R1 applied every ``every`` steps, scaled by ``every`` so its average strength is unchanged."""

    def __init__(self, gamma: float = 10.0, every: int = 16):
        if every < 1:
            raise ValueError(f"LazyR1 every must be at least 1, got {every}")
        self.gamma = gamma
        self.every = every

    def due(self, step: int) -> bool:
        return self.gamma > 0 and step % self.every == 0

    def __call__(self, real_images: torch.Tensor | Sequence[torch.Tensor], real_logits: Logits) -> torch.Tensor:
        return 0.5 * self.gamma * self.every * r1_penalty(real_images, real_logits)


def gan_weight(step: int, start: float = 1e-3, growth: float = 1.1, every: int = 2000, cap: float = 0.02) -> float:
    """RAM-Avatar's adversarial-loss weight: min(start · growth^(step // every), cap)."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    return min(start * growth ** (step // every), cap)
