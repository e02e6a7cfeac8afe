"""Choosing the compute device and giving its memory back on shutdown."""

from __future__ import annotations

from backend.errors import DeviceError

DEVICE_CHOICES = ("auto", "cuda", "cpu")


def select_device(requested: str) -> str:
    """``auto`` picks CUDA when torch can use it, else CPU; ``cuda`` without a usable GPU is an error."""
    if requested not in DEVICE_CHOICES:
        raise DeviceError(f"device {requested!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if requested == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        built = "built with CUDA " + torch.version.cuda if torch.version.cuda else "built without CUDA (CPU-only wheel)"
        raise DeviceError(
            f"device 'cuda' requested but torch {torch.__version__} cannot use a GPU here ({built}); "
            "use --device cpu or auto, or install a CUDA build of torch"
        )
    return "cpu"


def release_device(device: str) -> None:
    """Return cached GPU memory to the driver (nothing to do on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()
