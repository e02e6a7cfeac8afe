"""Tracked captures and motion: the data formats, readers/writers, and the sample-capture generator."""

from backend.capture.files import (
    TRACKING_FILENAME,
    read_amass,
    read_motion,
    read_tracking,
    write_amass,
    write_tracking,
)
from backend.capture.motion import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    CameraTrack,
    FaceVerseTrack,
    ManoTrack,
    SmplxMotion,
    Tracking,
)

__all__ = [
    "TRACKING_FILENAME",
    "SPLIT_TEST",
    "SPLIT_TRAIN",
    "CameraTrack",
    "FaceVerseTrack",
    "ManoTrack",
    "SmplxMotion",
    "Tracking",
    "read_amass",
    "read_motion",
    "read_tracking",
    "write_amass",
    "write_tracking",
]
