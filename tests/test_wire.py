"""The wire protocol on its own: frames, arrays, limits, headers and the connection file.

Uses socket pairs, no server (the server and the Client are tested in test_server.py).
"""

from __future__ import annotations

import ast
import json
import os
import socket
import stat
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from blender_addon import wire


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def to_numpy(array: wire.WireArray) -> np.ndarray:
    return np.frombuffer(array.data, dtype=array.dtype).reshape(array.shape)


def raw_frame(header: bytes, payload: bytes = b"", version: int = wire.PROTOCOL_VERSION, magic: bytes = wire.MAGIC) -> bytes:
    return wire.PREFIX.pack(magic, version, 0, len(header), len(payload)) + header + payload


def test_wire_module_imports_only_the_standard_library():
    tree = ast.parse(Path(wire.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    assert not imported & {"pickle", "marshal", "shelve"}


@pytest.mark.parametrize("dtype", ["uint8", "float16", "float32", "float64", "int32", "int64"])
def test_every_allowed_dtype_round_trips(pair, dtype):
    a, b = pair
    rng = np.random.default_rng(0)
    value = (rng.standard_normal((3, 5, 4)) * 100).astype(dtype)
    wire.send_message(a, wire.request_header(1, "x", {"k": [1, 2.5, "s", None, True]}), {"value": value})
    message = wire.recv_message(b)
    assert message.header["params"] == {"k": [1, 2.5, "s", None, True]}
    received = message.arrays["value"]
    assert (received.dtype, received.shape) == (dtype, (3, 5, 4))
    np.testing.assert_array_equal(to_numpy(received), value)


def test_several_arrays_are_aligned_and_independent(pair):
    a, b = pair
    arrays = {
        "small": np.arange(3, dtype=np.uint8),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "image": np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4),
        "raw": b"hello",
        "scalar": np.array(7, dtype=np.int64),
    }
    wire.send_message(a, wire.event_header(9, "frame", {"n": 1}), arrays)
    message = wire.recv_message(b)
    table = {entry["name"]: entry for entry in message.header["arrays"]}
    assert all(entry["offset"] % wire.ARRAY_ALIGNMENT == 0 for entry in table.values())
    assert message.arrays["empty"].shape == (0, 4) and to_numpy(message.arrays["empty"]).shape == (0, 4)
    np.testing.assert_array_equal(to_numpy(message.arrays["small"]), arrays["small"])
    np.testing.assert_array_equal(to_numpy(message.arrays["image"]), arrays["image"])
    assert bytes(message.arrays["raw"].data) == b"hello" and message.arrays["raw"].dtype == "uint8"
    assert to_numpy(message.arrays["scalar"]).item() == 7 and message.arrays["scalar"].shape == ()
    assert message.kind == "event" and message.id == 9 and message.data == {"n": 1}


def test_received_arrays_can_be_sent_again(pair):
    a, b = pair
    value = np.linspace(0, 1, 12, dtype=np.float16).reshape(3, 4)
    wire.send_message(a, wire.reply_header(1), {"v": value})
    echoed = wire.recv_message(b).arrays["v"]
    wire.send_message(b, wire.reply_header(2), {"v": echoed})
    np.testing.assert_array_equal(to_numpy(wire.recv_message(a).arrays["v"]), value)


@pytest.mark.parametrize(
    "value, problem",
    [
        (np.zeros((4, 4), dtype=np.float32)[:, ::2], "C-contiguous"),
        (np.zeros(3, dtype=">f4"), "not sendable"),
        (np.zeros(3, dtype=bool), "not sendable"),
        (np.zeros(3, dtype=np.uint16), "not sendable"),
        ([1, 2, 3], "buffer protocol"),
    ],
)
def test_unsendable_arrays_are_refused_with_their_name(value, problem):
    with pytest.raises(wire.ProtocolError, match=problem) as caught:
        wire.encode(wire.reply_header(1), {"pose": value})
    assert "'pose'" in str(caught.value)


def test_inconsistent_wire_array_is_refused():
    bogus = wire.WireArray("float32", (4, 4), memoryview(bytes(8)))
    with pytest.raises(wire.ProtocolError, match="do not hold"):
        wire.encode(wire.reply_header(1), {"x": bogus})


def test_nan_and_infinity_never_enter_a_header(pair):
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(wire.ProtocolError) as caught:
            wire.encode(wire.request_header(1, "render", {"fov": bad}))
        assert caught.value.code == wire.BAD_REQUEST
    a, b = pair
    for text in (b'{"fov": NaN}', b'{"fov": Infinity}', b'{"fov": -Infinity}', b'{"fov": 1e999}'):
        a.sendall(raw_frame(text))
        with pytest.raises(wire.ProtocolError) as caught:
            wire.recv_message(b)
        assert caught.value.code == wire.BAD_HEADER


@pytest.mark.parametrize(
    "header",
    [b"[1, 2]", b'"text"', b"\xff\xfe{}", b"{", b"[" * 100_000 + b"]" * 100_000, b'{"a": 1' + b"0" * 5000 + b"}"],
)
def test_malformed_headers_are_bad_header(pair, header):
    a, b = pair
    threading.Thread(target=a.sendall, args=(raw_frame(header),), daemon=True).start()
    with pytest.raises(wire.ProtocolError) as caught:
        wire.recv_message(b, max_header=len(header) + 1)
    assert caught.value.code == wire.BAD_HEADER


def test_prefix_checks_name_the_problem():
    good = dict(max_header=100, max_payload=1000)
    with pytest.raises(wire.ProtocolError, match="bad magic") as caught:
        wire.read_prefix(wire.PREFIX.pack(b"HTTP", 1, 0, 10, 0), **good)
    assert caught.value.code == wire.BAD_FRAME
    with pytest.raises(wire.ProtocolError, match="version 2.*speaks 1") as caught:
        wire.read_prefix(wire.PREFIX.pack(wire.MAGIC, 2, 0, 10, 0), **good)
    assert caught.value.code == wire.VERSION_MISMATCH
    with pytest.raises(wire.ProtocolError, match="flags"):
        wire.read_prefix(wire.PREFIX.pack(wire.MAGIC, 1, 4, 10, 0), **good)
    with pytest.raises(wire.ProtocolError) as caught:
        wire.read_prefix(wire.PREFIX.pack(wire.MAGIC, 1, 0, 101, 0), **good)
    assert caught.value.code == wire.TOO_LARGE
    with pytest.raises(wire.ProtocolError) as caught:
        wire.read_prefix(wire.PREFIX.pack(wire.MAGIC, 1, 0, 10, 1001), **good)
    assert caught.value.code == wire.TOO_LARGE
    with pytest.raises(wire.ProtocolError) as caught:
        wire.read_prefix(wire.PREFIX.pack(wire.MAGIC, 1, 0, 0, 0), **good)
    assert caught.value.code == wire.BAD_FRAME
    assert wire.read_prefix(wire.PREFIX.pack(wire.MAGIC, 1, 0, 100, 1000), **good) == (100, 1000)


def test_oversize_frames_are_refused_before_allocating(pair):
    a, b = pair
    # 2**62 bytes could never be allocated: TOO_LARGE (not MemoryError) shows the check comes first.
    a.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, 10, 2**62))
    with pytest.raises(wire.ProtocolError) as caught:
        wire.recv_message(b)
    assert caught.value.code == wire.TOO_LARGE
    a.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, 2**32 - 1, 0))
    with pytest.raises(wire.ProtocolError) as caught:
        wire.recv_message(b)
    assert caught.value.code == wire.TOO_LARGE


