"""User-facing errors. Each names the file or value at fault and says what to do.

The server turns these into structured error replies (``code`` + message); anything
else escaping a request is an internal error and is logged with its traceback.
"""

from __future__ import annotations

from pathlib import Path


class AvatarError(Exception):
    """Base class of errors caused by input, files or settings, not by a bug."""

    code = "error"


class ModelFileError(AvatarError):
    """A body-model file is missing or malformed."""

    code = "model_file"

    def __init__(self, path: str | Path, problem: str, hint: str = ""):
        self.path = Path(path)
        self.problem = problem
        message = f"{self.path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


class FileProblemError(AvatarError):
    """A file or folder the user named is missing or malformed; the message names it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CaptureFormatError(FileProblemError):
    """A capture folder, tracking file or motion file does not follow the format."""

    code = "capture_format"


class CheckpointError(FileProblemError):
    """An avatar checkpoint is missing, truncated, tampered with or incompatible."""

    code = "checkpoint"


class DeviceError(AvatarError):
    """A requested device or rasterizer backend is not available here."""

    code = "device"
