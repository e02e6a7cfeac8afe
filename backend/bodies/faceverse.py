"""FaceVerse face model: a safe reader for the released ``.npy`` files (v2 and v3) and ``FaceVerseModel``.

A FaceVerse file is a pickled dict saved with ``np.save``. It is read here with numpy's ``.npy``
header parser and the restricted unpickler of ``model_files`` (the one SMPL-family pickles go
through), which only rebuilds numpy arrays, dtypes, scalars and plain containers, so a crafted
file cannot run code.

Frames and units (checked against the released FaceVerse code and a mesh exported from v3):

* v3 (``faceverse_v3_1.npy``, ``faceverse_v3_6_s.npy``): millimetres, Y up, the face looking
  toward +Z, +X the subject's left. The released tracker scales by 0.01 (decimetres: its camera
  sits 10 units = 1 m away) and negates y and z to land in the OpenCV camera frame. We want
  metres in the Y-up frame, so v3 is scaled by 0.001 and not flipped.
* v2 (``faceverse_simple_v2.npy``): Y down, the face looking toward -Z (so y and z are negated),
  in a unit of the model's own (about 0.16 m). The metric scale is fixed by putting the mean
  face's outer eye corners (landmarks 36 and 45 of ``keypoints``, iBUG order) 90 mm apart.

The exposed frame is the SMPL-X one: metres, Y up, the face toward +Z, +X = the subject's left.

Rotation parameter: FaceVerse's own Euler angles ``(x, y, z)`` in radians, as its trackers
output them (``compute_rotation_matrix``: ``R = Rz(z) @ Ry(y) @ Rx(x)`` acting in FaceVerse's
camera frame, which is ours with y and z negated). In our frame that rotation is
``F @ R @ F`` with ``F = diag(1, -1, -1)``; ``euler_to_matrix``/``matrix_to_euler`` convert.
Angles 0 leave the face looking toward +Z. Translation is in metres in our frame. (The released
v2 tracker rotates the raw Y-down v2 frame and starts from x = pi, so its angles are not these.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.bodies.base import BodyModel, BodyOutput
from backend.bodies.model_files import ForbiddenGlobal, read_npy_header, restricted_load
from backend.errors import ModelFileError
from backend.paths import MODEL_SOURCES

# Names the released files go by, most preferred first (a folder is searched in this order).
MODEL_FILE_NAMES = ("faceverse_v3_1.npy", "faceverse_v3_6_s.npy", "faceverse_v3.npy", "faceverse_simple_v2.npy")

# ARKit's 52 blendshapes in ARKit's own order (ARFaceAnchor.BlendShapeLocation); FaceVerse v2+
# expression bases are fitted to these.
ARKIT_BLENDSHAPE_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawLeft", "jawRight", "jawOpen", "mouthClose",
    "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft",
    "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip

V3_MILLIMETRES_TO_METRES = 0.001
# v2 has no physical unit: its scale is set from the mean face's outer eye corners (iBUG 36, 45).
V2_OUTER_EYE_CORNERS_M = 0.090
V2_OUTER_EYE_CORNER_LANDMARKS = (36, 45)
_V3_MARKER_KEYS = ("exBase_52", "exp_name_list_52", "ver_inds", "tri_inds", "mediapipe_keypoints", "uv_per_ver")
_FLIP_YZ = np.array([1.0, -1.0, -1.0])
_HINT = MODEL_SOURCES["faceverse"]


# --------------------------------------------------------------------------------------------
# Safe reading of the pickled dict


def read_pickled_dict(path: Path) -> dict:
    """The dict stored in a FaceVerse-style ``.npy`` file, unpickled with only numpy/builtin types allowed."""
    try:
        with open(path, "rb") as handle:
            try:
                shape, _, dtype = read_npy_header(handle)
            except ValueError as exc:
                raise ModelFileError(path, f"not a readable .npy file ({exc})", hint=_HINT) from None
            if not dtype.hasobject:
                problem = f"holds a plain {dtype} array of shape {shape}, not the pickled dict of a FaceVerse model"
                raise ModelFileError(path, problem, hint=_HINT)
            try:
                stored = restricted_load(handle)
            except ForbiddenGlobal as exc:
                raise ModelFileError(
                    path,
                    f"refused to unpickle {exc.qualified_name}: a FaceVerse model holds only numpy arrays, lists and "
                    "strings, so this file is not one (and may be malicious)",
                    hint=_HINT,
                ) from None
            except Exception as exc:  # any failure inside the pickle stream means a damaged file
                raise ModelFileError(
                    path, f"truncated or corrupt pickle data ({type(exc).__name__}: {exc})", hint=_HINT
                ) from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read ({exc.strerror or exc})", hint=_HINT) from None
    if isinstance(stored, np.ndarray) and stored.shape == () and stored.dtype.hasobject:
        stored = stored.item()
    if not isinstance(stored, dict):
        shape = f" of shape {stored.shape}" if isinstance(stored, np.ndarray) else ""
        problem = f"holds a {type(stored).__name__}{shape}, not the dict of a FaceVerse model"
        raise ModelFileError(path, problem, hint=_HINT)
    return stored


# --------------------------------------------------------------------------------------------
# Validation and conversion to metres in the Y-up frame


@dataclass
class FaceVerseArrays:
    """A validated FaceVerse model in metres, Y up, face toward +Z (see the module docstring)."""

    version: str  # "v2" | "v3"
    mean: np.ndarray  # (N, 3)
    identity_directions: np.ndarray  # (N, 3, S)
    expression_directions: np.ndarray  # (N, 3, E)
    expression_names: tuple[str, ...]
    faces: np.ndarray  # (F, 3) int64
    raw_to_metres: np.ndarray  # (3,) per-axis factor applied to the file's coordinates
    mean_colour: np.ndarray | None  # (N, 3) in the file's 0..255 range
    colour_directions: np.ndarray | None  # (N, 3, T)
    keypoints: np.ndarray  # (K,) vertex indices, possibly empty
    keypoint_key: str | None
    uv_coords: np.ndarray | None  # (T, 2)
    uv_faces: np.ndarray | None  # (F, 3)
    eyeball_vertex_ranges: tuple[tuple[int, int], tuple[int, int]] | None


class _Checker:
    """Reads keys out of the dict, raising ``ModelFileError`` naming the key and the problem."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.path, problem, hint=_HINT)

    def has(self, key: str) -> bool:
        return key in self.data

    def array(self, key: str, required: bool = True) -> np.ndarray | None:
        if key not in self.data:
            if required:
                present = ", ".join(sorted(map(str, self.data))) or "none"
                raise self.fail(f"missing key {key!r} (keys present: {present})")
            return None
        try:
            value = np.asarray(self.data[key])
        except Exception as exc:
            raise self.fail(f"{key!r} is not an array ({exc})") from None
        return value

    def floats(self, key: str, required: bool = True) -> np.ndarray | None:
        value = self.array(key, required)
        if value is None:
            return None
        if value.dtype.kind not in "fiu" or value.size == 0:
            raise self.fail(f"{key!r} must be a non-empty numeric array, got dtype {value.dtype} shape {value.shape}")
        value = value.astype(np.float64)
        if not np.isfinite(value).all():
            raise self.fail(f"{key!r} contains NaN or infinite values")
        return value

    def points(self, key: str, count: int | None = None, required: bool = True) -> np.ndarray | None:
        """(count, 3) per-vertex data stored as (N, 3), (3N,) or (1, 3N)."""
        value = self.floats(key, required)
        if value is None:
            return None
        if value.size % 3 or (value.ndim == 2 and value.shape[1] not in (3, value.size)) or value.ndim > 2:
            raise self.fail(f"{key!r} must be (N, 3) or a flat 3N array, got shape {value.shape}")
        value = value.reshape(-1, 3)
        if count is not None and len(value) != count:
            raise self.fail(f"{key!r} has {len(value)} vertices, meanshape has {count}")
        return value

    def basis(self, key: str, vertices: int, required: bool = True) -> np.ndarray | None:
        """A (3N, K) basis as (N, 3, K)."""
        value = self.floats(key, required)
        if value is None:
            return None
        if value.ndim != 2 or value.shape[0] != 3 * vertices:
            raise self.fail(
                f"{key!r} must be (3N, K) = ({3 * vertices}, K) for {vertices} vertices, got shape {value.shape}"
            )
        return value.reshape(vertices, 3, value.shape[1])

    def indices(self, key: str, limit: int, columns: int | None = None, required: bool = True) -> np.ndarray | None:
        """Integer indices in [0, limit); 1-D, or (rows, columns) when ``columns`` is given."""
        value = self.array(key, required)
        if value is None:
            return None
        if value.dtype.kind == "f" and value.size and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
            value = value.astype(np.int64)  # some files store index arrays as floats
        if value.dtype.kind not in "iu" or value.size == 0:
            raise self.fail(f"{key!r} must be a non-empty integer array, got dtype {value.dtype} shape {value.shape}")
        value = value.astype(np.int64)
        if columns is None:
            value = value.reshape(-1)
        elif value.ndim != 2 or value.shape[1] != columns:
            raise self.fail(f"{key!r} must be (rows, {columns}), got shape {value.shape}")
        low, high = int(value.min()), int(value.max())
        if low < 0 or high >= limit:
            raise self.fail(f"{key!r} has indices from {low} to {high}, outside [0, {limit})")
        return value

    def names(self, key: str, count: int) -> tuple[str, ...] | None:
        if key not in self.data:
            return None
        raw = self.data[key]
        if isinstance(raw, np.ndarray):
            items = list(raw.reshape(-1))
        elif isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            raise self.fail(f"{key!r} must be a list of names, got {type(raw).__name__}")
        names = tuple(item.decode() if isinstance(item, bytes) else str(item) for item in items)
        if len(names) != count:
            raise self.fail(f"{key!r} has {len(names)} names but the expression basis has {count} columns")
        return names