def test_sender_limits():
    with pytest.raises(wire.ProtocolError) as caught:
        wire.encode(wire.reply_header(1, {"blob": "x" * (wire.MAX_HEADER_BYTES + 1)}))
    assert caught.value.code == wire.TOO_LARGE
    with pytest.raises(wire.ProtocolError) as caught:
        wire.encode(wire.reply_header(1), {f"a{i}": b"x" for i in range(wire.MAX_ARRAYS + 1)})
    assert caught.value.code == wire.TOO_LARGE


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"name": "x", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 4}, "does not match"),
        ({"name": "x", "dtype": "float32", "shape": [4], "offset": 8, "nbytes": 16}, "exceed the payload"),
        ({"name": "x", "dtype": "object", "shape": [4], "offset": 0, "nbytes": 16}, "dtype"),
        ({"name": "x", "dtype": "float32", "shape": [-4], "offset": 0, "nbytes": 16}, "shape"),
        ({"name": "x", "dtype": "float32", "shape": [4.0], "offset": 0, "nbytes": 16}, "shape"),
        ({"name": "", "dtype": "float32", "shape": [4], "offset": 0, "nbytes": 16}, "name"),
        ({"name": "x", "dtype": "float32", "shape": [4], "offset": -1, "nbytes": 16}, "offset"),
        ("not an object", "object"),
    ],
)
def test_bad_array_tables_are_bad_header(pair, entry, problem):
    a, b = pair
    a.sendall(raw_frame(json.dumps({"kind": "reply", "id": 1, "arrays": [entry]}).encode(), bytes(16)))
    with pytest.raises(wire.ProtocolError, match=problem) as caught:
        wire.recv_message(b)
    assert caught.value.code == wire.BAD_HEADER


