"""Import, image-write and live-frame timings inside Blender (run by ``python -m backend bench import``).

Runs in a Python that has ``bpy`` (the bpy module, or Blender itself with ``--python-expr``);
``main(argv)`` prints progress to stderr and one result line ``BENCH_RESULT <json>`` on stdout
for the backend to format. Also provides the synthetic SMPL-X-sized template and motion the
tests use.

``--live``: the end-to-end latency of one live-mode frame. The add-on starts a real backend
(``--backend-python``), imports the avatar's capture as a rig and binds the avatar, then times
each part of a frame: reading the pose and camera, encoding and sending the ``render`` request,
the backend's own render time (its ``render_ms``), the rest of the wait for the reply (transfer:
the server's request decoding and reply encoding, loopback TCP, receiving), and writing the
frame into the Blender image. The same frames also go through live mode itself (worker thread,
``submit_latest``, drained on this thread as soon as they arrive) for the whole-path figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import bpy
import numpy as np

from . import backend_process, register, unregister, wire
from .avatar_render import (
    IMAGE_NAME,
    avatar_ids,
    checked_frame,
    frame_inputs,
    preview_size,
    render_params,
    sequence_arrays,
    show_frame,
)
from .client import BackendClient, as_numpy
from .importing import ImportOptions, import_motion
from .live import live
from .motion_math import axis_angle_to_quaternion, make_quaternions_continuous
from .rig import find_avatar, remove_avatar
from .viewport import FrameWriter

RESULT_PREFIX = "BENCH_RESULT "
# SMPL-X's kinematic tree (parent of each of the 55 joints).
SMPLX_PARENTS = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip
SMPLX_VERTICES, SMPLX_FACES = 10475, 20908


def synthetic_template(
    vertices: int = SMPLX_VERTICES,
    faces: int = SMPLX_FACES,
    shapes: int = 10,
    expressions: int = 10,
    parents: tuple[int, ...] = SMPLX_PARENTS,
    joint_names: tuple[str, ...] | None = None,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """A template of a real model's size: a random skeleton with blobs of vertices per joint.

    Each vertex follows its own joint (weight 0.6-0.9) and the joint's parent (the rest), so
    skinning blends across joints; triangles join vertices of one blob. Not a body shape -
    it has the sizes and structure that matter for import speed and rig checks.
    """
    rng = np.random.default_rng(seed)
    parents_array = np.asarray(parents, np.int32)
    count = parents_array.shape[0]
    joints = np.zeros((count, 3))
    for joint in range(1, count):
        joints[joint] = joints[parents_array[joint]] + rng.uniform(-0.15, 0.15, 3)
    owner = np.arange(vertices) % count
    positions = joints[owner] + rng.normal(scale=0.04, size=(vertices, 3))
    weights = np.zeros((vertices, count))
    own = rng.uniform(0.6, 0.9, vertices)
    parent_of_owner = parents_array[owner]
    weights[np.arange(vertices), owner] = np.where(parent_of_owner >= 0, own, 1.0)
    has_parent = parent_of_owner >= 0
    weights[np.flatnonzero(has_parent), parent_of_owner[has_parent]] += 1.0 - own[has_parent]

    blob = np.arange(faces) % count  # triangles of one blob use three of its vertices
    members_per_blob = np.bincount(owner, minlength=count)
    first = rng.integers(0, members_per_blob[blob])
    triangle = (first[:, None] + np.arange(3)[None, :]) % members_per_blob[blob][:, None]
    face_indices = blob[:, None] + count * triangle

    arrays = {
        "rest_vertices": positions.astype(np.float32),
        "rest_joints": joints.astype(np.float32),
        "faces": face_indices.astype(np.int32),
        "skinning_weights": weights.astype(np.float32),
        "parents": parents_array,
        "shape_directions": rng.normal(scale=0.01, size=(vertices, 3, shapes)).astype(np.float32),
        "expression_directions": rng.normal(scale=0.005, size=(vertices, 3, expressions)).astype(np.float32),
        "uv_coords": rng.random((vertices, 2)).astype(np.float32),
        "uv_faces": face_indices.astype(np.int32),
    }
    names = {
        "joint_names": list(joint_names or [f"joint_{index:02d}" for index in range(count)]),
        "shape_names": [f"shape_{index:03d}" for index in range(shapes)],
        "expression_names": [f"expression_{index:03d}" for index in range(expressions)],
        "family": "smplx" if count == len(SMPLX_PARENTS) else "synthetic",
        "source": "synthetic",
        "is_standin": True,
    }
    return arrays, names


def synthetic_motion(joints: int, expressions: int, frames: int, fps: float = 30.0, seed: int = 0) -> dict[str, object]:
    """Smooth motion (sums of sines) as ``full_pose`` plus ``transl`` and ``expression``."""
    rng = np.random.default_rng(seed)
    time_axis = np.arange(frames)[:, None] / fps

    def waves(width: int, amplitude: float) -> np.ndarray:
        frequency = rng.uniform(0.2, 1.5, width)
        phase = rng.uniform(0, 2 * np.pi, width)
        return amplitude * np.sin(2 * np.pi * frequency * time_axis + phase)

    return {
        "fps": fps,
        "up_axis": "y",
        "full_pose": waves(3 * joints, 0.4).astype(np.float32),
        "transl": waves(3, 0.5).astype(np.float32),
        "expression": waves(expressions, 1.0).astype(np.float32),
        "betas": rng.normal(size=10).astype(np.float32),
    }


def _clear_scene() -> None:
    while True:
        root = next((obj for obj in bpy.context.scene.objects if obj.neural_avatar.role == "ROOT"), None)
        if root is None:
            break
        remove_avatar(find_avatar(root))
    bpy.ops.outliner.orphans_purge(do_recursive=True)


def time_bulk_import(template, names, motion, repeats: int) -> list[float]:
    """Seconds per full ``import_motion`` (rig, mesh, shape keys and every key)."""
    seconds = []
    for _ in range(repeats):
        _clear_scene()
        start = time.perf_counter()
        import_motion(bpy.context, template, names, motion, ImportOptions(name="Bench", frame_rate="motion"))
        seconds.append(time.perf_counter() - start)
    _clear_scene()
    return seconds


def time_keyframe_insert(template, names, motion, frames: int) -> float:
    """Seconds for the per-key ``keyframe_insert`` loop over ``frames`` frames of the same data."""
    _clear_scene()
    one_frame = {
        key: value[:1] if isinstance(value, np.ndarray) and value.ndim == 2 else value for key, value in motion.items()
    }
    armature = import_motion(bpy.context, template, names, one_frame, ImportOptions(name="Loop", frame_rate="motion"))
    avatar = find_avatar(armature)
    armature.animation_data.action = None
    avatar.mesh.data.shape_keys.animation_data.action = None
    joint_count = len(names["joint_names"])
    pose = np.asarray(motion["full_pose"][:frames], np.float64).reshape(frames, joint_count, 3)
    quaternions = make_quaternions_continuous(axis_angle_to_quaternion(pose))
    translation = np.asarray(motion["transl"][:frames])
    expression = np.asarray(motion["expression"][:frames])
    bones = [armature.pose.bones[name] for name in names["joint_names"]]
    keys = [avatar.mesh.data.shape_keys.key_blocks[name] for name in names["expression_names"]]
    start = time.perf_counter()
    for frame in range(frames):
        for bone, quaternion in zip(bones, quaternions[frame]):
            bone.rotation_quaternion = quaternion
            bone.keyframe_insert("rotation_quaternion", frame=1 + frame, group=bone.name)
        bones[0].location = translation[frame]
        bones[0].keyframe_insert("location", frame=1 + frame, group=bones[0].name)
        for key, value in zip(keys, expression[frame]):
            key.value = value
            key.keyframe_insert("value", frame=1 + frame)
    seconds = time.perf_counter() - start
    _clear_scene()
    return seconds


def time_image_writes(size: int, dtype: str, repeats: int) -> list[float]:
    """Seconds per ``FrameWriter.write`` of a size x size RGBA frame (conversion + flip + upload)."""
    rng = np.random.default_rng(size)
    if dtype == "uint8":
        frame = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    else:
        frame = rng.random((size, size, 4)).astype(dtype)
    writer = FrameWriter(f"bench {size} {dtype}")
    writer.write(frame)  # create the image and buffer outside the timing
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        writer.write(frame)
        seconds.append(time.perf_counter() - start)
    bpy.data.images.remove(writer.image(size, size))
    return seconds


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, object]:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "blender": bpy.app.version_string,
        "numpy": np.__version__,
    }


LIVE_PARTS = ("pose_read", "encode_send", "backend_render", "transfer", "image_write", "total")
LIVE_WARMUP = 3


def time_live_frame(
    connection: wire.Client, armature: bpy.types.Object, avatar_id: str, size: tuple[int, int], writer: FrameWriter
) -> dict[str, float]:
    """Seconds for each part of one frame, timed on one connection (see the module docstring);
    ``writer`` keeps its float buffer from frame to frame, as live mode's does."""
    context = bpy.context
    start = time.perf_counter()
    inputs = frame_inputs(context.evaluated_depsgraph_get(), armature, *size)
    arrays = inputs.arrays()
    posed = time.perf_counter()
    messages = connection.stream("render", render_params(avatar_id, *size), arrays)  # encoded and sent now
    sent = time.perf_counter()
    reply = next(message for message in messages if message.kind == "reply")
    frame = checked_frame({"rgba": as_numpy(reply.arrays["rgba"])}, size[0], size[1], armature.name)
    received = time.perf_counter()
    show_frame(context.scene, [(inputs.depth, frame)], writer)
    written = time.perf_counter()
    render = float(reply.result["render_ms"]) / 1e3
    return {
        "pose_read": posed - start,
        "encode_send": sent - posed,
        "backend_render": render,
        "transfer": received - sent - render,
        "image_write": written - received,
        "total": written - start,
    }


