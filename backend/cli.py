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
        exit_with_parent=args.exit_with_parent,
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.suite == "raster":
        from backend.bench.raster import run

        run(resolutions=args.resolutions or [256, 512, 1024], triangles=args.triangles, repeats=args.repeats)
    elif args.suite == "stream":
        from backend.bench.stream import run

        run(resolutions=args.resolutions or [256, 512, 1024], repeats=args.repeats, avatar=Path(args.avatar) if args.avatar else None)
    elif args.suite == "import":
        from backend.bench.importing import run

        run(
            frames=args.frames, repeats=args.repeats, python=args.python, loop_frames=args.loop_frames,
            avatar=Path(args.avatar) if args.avatar else None, live_sizes=args.resolutions,
        )
    elif args.suite == "render":
        from backend.bench.render import run

        run(resolutions=args.resolutions or [256, 512], repeats=args.repeats)
    elif args.suite == "train":
        from backend.bench.train import run

        run(iterations=args.iterations, resolution=(args.resolutions or [128])[0], repeats=args.runs)
    elif args.suite == "networks":
        from backend.models.benchmark import run

        run(repeats=args.repeats)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from backend.train.config import training_preset
    from backend.train.method import method_config
    from backend.train.trainer import train

    overrides = dict(
        method=args.method, resolution=args.resolution, batch_size=args.batch_size, threads=args.threads,
        device=args.device, seed=args.seed, checkpoint_every=args.checkpoint_every, validate_every=args.validate_every,
    )
    config = training_preset(args.preset, **overrides)
    out = _output_folder(args.out, "avatar")
    with _progress(args, "train") as progress:
        result = train(
            Path(args.capture), out, config, method_config=method_config(args.method, args.preset),
            resume=args.resume, iterations=args.iterations, progress=progress, folders=_model_folders(args),
        )
    state = "cancelled at" if result.cancelled else "trained to"
    best = f", best held-out PSNR {result.best_psnr:.2f} dB" if result.best_psnr is not None else ""
    print(f"{state} step {result.step} in {result.seconds:.0f} s{best}: {result.avatar}")
    return 0


def _int_in(low: int, high: int):
    """argparse type: an integer in low..high, refused with a usage error (not a traceback) otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


COUNT = _int_in(1, 1_000_000_000)
# 16: the smallest image the networks and SSIM's 11-pixel window handle; 8192: the renderer's limit.
IMAGE_SIDE = _int_in(16, 8192)


def _output_folder(text: str, what: str) -> Path:
    """A folder to write into: refused at once when a file of that name is in the way."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        from backend.errors import FileProblemError

        raise FileProblemError(path, f"is a file, not a folder for the {what}")
    return path