def test_duplicate_array_names_are_bad_header(pair):
    a, b = pair
    entry = {"name": "x", "dtype": "uint8", "shape": [4], "offset": 0, "nbytes": 4}
    a.sendall(raw_frame(json.dumps({"arrays": [entry, entry]}).encode(), bytes(4)))
    with pytest.raises(wire.ProtocolError, match="unique"):
        wire.recv_message(b)


def test_truncated_frames_and_clean_close_are_told_apart(pair):
    a, b = pair
    frame = b"".join(bytes(chunk) for chunk in wire.encode(wire.reply_header(1), {"x": bytes(100)}))
    a.sendall(frame[:-10])
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(wire.ProtocolError, match="middle of a frame") as caught:
        wire.recv_message(b)
    assert caught.value.code == wire.CONNECTION_CLOSED
    c, d = socket.socketpair()
    c.close()
    with pytest.raises(wire.ProtocolError, match="closed the connection$"):
        wire.recv_message(d)
    d.close()


def test_large_frames_survive_partial_sends(pair):
    """A slow reader forces short sendmsg writes; the frame must still arrive intact."""
    a, b = pair
    a.settimeout(30)  # a socket with a timeout is non-blocking inside: sendmsg returns short counts
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rng = np.random.default_rng(1)
    arrays = {f"part{i}": rng.integers(0, 255, size=300_000 + i, dtype=np.uint8) for i in range(3)}
    sender = threading.Thread(target=wire.send_message, args=(a, wire.reply_header(5), arrays))
    sender.start()
    message = wire.recv_message(b)
    sender.join()
    for name, value in arrays.items():
        np.testing.assert_array_equal(to_numpy(message.arrays[name]), value)


def test_connection_file_is_owner_only_and_round_trips(tmp_path):
    path = tmp_path / "sub" / "connection.json"
    info = wire.ConnectionInfo("127.0.0.1", 4321, "secret-token", 99, log_file="/tmp/x.log")
    wire.write_connection_file(path, info)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wire.read_connection_file(path) == info
    assert [p.name for p in path.parent.iterdir()] == ["connection.json"]  # no temp file left behind
    wire.write_connection_file(path, wire.ConnectionInfo("127.0.0.1", 4322, "other", 100))
    assert wire.read_connection_file(path).port == 4322


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "no connection file"),
        ("{not json", "unreadable"),
        ("[]", "JSON object"),
        ('{"host": "127.0.0.1", "port": 1, "token": "t", "pid": 1}', "missing 'protocol'"),
        ('{"host": "127.0.0.1", "port": "1", "token": "t", "pid": 1, "protocol": 1}', "'port' must be int"),
        ('{"host": "127.0.0.1", "port": 70000, "token": "t", "pid": 1, "protocol": 1}', "out of range"),
        ('{"host": "127.0.0.1", "port": 1, "token": "t", "pid": 1, "protocol": 7}', "protocol version 7"),
    ],
)
def test_bad_connection_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "connection.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(wire.ProtocolError, match=problem) as caught:
        wire.read_connection_file(path)
    assert str(path) in str(caught.value)


def test_wait_for_connection_file_times_out_clearly(tmp_path):
    with pytest.raises(wire.ProtocolError, match="no connection file after") as caught:
        wire.wait_for_connection_file(tmp_path / "connection.json", timeout=0.1)
    assert caught.value.code == wire.TIMEOUT


def test_header_accepts_numpy_scalars_and_paths():
    header = json.loads(wire.dump_header({"a": np.float32(1.5), "b": np.int64(3), "p": Path("/some/where")}))
    assert header == {"a": 1.5, "b": 3, "p": "/some/where"}
    with pytest.raises(TypeError, match="send arrays as arrays"):
        wire.dump_header({"a": np.zeros(3)})


def test_prefix_is_twenty_little_endian_bytes():
    packed = wire.PREFIX.pack(wire.MAGIC, 1, 0, 5, 7)
    assert len(packed) == 20 and packed == b"NAVW" + struct.pack("<HHIQ", 1, 0, 5, 7)
    assert sys.byteorder == "little"
