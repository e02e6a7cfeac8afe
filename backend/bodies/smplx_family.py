"""SMPL-X and MANO behind the project's :class:`BodyModel` interface, computed by the ``smplx`` package.

Conventions (project-wide):

* **Hand pose** is *absolute*: 15 finger joints x axis-angle, zero = the flat hand of the template
  (smplx's ``flat_hand_mean=True``; the file's ``hands_mean`` is never added). With ``use_pca``
  the hand parameters are coefficients of the file's ``hands_components`` rows, again without the
  mean. Converting poses fitted with ``flat_hand_mean=False`` means adding that mean first.
* **Joints** are the kinematic joints only: 55 for SMPL-X (smplx's order and names,
  ``smplx.joint_names.JOINT_NAMES[:55]``), 16 for MANO (wrist, then index, middle, pinky, ring,
  thumb with three joints each, named like SMPL-X's hand joints: ``right_index1`` ...).
* **joint_transforms** ``T[b, j]`` is the 4x4 world transform of joint ``j``'s frame:
  ``T = [[R_j, p_j], [0, 0, 0, 1]]`` with ``R_j`` the accumulated rotation from the root (including
  ``global_orient``) and ``p_j`` the posed joint position (including ``transl``). The joint's rest
  frame sits at the rest joint ``J_j`` (same betas and expression) with the model's axes, so a
  point ``x`` of the rest body that moves rigidly with joint ``j`` ends at ``T_j @ [x - J_j, 1]``;
  smplx's skinning is ``v' = sum_j w_j T_j [v + pose_offsets(v) - J_j, 1]``.

MANO's left-hand file has a known defect (vchoutas/smplx#48): its ``shapedirs`` x components equal
the right hand's instead of being mirrored, so equal betas give differently shaped hands. When
``MANO_RIGHT`` sits next to the left file and the two match, the left x components are negated.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import smplx
import torch
from smplx.joint_names import JOINT_NAMES
from smplx.lbs import batch_rodrigues
from smplx.utils import Struct

from backend.bodies.base import BodyModel, BodyOutput
from backend.bodies.model_files import (
    HAND_POSE_WIDTH,
    ModelData,
    converted_copy,
    locate_model_file,
    mano_file_names,
    read_model_file,
    smplx_file_names,
    standin_record,
    validate_mano,
    validate_smplx,
)
from backend.bodies.standin_hand import DIGITS
from backend.errors import ModelFileError
from backend.paths import MODEL_SOURCES

SMPLX_JOINT_NAMES = tuple(JOINT_NAMES[:55])
SMPLX_GENDERS = ("neutral", "male", "female")
MANO_SIDES = ("right", "left")


def mano_joint_names(side: str) -> tuple[str, ...]:
    return (f"{side}_wrist",) + tuple(f"{side}_{digit}{k}" for digit in DIGITS for k in (1, 2, 3))


def _quiet(factory, *args, **kwargs):
    """Build a smplx model without its "only 10 shape coefficients" prints on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return factory(*args, **kwargs)


def _parents(kintree_table: np.ndarray) -> tuple[int, ...]:
    parents = np.asarray(kintree_table)[0].astype(np.int64)
    parents[0] = -1  # real files store the root's parent as 2**32 - 1
    return tuple(int(p) for p in parents)


