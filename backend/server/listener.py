"""The listening socket: loopback-only binding, accepting, one thread per client, client caps.

Connections wait in a small "pending" pool until they authenticate; when it is full the
oldest pending connection is dropped for the new one, so peers that connect and never say
hello cannot keep clients with the token out. Authenticated connections have their own cap.
The accept loop blocks in ``select`` on the listening socket and a wake-up socket pair,
so an idle server uses no CPU and ``stop()`` (from a signal handler or a request) is instant.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading
from typing import Callable

from blender_addon import wire
from backend.errors import AvatarError

log = logging.getLogger("backend.server")

LOOPBACK = "127.0.0.1"
MAX_CLIENTS = 32  # authenticated connections
MAX_PENDING = 16  # connections still to say hello


class BindError(AvatarError):
    """The requested listening address is not allowed or not available."""

    code = "bind"


def check_bind_address(host: str, allow_remote: bool) -> str:
    """Accept loopback IP literals; anything else only with ``allow_remote`` (the explicit flag)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise BindError(f"bind address {host!r} is not an IP address (use 127.0.0.1, or an interface's IP)") from None
    if not address.is_loopback and not allow_remote:
        raise BindError(
            f"refusing to listen on {host}: the server binds to loopback only. Reach it from another machine "
            "through an SSH tunnel, or pass --allow-remote-bind ADDRESS if you really mean it"
        )
    return str(address)


OnConnection = Callable[[socket.socket, str, Callable[[], None]], None]


class Listener:
    """Accepts connections and runs ``on_connection(sock, peer, admit)`` in a thread per client.

    The connection calls ``admit()`` once the peer has authenticated; it raises
    ``wire.ProtocolError`` (busy) when the connection may not continue."""

    def __init__(
        self,
        host: str = LOOPBACK,
        port: int = 0,
        *,
        allow_remote: bool = False,
        max_clients: int = MAX_CLIENTS,
        max_pending: int = MAX_PENDING,
    ):
        host = check_bind_address(host, allow_remote)
        if not 0 <= port < 65536:
            raise BindError(f"port {port} is out of range 0..65535")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if hasattr(socket, "SO_EXCLUSIVEADDRUSE"):  # Windows: nobody else may bind our port
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
            else:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(64)
        except OSError as error:
            self._sock.close()
            raise BindError(f"cannot listen on {host}:{port}: {error}") from None
        self.host = host
        self.port = self._sock.getsockname()[1]
        self.max_clients = max_clients
        self.max_pending = max_pending
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_writer.setblocking(False)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[socket.socket, threading.Thread] = {}
        self._pending: dict[socket.socket, None] = {}  # insertion order = age
        self._authenticated: set[socket.socket] = set()

    @property
    def client_count(self) -> int:
        """Connections open now, authenticated or not."""
        with self._lock:
            return len(self._threads)

    def stop(self) -> None:
        """Make ``serve_forever`` return (safe from signal handlers and other threads)."""
        self._stopping.set()
        try:
            self._wake_writer.send(b"x")
        except OSError:  # already woken (buffer full) or closed
            pass

    def serve_forever(self, on_connection: OnConnection) -> None:
        """Accept until :meth:`stop`; then stop listening (clients stay connected until :meth:`close`)."""
        try:
            self._accept_until_stopped(on_connection)
        finally:
            self._sock.close()

    def _accept_until_stopped(self, on_connection: OnConnection) -> None:
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._sock, self._wake_reader], [], [])
            if self._wake_reader in readable or self._stopping.is_set():
                break
            try:
                client, address = self._sock.accept()
            except OSError as error:  # e.g. the peer reset before accept; keep serving
                log.warning("accept failed: %s", error)
                continue
            self._start_client(client, f"{address[0]}:{address[1]}", on_connection)

    def _start_client(self, client: socket.socket, peer: str, on_connection: OnConnection) -> None:
        wire.tune_socket(client)
        thread = threading.Thread(
            target=self._run_client, args=(client, peer, on_connection), name=f"client-{peer}", daemon=True
        )
        with self._lock:
            dropped = next(iter(self._pending)) if len(self._pending) >= self.max_pending else None
            if dropped is not None:
                del self._pending[dropped]
            self._pending[client] = None
            self._threads[client] = thread
        if dropped is not None:
            log.warning("%d connections waiting for hello: dropping the oldest for %s", self.max_pending, peer)
            try:
                dropped.shutdown(socket.SHUT_RDWR)  # its thread sees the end of the stream and exits
            except OSError:
                pass
        thread.start()

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            if client not in self._pending:
                raise wire.ProtocolError(wire.BUSY, "the connection was dropped while authenticating; connect again")
            del self._pending[client]
            if len(self._authenticated) >= self.max_clients:
                raise wire.ProtocolError(wire.BUSY, f"too many clients (at most {self.max_clients})")
            self._authenticated.add(client)

    def _run_client(self, client: socket.socket, peer: str, on_connection: OnConnection) -> None:
        try:
            on_connection(client, peer, lambda: self._admit(client))
        finally:
            with self._lock:
                self._threads.pop(client, None)
                self._pending.pop(client, None)
                self._authenticated.discard(client)

    def close(self, join_timeout: float = 2.0) -> None:
        """Close the listening socket and every client connection, then wait briefly for their threads."""
        self.stop()
        self._sock.close()
        with self._lock:
            clients = list(self._threads.items())
        for client, _ in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
            except OSError:
                pass
        for _, thread in clients:
            thread.join(join_timeout)
        self._wake_reader.close()
        self._wake_writer.close()
