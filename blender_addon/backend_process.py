"""The one backend this Blender session uses: started here as a child process, or connected to.

Starting runs ``<python> -m backend serve --state-dir DIR`` and waits for the connection file
the server writes. ``<python>`` is, in order: the "Backend Python" preference (a virtual
environment folder or a Python executable), ``backend.json`` next to the installed add-on
(written by ``install.py``), or the interpreter named by ``NEURAL_AVATAR_BACKEND_PYTHON``
(tests and development). A server already serving the state folder (e.g. left running by a
Blender that crashed) is taken over instead of starting a second one.

Connecting to a server started elsewhere (its connection file, or host/port/token through an
SSH tunnel) only attaches to it: stopping then disconnects and leaves that server running.

The session is stopped when the add-on is unregistered and when Blender exits (``atexit``).
Nothing here imports ``bpy`` at module level, and nothing runs on other threads except the
client's worker.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import wire
from .client import NOT_RUNNING, BackendClient, BackendError, Ticket

BACKEND_PYTHON_ENV = "NEURAL_AVATAR_BACKEND_PYTHON"
SETTINGS_FILE = "backend.json"  # written next to the installed add-on by install.py
ADDON_DIR = Path(__file__).resolve().parent
CONNECTION_FILE = "connection.json"  # names the server uses inside its state folder
SERVER_LOG = "server.log"
CONSOLE_LOG = "console.log"  # the server's stdout/stderr (start-up failures land here)
START_TIMEOUT = 120.0  # importing torch and initialising CUDA can take a while on first start
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 8


@dataclass(frozen=True)
class BackendPython:
    """The interpreter that runs the backend, the project folder it runs from, and where that came from."""

    python: Path
    project: Path | None
    origin: str


def python_in(path: str | Path, origin: str) -> Path:
    """A Python executable given as itself or as a virtual-environment folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for candidate in (path / "bin" / "python3", path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.is_file():
                return candidate
        raise BackendError("backend_python", f"{origin}: {path} is a folder without bin/python (not a virtual environment)")
    if not path.is_file():
        raise BackendError("backend_python", f"{origin}: {path} does not exist")
    if not os.access(path, os.X_OK):
        raise BackendError("backend_python", f"{origin}: {path} is not executable")
    return path


def source_project(addon_dir: Path = ADDON_DIR) -> Path | None:
    """The project folder when the add-on runs from the source tree (``backend/`` beside it)."""
    root = addon_dir.parent
    return root if (root / "backend" / "__main__.py").is_file() else None


def resolve_backend_python(preference: str, addon_dir: Path = ADDON_DIR, environ: dict[str, str] | None = None) -> BackendPython:
    """Which Python runs the backend: preference, then ``backend.json``, then ``NEURAL_AVATAR_BACKEND_PYTHON``."""
    environ = os.environ if environ is None else environ
    if preference.strip():
        return BackendPython(python_in(preference.strip(), "the Backend Python preference"), source_project(addon_dir), "preference")
    settings_file = addon_dir / SETTINGS_FILE
    if settings_file.is_file():
        try:
            settings = json.loads(settings_file.read_text(encoding="utf-8"))
            python, project = settings["python"], settings.get("project")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BackendError("backend_python", f"{settings_file}: unreadable ({error}); run install.py again") from None
        if not isinstance(python, str) or (project is not None and not isinstance(project, str)):
            raise BackendError("backend_python", f"{settings_file}: 'python' and 'project' must be paths; run install.py again")
        return BackendPython(
            python_in(python, str(settings_file)), Path(project) if project else source_project(addon_dir), SETTINGS_FILE
        )
    if environ.get(BACKEND_PYTHON_ENV, "").strip():
        return BackendPython(python_in(environ[BACKEND_PYTHON_ENV].strip(), BACKEND_PYTHON_ENV), source_project(addon_dir), BACKEND_PYTHON_ENV)
    raise BackendError(
        "backend_python",
        "no backend Python configured: set 'Backend Python' in the add-on preferences "
        "(or install the add-on with install.py, which records it)",
    )


def default_state_dir() -> Path:
    """Where an add-on-started backend keeps its connection file, log and jobs."""
    import bpy

    package = __package__ or "neural_avatar"
    try:
        return Path(bpy.utils.extension_path_user(package, path="backend", create=True))
    except (ValueError, RuntimeError, AttributeError):  # a legacy add-on, not an extension
        return Path(bpy.utils.user_resource("DATAFILES", path="neural_avatar", create=True)) / "backend"


def tail_lines(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 16384) -> list[str]:
    """The last ``lines`` non-empty lines of a text file (empty when it is missing)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            size = stream.tell()
            stream.seek(max(0, size - max_bytes))
            text = stream.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _listening(info: wire.ConnectionInfo) -> bool:
    try:
        with socket.create_connection((info.host, info.port), timeout=0.5):
            return True
    except OSError:
        return False


class BackendProcess:
    """A backend server child process: launch, wait until it listens, stop, read its logs."""

    def __init__(self, python: BackendPython, state_dir: Path, start_timeout: float = START_TIMEOUT):
        self.python = python
        self.state_dir = Path(state_dir)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.info: wire.ConnectionInfo | None = None
        self._launched_at = 0.0
        self._deadline = 0.0

    @property
    def connection_file(self) -> Path:
        return self.state_dir / CONNECTION_FILE

    @property
    def log_file(self) -> Path:
        return self.state_dir / SERVER_LOG

    @property
    def console_file(self) -> Path:
        return self.state_dir / CONSOLE_LOG

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def command(self) -> list[str]:
        return [str(self.python.python), "-m", "backend", "serve", "--state-dir", str(self.state_dir)]

    def launch(self) -> None:
        """Start the child (returns at once; see :meth:`poll_started`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("PYTHONHOME", None)  # Blender's own Python must not leak into the backend's
        if self.python.project is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.python.project), env.get("PYTHONPATH")]))
        cwd = self.python.project if self.python.project is not None else self.state_dir
        self._launched_at = time.time()
        self._deadline = time.monotonic() + self.start_timeout
        with open(self.console_file, "wb") as console:
            try:
                self.process = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=env,
                    creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
                )
            except OSError as error:
                raise BackendError("start_failed", f"cannot run {self.python.python} ({self.python.origin}): {error}") from None

    def poll_started(self) -> wire.ConnectionInfo | None:
        """The connection info once the server listens; None while starting; raises if it died or timed out."""
        if self.process is None:
            raise BackendError("start_failed", "the backend was never launched")
        if self.info is not None:
            return self.info
        code = self.process.poll()
        if code is not None:
            raise BackendError("start_failed", f"the backend exited during start-up (exit code {code}){self.log_excerpt()}")
        try:
            if self.connection_file.stat().st_mtime >= self._launched_at - 1.0:
                info = wire.read_connection_file(self.connection_file)
                if info.pid == self.process.pid or _listening(info):
                    self.info = info
                    return info
        except FileNotFoundError:
            pass
        except wire.ProtocolError as error:
            if error.code == wire.VERSION_MISMATCH:
                self.stop()
                raise BackendError(error.code, error.message) from None
        if time.monotonic() > self._deadline:
            self.stop()
            raise BackendError(
                "start_failed", f"the backend did not start within {self.start_timeout:.0f} s{self.log_excerpt()}"
            )
        return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Ask the server to shut down, then terminate, then kill; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None and self.info is not None:
            request_shutdown(self.info)
        for action in (None, self.process.terminate, self.process.kill):
            if action is not None:
                try:
                    action()
                except OSError:
                    pass
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        return self.process.poll()

    def log_excerpt(self) -> str:
        """The end of the console output and of the server log, for error messages."""
        parts = []
        for path in (self.console_file, self.log_file):
            lines = tail_lines(path)
            if lines:
                parts.append(f"{path.name}: " + " | ".join(line.strip() for line in lines))
        return ("; last lines of " + "; ".join(parts)) if parts else ""

    def describe_exit(self) -> str:
        """Why the connection may have dropped: the exit code and log tail once the process has ended."""
        if self.process is None:
            return ""
        try:
            code = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            return ""
        return f"exit code {code}{self.log_excerpt()}"


