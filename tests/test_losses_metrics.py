"""Losses, pretrained-weight loading, and image / video metrics checked against known values."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend import metrics, pretrained
from backend.errors import ModelFileError
from backend.models.lpips import AlexNetFeatures, LinearHeads
from backend.models.vgg import VGGFeatures
from backend.train import losses


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path, monkeypatch):
    """No real weights from this machine leak in; each test starts with fresh warn-once state."""
    for kind in pretrained.WEIGHTS.values():
        monkeypatch.delenv(kind.env_var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("NEURAL_AVATAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "_lpips_package_dir", lambda: None)
    monkeypatch.setattr(pretrained, "_warned", set())
    metrics._cached_lpips.cache_clear()
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------
# Pixel losses


def test_total_variation():
    assert losses.total_variation(torch.full((2, 3, 8, 8), 0.3)).item() == 0.0
    ramp = torch.arange(8.0).mul(0.1).view(1, 1, 1, 8).expand(1, 3, 5, 8)
    assert losses.total_variation(ramp).item() == pytest.approx(0.1)


def test_photometric_losses():
    prediction = torch.zeros(1, 3, 4, 4)
    target = torch.zeros(1, 3, 4, 4)
    target[..., :2] = 1.0  # half the pixels differ by 1
    assert losses.photometric_loss(prediction, target).item() == pytest.approx(0.5)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0
    assert losses.photometric_loss(prediction, target, mask).item() == pytest.approx(1.0, rel=1e-5)
    assert losses.photometric_loss(prediction, target, 1 - mask).item() == pytest.approx(0.0)
    # SmoothL1(β): quadratic below β, linear above.
    small = torch.full((1, 3, 2, 2), 0.02)
    quadratic = losses.photometric_loss(small, 0 * small, kind="smooth_l1", beta=0.05)
    assert quadratic.item() == pytest.approx(0.5 * 0.02**2 / 0.05)
    linear = losses.photometric_loss(prediction, target, mask, kind="smooth_l1", beta=0.05)
    assert linear.item() == pytest.approx(1 - 0.025, rel=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        losses.photometric_loss(prediction, target[..., :3])
    with pytest.raises(ValueError, match="kind must be"):
        losses.photometric_loss(prediction, target, kind="l2")


def test_mask_loss_is_bce_with_logits():
    logits = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    p = torch.sigmoid(logits)
    expected = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert losses.mask_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------------------------
# Adversarial losses


@pytest.mark.parametrize("kind", ["nonsaturating", "hinge"])
def test_gan_losses_label_ground_truth_as_real(kind):
    big = 20.0
    confident_real = [torch.full((1, 1, 4, 4), big), torch.full((1, 1, 2, 2), big)]
    confident_fake = [torch.full((1, 1, 4, 4), -big), torch.full((1, 1, 2, 2), -big)]
    # A discriminator that is right about both gets (almost) no loss …
    assert losses.discriminator_loss(confident_real, confident_fake, kind).item() < 1e-6
    # … one with swapped labels gets a large loss …
    assert losses.discriminator_loss(confident_fake, confident_real, kind).item() > big
    # … and the generator whose renders are spotted as fake has a large loss.
    assert losses.generator_loss(confident_fake, kind).item() > big - 1
    fooled = losses.generator_loss(confident_real, kind).item()
    assert fooled < 1e-6 if kind == "nonsaturating" else fooled == -big  # hinge: −D(fake)


def test_lsgan_targets():
    ones, zeros = torch.ones(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)
    assert losses.discriminator_loss(ones, zeros, "lsgan").item() == 0.0
    assert losses.discriminator_loss(zeros, ones, "lsgan").item() == 2.0
    assert losses.generator_loss(zeros, "lsgan").item() == 1.0
    with pytest.raises(ValueError, match="GAN loss kind"):
        losses.generator_loss(zeros, "wgan")


def test_feature_matching_loss():
    real = [[torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)]]
    fake = [[torch.zeros(1, 2, 4, 4, requires_grad=True), torch.zeros(1, 2, 2, 2, requires_grad=True)]]
    loss = losses.feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert fake[0][0].grad is not None


def test_r1_penalty_zero_for_constant_discriminator():
    conv = torch.nn.Conv2d(3, 1, 3, padding=1)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.constant_(conv.bias, 0.7)
    real = torch.randn(2, 3, 8, 8, requires_grad=True)
    assert losses.r1_penalty(real, conv(real)).item() == 0.0
    # Logits that do not depend on the input at all.
    assert losses.r1_penalty(real, torch.ones(2, 1, 4, 4)).item() == 0.0


def test_r1_penalty_of_linear_discriminator():
    weight = torch.randn(3, 8, 8)
    real = torch.randn(4, 3, 8, 8, requires_grad=True)
    logits = (real * weight).flatten(1).sum(1)  # ∇ₓD = weight for every sample
    penalty = losses.r1_penalty(real, [logits])
    assert penalty.item() == pytest.approx(weight.square().sum().item(), rel=1e-5)
    assert penalty.requires_grad or not weight.requires_grad
    with pytest.raises(ValueError, match="requires_grad_"):
        losses.r1_penalty(real.detach(), logits)


def test_lazy_r1_schedule_and_scale():
    r1 = losses.LazyR1(gamma=10.0, every=4)
    assert [r1.due(s) for s in range(5)] == [True, False, False, False, True]
    weight = torch.ones(1, 2, 2)
    real = torch.randn(1, 1, 2, 2, requires_grad=True)
    assert r1(real, (real * weight).sum()).item() == pytest.approx(0.5 * 10 * 4 * 4)


def test_gan_weight_schedule():
    assert losses.gan_weight(0) == pytest.approx(1e-3)
    assert losses.gan_weight(1999) == pytest.approx(1e-3)
    assert losses.gan_weight(2000) == pytest.approx(1.1e-3)
    assert losses.gan_weight(62_000) == pytest.approx(1e-3 * 1.1**31)  # still below the cap
    assert losses.gan_weight(64_000) == 0.02
    assert losses.gan_weight(10**7) == 0.02
    with pytest.raises(ValueError):
        losses.gan_weight(-1)


# --------------------------------------------------------------------------------------------
# Perceptual loss and pretrained weights


def test_perceptual_loss_with_random_vgg():
    loss = losses.PerceptualLoss("random")
    assert loss.enabled
    a = torch.rand(1, 3, 32, 32) * 2 - 1
    assert loss(a, a).item() == 0.0
    b = (a + 0.2 * torch.randn_like(a)).requires_grad_(True)
    value = loss(b, a)
    assert value.item() > 0
    value.backward()
    assert b.grad is not None and torch.any(b.grad != 0)
    assert not any(p.requires_grad for p in loss.parameters())
    # Deterministic, and building it leaves the caller's random stream alone.
    state = torch.get_rng_state()
    again = losses.PerceptualLoss("random")
    assert torch.equal(torch.get_rng_state(), state)
    assert again(b.detach(), a).item() == pytest.approx(value.item())


def test_perceptual_loss_without_weights_warns_once_and_is_zero(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        first = losses.PerceptualLoss()
        second = losses.PerceptualLoss()
    assert not first.enabled and not second.enabled
    records = [r for r in caplog.records if "VGG19" in r.getMessage()]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "NEURAL_AVATAR_VGG19" in message and "vgg19-dcbb9e9d.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message  # says where it looked
    assert "disabled" in message
    a = torch.rand(1, 3, 16, 16, requires_grad=True)
    assert first(a, torch.zeros_like(a)).item() == 0.0


def torchvision_like_vgg19_state() -> dict[str, torch.Tensor]:
    """A state dict laid out like torchvision's vgg19 file (all 16 convs + classifier)."""
    full = VGGFeatures("vgg19", last_layer="pool5")
    state = dict(full.state_dict())
    state["classifier.0.weight"] = torch.randn(8, 4)
    state["classifier.0.bias"] = torch.randn(8)
    return state


