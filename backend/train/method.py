"""The plug-in interface every avatar method implements, and the registry of methods.

The training loop (:mod:`backend.train.trainer`), the avatar loader (:mod:`backend.avatar`) and
the benchmarks only talk to this interface, so a new method (RAM-Avatar) is one new module plus a
line in :data:`METHODS`; nothing else changes.

Lifecycle: ``Method(config, template, device)`` builds the modules needed to *render*;
``setup_training(training)`` adds what only training needs (discriminators, losses, optimizers).
The loop calls ``train_step(batch, step)``; checkpoints save ``modules()``, ``optimizers()``
and ``scalers()``; ``render(maps, identity)`` draws premultiplied RGBA.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from backend.data.dataset import FrameBatch
from backend.features.geometry import GeometryMaps
from backend.train.config import METHODS, TrainingConfig


class Method(abc.ABC):
    """One avatar method (a set of networks + how they are trained and used to render)."""

    name: ClassVar[str]
    config_class: ClassVar[type]
    # Presets of ``config_class`` by name ("cpu", "gpu").
    presets: ClassVar[dict[str, Any]]

    def __init__(self, config: Any, template_vertices: torch.Tensor, device: torch.device):
        """``config``: an instance of ``config_class``; ``template_vertices``: (V, 3) rest vertices of
        the body template (e.g. to place a triplane's box); ``device``: where the modules live."""
        self.config = config
        self.device = torch.device(device)
        self.training: TrainingConfig | None = None

    # ------------------------------------------------------------------ what the method needs

    @property
    @abc.abstractmethod
    def needs(self) -> frozenset[str]:
        """Geometry maps (``backend.features.MAP_NAMES``) the method reads."""

    @property
    def expand_offset(self) -> float:
        """Offset (metres) of the expanded mesh, when ``needs`` holds ``"expanded"``."""
        return 0.01

    @property
    @abc.abstractmethod
    def divisor(self) -> int:
        """Image sizes must be multiples of this (the networks' down-sampling factor)."""

    @property
    def keyframe_fraction(self) -> float:
        """Share of training frames used as keyframes (split optimisation); 0 = none."""
        return 0.0

    @property
    def keyframe_every(self) -> int:
        """Every k-th step is a keyframe step when keyframes are used."""
        return 2

    # ------------------------------------------------------------------ state

    @abc.abstractmethod
    def render_modules(self) -> dict[str, nn.Module]:
        """Modules needed to render (saved in every checkpoint, loaded by avatars)."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module with state (render modules + training-only ones such as discriminators)."""
        return self.render_modules()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def scalers(self) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ training and rendering

    @abc.abstractmethod
    def setup_training(self, training: TrainingConfig) -> None:
        """Build the training-only parts (losses, discriminators, optimizers)."""

    @abc.abstractmethod
    def train_step(self, batch: FrameBatch, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss terms as detached scalar tensors (for reporting)."""

    @abc.abstractmethod
    def render(self, maps: GeometryMaps, identity: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) premultiplied RGBA in [0, 1]; ``maps`` sizes are multiples of ``divisor``."""

    def prepare_inference(self) -> None:
        """Switch to evaluation mode and the fastest inference layout (called once by avatars)."""
        for module in self.render_modules().values():
            module.eval()

    def train_mode(self, enabled: bool = True) -> None:
        for module in self.modules().values():
            module.train(enabled)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """float16 autocast on CUDA (when enabled), none on the CPU."""
        if self.device.type != "cuda":
            return None
        return torch.float16 if self.training is None or self.training.mixed_precision else None


def method_names() -> list[str]:
    """Methods that can be trained (RAM-Avatar joins when it exists)."""
    return sorted(METHODS)


def method_class(name: str) -> type[Method]:
    try:
        module_name, _, class_name = METHODS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown avatar method {name!r}; available: {', '.join(method_names())}") from None
    return getattr(importlib.import_module(module_name), class_name)


def method_config(name: str, preset: str = "cpu", overrides: dict[str, Any] | None = None) -> Any:
    """The named preset of a method's config, with top-level fields overridden."""
    cls = method_class(name)
    try:
        base = cls.presets[preset]
    except KeyError:
        raise ValueError(f"unknown {name} preset {preset!r}; choose one of {sorted(cls.presets)}") from None
    return replace(base, **(overrides or {}))
