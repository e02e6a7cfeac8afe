"""The add-on's connection to the backend: one ``BackendClient`` used by every operator.

Two modes, chosen by ``bpy.app.background``:

* **Background** (``blender -b``, the bpy module): timers never fire there, so every request
  runs synchronously on the calling thread; ``submit`` returns a finished ticket.
* **Interactive**: requests run on a worker thread that owns the socket and never touches
  ``bpy``. Finished tickets are handed back through a queue that a ``bpy.app.timers``
  callback drains on the main thread, where ``on_done`` callbacks run. Modal operators may
  also just poll ``ticket.done``.

Requests are answered in order. ``submit_latest`` is for streams where only the newest
request matters (live renders): a queued, not yet started request of the same kind is
replaced instead of piling up behind the one in flight.

Every wait is bounded (connect timeout, per-request timeout), and transport failures become a
:class:`BackendError` with a message a user can act on.
"""

from __future__ import annotations

import collections
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from . import wire

NOT_RUNNING = "backend not running — start it in the Avatar panel"
CONNECT_TIMEOUT = 5.0
DEFAULT_TIMEOUT = 60.0
# Longer waits for requests that may load or convert body models (or avatars) on first use.
REQUEST_TIMEOUTS = {
    "body_template": 300.0,
    "motion_read": 120.0,
    "motion_write": 120.0,
    "info": 120.0,
    "load_avatar": 300.0,
    "render": 300.0,
    "bake": 300.0,
}
# What a request does, for "backend stopped while ..." messages.
REQUEST_ACTIONS = {
    "body_template": "loading the body model",
    "motion_read": "reading the motion file",
    "motion_write": "writing the motion file",
    "info": "describing itself",
    "shutdown": "shutting down",
    "load_avatar": "loading the avatar",
    "unload_avatar": "unloading the avatar",
    "render": "rendering the avatar",
    "train_start": "starting the training job",
    "bake": "starting the bake job",
    "job_status": "reporting on a job",
    "job_cancel": "cancelling a job",
}
# How often finished requests are handed to the main thread while any are outstanding: this
# adds up to one interval to every live frame's latency, and costs next to nothing when idle.
DRAIN_INTERVAL = 0.01
CANCELLED = "cancelled"


class BackendError(Exception):
    """A request failed; ``str(error)`` is meant for the user, ``code`` for code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Reply:
    """A successful answer: the JSON result and the arrays (numpy views of the received bytes)."""

    result: dict[str, Any]
    arrays: dict[str, np.ndarray]


def as_numpy(array: wire.WireArray) -> np.ndarray:
    return np.frombuffer(array.data, dtype=np.dtype(array.dtype).newbyteorder("<")).reshape(array.shape)


def request_action(kind: str) -> str:
    return REQUEST_ACTIONS.get(kind, f"answering {kind!r}")


@dataclass(eq=False)
class Ticket:
    """One submitted request; ``done`` once it has an outcome (a reply, an error or cancellation)."""

    kind: str
    params: dict[str, Any]
    arrays: dict[str, Any] | None
    timeout: float
    on_done: Callable[["Ticket"], None] | None = None
    latest: bool = False
    latest_key: str = ""  # with ``latest``: only queued tickets of the same kind and key are replaced
    _finished: threading.Event = field(default_factory=threading.Event, repr=False)
    _reply: Reply | None = field(default=None, repr=False)
    _error: BackendError | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def cancelled(self) -> bool:
        return self._error is not None and self._error.code == CANCELLED

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (at most ``timeout`` s, default: the request's own limit plus connecting)."""
        return self._finished.wait(self.timeout + CONNECT_TIMEOUT + 5.0 if timeout is None else timeout)

    def result(self) -> Reply:
        """The reply; raises :class:`BackendError` if the request failed or is not finished."""
        if not self.done:
            raise BackendError(wire.TIMEOUT, f"the backend has not answered {self.kind!r} yet")
        if self._error is not None:
            raise self._error
        return self._reply  # type: ignore[return-value]

    def _finish(self, reply: Reply | None = None, error: BackendError | None = None) -> None:
        self._reply, self._error = reply, error
        self._finished.set()


