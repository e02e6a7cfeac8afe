"""``python -m backend bench import``: motion import and image-write speed inside Blender, and the
end-to-end latency of one live-mode frame (pose read -> backend render -> image in Blender).

The backend never imports bpy, so the measurements run in a subprocess: a Python that has
the bpy module (this interpreter when it has one, else ``--python``) or a Blender
executable (run with ``-b --python-expr``). The Blender side is
``blender_addon.bench_import``; this module starts it and prints the tables. For the live
frames the add-on starts a backend with this interpreter and drives the avatar given with
``--avatar DIR`` (default: one trained for a step on the sample capture).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from backend.errors import AvatarError

BLENDER_PYTHON_ENV = "NEURAL_AVATAR_BLENDER_PYTHON"
RESULT_PREFIX = "BENCH_RESULT "  # as printed by blender_addon.bench_import
REPOSITORY = Path(__file__).resolve().parents[2]
TARGET_IMPORT_SECONDS = 1.5
TARGET_SPEEDUP = 100.0
TARGET_IMAGE_MS = 2.0


def bench_command(python: str, arguments: list[str]) -> list[str]:
    """The command running ``blender_addon.bench_import.main(arguments)`` with ``python``.

    ``python`` is either a Python interpreter with the bpy module or a Blender executable.
    """
    code = (
        f"import sys; sys.path.insert(0, {str(REPOSITORY)!r}); "
        "from blender_addon.bench_import import main; "
        "argv = sys.argv[sys.argv.index('--') + 1:] if '--' in sys.argv else sys.argv[1:]; "
        "raise SystemExit(main(argv))"
    )
    if Path(python).name.lower().startswith("blender"):
        return [python, "-b", "--factory-startup", "--python-exit-code", "1", "--python-expr", code, "--", *arguments]
    return [python, "-c", code, "--", *arguments]


def find_blender_python(python: str | None = None) -> str:
    """``python`` if given, else this interpreter when it has bpy, else ``$NEURAL_AVATAR_BLENDER_PYTHON``."""
    if python:
        return python
    if importlib.util.find_spec("bpy") is not None:
        return sys.executable
    configured = os.environ.get(BLENDER_PYTHON_ENV)
    if configured:
        return configured
    raise AvatarError(
        "no Python with the bpy module: install bpy in this environment, pass --python "
        f"(a Python with bpy, or a Blender executable) or set {BLENDER_PYTHON_ENV}"
    )


def measure(frames: int, repeats: int, python: str | None = None, loop_frames: int = 1000) -> dict:
    """Run the Blender-side benchmark and return its raw results."""
    loop_frames = min(loop_frames, frames)
    executable = find_blender_python(python)
    arguments = ["--frames", str(frames), "--repeats", str(repeats), "--loop-frames", str(loop_frames)]
    completed = subprocess.run(
        bench_command(executable, arguments), cwd=REPOSITORY, capture_output=True, text=True, check=False
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
        raise AvatarError(f"{executable}: the Blender benchmark failed (exit code {completed.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def report(result: dict) -> str:
    """The table printed by ``run``."""
    machine = result["machine"]
    bulk = statistics.median(result["bulk_import"])
    rig = statistics.median(result["rig_build"])
    keys_only = max(bulk - rig, 1e-9)
    loop = statistics.median(result["keyframe_insert"])
    loop_frames, frames = result["loop_frames"], result["frames"]
    loop_estimate = loop * frames / loop_frames
    speedup = loop_estimate / keys_only
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}",
        f"         Blender {machine['blender']}, Python {machine['python']}, numpy {machine['numpy']}",
        f"data:    {frames} frames, {result['joints']} joints, {result['vertices']} vertices, "
        f"{result['faces']} faces, {result['shape_keys']} shape keys (synthetic template)",
        "",
        f"bulk import (rig + mesh + shape keys + all keys), median of {len(result['bulk_import'])}: "
        f"{bulk:.3f} s  [{_verdict(bulk <= TARGET_IMPORT_SECONDS)} <= {TARGET_IMPORT_SECONDS} s]",
        f"  of which rig build (1-frame import): {rig:.3f} s; writing the keys: {keys_only:.3f} s",
        f"keyframe_insert loop, {loop_frames} frames, median of {len(result['keyframe_insert'])}: {loop:.2f} s",
        *(
            []
            if loop_frames == frames
            else [
                f"  extrapolated linearly to {frames} frames: {loop_estimate:.1f} s (a lower bound: each insert "
                f"slows down as its curve grows; --loop-frames {frames} measures the whole motion)"
            ]
        ),
        f"  bulk keys vs loop: {speedup:.0f}x faster  [{_verdict(speedup >= TARGET_SPEEDUP)} >= {TARGET_SPEEDUP:.0f}x]",
        f"  whole bulk import vs loop import (rig build + loop): {(loop_estimate + rig) / bulk:.0f}x faster",
        "",
        "image write (convert + flip + pixels.foreach_set + update), median ms:",
    ]
    for label, seconds in result["image_write"].items():
        size, dtype = label.split()
        milliseconds = 1000.0 * statistics.median(seconds)
        target = f"  [{_verdict(milliseconds <= TARGET_IMAGE_MS)} <= {TARGET_IMAGE_MS} ms]" if size == "512" else ""
        lines.append(f"  {size}x{size} {dtype:8s} {milliseconds:7.2f} ms{target}")
    return "\n".join(lines)


def run(
    frames: int = 10000,
    repeats: int = 20,
    python: str | None = None,
    avatar: Path | None = None,
    live_sizes: list[int] | None = None,
    loop_frames: int = 1000,
) -> None:
    """Measure and print (``python -m backend bench import``): the import table, then the live-frame one."""
    if frames < 1 or repeats < 1 or loop_frames < 1:
        raise AvatarError(f"frames, repeats and loop frames must be positive, got {frames}, {repeats} and {loop_frames}")
    print(report(measure(frames, repeats, python, loop_frames)))
    print()
    print(report_live(measure_live(avatar, list(live_sizes or LIVE_SIZES), repeats, python)))


# ---------------------------------------------------------------- live-mode frame latency

LIVE_SIZES = (256, 512)
LIVE_PART_LABELS = (
    ("pose_read", "pose read"),
    ("encode_send", "encode+send"),
    ("backend_render", "backend render"),
    ("transfer", "transfer"),
    ("image_write", "image write"),
    ("total", "total"),
)


def live_avatar(avatar: Path | None, temp: Path) -> tuple[Path, Path]:
    """(avatar folder, the capture it was trained on) - a one-step avatar on the bench's sample
    capture when none is given (the render cost does not depend on the weights)."""
    from backend.avatar.folder import read_record

    if avatar is None:
        from backend.bench.render import _bench_avatar

        print("training a one-step avatar on the sample capture (the render cost does not depend on the weights)", file=sys.stderr)
        avatar = _bench_avatar("anr", temp)
    capture = Path(read_record(avatar).capture.path)
    if not (capture / "tracking.npz").is_file():
        raise AvatarError(f"{avatar}: its capture {capture} is gone; the live bench imports that capture's motion and camera as the rig")
    return avatar, capture


def measure_live(avatar: Path | None, sizes: list[int], repeats: int, python: str | None = None) -> dict:
    """Run the Blender-side live-frame benchmark (it starts its own backend) and return its raw results."""
    import tempfile

    executable = find_blender_python(python)
    with tempfile.TemporaryDirectory(prefix="neural-avatar-bench-live-") as temp:
        avatar_dir, capture = live_avatar(avatar, Path(temp))
        arguments = [
            "--live", "--backend-python", sys.executable, "--project", str(REPOSITORY), "--avatar", str(avatar_dir),
            "--capture", str(capture), "--state-dir", str(Path(temp) / "state"), "--repeats", str(repeats),
            "--live-sizes", *[str(size) for size in sizes],
        ]  # fmt: skip
        completed = subprocess.run(bench_command(executable, arguments), cwd=REPOSITORY, capture_output=True, text=True, check=False)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        tail = "\n".join((completed.stderr or completed.stdout).strip().splitlines()[-15:])
        raise AvatarError(f"{executable}: the live-frame benchmark failed (exit code {completed.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def report_live(result: dict) -> str:
    """The live-frame table printed by ``run``."""
    machine = result["machine"]
    header = f"{'frame':>9} " + " ".join(f"{label:>14}" for _, label in LIVE_PART_LABELS) + f" {'transport':>10} {'via live mode':>14}"
    lines = [
        f"live-mode frame: pose read -> backend render -> image in Blender (median ms; {result['summary']}, on the CPU)",
        f"machine: {machine['cpu']}, {machine['cores']} cores, Blender {machine['blender']}",
        header,
        "-" * len(header),
    ]
    for key, parts in result["parts"].items():
        width, height = result["sizes"][key]
        cells = " ".join(f"{1000.0 * statistics.median(parts[name]):14.2f}" for name, _ in LIVE_PART_LABELS)
        transport = 1000.0 * statistics.median([a + b for a, b in zip(parts["encode_send"], parts["transfer"])])
        via_live = 1000.0 * statistics.median(result["live_mode"][key])
        lines.append(f"{width:>4}x{height:<4} {cells} {transport:10.2f} {via_live:14.2f}")
    bake = result["bake_read"]
    lines += [
        f"bake: reading {bake['frames']} frames for the request (frame_set + pose + camera): "
        f"{1000.0 * bake['seconds'] / bake['frames']:.2f} ms per frame",
        "(transfer = waiting for the reply minus the backend's render_ms: request decoding and reply encoding",
        " in the server, loopback TCP, receiving. The server starts rendering as soon as the request arrives,",
        " which on a busy machine can overlap the end of the send, so transfer may come out slightly negative;",
        " transport = encode+send + transfer, the whole cost of going through the socket. via live mode = the",
        " same frame through the worker thread, submit_latest and the drain, drained here as soon as it",
        " arrives - interactive Blender's drain timer adds up to DRAIN_INTERVAL = 10 ms on top)",
    ]
    return "\n".join(lines)