def request_shutdown(info: wire.ConnectionInfo, timeout: float = 3.0) -> bool:
    """Send ``shutdown`` on a connection of its own; False if the server could not be reached."""
    try:
        with wire.Client(info.host, info.port, info.token, connect_timeout=timeout, timeout=timeout, client_name="blender-stop") as client:
            client.request("shutdown")
        return True
    except (wire.ProtocolError, OSError):
        return False


class Starting:
    """A backend start in progress: ``done`` when listening or failed; ``wait()`` blocks (background mode)."""

    def __init__(self, session: "BackendSession", process: BackendProcess | None):
        self._session = session
        self._process = process  # None: a running server was taken over, nothing to wait for
        self._error: BackendError | None = None
        self._finished = process is None

    @property
    def done(self) -> bool:
        if not self._finished and self._process is not None:
            try:
                info = self._process.poll_started()
            except BackendError as error:
                self._error, self._finished = error, True
                self._session._forget(self._process, error)
            else:
                if info is not None:
                    self._finished = True
                    self._session._attach(info, owned=True, process=self._process)
        return self._finished

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        return True

    def result(self) -> BackendClient:
        if not self.done:
            raise BackendError(wire.TIMEOUT, "the backend is still starting")
        if self._error is not None:
            raise self._error
        assert self._session.client is not None
        return self._session.client


