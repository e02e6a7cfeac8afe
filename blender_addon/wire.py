"""The wire protocol between the Blender add-on and the backend server (stdlib only).

Both sides import this one module: the add-on as part of its package, the backend as
``from blender_addon import wire``. It must never import numpy, bpy or torch.

Frame layout (all integers little-endian)::

    prefix   20 bytes  magic b"NAVW" | version u16 | flags u16 (0) | header_len u32 | payload_len u64
    header   header_len bytes of UTF-8 JSON (an object; NaN/Infinity are rejected)
    payload  payload_len bytes: the arrays listed in header["arrays"], each at its offset

The prefix layout is frozen across protocol versions so that a peer speaking another
version is recognised and told so, instead of failing with a confusing parse error.

Header kinds: ``request`` {id, type, params}, ``reply`` {id, result}, ``event`` {id, event,
data} (streamed before the reply of a long request) and ``error`` {id, code, message}.
Arrays travel as raw little-endian bytes; each header entry gives name, dtype, shape,
offset and nbytes. Receivers get :class:`WireArray` objects whose ``data`` is a zero-copy
memoryview: ``numpy.frombuffer(a.data, a.dtype).reshape(a.shape)``. Nothing is ever pickled.

A connection's first message must be ``hello`` with the token from the server's connection
file (see :func:`read_connection_file`); anything else is answered with an error and the
connection closed. Framing errors also close the connection (error frames with id null).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

MAGIC = b"NAVW"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct("<4sHHIQ")

MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 256 << 20
# Before authentication only a small header and no payload are accepted, so an
# unauthenticated peer can never make the server allocate more than this.
AUTH_MAX_HEADER_BYTES = 16 << 10
MAX_ARRAYS = 64
MAX_ARRAY_NAME = 64
MAX_DIMS = 8
ARRAY_ALIGNMENT = 64

DTYPE_ITEMSIZE = {"uint8": 1, "float16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8}

# Error codes shared by both sides (handlers may add their own, e.g. backend.errors codes).
BAD_FRAME = "bad_frame"
BAD_HEADER = "bad_header"
TOO_LARGE = "too_large"
VERSION_MISMATCH = "version_mismatch"
AUTH_REQUIRED = "auth_required"
AUTH_FAILED = "auth_failed"
BAD_REQUEST = "bad_request"
UNKNOWN_REQUEST = "unknown_request"
NOT_FOUND = "not_found"
BUSY = "busy"
INTERNAL = "internal"
CONNECTION_CLOSED = "connection_closed"
TIMEOUT = "timeout"
BAD_CONNECTION_FILE = "bad_connection_file"

_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)  # EPIPE instead of SIGPIPE inside Blender
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")  # not on Windows
_IOV_MAX = 512

if sys.byteorder != "little":  # arrays are sent as native bytes and declared little-endian
    raise ImportError("the Neural Avatar wire protocol needs a little-endian machine")


class ProtocolError(Exception):
    """A framing, transport or protocol problem; ``code`` is one of the constants above."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RemoteError(ProtocolError):
    """The server answered a request with a structured error reply."""


@dataclass(frozen=True)
class WireArray:
    """A received (or to-be-sent) array: dtype name, shape and the raw little-endian bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


@dataclass
class Message:
    """One decoded frame: the JSON header and the arrays of its payload, by name."""

    header: dict[str, Any]
    arrays: dict[str, WireArray]

    @property
    def kind(self) -> str | None:
        return self.header.get("kind")

    @property
    def id(self) -> Any:
        return self.header.get("id")

    @property
    def result(self) -> dict[str, Any]:
        return self.header.get("result") or {}

    @property
    def data(self) -> dict[str, Any]:
        return self.header.get("data") or {}


# ---------------------------------------------------------------- headers


def request_header(request_id: int, request_type: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "request", "id": request_id, "type": request_type, "params": dict(params or {})}


def reply_header(request_id: Any, result: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "reply", "id": request_id, "result": dict(result or {})}


def event_header(request_id: Any, event: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "event", "id": request_id, "event": event, "data": dict(data or {})}


def error_header(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"kind": "error", "id": request_id, "code": code, "message": message}


def _json_default(value: Any) -> Any:
    # numpy scalars (``.item()``) and paths appear in results often enough to accept them.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable; send arrays as arrays")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a header (JSON has no NaN/Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # e.g. 1e999 parses as infinity
        raise ValueError(f"number {text[:40]} overflows to infinity")
    return value


def dump_header(header: Mapping[str, Any]) -> bytes:
    """JSON-encode a header; NaN and infinities are refused (``ValueError``).

    ASCII output (non-ASCII as escapes) encodes every Python string, lone surrogates from a
    peer's escapes included, so an error reply quoting bad input can always be sent."""
    return json.dumps(header, allow_nan=False, ensure_ascii=True, separators=(",", ":"), default=_json_default).encode(
        "ascii"
    )


