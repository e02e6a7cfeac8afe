"""Choosing a rasterizer backend: an explicit name, else ``NEURAL_AVATAR_RASTERIZER``, else
the best available (nvdiffrast on CUDA, then OpenGL, then the software reference).

Backends are created once per process (per device for nvdiffrast) and reused; a backend that
failed to start is not retried, so ``auto`` stays fast.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

from backend.errors import DeviceError
from backend.raster.interface import Rasterizer

RASTERIZER_ENV = "NEURAL_AVATAR_RASTERIZER"
BACKENDS = ("nvdiffrast", "opengl", "software")

_instances: dict[tuple[str, str], Rasterizer] = {}
_failures: dict[tuple[str, str], DeviceError] = {}
_lock = threading.Lock()


def _create(name: str, device: torch.device | None) -> Rasterizer:
    if name == "nvdiffrast":
        from backend.raster.nvdiffrast_backend import NvdiffrastRasterizer

        return NvdiffrastRasterizer(device)
    if name == "opengl":
        try:
            from backend.raster.opengl import OpenGLRasterizer
        except ImportError as error:
            raise DeviceError(f"OpenGL rasterizer unavailable: cannot import moderngl ({error})") from error
        return OpenGLRasterizer()
    from backend.raster.software import SoftwareRasterizer

    return SoftwareRasterizer()


def _cached(name: str, device: torch.device | None) -> Rasterizer:
    # Only nvdiffrast is bound to a device; the others serve every device.
    if name == "nvdiffrast" and device is None:
        device = torch.device("cuda")
    key = (name, str(device) if name == "nvdiffrast" else "")
    with _lock:
        if key in _instances:
            return _instances[key]
        if key in _failures:
            raise _failures[key]
        try:
            rasterizer = _create(name, device)
        except DeviceError as error:
            _failures[key] = error
            raise
        _instances[key] = rasterizer
        return rasterizer


def get_rasterizer(backend: str = "auto", device: str | torch.device | None = None) -> Rasterizer:
    """The rasterizer named ``backend`` ("auto", "nvdiffrast", "opengl" or "software").

    ``device`` is where the caller's tensors live; it matters to nvdiffrast (CUDA only), which
    ``auto`` skips for a CPU device. An explicit backend that cannot run raises
    :class:`~backend.errors.DeviceError` with the reason; ``auto`` falls back to the software
    rasterizer with a warning listing why the others were unavailable.
    """
    name, origin = str(backend).strip().lower(), "requested"
    if name == "auto" and os.environ.get(RASTERIZER_ENV, "").strip():
        name, origin = os.environ[RASTERIZER_ENV].strip().lower(), f"set in {RASTERIZER_ENV}"
    if name != "auto" and name not in BACKENDS:
        raise DeviceError(f"unknown rasterizer backend {name!r} ({origin}); choose auto, {', '.join(BACKENDS)}")
    torch_device = torch.device(device) if device is not None else None
    if name != "auto":
        return _cached(name, torch_device)

    reasons = []
    for candidate in ("nvdiffrast", "opengl"):
        if candidate == "nvdiffrast" and torch_device is not None and torch_device.type != "cuda":
            continue
        try:
            return _cached(candidate, torch_device)
        except DeviceError as error:
            reasons.append(str(error))
    warnings.warn(
        "using the slow software rasterizer because no faster one is available: " + "; ".join(reasons),
        RuntimeWarning,
        stacklevel=2,
    )
    return _cached("software", torch_device)


def available_backends(device: str | torch.device | None = None) -> dict[str, str]:
    """Every backend mapped to "available" or the reason it is not (for diagnostics and benchmarks)."""
    status = {}
    for name in BACKENDS:
        try:
            get_rasterizer(name, device)
            status[name] = "available"
        except DeviceError as error:
            status[name] = str(error)
    return status