def test_perceptual_loss_loads_torchvision_file_from_torch_hub(tmp_path):
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    state = torchvision_like_vgg19_state()
    torch.save(state, hub / "vgg19-dcbb9e9d.pth")
    loss = losses.PerceptualLoss()
    assert loss.enabled and loss.weights_path == hub / "vgg19-dcbb9e9d.pth"
    assert torch.equal(loss.vgg.features[28].weight, state["features.28.weight"])


def test_explicit_and_env_weights_and_safetensors(tmp_path, monkeypatch):
    state = torchvision_like_vgg19_state()
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    assert losses.PerceptualLoss(path).weights_path == path
    monkeypatch.setenv("NEURAL_AVATAR_VGG19", str(path))
    assert pretrained.find_weights("vgg19") == path
    monkeypatch.setenv("NEURAL_AVATAR_VGG19", str(tmp_path / "nowhere.pth"))
    with pytest.raises(ModelFileError, match=r"nowhere\.pth.*not found \(\$NEURAL_AVATAR_VGG19\)"):
        pretrained.find_weights("vgg19")


def test_weights_file_problems_name_the_file(tmp_path):
    state = torchvision_like_vgg19_state()
    wrong_shape = dict(state, **{"features.28.weight": torch.zeros(512, 256, 3, 3)})
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(ModelFileError, match=r"shape\.pth: wrong shapes: features\.28\.weight"):
        losses.PerceptualLoss(tmp_path / "shape.pth")
    missing = {k: v for k, v in state.items() if not k.startswith("features.28")}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ModelFileError, match=r"missing\.pth: missing 2 keys \(features\.28\.weight"):
        losses.PerceptualLoss(tmp_path / "missing.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match=r"garbage\.pth: cannot be read as a weights file"):
        losses.PerceptualLoss(tmp_path / "garbage.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_loading_never_unpickles_code(tmp_path, capsys):
    torch.save({"features.0.weight": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ModelFileError, match=r"evil\.pth: holds Python objects besides tensors; refused"):
        pretrained.read_state_dict(tmp_path / "evil.pth")
    assert "must never run" not in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# PSNR / SSIM


def test_psnr_identical_is_inf_and_noise_gives_known_value():
    generator = torch.Generator().manual_seed(1)
    clean = torch.full((2, 3, 128, 128), 0.5)
    assert torch.isinf(metrics.psnr(clean, clean)).all()
    sigma = 0.05
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator)
    expected = 10 * math.log10(1 / sigma**2)  # 26.02 dB
    assert metrics.psnr(noisy, clean) == pytest.approx(torch.full((2,), expected, dtype=torch.float64), abs=0.05)
    # The same images on a 0–255 scale give the same PSNR.
    assert metrics.psnr(noisy * 255, clean * 255, data_range=255.0) == pytest.approx(metrics.psnr(noisy, clean), abs=1e-6)


def test_psnr_with_mask_ignores_outside():
    truth = torch.rand(1, 3, 16, 16)
    render = truth.clone()
    render[..., :8] += 0.1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1
    assert torch.isinf(metrics.psnr(render, truth, mask=mask)).all()
    assert metrics.psnr(render, truth, mask=1 - mask).item() == pytest.approx(20.0, abs=1e-3)


def hand_ssim_single_window(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of one 11×11 window by the textbook formula, weights from exp(-d²/2σ²)."""
    d = np.arange(11) - 5
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * 1.5**2))
    w = g / g.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_matches_hand_computation():
    rng = np.random.default_rng(3)
    x = rng.random((13, 12))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    values = metrics.ssim_map(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])
    assert values.shape == (1, 1, 3, 2)
    for i in range(3):
        for j in range(2):
            expected = hand_ssim_single_window(x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11])
            assert values[0, 0, i, j].item() == pytest.approx(expected, abs=1e-10)
    mean = metrics.ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])
    assert mean.item() == pytest.approx(values.mean().item())


def test_ssim_known_values():
    image = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(metrics.ssim(image, image), torch.ones(2, dtype=torch.float64))
    assert (metrics.ssim(image, 1 - image) < 0.05).all()  # negative image: anti-correlated structure
    # Two flat images: only the luminance term remains, (2ab + C1) / (a² + b² + C1).
    a, b, c1 = 0.5, 0.6, 0.01**2
    def flat_image(value):
        return torch.full((1, 1, 16, 16), value, dtype=torch.float64)

    flat = metrics.ssim(flat_image(a), flat_image(b))
    assert flat.item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)
    with pytest.raises(ValueError, match="at least 11×11"):
        metrics.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_ssim_mask():
    truth = torch.rand(1, 3, 32, 32)
    render = truth.clone()
    render[..., :12] = torch.rand(1, 3, 32, 12)
    full = torch.ones(1, 1, 32, 32)
    torch.testing.assert_close(metrics.ssim(render, truth, mask=full), metrics.ssim(render, truth))
    right = torch.zeros(1, 1, 32, 32)
    right[..., 24:] = 1  # window centres here only see identical pixels
    assert metrics.ssim(render, truth, mask=right).item() == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Temporal consistency and LPIPS


def test_temporal_error():
    truth = torch.rand(5, 3, 16, 16)
    assert metrics.temporal_error(truth, truth).item() == 0.0
    assert metrics.temporal_error(truth + 0.1, truth).item() == pytest.approx(0.0, abs=1e-7)
    static = torch.full((4, 3, 8, 8), 0.5)
    flicker = static + 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0]).view(4, 1, 1, 1)
    assert metrics.temporal_error(flicker, static).item() == pytest.approx(0.2, abs=1e-7)
    with pytest.raises(ValueError, match="T ≥ 2"):
        metrics.temporal_error(truth[:1], truth[:1])


def write_fake_lpips_weights(tmp_path) -> tuple[dict, dict]:
    """Random weights laid out like torchvision's alexnet file and the lpips package's alex.pth."""
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    backbone = AlexNetFeatures().state_dict()
    backbone = {**backbone, "classifier.1.weight": torch.randn(4, 4)}
    torch.save(backbone, hub / "alexnet-owt-7be5be79.pth")
    heads_dir = tmp_path / "cache" / "weights" / "lpips"
    heads_dir.mkdir(parents=True)
    heads = {k: v.abs() for k, v in LinearHeads((64, 192, 384, 256, 256)).state_dict().items()}
    torch.save(heads, heads_dir / "alex.pth")
    return backbone, heads


def test_lpips_unavailable_is_none_with_one_message(caplog):
    image = torch.rand(2, 3, 32, 32)
    with caplog.at_level(logging.WARNING):
        assert metrics.lpips(image, image) is None
        assert metrics.tlpips(image, image) is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "AlexNet" in messages[0] and "NEURAL_AVATAR_ALEXNET" in messages[0]
    summary = metrics.video_metrics(image, image)
    assert summary["lpips"] is None and summary["tlpips"] is None
    assert summary["ssim"] == pytest.approx(1.0) and summary["psnr"] == math.inf and summary["temporal_error"] == 0.0


def test_lpips_from_local_files(tmp_path):
    backbone, heads = write_fake_lpips_weights(tmp_path)
    network = metrics.load_lpips("alex")
    assert network is not None
    assert torch.equal(network.net.features[3].weight, backbone["features.3.weight"])
    assert torch.equal(network.lins.lin4.model[1].weight, heads["lin4.model.1.weight"])
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    assert torch.equal(metrics.lpips(a, a), torch.zeros(2))
    distance = metrics.lpips(a, b)
    assert distance.shape == (2,) and (distance > 0).all()
    torch.testing.assert_close(metrics.lpips(b, a), distance)
    frames = torch.rand(4, 3, 64, 64)
    assert metrics.tlpips(frames, frames).item() == 0.0
    assert metrics.tlpips(frames, frames[[0, 0, 0, 0]]).item() > 0  # render flickers, truth frozen


def test_numpy_wrappers():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    assert np.isinf(metrics.psnr_numpy(image, image)).all()
    other = np.clip(image.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    from_floats = metrics.psnr_numpy(image / 255.0, other / 255.0)[0]
    assert metrics.psnr_numpy(image, other)[0] == pytest.approx(from_floats, abs=1e-6)
    assert metrics.ssim_numpy(image[None].repeat(2, 0), image[None].repeat(2, 0)) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        metrics.images_to_tensor(np.zeros((4, 4)))
