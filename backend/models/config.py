"""Shared behaviour of the network configs: named presets, and plain-dict round trips for checkpoints."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

Config = TypeVar("Config", bound="PresetConfig")


class PresetConfig:
    """Mixin for frozen dataclasses with a ``PRESETS`` table (filled in after the class)."""

    PRESETS: ClassVar[dict[str, Any]] = {}
    KIND: ClassVar[str] = "config"

    @classmethod
    def preset(cls: type[Config], name: str, **overrides: Any) -> Config:
        """A named preset, with any fields overridden."""
        try:
            base = cls.PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown {cls.KIND} preset {name!r}; choose one of {sorted(cls.PRESETS)}") from None
        return cls.from_dict({**asdict(base), **overrides})

    @classmethod
    def from_dict(cls: type[Config], values: dict[str, Any]) -> Config:
        """Rebuild from :meth:`to_dict` output (e.g. a checkpoint's JSON); unknown keys are an error."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
