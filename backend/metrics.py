"""Image and video quality metrics: PSNR, SSIM, LPIPS, a temporal-consistency error and tLPIPS.

Tensors are batches ``(B, 3, H, W)`` with values in [0, 1] (``data_range`` 1); video metrics
take one sequence ``(T, 3, H, W)``. Each per-image metric returns a ``(B,)`` tensor. The
``*_numpy`` wrappers accept ``(H, W, 3)`` or ``(N, H, W, 3)`` arrays, uint8 (0–255) or float
(0–1), and return numpy arrays.

LPIPS loads from local weights only (see :mod:`backend.pretrained`); without them the LPIPS
figures are ``None`` and one message says what is missing.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from backend import pretrained
from backend.models.lpips import WEIGHT_KEYS, LPIPSNetwork

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"{what}: expected two (B, C, H, W) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _check_mask(mask: torch.Tensor, image: torch.Tensor, what: str) -> torch.Tensor:
    if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0] or mask.shape[2:] != image.shape[2:]:
        raise ValueError(f"{what}: mask must have shape (B, 1, H, W) matching {tuple(image.shape)}, got {tuple(mask.shape)}")
    return mask.to(image.dtype)


# --------------------------------------------------------------------------------------------
# PSNR


def psnr(
    prediction: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image PSNR in dB, 10·log10(range² / MSE); ``inf`` for identical images.

    With ``mask`` (B, 1, H, W), the MSE is taken over the masked pixels (weighted by the mask).
    """
    _check_pair(prediction, target, "psnr")
    error = (prediction.double() - target.double()).pow(2)
    if mask is None:
        mse = error.flatten(1).mean(dim=1)
    else:
        weights = _check_mask(mask, prediction, "psnr").double().expand_as(error)
        mse = (error * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-12)
    return 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 gives +inf


