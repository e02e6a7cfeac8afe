"""Feature maps: geometry maps of the posed template, neural texture, triplane, keyframes, data pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.bodies import load_smplx
from backend.capture.folder import CaptureFolder
from backend.capture.sample import SampleCaptureConfig
from backend.data import CaptureData, FrameSchedule, PreparationCancelled, scale_intrinsics, scaled_resolution
from backend.data.sample import cached_sample_capture
from backend.features import BodyRasterizer, NeuralTexture, Triplane, keyframe_count, select_keyframes, smplx_parameters
from backend.paths import ModelFolders
from backend.train.anr import person_box

TINY = SampleCaptureConfig(train_frames=24, test_frames=8, size=64)


@pytest.fixture(scope="session")
def tiny_capture(capture_root) -> CaptureFolder:
    return CaptureFolder(cached_sample_capture(TINY, capture_root))


@pytest.fixture(scope="module")
def body():
    return load_smplx(ModelFolders())


@pytest.fixture(scope="module")
def geometry(body, tiny_capture):
    return BodyRasterizer(body, tiny_capture.tracking.motion.betas, ("uv", "normals", "canonical", "expanded"))


def frame_poses(capture: CaptureFolder, frames) -> dict[str, np.ndarray]:
    return {key: value[frames] for key, value in capture.tracking.motion.arrays().items() if key != "betas"}


@pytest.fixture(scope="module")
def maps(geometry, tiny_capture):
    frames = np.array([0, 10, 26])
    camera = tiny_capture.tracking.camera
    return geometry(frame_poses(tiny_capture, frames), camera.K[frames], camera.world_to_camera[frames], (64, 64))


# --------------------------------------------------------------------------------------------
# Geometry maps


def test_geometry_maps_shapes_and_values(maps, geometry, tiny_capture):
    assert maps.mask.shape == (3, 64, 64, 1)
    assert maps.uv.shape == (3, 64, 64, 2) and maps.normals.shape == (3, 64, 64, 3)
    assert maps.canonical.shape == maps.expanded_canonical.shape == (3, 64, 64, 3)
    covered = maps.mask[..., 0] > 0
    assert 0.02 < covered.float().mean() < 0.5
    # uv inside [0, 1] on the body, zero elsewhere; normals unit length on the body.
    assert float(maps.uv[covered].min()) >= 0 and float(maps.uv[covered].max()) <= 1
    assert torch.all(maps.uv[~covered] == 0) and torch.all(maps.normals[~covered] == 0)
    assert torch.allclose(maps.normals[covered].norm(dim=-1), torch.ones(int(covered.sum())), atol=1e-4)
    # Visible surfaces face the camera (camera z looks into the scene): mostly negative z normals.
    assert float((maps.normals[covered][:, 2] < 0).float().mean()) > 0.9
    # Canonical positions lie on the unposed template.
    rest = geometry.rest_vertices
    inside = (maps.canonical[covered] >= rest.amin(0) - 1e-4) & (maps.canonical[covered] <= rest.amax(0) + 1e-4)
    assert bool(inside.all())


def test_body_mask_matches_ground_truth_silhouette(maps, tiny_capture):
    truth = np.stack([tiny_capture.mask(i) for i in (0, 10, 26)]) > 127
    body = maps.mask[..., 0].numpy() > 0
    iou = (truth & body).sum() / (truth | body).sum()
    assert iou > 0.6  # the tunic flares beyond the body, so not 1


def test_expanded_mesh_covers_the_body_and_more(maps, geometry):
    body, expanded = maps.mask[..., 0] > 0, maps.expanded_mask[..., 0] > 0
    assert float((body & ~expanded).float().sum()) <= 0.01 * float(body.float().sum())
    assert float(expanded.float().sum()) > float(body.float().sum())
    # Its canonical positions are pushed out from the template along the rest normals.
    centre = geometry.rest_vertices.mean(0)
    both = body & expanded
    assert float((maps.expanded_canonical[both] - centre).norm(dim=-1).mean()) > float((maps.canonical[both] - centre).norm(dim=-1).mean())


def test_geometry_rejects_bad_cameras(geometry, tiny_capture):
    poses = frame_poses(tiny_capture, [0, 1])
    with pytest.raises(ValueError, match="K must be"):
        geometry(poses, np.eye(4), np.eye(4), (32, 32))
    with pytest.raises(ValueError, match="world_to_camera holds NaN"):
        geometry(poses, np.eye(3), np.full((4, 4), np.nan), (32, 32))


def test_smplx_parameters_fit_widths_and_validate(body):
    frames = 2
    params = smplx_parameters(
        body, {"global_orient": np.zeros((frames, 3)), "expression": np.ones((frames, 3)), "betas": np.ones(20)}, np.full(4, 0.5)
    )
    assert params["expression"].shape == (frames, body.parameter_widths["expression"])
    assert torch.all(params["expression"][:, 3:] == 0) and torch.all(params["expression"][:, :3] == 1)
    assert params["betas"].shape == (frames, body.parameter_widths["betas"])  # the avatar's betas win
    assert torch.allclose(params["betas"][:, :4], torch.full((frames, 4), 0.5)) and torch.all(params["betas"][:, 4:] == 0)
    with pytest.raises(ValueError, match="unknown pose parameters \\['poses'\\]"):
        smplx_parameters(body, {"poses": np.zeros((1, 165))}, None)
    with pytest.raises(ValueError, match="'body_pose' must have width 63"):
        smplx_parameters(body, {"body_pose": np.zeros((1, 60))}, None)
    with pytest.raises(ValueError, match="'transl' has 3 frames"):
        smplx_parameters(body, {"global_orient": np.zeros((2, 3)), "transl": np.zeros((3, 3))}, None)
    with pytest.raises(ValueError, match="'global_orient' holds NaN"):
        smplx_parameters(body, {"global_orient": np.full((1, 3), np.nan)}, None)


# --------------------------------------------------------------------------------------------
# Neural texture


def test_neural_texture_init_shape_and_mask(maps):
    torch.manual_seed(0)
    texture = NeuralTexture(channels=8, size=64, levels=3)
    finest, *coarse = texture.layers
    assert finest.shape == (1, 8, 64, 64) and coarse[0].shape == (1, 8, 32, 32) and coarse[1].shape == (1, 8, 16, 16)
    finest = finest.detach()
    assert float(finest.min()) >= -1 and float(finest.max()) <= 1 and abs(float(finest.std()) - 1 / 3**0.5) < 0.02
    assert all(torch.all(layer == 0) for layer in coarse)  # the summed texture starts uniform in [-1, 1]
    image = texture(maps.uv, maps.mask)
    assert image.shape == (3, 8, 64, 64)
    off_body = maps.mask[..., 0] == 0
    assert torch.all(image.permute(0, 2, 3, 1)[off_body] == 0)
    assert float(image.detach().abs().amax()) <= 1.0


def test_neural_texture_gradients_reach_every_pyramid_level(maps):
    texture = NeuralTexture(channels=4, size=64, levels=3)
    texture(maps.uv, maps.mask).square().mean().backward()
    for layer in texture.layers:
        assert layer.grad is not None and float(layer.grad.abs().sum()) > 0
    # Only texels that some pixel samples get a gradient.
    touched = float((texture.layers[0].grad != 0).float().mean())
    assert 0 < touched < 0.9


def test_neural_texture_identities_and_jitter(maps):
    torch.manual_seed(0)
    texture = NeuralTexture(channels=4, size=32, identities=2)
    assert torch.equal(texture.layers[0][0], texture.layers[0][1])  # the same init for every identity
    identity = torch.tensor([1, 1, 1])
    texture(maps.uv, maps.mask, identity).sum().backward()
    grad = texture.layers[0].grad
    assert float(grad[0].abs().sum()) == 0 and float(grad[1].abs().sum()) > 0
    with torch.no_grad():
        plain = texture(maps.uv, maps.mask, identity)
        jittered = texture(maps.uv, maps.mask, identity, jitter=0.02)
    assert not torch.equal(plain, jittered)
    assert float((plain - jittered).abs().mean()) < float(plain.abs().mean())  # a perturbation, not new content
    with pytest.raises(ValueError, match="pass identity"):
        texture(maps.uv, maps.mask)
    with pytest.raises(ValueError, match="identity must be 3 indices in \\[0, 2\\)"):
        texture(maps.uv, maps.mask, torch.tensor([0, 2, 1]))


def test_uv_jitter_moves_samples_by_at_most_the_paper_range(maps):
    # A texture holding its own grid x coordinate (a ramp in u) reads back where it was sampled.
    texture = NeuralTexture(channels=1, size=512)
    with torch.no_grad():
        texture.layers[0].copy_(((torch.arange(512) + 0.5) / 512 * 2 - 1).view(1, 1, 1, 512).expand(1, 1, 512, 512))
        torch.manual_seed(0)
        shift = texture(maps.uv, maps.mask, jitter=0.02) - texture(maps.uv, maps.mask)
    on_body = maps.mask[..., 0] > 0
    moved = shift[:, 0][on_body].abs()
    assert float(moved.max()) <= 0.02 + 1e-5  # ±0.02 in grid_sample units ([-1, 1] spans the texture)
    assert float(moved.max()) > 0.015 and float(moved.mean()) > 0.005


# --------------------------------------------------------------------------------------------
# Triplane


def test_triplane_samples_the_canonical_position(maps, geometry):
    plane = Triplane.around(geometry.rest_vertices, channels=1, size=512, activation="none")
    with torch.no_grad():
        # Each plane holds a ramp along its first axis: the feature then reads that coordinate back.
        ramp = (torch.arange(512) + 0.5) / 512 * 2 - 1
        plane.planes.copy_(ramp.view(1, 1, 1, 512).expand(3, 1, 512, 512))
    features = plane(maps.canonical, maps.mask)
    assert features.shape == (3, 3, 64, 64)
    covered = maps.mask[..., 0] > 0
    unit = (maps.canonical - plane.centre) / plane.half_extent
    read = features.permute(0, 2, 3, 1)[covered]
    expected = torch.stack([unit[..., 0], unit[..., 0], unit[..., 1]], dim=-1)[covered]  # XY, XZ → x; YZ → y
    assert torch.allclose(read, expected, atol=5e-3)
    assert torch.all(features.permute(0, 2, 3, 1)[~covered] == 0)


def test_triplane_gradients_and_validation(maps, geometry):
    plane = Triplane.around(geometry.rest_vertices, channels=4, size=32)
    out = plane(maps.expanded_canonical, maps.expanded_mask)
    assert out.shape == (3, 12, 64, 64) and float(out.detach().abs().max()) <= 1  # tanh
    out.square().mean().backward()
    assert all(float(plane.planes.grad[k].abs().sum()) > 0 for k in range(3))
    with pytest.raises(ValueError, match="max > min"):
        Triplane(torch.zeros(3), torch.zeros(3))


# --------------------------------------------------------------------------------------------
# Keyframes


def test_keyframe_selection_is_greedy_coverage():
    visible = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],  # most triangles, but not the most surface
            [0, 0, 0, 1, 1, 0],
            [1, 0, 1, 0, 0, 0],  # adds nothing once frame 1 is in
            [0, 0, 0, 0, 0, 1],  # the most surface: picked first
        ],
        dtype=torch.bool,
    )
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 4.0, 6.0])
    selection = select_keyframes(visible, weights, count=4)
    assert selection.frames == (4, 2, 1)  # then stops: nothing is left to cover
    assert selection.gains == (6.0, 5.0, 3.0)  # frame 1 adds 3, since triangle 3 came with frame 2
    assert selection.coverage == pytest.approx(1.0)
    assert select_keyframes(visible, weights, count=1).coverage == pytest.approx(6 / 14)
    with pytest.raises(ValueError, match="weights must have shape"):
        select_keyframes(visible, torch.ones(3), 2)
    assert keyframe_count(360, 0.1) == 36 and keyframe_count(5, 0.1) == 1


def test_keyframes_of_a_capture_increase_coverage(tiny_capture, body):
    geometry = BodyRasterizer(body, tiny_capture.tracking.motion.betas, ("uv",))
    data = CaptureData(tiny_capture, geometry, 64, divisor=8, visibility=True)
    assert data.visible_faces.shape == (24, body.faces.shape[0])
    areas = geometry.face_areas()
    selection = select_keyframes(data.visible_faces, areas, 6)
    gains = np.array(selection.gains)
    assert len(gains) == 6 and np.all(gains > 0)
    assert np.all(np.diff(gains) <= 1e-9)  # coverage is submodular: greedy gains never grow
    # The chosen frames cover more surface than the same number of consecutive frames.
    def coverage(rows):
        return float((data.visible_faces[list(rows)].any(0).double() * areas.double()).sum())
    chosen = coverage(selection.frames)
    assert all(chosen >= coverage(range(start, start + 6)) for start in range(0, 18, 3))


# --------------------------------------------------------------------------------------------
# Data pipeline


def test_capture_data_resolution_and_alignment(tiny_capture, body):
    geometry = BodyRasterizer(body, tiny_capture.tracking.motion.betas, ("uv", "normals"))
    data = CaptureData(tiny_capture, geometry, 48, divisor=16)
    assert data.resolution == (48, 48)
    assert np.allclose(data.K[0, :2], tiny_capture.tracking.camera.K[0, :2] * 0.75)
    batch = data.batch([0, 5], keyframe=True)
    assert batch.images.shape == (2, 3, 48, 48) and batch.masks.shape == (2, 1, 48, 48)
    assert float(batch.images.min()) >= -1 and float(batch.images.max()) <= 1 and batch.keyframe
    iou = float((batch.masks[:, 0] > 0.5).logical_and(batch.maps.mask[..., 0] > 0).sum()) / float(
        ((batch.masks[:, 0] > 0.5) | (batch.maps.mask[..., 0] > 0)).sum()
    )
    assert iou > 0.55  # the resized ground truth and the rescaled camera agree
    uncached = CaptureData(tiny_capture, geometry, 48, divisor=16, cache_bytes=0)
    assert not uncached.cache_images and not uncached.cache_maps and uncached.memory_bytes == 0
    again = uncached.batch([0, 5])
    assert torch.equal(again.images, batch.images)
    assert torch.allclose(again.maps.normals, batch.maps.normals, atol=2e-3)  # float16 cache
    # float32 UVs: equal up to summation order of the batched interpolation
    assert torch.allclose(again.maps.uv, batch.maps.uv, rtol=0, atol=1e-6)


def test_capture_data_memory_estimate_and_cancelled_preparation(tiny_capture, body):
    geometry = BodyRasterizer(body, tiny_capture.tracking.motion.betas, ("uv", "normals"))
    data = CaptureData(tiny_capture, geometry, 32, divisor=8)
    assert data._maps is not None and data._images is not None
    cached = sum(value.element_size() * value.numel() for _, value in data._maps.items())
    assert data.map_bytes == cached  # float16 maps, float32 UVs
    assert data.memory_bytes == cached + data._images.numel()
    calls = []

    def cancel_on_third_poll() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(PreparationCancelled, match="cancelled while preparing"):
        CaptureData(tiny_capture, geometry, 32, divisor=8, cancelled=cancel_on_third_poll)
    assert len(calls) == 3  # stopped at once, not after the whole capture


def test_capture_data_rejects_a_mask_of_another_size(tiny_capture, body, tmp_path):
    import shutil

    from PIL import Image

    from backend.errors import CaptureFormatError

    copy = shutil.copytree(tiny_capture.path, tmp_path / "capture")
    Image.open(copy / "masks/000003.png").resize((40, 40)).save(copy / "masks/000003.png")
    geometry = BodyRasterizer(body, tiny_capture.tracking.motion.betas, ("uv",))
    with pytest.raises(CaptureFormatError) as error:  # not silently stretched to the frame size
        CaptureData(copy, geometry, 32, cache_bytes=0).batch([2, 3])
    assert error.value.path == copy / "masks/000003.png" and "40x40" in str(error.value) and "64x64" in str(error.value)


def test_capture_data_reads_a_video_capture_in_any_order(tiny_capture, body, tmp_path):
    import shutil

    import imageio_ffmpeg

    copy = shutil.copytree(tiny_capture.path, tmp_path / "capture", ignore=shutil.ignore_patterns("frames"))
    writer = imageio_ffmpeg.write_frames(str(copy / "video.mp4"), (64, 64), fps=30, quality=10)
    writer.send(None)
    for index in range(tiny_capture.num_frames):
        writer.send(np.ascontiguousarray(tiny_capture.frame(index)))
    writer.close()
    geometry = BodyRasterizer(body, tiny_capture.tracking.motion.betas, ("uv",))
    cached = CaptureData(copy, geometry, 32)  # prepared by one pass through the video
    uncached = CaptureData(copy, geometry, 32, cache_bytes=0)  # frames decoded per batch
    assert cached.cache_images and not uncached.cache_images
    frames = [20, 3, 20, 11, 0]
    assert torch.equal(uncached.batch(frames).images, cached.batch(frames).images)
    assert torch.equal(uncached.batch(frames).masks, cached.batch(frames).masks)
    pngs = CaptureData(tiny_capture, geometry, 32, cache_bytes=0).batch(frames).images
    assert float((pngs - cached.batch(frames).images).abs().mean()) < 0.03  # the same frames, up to compression


def test_scaled_resolution_and_intrinsics():
    assert scaled_resolution((1080, 1920), 512, 8) == (288, 512)
    assert scaled_resolution((256, 256), 128, 8) == (128, 128)
    K = np.array([[100.0, 0, 50], [0, 100, 40], [0, 0, 1]])
    scaled = scale_intrinsics(K, (80, 100), (40, 50))
    assert np.allclose(scaled, [[50, 0, 25], [0, 50, 20], [0, 0, 1]])
    with pytest.raises(ValueError, match="smaller than the network's size step"):
        scaled_resolution((64, 64), 4, 8)


def test_frame_schedule_is_a_pure_function_of_the_step():
    schedule = FrameSchedule.build(range(20), keyframes=[3, 7], batch_size=2, keyframe_every=2, seed=5)
    steps = [schedule.frames_for(step) for step in range(40)]
    again = FrameSchedule.build(range(20), keyframes=[3, 7], batch_size=2, keyframe_every=2, seed=5)
    assert steps == [again.frames_for(step) for step in range(40)]
    assert [keyframe for _, keyframe in steps] == [step % 2 == 0 for step in range(40)]
    assert all(set(frames) <= {3, 7} for frames, keyframe in steps if keyframe)
    others = [f for frames, keyframe in steps if not keyframe for f in frames]
    assert 3 not in others and 7 not in others
    assert sorted(others[:18]) == sorted(set(range(20)) - {3, 7})  # each epoch visits every frame once
    other_seed = FrameSchedule.build(range(20), seed=6)
    assert [other_seed.frames_for(s) for s in range(10)] != [FrameSchedule.build(range(20), seed=5).frames_for(s) for s in range(10)]
    plain = FrameSchedule.build(range(10), seed=1)
    assert sorted(f for step in range(10) for f in plain.frames_for(step)[0]) == list(range(10))
    with pytest.raises(ValueError, match="not training frames"):
        FrameSchedule.build(range(5), keyframes=[9])


def test_person_box_covers_the_masks():
    masks = torch.zeros(2, 1, 128, 128)
    masks[0, 0, 40:60, 50:70] = 1
    masks[1, 0, 70:90, 60:64] = 1
    rows, columns = person_box(masks)
    assert rows.start <= 32 and rows.stop >= 98 and (rows.stop - rows.start) % 16 == 0
    assert columns.start <= 42 and columns.stop >= 72 and (columns.stop - columns.start) % 16 == 0
    assert person_box(torch.zeros(1, 1, 64, 48)) == (slice(0, 64), slice(0, 48))
    corner = torch.zeros(1, 1, 64, 64)
    corner[..., 60:, 62:] = 1
    rows, columns = person_box(corner)
    assert rows.stop == 64 and columns.stop == 64 and rows.stop - rows.start >= 32
