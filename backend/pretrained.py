"""Finding and safely loading pretrained weights that live on this computer (never downloaded).

Search order for each kind of weights:

1. an explicit path (argument), else the kind's environment variable (``NEURAL_AVATAR_VGG19``, …);
   either one naming a missing file is an error, not a silent fallback;
2. torch's hub cache, ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``),
   where torchvision keeps ``vgg19-dcbb9e9d.pth`` and friends;
3. the ``lpips`` package's own ``weights/v0.1/`` folder, if that package is installed (LPIPS heads only);
4. the project cache, ``backend.paths.cache_dir()/weights/``.

Files load with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling) or, for
``.safetensors``, with safetensors. Key names and shapes are checked against the network they
are meant for, and every problem is a :class:`~backend.errors.ModelFileError` naming the file.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from backend.errors import ModelFileError
from backend.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsKind:
    """One kind of pretrained weights and where it is looked for."""

    key: str
    description: str
    env_var: str
    filenames: tuple[str, ...]  # names accepted in the hub cache / lpips package / project cache
    source: str  # where a user gets the file (named in messages)
    in_torch_hub: bool = False
    in_lpips_package: bool = False
    cache_subdir: str = ""


_TORCHVISION = "https://download.pytorch.org/models/"
_LPIPS = "the lpips package (pip install lpips) or https://github.com/richzhang/PerceptualSimilarity, lpips/weights/v0.1/"

WEIGHTS: dict[str, WeightsKind] = {
    kind.key: kind
    for kind in (
        WeightsKind(
            key="vgg19", description="VGG19 (perceptual loss)", env_var="NEURAL_AVATAR_VGG19",
            filenames=("vgg19-dcbb9e9d.pth", "vgg19.safetensors"), source=_TORCHVISION + "vgg19-dcbb9e9d.pth",
            in_torch_hub=True,
        ),
        WeightsKind(
            key="vgg16", description="VGG16 (LPIPS backbone)", env_var="NEURAL_AVATAR_VGG16",
            filenames=("vgg16-397923af.pth", "vgg16.safetensors"), source=_TORCHVISION + "vgg16-397923af.pth",
            in_torch_hub=True,
        ),
        WeightsKind(
            key="alexnet", description="AlexNet (LPIPS backbone)", env_var="NEURAL_AVATAR_ALEXNET",
            filenames=("alexnet-owt-7be5be79.pth", "alexnet.safetensors"), source=_TORCHVISION + "alexnet-owt-7be5be79.pth",
            in_torch_hub=True,
        ),
        WeightsKind(
            key="lpips_vgg", description="LPIPS v0.1 linear layers for VGG", env_var="NEURAL_AVATAR_LPIPS_VGG",
            filenames=("vgg.pth", "vgg.safetensors"), source=_LPIPS + "vgg.pth",
            in_lpips_package=True, cache_subdir="lpips",
        ),
        WeightsKind(
            key="lpips_alex", description="LPIPS v0.1 linear layers for AlexNet", env_var="NEURAL_AVATAR_LPIPS_ALEX",
            filenames=("alex.pth", "alex.safetensors"), source=_LPIPS + "alex.pth",
            in_lpips_package=True, cache_subdir="lpips",
        ),
    )
}


def weights_kind(key: str) -> WeightsKind:
    try:
        return WEIGHTS[key]
    except KeyError:
        raise ValueError(f"unknown kind of weights {key!r}; known: {sorted(WEIGHTS)}") from None


def project_weights_dir() -> Path:
    """``cache_dir()/weights``: the project's own place for weight files."""
    return cache_dir() / "weights"


def _lpips_package_dir() -> Path | None:
    # find_spec locates the package without importing it (its import pulls in torchvision).
    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent / "weights" / "v0.1"