class BackendSession:
    """The backend of this Blender session: at most one, shared by every avatar and operator."""

    def __init__(self) -> None:
        self.client: BackendClient | None = None
        self.process: BackendProcess | None = None
        self.info: wire.ConnectionInfo | None = None
        self.owned = False  # started here (or taken over from our state folder): stopping shuts it down
        self.starting: Starting | None = None
        self.server_info: dict[str, Any] = {}
        self.last_error = ""

    # ---------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        """Attached to a server that, as far as we know, still runs."""
        if self.client is None or self.client.closed:
            return False
        if self.process is not None:
            return self.process.alive
        return not self.client.lost

    @property
    def status(self) -> str:
        if self.starting is not None:
            return "starting..."
        if self.client is None:
            return f"not running ({self.last_error})" if self.last_error else "not running"
        if self.process is not None and not self.process.alive:
            return f"stopped (exit code {self.process.exit_code})"
        if self.process is None and self.client.lost:
            return f"connection lost: {self.client.lost}"
        how = "running on" if self.owned else "connected to"
        if self.info is None:
            return how.split()[0]
        pid = self.server_info.get("pid") or self.info.pid
        return f"{how} {self.info.host}:{self.info.port}" + (f" (pid {pid})" if pid else "")

    @property
    def device(self) -> str:
        return str(self.server_info.get("device") or (self.client.server_info.get("device", "") if self.client else ""))

    @property
    def log_file(self) -> Path | None:
        """The server log, when it is on this machine."""
        if self.process is not None:
            return self.process.log_file
        text = self.server_info.get("log_file") or (self.info.log_file if self.info else "")
        return Path(text) if text else None

    # ---------------------------------------------------------------- start / connect / stop

    def begin_start(self, python: BackendPython, state_dir: Path, start_timeout: float = START_TIMEOUT) -> Starting:
        """Start the backend (or take over the one already serving ``state_dir``); poll or wait the result."""
        if self.starting is not None:
            return self.starting
        self.stop()
        process = BackendProcess(python, state_dir, start_timeout)
        existing = _running_server(process.connection_file)
        if existing is not None:  # e.g. left behind by a Blender that crashed: stopping it uses ``shutdown``
            self._attach(existing, owned=True, process=None)
            return Starting(self, None)
        self.last_error = ""
        process.launch()
        self.process = process
        self.starting = Starting(self, process)
        return self.starting

    def connect(self, info: wire.ConnectionInfo) -> Ticket:
        """Attach to a server started elsewhere; the returned ``info`` request checks the connection."""
        self.stop()
        return self._attach(info, owned=False, process=None)

    def stop(self, at_exit: bool = False) -> None:
        """Shut down a server we own (disconnect from others) and forget it."""
        client, process, info, owned = self.client, self.process, self.info, self.owned
        self.client, self.process, self.info, self.owned, self.starting = None, None, None, False, None
        self.server_info = {}
        if client is not None:
            client.close(unregister_timer=not at_exit)
        if process is not None:
            process.stop()
        elif owned and info is not None:
            request_shutdown(info)
            _wait_until_gone(info)

    def _attach(self, info: wire.ConnectionInfo, owned: bool, process: BackendProcess | None) -> Ticket:
        """Use the server at ``info``; returns the ``info`` request that fills ``server_info``."""
        self.info, self.owned, self.process, self.starting = info, owned, process, None
        self.last_error = ""
        self.client = BackendClient(info, describe_loss=process.describe_exit if process else None)
        return self.client.submit("info", {"bodies": True}, on_done=self._store_info)

    def _forget(self, process: BackendProcess, error: BackendError) -> None:
        if self.process is process:
            self.process, self.starting = None, None
            self.last_error = error.message

    def _store_info(self, ticket: Ticket) -> None:
        try:
            self.server_info = ticket.result().result
        except BackendError as error:
            self.last_error = error.message
        redraw_sidebars()


