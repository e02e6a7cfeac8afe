"""The server process: ``python -m backend serve`` → :func:`serve`.

Start-up order: check the bind address (before anything slow), state folder and log,
refuse if another live server owns the state folder, choose the device, bind, load the
request handlers, then write the connection file (port, token, pid, protocol) with
owner-only permissions and print where it listens. SIGTERM/SIGINT or a ``shutdown`` request
stop it cleanly: the connection file is removed, jobs are cancelled (they checkpoint),
connections closed and GPU memory released.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from blender_addon import wire
from backend.errors import AvatarError
from backend.paths import cache_dir
from backend.server.auth import new_token
from backend.server.connection import Connection
from backend.server.context import ServerContext
from backend.server.device import release_device, select_device
from backend.server.jobs import JobManager
from backend.server.listener import LOOPBACK, BindError, Listener, check_bind_address
from backend.server.registry import load_handler_modules

log = logging.getLogger("backend.server")

CONNECTION_FILE = "connection.json"
LOG_FILE = "server.log"
JOBS_DIR = "jobs"


def default_state_dir() -> Path:
    return cache_dir() / "server"


def _setup_logging(log_file: Path) -> logging.Handler:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))  # owner-only from the start
    handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=5 << 20, backupCount=2, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _refuse_if_running(connection_file: Path) -> None:
    """Another live server owns this state folder: say so instead of stealing its connection file."""
    try:
        info = wire.read_connection_file(connection_file)
    except wire.ProtocolError:
        return  # none, unreadable or from another protocol version: replaced below
    try:
        with socket.create_connection((info.host, info.port), timeout=0.5):
            pass
    except OSError:
        log.info("replacing stale connection file %s (pid %d no longer listening)", connection_file, info.pid)
        return
    raise BindError(
        f"another server (pid {info.pid}) is serving state folder {connection_file.parent} on {info.host}:{info.port}; "
        "stop it (request 'shutdown') or start this one with another --state-dir"
    )


def _remove_connection_file(connection_file: Path, token: str) -> None:
    try:
        if wire.read_connection_file(connection_file).token == token:  # never remove a successor's file
            connection_file.unlink()
    except (wire.ProtocolError, OSError):
        pass


def _install_signal_handlers(stop: Callable[[], None]) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, lambda signum, frame: stop())
    return previous


def _stop_when_stdin_closes(stop: Callable[[], None]) -> None:
    """The parent (Blender) holds our stdin open; its end-of-file means the parent is gone, even after a crash."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        log.info("parent process gone (stdin closed): shutting down")
        stop()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(
    port: int = 0,
    device: str = "auto",
    state_dir: Path | None = None,
    allow_remote_bind: str | None = None,
    log_file: Path | None = None,
    exit_with_parent: bool = False,
) -> int:
    """Run the server until shutdown; returns the exit code. Errors raise ``AvatarError`` subclasses."""
    host = check_bind_address(allow_remote_bind, allow_remote=True) if allow_remote_bind else LOOPBACK
    state_dir = Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()
    log_file = Path(log_file).expanduser().resolve() if log_file else state_dir / LOG_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise BindError(f"cannot use state folder {state_dir}: {error.strerror or error}") from None
    try:
        log_handler = _setup_logging(log_file)
    except OSError as error:
        raise BindError(f"cannot write the log file {log_file}: {error.strerror or error}") from None
    connection_file = state_dir / CONNECTION_FILE
    try:
        _refuse_if_running(connection_file)
        chosen_device = select_device(device)
        listener = Listener(host, port, allow_remote=allow_remote_bind is not None)
    except AvatarError as error:
        log.error("server failed to start: %s", error)
        logging.getLogger().removeHandler(log_handler)
        raise
    except Exception:
        log.exception("server failed to start")
        logging.getLogger().removeHandler(log_handler)
        raise
    if allow_remote_bind:
        warning = f"WARNING: listening on {host}, reachable from other machines; anyone with the token controls this backend"
        log.warning(warning)
        print(warning, file=sys.stderr, flush=True)
    token = new_token()
    jobs = JobManager(state_dir / JOBS_DIR)
    context = ServerContext(
        device=chosen_device, state_dir=state_dir, log_file=log_file, jobs=jobs, request_shutdown=listener.stop
    )
    previous_handlers: dict[int, Any] = {}
    try:
        load_handler_modules()
        wire.write_connection_file(
            connection_file, wire.ConnectionInfo(host, listener.port, token, os.getpid(), log_file=str(log_file))
        )
        previous_handlers = _install_signal_handlers(listener.stop)
        if exit_with_parent:
            _stop_when_stdin_closes(listener.stop)
        log.info("listening on %s:%d (device %s, pid %d)", host, listener.port, chosen_device, os.getpid())
        print(
            f"Neural Avatar backend listening on {host}:{listener.port} (device {chosen_device}, pid {os.getpid()})\n"
            f"  connection file: {connection_file}\n  log: {log_file}",
            flush=True,
        )
        listener.serve_forever(lambda sock, peer, admit: Connection(sock, peer, context, token, admit).run())
    finally:
        log.info("shutting down")
        _remove_connection_file(connection_file, token)
        jobs.shutdown()
        listener.close()
        release_device(chosen_device)
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        log.info("stopped")
        logging.getLogger().removeHandler(log_handler)
        log_handler.close()
    return 0