def _frame_range(text: str) -> range:
    """``A:B`` → frames A to B-1; ``N`` → frame N alone."""
    start, colon, stop = text.partition(":")
    try:
        return range(int(start or 0), int(stop)) if colon else range(int(start), int(start) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B or N (frame numbers), got {text!r}") from None


def _cmd_render(args: argparse.Namespace) -> int:
    from backend.avatar import load_avatar
    from backend.render import bake

    out = _output_folder(args.out, "rendered frames")
    avatar = load_avatar(Path(args.avatar), args.device, checkpoint=args.checkpoint, folders=_model_folders(args))
    with _progress(args, "render") as progress:
        result = bake(
            avatar, Path(args.tracking), out, args.frames, args.mp4, progress,
            resolution=args.resolution, first_frame=args.first_frame,
        )
    video = f" and {result.video}" if result.video else ""
    print(f"wrote {len(result.files)} frames ({result.resolution[1]}x{result.resolution[0]}) to {result.out_dir}{video}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    from backend.avatar import load_avatar
    from backend.render import evaluate

    out = _output_folder(args.out, "evaluation") if args.out else Path(args.avatar) / "eval"
    avatar = load_avatar(Path(args.avatar), args.device, checkpoint=args.checkpoint, folders=_model_folders(args))
    with _progress(args, "eval") as progress:
        report = evaluate(avatar, Path(args.capture), out, resolution=args.resolution, progress=progress)
    summary = {key: report[key] for key in ("psnr", "ssim", "lpips", "temporal_error", "tlpips", "split", "resolution")}
    print(json.dumps({**summary, "frames": len(report["frames"]), **report["files"]}, indent=1))
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

    p = sub.add_parser(
        "demo", help="the README demo: stand-ins, sample capture, contact sheet, a trained ANR avatar and its evaluation"
    )
    p.add_argument("out", nargs="?", default="out/demo", help="output folder")
    p.set_defaults(handler=_cmd_demo)

    from backend.train.config import METHODS

    p = sub.add_parser("train", parents=[models], help="train an avatar on a tracked capture (resumable)")
    p.add_argument("capture", help="capture folder (frames/, masks/, tracking.npz)")
    p.add_argument("--out", required=True, metavar="AVATAR_DIR", help="avatar folder to create (or continue with --resume)")
    p.add_argument("--method", choices=sorted(METHODS), default="anr", help="avatar method")
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu", help="cpu: small, 128² ; gpu: full size, 512²")
    p.add_argument("--resume", action="store_true", help="continue the avatar in --out from its latest checkpoint")
    p.add_argument("--iterations", type=COUNT, metavar="N", help="total training steps (may extend a resumed run)")
    p.add_argument("--resolution", type=_int_in(16, 4096), metavar="N", help="longer image side for training (default: preset)")
    p.add_argument("--batch-size", type=_int_in(1, 1024), metavar="N")
    p.add_argument("--threads", type=_int_in(1, 1024), metavar="N", help="CPU threads for torch (default: all cores)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"])
    p.add_argument("--seed", type=_int_in(0, 2**63 - 1))
    p.add_argument("--checkpoint-every", type=COUNT, metavar="N")
    p.add_argument("--validate-every", type=COUNT, metavar="N")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("render", parents=[models], help="render a pose sequence with a trained avatar (RGBA PNGs, MP4)")
    p.add_argument("avatar", help="avatar folder")
    p.add_argument("--tracking", required=True, metavar="FILE", help="capture folder, tracking.npz or AMASS .npz")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--mp4", action="store_true", help="also write render.mp4 (over black)")
    p.add_argument(
        "--resolution", type=IMAGE_SIDE, metavar="N",
        help="longer image side (default: the tracking's image size; 512 for motions without a camera)",
    )
    p.add_argument("--frames", type=_frame_range, metavar="A:B", help="frames A to B-1, or one frame N (default: all)")
    p.add_argument(
        "--first-frame", type=_int_in(0, 99_999_999), metavar="N",
        help="name the PNGs frame_{N+i:06d}.png, motion frame i being scene frame N+i (default: NNNNNN.png by motion frame)",
    )
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a checkpoint name")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.set_defaults(handler=_cmd_render)

    p = sub.add_parser("eval", parents=[models], help="PSNR / SSIM / LPIPS / temporal figures on a capture's held-out frames")
    p.add_argument("avatar", help="avatar folder")
    p.add_argument("capture", help="capture folder with ground truth")
    p.add_argument("--out", metavar="DIR", help="where metrics.json and comparison.png go (default: AVATAR/eval)")
    p.add_argument("--resolution", type=IMAGE_SIDE, metavar="N", help="longer image side (default: the training resolution)")
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a checkpoint name")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.set_defaults(handler=_cmd_eval)

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
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="shut down when stdin reaches end-of-file (the add-on keeps it open; a crashed Blender closes it)",
    )
    p.set_defaults(handler=_cmd_serve)

    p = sub.add_parser("bench", help="print performance figures (see README)")
    p.add_argument("suite", choices=["raster", "stream", "import", "render", "train", "networks"])
    p.add_argument("--resolutions", type=int, nargs="+", metavar="N", help="square output sizes (train: the first one; import: the live frames)")
    p.add_argument("--repeats", type=int, default=20, help="repetitions per measurement (median reported)")
    p.add_argument("--triangles", type=int, default=20000, help="raster: triangles in the test mesh")
    p.add_argument("--frames", type=int, default=10000, help="import: frames in the motion")
    p.add_argument(
        "--loop-frames", type=int, default=1000,
        help="import: frames of the keyframe_insert comparison loop (the whole motion takes ~14 min at 10,000 frames)",
    )
    p.add_argument("--python", metavar="EXE", help="import: a Python with the bpy module (default: this one)")
    p.add_argument("--iterations", type=int, default=600, help="train: training steps of the fixed budget")
    p.add_argument("--runs", type=int, default=1, help="train: training runs (median reported)")
    p.add_argument(
        "--avatar", metavar="DIR",
        help="stream / import: avatar folder for the rendering-included and live-frame figures (default: a one-step sample avatar)",
    )
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