def load_header(raw: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Parse a header: strict UTF-8, a JSON object, no NaN/Infinity anywhere."""
    try:
        text = bytes(raw).decode("utf-8")
        header = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError(BAD_HEADER, f"header is not valid UTF-8 JSON: {str(error)[:200]}") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_HEADER, f"header must be a JSON object, got {type(header).__name__}")
    return header


# ---------------------------------------------------------------- arrays


def _dtype_of_buffer(name: str, view: memoryview) -> str:
    fmt = view.format
    if fmt[:1] in "@=<":
        fmt = fmt[1:]
    kinds = {"B": "uint8", "e": "float16", "f": "float32", "d": "float64"}
    if fmt in kinds and view.itemsize == DTYPE_ITEMSIZE[kinds[fmt]]:
        return kinds[fmt]
    if fmt in ("i", "l", "q") and view.itemsize in (4, 8):  # int32 is 'l' on Windows, int64 'l' on Linux
        return "int32" if view.itemsize == 4 else "int64"
    raise ProtocolError(
        BAD_REQUEST,
        f"array {name!r}: format {view.format!r} ({view.itemsize} bytes) is not sendable; "
        f"use one of {', '.join(DTYPE_ITEMSIZE)} in native little-endian order",
    )


def pack_array(name: str, value: Any) -> WireArray:
    """Describe a C-contiguous buffer-protocol object (numpy array, bytes, WireArray) for sending."""
    if isinstance(value, WireArray):
        if value.dtype not in DTYPE_ITEMSIZE or value.nbytes != math.prod(value.shape) * DTYPE_ITEMSIZE[value.dtype]:
            raise ProtocolError(BAD_REQUEST, f"array {name!r}: {value.nbytes} bytes do not hold {value.dtype} {value.shape}")
        return value
    try:
        view = memoryview(value)
    except TypeError:
        raise ProtocolError(BAD_REQUEST, f"array {name!r}: {type(value).__name__} does not support the buffer protocol") from None
    if not view.c_contiguous:
        raise ProtocolError(BAD_REQUEST, f"array {name!r} is not C-contiguous (use numpy.ascontiguousarray)")
    dtype = _dtype_of_buffer(name, view)
    shape = tuple(view.shape or ())
    flat = view.cast("B") if view.nbytes else memoryview(b"")
    return WireArray(dtype, shape, flat)


def _array_table(arrays: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[memoryview | bytes], int]:
    if len(arrays) > MAX_ARRAYS:
        raise ProtocolError(TOO_LARGE, f"{len(arrays)} arrays in one message (at most {MAX_ARRAYS})")
    table: list[dict[str, Any]] = []
    chunks: list[memoryview | bytes] = []
    offset = 0
    for name, value in arrays.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_ARRAY_NAME:
            raise ProtocolError(BAD_REQUEST, f"array name {name!r} must be a string of 1-{MAX_ARRAY_NAME} characters")
        packed = pack_array(name, value)
        padding = -offset % ARRAY_ALIGNMENT
        if padding:
            chunks.append(bytes(padding))
            offset += padding
        table.append(
            {"name": name, "dtype": packed.dtype, "shape": list(packed.shape), "offset": offset, "nbytes": packed.nbytes}
        )
        if packed.nbytes:
            chunks.append(packed.data)
        offset += packed.nbytes
    return table, chunks, offset


def _unpack_arrays(header: dict[str, Any], payload: memoryview) -> dict[str, WireArray]:
    table = header.get("arrays", [])
    if not isinstance(table, list) or len(table) > MAX_ARRAYS:
        raise ProtocolError(BAD_HEADER, f"'arrays' must be a list of at most {MAX_ARRAYS} entries")
    arrays: dict[str, WireArray] = {}
    for index, entry in enumerate(table):
        where = f"arrays[{index}]"
        if not isinstance(entry, dict):
            raise ProtocolError(BAD_HEADER, f"{where} must be an object")
        name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
        offset, nbytes = entry.get("offset"), entry.get("nbytes")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_ARRAY_NAME or name in arrays:
            raise ProtocolError(BAD_HEADER, f"{where}.name must be a unique string of 1-{MAX_ARRAY_NAME} characters")
        if dtype not in DTYPE_ITEMSIZE:
            raise ProtocolError(BAD_HEADER, f"{where} ({name}): dtype {dtype!r} is not one of {', '.join(DTYPE_ITEMSIZE)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(type(n) is int and 0 <= n <= MAX_PAYLOAD_BYTES for n in shape)
        ):
            # Bounded sizes: an empty array must not claim a dimension no allocator can reshape to.
            raise ProtocolError(
                BAD_HEADER, f"{where} ({name}): shape must be a list of at most {MAX_DIMS} ints in 0..{MAX_PAYLOAD_BYTES}"
            )
        if type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0:
            raise ProtocolError(BAD_HEADER, f"{where} ({name}): offset and nbytes must be non-negative ints")
        expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
        if nbytes != expected:
            raise ProtocolError(BAD_HEADER, f"{where} ({name}): nbytes {nbytes} does not match shape {shape} of {dtype}")
        if offset + nbytes > payload.nbytes:
            raise ProtocolError(BAD_HEADER, f"{where} ({name}): bytes {offset}..{offset + nbytes} exceed the payload ({payload.nbytes})")
        arrays[name] = WireArray(dtype, tuple(shape), payload[offset : offset + nbytes])
    return arrays


# ---------------------------------------------------------------- frames


def encode(header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> list[memoryview | bytes]:
    """The buffers of one frame (prefix+header first, then the array bytes, not copied)."""
    header = dict(header)
    chunks: list[memoryview | bytes] = []
    payload_len = 0
    if arrays:
        table, chunks, payload_len = _array_table(arrays)
        header["arrays"] = table
    else:
        header.pop("arrays", None)
    try:
        raw = dump_header(header)
    except (TypeError, ValueError) as error:
        raise ProtocolError(BAD_REQUEST, f"header cannot be encoded: {error}") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(TOO_LARGE, f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}; send bulk data as arrays")
    if payload_len > MAX_PAYLOAD_BYTES:
        raise ProtocolError(TOO_LARGE, f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return [PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, len(raw), payload_len) + raw, *chunks]


def send_encoded(sock: socket.socket, buffers: list[memoryview | bytes]) -> None:
    """Send the buffers of :func:`encode` (scatter-gather where the OS has ``sendmsg``)."""
    if not _HAS_SENDMSG:
        for buffer in buffers:
            sock.sendall(buffer)
        return
    pending = [memoryview(b).cast("B") for b in buffers if len(b)]
    while pending:
        sent = sock.sendmsg(pending[:_IOV_MAX], [], _SEND_FLAGS)
        while sent and pending:
            if sent >= pending[0].nbytes:
                sent -= pending[0].nbytes
                pending.pop(0)
            else:
                pending[0] = pending[0][sent:]
                sent = 0


def send_message(sock: socket.socket, header: Mapping[str, Any], arrays: Mapping[str, Any] | None = None) -> None:
    """Send one frame; array buffers go to the kernel without being concatenated."""
    send_encoded(sock, encode(header, arrays))


def _recv_into(sock: socket.socket, view: memoryview, what: str) -> None:
    received = 0
    total = view.nbytes
    while received < total:
        count = sock.recv_into(view[received:], total - received)
        if count == 0:
            if what == "prefix" and received == 0:
                raise ProtocolError(CONNECTION_CLOSED, "the peer closed the connection")
            raise ProtocolError(CONNECTION_CLOSED, f"the peer closed the connection in the middle of a frame ({what})")
        received += count


def read_prefix(raw: bytes | bytearray | memoryview, max_header: int, max_payload: int) -> tuple[int, int]:
    """Validate a 20-byte prefix against the limits; return (header_len, payload_len)."""
    magic, version, flags, header_len, payload_len = PREFIX.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(BAD_FRAME, f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a Neural Avatar peer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            VERSION_MISMATCH,
            f"peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}; "
            "update the Blender add-on and the backend to the same release",
        )
    if flags:
        raise ProtocolError(BAD_FRAME, f"unknown frame flags {flags:#x}")
    if header_len == 0 or header_len > max_header:
        raise ProtocolError(TOO_LARGE if header_len else BAD_FRAME, f"header length {header_len} not in 1..{max_header}")
    if payload_len > max_payload:
        raise ProtocolError(TOO_LARGE, f"payload length {payload_len} exceeds the limit of {max_payload} bytes")
    return header_len, payload_len


def recv_message(
    sock: socket.socket, *, max_header: int = MAX_HEADER_BYTES, max_payload: int = MAX_PAYLOAD_BYTES
) -> Message:
    """Read exactly one frame. Limits are checked before anything is allocated."""
    prefix = bytearray(PREFIX.size)
    _recv_into(sock, memoryview(prefix), "prefix")
    header_len, payload_len = read_prefix(prefix, max_header, max_payload)
    raw_header = bytearray(header_len)
    _recv_into(sock, memoryview(raw_header), "header")
    payload = bytearray(payload_len)
    if payload_len:
        _recv_into(sock, memoryview(payload), "payload")
    header = load_header(raw_header)
    return Message(header, _unpack_arrays(header, memoryview(payload)))


def tune_socket(sock: socket.socket) -> None:
    """Low latency for small frames; no SIGPIPE on macOS."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "SO_NOSIGPIPE"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_NOSIGPIPE, 1)


# ---------------------------------------------------------------- connection file


@dataclass(frozen=True)
class ConnectionInfo:
    """What a client needs to reach a running server (the connection file's content)."""

    host: str
    port: int
    token: str
    pid: int
    protocol: int = PROTOCOL_VERSION
    log_file: str = ""


def write_connection_file(path: str | os.PathLike[str], info: ConnectionInfo) -> None:
    """Write atomically with owner-only permissions (0o600): readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(info.__dict__, indent=2) + "\n"
    fd, temp = tempfile.mkstemp(prefix=".connection-", suffix=".tmp", dir=path.parent)  # created 0o600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_connection_file(path: str | os.PathLike[str]) -> ConnectionInfo:
    """Read and check a connection file; errors name the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant, parse_float=_finite_float)
    except FileNotFoundError:
        raise ProtocolError(BAD_CONNECTION_FILE, f"{path}: no connection file (is the backend server running?)") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ProtocolError(BAD_CONNECTION_FILE, f"{path}: unreadable connection file ({error})") from None
    if not isinstance(data, dict):
        raise ProtocolError(BAD_CONNECTION_FILE, f"{path}: expected a JSON object")
    types = {"host": str, "port": int, "token": str, "pid": int, "protocol": int, "log_file": str}
    for key in ("host", "port", "token", "pid", "protocol"):
        if key not in data:
            raise ProtocolError(BAD_CONNECTION_FILE, f"{path}: missing {key!r}")
    for key, value in data.items():
        if key in types and type(value) is not types[key]:
            raise ProtocolError(BAD_CONNECTION_FILE, f"{path}: {key!r} must be {types[key].__name__}, got {value!r}")
    if not 0 < data["port"] < 65536:
        raise ProtocolError(BAD_CONNECTION_FILE, f"{path}: port {data['port']} out of range")
    if data["protocol"] != PROTOCOL_VERSION:
        raise ProtocolError(
            VERSION_MISMATCH,
            f"{path}: the server speaks protocol version {data['protocol']}, this side speaks {PROTOCOL_VERSION}; "
            "update the Blender add-on and the backend to the same release",
        )
    return ConnectionInfo(**{key: data[key] for key in types if key in data})


