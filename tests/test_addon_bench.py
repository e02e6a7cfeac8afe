"""``python -m backend bench import`` end to end on a tiny motion (the Blender side runs in a subprocess)."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("bpy")

from backend.bench import importing  # noqa: E402
from backend.errors import AvatarError  # noqa: E402

pytestmark = [pytest.mark.blender, pytest.mark.slow]


def test_bench_command_for_a_python_and_for_a_blender_executable():
    python = importing.bench_command("/opt/venv/bin/python", ["--frames", "5"])
    assert python[:2] == ["/opt/venv/bin/python", "-c"] and python[-3:] == ["--", "--frames", "5"]
    blender = importing.bench_command("/opt/blender-4.2/blender", ["--frames", "5"])
    assert blender[1:3] == ["-b", "--factory-startup"] and "--python-expr" in blender
    assert importing.find_blender_python() == sys.executable  # this venv has the bpy module
    assert importing.find_blender_python("/custom/python") == "/custom/python"


def test_small_benchmark_runs_and_reports():
    result = importing.measure(frames=30, repeats=1, loop_frames=10)
    assert result["frames"] == 30 and result["loop_frames"] == 10
    assert result["vertices"] == 10475 and result["joints"] == 55
    assert all(seconds > 0 for seconds in result["bulk_import"] + result["keyframe_insert"])
    assert set(result["image_write"]) == {f"{n} {t}" for n in (512, 1024) for t in ("uint8", "float16", "float32")}
    text = importing.report(result)
    assert "extrapolated linearly to 30 frames" in text and "512x512 uint8" in text
    assert result["machine"]["blender"] in text


def test_failing_python_gives_a_clear_error():
    with pytest.raises(AvatarError, match="the Blender benchmark failed"):
        importing.measure(frames=5, repeats=1, python=sys.executable, loop_frames=0)