class RequestQueue:
    """FIFO of tickets for the worker; ``put_latest`` replaces a queued ticket of the same kind."""

    def __init__(self) -> None:
        self._tickets: collections.deque[Ticket] = collections.deque()
        self._condition = threading.Condition()
        self._closed = False

    def put(self, ticket: Ticket) -> None:
        with self._condition:
            if self._closed:
                raise BackendError(wire.CONNECTION_CLOSED, "the backend connection is closed")
            if ticket.latest:
                replaced = [t for t in self._tickets if t.latest and (t.kind, t.latest_key) == (ticket.kind, ticket.latest_key)]
                for old in replaced:
                    self._tickets.remove(old)
                    old._finish(error=BackendError(CANCELLED, f"{old.kind!r} was superseded by a newer request"))
            self._tickets.append(ticket)
            self._condition.notify()

    def get(self) -> Ticket | None:
        """The next ticket, or None once closed."""
        with self._condition:
            while not self._tickets and not self._closed:
                self._condition.wait()
            return self._tickets.popleft() if self._tickets else None

    def close(self) -> list[Ticket]:
        """Stop accepting tickets; returns the ones never started."""
        with self._condition:
            self._closed = True
            pending = list(self._tickets)
            self._tickets.clear()
            self._condition.notify_all()
            return pending

    def __len__(self) -> int:
        with self._condition:
            return len(self._tickets)