# ---------------------------------------------------------------- client


class _Default:
    """Marker type: "use the client's own timeout"."""


DEFAULT = _Default()


class Client:
    """A blocking connection to the server: connect, authenticate, then one request at a time.

    Not thread-safe: use one Client per thread (the add-on runs it in a worker thread, and
    opens a second one for control requests while a stream is running). Any transport
    error or timeout closes the client, because the frame stream can no longer be trusted.
    """

    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        *,
        connect_timeout: float = 5.0,
        timeout: float | None = None,
        client_name: str = "",
    ):
        self.timeout = timeout
        self._next_id = 1
        try:
            self._sock: socket.socket | None = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as error:
            raise ProtocolError(CONNECTION_CLOSED, f"cannot reach the server at {host}:{port}: {error}") from None
        tune_socket(self._sock)
        try:
            self.server_info = self.request("hello", {"token": token, "client": client_name or "wire.Client"}, timeout=connect_timeout)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_connection_file(cls, path: str | os.PathLike[str], **options: Any) -> "Client":
        info = read_connection_file(path)
        return cls(info.host, info.port, info.token, **options)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise ProtocolError(CONNECTION_CLOSED, "the client is closed")
        return self._sock

    def _send_request(self, request_type: str, params: Mapping[str, Any] | None, arrays: Mapping[str, Any] | None) -> int:
        request_id = self._next_id
        self._next_id += 1
        buffers = encode(request_header(request_id, request_type, params), arrays)  # errors here leave the link intact
        try:
            send_encoded(self._socket(), buffers)
        except OSError as error:
            self.close()
            raise ProtocolError(CONNECTION_CLOSED, f"sending {request_type!r} failed: {error}") from None
        return request_id

    def _receive(self, request_id: int, timeout: float | None) -> Message:
        sock = self._socket()
        sock.settimeout(timeout)
        try:
            message = recv_message(sock)
        except ProtocolError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise ProtocolError(TIMEOUT, f"no answer within {timeout} s; connection closed") from None
        except OSError as error:
            self.close()
            raise ProtocolError(CONNECTION_CLOSED, f"receiving failed: {error}") from None
        if message.kind == "error" and message.id is None:  # not attributable to a request: the server hangs up
            self.close()
            raise RemoteError(str(message.header.get("code", INTERNAL)), str(message.header.get("message", "")))
        if message.id != request_id or message.kind not in ("reply", "event", "error"):
            self.close()
            raise ProtocolError(BAD_FRAME, f"unexpected {message.kind!r} for id {message.id!r} (waiting for {request_id})")
        return message

    def request(
        self,
        request_type: str,
        params: Mapping[str, Any] | None = None,
        arrays: Mapping[str, Any] | None = None,
        timeout: float | None | _Default = DEFAULT,
    ) -> Message:
        """Send a request and return its reply; raises :class:`RemoteError` for error replies.

        Events sent before the reply (by streaming requests) are skipped; use :meth:`stream`
        to see them. ``timeout`` (seconds, None = wait forever) defaults to ``self.timeout``.
        """
        for message in self.stream(request_type, params, arrays, timeout):
            if message.kind == "reply":
                return message
        raise ProtocolError(BAD_FRAME, "stream ended without a reply")  # unreachable: stream ends on a reply

    def stream(
        self,
        request_type: str,
        params: Mapping[str, Any] | None = None,
        arrays: Mapping[str, Any] | None = None,
        timeout: float | None | _Default = DEFAULT,
    ) -> Iterator[Message]:
        """Send a request and yield its events, then the final reply (``kind == "reply"``).

        ``timeout`` applies to each wait. Abandoning the iterator before the reply closes the
        connection (the server notices and stops streaming).
        """
        wait = self.timeout if isinstance(timeout, _Default) else timeout
        request_id = self._send_request(request_type, params, arrays)  # sent now, not on first next()
        return self._messages(request_id, wait)

    def _messages(self, request_id: int, wait: float | None) -> Iterator[Message]:
        finished = False
        try:
            while True:
                message = self._receive(request_id, wait)
                if message.kind == "error":
                    finished = True  # the exchange is complete; the connection stays usable
                    raise RemoteError(str(message.header.get("code", INTERNAL)), str(message.header.get("message", "")))
                if message.kind == "reply":
                    finished = True
                    yield message
                    return
                yield message
        finally:
            if not finished:
                self.close()


def wait_for_connection_file(path: str | os.PathLike[str], timeout: float, newer_than: float = 0.0) -> ConnectionInfo:
    """Wait until a server (started by the caller) has written its connection file."""
    path = Path(path)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            if path.stat().st_mtime >= newer_than:
                return read_connection_file(path)
        except FileNotFoundError:
            pass
        except ProtocolError as error:
            if error.code == VERSION_MISMATCH:
                raise
        if time.monotonic() >= deadline:
            raise ProtocolError(TIMEOUT, f"{path}: no connection file after {timeout} s (see the server log)")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
