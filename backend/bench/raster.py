"""``python -m backend bench raster``: rasterizer and interpolation speed on a body-sized mesh.

Rasterizes a closed, bumpy, body-proportioned blob (about the triangle count asked for; SMPL-X
has 20,908) filling roughly a third of a square frame, with every available backend, and
times ``interpolate`` for 3 and 16 channels. Times include the read-back into a torch tensor.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from backend.raster import available_backends, get_rasterizer, interpolate, look_at, project_to_clip

# The reference rasterizer takes about a second per 1024² frame; a few repeats suffice.
SOFTWARE_MAX_REPEATS = 5


def blob_mesh(triangles: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed latitude/longitude sphere with about ``triangles`` faces, stretched to a body's
    proportions (about 1.8 x 0.7 x 0.5) and given smooth random bumps.

    Returns ``(vertices (V, 3) float32, faces (F, 3) int64)``; faces wind counter-clockwise
    seen from outside.
    """
    if triangles < 8:
        raise ValueError(f"a blob needs at least 8 triangles, got {triangles}")
    # F = 2 * longitudes * (latitudes - 1) with about twice as many longitudes as latitudes.
    longitudes = max(4, round((triangles) ** 0.5))
    rings = max(1, round(triangles / (2 * longitudes)))  # latitude rings between the poles
    theta = np.linspace(0, np.pi, rings + 2)[1:-1]  # polar angle of each ring
    phi = np.linspace(0, 2 * np.pi, longitudes, endpoint=False)
    theta_grid, phi_grid = np.meshgrid(theta, phi, indexing="ij")
    directions = np.concatenate(
        [
            [[0.0, 1.0, 0.0]],
            np.stack(
                [np.sin(theta_grid) * np.cos(phi_grid), np.cos(theta_grid), np.sin(theta_grid) * np.sin(phi_grid)], -1
            ).reshape(-1, 3),
            [[0.0, -1.0, 0.0]],
        ]
    )
    rng = np.random.default_rng(seed)
    radius = np.ones(len(directions))
    for _ in range(6):  # low-frequency bumps, like limbs and muscles at this scale
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        radius += rng.uniform(0.03, 0.08) * np.sin(rng.integers(2, 6) * directions @ axis + rng.uniform(0, 2 * np.pi))
    vertices = directions * radius[:, None] * np.array([0.35, 0.9, 0.25])

    ring_start = 1 + np.arange(rings)[:, None] * longitudes
    column = np.arange(longitudes)[None, :]
    current, following = ring_start + column, ring_start + (column + 1) % longitudes
    south = len(directions) - 1
    top = np.stack([np.zeros(longitudes, dtype=np.int64), following[0], current[0]], -1)
    bottom = np.stack([np.full(longitudes, south), current[-1], following[-1]], -1)
    upper, lower = current[:-1], following[:-1]
    upper_next, lower_next = current[1:], following[1:]
    band = np.concatenate(
        [np.stack([upper, lower, upper_next], -1).reshape(-1, 3), np.stack([lower, lower_next, upper_next], -1).reshape(-1, 3)]
    )
    faces = np.concatenate([top, band, bottom])
    return torch.from_numpy(vertices.astype(np.float32)), torch.from_numpy(faces.astype(np.int64))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_ms(action: Callable[[], object], repeats: int, synchronize: bool) -> float:
    action()  # warm-up: context creation, buffer growth, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        if synchronize:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _cell(milliseconds: float) -> str:
    return f"{milliseconds:8.1f} ms {1e3 / milliseconds:6.1f}/s"


def run(resolutions: list[int], triangles: int, repeats: int) -> None:
    """Print median milliseconds per frame (and frames per second) for each backend and size."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    status = available_backends()
    names = [name for name, state in status.items() if state == "available"]
    device = torch.device("cuda" if "nvdiffrast" in names else "cpu")
    synchronize = device.type == "cuda"

    print(f"CPU: {_cpu_model()} ({os.cpu_count()} logical cores, torch {torch.__version__}, {torch.get_num_threads()} threads)")
    if "opengl" in names:
        print(f"OpenGL: {get_rasterizer('opengl').renderer}")
    if synchronize:
        print(f"CUDA: {torch.cuda.get_device_name(device)}")
    for name, state in status.items():
        if state != "available":
            print(f"{name}: not measured ({state})")

    vertices, faces = blob_mesh(triangles)
    vertices, faces = vertices.to(device), faces.to(device)
    world_to_camera = look_at([0.0, 0.0, 3.2], [0.0, 0.0, 0.0]).to(device)
    print(
        f"Mesh: {faces.shape[0]:,} triangles, {vertices.shape[0]:,} vertices; median of {repeats} repeats "
        f"(software: at most {SOFTWARE_MAX_REPEATS}); times include read-back into a torch tensor"
    )

    header = f"{'size':>6} | " + " | ".join(f"{name:^20}" for name in names)
    header += f" | {'interp 3 ch':>11} | {'interp 16 ch':>12} | coverage"
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    attributes = {c: torch.rand(vertices.shape[0], c, generator=generator).to(device) for c in (3, 16)}
    for size in resolutions:
        focal = 1.6 * size
        K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]], device=device)
        clip = project_to_clip(vertices[None], K, world_to_camera, (size, size))
        cells, rast = [], None
        for name in names:
            rasterizer = get_rasterizer(name, device)
            count = min(repeats, SOFTWARE_MAX_REPEATS) if name == "software" else repeats
            cells.append(_cell(_median_ms(lambda: rasterizer.rasterize(clip, faces, (size, size)), count, synchronize)))
            if rast is None:
                rast = rasterizer.rasterize(clip, faces, (size, size))
        interpolation = [
            _median_ms(lambda c=c: interpolate(attributes[c], rast, faces), repeats, synchronize) for c in (3, 16)
        ]
        coverage = float((rast[..., 3] > 0).float().mean())
        print(
            f"{size:>5}² | "
            + " | ".join(cells)
            + f" | {interpolation[0]:8.1f} ms | {interpolation[1]:9.1f} ms | {coverage:6.1%}"
        )
