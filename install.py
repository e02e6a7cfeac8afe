#!/usr/bin/env python3
"""Set up Neural Avatar (stdlib only; runs on any Python 3.8+, builds its venv with Python 3.11).

    python install.py demo        set up the backend, then run the demo (writes ./out/demo)
    python install.py test        set up backend + test tools (bpy, pytest), then run the test suite
    python install.py setup       only set up (add --tests for the test tools, --cuda for nvdiffrast)
    python install.py addon       install the Blender add-on (--blender EXE, --addons-dir DIR, or --zip FILE)

Re-running is fast: a stamp in .venv records what was installed, and pip only runs when it changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / "neural-avatar-install.json"
ADDON_SOURCE = ROOT / "blender_addon"
ADDON_NAME = "neural_avatar"  # the add-on's module / extension id once installed into Blender
REQUIRED_PYTHON = (3, 11)

# torch 2.13.0: the CPU build lies on this project's build machines' disks; elsewhere pip fetches it.
BACKEND_REQUIREMENTS = [
    "torch==2.13.0",
    "numpy<2",
    "smplx>=0.1.28",
    "pillow",
    "moderngl>=5.10",
    "safetensors",
    "tqdm",
    "imageio-ffmpeg",
    "scipy",
]
# bpy 5.0.1 is Blender as a Python module (cp311 only, pins numpy<2): the add-on's tests run in it.
TEST_REQUIREMENTS = ["pytest", "bpy==5.0.1"]
NVDIFFRAST = "git+https://github.com/NVlabs/nvdiffrast.git"


class InstallError(Exception):
    pass


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(command: list[str], what: str, **kwargs) -> None:
    say(f"{what}: {' '.join(str(c) for c in command)}")
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise InstallError(f"{what} failed (exit code {result.returncode}); see the output above")


def find_python311() -> str:
    """A Python 3.11 interpreter: this one, or python3.11 on PATH."""
    if sys.version_info[:2] == REQUIRED_PYTHON:
        return sys.executable
    for name in ("python3.11", "python3", "python"):
        exe = shutil.which(name)
        if not exe:
            continue
        probe = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == "3.11":
            return exe
    found = ".".join(map(str, sys.version_info[:3]))
    raise InstallError(
        f"Neural Avatar needs Python 3.11 (bpy 5.0.1 and the torch build are made for it); this is Python "
        f"{found} and no python3.11 is on PATH. Install Python 3.11 and run: python3.11 install.py ..."
    )


def has_cuda_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    return subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def ensure_venv() -> None:
    python = venv_python()
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == "3.11":
            return
        say(f"{VENV} is broken or not Python 3.11; recreating it")
        shutil.rmtree(VENV)
    run([find_python311(), "-m", "venv", str(VENV)], "creating the virtual environment")


def read_stamp() -> dict:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return {}


def ensure_packages(with_tests: bool, cuda: bool) -> None:
    ensure_venv()
    python = str(venv_python())
    wanted = BACKEND_REQUIREMENTS + (TEST_REQUIREMENTS if with_tests else [])
    stamp = read_stamp()
    digest = hashlib.sha256(json.dumps(wanted).encode()).hexdigest()
    if stamp.get("requirements") != digest or stamp.get("python") != python:
        run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", *wanted], "installing packages")
        stamp = {"requirements": digest, "python": python}
    link_project()
    if cuda and not stamp.get("nvdiffrast"):
        if not has_cuda_gpu():
            say("--cuda given but no CUDA GPU found (nvidia-smi); skipping nvdiffrast, the OpenGL rasterizer is used")
        else:
            result = subprocess.run([python, "-m", "pip", "install", "-q", "--no-build-isolation", NVDIFFRAST])
            if result.returncode == 0:
                stamp["nvdiffrast"] = True
            else:
                say("WARNING: nvdiffrast failed to install; continuing with the OpenGL rasterizer")
    STAMP.write_text(json.dumps(stamp, indent=1))


def link_project() -> None:
    """Make `backend` and `blender_addon` importable from the venv wherever it runs (like an editable install)."""
    python = str(venv_python())
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pth = Path(site) / "neural_avatar_project.pth"
    if not pth.exists() or pth.read_text().strip() != str(ROOT):
        pth.write_text(str(ROOT) + "\n")


def backend_command(*args: str) -> list[str]:
    return [str(venv_python()), "-m", "backend", *args]


def cmd_demo(args: argparse.Namespace) -> int:
    ensure_packages(with_tests=False, cuda=args.cuda)
    out = Path(args.out).resolve()
    return subprocess.run(backend_command("demo", str(out)), cwd=ROOT).returncode


def cmd_test(args: argparse.Namespace) -> int:
    ensure_packages(with_tests=True, cuda=args.cuda)
    # pytest exits 5 when it collects nothing: that is a failure here, like any other non-zero exit.
    command = [str(venv_python()), "-m", "pytest", "tests", *args.pytest_args]
    say("running the test suite: " + " ".join(command))
    return subprocess.run(command, cwd=ROOT).returncode


def cmd_setup(args: argparse.Namespace) -> int:
    ensure_packages(with_tests=args.tests, cuda=args.cuda)
    say(f"ready: {venv_python()} -m backend --help")
    return 0


def addon_files() -> list[Path]:
    return sorted(
        p for p in ADDON_SOURCE.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def backend_settings() -> dict:
    """Tells the installed add-on where its backend lives (used when the preference is empty)."""
    return {"python": str(venv_python()), "project": str(ROOT)}


def build_zip(target: Path, legacy: bool, with_settings: bool) -> Path:
    """Blender 4.2+ extension zip (manifest at the root) or a legacy add-on zip (one top folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f"{ADDON_NAME}/" if legacy else ""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in addon_files():
            archive.write(path, prefix + path.relative_to(ADDON_SOURCE).as_posix())
        if with_settings:
            archive.writestr(prefix + "backend.json", json.dumps(backend_settings(), indent=1))
    return target


def blender_addons_dir(blender: str) -> Path:
    expr = "import bpy; print('ADDONS=' + bpy.utils.user_resource('SCRIPTS', path='addons', create=True))"
    result = subprocess.run(
        [blender, "-b", "--factory-startup", "--python-expr", expr], capture_output=True, text=True, timeout=300
    )
    for line in result.stdout.splitlines():
        if line.startswith("ADDONS="):
            return Path(line[len("ADDONS=") :])
    raise InstallError(f"could not ask {blender} for its add-on folder:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def cmd_addon(args: argparse.Namespace) -> int:
    if args.zip:
        ensure_venv()
        target = build_zip(Path(args.zip).resolve(), legacy=args.legacy, with_settings=not args.portable)
        kind = "legacy add-on" if args.legacy else "extension"
        say(f"wrote {kind} zip {target}: Blender > Preferences > Add-ons/Extensions > Install from Disk")
        return 0
    ensure_packages(with_tests=False, cuda=args.cuda)
    if args.addons_dir:
        addons = Path(args.addons_dir).expanduser().resolve()
    else:
        blender = args.blender or shutil.which("blender")
        if not blender:
            raise InstallError("no Blender found: pass --blender /path/to/blender, --addons-dir DIR or --zip FILE")
        addons = blender_addons_dir(blender)
    destination = addons / ADDON_NAME
    staging = Path(tempfile.mkdtemp(prefix=f".{ADDON_NAME}-", dir=addons.parent if addons.exists() else None))
    try:
        for path in addon_files():
            target = staging / path.relative_to(ADDON_SOURCE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        (staging / "backend.json").write_text(json.dumps(backend_settings(), indent=1))
        addons.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            shutil.rmtree(destination)
        shutil.move(str(staging), str(destination))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"installed the add-on into {destination}; enable 'Neural Avatar' in Blender's preferences")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="set up, then run the demo")
    p.add_argument("--out", default=str(ROOT / "out" / "demo"), help="demo output folder")
    p.add_argument("--cuda", action="store_true", help="also install nvdiffrast when a CUDA GPU is present")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("test", help="set up with test tools, then run pytest (extra args go to pytest)")
    p.add_argument("--cuda", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_test)
    p = sub.add_parser("setup", help="only set up the virtual environment")
    p.add_argument("--tests", action="store_true", help="also install the test tools (bpy, pytest)")
    p.add_argument("--cuda", action="store_true", help="also install nvdiffrast when a CUDA GPU is present")
    p.set_defaults(func=cmd_setup)
    p = sub.add_parser("addon", help="install the Blender add-on, or build its zip")
    p.add_argument("--blender", metavar="EXE", help="Blender executable to install into")
    p.add_argument("--addons-dir", metavar="DIR", help="install into this add-on folder directly")
    p.add_argument("--zip", metavar="FILE", help="build an installable zip instead")
    p.add_argument("--legacy", action="store_true", help="with --zip: legacy add-on layout instead of an extension")
    p.add_argument("--portable", action="store_true", help="with --zip: leave out this machine's backend path")
    p.add_argument("--cuda", action="store_true", help="also install nvdiffrast when a CUDA GPU is present")
    p.set_defaults(func=cmd_addon)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InstallError as error:
        print(f"[install] ERROR: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