def time_live_mode(worker: BackendClient, size: int) -> float:
    """Seconds from reading the pose to the image written, through live mode's own path."""
    context = bpy.context
    context.scene.neural_avatar.live_size = size
    tickets = [ticket for ticket in live.submit(context) if ticket is not None]
    deadline = time.monotonic() + 120.0
    while not all(ticket.done for ticket in tickets) and time.monotonic() < deadline:
        time.sleep(0.0005)
    frames_before = live.stats.frames
    while live.stats.frames == frames_before and time.monotonic() < deadline:
        worker.drain()  # what the drain timer does in interactive Blender (every DRAIN_INTERVAL)
        time.sleep(0.0005)
    for ticket in tickets:
        ticket.result()  # raises if the request failed
    return live.stats.last_latency_ms / 1e3


def run_live(backend_python: str, project: str, avatar: str, capture: str, sizes: list[int], repeats: int, state_dir: str) -> dict[str, object]:
    """Live-mode frame timings against a backend started by the add-on (times in seconds)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    register()
    session = backend_process.session()
    try:
        python = backend_process.BackendPython(Path(backend_python), Path(project), "bench")
        print("starting the backend", file=sys.stderr)
        starting = session.begin_start(python, Path(state_dir))
        starting.wait(backend_process.START_TIMEOUT)
        client = starting.result()
        if bpy.ops.neural_avatar.import_motion(filepath=capture, ground="none", frame_rate="motion") != {"FINISHED"}:
            raise RuntimeError(f"importing {capture} failed")
        armature = bpy.context.view_layer.objects.active
        if bpy.ops.neural_avatar.load_avatar(directory=avatar) != {"FINISHED"}:
            raise RuntimeError(f"loading {avatar} failed")
        state = armature.neural_avatar
        avatar_id = avatar_ids.get(client, state.avatar_path, state.avatar_checkpoint)
        scene = bpy.context.scene
        frame_count = scene.frame_end - scene.frame_start + 1
        result: dict[str, object] = {"avatar": avatar, "summary": state.avatar_summary, "parts": {}, "live_mode": {}, "sizes": {}}
        info = session.info
        with wire.Client(info.host, info.port, info.token, timeout=120.0, client_name="bench live") as connection:
            for longest in sizes:
                size = preview_size(scene.render, longest)
                result["sizes"][str(longest)] = list(size)
                parts: dict[str, list[float]] = {name: [] for name in LIVE_PARTS}
                writer = FrameWriter(IMAGE_NAME)
                for index in range(LIVE_WARMUP + repeats):
                    scene.frame_set(scene.frame_start + index % frame_count)  # a new pose every frame
                    timing = time_live_frame(connection, armature, avatar_id, size, writer)
                    if index >= LIVE_WARMUP:
                        for name in LIVE_PARTS:
                            parts[name].append(timing[name])
                result["parts"][str(longest)] = parts
                print(f"live frame {size[0]}x{size[1]}: {1e3 * sorted(parts['total'])[len(parts['total']) // 2]:.1f} ms", file=sys.stderr)
        worker = BackendClient(info, background=False, client_name="bench live mode")
        live.enable(client=worker)
        try:
            for longest in sizes:
                samples = []
                for index in range(LIVE_WARMUP + repeats):
                    scene.frame_set(scene.frame_start + index % frame_count)
                    seconds = time_live_mode(worker, longest)
                    if index >= LIVE_WARMUP:
                        samples.append(seconds)
                result["live_mode"][str(longest)] = samples
        finally:
            live.disable()
            worker.close()
        if bpy.data.images.get(IMAGE_NAME) is None:
            raise RuntimeError("no frame reached the Blender image")
        frames = range(scene.frame_start, scene.frame_end + 1)
        start = time.perf_counter()
        sequence_arrays(bpy.context, armature, frames, *preview_size(scene.render, sizes[-1]))
        result["bake_read"] = {"frames": len(frames), "seconds": time.perf_counter() - start}
        result["machine"] = machine()
        return result
    finally:
        session.stop()
        unregister()


def run(frames: int, repeats: int, loop_frames: int, image_sizes: list[int]) -> dict[str, object]:
    """Every measurement, as a JSON-ready dict (times in seconds, lists of all runs)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    register()
    try:
        template, names = synthetic_template()
        joint_count = len(names["joint_names"])
        expressions = len(names["expression_names"])
        motion = synthetic_motion(joint_count, expressions, frames)
        one_frame = synthetic_motion(joint_count, expressions, 1)
        print(f"bulk import of {frames} frames x {repeats}", file=sys.stderr)
        bulk = time_bulk_import(template, names, motion, repeats)
        print("rig build alone (1 frame)", file=sys.stderr)
        rig_only = time_bulk_import(template, names, one_frame, max(3, min(repeats, 5)))
        loop_frames = min(loop_frames, frames)
        loop_runs = 1 if loop_frames > 2000 else max(1, min(repeats, 3))  # the whole loop grows quadratically
        print(f"keyframe_insert loop over {loop_frames} frames x {loop_runs}", file=sys.stderr)
        loop = [time_keyframe_insert(template, names, motion, loop_frames) for _ in range(loop_runs)]
        images = {}
        for size in image_sizes:
            for dtype in ("uint8", "float16", "float32"):
                images[f"{size} {dtype}"] = time_image_writes(size, dtype, max(20, repeats * 3))
        return {
            "frames": frames,
            "joints": joint_count,
            "vertices": len(template["rest_vertices"]),
            "faces": len(template["faces"]),
            "shape_keys": len(names["shape_names"]) + expressions,
            "bulk_import": bulk,
            "rig_build": rig_only,
            "loop_frames": loop_frames,
            "keyframe_insert": loop,
            "image_write": images,
            "machine": machine(),
        }
    finally:
        unregister()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_import", description=__doc__)
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-frames", type=int, default=1000, help="frames for the keyframe_insert loop")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[512, 1024])
    live_options = parser.add_argument_group("live-mode frame latency")
    live_options.add_argument("--live", action="store_true", help="time live-mode frames instead of the import")
    live_options.add_argument("--backend-python", help="the backend's Python (the add-on starts the backend with it)")
    live_options.add_argument("--project", help="the project folder holding backend/")
    live_options.add_argument("--avatar", help="trained avatar folder")
    live_options.add_argument("--capture", help="capture folder to import as the rig (the avatar's)")
    live_options.add_argument("--live-sizes", type=int, nargs="+", default=[256, 512], help="longer image side of the frames")
    live_options.add_argument("--state-dir", help="the started backend's state folder")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1 or args.loop_frames < 1:
        parser.error("--frames, --repeats and --loop-frames must be positive")
    if args.live:
        missing = [name for name in ("backend_python", "project", "avatar", "capture", "state_dir") if not getattr(args, name)]
        if missing:
            parser.error("--live needs " + ", ".join("--" + name.replace("_", "-") for name in missing))
        result = run_live(args.backend_python, args.project, args.avatar, args.capture, args.live_sizes, args.repeats, args.state_dir)
    else:
        result = run(args.frames, args.repeats, args.loop_frames, args.image_sizes)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0