class BackendClient:
    """Requests to one backend server (see the module docstring for the two modes).

    ``describe_loss`` (optional, called off the main thread) adds context when the connection
    drops, e.g. the backend process's exit code and the end of its log.
    """

    def __init__(
        self,
        info: wire.ConnectionInfo,
        *,
        background: bool | None = None,
        describe_loss: Callable[[], str] | None = None,
        client_name: str = "blender",
    ):
        if background is None:
            import bpy

            background = bool(bpy.app.background)
        self.info = info
        self.background = background
        self.server_info: dict[str, Any] = {}
        self.lost = ""  # why the last request lost the connection ("" once a connection works again)
        self._describe_loss = describe_loss
        self._client_name = client_name
        self._connection: wire.Client | None = None
        self._connection_lock = threading.Lock()  # guards _connection between worker and close()
        self._current: str | None = None
        self._closed = False
        self._queue = RequestQueue()
        self._finished: collections.deque[Ticket] = collections.deque()
        self._worker: threading.Thread | None = None
        self._timer_registered = False
        # One bound-method object: bpy.app.timers tells timers apart by object identity.
        self._drain_timer = self.drain

    # ---------------------------------------------------------------- public API

    @property
    def current_request(self) -> str | None:
        """The kind of the request being exchanged right now, if any."""
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        arrays: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_done: Callable[[Ticket], None] | None = None,
    ) -> Ticket:
        """Queue a request (background mode: run it now); ``on_done(ticket)`` runs on the main thread."""
        return self._submit(Ticket(kind, dict(params or {}), dict(arrays) if arrays else None, self._timeout(kind, timeout), on_done))

    def submit_latest(
        self,
        kind: str,
        params: Mapping[str, Any] | None = None,
        arrays: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_done: Callable[[Ticket], None] | None = None,
        key: str = "",
    ) -> Ticket:
        """Like :meth:`submit`, but a queued request of the same kind (and ``key``, e.g. one per
        avatar) is cancelled in favour of this one. Cancelled tickets never call ``on_done``."""
        ticket = Ticket(
            kind, dict(params or {}), dict(arrays) if arrays else None, self._timeout(kind, timeout), on_done, latest=True, latest_key=key
        )
        return self._submit(ticket)

    def call(
        self, kind: str, params: Mapping[str, Any] | None = None, arrays: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Reply:
        """Submit and wait for the reply (blocks the caller; meant for short requests and background mode)."""
        ticket = self.submit(kind, params, arrays, timeout=timeout)
        if not ticket.wait():
            raise BackendError(wire.TIMEOUT, f"the backend did not answer {kind!r} within {ticket.timeout:g} s")
        return ticket.result()

    def drain(self) -> float | None:
        """Deliver finished tickets' callbacks (main thread). The timer function: returns the next
        interval while requests are outstanding, None when idle (the timer then stops)."""
        while self._finished:
            ticket = self._finished.popleft()
            if ticket.on_done is not None and not ticket.cancelled:
                try:
                    ticket.on_done(ticket)
                except Exception:  # noqa: BLE001 - a failing callback must not stop the timer that serves the others
                    traceback.print_exc()
        busy = len(self._queue) or self._current is not None or self._finished
        if busy and not self._closed:
            return DRAIN_INTERVAL
        self._timer_registered = False
        return None

    def close(self, unregister_timer: bool = True) -> None:
        """Cancel queued requests, drop the connection and stop the worker (waits up to a few seconds).

        ``unregister_timer=False`` at Blender exit, when the timer system may already be gone.
        """
        if self._closed:
            return
        self._closed = True
        for ticket in self._queue.close():
            ticket._finish(error=BackendError(CANCELLED, "the backend connection was closed"))
        self._disconnect()  # also wakes a worker blocked in recv
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(CONNECT_TIMEOUT + 1.0)
        if self._timer_registered and unregister_timer:
            import bpy

            if bpy.app.timers.is_registered(self._drain_timer):
                bpy.app.timers.unregister(self._drain_timer)
            self._timer_registered = False

    # ---------------------------------------------------------------- internals

    @staticmethod
    def _timeout(kind: str, timeout: float | None) -> float:
        return float(timeout if timeout is not None else REQUEST_TIMEOUTS.get(kind, DEFAULT_TIMEOUT))

    def _submit(self, ticket: Ticket) -> Ticket:
        if self._closed:
            ticket._finish(error=BackendError(wire.CONNECTION_CLOSED, NOT_RUNNING))
            return ticket
        if self.background:
            self._process(ticket)
            self.drain()
            return ticket
        self._ensure_worker()
        self._queue.put(ticket)
        self._ensure_timer()
        return ticket

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="neural-avatar-backend-client", daemon=True)
            self._worker.start()

    def _ensure_timer(self) -> None:
        if not self._timer_registered:
            import bpy

            bpy.app.timers.register(self._drain_timer, first_interval=DRAIN_INTERVAL, persistent=True)
            self._timer_registered = True

    def _work(self) -> None:
        """Worker thread: run tickets one by one. Never touches bpy."""
        while True:
            ticket = self._queue.get()
            if ticket is None:
                return
            self._process(ticket)

    def _process(self, ticket: Ticket) -> None:
        # Handed over before ``current_request`` clears, so ``drain`` never sees "idle" in between.
        self._current = ticket.kind
        try:
            self._run(ticket)
        finally:
            self._finished.append(ticket)
            self._current = None

    def _connect(self) -> wire.Client:
        with self._connection_lock:
            if self._connection is not None and not self._connection.closed:
                return self._connection
        try:
            connection = wire.Client(
                self.info.host, self.info.port, self.info.token, connect_timeout=CONNECT_TIMEOUT, client_name=self._client_name
            )
        except wire.RemoteError as error:
            raise BackendError(error.code, f"the backend refused the connection: {error.message}") from None
        except wire.ProtocolError as error:
            where = f"{self.info.host}:{self.info.port}"
            if error.code == wire.VERSION_MISMATCH:
                raise BackendError(error.code, error.message) from None
            if error.code == wire.TIMEOUT:
                raise BackendError(
                    error.code, f"the backend at {where} accepted the connection but did not answer within {CONNECT_TIMEOUT:g} s (busy or frozen?)"
                ) from None
            raise BackendError(wire.CONNECTION_CLOSED, f"{NOT_RUNNING} ({where}: {error.message})") from None
        with self._connection_lock:
            if self._closed:
                connection.close()
                raise BackendError(wire.CONNECTION_CLOSED, "the backend connection was closed")
            self._connection = connection
            self.server_info = dict(connection.server_info.result)
            self.lost = ""
        return connection

    def _disconnect(self) -> None:
        with self._connection_lock:
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _run(self, ticket: Ticket) -> None:
        """Exchange one request; every outcome is recorded on the ticket (nothing raises)."""
        try:
            connection = self._connect()
            message = connection.request(ticket.kind, ticket.params, ticket.arrays, timeout=ticket.timeout)
            reply = Reply(dict(message.result), {name: as_numpy(array) for name, array in message.arrays.items()})
            ticket._finish(reply=reply)
        except BackendError as error:
            ticket._finish(error=error)
        except wire.RemoteError as error:
            ticket._finish(error=BackendError(error.code, error.message))
        except wire.ProtocolError as error:
            ticket._finish(error=self._transport_error(ticket, error))
        except Exception as error:  # noqa: BLE001 - the worker must survive anything and report it
            ticket._finish(error=BackendError(wire.INTERNAL, f"{ticket.kind}: {type(error).__name__}: {error}"))

    def _transport_error(self, ticket: Ticket, error: wire.ProtocolError) -> BackendError:
        self._disconnect()  # the frame stream can no longer be trusted
        if self._closed:
            return BackendError(CANCELLED, "the backend connection was closed")
        if error.code == wire.TIMEOUT:
            message = f"the backend did not answer within {ticket.timeout:g} s while {request_action(ticket.kind)}"
        elif error.code in (wire.CONNECTION_CLOSED, wire.BAD_FRAME):
            message = f"backend stopped while {request_action(ticket.kind)}"
        else:
            message = f"lost the backend while {request_action(ticket.kind)}: {error.message}"
        if self._describe_loss is not None:
            detail = self._describe_loss()
            if detail:
                message += f" ({detail})"
        self.lost = message
        return BackendError(error.code, message)
