"""Where things live: the cache folder and the body-model folders.

Model folders are chosen, in order, by an explicit argument (CLI flag / add-on preference),
a per-family environment variable, the common root variable (with ``smplx/``, ``mano/``,
``faceverse/`` sub-folders, as ``smplx.create`` expects), and otherwise the generated
stand-ins in the cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

CACHE_ENV = "NEURAL_AVATAR_CACHE"
MODELS_ENV = "NEURAL_AVATAR_MODELS"
FAMILIES = ("smplx", "mano", "faceverse")
FAMILY_ENV = {family: f"NEURAL_AVATAR_{family.upper()}" for family in FAMILIES}

# Where users get the real, licensed models (named in errors about missing files).
MODEL_SOURCES = {
    "smplx": "https://smpl-x.is.tue.mpg.de (SMPLX_NEUTRAL.npz / SMPLX_MALE.npz / SMPLX_FEMALE.npz)",
    "mano": "https://mano.is.tue.mpg.de (MANO_RIGHT.pkl / MANO_LEFT.pkl)",
    "faceverse": "https://github.com/LizhenWangT/FaceVerse (faceverse_v3_1.npy or faceverse_simple_v2.npy)",
}


def cache_dir() -> Path:
    """The project's cache folder (stand-in models, converted model files), created on demand."""
    root = os.environ.get(CACHE_ENV)
    if root:
        path = Path(root).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "neural-avatar"
    path.mkdir(parents=True, exist_ok=True)
    return path


def standin_dir() -> Path:
    """Folder holding the generated stand-in models, one sub-folder per family."""
    return cache_dir() / "standins"


@dataclass(frozen=True)
class ModelFolders:
    """One folder (or file) per body-model family; ``None`` means "use the stand-in"."""

    smplx: Path | None = None
    mano: Path | None = None
    faceverse: Path | None = None

    @classmethod
    def resolve(cls, **explicit: str | Path | None) -> "ModelFolders":
        """Explicit values win, then ``NEURAL_AVATAR_<FAMILY>``, then ``NEURAL_AVATAR_MODELS/<family>``."""
        unknown = set(explicit) - set(FAMILIES)
        if unknown:
            raise TypeError(f"unknown model families: {sorted(unknown)}")
        root = os.environ.get(MODELS_ENV)
        chosen: dict[str, Path | None] = {}
        for family in FAMILIES:
            value = explicit.get(family) or os.environ.get(FAMILY_ENV[family])
            if not value and root:
                candidate = Path(root).expanduser() / family
                value = candidate if candidate.exists() else None
            chosen[family] = Path(value).expanduser() if value else None
        return cls(**chosen)

    def with_family(self, family: str, path: str | Path | None) -> "ModelFolders":
        return replace(self, **{family: Path(path).expanduser() if path else None})

    def uses_standin(self, family: str) -> bool:
        return getattr(self, family) is None
