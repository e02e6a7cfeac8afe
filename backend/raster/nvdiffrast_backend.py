"""nvdiffrast's CUDA rasterizer (``RasterizeCudaContext``), used when a CUDA GPU and the
``nvdiffrast`` package (installed from its git repository) are present. Its output convention
is the one the whole package follows, so this is a thin wrapper.
"""

from __future__ import annotations

import torch

from backend.errors import DeviceError
from backend.raster.interface import Rasterizer


class NvdiffrastRasterizer(Rasterizer):
    name = "nvdiffrast"

    def __init__(self, device: str | torch.device | None = None) -> None:
        try:
            import nvdiffrast.torch as dr
        except Exception as error:  # ImportError, or a failed build of its CUDA plugin
            raise DeviceError(f"nvdiffrast rasterizer unavailable: cannot import nvdiffrast.torch ({error})") from error
        if not torch.cuda.is_available():
            raise DeviceError("nvdiffrast rasterizer unavailable: CUDA is not available to torch")
        self.device = torch.device(device if device is not None else "cuda")
        if self.device.type != "cuda":
            raise DeviceError(f"nvdiffrast rasterizer needs a CUDA device, got {self.device}")
        self._dr = dr
        self._context = dr.RasterizeCudaContext(device=self.device)

    def _rasterize(self, clip_pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> torch.Tensor:
        positions = clip_pos.to(self.device, torch.float32).contiguous()
        triangles = faces.to(self.device, torch.int32).contiguous()
        rast, _ = self._dr.rasterize(self._context, positions, triangles, (height, width))
        return rast