def redraw_sidebars() -> None:
    """Panels show the session's state; redraw them when it changes (main thread only)."""
    import bpy

    window_manager = getattr(bpy.context, "window_manager", None)
    for window in window_manager.windows if window_manager else ():
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def _running_server(connection_file: Path) -> wire.ConnectionInfo | None:
    try:
        info = wire.read_connection_file(connection_file)
    except wire.ProtocolError:
        return None
    return info if _listening(info) else None


def _wait_until_gone(info: wire.ConnectionInfo, timeout: float = STOP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while _listening(info) and time.monotonic() < deadline:
        time.sleep(0.05)


def connection_from_address(host: str, port: int, token: str) -> wire.ConnectionInfo:
    """Connection details typed into the preferences (e.g. the local end of an SSH tunnel)."""
    if not host.strip():
        raise BackendError("bad_connection", "set the backend's host in the add-on preferences")
    if not 0 < port < 65536:
        raise BackendError("bad_connection", f"port {port} is not a valid port; set it in the add-on preferences")
    if not token.strip():
        raise BackendError("bad_connection", "set the backend's token (printed when it starts) in the add-on preferences")
    return wire.ConnectionInfo(host.strip(), port, token.strip(), pid=0)


def connection_from_file(path: str) -> wire.ConnectionInfo:
    if not path.strip():
        raise BackendError("bad_connection", "choose the backend's connection file in the add-on preferences")
    try:
        return wire.read_connection_file(Path(path).expanduser())
    except wire.ProtocolError as error:
        message = error.message
        if error.code == wire.BAD_CONNECTION_FILE and "no connection file" in message:
            message = f"{NOT_RUNNING} ({message})"
        raise BackendError(error.code, message) from None


_session = BackendSession()


def session() -> BackendSession:
    return _session


def shutdown_session(at_exit: bool = False) -> None:
    """Stop this session's backend (add-on unregister; Blender exit with ``at_exit``)."""
    try:
        _session.stop(at_exit=at_exit)
    except Exception as error:  # noqa: BLE001 - never block Blender's exit
        print(f"Neural Avatar: stopping the backend failed: {error}", file=sys.stderr)


def _shutdown_at_exit() -> None:
    shutdown_session(at_exit=True)


def register() -> None:
    atexit.register(_shutdown_at_exit)


def unregister() -> None:
    atexit.unregister(_shutdown_at_exit)
    shutdown_session()
