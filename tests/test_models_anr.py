"""Networks: shapes, gradients reaching every parameter, size checks, torchvision key layout."""

from __future__ import annotations

import pytest
import torch

from backend.models import (
    ANRConfig,
    ANRRenderer,
    DiscriminatorConfig,
    MultiScaleDiscriminator,
    ShallowUNet,
    TemporalDiscriminator,
    VGGFeatures,
    composite_over_background,
)
from backend.models.lpips import LPIPSNetwork
from backend.models.vgg import vgg_layer_names


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def assert_every_parameter_has_gradient(module: torch.nn.Module) -> None:
    missing = [name for name, p in module.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached: {missing}"


# --------------------------------------------------------------------------------------------
# U-Net


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
@pytest.mark.parametrize("norm", ["none", "instance", "group", "batch"])
def test_unet_shape_and_gradients(norm, upsample):
    net = ShallowUNet(5, 7, base_width=8, depth=3, norm=norm, upsample=upsample)
    x = torch.randn(2, 5, 48, 64)
    y = net(x)
    assert y.shape == (2, 7, 48, 64)
    (y**2).mean().backward()
    assert_every_parameter_has_gradient(net)


def test_unet_widths_are_capped():
    net = ShallowUNet(3, 3, base_width=16, depth=4, max_width=48)
    assert net.widths == (16, 32, 48, 48, 48)


@pytest.mark.parametrize("size", [(50, 64), (64, 36), (7, 8)])
def test_unet_rejects_sizes_not_divisible(size):
    net = ShallowUNet(3, 3, base_width=4, depth=3)
    with pytest.raises(ValueError, match=rf"{size[0]}×{size[1]} is not divisible by 8"):
        net(torch.zeros(1, 3, *size))


def test_unet_rejects_bad_settings():
    with pytest.raises(ValueError, match="norm must be one of"):
        ShallowUNet(3, 3, norm="layer")
    with pytest.raises(ValueError, match="upsample must be one of"):
        ShallowUNet(3, 3, upsample="cubic")
    with pytest.raises(ValueError, match="depth"):
        ShallowUNet(3, 3, depth=0)


# --------------------------------------------------------------------------------------------
# ANR renderer


@pytest.mark.parametrize("size", [128, 256])
def test_anr_forward_shapes_and_ranges(size):
    config = ANRConfig.preset("cpu")
    renderer = ANRRenderer(config)
    neural = torch.rand(1, config.texture_channels, size, size) * 2 - 1
    normals = torch.rand(1, 3, size, size) * 2 - 1
    out = renderer(neural, normals)
    assert set(out) == {"rgb_coarse", "rgb", "mask_logits"}
    assert out["rgb"].shape == out["rgb_coarse"].shape == (1, 3, size, size)
    assert out["mask_logits"].shape == (1, 1, size, size)
    for key in ("rgb", "rgb_coarse"):
        assert out[key].min() >= -1 and out[key].max() <= 1


def test_anr_gradients_reach_r1_and_r2():
    config = ANRConfig.preset("cpu", base_width=4, max_width=16)
    renderer = ANRRenderer(config)
    neural = torch.randn(2, config.texture_channels, 32, 32, requires_grad=True)
    out = renderer(neural, torch.randn(2, 3, 32, 32))
    loss = out["rgb"].square().mean() + out["rgb_coarse"].square().mean() + out["mask_logits"].square().mean()
    loss.backward()
    assert_every_parameter_has_gradient(renderer.r1)
    assert_every_parameter_has_gradient(renderer.r2)
    assert neural.grad is not None and torch.any(neural.grad != 0)  # reaches the neural texture too


def test_anr_normals_change_the_output():
    config = ANRConfig.preset("cpu", base_width=4)
    renderer = ANRRenderer(config)
    neural = torch.randn(1, config.texture_channels, 32, 32)
    a = renderer(neural, torch.zeros(1, 3, 32, 32))
    b = renderer(neural, torch.ones(1, 3, 32, 32))
    assert torch.equal(a["rgb_coarse"], b["rgb_coarse"])  # R1 does not see the normals
    assert not torch.allclose(a["rgb"], b["rgb"])


def test_anr_render_path_matches_forward_without_autograd():
    config = ANRConfig.preset("cpu")
    renderer = ANRRenderer(config).eval()
    neural = torch.randn(1, config.texture_channels, 64, 64)
    normals = torch.randn(1, 3, 64, 64)
    expected = renderer(neural, normals)
    fast = ANRRenderer(config).eval()
    fast.load_state_dict(renderer.state_dict())
    fast.to(memory_format=torch.channels_last)
    got = fast.render(neural, normals)
    for key in expected:
        assert not got[key].requires_grad
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-4)


