"""Training configuration: plain dataclasses, presets, and JSON round trips (saved with the avatar).

:class:`TrainingConfig` holds what the training loop needs (resolution, steps, intervals,
threads); each method has its own config (e.g. :class:`backend.train.anr.ANRMethodConfig`).
Nested dataclasses convert to plain dicts and back with :func:`config_to_dict` and
:func:`config_from_dict`, which reject unknown keys with a message naming them.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

T = TypeVar("T")

# Avatar methods by name → "module:class" (imported on use, so listing them stays cheap).
# RAM-Avatar joins here once it exists.
METHODS: dict[str, str] = {"anr": "backend.train.anr:ANRMethod"}


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], values: Any, where: str = "config") -> T:
    """Rebuild dataclass ``cls`` (nested dataclasses included) from :func:`config_to_dict` output."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    built = {}
    for name, value in values.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind):
            value = config_from_dict(kind, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)  # JSON has no tuples
        built[name] = value
    try:
        return cls(**built)
    except TypeError as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass(frozen=True)
class TrainingConfig:
    """The training loop's settings (the method's own settings live in its config)."""

    method: str = "anr"
    preset: str = "cpu"  # which method preset the run started from (informational)
    resolution: int = 128  # longer side of the training images (rounded to the network's size step)
    iterations: int = 3000
    batch_size: int = 1
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = every core this process may use
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: bool = True  # float16 autocast + gradient scaling, on CUDA only
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    validate_every: int = 250
    validation_frames: int = 8  # held-out frames rendered at each validation (evenly spaced)
    cache_bytes: int = 2 << 30  # frames and geometry maps kept in memory up to this size
    rasterizer: str = "auto"

    def __post_init__(self) -> None:
        for name in ("resolution", "iterations", "batch_size", "checkpoint_every", "keep_checkpoints", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"training {name} must be at least 1, got {getattr(self, name)}")
        if self.threads < 0 or self.validation_frames < 0:
            raise ValueError("threads and validation_frames must not be negative")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def with_overrides(self, **overrides: Any) -> "TrainingConfig":
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})


TRAINING_PRESETS: dict[str, TrainingConfig] = {
    # A few minutes to half an hour on a laptop CPU; 256 works too at ~4x the time per step.
    "cpu": TrainingConfig(preset="cpu", resolution=128, iterations=3000, batch_size=1),
    # ANR's setting is 1024²; 512² trains about 4x faster with the same networks.
    "gpu": TrainingConfig(
        preset="gpu", resolution=512, iterations=200_000, batch_size=4, checkpoint_every=2000, validate_every=2000
    ),
}


def training_preset(name: str, **overrides: Any) -> TrainingConfig:
    try:
        base = TRAINING_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown training preset {name!r}; choose one of {sorted(TRAINING_PRESETS)}") from None
    return base.with_overrides(**overrides)


def available_threads() -> int:
    """CPU cores this process may run on (respects affinity masks / container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
