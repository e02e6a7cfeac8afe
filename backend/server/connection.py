"""One client connection: authenticate, then read requests and answer them, one at a time.

Requests on one connection are answered in order; clients that need a render while a
stream is running open a second connection (each connection has its own thread). Framing
errors are answered with an error frame (id null) and the connection is closed, since the
byte stream can no longer be trusted; request-level errors get an error reply and the
connection stays open.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from blender_addon import wire
from backend.errors import AvatarError
from backend.server.auth import AUTH_TIMEOUT_SECONDS, check_hello
from backend.server.context import ServerContext
from backend.server.registry import HANDLERS, ClientGone, Request, Result
from backend.server.schema import validate_arrays, validate_params

log = logging.getLogger("backend.server")

MAX_ID_LENGTH = 64
MAX_ERROR_MESSAGE = 4000
LINGER_SECONDS = 0.5
LINGER_BYTES = 1 << 20


class _Deadline:
    """Ends the read side of a socket when time is up, unless :meth:`disarm` came first.

    A timeout per ``recv`` is not enough: a peer sending a byte now and then would never hit it."""

    def __init__(self, sock: socket.socket, seconds: float):
        self._sock = sock
        self._lock = threading.Lock()
        self._disarmed = False
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._disarmed:
                return
            self.expired = True
            try:
                self._sock.shutdown(socket.SHUT_RD)  # wakes the blocked recv with end-of-stream
            except OSError:
                pass

    def disarm(self) -> bool:
        """Stop the timer; True when it had already fired."""
        self._timer.cancel()
        with self._lock:
            self._disarmed = True
            return self.expired


class Connection:
    def __init__(
        self, sock: socket.socket, peer: str, server: ServerContext, token: str, admit: Callable[[], None] = lambda: None
    ):
        self.sock = sock
        self.peer = peer
        self.server = server
        self.token = token
        self.admit = admit  # raises wire.ProtocolError when the listener has no room for another client

    # -------------------------------------------------------------- sending

    def _send(self, header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> None:
        try:
            wire.send_message(self.sock, header, arrays)
        except OSError as error:
            raise ClientGone(f"{self.peer}: {error}") from None

    def _send_error(self, request_id: Any, code: str, message: str) -> None:
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 3] + "..."
        self._send(wire.error_header(request_id, code, message))

    # -------------------------------------------------------------- loop

    def run(self) -> None:
        try:
            if self._authenticate():
                self._serve_requests()
        except ClientGone as gone:
            log.info("client %s went away: %s", self.peer, gone)
        except Exception:  # noqa: BLE001 - say why in the log, not on stderr, and close cleanly
            log.exception("connection with %s failed", self.peer)
        finally:
            self._close()

    def _close(self) -> None:
        """FIN after our last frame, then discard what the peer still sends (bounded), so that
        closing with unread input does not turn into a reset that could destroy our error reply."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_SECONDS
            discarded = 0
            while discarded < LINGER_BYTES and time.monotonic() < end:
                self.sock.settimeout(max(end - time.monotonic(), 0.001))
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass
        finally:
            self.sock.close()

    def _authenticate(self) -> bool:
        self.sock.settimeout(AUTH_TIMEOUT_SECONDS)  # also per recv, where shutting down reads does not wake one
        deadline = _Deadline(self.sock, AUTH_TIMEOUT_SECONDS)
        try:
            first = wire.recv_message(self.sock, max_header=wire.AUTH_MAX_HEADER_BYTES, max_payload=0)
            if deadline.disarm():
                raise TimeoutError
            check_hello(first, self.token)
            self.admit()
        except (TimeoutError, wire.ProtocolError) as error:
            if deadline.disarm() or isinstance(error, TimeoutError):
                log.warning("rejected connection from %s: no hello within %.0f s", self.peer, AUTH_TIMEOUT_SECONDS)
                self._send_error(None, wire.AUTH_REQUIRED, f"no hello within {AUTH_TIMEOUT_SECONDS:.0f} s")
                return False
            log.warning("rejected connection from %s: %s", self.peer, error)
            if error.code != wire.CONNECTION_CLOSED:
                self._send_error(None, error.code, error.message)
            return False
        except OSError as error:
            deadline.disarm()
            log.info("connection from %s failed before hello: %s", self.peer, error)
            return False
        self.sock.settimeout(None)  # authenticated clients may idle; we block, never poll
        log.info("client %s authenticated (%s)", self.peer, (first.header.get("params") or {}).get("client", "?"))
        self._handle(first)
        return True

    def _serve_requests(self) -> None:
        while True:
            try:
                message = wire.recv_message(self.sock)
            except wire.ProtocolError as error:
                if error.code == wire.CONNECTION_CLOSED:
                    log.info("client %s: %s", self.peer, error.message)
                else:
                    log.warning("client %s sent a bad frame (%s); closing", self.peer, error)
                    self._send_error(None, error.code, error.message)
                return
            except OSError as error:
                log.info("client %s: connection lost (%s)", self.peer, error)
                return
            self._handle(message)

    # -------------------------------------------------------------- one request

    def _handle(self, message: wire.Message) -> None:
        header = message.header
        request_id = header.get("id")
        if not (type(request_id) is int or (type(request_id) is str and 0 < len(request_id) <= MAX_ID_LENGTH)):
            self._send_error(None, wire.BAD_REQUEST, f"'id' must be an int or a short string, got {str(request_id)[:40]!r}")
            return
        request_type = header.get("type")
        if header.get("kind") != "request" or type(request_type) is not str:
            self._send_error(request_id, wire.BAD_REQUEST, "expected a request with a string 'type'")
            return
        spec = HANDLERS.get(request_type)
        if spec is None:
            self._send_error(
                request_id, wire.UNKNOWN_REQUEST, f"unknown request type {request_type[:60]!r}; known: {', '.join(sorted(HANDLERS))}"
            )
            return
        try:
            request = Request(
                id=request_id,
                type=request_type,
                params=validate_params(spec.params, header.get("params", {})),
                arrays=validate_arrays(spec.arrays, message.arrays),
                server=self.server,
                _send_event=lambda event, data, arrays: self._send(wire.event_header(request_id, event, data), arrays),
            )
            outcome = spec.function(request)
            result = outcome if isinstance(outcome, Result) else Result(outcome or {})
            buffers = wire.encode(wire.reply_header(request_id, result.data), result.arrays)
        except ClientGone:
            raise
        except wire.ProtocolError as error:  # e.g. a reply over the frame limits
            log.warning("%s %r from %s: %s", request_type, request_id, self.peer, error)
            self._send_error(request_id, error.code, f"{request_type!r}: {error.message}")
            return
        except AvatarError as error:
            log.info("%s %r from %s failed: %s", request_type, request_id, self.peer, error)
            self._send_error(request_id, error.code, str(error))
            return
        except Exception as error:  # noqa: BLE001 - a bug in one request must not end the server
            log.error("internal error in %s %r from %s:\n%s", request_type, request_id, self.peer, traceback.format_exc())
            self._send_error(
                request_id,
                wire.INTERNAL,
                f"internal error in {request_type!r} ({type(error).__name__}); details in the server log {self.server.log_file}",
            )
            return
        try:
            wire.send_encoded(self.sock, buffers)
        except OSError as error:
            raise ClientGone(f"{self.peer}: {error}") from None
        for action in request._after_reply:
            action()
