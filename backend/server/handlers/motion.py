"""Requests ``motion_read`` and ``motion_write``: motion files in and out of the add-on.

Both formats of ``backend.capture`` are supported: a capture folder or ``tracking.npz``, and
AMASS-style ``.npz``. On the wire a motion is its ``tracking.npz`` arrays (floats as float32)
with the scalars (fps, gender, up axis) in the JSON result, so the add-on never parses files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from backend.capture import CameraTrack, FaceVerseTrack, SmplxMotion, Tracking, read_motion, write_amass, write_tracking
from backend.capture.files import tracking_arrays
from backend.capture.motion import SMPLX_POSE_PARTS, UP_AXES
from backend.errors import CaptureFormatError
from backend.server.handlers.bodies import MODEL_FOLDERS, cached_body_model
from backend.server.registry import Request, RequestError, Result, handler
from backend.server.schema import Array, BadRequest, FilePath, Number, String

FORMATS = ("tracking", "amass")
GENDERS = ("neutral", "male", "female")
# Keys of tracking_arrays that travel in the JSON result instead of as arrays.
SCALAR_KEYS = ("format", "format_version", "fps", "gender", "up_axis")
FLOATS = ("float32", "float64")


def motion_wire_arrays(tracking: Tracking) -> dict[str, np.ndarray]:
    """The per-frame arrays of a tracking (floats as float32, labels as their integer type)."""
    arrays = {}
    for key, value in tracking_arrays(tracking).items():
        if key in SCALAR_KEYS:
            continue
        value = np.asarray(value)
        arrays[key] = np.ascontiguousarray(value, np.float32 if value.dtype.kind == "f" else value.dtype)
    return arrays


@handler("motion_read", params={"path": FilePath(doc="capture folder, tracking.npz or AMASS .npz"), "models": MODEL_FOLDERS})
def motion_read(request: Request) -> Result:
    """Read a motion file: all per-frame arrays plus fps, up_axis, gender, source_family, num_frames.

    When the motion has FaceVerse expressions, ``faceverse_exp_names`` lists them (from the
    FaceVerse model in ``models``, whose expression count must match the file's).
    """
    path: Path = request.params["path"]
    tracking = read_motion(path)
    motion = tracking.motion
    data = {
        "path": str(path),
        "fps": motion.fps,
        "up_axis": motion.up_axis,
        "gender": motion.gender,
        "source_family": motion.source_family,
        "num_frames": motion.num_frames,
        "has_camera": tracking.camera is not None,
        "mano_sides": sorted(tracking.mano),
    }
    if tracking.faceverse is not None:
        face_model = cached_body_model("faceverse", request.params["models"])
        names = list(face_model.expression_names)
        columns = tracking.faceverse.expression.shape[1]
        if columns != len(names):
            raise CaptureFormatError(
                path, f"faceverse_exp has {columns} expressions, the FaceVerse model {face_model.label} has {len(names)}"
            )
        data["faceverse_exp_names"] = names
    return Result(data, motion_wire_arrays(tracking))


def _optional_pose_arrays() -> dict[str, Array]:
    required = ("global_orient", "body_pose")
    return {
        name: Array(FLOATS, ("T", width), required=name in required) for name, width in SMPLX_POSE_PARTS
    }


@handler(
    "motion_write",
    params={
        "path": FilePath(doc="the .npz file to write (replaced atomically if it exists)"),
        "format": String(choices=FORMATS),
        "fps": Number(min=1e-3, max=1e5),
        "gender": String(choices=GENDERS, default="neutral"),
        "up_axis": String(choices=UP_AXES, default="y"),
        "models": MODEL_FOLDERS,
    },
    arrays={
        **_optional_pose_arrays(),
        "transl": Array(FLOATS, ("T", 3)),
        "expression": Array(FLOATS, ("T", None), required=False),
        "betas": Array(FLOATS, (None,), required=False),
        "camera_K": Array(FLOATS, ("T", 3, 3), required=False),
        "camera_world_to_camera": Array(FLOATS, ("T", 4, 4), required=False),
        "image_size": Array(("int32", "int64"), (2,), required=False, doc="(height, width)"),
        "faceverse_id": Array(FLOATS, (None,), required=False),
        "faceverse_exp": Array(FLOATS, ("T", None), required=False),
        "faceverse_rotation": Array(FLOATS, ("T", 3), required=False),
        "faceverse_translation": Array(FLOATS, ("T", 3), required=False),
    },
)
def motion_write(request: Request) -> dict:
    """Write a motion as ``tracking.npz`` (with optional camera and FaceVerse track) or AMASS SMPL-X ``.npz``."""
    params, arrays = request.params, request.arrays
    path: Path = params["path"]
    if path.is_dir():
        raise BadRequest(f"params.path: {path} is a folder; give the name of the .npz file to write")
    tracking = _tracking_from_request(params, arrays)
    try:
        if params["format"] == "amass":
            motion = tracking.motion
            if motion.up_axis != "z":  # AMASS is Z-up; the root turns about the rest pelvis of these betas
                body = cached_body_model("smplx", params["models"], gender=motion.gender)
                betas = torch.zeros(len(body.shape_names))
                count = min(len(betas), len(motion.betas))
                betas[:count] = torch.from_numpy(motion.betas[:count])
                with torch.no_grad():
                    pelvis = body.rest_joints(betas)[0].cpu().numpy()
                motion = motion.with_up_axis("z", pelvis)
            written = write_amass(path, motion)
        else:
            written = write_tracking(path, tracking)
    except OSError as error:
        raise RequestError("write_failed", f"{path}: cannot write the file ({error.strerror or error})") from None
    return {"path": str(written), "format": params["format"], "num_frames": tracking.num_frames}


def _tracking_from_request(params: dict, arrays: dict[str, np.ndarray]) -> Tracking:
    camera_keys = ("camera_K", "camera_world_to_camera", "image_size")
    face_keys = ("faceverse_exp", "faceverse_rotation", "faceverse_translation")
    given_camera = [key for key in camera_keys if key in arrays]
    given_face = [key for key in face_keys if key in arrays]
    if given_camera and len(given_camera) != len(camera_keys):
        raise BadRequest(f"arrays: a camera needs {', '.join(camera_keys)} together; got only {', '.join(given_camera)}")
    if (given_face or "faceverse_id" in arrays) and len(given_face) != len(face_keys):
        raise BadRequest(f"arrays: a FaceVerse track needs {', '.join(face_keys)} together; got {', '.join(given_face) or 'none'}")
    if params["format"] == "amass":
        if given_camera or given_face:
            raise BadRequest("arrays: AMASS files hold only the body motion; send the camera and FaceVerse track only with format 'tracking'")
    try:
        motion = SmplxMotion(
            fps=params["fps"],
            transl=arrays["transl"],
            betas=arrays.get("betas", np.zeros(10, np.float32)),
            expression=arrays.get("expression"),
            gender=params["gender"],
            up_axis=params["up_axis"],
            **{name: arrays.get(name) for name, _ in SMPLX_POSE_PARTS},
        )
        camera = None
        if given_camera:
            height, width = (int(v) for v in arrays["image_size"])
            camera = CameraTrack(arrays["camera_K"], arrays["camera_world_to_camera"], (height, width))
        face = None
        if given_face:
            face = FaceVerseTrack(
                identity=arrays.get("faceverse_id", np.zeros(0, np.float32)),
                expression=arrays["faceverse_exp"],
                rotation=arrays["faceverse_rotation"],
                translation=arrays["faceverse_translation"],
            )
        return Tracking(motion=motion, camera=camera, faceverse=face)
    except ValueError as error:
        raise BadRequest(f"arrays: {error}") from None