def test_anr_input_errors_are_clear():
    config = ANRConfig.preset("cpu")
    renderer = ANRRenderer(config)
    with pytest.raises(ValueError, match=r"neural_image must have shape \(B, 8, H, W\)"):
        renderer(torch.zeros(1, 5, 64, 64), torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="normal_image must have shape"):
        renderer(torch.zeros(1, 8, 64, 64), torch.zeros(1, 3, 32, 64))
    with pytest.raises(ValueError, match=r"130×128 is not divisible by 8"):
        renderer(torch.zeros(1, 8, 130, 128), torch.zeros(1, 3, 130, 128))


def test_anr_config_presets_and_round_trip():
    cpu, gpu = ANRConfig.preset("cpu"), ANRConfig.preset("gpu")
    assert gpu.base_width > cpu.base_width and gpu.depth >= cpu.depth
    assert ANRConfig.from_dict(cpu.to_dict()) == cpu
    assert ANRConfig.preset("cpu", texture_channels=16).texture_channels == 16
    with pytest.raises(ValueError, match="unknown ANR preset 'tpu'"):
        ANRConfig.preset("tpu")
    with pytest.raises(ValueError, match="unknown discriminator preset 'huge'"):
        DiscriminatorConfig.preset("huge")
    assert DiscriminatorConfig.from_dict(DiscriminatorConfig.preset("gpu").to_dict()).num_scales == 3
    with pytest.raises(ValueError, match="unknown ANR config keys"):
        ANRConfig.from_dict({**cpu.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="latent_channels must be at least 3"):
        ANRConfig(latent_channels=2)


def test_anr_gpu_preset_runs():
    config = ANRConfig.preset("gpu")
    renderer = ANRRenderer(config)
    out = renderer.render(torch.zeros(1, config.texture_channels, 64, 64), torch.zeros(1, 3, 64, 64))
    assert out["rgb"].shape == (1, 3, 64, 64)


def test_composite_over_background():
    rgb, background = torch.ones(1, 3, 2, 2), -torch.ones(1, 3, 2, 2)
    logits = torch.tensor([[[[100.0, -100.0], [0.0, 0.0]]]])
    blended = composite_over_background(rgb, logits, background)
    torch.testing.assert_close(blended[0, :, 0, 0], torch.ones(3))
    torch.testing.assert_close(blended[0, :, 0, 1], -torch.ones(3))
    torch.testing.assert_close(blended[0, :, 1, 0], torch.zeros(3))


# --------------------------------------------------------------------------------------------
# Discriminators


@pytest.mark.parametrize("spectral", [True, False])
def test_multiscale_discriminator_shapes_and_gradients(spectral):
    config = DiscriminatorConfig(in_channels=6, base_width=8, n_layers=3, num_scales=3, spectral=spectral, norm="instance")
    discriminator = MultiScaleDiscriminator(config)
    image = torch.randn(2, 3, 64, 64, requires_grad=True)
    logits, features = discriminator(image, torch.randn(2, 3, 64, 64), return_features=True)
    assert len(logits) == len(features) == 3
    assert [l.shape[:2] for l in logits] == [(2, 1)] * 3
    sizes = [l.shape[-1] for l in logits]
    assert sizes[0] > sizes[1] > sizes[2]
    assert all(len(f) == config.n_layers + 1 for f in features)
    sum(l.mean() for l in logits).backward()
    assert_every_parameter_has_gradient(discriminator)
    assert image.grad is not None and torch.any(image.grad != 0)


def test_discriminator_channel_error():
    discriminator = MultiScaleDiscriminator(DiscriminatorConfig.preset("cpu", in_channels=6))
    with pytest.raises(ValueError, match="expects 6 input channels"):
        discriminator(torch.zeros(1, 3, 64, 64))


def test_temporal_discriminator_judges_triplets():
    discriminator = TemporalDiscriminator(DiscriminatorConfig.preset("cpu", base_width=8, num_scales=2))
    assert discriminator.config.in_channels == 9
    frames = [torch.randn(1, 3, 64, 64) for _ in range(3)]
    logits = discriminator(*frames)
    assert len(logits) == 2 and logits[0].shape[1] == 1
    sum(l.mean() for l in logits).backward()
    assert_every_parameter_has_gradient(discriminator)
    # The order of the frames matters: it sees motion, not a bag of images.
    with torch.no_grad():
        swapped = discriminator(frames[1], frames[0], frames[2])
    assert not torch.allclose(swapped[0], logits[0].detach())
    with pytest.raises(ValueError, match="same shape"):
        discriminator(frames[0], frames[1], torch.zeros(1, 3, 32, 32))


def test_temporal_discriminator_with_condition():
    config = DiscriminatorConfig.preset("cpu", base_width=8, num_scales=1)
    discriminator = TemporalDiscriminator(config, condition_channels=3)
    assert discriminator.config.in_channels == 12
    frames = [torch.randn(1, 3, 32, 32) for _ in range(3)]
    assert len(discriminator(*frames, condition=torch.randn(1, 3, 32, 32))) == 1


# --------------------------------------------------------------------------------------------
# VGG / LPIPS layouts

# torchvision's vgg19().features: conv layers sit at these indices.
TORCHVISION_VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def test_vgg19_keys_match_torchvision_up_to_relu5_1():
    vgg = VGGFeatures("vgg19", last_layer="relu5_1")
    expected = [f"features.{i}.{p}" for i in TORCHVISION_VGG19_CONVS if i <= 28 for p in ("weight", "bias")]
    assert list(vgg.state_dict()) == expected
    assert vgg.state_dict()["features.28.weight"].shape == (512, 512, 3, 3)
    assert vgg.state_dict()["features.0.weight"].shape == (64, 3, 3, 3)
    assert len(vgg.features) == 30  # up to index 29 = relu5_1
    assert vgg_layer_names("vgg19")[29] == "relu5_1"


def test_vgg_taps_have_expected_shapes():
    taps = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    vgg = VGGFeatures("vgg19", "relu5_1", taps)
    outputs = vgg(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape[1:]) for o in outputs] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8), (512, 4, 4)]
    with pytest.raises(ValueError, match="no layer 'relu6_1'"):
        VGGFeatures("vgg19", "relu6_1")


def test_vgg16_layout_for_lpips():
    names = vgg_layer_names("vgg16")
    assert [names.index(n) for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")] == [3, 8, 15, 22, 29]


@pytest.mark.parametrize("backbone,channels", [("alex", [64, 192, 384, 256, 256]), ("vgg", [64, 128, 256, 512, 512])])
def test_lpips_network_layout(backbone, channels):
    network = LPIPSNetwork(backbone)
    keys = network.lins.state_dict()
    assert [tuple(keys[f"lin{i}.model.1.weight"].shape) for i in range(5)] == [(1, c, 1, 1) for c in channels]
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(network(x, x), torch.zeros(2))
    assert network(x, x.flip(0)).shape == (2,)
