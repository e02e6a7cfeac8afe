"""Tests of backend.raster: conventions, clipping, backend agreement, differentiable ops, cameras."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from backend.errors import DeviceError
from backend.raster import (
    RASTERIZER_ENV,
    camera_depth,
    coverage_mask,
    get_rasterizer,
    interpolate,
    look_at,
    normal_map,
    project_to_clip,
    rasterize,
    texture,
    vertex_normals,
)
from backend.raster import selection
from backend.raster.software import SoftwareRasterizer


@pytest.fixture(scope="module")
def opengl():
    try:
        return get_rasterizer("opengl")
    except DeviceError as error:
        pytest.skip(f"no OpenGL here: {error}")


@pytest.fixture(scope="module")
def software():
    return SoftwareRasterizer()


@pytest.fixture(params=["opengl", "software"])
def rasterizer(request, opengl, software):
    return opengl if request.param == "opengl" else software


def pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC (x, y) of every pixel centre, rows from clip-space y = -1 (nvdiffrast's order)."""
    y = (2 * np.arange(height) + 1) / height - 1
    x = (2 * np.arange(width) + 1) / width - 1
    return np.meshgrid(x, y)


def expected_single_triangle(ndc: np.ndarray, w: np.ndarray, height: int, width: int):
    """Screen-space barycentrics by solving the 2D system, converted to perspective-correct ones."""
    x, y = pixel_centres(height, width)
    edge = np.array([[ndc[0, 0] - ndc[2, 0], ndc[1, 0] - ndc[2, 0]], [ndc[0, 1] - ndc[2, 1], ndc[1, 1] - ndc[2, 1]]])
    rhs = np.stack([x - ndc[2, 0], y - ndc[2, 1]], -1)[..., None]
    l01 = np.linalg.solve(edge, rhs)[..., 0]
    screen = np.concatenate([l01, 1 - l01.sum(-1, keepdims=True)], -1)  # (H, W, 3)
    weighted = screen / w
    perspective = weighted / weighted.sum(-1, keepdims=True)
    return screen, perspective


# ---------------------------------------------------------------- rasterization conventions


@pytest.mark.parametrize("perspective", [False, True])
def test_single_triangle_ids_barycentrics_and_depth(rasterizer, perspective):
    height, width = 24, 32
    ndc = np.array([[-0.7, -0.8, -0.2], [0.9, -0.3, 0.4], [-0.1, 0.85, 0.1]])  # x, y, z/w
    w = np.array([1.0, 2.5, 0.6]) if perspective else np.ones(3)
    clip = torch.tensor(np.concatenate([ndc * w[:, None], w[:, None]], 1), dtype=torch.float32)[None]
    rast = rasterizer.rasterize(clip, torch.tensor([[0, 1, 2]]), (height, width))[0].numpy()

    screen, bary = expected_single_triangle(ndc, w, height, width)
    inside = screen.min(-1) > 1e-3
    outside = screen.min(-1) < -1e-3
    assert inside.sum() > 100 and outside.sum() > 100
    assert (rast[inside, 3] == 1).all()
    assert (rast[outside] == 0).all()
    np.testing.assert_allclose(rast[inside, 0], bary[inside, 0], atol=1e-4)
    np.testing.assert_allclose(rast[inside, 1], bary[inside, 1], atol=1e-4)
    # NDC depth is affine in screen space.
    np.testing.assert_allclose(rast[inside, 2], (screen @ ndc[:, 2])[inside], atol=1e-5)
    if perspective:  # the perspective-correct weights really differ from screen-space ones here
        assert np.abs(bary[inside] - screen[inside]).max() > 0.1


