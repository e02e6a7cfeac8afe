"""The server's own requests: hello, info, ping (transport diagnostics) and shutdown."""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from functools import lru_cache
from importlib import metadata

import numpy as np

import backend
from blender_addon import wire
from backend.server.jobs import JOB_KINDS
from backend.server.registry import HANDLER_LOAD_ERRORS, HANDLERS, Request, Result, handler
from backend.server.schema import ANY_ARRAYS, BadRequest, Boolean, Integer, String

log = logging.getLogger("backend.server")

MAX_PING_SIDE = 4096
PING_DTYPES = ("uint8", "float16", "float32")


@handler("hello", params={"token": String(default=None, max_length=256), "client": String(default="", max_length=200)})
def hello(request: Request) -> dict:
    """Authenticate (as the first message) and identify the server."""
    return {
        "server": "neural-avatar-backend",
        "version": backend.__version__,
        "protocol": wire.PROTOCOL_VERSION,
        "pid": os.getpid(),
        "device": request.server.device,
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


_bodies_lock = threading.Lock()
_bodies_description: list[str] | None = None


def _describe_bodies() -> list[str] | str:
    """Body models in use, computed once (it may generate stand-ins); a failure is reported, not raised."""
    global _bodies_description
    with _bodies_lock:
        if _bodies_description is None:
            try:
                from backend.bodies import describe_models

                _bodies_description = describe_models().splitlines()
            except Exception as error:  # noqa: BLE001 - info must answer even if the body loaders are broken
                log.warning("describe_models failed", exc_info=True)
                return f"unavailable: {type(error).__name__}: {str(error)[:300]}"
        return _bodies_description


@handler("info", params={"bodies": Boolean(default=True, doc="include the body models in use (slow the first time)")})
def info(request: Request) -> dict:
    """Device, versions, loaded avatars, jobs, request types and body models in use."""
    server = request.server
    with server.avatars_lock:
        avatars = sorted(server.avatars)
    jobs = server.jobs.jobs()
    result = {
        "server": "neural-avatar-backend",
        "version": backend.__version__,
        "protocol": wire.PROTOCOL_VERSION,
        "pid": os.getpid(),
        "device": server.device,
        "versions": {
            "python": platform.python_version(),
            "torch": _version("torch"),
            "numpy": np.__version__,
            "smplx": _version("smplx"),
            "moderngl": _version("moderngl"),
        },
        "platform": platform.platform(),
        "state_dir": str(server.state_dir),
        "log_file": str(server.log_file),
        "uptime_seconds": round(time.time() - server.started, 3),
        "avatars": avatars,
        "jobs": {"running": sum(job.running for job in jobs), "known": len(jobs)},
        "requests": sorted(HANDLERS),
        "job_kinds": sorted(JOB_KINDS),
        "handler_errors": dict(HANDLER_LOAD_ERRORS),
    }
    if request.params["bodies"]:
        result["bodies"] = _describe_bodies()
    return result


CACHED_TEST_IMAGE_PIXELS = 1024 * 1024  # at most 4 cached images of <= 16 MiB each


def test_image(height: int, width: int, dtype: str) -> np.ndarray:
    """A deterministic RGBA test pattern (x ramp, y ramp, 8-px checker, opaque); sizes up to
    1024x1024 are cached, so that timing them measures the transport, not the pattern."""
    if height * width <= CACHED_TEST_IMAGE_PIXELS:
        return _cached_test_image(height, width, dtype)
    return _make_test_image(height, width, dtype)


def _make_test_image(height: int, width: int, dtype: str) -> np.ndarray:
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None].repeat(width, 1)
    checker = ((np.arange(height)[:, None] // 8 + np.arange(width)[None, :] // 8) % 2).astype(np.float32)
    image = np.stack([x, y, checker, np.ones_like(x)], axis=-1)
    if dtype == "uint8":
        image = np.round(image * 255.0).astype(np.uint8)
    else:
        image = image.astype(dtype)
    image.setflags(write=False)
    return image


_cached_test_image = lru_cache(maxsize=4)(_make_test_image)


@handler(
    "ping",
    params={
        "width": Integer(min=1, max=MAX_PING_SIDE, default=None),
        "height": Integer(min=1, max=MAX_PING_SIDE, default=None),
        "dtype": String(choices=PING_DTYPES, default="uint8"),
    },
    arrays=ANY_ARRAYS,
)
def ping(request: Request) -> Result:
    """Echo the request's arrays; with width and height, also return an RGBA test image."""
    width, height = request.params["width"], request.params["height"]
    arrays = dict(request.arrays)
    if (width is None) != (height is None):
        raise BadRequest("params: give both width and height for a test image, or neither")
    if width is not None:
        arrays["image"] = test_image(height, width, request.params["dtype"])
    return Result({"echoed": sorted(request.arrays), "time": time.time()}, arrays)


@handler("shutdown")
def shutdown(request: Request) -> dict:
    """Stop the server after replying: cancels jobs, closes connections, removes the connection file."""
    log.info("shutdown requested by a client")
    request.after_reply(request.server.request_shutdown)
    return {"stopping": True}
