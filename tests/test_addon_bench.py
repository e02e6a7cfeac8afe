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
    assert "extrapolated" not in importing.report({**result, "loop_frames": 30})  # a measured whole loop
    assert result["machine"]["blender"] in text


def test_failing_python_gives_a_clear_error():
    with pytest.raises(AvatarError, match="the Blender benchmark failed"):
        importing.measure(frames=5, repeats=1, python=sys.executable, loop_frames=0)


def test_live_frame_benchmark_times_every_part_of_a_frame(tiny_trained_avatar):
    result = importing.measure_live(tiny_trained_avatar, [64, 96], repeats=2)
    assert result["sizes"] == {"64": [64, 64], "96": [96, 96]}  # the capture is square
    names = [name for name, _ in importing.LIVE_PART_LABELS]
    for key, parts in result["parts"].items():
        assert all(len(parts[name]) == 2 for name in names)
        assert min(parts["backend_render"]) > 0 and min(parts["pose_read"]) > 0 and min(parts["image_write"]) > 0
        # The parts add up to the whole frame, pose read to image written.
        summed = [sum(parts[name][index] for name in names[:-1]) for index in range(2)]
        assert summed == pytest.approx(parts["total"], abs=1e-9)
        assert len(result["live_mode"][key]) == 2 and min(result["live_mode"][key]) > 0  # frames that reached the image
    text = importing.report_live(result)
    assert result["bake_read"]["frames"] == 32 and result["bake_read"]["seconds"] > 0
    assert "96x96" in text and "via live mode" in text and "ms per frame" in text and result["machine"]["blender"] in text