# --------------------------------------------------------------------------------------------
# SSIM


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (the 2-D window is its outer product)."""
    offsets = torch.arange(size, dtype=dtype) - (size - 1) / 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return window / window.sum()


def ssim_map(prediction: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004), ``(B, C, H − 10, W − 10)``.

    Gaussian window 11×11, σ 1.5, K1 = 0.01, K2 = 0.03, statistics over "valid" windows only
    (no padding), the biased (population) variance, each channel separately.
    """
    _check_pair(prediction, target, "ssim")
    channels, height, width = prediction.shape[1:]
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(f"ssim: images must be at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {height}×{width}")
    x, y = prediction.double(), target.double()
    g = gaussian_window()
    kernel_rows = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    kernel_cols = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(image: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region
        return F.conv2d(F.conv2d(image, kernel_rows, groups=channels), kernel_cols, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(
    prediction: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image mean SSIM over channels and valid windows.

    With ``mask`` (B, 1, H, W), windows are weighted by the mask value at their centre.
    """
    values = ssim_map(prediction, target, data_range=data_range)
    if mask is None:
        return values.flatten(1).mean(dim=1)
    border = SSIM_WINDOW // 2
    centre = _check_mask(mask, prediction, "ssim").double()[:, :, border:-border, border:-border].expand_as(values)
    return (values * centre).flatten(1).sum(1) / centre.flatten(1).sum(1).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# LPIPS


@functools.lru_cache(maxsize=4)
def _cached_lpips(backbone: str, backbone_path: Path, head_path: Path) -> LPIPSNetwork:
    network = LPIPSNetwork(backbone)
    pretrained.load_into(network.net, backbone_path)
    pretrained.load_into(network.lins, head_path)
    return network.requires_grad_(False).eval()


def load_lpips(
    backbone: str = "alex", *, backbone_weights: str | Path | None = None, head_weights: str | Path | None = None
) -> LPIPSNetwork | None:
    """The pretrained LPIPS v0.1 network, or ``None`` (with one logged message) when a file is missing."""
    if backbone not in WEIGHT_KEYS:
        raise ValueError(f"LPIPS backbone must be one of {sorted(WEIGHT_KEYS)}, got {backbone!r}")
    backbone_key, head_key = WEIGHT_KEYS[backbone]
    backbone_path = pretrained.find_weights(backbone_key, backbone_weights)
    head_path = pretrained.find_weights(head_key, head_weights)
    for key, path in ((backbone_key, backbone_path), (head_key, head_path)):
        if path is None:
            pretrained.warn_missing_once(key, "LPIPS figures are unavailable (reported as None).")
            return None
    return _cached_lpips(backbone, backbone_path.resolve(), head_path.resolve())


def lpips(
    prediction: torch.Tensor, target: torch.Tensor, *, network: LPIPSNetwork | None = None, backbone: str = "alex"
) -> torch.Tensor | None:
    """Per-image LPIPS distance for [0, 1] images, or ``None`` when no LPIPS weights are available."""
    _check_pair(prediction, target, "lpips")
    network = network or load_lpips(backbone)
    if network is None:
        return None
    device = next(network.parameters()).device
    with torch.inference_mode():
        return network(prediction.to(device) * 2 - 1, target.to(device) * 2 - 1)


# --------------------------------------------------------------------------------------------
# Temporal consistency


def _check_sequence(render: torch.Tensor, truth: torch.Tensor, what: str) -> None:
    if render.shape != truth.shape or render.dim() != 4 or render.shape[0] < 2:
        raise ValueError(
            f"{what}: expected two (T ≥ 2, C, H, W) sequences of equal shape, "
            f"got {tuple(render.shape)} and {tuple(truth.shape)}"
        )


def temporal_error(render: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean |(r_t − r_{t−1}) − (g_t − g_{t−1})| over pixels, channels and the T − 1 frame pairs.

    Needs no optical flow: it compares how much the render changes between frames with how
    much the ground truth changes. Flicker in the render (or a frozen render while the truth
    moves) raises it; a render equal to the truth, or differing from it by a constant, gives 0.
    """
    _check_sequence(render, truth, "temporal_error")
    change_render = render[1:].double() - render[:-1].double()
    change_truth = truth[1:].double() - truth[:-1].double()
    return (change_render - change_truth).abs().mean()


def tlpips(
    render: torch.Tensor, truth: torch.Tensor, *, network: LPIPSNetwork | None = None, backbone: str = "alex"
) -> torch.Tensor | None:
    """tLPIPS (TecoGAN): mean_t |LPIPS(r_t, r_{t−1}) − LPIPS(g_t, g_{t−1})|; ``None`` without LPIPS weights."""
    _check_sequence(render, truth, "tlpips")
    network = network or load_lpips(backbone)
    if network is None:
        return None
    render_change = lpips(render[1:], render[:-1], network=network)
    truth_change = lpips(truth[1:], truth[:-1], network=network)
    return (render_change - truth_change).abs().mean()


# --------------------------------------------------------------------------------------------
# numpy convenience


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` / ``(N, H, W, 3)`` uint8 or float [0, 1] array → ``(N, 3, H, W)`` float32 tensor."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected images of shape (H, W, 3) or (N, H, W, 3), got {array.shape}")
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    else:
        raise ValueError(f"expected uint8 or float images, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def psnr_numpy(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    return psnr(images_to_tensor(prediction), images_to_tensor(target)).numpy()


def ssim_numpy(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    return ssim(images_to_tensor(prediction), images_to_tensor(target)).numpy()


def lpips_numpy(prediction: np.ndarray, target: np.ndarray, backbone: str = "alex") -> np.ndarray | None:
    result = lpips(images_to_tensor(prediction), images_to_tensor(target), backbone=backbone)
    return None if result is None else result.cpu().numpy()


def video_metrics(
    render: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor, *, backbone: str = "alex"
) -> dict[str, float | None]:
    """Mean PSNR, SSIM, LPIPS, temporal error and tLPIPS of a rendered sequence against its ground truth.

    LPIPS entries are ``None`` without local LPIPS weights; PSNR averages finite values only
    (an exact frame would otherwise make the mean infinite) and is ``inf`` when every frame is exact.
    """
    r = render if isinstance(render, torch.Tensor) else images_to_tensor(render)
    g = truth if isinstance(truth, torch.Tensor) else images_to_tensor(truth)
    frame_psnr = psnr(r, g)
    finite = frame_psnr[torch.isfinite(frame_psnr)]
    network = load_lpips(backbone)
    frame_lpips = lpips(r, g, network=network) if network is not None else None
    temporal = r.shape[0] >= 2
    tl = tlpips(r, g, network=network) if (network is not None and temporal) else None
    return {
        "psnr": float(finite.mean()) if finite.numel() else math.inf,
        "ssim": float(ssim(r, g).mean()),
        "lpips": None if frame_lpips is None else float(frame_lpips.mean()),
        "temporal_error": float(temporal_error(r, g)) if temporal else None,
        "tlpips": None if tl is None else float(tl),
    }
