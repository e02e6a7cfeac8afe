"""Body models: SMPL-X and MANO through the ``smplx`` package, FaceVerse through our own loader.

Every family loads from a real model file chosen by the user, or from a generated,
format-identical stand-in when no folder is set; both go through the same loader.
"""

from __future__ import annotations

import torch

from backend.bodies.base import BodyModel, BodyOutput
from backend.paths import ModelFolders

__all__ = ["BodyModel", "BodyOutput", "load_smplx", "load_mano", "load_faceverse", "describe_models"]


def load_smplx(folders: ModelFolders | None = None, gender: str = "neutral", device: str | torch.device = "cpu") -> BodyModel:
    from backend.bodies.smplx_family import load_smplx as _load

    folders = folders or ModelFolders.resolve()
    return _load(folders.smplx, gender=gender, device=device)


def load_mano(folders: ModelFolders | None = None, side: str = "right", device: str | torch.device = "cpu") -> BodyModel:
    from backend.bodies.smplx_family import load_mano as _load

    folders = folders or ModelFolders.resolve()
    return _load(folders.mano, side=side, device=device)


def load_faceverse(folders: ModelFolders | None = None, device: str | torch.device = "cpu") -> BodyModel:
    from backend.bodies.faceverse import load_faceverse as _load

    folders = folders or ModelFolders.resolve()
    return _load(folders.faceverse, device=device)


def describe_models(folders: ModelFolders | None = None) -> str:
    """One line per family: what is in use, and whether it is a stand-in."""
    folders = folders or ModelFolders.resolve()
    lines = []
    for family, loader in (("smplx", load_smplx), ("mano", load_mano), ("faceverse", load_faceverse)):
        model = loader(folders)
        lines.append(
            f"{family:9s} {model.label}: {model.num_vertices} vertices, {len(model.joint_names)} joints, "
            f"{len(model.shape_names)} shape / {len(model.expression_names)} expression directions - {model.source}"
        )
    return "\n".join(lines)
