"""Import and image-write timings inside Blender (run by ``python -m backend bench import``).

Runs in a Python that has ``bpy`` (the bpy module, or Blender itself with ``--python-expr``);
``main(argv)`` prints progress to stderr and one result line ``BENCH_RESULT <json>`` on stdout
for the backend to format. Also provides the synthetic SMPL-X-sized template and motion the
tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import bpy
import numpy as np

from . import register, unregister
from .importing import ImportOptions, import_motion
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
        loop_runs = max(1, min(repeats, 3))
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
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "blender": bpy.app.version_string,
                "numpy": np.__version__,
            },
        }
    finally:
        unregister()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_import", description=__doc__)
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-frames", type=int, default=500, help="frames for the keyframe_insert loop")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args(argv)
    if args.frames < 1 or args.repeats < 1 or args.loop_frames < 1:
        parser.error("--frames, --repeats and --loop-frames must be positive")
    result = run(args.frames, args.repeats, args.loop_frames, args.image_sizes)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0
