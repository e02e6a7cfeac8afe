"""OpenGL rasterizer through moderngl on a headless EGL context (Mesa llvmpipe on a CPU-only
machine, the GPU driver elsewhere).

Triangles are drawn de-indexed (three corners per triangle, ``glDrawArrays``), so the vertex
shader can give each corner its barycentric from ``gl_VertexID % 3``; the hardware's
perspective-correct interpolation then yields nvdiffrast's ``(u, v)``. ``gl_PrimitiveID + 1``
is the id, written to a float32 RGBA target (exact up to 2**24), ``z/w`` comes from the
interpolated clip ``z`` and ``w``, and a depth buffer with ``GL_LESS`` keeps the nearest.
``glReadPixels`` returns rows bottom-up, which is nvdiffrast's row order already.

Threading: an EGL context is current on one thread only. There is one context per process,
created lazily on a dedicated worker thread that does all GL work; ``rasterize`` may be called
from any thread (calls are serialised) and blocks until its frame has been read back.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from backend.errors import DeviceError
from backend.raster.interface import Rasterizer

_VERTEX_SHADER = """
#version 330
in vec4 clip_position;
out vec2 barycentric;
out vec2 clip_zw;
void main() {
    int corner = gl_VertexID % 3;
    barycentric = vec2(corner == 0 ? 1.0 : 0.0, corner == 1 ? 1.0 : 0.0);
    clip_zw = clip_position.zw;
    gl_Position = clip_position;
}
"""

_FRAGMENT_SHADER = """
#version 330
in vec2 barycentric;
in vec2 clip_zw;
out vec4 rast;
void main() {
    rast = vec4(barycentric, clip_zw.x / clip_zw.y, float(gl_PrimitiveID + 1));
}
"""

# Framebuffers kept for recently used resolutions (training and preview often alternate two).
_CACHED_FRAMEBUFFERS = 4


class _GLState:
    """The context, program and reusable buffers. Only ever touched on the GL worker thread."""

    def __init__(self) -> None:
        import moderngl

        self._moderngl = moderngl
        try:
            self.ctx = moderngl.create_standalone_context(backend="egl")
        except Exception as error:  # moderngl/glcontext raise bare Exceptions with the EGL message
            raise DeviceError(f"OpenGL rasterizer unavailable: could not create a headless EGL context ({error})") from error
        if self.ctx.version_code < 330:
            version = self.ctx.info.get("GL_VERSION", "?")
            self.ctx.release()
            raise DeviceError(f"OpenGL rasterizer unavailable: OpenGL 3.3 is required, the driver offers {version}")
        self.renderer = f"{self.ctx.info['GL_RENDERER']} / {self.ctx.info['GL_VERSION']}"
        self.max_size = int(min(self.ctx.info["GL_MAX_RENDERBUFFER_SIZE"], *self.ctx.info["GL_MAX_VIEWPORT_DIMS"]))
        self.program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.disable(moderngl.CULL_FACE)
        self.ctx.depth_func = "<"
        self._vertex_buffer = None
        self._vertex_array = None
        self._framebuffers: dict[tuple[int, int], object] = {}

    def _ensure_vertex_capacity(self, num_bytes: int) -> None:
        if self._vertex_buffer is not None and self._vertex_buffer.size >= num_bytes:
            return
        if self._vertex_buffer is not None:
            self._vertex_array.release()
            self._vertex_buffer.release()
        capacity = 1 << max(12, (num_bytes - 1).bit_length())  # grow by powers of two
        self._vertex_buffer = self.ctx.buffer(reserve=capacity)
        self._vertex_array = self.ctx.vertex_array(self.program, [(self._vertex_buffer, "4f", "clip_position")])

    def _framebuffer(self, height: int, width: int):
        key = (width, height)
        framebuffer = self._framebuffers.pop(key, None)
        if framebuffer is None:
            if len(self._framebuffers) >= _CACHED_FRAMEBUFFERS:
                oldest = next(iter(self._framebuffers))
                stale = self._framebuffers.pop(oldest)
                for attachment in (*stale.color_attachments, stale.depth_attachment):
                    attachment.release()
                stale.release()
            framebuffer = self.ctx.framebuffer(
                color_attachments=[self.ctx.renderbuffer(key, components=4, dtype="f4")],
                depth_attachment=self.ctx.depth_renderbuffer(key),
            )
        self._framebuffers[key] = framebuffer  # re-inserted last: most recently used
        return framebuffer

    def draw(self, corners: np.ndarray, out: np.ndarray) -> None:
        """Rasterize ``corners`` (B, 3F, 4) float32 into ``out`` (B, H, W, 4) float32."""
        batch, height, width = out.shape[:3]
        if max(height, width) > self.max_size:
            raise ValueError(f"resolution {height}x{width} exceeds this OpenGL driver's limit of {self.max_size}")
        self._ensure_vertex_capacity(max(corners.shape[1] * corners.shape[2] * corners.itemsize, 16))
        framebuffer = self._framebuffer(height, width)
        framebuffer.use()
        for b in range(batch):
            framebuffer.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            if corners.shape[1]:
                self._vertex_buffer.write(corners[b])
                self._vertex_array.render(self._moderngl.TRIANGLES, vertices=corners.shape[1])
            framebuffer.read_into(out[b], components=4, dtype="f4")


_state: _GLState | None = None
_executor: ThreadPoolExecutor | None = None
_startup_lock = threading.Lock()


def _gl_worker() -> tuple[ThreadPoolExecutor, _GLState]:
    """The process's GL thread and its state, created on first use (raises DeviceError)."""
    global _state, _executor
    with _startup_lock:
        if _state is None:
            executor = _executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="opengl-rasterizer")
            _executor = executor
            _state = executor.submit(_GLState).result()
        return _executor, _state


class OpenGLRasterizer(Rasterizer):
    """See the module docstring. Constructing it creates (or reuses) the process's context."""

    name = "opengl"

    def __init__(self) -> None:
        self._executor, self._state = _gl_worker()

    @property
    def renderer(self) -> str:
        """The driver's renderer and version strings, e.g. ``llvmpipe (LLVM 15.0.6, 256 bits) / 4.5 ...``."""
        return self._state.renderer

    def _rasterize(self, clip_pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> torch.Tensor:
        corners = clip_pos.to("cpu", torch.float32)[:, faces.cpu().reshape(-1)].contiguous().numpy()
        out = torch.empty((clip_pos.shape[0], height, width, 4), dtype=torch.float32)
        self._executor.submit(self._state.draw, corners, out.numpy()).result()
        return out
