"""``python -m backend``: the only place that parses command-line arguments.

Each handler converts arguments into a call of an ordinary backend function, so the CLI,
the server and the Blender add-on all run the same code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _model_folder_arguments() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("body models (stand-ins are used for any family left unset)")
    group.add_argument("--smplx", metavar="PATH", help="SMPL-X model folder or file (env NEURAL_AVATAR_SMPLX)")
    group.add_argument("--mano", metavar="PATH", help="MANO model folder (env NEURAL_AVATAR_MANO)")
    group.add_argument("--faceverse", metavar="PATH", help="FaceVerse model folder or .npy (env NEURAL_AVATAR_FACEVERSE)")
    return parent


def _model_folders(args: argparse.Namespace):
    from backend.paths import ModelFolders

    return ModelFolders.resolve(smplx=args.smplx, mano=args.mano, faceverse=args.faceverse)


def _cmd_models(args: argparse.Namespace) -> int:
    from backend.bodies import describe_models

    print(describe_models(_model_folders(args)))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from backend.server.process import serve

    return serve(
        port=args.port,
        device=args.device,
        state_dir=Path(args.state_dir) if args.state_dir else None,
        allow_remote_bind=args.allow_remote_bind,
        log_file=Path(args.log_file) if args.log_file else None,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.suite == "raster":
        from backend.bench.raster import run

        run(resolutions=args.resolutions or [256, 512, 1024], triangles=args.triangles, repeats=args.repeats)
    elif args.suite == "stream":
        from backend.bench.stream import run

        run(resolutions=args.resolutions or [256, 512, 1024], repeats=args.repeats)
    elif args.suite == "import":
        from backend.bench.importing import run

        run(frames=args.frames, repeats=args.repeats, python=args.python)
    return 0


def _progress(args: argparse.Namespace, description: str):
    from backend.progress import make_progress

    return make_progress(args.progress, description)


def _cmd_sample_capture(args: argparse.Namespace) -> int:
    from backend.capture.sample import SampleCaptureConfig, contact_sheet, generate_sample_capture

    config = SampleCaptureConfig(
        train_frames=args.train_frames, test_frames=args.test_frames, size=args.size, seed=args.seed, noise=args.noise
    )
    with _progress(args, "sample capture") as progress:
        out = generate_sample_capture(Path(args.out), config, progress=progress)
    if args.contact_sheet:
        contact_sheet(out, Path(args.contact_sheet))
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from backend.demo import run_demo

    with _progress(args, "demo") as progress:
        run_demo(Path(args.out), progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="Neural Avatar backend: body models, sample data, training, rendering and the local server.",
    )
    parser.add_argument(
        "--progress",
        choices=["auto", "tqdm", "log", "jsonl", "none"],
        default="auto",
        help="how long-running commands report progress (jsonl: machine-readable events, used by server jobs)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    models = _model_folder_arguments()

    p = sub.add_parser(
        "models",
        parents=[models],
        help="show which body models are in use (real or stand-in), generating stand-ins if needed",
    )
    p.set_defaults(handler=_cmd_models)

    p = sub.add_parser(
        "sample-capture", help="render the synthetic sample capture (stand-in body, procedural motion and outfit)"
    )
    p.add_argument("out", help="capture folder to write (replaced if it exists)")
    p.add_argument("--train-frames", type=int, default=360, help="frames of the training performance")
    p.add_argument("--test-frames", type=int, default=60, help="held-out frames with unseen poses")
    p.add_argument("--size", type=int, default=256, help="frame width and height in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.0, help="tracking noise std written into tracking.npz (radians)")
    p.add_argument("--contact-sheet", metavar="PNG", help="also write a contact sheet of frames and masks")
    p.set_defaults(handler=_cmd_sample_capture)

    p = sub.add_parser("demo", help="the README demo: stand-ins, sample capture, contact sheet")
    p.add_argument("out", nargs="?", default="out/demo", help="output folder")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("serve", help="run the local backend server the Blender add-on talks to")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0 picks a free one)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--state-dir", metavar="DIR", help="where the connection file, log and job outputs go")
    p.add_argument("--log-file", metavar="FILE", help="log file (default: STATE_DIR/server.log)")
    p.add_argument(
        "--allow-remote-bind",
        metavar="ADDRESS",
        help="DANGEROUS: listen on ADDRESS instead of 127.0.0.1 (anyone who can reach it and has the token "
        "can drive the backend; prefer an SSH tunnel)",
    )
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("bench", help="print performance figures (see README)")
    p.add_argument("suite", choices=["raster", "stream", "import"])
    p.add_argument("--resolutions", type=int, nargs="+", metavar="N", help="square output sizes")
    p.add_argument("--repeats", type=int, default=20, help="repetitions per measurement (median reported)")
    p.add_argument("--triangles", type=int, default=20000, help="raster: triangles in the test mesh")
    p.add_argument("--frames", type=int, default=10000, help="import: frames in the motion")
    p.add_argument("--python", metavar="EXE", help="import: a Python with the bpy module (default: this one)")
    p.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from backend.errors import AvatarError

    try:
        return int(args.handler(args) or 0)
    except AvatarError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