def test_row_zero_is_clip_y_minus_one(rasterizer):
    # A triangle in the lower half of clip space (y < 0) fills the first rows.
    clip = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [0.0, -0.1, 0.0, 1.0]]])
    rast = rasterizer.rasterize(clip, torch.tensor([[0, 1, 2]]), (16, 16))
    rows = coverage_mask(rast)[0].any(1)
    assert rows[:7].all() and not rows[8:].any()


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_in_either_order(rasterizer, near_first):
    near = [[-0.8, -0.8, -0.5, 1.0], [0.6, -0.8, -0.5, 1.0], [-0.8, 0.6, -0.5, 1.0]]
    far = [[-0.6, -0.6, 0.5, 1.0], [0.8, -0.6, 0.5, 1.0], [-0.6, 0.8, 0.5, 1.0]]
    clip = torch.tensor([near + far if near_first else far + near])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    near_id = 1 if near_first else 2
    rast = rasterizer.rasterize(clip, faces, (32, 32))[0]
    x, y = pixel_centres(32, 32)
    overlap = torch.from_numpy((x > -0.55) & (y > -0.55) & (x + y < -0.25))
    assert overlap.sum() > 20
    assert (rast[..., 3][overlap] == near_id).all()
    assert torch.allclose(rast[..., 2][overlap], torch.tensor(-0.5))
    assert (rast[..., 3] == 3 - near_id).any()  # the far one shows where it is not hidden


def test_triangles_behind_camera_or_beyond_far_are_culled(rasterizer):
    K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
    shape = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    for depth in (-2.0, 150.0, 0.005):  # behind the camera, beyond far=100, before near=0.01
        clip = project_to_clip((shape + torch.tensor([0.0, 0.0, depth]))[None], K, torch.eye(4), (32, 32))
        rast = rasterizer.rasterize(clip, torch.tensor([[0, 1, 2]]), (32, 32))
        assert not coverage_mask(rast).any(), f"triangle at depth {depth} should not be drawn"
    clip = project_to_clip((shape + torch.tensor([0.0, 0.0, 2.0]))[None], K, torch.eye(4), (32, 32))
    assert coverage_mask(rasterizer.rasterize(clip, torch.tensor([[0, 1, 2]]), (32, 32))).sum() > 50


def test_near_and_far_planes_clip_a_slanted_triangle(rasterizer):
    # Camera-space plane Z = 1 + 0.8 Y crossing both planes; rows with Z outside [near, far] vanish.
    height, width, focal, near, far = 48, 40, 40.0, 0.9, 1.5
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    verts = torch.tensor([[-5.0, -1.2, 0.04], [5.0, -1.2, 0.04], [0.0, 3.0, 3.4]], dtype=torch.float64)
    clip = project_to_clip(verts[None], K, torch.eye(4, dtype=torch.float64), (height, width), near, far).float()
    rast = rasterizer.rasterize(clip, torch.tensor([[0, 1, 2]]), (height, width))
    slope = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2) / focal  # Y / Z per row
    row_depth = 1.0 / (1.0 - 0.8 * slope)
    covered_rows = coverage_mask(rast)[0].all(1)
    empty_rows = ~coverage_mask(rast)[0].any(1)
    assert (covered_rows[(row_depth > near * 1.01) & (row_depth < far * 0.99)]).all()
    assert (empty_rows[(row_depth < near * 0.99) | (row_depth > far * 1.01)]).all()
    assert empty_rows.any() and covered_rows.any()
    depth = camera_depth(rast, near, far)[0]
    rows = covered_rows.nonzero()[:, 0]
    torch.testing.assert_close(depth[rows], row_depth[rows, None].float().expand(-1, width), rtol=1e-4, atol=0)


def test_triangle_ids_above_2_16_are_exact(rasterizer):
    count = 70_000
    faces = torch.zeros(count, 3, dtype=torch.int64)  # degenerate: never drawn
    faces[65_537] = torch.tensor([0, 1, 2])
    faces[count - 1] = torch.tensor([3, 4, 5])
    clip = torch.tensor(
        [[[-0.9, -0.9, 0, 1], [-0.1, -0.9, 0, 1], [-0.9, -0.1, 0, 1], [0.9, 0.9, 0, 1], [0.1, 0.9, 0, 1], [0.9, 0.1, 0, 1]]],
        dtype=torch.float32,
    )
    rast = rasterizer.rasterize(clip, faces, (16, 16))[0]
    assert set(rast[..., 3].unique().tolist()) == {0.0, 65_538.0, 70_000.0}


