"""The ``train`` job kind (request ``train_start``): ``python -m backend train`` as a server job.

Progress (losses, ETA, validation previews), cancellation (a checkpoint is saved) and resuming
are the training command's own; the job machinery (``backend.server.jobs``) relays them.
"""

from __future__ import annotations

from backend.server.jobs import JobSetup, backend_argv, job_kind
from backend.server.schema import Boolean, FilePath, Integer, String
from backend.train.config import METHODS, TRAINING_PRESETS

# Optional parameters passed on as ``--name value`` when given (else the preset's value).
TRAINING_OPTIONS = ("iterations", "resolution", "threads", "checkpoint_every", "validate_every")


@job_kind(
    "train",
    request="train_start",
    params={
        "capture": FilePath(exists="dir", doc="capture folder (frames/, masks/, tracking.npz)"),
        "out": FilePath(doc="avatar folder to create, or to continue with resume"),
        "method": String(choices=sorted(METHODS), default="anr"),
        "preset": String(choices=sorted(TRAINING_PRESETS), default="cpu"),
        "iterations": Integer(min=1, max=100_000_000, default=None, doc="total training steps (may extend a resumed run)"),
        "resolution": Integer(min=16, max=4096, default=None, doc="longer image side for training"),
        "resume": Boolean(default=False, doc="continue the avatar in out from its latest checkpoint"),
        "threads": Integer(min=1, max=1024, default=None, doc="CPU threads for torch (default: all cores)"),
        "checkpoint_every": Integer(min=1, max=100_000_000, default=None),
        "validate_every": Integer(min=1, max=100_000_000, default=None, doc="steps between validations (with a preview)"),
    },
)
def train_argv(setup: JobSetup) -> list[str]:
    """Train an avatar on a tracked capture; resumable, cancellable (it checkpoints first)."""
    params = setup.params
    argv = backend_argv(
        "train", str(params["capture"]), "--out", str(params["out"]),
        "--method", params["method"], "--preset", params["preset"], "--device", setup.device,
    )
    for name in TRAINING_OPTIONS:
        if params[name] is not None:
            argv += [f"--{name.replace('_', '-')}", str(params[name])]
    if params["resume"]:
        argv.append("--resume")
    return argv