def _check_point_buf(check: _Checker, key: str, vertices: int, faces: int) -> None:
    """``point_buf``: the triangles around each vertex (used for vertex normals), (N, K) indices into ``tri``."""
    if not check.has(key):
        return
    shape = np.shape(check.data[key])
    if len(shape) != 2 or shape[0] != vertices:
        raise check.fail(f"{key!r} must be (N, K) = ({vertices}, K) adjacent triangles per vertex, got shape {shape}")
    check.indices(key, faces)


def _v2_metres_per_unit(check: _Checker, mean: np.ndarray, keypoints: np.ndarray, key: str) -> float:
    first, second = V2_OUTER_EYE_CORNER_LANDMARKS
    if len(keypoints) <= second:
        raise check.fail(
            f"{key!r} has {len(keypoints)} landmarks; a v2 file needs the iBUG-ordered outer eye corners "
            f"({first}, {second}) to set its metric scale"
        )
    distance = float(np.linalg.norm(mean[keypoints[first]] - mean[keypoints[second]]))
    if distance <= 0:
        raise check.fail(f"{key!r}: landmarks {first} and {second} (outer eye corners) coincide on the mean face")
    return V2_OUTER_EYE_CORNERS_M / distance


def parse_faceverse_dict(path: Path, data: dict, simplified: bool = False) -> FaceVerseArrays:
    """Validate a FaceVerse dict (v2 or v3, detected from its keys) and convert it to metres, Y up."""
    check = _Checker(path, data)
    version = "v3" if any(key in data for key in _V3_MARKER_KEYS) else "v2"
    if version == "v2" and "exBase" not in data:
        raise check.fail("missing key 'exBase' (v2) or 'exBase_52' (v3): this is not a FaceVerse model")
    if simplified and version == "v3":
        raise check.fail("simplified=True applies to v2 files (select_id / tri_select); this is a v3 file")
    mean = check.points("meanshape")
    vertices = len(mean)
    identity = check.basis("idBase", vertices)
    if version == "v3":
        expression_key = "exBase_52" if check.has("exBase_52") else "exBase"
        names_key = "exp_name_list_52" if expression_key == "exBase_52" else "exp_name_list"
    else:
        expression_key, names_key = "exBase", "exp_name_list"
    expression = check.basis(expression_key, vertices)
    faces = check.indices("tri", vertices, columns=3)
    _check_point_buf(check, "point_buf", vertices, len(faces))
    mean_colour = check.points("meantex", vertices, required=False)
    colour = check.basis("texBase", vertices, required=False)
    if colour is not None and mean_colour is None:
        raise check.fail("'texBase' is present but 'meantex' is missing")
    names = check.names(names_key, expression.shape[2])
    if names is None:
        names = tuple(f"exp_{i:03d}" for i in range(expression.shape[2]))

    keypoint_key = next((key for key in ("keypoints", "mediapipe_keypoints") if check.has(key)), None)
    keypoints = check.indices(keypoint_key, vertices) if keypoint_key else np.zeros(0, np.int64)

    uv_coords = uv_faces = None
    eyeball_ranges = None
    if version == "v3":
        if check.has("uv") and check.has("tri_uv"):
            uv_coords = check.floats("uv")
            if uv_coords.ndim != 2 or uv_coords.shape[1] != 2:
                raise check.fail(f"'uv' must be (T, 2), got shape {uv_coords.shape}")
            uv_faces = check.indices("tri_uv", len(uv_coords), columns=3)
            if len(uv_faces) != len(faces):
                raise check.fail(f"'tri_uv' has {len(uv_faces)} triangles, 'tri' has {len(faces)}")
        elif check.has("uv_per_ver"):
            uv_coords = check.floats("uv_per_ver")
            if uv_coords.shape != (vertices, 2):
                raise check.fail(f"'uv_per_ver' must be (N, 2) = ({vertices}, 2), got shape {uv_coords.shape}")
            uv_faces = faces
        if uv_coords is not None and (uv_coords.min() < -1e-4 or uv_coords.max() > 1 + 1e-4):
            raise check.fail(f"UV coordinates must lie in [0, 1], got {uv_coords.min():.3g} to {uv_coords.max():.3g}")
        if check.has("ver_inds"):
            bounds = check.indices("ver_inds", vertices + 1)
            if len(bounds) != 3 or not (bounds[0] <= bounds[1] <= bounds[2]):
                raise check.fail(f"'ver_inds' must be 3 increasing vertex offsets (eyeballs), got {bounds.tolist()}")
            eyeball_ranges = ((int(bounds[0]), int(bounds[1])), (int(bounds[1]), int(bounds[2])))
        if check.has("tri_inds"):
            bounds = check.indices("tri_inds", len(faces) + 1)
            if len(bounds) != 3 or not (bounds[0] <= bounds[1] <= bounds[2]):
                raise check.fail(f"'tri_inds' must be 3 increasing triangle offsets, got {bounds.tolist()}")
        raw_to_metres = np.full(3, V3_MILLIMETRES_TO_METRES)
    else:
        if simplified:
            select = check.indices("select_id", vertices)
            faces = check.indices("tri_select", len(select), columns=3)
            _check_point_buf(check, "point_buf_select", len(select), len(faces))
            keypoints = check.indices("keypoints_select", len(select))
            keypoint_key = "keypoints_select"
            mean, identity, expression = mean[select], identity[select], expression[select]
            if mean_colour is not None:
                mean_colour = mean_colour[select]
                colour = None if colour is None else colour[select]
        if keypoint_key is None:
            raise check.fail("missing key 'keypoints': a v2 file needs its landmarks to set the metric scale")
        raw_to_metres = _FLIP_YZ * _v2_metres_per_unit(check, mean, keypoints, keypoint_key)

    return FaceVerseArrays(
        version=version,
        mean=mean * raw_to_metres,
        identity_directions=identity * raw_to_metres[None, :, None],
        expression_directions=expression * raw_to_metres[None, :, None],
        expression_names=names,
        faces=faces,
        raw_to_metres=raw_to_metres,
        mean_colour=mean_colour,
        colour_directions=colour,
        keypoints=keypoints,
        keypoint_key=keypoint_key,
        uv_coords=uv_coords,
        uv_faces=uv_faces,
        eyeball_vertex_ranges=eyeball_ranges,
    )


