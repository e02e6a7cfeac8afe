"""The one interface all body-model families (SMPL-X, MANO, FaceVerse) implement.

Conventions: metres; the model's own coordinate frame (SMPL-X and MANO: Y up, the body
facing +Z); batched torch tensors; everything differentiable with respect to the
parameters. FaceVerse has no skeleton of its own: it exposes one rigid ``head`` joint.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class BodyOutput:
    vertices: torch.Tensor  # (B, V, 3) posed vertices
    joints: torch.Tensor  # (B, J, 3) posed kinematic joints, in ``joint_names`` order
    joint_transforms: torch.Tensor  # (B, J, 4, 4) world transform of each joint's frame


class BodyModel(torch.nn.Module, abc.ABC):
    """A parametric body model.

    Subclasses set the attributes below in ``__init__`` and implement the abstract methods.
    ``parameter_widths`` lists every per-frame parameter ``forward`` accepts (name -> width);
    parameters left out of a call default to zeros.
    """

    family: str  # "smplx" | "mano" | "faceverse"
    source: Path  # the model file this was loaded from
    is_standin: bool  # True for the generated stand-in files
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]  # parent index per joint, -1 for the root
    shape_names: tuple[str, ...]  # identity directions (betas / FaceVerse id)
    expression_names: tuple[str, ...]
    parameter_widths: dict[str, int]

    @property
    def label(self) -> str:
        """Human-readable name; stand-ins say so wherever they are shown."""
        text = f"{self.family.upper()} ({self.source.name})"
        return text + " [stand-in]" if self.is_standin else text

    @property
    @abc.abstractmethod
    def faces(self) -> torch.Tensor:
        """(F, 3) int64 triangle indices."""

    @property
    def uv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(uv_coords (T, 2) in [0, 1], uv_faces (F, 3))`` when the model has UVs, else None."""
        return None

    @property
    @abc.abstractmethod
    def skinning_weights(self) -> torch.Tensor:
        """(V, J) linear-blend-skinning weights; rows sum to 1."""

    @abc.abstractmethod
    def shape_directions(self) -> torch.Tensor:
        """(V, 3, S) identity blendshapes, in ``shape_names`` order."""

    @abc.abstractmethod
    def expression_directions(self) -> torch.Tensor:
        """(V, 3, E) expression blendshapes, in ``expression_names`` order."""

    @abc.abstractmethod
    def rest_vertices(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        """(V, 3) unposed vertices with the identity ``betas`` (S,) applied (zeros when None)."""

    @abc.abstractmethod
    def rest_joints(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        """(J, 3) unposed joint locations for the identity ``betas``."""

    @abc.abstractmethod
    def forward(self, **params: torch.Tensor) -> BodyOutput:
        """Pose the model; every tensor is (B, width) as listed in ``parameter_widths``."""

    @property
    def num_vertices(self) -> int:
        return int(self.skinning_weights.shape[0])

    def zero_parameters(self, batch: int = 1) -> dict[str, torch.Tensor]:
        device = self.faces.device
        return {name: torch.zeros(batch, width, device=device) for name, width in self.parameter_widths.items()}

    def check_parameters(self, params: dict[str, torch.Tensor]) -> int:
        """Validate names and widths of a parameter dict; return the batch size."""
        batch = None
        for name, value in params.items():
            if name not in self.parameter_widths:
                raise ValueError(
                    f"{self.label}: unknown parameter {name!r}; expected some of {sorted(self.parameter_widths)}"
                )
            width = self.parameter_widths[name]
            if value.ndim != 2 or value.shape[1] != width:
                raise ValueError(f"{self.label}: parameter {name!r} must be (batch, {width}), got {tuple(value.shape)}")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"{self.label}: parameter {name!r} has batch {value.shape[0]}, others have {batch}")
        return batch or 1

    @torch.no_grad()
    def template(self, betas: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Everything a rig builder (the Blender add-on) needs, as plain float32/int32 arrays.

        ``rest_vertices``/``rest_joints`` include ``betas``; ``shape_directions`` and
        ``expression_directions`` are per-vertex offsets for shape keys.
        """
        device = self.faces.device
        beta_tensor = None if betas is None else torch.as_tensor(betas, dtype=torch.float32, device=device)
        out = {
            "rest_vertices": self.rest_vertices(beta_tensor),
            "rest_joints": self.rest_joints(beta_tensor),
            "faces": self.faces,
            "skinning_weights": self.skinning_weights,
            "parents": torch.tensor(self.parents),
            "shape_directions": self.shape_directions(),
            "expression_directions": self.expression_directions(),
        }
        arrays = {key: value.detach().cpu().numpy() for key, value in out.items()}
        for key in ("faces", "parents"):
            arrays[key] = arrays[key].astype(np.int32)
        for key, value in arrays.items():
            if value.dtype.kind == "f":
                arrays[key] = value.astype(np.float32)
        if self.uv is not None:
            arrays["uv_coords"] = self.uv[0].detach().cpu().numpy().astype(np.float32)
            arrays["uv_faces"] = self.uv[1].detach().cpu().numpy().astype(np.int32)
        return arrays
