"""Shared pytest fixtures. Each block is owned by the helper named in its heading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


# ==================================================================================
# Backend server fixtures (wire protocol / server helper)
# ==================================================================================


@dataclass
class ServerProcess:
    """A real ``python -m backend serve`` subprocess and where it keeps its state."""

    process: subprocess.Popen[bytes]
    state_dir: Path
    output: Path

    @property
    def connection_file(self) -> Path:
        return self.state_dir / "connection.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    def info(self):
        from blender_addon import wire

        return wire.read_connection_file(self.connection_file)

    def client(self, **options):
        from blender_addon import wire

        options.setdefault("timeout", 30.0)
        return wire.Client.from_connection_file(self.connection_file, client_name="pytest", **options)

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (clean shutdown), then kill if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_environment(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["NEURAL_AVATAR_CACHE"] = str(cache)  # stand-ins and the default state folder stay in tmp
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
    return env


def start_server(root: Path, *arguments: str, timeout: float = 60.0) -> ServerProcess:
    """Start a server with its state in ``root`` and wait for its connection file."""
    state_dir = root / "state"
    output = root / "server-output.txt"
    command = [sys.executable, "-m", "backend", "serve", "--port", "0", "--device", "cpu", "--state-dir", str(state_dir)]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*command, *arguments], stdout=sink, stderr=subprocess.STDOUT, cwd=REPOSITORY_ROOT, env=server_environment(root / "cache")
        )
    server = ServerProcess(process, state_dir, output)
    deadline = time.monotonic() + timeout
    while not server.connection_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{output.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not start within {timeout} s:\n{output.read_text(errors='replace')}")
        time.sleep(0.05)
    return server


@pytest.fixture
def run_backend(tmp_path: Path):
    """Run ``python -m backend ARGS`` to completion (cache in tmp); returns the CompletedProcess."""

    def run(*arguments: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "backend", *arguments],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPOSITORY_ROOT,
            env=server_environment(tmp_path / "cache"),
        )

    return run


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One server per test module (started once: tests must leave it serving)."""
    running = start_server(tmp_path_factory.mktemp("server"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fresh_server(tmp_path: Path):
    """A server of its own, for tests that stop it."""
    running = start_server(tmp_path)
    try:
        yield running
    finally:
        running.stop()


# The tiny sample capture (24 training + 8 held-out frames at 64²) and one avatar trained on it,
# made once per test session and shared by the server's avatar, job and bake tests. Same
# configuration as the training / rendering tests, so the capture is generated only once.
TINY_SAMPLE = {"train_frames": 24, "test_frames": 8, "size": 64}


@pytest.fixture(scope="session")
def tiny_sample_capture(capture_root: Path) -> Path:
    from backend.capture.sample import SampleCaptureConfig
    from backend.data.sample import cached_sample_capture

    return cached_sample_capture(SampleCaptureConfig(**TINY_SAMPLE), capture_root)


@pytest.fixture(scope="session")
def tiny_trained_avatar(tiny_sample_capture: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ANR avatar trained for 60 steps at 64² (a few seconds): clearly the person, not yet sharp."""
    from backend.train.config import TrainingConfig
    from backend.train.trainer import train

    out = tmp_path_factory.mktemp("tiny-avatar") / "avatar"
    config = TrainingConfig(resolution=64, iterations=60, checkpoint_every=60, validate_every=60, validation_frames=4)
    train(tiny_sample_capture, out, config)
    return out


# ================================================================ end of server fixtures


# ==================================================================================
# Add-on <-> backend fixtures (client / backend-process helper)
# ==================================================================================


@pytest.fixture(scope="session")
def shared_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One NEURAL_AVATAR_CACHE for the whole session, so the stand-in models are generated once."""
    return tmp_path_factory.mktemp("shared-model-cache")


@pytest.fixture(scope="module")
def model_cache_env(shared_model_cache: Path):
    """Point this test process's body-model loaders at the shared cache for one module."""
    previous = os.environ.get("NEURAL_AVATAR_CACHE")
    os.environ["NEURAL_AVATAR_CACHE"] = str(shared_model_cache)
    try:
        yield shared_model_cache
    finally:
        if previous is None:
            os.environ.pop("NEURAL_AVATAR_CACHE", None)
        else:
            os.environ["NEURAL_AVATAR_CACHE"] = previous


@pytest.fixture(scope="module")
def shared_cache_server(tmp_path_factory: pytest.TempPathFactory, model_cache_env: Path):
    """Like ``server`` (one per module), but its model cache is the session's shared one."""
    root = tmp_path_factory.mktemp("server-shared-cache")
    (root / "cache").symlink_to(model_cache_env, target_is_directory=True)  # start_server uses ROOT/cache
    running = start_server(root)
    try:
        yield running
    finally:
        running.stop()


# ====================================================== end of add-on <-> backend fixtures


@pytest.fixture(scope="session")
def capture_root(tmp_path_factory) -> Path:
    """One folder per test session for the small sample captures the avatar tests share."""
    return tmp_path_factory.mktemp("captures")