# --------------------------------------------------------------------------------------------
# Rotation convention


def _flip_yz(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.diag(torch.tensor(_FLIP_YZ, device=device, dtype=dtype))


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """FaceVerse Euler angles (..., 3) -> rotation matrices (..., 3, 3) in our Y-up frame (differentiable)."""
    x, y, z = angles.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()

    def rows(*entries: torch.Tensor) -> torch.Tensor:
        return torch.stack(entries, -1).unflatten(-1, (3, 3))

    rot_x = rows(one, zero, zero, zero, cx, -sx, zero, sx, cx)
    rot_y = rows(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    rot_z = rows(cz, -sz, zero, sz, cz, zero, zero, zero, one)
    flip = _flip_yz(angles.device, angles.dtype)
    return flip @ rot_z @ rot_y @ rot_x @ flip


def matrix_to_euler(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of ``euler_to_matrix``: (..., 3, 3) -> FaceVerse Euler angles (..., 3), y in [-pi/2, pi/2].

    At y = +-pi/2 (gimbal lock) only x - z (or x + z) is determined; z is then returned as 0.
    """
    flip = _flip_yz(matrix.device, matrix.dtype)
    faceverse = flip @ matrix @ flip  # = Rz(z) @ Ry(y) @ Rx(x)
    y = torch.asin((-faceverse[..., 2, 0]).clamp(-1.0, 1.0))
    x = torch.atan2(faceverse[..., 2, 1], faceverse[..., 2, 2])
    z = torch.atan2(faceverse[..., 1, 0], faceverse[..., 0, 0])
    locked = faceverse[..., 2, 0].abs() > 1 - 1e-6
    if locked.any():
        x = torch.where(locked, torch.atan2(-faceverse[..., 1, 2], faceverse[..., 1, 1]), x)
        z = torch.where(locked, torch.zeros_like(z), z)
    return torch.stack((x, y, z), -1)


# --------------------------------------------------------------------------------------------
# The model


class FaceVerseModel(BodyModel):
    """FaceVerse as a ``BodyModel``: one rigid ``head`` joint at the model origin.

    ``forward(id=(B,S), exp=(B,E), rotation=(B,3) FaceVerse Euler angles, translation=(B,3) metres)``:
    vertices = R @ (mean + identity . id + expression . exp) + translation.
    """

    family = "faceverse"
    joint_names = ("head",)
    parents = (-1,)

    def __init__(self, arrays: FaceVerseArrays, source: Path, is_standin: bool = False):
        super().__init__()
        self.source = Path(source)
        self.is_standin = is_standin
        self.version = arrays.version
        self.raw_to_metres = arrays.raw_to_metres.copy()
        vertices, _, shapes = arrays.identity_directions.shape
        expressions = arrays.expression_directions.shape[2]
        self.shape_names = tuple(f"id_{i:03d}" for i in range(shapes))
        self.expression_names = arrays.expression_names
        self.parameter_widths = {"id": shapes, "exp": expressions, "rotation": 3, "translation": 3}
        self.keypoint_key = arrays.keypoint_key
        self.eyeball_vertex_ranges = arrays.eyeball_vertex_ranges

        def buffer(name: str, value: np.ndarray | None, dtype: torch.dtype = torch.float32) -> None:
            tensor = None if value is None else torch.as_tensor(np.ascontiguousarray(value), dtype=dtype)
            self.register_buffer(name, tensor)

        buffer("mean", arrays.mean)
        # (3N, K) layouts so a batch of coefficients is one matrix product.
        buffer("identity_basis", arrays.identity_directions.reshape(3 * vertices, shapes))
        buffer("expression_basis", arrays.expression_directions.reshape(3 * vertices, expressions))
        buffer("_faces", arrays.faces, torch.int64)
        buffer("keypoint_indices", arrays.keypoints, torch.int64)
        buffer("mean_colour", arrays.mean_colour)
        colour = arrays.colour_directions
        buffer("colour_basis", None if colour is None else colour.reshape(3 * vertices, colour.shape[2]))
        buffer("_uv_coords", arrays.uv_coords)
        buffer("_uv_faces", arrays.uv_faces, torch.int64)

    @property
    def faces(self) -> torch.Tensor:
        return self._faces

    @property
    def uv(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None if self._uv_coords is None else (self._uv_coords, self._uv_faces)

    @property
    def skinning_weights(self) -> torch.Tensor:
        return torch.ones(self.mean.shape[0], 1, dtype=self.mean.dtype, device=self.mean.device)

    @property
    def texture_dims(self) -> int:
        """Number of colour coefficients (0 when the file has no per-vertex colours)."""
        if self.mean_colour is None:
            return 0
        return 0 if self.colour_basis is None else int(self.colour_basis.shape[1])

    def shape_directions(self) -> torch.Tensor:
        return self.identity_basis.reshape(-1, 3, self.identity_basis.shape[1])

    def expression_directions(self) -> torch.Tensor:
        return self.expression_basis.reshape(-1, 3, self.expression_basis.shape[1])

    def rest_vertices(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        if betas is None:
            return self.mean
        betas = betas.to(self.mean).reshape(1, -1)
        self.check_parameters({"id": betas})
        return self.mean + (betas @ self.identity_basis.T).reshape(-1, 3)

    def rest_joints(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(1, 3, dtype=self.mean.dtype, device=self.mean.device)

    def mean_texture(self, id_tex: torch.Tensor | None = None) -> torch.Tensor:
        """Per-vertex colours in [0, 1]: (meantex + texBase . id_tex) / 255; (T,) -> (V, 3), (B, T) -> (B, V, 3)."""
        if self.mean_colour is None:
            raise ValueError(f"{self.label}: the model file has no per-vertex colours ('meantex')")
        colour = self.mean_colour
        if id_tex is not None:
            if self.colour_basis is None or id_tex.shape[-1] != self.colour_basis.shape[1]:
                expected = self.texture_dims
                raise ValueError(f"{self.label}: id_tex must have {expected} values, got shape {tuple(id_tex.shape)}")
            offsets = id_tex.to(self.mean_colour) @ self.colour_basis.T
            colour = colour + offsets.reshape(*id_tex.shape[:-1], -1, 3)
        return (colour / 255.0).clamp(0.0, 1.0)

    def forward(self, **params: torch.Tensor) -> BodyOutput:
        batch = self.check_parameters(params)
        values = {name: params.get(name) for name in self.parameter_widths}
        for name, width in self.parameter_widths.items():
            if values[name] is None:
                values[name] = self.mean.new_zeros(batch, width)
            else:
                values[name] = values[name].to(self.mean)
        offsets = values["id"] @ self.identity_basis.T + values["exp"] @ self.expression_basis.T
        shaped = self.mean.reshape(1, -1) + offsets
        rotation = euler_to_matrix(values["rotation"])
        translation = values["translation"]
        vertices = shaped.reshape(batch, -1, 3) @ rotation.transpose(1, 2) + translation[:, None, :]
        transforms = torch.zeros(batch, 1, 4, 4, dtype=self.mean.dtype, device=self.mean.device)
        transforms[:, 0, :3, :3] = rotation
        transforms[:, 0, :3, 3] = translation
        transforms[:, 0, 3, 3] = 1.0
        return BodyOutput(vertices=vertices, joints=translation[:, None, :], joint_transforms=transforms)


def find_model_file(path: Path) -> Path:
    """The model file for a folder (first of ``MODEL_FILE_NAMES`` present) or the file itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in MODEL_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        problem = f"no FaceVerse model in this folder (looked for {', '.join(MODEL_FILE_NAMES)})"
        raise ModelFileError(path, problem, hint=_HINT)
    if not path.exists():
        raise ModelFileError(path, "does not exist", hint=_HINT)
    return path


def load_faceverse(path: Path | None, device: str | torch.device = "cpu", simplified: bool = False) -> FaceVerseModel:
    """Load a FaceVerse model from a folder or ``.npy`` file; ``None`` -> the generated stand-in.

    ``simplified`` selects the 6,335-vertex subset a v2 file carries (``select_id``, ``tri_select``).
    """
    from backend.bodies.standin_faceverse import ensure_standin_file, is_standin_file

    if path is None:
        file, is_standin = ensure_standin_file(), True
    else:
        file = find_model_file(path)
        is_standin = is_standin_file(file)
    arrays = parse_faceverse_dict(file, read_pickled_dict(file), simplified=simplified)
    return FaceVerseModel(arrays, source=file, is_standin=is_standin).to(device)
