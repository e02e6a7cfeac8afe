"""The ``bake`` job kind (request ``bake``): render a pose sequence to PNG files (+ MP4) as a job.

The request carries T frames of SMPL-X parameters and cameras (as ``render`` does); they are
written into the job folder as a ``tracking.npz`` with the requested image size and frame rate,
and the job runs ``python -m backend render AVATAR --tracking FILE --out OUT_DIR --first-frame N``,
which writes ``OUT_DIR/frame_{N+i:06d}.png`` (straight alpha) and ``render.mp4`` when asked.
"""

from __future__ import annotations

from backend.server.jobs import JobSetup, backend_argv, job_kind
from backend.server.pose_arrays import pose_camera_schema, pose_frames
from backend.server.schema import Boolean, FilePath, Integer, Number

MAX_BAKE_FRAMES = 100_000
MAX_SIDE = 8192


@job_kind(
    "bake",
    request="bake",
    params={
        "avatar": FilePath(doc="the trained avatar's folder"),
        "out_dir": FilePath(doc="folder for frame_NNNNNN.png (and render.mp4)"),
        "width": Integer(min=1, max=MAX_SIDE, doc="image width in pixels (camera_K is for this size)"),
        "height": Integer(min=1, max=MAX_SIDE),
        "fps": Number(min=0.01, max=1000.0, doc="frame rate of the MP4"),
        "first_frame": Integer(min=0, max=99_999_999, default=0, doc="number of the first PNG (scene frame)"),
        "mp4": Boolean(default=False, doc="also write render.mp4 (over black)"),
    },
    arrays=pose_camera_schema(),
)
def bake_argv(setup: JobSetup) -> list[str]:
    """Render T ≤ 100,000 frames of a pose sequence into PNGs (+ MP4); cancellable between frames."""
    from backend.avatar.folder import read_record
    from backend.capture import TRACKING_FILENAME, CameraTrack, SmplxMotion, Tracking, write_tracking

    params = setup.params
    record = read_record(params["avatar"])  # a missing or broken avatar is refused now, not in the job
    frames = pose_frames(setup.arrays, MAX_BAKE_FRAMES)
    K, world_to_camera = frames.per_frame_cameras()
    motion = SmplxMotion(fps=params["fps"], betas=record.body.betas, gender=record.body.gender, **frames.poses)
    camera = CameraTrack(K, world_to_camera, (params["height"], params["width"]))
    tracking = write_tracking(setup.job_dir / TRACKING_FILENAME, Tracking(motion=motion, camera=camera))
    argv = backend_argv(
        "render", str(params["avatar"]), "--tracking", str(tracking), "--out", str(params["out_dir"]),
        "--first-frame", str(params["first_frame"]), "--device", setup.device,
    )
    if params["mp4"]:
        argv.append("--mp4")
    return argv
