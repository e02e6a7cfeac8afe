"""Bake every bound avatar of a .blend file from the command line (Blender in background mode).

    blender -b scene.blend -P <add-on folder>/batch_bake.py -- --out /renders/take1 --frames 1:250 --mp4

Options (after ``--``):
  --out DIR             output folder (required); with several bound armatures each gets DIR/<armature>
  --frames A:B          frames A to B, both included (default: the scene's frame range)
  --mp4                 also write render.mp4
  --avatar DIR          bind this trained avatar folder to every SMPL-X avatar armature first
  --connection FILE     use the running backend that wrote FILE (default: start one, as the add-on's
                        preferences say)

It enables the add-on if needed, starts or connects the backend, bakes each bound armature in
turn (blocking, printing progress) and exits with status 1 on the first failure. This file is
run by Blender as a script, never imported by the add-on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import addon_utils
import bpy

ADDON_DIR = Path(__file__).resolve().parent


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="batch_bake.py", description="Bake the bound Neural Avatar armatures of a .blend file.")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--frames", metavar="A:B", help="frames A to B, both included (default: the scene's range)")
    parser.add_argument("--mp4", action="store_true", help="also write render.mp4")
    parser.add_argument("--avatar", metavar="DIR", help="bind this trained avatar folder to every SMPL-X avatar armature")
    parser.add_argument("--connection", metavar="FILE", help="connection file of a running backend")
    args = parser.parse_args(argv)
    if args.frames is not None:
        first, colon, last = args.frames.partition(":")
        try:
            args.frames = (int(first), int(last)) if colon else (int(first), int(first))
        except ValueError:
            parser.error(f"--frames: expected A:B or N (frame numbers), got {args.frames!r}")
        if args.frames[1] < args.frames[0]:
            parser.error(f"--frames: {args.frames[0]}:{args.frames[1]} is empty")
    return args


def enable_addon() -> str:
    """The add-on's module name, enabling it first when needed (installed add-on, extension or source tree)."""
    for module in addon_utils.modules():
        if Path(module.__file__).resolve().parent == ADDON_DIR:
            name = module.__name__
            break
    else:  # not on Blender's add-on paths (e.g. run from the source tree): import it from its parent folder
        if str(ADDON_DIR.parent) not in sys.path:
            sys.path.insert(0, str(ADDON_DIR.parent))
        name = ADDON_DIR.name
    if not addon_utils.check(name)[1]:
        addon_utils.enable(name, default_set=True, handle_error=None)
    return name


def main(argv: list[str]) -> int:
    args = parse_arguments(argv)
    name = enable_addon()
    if args.connection:
        prefs = bpy.context.preferences.addons[name].preferences
        prefs.connection, prefs.connection_file = "FILE", str(Path(args.connection).resolve())
        bpy.ops.neural_avatar.backend_connect()
    scene = bpy.context.scene
    armatures = [obj for obj in scene.objects if obj.type == "ARMATURE" and obj.neural_avatar.role == "ARMATURE"]
    if args.avatar:
        folder = str(Path(args.avatar).resolve())
        for armature in armatures:
            if armature.neural_avatar.family == "smplx":
                with bpy.context.temp_override(active_object=armature):  # the operators' poll checks the active avatar
                    bpy.ops.neural_avatar.load_avatar(directory=folder, armature=armature.name)
    bound = [armature for armature in armatures if armature.neural_avatar.avatar_path]
    if not bound:
        print("batch_bake: no armature is bound to a trained avatar (bind one in the Avatar panel, or pass --avatar DIR)", file=sys.stderr)
        return 1
    first, last = args.frames or (scene.frame_start, scene.frame_end)
    out = Path(args.out).resolve()
    for armature in bound:
        target = out / armature.name if len(bound) > 1 else out
        print(f"batch_bake: {armature.name}: frames {first}-{last} -> {target}", flush=True)
        with bpy.context.temp_override(active_object=armature):
            bpy.ops.neural_avatar.bake(directory=str(target), frame_start=first, frame_end=last, mp4=args.mp4, armature=armature.name, wait=True)
    print(f"batch_bake: baked {len(bound)} avatar{'s' if len(bound) != 1 else ''} to {out}", flush=True)
    return 0


if __name__ == "__main__":
    arguments = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    try:
        status = main(arguments)
    except RuntimeError as error:  # an operator reported an error: its message says what went wrong
        print(f"batch_bake: {error}", file=sys.stderr)
        status = 1
    sys.exit(status)