def search_folders(key: str) -> list[Path]:
    """The folders searched for ``key`` (after the explicit path and environment variable), in order."""
    kind = weights_kind(key)
    folders: list[Path] = []
    if kind.in_torch_hub:
        folders.append(Path(torch.hub.get_dir()) / "checkpoints")
    if kind.in_lpips_package:
        package = _lpips_package_dir()
        if package is not None:
            folders.append(package)
    folders.append(project_weights_dir() / kind.cache_subdir if kind.cache_subdir else project_weights_dir())
    return folders


def find_weights(key: str, explicit: str | Path | None = None) -> Path | None:
    """The weights file for ``key``, or ``None`` when none is found (see the module docstring)."""
    kind = weights_kind(key)
    chosen = explicit if explicit else os.environ.get(kind.env_var)
    if chosen:
        path = Path(chosen).expanduser()
        origin = "given path" if explicit else f"${kind.env_var}"
        if not path.is_file():
            raise ModelFileError(path, f"{kind.description} weights file not found ({origin})", f"get it from {kind.source}")
        return path
    for folder in search_folders(key):
        for name in kind.filenames:
            if (folder / name).is_file():
                return folder / name
    return None


def missing_message(key: str) -> str:
    """Says where ``key`` was looked for and how to provide it."""
    kind = weights_kind(key)
    places = ", ".join(str(folder) for folder in search_folders(key))
    return (
        f"{kind.description} weights not found (looked for {' / '.join(kind.filenames)} in {places}; "
        f"${kind.env_var} is unset). Get {kind.source} and put it in one of those folders "
        f"or point ${kind.env_var} at it."
    )


_warned: set[str] = set()


def warn_missing_once(key: str, consequence: str) -> None:
    """Log the missing-weights message for ``key`` once per process."""
    if key not in _warned:
        _warned.add(key)
        log.warning("%s %s", missing_message(key), consequence)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a plain ``.pth`` state dict, loaded without unpickling code."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(path, "file not found") from None
    except pickle.UnpicklingError as error:
        # torch's message is long; its "WeightsUnpickler error:" part says what was wrong.
        detail = str(error).partition("WeightsUnpickler error:")[2].strip().splitlines()
        detail_text = detail[0][:200] if detail else str(error).splitlines()[0][:200]
        if "Unsupported global" in detail_text:
            raise ModelFileError(
                path, f"holds Python objects besides tensors; refused, since loading it could run code ({detail_text})",
                "expected a plain PyTorch state dict (.pth) or a .safetensors file",
            ) from None
        raise ModelFileError(path, f"cannot be read as a weights file ({detail_text})") from None
    except Exception as error:  # noqa: BLE001 - any reader failure means the file is unusable
        raise ModelFileError(
            path, f"cannot be read as a weights file ({type(error).__name__}: {str(error).splitlines()[0][:200]})",
            "expected a plain PyTorch state dict (.pth) or a .safetensors file",
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(path, "does not hold a flat state dict of tensors")
    return dict(state)


def load_into(module: nn.Module, path: str | Path) -> None:
    """Copy weights from ``path`` into every parameter and buffer of ``module``.

    Keys the module does not have are ignored (a torchvision file also holds the classifier and
    deeper layers); a key the module needs but the file lacks, or a shape mismatch, is an error
    naming the file.
    """
    path = Path(path)
    state = read_state_dict(path)
    wanted = module.state_dict()
    missing = [key for key in wanted if key not in state]
    mismatched = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(target.shape)})"
        for key, target in wanted.items()
        if key in state and state[key].shape != target.shape
    ]
    if missing or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys ({', '.join(missing[:4])}{', …' if len(missing) > 4 else ''})")
        if mismatched:
            problems.append(f"wrong shapes: {', '.join(mismatched[:4])}{', …' if len(mismatched) > 4 else ''}")
        raise ModelFileError(path, "; ".join(problems), f"expected weights for {type(module).__name__}")
    module.load_state_dict({key: state[key] for key in wanted}, strict=True)