def test_batch_frames_are_independent(rasterizer):
    generator = torch.Generator().manual_seed(3)
    clip = random_soup(2, 60, generator)
    faces = torch.arange(180).reshape(60, 3)
    both = rasterizer.rasterize(clip, faces, (20, 28))
    for b in range(2):
        torch.testing.assert_close(both[b], rasterizer.rasterize(clip[b : b + 1], faces, (20, 28))[0])
    assert not torch.equal(both[0], both[1])


def test_interpolated_clip_positions_reproject_to_pixel_centres(rasterizer):
    # The surface point (u v0 + v v1 + (1-u-v) v2 in clip space) must lie on each pixel's ray.
    generator = torch.Generator().manual_seed(5)
    clip = random_soup(1, 80, generator)
    faces = torch.arange(240).reshape(80, 3)
    rast = rasterizer.rasterize(clip, faces, (40, 48))
    point = interpolate(clip.double(), rast, faces)[0]
    mask = coverage_mask(rast)[0]
    assert mask.float().mean() > 0.3
    x, y = (torch.from_numpy(c) for c in pixel_centres(40, 48))
    w = point[..., 3][mask]
    assert (w > 0).all()
    torch.testing.assert_close(point[..., 0][mask] / w, x[mask], atol=2e-4, rtol=0)
    torch.testing.assert_close(point[..., 1][mask] / w, y[mask], atol=2e-4, rtol=0)
    torch.testing.assert_close(point[..., 2][mask] / w, rast[0, ..., 2][mask].double(), atol=2e-4, rtol=0)
    assert ((point[..., 2][mask] / w).abs() <= 1 + 1e-5).all()  # clipped to the depth range


# ---------------------------------------------------------------- OpenGL vs the reference