def _read_uv(data: ModelData, model_file: Path, num_faces: int) -> tuple[np.ndarray, np.ndarray] | None:
    """UVs from the file's ``vt``/``ft`` or from ``smplx_uv.obj`` next to it."""
    if "vt" in data.arrays and "ft" in data.arrays:
        return data.dense("vt").astype(np.float32), data.dense("ft").astype(np.int64)
    obj = model_file.parent / "smplx_uv.obj"
    if not obj.is_file():
        return None
    coords, faces = [], []
    try:
        with open(obj, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "vt":
                    coords.append((float(parts[1]), float(parts[2])))
                elif parts[0] == "f":
                    corners = [p.split("/") for p in parts[1:]]
                    if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                        raise ModelFileError(obj, f"face line {line.strip()!r}: expected a triangle with texture indices")
                    faces.append([int(c[1]) - 1 for c in corners])
    except ValueError as error:
        raise ModelFileError(obj, f"unreadable OBJ ({error})") from None
    vt, ft = np.asarray(coords, dtype=np.float32), np.asarray(faces, dtype=np.int64)
    if len(ft) != num_faces:
        raise ModelFileError(obj, f"has {len(ft)} faces, the model has {num_faces}")
    if ft.size and (ft.min() < 0 or ft.max() >= len(vt)):
        raise ModelFileError(obj, "texture indices out of range")
    return vt, ft


class _SmplxFamilyBody(BodyModel):
    """What SMPL-X and MANO share: the wrapped smplx layer, rest shape, world joint transforms."""

    layer: torch.nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._uv: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def faces(self) -> torch.Tensor:
        return self.layer.faces_tensor

    @property
    def uv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._uv

    def _set_uv(self, uv: tuple[np.ndarray, np.ndarray] | None) -> None:
        if uv is not None:
            self.register_buffer("uv_coords", torch.as_tensor(uv[0]), persistent=False)
            self.register_buffer("uv_faces", torch.as_tensor(uv[1]), persistent=False)
            self._uv = (self.uv_coords, self.uv_faces)

    def _apply(self, fn, recurse=True):  # keep the uv tuple pointing at the moved buffers
        result = super()._apply(fn, recurse)
        if self._uv is not None:
            self._uv = (self.uv_coords, self.uv_faces)
        return result

    @property
    def skinning_weights(self) -> torch.Tensor:
        return self.layer.lbs_weights

    def shape_directions(self) -> torch.Tensor:
        return self.layer.shapedirs

    def rest_vertices(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        vertices = self.layer.v_template
        if betas is not None:
            vertices = vertices + torch.einsum("l,vkl->vk", betas.reshape(-1), self.layer.shapedirs)
        return vertices

    def rest_joints(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        return self.layer.J_regressor @ self.rest_vertices(betas)

    def _joint_transforms(self, full_pose: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
        """World frames (B, J, 4, 4) from the axis-angle ``full_pose`` (B, 3J) and posed joints (B, J, 3)."""
        batch, count = joints.shape[:2]
        local = batch_rodrigues(full_pose.reshape(-1, 3)).reshape(batch, count, 3, 3)
        chain = [local[:, 0]]
        for joint in range(1, count):
            chain.append(chain[self.parents[joint]] @ local[:, joint])
        rotations = torch.stack(chain, dim=1)
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=joints.dtype, device=joints.device).expand(batch, count, 1, 4)
        return torch.cat([torch.cat([rotations, joints.unsqueeze(-1)], dim=-1), bottom], dim=-2)

    def _complete(self, params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """Validate, broadcast (1, S) betas over the batch and fill missing parameters with zeros."""
        params = dict(params)
        others = [v.shape[0] for k, v in params.items() if k != "betas" and v.ndim == 2]
        betas = params.get("betas")
        if betas is not None and betas.ndim == 2 and betas.shape[0] == 1 and others:
            params["betas"] = betas.expand(max(others), -1)
        batch = self.check_parameters(params)
        like = self.layer.v_template
        for name, width in self.parameter_widths.items():
            if name not in params:
                params[name] = torch.zeros(batch, width, dtype=like.dtype, device=like.device)
        return params, batch


class SmplxBody(_SmplxFamilyBody):
    """SMPL-X (55 joints, optional PCA hands, expressions) computed by ``smplx.SMPLX``."""

    family = "smplx"

    def __init__(
        self,
        model_file: Path,
        data: ModelData,
        gender: str,
        is_standin: bool,
        num_betas: int | None,
        num_expressions: int | None,
        use_pca: bool,
        num_pca_comps: int,
    ):
        super().__init__()
        sizes = validate_smplx(data)
        source_for_smplx = converted_copy(data) if data.needs_conversion else model_file
        old_layout = sizes["S"] < 400  # 10 shape + 10 expression directions
        file_betas, file_expressions = (10, 10) if old_layout else (min(sizes["S"], 300), max(sizes["S"] - 300, 0))
        self.num_betas = file_betas if num_betas is None else min(num_betas, file_betas)
        self.num_expressions = file_expressions if num_expressions is None else min(num_expressions, file_expressions)
        if use_pca and not 1 <= num_pca_comps <= sizes["C"]:
            raise ValueError(f"num_pca_comps must be in 1..{sizes['C']}, got {num_pca_comps}")
        self.use_pca = use_pca
        self.layer = _quiet(
            smplx.SMPLX,
            str(source_for_smplx),
            gender=gender,
            ext="npz",
            num_betas=self.num_betas,
            num_expression_coeffs=self.num_expressions,
            use_pca=use_pca,
            num_pca_comps=num_pca_comps,
            flat_hand_mean=True,
            use_face_contour=False,
            **{f"create_{name}": False for name in ("betas", "global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose", "leye_pose", "reye_pose", "expression", "transl")},
        )
        self.source = model_file
        self.gender = gender
        self.is_standin = is_standin
        self.joint_names = SMPLX_JOINT_NAMES
        self.parents = _parents(data.arrays["kintree_table"])
        if is_standin:
            from backend.bodies.standin_smplx import EXPRESSION_NAMES, SHAPE_NAMES

            self.shape_names = SHAPE_NAMES[: self.num_betas]
            self.expression_names = EXPRESSION_NAMES[: self.num_expressions]
        else:
            self.shape_names = tuple(f"beta_{k:03d}" for k in range(self.num_betas))
            self.expression_names = tuple(f"expression_{k:03d}" for k in range(self.num_expressions))
        hand_width = num_pca_comps if use_pca else HAND_POSE_WIDTH
        self.parameter_widths = {
            "betas": self.num_betas,
            "global_orient": 3,
            "body_pose": 63,
            "left_hand_pose": hand_width,
            "right_hand_pose": hand_width,
            "jaw_pose": 3,
            "leye_pose": 3,
            "reye_pose": 3,
            "expression": self.num_expressions,
            "transl": 3,
        }
        self._set_uv(_read_uv(data, model_file, sizes["F"]))

    def expression_directions(self) -> torch.Tensor:
        return self.layer.expr_dirs

    def forward(self, **params: torch.Tensor) -> BodyOutput:
        params, _ = self._complete(params)
        out = self.layer(**params, return_full_pose=True, return_shaped=False)
        joints = out.joints[:, :55]
        return BodyOutput(vertices=out.vertices, joints=joints, joint_transforms=self._joint_transforms(out.full_pose, joints))


class ManoBody(_SmplxFamilyBody):
    """MANO (one hand, 16 joints) computed by ``smplx.MANO``."""

    family = "mano"

    def __init__(self, model_file: Path, data: ModelData, side: str, is_standin: bool, num_betas: int | None, use_pca: bool, num_pca_comps: int):
        super().__init__()
        sizes = validate_mano(data)
        arrays = {key: data.dense(key) for key in data.arrays}
        if side == "left":
            _fix_left_shapedirs(model_file, arrays)
        file_betas = min(sizes["S"], 10) if sizes["S"] < 300 else 300  # as smplx itself decides
        self.num_betas = file_betas if num_betas is None else min(num_betas, file_betas)
        if use_pca and not 1 <= num_pca_comps <= sizes["C"]:
            raise ValueError(f"num_pca_comps must be in 1..{sizes['C']}, got {num_pca_comps}")
        self.use_pca = use_pca and num_pca_comps < HAND_POSE_WIDTH
        self.layer = _quiet(
            smplx.MANO,
            str(model_file),
            is_rhand=side == "right",
            data_struct=Struct(**arrays),
            num_betas=self.num_betas,
            use_pca=self.use_pca,
            num_pca_comps=num_pca_comps,
            flat_hand_mean=True,
            create_betas=False,
            create_global_orient=False,
            create_hand_pose=False,
            create_transl=False,
        )
        self.source = model_file
        self.side = side
        self.is_standin = is_standin
        self.joint_names = mano_joint_names(side)
        self.parents = _parents(arrays["kintree_table"])
        if is_standin:
            from backend.bodies.standin_mano import SHAPE_NAMES

            self.shape_names = SHAPE_NAMES[: self.num_betas]
        else:
            self.shape_names = tuple(f"beta_{k:03d}" for k in range(self.num_betas))
        self.expression_names = ()
        self.parameter_widths = {
            "betas": self.num_betas,
            "global_orient": 3,
            "hand_pose": num_pca_comps if self.use_pca else HAND_POSE_WIDTH,
            "transl": 3,
        }
        self._set_uv(_read_uv(data, model_file, sizes["F"]) if "vt" in data.arrays else None)

    def expression_directions(self) -> torch.Tensor:
        return self.layer.shapedirs[:, :, :0]

    def forward(self, **params: torch.Tensor) -> BodyOutput:
        params, _ = self._complete(params)
        out = self.layer(**params, return_full_pose=True)
        return BodyOutput(vertices=out.vertices, joints=out.joints, joint_transforms=self._joint_transforms(out.full_pose, out.joints))


def _fix_left_shapedirs(left_file: Path, arrays: dict[str, np.ndarray]) -> None:
    """Negate the x components of a left MANO's shapedirs when they are the right hand's (smplx#48)."""
    for name in mano_file_names("right"):
        right_file = left_file.with_name(name)
        if right_file.is_file():
            break
    else:
        return
    right = read_model_file(right_file, "mano")
    if "shapedirs" not in right.arrays:
        return
    right_dirs = right.dense("shapedirs")
    left_dirs = arrays["shapedirs"]
    if right_dirs.shape == left_dirs.shape and np.allclose(left_dirs[:, 0], right_dirs[:, 0], atol=1e-6):
        left_dirs = left_dirs.copy()
        left_dirs[:, 0] *= -1.0
        arrays["shapedirs"] = left_dirs


def load_smplx(
    path: Path | str | None,
    gender: str = "neutral",
    device: str | torch.device = "cpu",
    *,
    num_betas: int | None = None,
    num_expressions: int | None = None,
    use_pca: bool = False,
    num_pca_comps: int = 6,
) -> SmplxBody:
    """Load SMPL-X from a folder (or its ``smplx/`` sub-folder) or a file; ``None`` = the stand-in.

    ``num_betas`` / ``num_expressions`` default to all the file has (10 and 10 for old files,
    300 and 100 for new ones). Hands are absolute axis-angle (45 per hand) unless ``use_pca``.
    """
    gender = gender.lower()
    if gender not in SMPLX_GENDERS:
        raise ValueError(f"unknown SMPL-X gender {gender!r}; expected one of {SMPLX_GENDERS}")
    if path is None:
        from backend.bodies.standin_smplx import standin_smplx_file

        model_file = standin_smplx_file(gender)
    else:
        model_file = locate_model_file(path, "smplx", smplx_file_names(gender))
    data = read_model_file(model_file, "smplx")
    body = SmplxBody(model_file, data, gender, standin_record(model_file) is not None, num_betas, num_expressions, use_pca, num_pca_comps)
    return body.to(device)


def load_mano(
    path: Path | str | None,
    side: str = "right",
    device: str | torch.device = "cpu",
    *,
    num_betas: int | None = None,
    use_pca: bool = False,
    num_pca_comps: int = 6,
) -> ManoBody:
    """Load MANO (``side`` "right" or "left") from a folder, its ``mano/`` sub-folder or a file; ``None`` = the stand-in."""
    side = side.lower()
    if side not in MANO_SIDES:
        raise ValueError(f"unknown MANO side {side!r}; expected one of {MANO_SIDES}")
    if path is None:
        from backend.bodies.standin_mano import standin_mano_file

        model_file = standin_mano_file(side)
    else:
        model_file = locate_model_file(path, "mano", mano_file_names(side))
    other_side = "LEFT" if side == "right" else "RIGHT"
    if other_side in model_file.name.upper():
        raise ModelFileError(model_file, f"is named as the {other_side.lower()} hand, but side={side!r} was asked for", hint=MODEL_SOURCES["mano"])
    data = read_model_file(model_file, "mano")
    body = ManoBody(model_file, data, side, standin_record(model_file) is not None, num_betas, use_pca, num_pca_comps)
    return body.to(device)
