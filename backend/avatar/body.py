"""The body model of an avatar: what is recorded at training time and reloaded for rendering."""

from __future__ import annotations

import numpy as np
import torch

from backend.avatar.folder import BodyRecord
from backend.bodies import load_smplx
from backend.bodies.base import BodyModel
from backend.errors import ModelFileError
from backend.paths import ModelFolders


def body_record(body: BodyModel, betas: np.ndarray, gender: str) -> BodyRecord:
    return BodyRecord(
        family=body.family,
        label=body.label,
        source=str(body.source),
        is_standin=bool(body.is_standin),
        gender=gender,
        num_vertices=int(body.num_vertices),
        num_faces=int(body.faces.shape[0]),
        betas=[float(v) for v in np.asarray(betas, np.float32).reshape(-1)],
    )


def load_recorded_body(record: BodyRecord, folders: ModelFolders | None = None, device: str | torch.device = "cpu") -> BodyModel:
    """The body model an avatar was trained with.

    Stand-in avatars use the stand-in (regenerated identically on any machine). Others use the
    SMPL-X folder from ``folders`` (CLI flag / environment) when set, else the recorded file.
    The model must have the recorded topology: the avatar's texture is laid out on its surface.
    """
    if record.family != "smplx":
        raise ModelFileError(record.source, f"avatar body family {record.family!r} is not supported (expected smplx)")
    if record.is_standin:
        chosen = ModelFolders()
    else:
        folders = folders or ModelFolders.resolve()
        chosen = folders if folders.smplx is not None else ModelFolders(smplx=record.source)
    body = load_smplx(chosen, gender=record.gender, device=device)
    if body.num_vertices != record.num_vertices or int(body.faces.shape[0]) != record.num_faces:
        raise ModelFileError(
            body.source,
            f"has {body.num_vertices} vertices / {int(body.faces.shape[0])} faces, but the avatar was trained with "
            f"{record.label} ({record.num_vertices} / {record.num_faces})",
            "use the body model the avatar was trained with",
        )
    return body