def random_soup(batch: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Independent random triangles of moderate size, some crossing the near/far planes and
    some with a corner behind the camera (w < 0)."""
    centre = torch.rand(batch, count, 1, 3, generator=generator) * 2.4 - 1.2
    offsets = (torch.rand(batch, count, 3, 3, generator=generator) - 0.5) * 0.8
    ndc = (centre + offsets).reshape(batch, count * 3, 3)
    ndc[..., 2] *= 1.2
    w = torch.rand(batch, count * 3, 1, generator=generator) * 2.5 + 0.3
    behind = torch.rand(batch, count * 3, 1, generator=generator) < 0.03
    w = torch.where(behind, -w, w)
    return torch.cat([ndc * w, w], -1)


def test_opengl_agrees_with_software_on_random_meshes(opengl, software):
    generator = torch.Generator().manual_seed(0)
    clip = random_soup(2, 400, generator)
    # Shared vertices as well as a soup: re-index a random subset onto existing vertices.
    faces = torch.arange(1200).reshape(400, 3)
    faces[200:] = torch.randint(0, 1200, (200, 3), generator=generator)
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    for resolution in [(96, 128), (128, 80)]:
        a = opengl.rasterize(clip, faces, resolution)
        b = software.rasterize(clip, faces, resolution)
        same = a[..., 3] == b[..., 3]
        assert same.float().mean() >= 0.995
        both = same & (a[..., 3] > 0)
        assert both.float().mean() > 0.4
        torch.testing.assert_close(a[both][:, :3], b[both][:, :3], atol=5e-4, rtol=0)


def test_software_result_does_not_depend_on_chunking(software, monkeypatch):
    from backend.raster import software as software_module

    generator = torch.Generator().manual_seed(1)
    clip = random_soup(1, 150, generator)
    faces = torch.arange(450).reshape(150, 3)
    whole = software.rasterize(clip, faces, (40, 40))
    monkeypatch.setattr(software_module, "PAIRS_PER_CHUNK", 50)  # many chunks, triangles split across them
    torch.testing.assert_close(software.rasterize(clip, faces, (40, 40)), whole, atol=0, rtol=0)


def test_opengl_works_from_another_thread(opengl):
    clip = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2]])
    here = opengl.rasterize(clip, faces, (16, 16))
    there = {}
    thread = threading.Thread(target=lambda: there.update(rast=opengl.rasterize(clip, faces, (16, 16))))
    thread.start()
    thread.join()
    torch.testing.assert_close(there["rast"], here)
    assert coverage_mask(here).any()


# ---------------------------------------------------------------- interpolation, textures, normals


def test_interpolate_gradcheck_and_background(software):
    clip = torch.tensor([[[-0.9, -0.8, 0.1, 1.0], [0.8, -0.6, 0.2, 1.5], [0.1, 0.9, 0.3, 0.8], [0.9, 0.9, 0.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    rast = software.rasterize(clip, faces, (6, 5))
    assert coverage_mask(rast).any() and not coverage_mask(rast).all()
    attr = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, rast, faces), (attr,))
    out = interpolate(attr, rast, faces)
    assert out.shape == (1, 6, 5, 3)
    assert (out[~coverage_mask(rast)] == 0).all()
    out.sum().backward()
    assert attr.grad.abs().sum() > 0


def test_interpolate_values_batches_and_uv_index_buffer(software):
    # A quad of two triangles; positions shared, UVs split along the diagonal (a seam).
    clip = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast = software.rasterize(clip.expand(2, -1, -1), faces, (8, 8))
    # Per-vertex attribute = NDC x, y: interpolation reproduces the pixel centres.
    xy = interpolate(clip[0, :, :2], rast, faces)
    x, y = (torch.from_numpy(c).float() for c in pixel_centres(8, 8))
    torch.testing.assert_close(xy[0, ..., 0], x)
    torch.testing.assert_close(xy[1, ..., 1], y)
    # Batched attributes follow their frame; a batch of 1 broadcasts.
    batched = torch.stack([clip[0, :, :2], 2 * clip[0, :, :2]])
    torch.testing.assert_close(interpolate(batched, rast, faces)[1], 2 * xy[1])
    torch.testing.assert_close(interpolate(batched[:1], rast, faces), xy)
    # Seam: the second triangle's UV chart is shifted by 0.5 in u.
    uv_coords = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.5, 0.0], [1.0, 1.0], [0.5, 1.0]])
    uv_faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    uv = interpolate(uv_coords, rast, uv_faces)[0]
    first = rast[0, ..., 3] == 1
    torch.testing.assert_close(uv[first][:, 0], (x[first] + 1) / 4)
    torch.testing.assert_close(uv[~first][:, 0], 0.5 + (x[~first] + 1) / 4)
    torch.testing.assert_close(uv[..., 1], (y + 1) / 2)


def test_interpolate_rejects_mismatched_inputs(software):
    clip = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2]])
    rast = software.rasterize(clip, faces, (4, 4))
    with pytest.raises(ValueError, match="out of range"):
        interpolate(torch.zeros(2, 3), rast, faces)
    with pytest.raises(ValueError, match="batch size 3"):
        interpolate(torch.zeros(3, 3, 1), rast, faces)
    with pytest.raises(ValueError, match="triangle 0 but faces has only 0"):
        interpolate(torch.zeros(3, 1), rast, torch.zeros(0, 3, dtype=torch.int64))


def test_texture_uv_convention_and_gradients():
    tex = torch.zeros(1, 3, 4, 4)
    tex[0, 0, :2, :2] = 1.0  # red top-left quadrant (row 0 is the top row)
    tex[0, 2, 2:, 2:] = 1.0  # blue bottom-right quadrant
    tex.requires_grad_(True)
    uv = torch.tensor([[[[0.25, 0.75], [0.75, 0.25]]]])  # (1, 1, 2, 2)
    out = texture(tex, uv)
    assert out.shape == (1, 3, 1, 2)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([0.0, 0.0, 1.0]))
    out.sum().backward()
    # Each sample sits on a texel corner shared by four texels: 1/4 of the gradient each.
    assert tex.grad[0, 0, :2, :2].eq(0.25).all() and tex.grad[0, 0, 2:, 2:].eq(0.25).all()
    assert tex.grad[0, 0, :2, 2:].eq(0).all()
    # Texel centre (row 0, column 3) is at uv ((3 + 0.5) / 4, 1 - 0.5 / 4); a batch of 1 broadcasts.
    checker = torch.arange(16.0).reshape(1, 1, 4, 4)
    centre = torch.tensor([3.5 / 4, 1 - 0.5 / 4]).expand(2, 1, 1, 2)
    torch.testing.assert_close(texture(checker, centre), torch.full((2, 1, 1, 1), 3.0))


def test_vertex_normals_are_area_weighted_and_differentiable():
    # Vertex 0 is shared by a small face in the z=0 plane (normal +z, area 0.5) and a large one
    # in the x=0 plane (normal +x, area 2).
    verts = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -2.0]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 1, 2], [0, 4, 3]])
    normals = vertex_normals(verts[None], faces)[0]
    expected = torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64) / 17**0.5
    torch.testing.assert_close(normals[0], expected)
    torch.testing.assert_close(normals[1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(normals[3], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(vertex_normals(verts, faces), normals)  # unbatched too
    probe = verts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: vertex_normals(v[None], faces), (probe,))


def test_normal_map_is_unit_on_coverage_and_zero_elsewhere(opengl):
    from backend.bench.raster import blob_mesh

    verts, faces = blob_mesh(2000)
    K = torch.tensor([[60.0, 0.0, 32.0], [0.0, 60.0, 32.0], [0.0, 0.0, 1.0]])
    world_to_camera = look_at([0.0, 0.0, 3.0], [0.0, 0.0, 0.0])
    rast = opengl.rasterize(project_to_clip(verts[None], K, world_to_camera, (64, 64)), faces, (64, 64))
    camera_verts = verts @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    normals = normal_map(vertex_normals(camera_verts, faces), rast, faces)[0]
    mask = coverage_mask(rast)[0]
    assert 0.05 < mask.float().mean() < 0.9
    torch.testing.assert_close(normals[mask].norm(dim=-1), torch.ones(int(mask.sum())))
    assert (normals[~mask] == 0).all()
    assert (normals[mask][:, 2] < 0.2).all()  # visible outward normals face the camera (-z)


# ---------------------------------------------------------------- cameras


def test_projected_vertex_lands_in_its_pixel(rasterizer):
    height, width = 48, 64  # non-square, off-centre principal point: catches axis mix-ups
    K = torch.tensor([[55.0, 0.0, 30.0], [0.0, 50.0, 21.0], [0.0, 0.0, 1.0]])
    world_to_camera = look_at([0.4, 1.2, 3.0], [0.1, 0.0, 0.0])
    camera_to_world = torch.linalg.inv(world_to_camera)
    generator = torch.Generator().manual_seed(7)
    # Points on a jittered 4 x 3 grid of viewing directions, so their triangles do not overlap.
    slopes = torch.cartesian_prod(torch.tensor([-0.45, -0.15, 0.15, 0.45]), torch.tensor([-0.3, 0.0, 0.3]))
    slopes = slopes + (torch.rand(12, 2, generator=generator) - 0.5) * 0.1
    depths = 2.5 + torch.rand(12, 1, generator=generator)
    camera_points = torch.cat([slopes * depths, depths], 1)
    # A camera-facing triangle (constant camera depth) around each point, about 4 px across.
    corners = camera_points[:, None, :] + torch.tensor([[-0.13, -0.075, 0.0], [0.13, -0.075, 0.0], [0.0, 0.15, 0.0]])
    world = corners.reshape(-1, 3) @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
    point_world = camera_points @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]
    faces = torch.arange(36).reshape(12, 3)
    rast = rasterizer.rasterize(project_to_clip(world[None], K, world_to_camera, (height, width)), faces, (height, width))
    depth = camera_depth(rast)[0]

    # Independent pinhole projection of the points, in numpy.
    cam = (world_to_camera[:3, :3].numpy() @ point_world.numpy().T).T + world_to_camera[:3, 3].numpy()
    pixels = (K.numpy() @ cam.T).T
    for k, (x, y) in enumerate(pixels[:, :2] / pixels[:, 2:]):
        row, column = int(np.floor(y)), int(np.floor(x))
        assert 0 <= row < height and 0 <= column < width
        assert rast[0, row, column, 3] == k + 1, f"point {k} projects to ({x:.2f}, {y:.2f})"
        assert depth[row, column] == pytest.approx(float(camera_points[k, 2]), rel=1e-4)


def test_look_at_axes():
    world_to_camera = look_at([1.0, 2.0, 5.0], [1.0, 2.0, 0.0])
    rotation = world_to_camera[:3, :3]
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3))
    assert torch.linalg.det(rotation) == pytest.approx(1.0)
    apply = lambda p: world_to_camera[:3, :3] @ torch.tensor(p) + world_to_camera[:3, 3]  # noqa: E731
    torch.testing.assert_close(apply([1.0, 2.0, 5.0]), torch.zeros(3))
    torch.testing.assert_close(apply([1.0, 2.0, 0.0]), torch.tensor([0.0, 0.0, 5.0]))  # target ahead
    assert apply([1.0, 3.0, 0.0])[1] < 0  # world up is image up (camera -y)
    assert apply([2.0, 2.0, 0.0])[0] > 0  # looking down -z with y up, +x is to the right
    with pytest.raises(ValueError, match="parallel"):
        look_at([0.0, 5.0, 0.0], [0.0, 0.0, 0.0])


# ---------------------------------------------------------------- backend selection and validation


def test_unknown_or_unavailable_backend_raises_device_error(monkeypatch):
    monkeypatch.delenv(RASTERIZER_ENV, raising=False)
    with pytest.raises(DeviceError, match="unknown rasterizer backend 'vulkan'"):
        get_rasterizer("vulkan")
    try:
        import nvdiffrast.torch  # noqa: F401

        has_nvdiffrast = torch.cuda.is_available()
    except ImportError:
        has_nvdiffrast = False
    if not has_nvdiffrast:
        with pytest.raises(DeviceError, match="nvdiffrast"):
            get_rasterizer("nvdiffrast")


def test_environment_variable_selects_backend(monkeypatch, opengl):
    monkeypatch.setenv(RASTERIZER_ENV, "software")
    assert get_rasterizer().name == "software"
    assert get_rasterizer("opengl").name == "opengl"  # an explicit choice wins
    monkeypatch.setenv(RASTERIZER_ENV, "bogus")
    with pytest.raises(DeviceError, match=RASTERIZER_ENV):
        get_rasterizer()
    monkeypatch.delenv(RASTERIZER_ENV)
    assert get_rasterizer(device="cpu").name == "opengl"


def test_auto_falls_back_to_software_with_a_warning(monkeypatch):
    monkeypatch.delenv(RASTERIZER_ENV, raising=False)
    monkeypatch.setattr(selection, "_instances", {})
    monkeypatch.setattr(selection, "_failures", {})
    real_create = selection._create

    def create_without_gl(name, device):
        if name == "opengl":
            raise DeviceError("OpenGL rasterizer unavailable: eglInitialize failed (test)")
        return real_create(name, device)

    monkeypatch.setattr(selection, "_create", create_without_gl)
    with pytest.warns(RuntimeWarning, match="eglInitialize failed"):
        chosen = get_rasterizer(device="cpu")
    assert chosen.name == "software"
    with pytest.raises(DeviceError, match="eglInitialize failed"):
        get_rasterizer("opengl")


def test_rasterize_validates_inputs(software):
    clip = torch.zeros(1, 3, 4)
    faces = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="out of range"):
        software.rasterize(clip, torch.tensor([[0, 1, 3]]), (4, 4))
    with pytest.raises(ValueError, match=r"\(B, V, 4\)"):
        software.rasterize(torch.zeros(3, 4), faces, (4, 4))
    with pytest.raises(ValueError, match="int32 or int64"):
        software.rasterize(clip, faces.float(), (4, 4))
    with pytest.raises(ValueError, match="resolution"):
        software.rasterize(clip, faces, (0, 4))
    with pytest.raises(ValueError, match="NaN"):
        software.rasterize(torch.full((1, 3, 4), float("nan")), faces, (4, 4))


def test_module_level_rasterize_uses_selected_backend(monkeypatch):
    monkeypatch.setenv(RASTERIZER_ENV, "software")
    clip = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]]])
    rast = rasterize(clip, torch.tensor([[0, 1, 2]], dtype=torch.int32), (8, 8))
    assert rast.dtype == torch.float32 and rast.shape == (1, 8, 8, 4)
    assert rast[0, 4, 4, 3] == 1 and rast[0, 0, 0, 3] == 0
