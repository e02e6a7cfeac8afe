"""The backend server as a real subprocess: auth, binding, requests, failures, fuzzing, jobs (real
training jobs on a tiny sample capture), shutdown.

Plus the in-process parts it is made of: parameter schemas, the handler registry and
progress reporting.
"""

from __future__ import annotations

import collections
import io
import ipaddress
import math
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from blender_addon import wire
from backend.progress import (
    CallbackProgress,
    JsonlProgress,
    LogProgress,
    ProgressEvent,
    estimate_eta,
    make_progress,
    parse_event,
)
from backend.server import registry
from backend.server.connection import _Deadline
from backend.server.handlers.bodies import BodyModelCache
from backend.server.listener import MAX_PENDING, BindError, Listener, check_bind_address
from backend.train.checkpoint import load_checkpoint
from tests.conftest import REPOSITORY_ROOT, server_environment
from backend.server.schema import (
    ANY_ARRAYS,
    Array,
    BadRequest,
    Boolean,
    FilePath,
    Integer,
    List,
    Number,
    String,
    validate_arrays,
    validate_params,
)

# ------------------------------------------------------------------ helpers


def connect_raw(server) -> socket.socket:
    info = server.info()
    sock = socket.create_connection((info.host, info.port), timeout=15)
    wire.tune_socket(sock)
    return sock


def say_hello(sock: socket.socket, token: str) -> wire.Message:
    wire.send_message(sock, wire.request_header(1, "hello", {"token": token, "client": "raw"}))
    return wire.recv_message(sock)


def authenticated_raw(server) -> socket.socket:
    sock = connect_raw(server)
    reply = say_hello(sock, server.info().token)
    assert reply.kind == "reply"
    return sock


def expect_error_and_close(sock: socket.socket, code: str) -> str:
    """The server answers with an error frame of ``code`` (id null), then hangs up."""
    message = wire.recv_message(sock)
    assert message.kind == "error" and message.header["code"] == code, message.header
    assert message.id is None
    with pytest.raises(wire.ProtocolError) as closed:
        wire.recv_message(sock)
    assert closed.value.code == wire.CONNECTION_CLOSED
    sock.close()
    return message.header["message"]


def assert_still_serving(server) -> None:
    assert server.alive()
    with server.client() as client:
        reply = client.request("ping", {"width": 8, "height": 4}, {"x": np.arange(5, dtype=np.int32)})
        assert list(np.frombuffer(reply.arrays["x"].data, np.int32)) == [0, 1, 2, 3, 4]
        assert reply.arrays["image"].shape == (4, 8, 4)


def as_array(array: wire.WireArray) -> np.ndarray:
    return np.frombuffer(array.data, dtype=array.dtype).reshape(array.shape)


def non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 9))  # UDP connect sends nothing; it only picks a route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


# ------------------------------------------------------------------ start-up, files, binding


def test_connection_file_is_owner_only_and_describes_the_server(server):
    info = server.info()
    assert info.pid == server.process.pid
    assert info.host == "127.0.0.1" and 0 < info.port < 65536
    assert info.protocol == wire.PROTOCOL_VERSION and len(info.token) >= 40
    assert Path(info.log_file) == server.log_file
    if os.name == "posix":
        assert stat.S_IMODE(server.connection_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE(server.log_file.stat().st_mode) == 0o600
    assert "listening on 127.0.0.1:" in server.output.read_text()


def test_server_is_not_reachable_from_other_interfaces(server):
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with pytest.raises(OSError):
        socket.create_connection((address, server.info().port), timeout=2).close()


def test_non_loopback_bind_needs_the_explicit_flag():
    assert check_bind_address("127.0.0.1", allow_remote=False) == "127.0.0.1"
    assert check_bind_address("::1", allow_remote=False) == "::1"
    for address in ("0.0.0.0", "192.168.1.20", "::"):
        with pytest.raises(BindError, match="--allow-remote-bind"):
            Listener(address, 0)
    with pytest.raises(BindError, match="not an IP address"):
        check_bind_address("localhost", allow_remote=False)
    assert check_bind_address("0.0.0.0", allow_remote=True) == "0.0.0.0"


def test_cli_rejects_a_bad_remote_bind_address_before_starting(tmp_path, run_backend):
    result = run_backend("serve", "--state-dir", str(tmp_path / "state"), "--allow-remote-bind", "everywhere")
    assert result.returncode == 2
    assert "'everywhere' is not an IP address" in result.stderr
    assert not (tmp_path / "state" / "connection.json").exists()


def test_cuda_without_gpu_is_a_clear_error(tmp_path, run_backend):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    result = run_backend("serve", "--device", "cuda", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "device 'cuda' requested" in result.stderr and "--device cpu" in result.stderr
    assert "device 'cuda' requested" in (tmp_path / "state" / "server.log").read_text()


def test_a_second_server_on_the_same_state_folder_is_refused(server, tmp_path, run_backend):
    result = run_backend("serve", "--device", "cpu", "--state-dir", str(server.state_dir), "--log-file", str(tmp_path / "other.log"))
    assert result.returncode == 2
    assert f"another server (pid {server.process.pid})" in result.stderr
    assert server.info().pid == server.process.pid  # its connection file was left alone


def test_unusable_state_folder_or_log_file_is_a_clear_error(tmp_path, run_backend):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = run_backend("serve", "--state-dir", str(not_a_folder))
    assert result.returncode == 2 and f"cannot use state folder {not_a_folder}" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_backend("serve", "--state-dir", str(tmp_path / "state"), "--log-file", str(not_a_folder / "server.log"))
    assert result.returncode == 2 and f"cannot write the log file {not_a_folder / 'server.log'}" in result.stderr


# ------------------------------------------------------------------ authentication


def test_client_authenticates_with_the_token(server):
    with server.client() as client:
        greeting = client.server_info.result
        assert greeting["protocol"] == wire.PROTOCOL_VERSION and greeting["pid"] == server.process.pid
        assert greeting["device"] == "cpu"


def test_wrong_token_is_refused_and_the_connection_closed(server):
    sock = connect_raw(server)
    wire.send_message(sock, wire.request_header(1, "hello", {"token": server.info().token[:-1] + "x"}))
    assert "wrong token" in expect_error_and_close(sock, wire.AUTH_FAILED)
    info = server.info()
    with pytest.raises(wire.RemoteError) as caught:
        wire.Client(info.host, info.port, "not-the-token")
    assert caught.value.code == wire.AUTH_FAILED


def test_any_other_first_message_is_refused(server):
    sock = connect_raw(server)
    wire.send_message(sock, wire.request_header(1, "info", {}))
    assert "first message must be a 'hello'" in expect_error_and_close(sock, wire.AUTH_REQUIRED)
    sock = connect_raw(server)
    wire.send_message(sock, wire.request_header(1, "hello", {"client": "no token"}))
    expect_error_and_close(sock, wire.AUTH_REQUIRED)
    sock = connect_raw(server)
    wire.send_message(sock, wire.request_header(1, "hello", {"token": 12345}))
    expect_error_and_close(sock, wire.AUTH_REQUIRED)


def test_unauthenticated_peers_cannot_send_big_frames(server):
    sock = connect_raw(server)  # a payload before authentication: refused from the prefix alone
    sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, 100, 1))
    expect_error_and_close(sock, wire.TOO_LARGE)
    sock = connect_raw(server)
    sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, wire.AUTH_MAX_HEADER_BYTES + 1, 0))
    expect_error_and_close(sock, wire.TOO_LARGE)


def test_peers_that_never_say_hello_cannot_keep_clients_out(server):
    silent = []
    for _ in range(MAX_PENDING + 4):  # a full pending pool, and more: the oldest are dropped
        sock = connect_raw(server)
        sock.sendall(wire.MAGIC)  # the start of a prefix, then nothing
        silent.append(sock)
    with server.client() as client:  # a client with the token still gets in at once
        assert client.request("ping").kind == "reply"
    dropped = 0
    for sock in silent[:4]:
        sock.settimeout(5)
        dropped += sock.recv(1) == b""
        sock.close()
    assert dropped == 4
    for sock in silent[4:]:
        sock.close()
    assert_still_serving(server)


def test_authentication_has_a_total_deadline_not_one_per_read():
    with socket.create_server(("127.0.0.1", 0)) as listening:
        peer = socket.create_connection(listening.getsockname())
        ours, _ = listening.accept()
    stop = threading.Event()

    def drip() -> None:  # a byte now and then: no single read times out
        while not stop.is_set():
            try:
                peer.send(b"x")
            except OSError:
                return
            time.sleep(0.05)

    dripping = threading.Thread(target=drip, daemon=True)
    dripping.start()
    deadline = _Deadline(ours, 0.3)
    started = time.monotonic()
    ours.settimeout(0.25)
    received = b""
    while chunk := ours.recv(1):
        received += chunk
    assert 0.25 < time.monotonic() - started < 3 and received
    assert deadline.disarm()  # it fired; the write side still works for the error reply
    ours.sendall(b"bye")
    assert peer.recv(3) == b"bye"
    assert not _Deadline(ours, 0.2).disarm()
    stop.set()
    dripping.join()
    ours.close()
    peer.close()


def test_version_mismatch_is_named_on_both_sides(server):
    sock = connect_raw(server)
    sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION + 1, 0, 2, 0))
    message = expect_error_and_close(sock, wire.VERSION_MISMATCH)
    assert f"version {wire.PROTOCOL_VERSION + 1}" in message and f"speaks {wire.PROTOCOL_VERSION}" in message
    assert "protocol version" in server.log_text()


def test_not_a_protocol_peer_is_dropped(server):
    sock = connect_raw(server)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert "bad magic" in expect_error_and_close(sock, wire.BAD_FRAME)


# ------------------------------------------------------------------ requests


def test_info_reports_device_versions_avatars_and_requests(server):
    with server.client() as client:
        info = client.request("info", {"bodies": False}).result
    assert info["device"] == "cpu" and info["protocol"] == wire.PROTOCOL_VERSION
    assert info["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["versions"]["torch"] and info["versions"]["numpy"] == np.__version__
    assert info["avatars"] == []
    assert {
        "hello", "info", "ping", "job_status", "job_list", "job_cancel", "job_follow", "shutdown",
        "train_start", "bake", "load_avatar", "unload_avatar", "render", "render_sequence",
    } <= set(info["requests"])
    assert info["job_kinds"] == ["bake", "train"] and info["handler_errors"] == {}
    assert "bodies" not in info


def test_info_reports_body_models_or_why_not(server):
    with server.client(timeout=300) as client:
        bodies = client.request("info", {"bodies": True}).result["bodies"]
    if isinstance(bodies, str):
        assert bodies.startswith("unavailable: ")
    else:
        assert len(bodies) == 3 and [line.split()[0] for line in bodies] == ["smplx", "mano", "faceverse"]


@pytest.mark.parametrize("dtype, scale", [("uint8", 255), ("float16", 1), ("float32", 1)])
def test_ping_returns_a_deterministic_rgba_test_image(server, dtype, scale):
    with server.client() as client:
        image = as_array(client.request("ping", {"width": 64, "height": 32, "dtype": dtype}).arrays["image"])
    assert image.shape == (32, 64, 4) and image.dtype == np.dtype(dtype)
    assert float(image[0, 0, 0]) == 0 and float(image[0, -1, 0]) == scale  # x ramp
    assert float(image[-1, 0, 1]) == scale and np.all(image[..., 3] == scale)  # y ramp, opaque
    assert float(image[0, 8, 2]) == scale and float(image[0, 0, 2]) == 0  # 8-px checker


def test_ping_echoes_every_dtype_unchanged(server):
    rng = np.random.default_rng(3)
    arrays = {dtype: (rng.standard_normal((7, 3)) * 50).astype(dtype) for dtype in wire.DTYPE_ITEMSIZE}
    with server.client() as client:
        reply = client.request("ping", {}, arrays)
    assert reply.result["echoed"] == sorted(arrays)
    for name, value in arrays.items():
        np.testing.assert_array_equal(as_array(reply.arrays[name]), value)


def test_unknown_requests_and_bad_params_get_structured_errors(server):
    with server.client() as client:
        cases = [
            (("render_nothing", {}), wire.UNKNOWN_REQUEST, "unknown request type 'render_nothing'"),
            (("ping", {"width": "10", "height": 4}), wire.BAD_REQUEST, "params.width: must be an integer"),
            (("ping", {"width": 0, "height": 4}), wire.BAD_REQUEST, "params.width: 0 is outside 1..4096"),
            (("ping", {"width": 4}), wire.BAD_REQUEST, "both width and height"),
            (("ping", {"colour": "red"}), wire.BAD_REQUEST, "unknown key(s) 'colour'"),
            (("ping", {"dtype": "float64", "width": 2, "height": 2}), wire.BAD_REQUEST, "not one of uint8"),
            (("bake", {"avatar": "/a", "out_dir": "/b", "width": 8, "height": 8, "fps": 10**400}), wire.BAD_REQUEST, "too large"),
            (("train_start", {"capture": "/", "out": "/x", "iterations": True}), wire.BAD_REQUEST, "params.iterations: must be an integer"),
            (("job_status", {"job": "no-such-job"}), "not_found", "no job 'no-such-job'"),
            (("job_cancel", {}), wire.BAD_REQUEST, "params.job: required"),
            (("info", {"bodies": 1}), wire.BAD_REQUEST, "must be true or false"),
        ]
        for (request_type, params), code, text in cases:
            with pytest.raises(wire.RemoteError) as caught:
                client.request(request_type, params)
            assert caught.value.code == code and text in caught.value.message, (request_type, caught.value)
        assert not client.closed  # request-level errors keep the connection
        assert client.request("ping").kind == "reply"


def test_replies_quoting_odd_input_and_oversize_replies_are_sent_as_errors(server):
    sock = authenticated_raw(server)
    for header, text in (
        (b'{"kind":"request","id":"\\ud800","type":"info","params":{"x":1}}', "unknown key(s) 'x'"),
        (b'{"kind":"request","id":2,"type":"load_avatar","params":{"path":"/tmp/\\ud800"}}', "params.path"),
    ):
        sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, len(header), 0) + header)
        reply = wire.recv_message(sock)
        assert reply.header["code"] == wire.BAD_REQUEST and text in reply.header["message"], reply.header
    sock.close()
    with server.client() as client:
        many = {f"key{i:06d}" + "\u0085" * 20: 1 for i in range(2000)}
        with pytest.raises(wire.RemoteError, match="and 1992 more") as caught:
            client.request("info", many)
        assert len(caught.value.message) < 2000
        for path, text in (("~nosuchuser/avatar", "is not a usable path"), ("/tmp/" + "a" * 300, "is not a usable path")):
            with pytest.raises(wire.RemoteError, match=text) as caught:
                client.request("load_avatar", {"path": path})
            assert caught.value.code == wire.BAD_REQUEST
        with pytest.raises(wire.RemoteError) as caught:  # 256 MiB of pixels + the echo: over the frame limit
            client.request("ping", {"width": 4096, "height": 4096, "dtype": "float32"}, {"x": np.zeros(1, np.uint8)})
        assert caught.value.code == wire.TOO_LARGE and "'ping'" in caught.value.message
        assert client.request("ping").kind == "reply"
    assert "Exception in thread" not in server.output.read_text(errors="replace")


def test_params_must_be_an_object_and_ids_well_formed(server):
    sock = authenticated_raw(server)
    wire.send_message(sock, {"kind": "request", "id": 5, "type": "ping", "params": [1, 2]})
    reply = wire.recv_message(sock)
    assert reply.header["code"] == wire.BAD_REQUEST and "params: must be an object" in reply.header["message"]
    wire.send_message(sock, {"kind": "request", "id": 1.5, "type": "ping"})
    reply = wire.recv_message(sock)
    assert reply.header["code"] == wire.BAD_REQUEST and reply.id is None
    wire.send_message(sock, {"kind": "reply", "id": 6})
    assert wire.recv_message(sock).header["code"] == wire.BAD_REQUEST
    wire.send_message(sock, wire.request_header(7, "ping"))
    assert wire.recv_message(sock).kind == "reply"
    sock.close()


def test_nan_and_infinity_in_a_header_close_the_connection(server):
    for text in (b'{"kind":"request","id":1,"type":"ping","params":{"width":NaN}}', b'{"kind":"request","id":1,"x":-1e999}'):
        sock = authenticated_raw(server)
        sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, len(text), 0) + text)
        assert "not valid UTF-8 JSON" in expect_error_and_close(sock, wire.BAD_HEADER)
    assert_still_serving(server)


def test_empty_arrays_cannot_claim_huge_dimensions(server):
    sock = authenticated_raw(server)
    header = wire.dump_header(
        {"kind": "request", "id": 1, "type": "ping", "arrays": [{"name": "x", "dtype": "float32", "shape": [0, 2**63], "offset": 0, "nbytes": 0}]}
    )
    sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, len(header), 0) + header)
    assert "shape must be a list" in expect_error_and_close(sock, wire.BAD_HEADER)
    assert_still_serving(server)


def test_oversize_payload_is_refused_without_reading_it(server):
    sock = authenticated_raw(server)
    sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, 50, wire.MAX_PAYLOAD_BYTES + 1))
    expect_error_and_close(sock, wire.TOO_LARGE)
    sock = authenticated_raw(server)
    sock.sendall(wire.PREFIX.pack(wire.MAGIC, wire.PROTOCOL_VERSION, 0, 50, 2**60))
    expect_error_and_close(sock, wire.TOO_LARGE)
    assert_still_serving(server)


def test_several_clients_at_once(server):
    failures: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            with server.client() as client:
                for _ in range(15):
                    payload = rng.integers(0, 255, size=(int(rng.integers(1, 200)), 4), dtype=np.uint8)
                    side = int(rng.integers(1, 128))
                    reply = client.request("ping", {"width": side, "height": side}, {"payload": payload})
                    np.testing.assert_array_equal(as_array(reply.arrays["payload"]), payload)
                    assert reply.arrays["image"].shape == (side, side, 4)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures


# ------------------------------------------------------------------ fuzzing


KNOWN_TYPES = [
    "hello", "info", "ping", "job_status", "job_list", "job_cancel", "job_follow",
    "load_avatar", "unload_avatar", "render", "no_such_type", "",
]


def random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30, rng.randrange(-1000, 5000)])
    if choice == 3:
        return rng.choice([0.0, -0.0, 1e308, -1e-308, 3.5, rng.uniform(-1e6, 1e6)])
    if choice == 4:
        return "".join(rng.choice("abc/\\\x00\u00e9\U0001f600 .") for _ in range(rng.randrange(0, 20)))
    if choice == 5:
        return rng.choice(["uint8", "float16", "../../etc/passwd", "/tmp", "job-1", "NaN"])
    if choice in (6, 7):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["width", "height", "dtype", "job", "wait", "timeout", "bodies", "token", "avatar_id", "path", "x"]): random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def random_request(rng: random.Random, request_id: int) -> tuple[dict, dict]:
    params = random_json(rng) if rng.random() < 0.2 else {
        key: random_json(rng) for key in rng.sample(["width", "height", "dtype", "job", "wait", "timeout", "bodies", "avatar_id", "path", "x"], rng.randrange(0, 3))
    }
    header = {"kind": rng.choice(["request"] * 8 + ["reply", "event", None]), "id": rng.choice([request_id, request_id, "id-x", None, 1.5, [1]]), "type": rng.choice(KNOWN_TYPES), "params": params}
    if header["type"] == "ping" and isinstance(params, dict) and rng.random() < 0.5:
        params.pop("width", None), params.pop("height", None)  # keep test images small
        params["width"] = params["height"] = rng.randrange(1, 64)
    if header["type"].startswith("job_") and isinstance(params, dict) and rng.random() < 0.5:
        params["job"] = rng.choice(["train-x", "", "j" * 200, "../jobs"])
    if header["type"] == "info" and isinstance(params, dict):
        params["bodies"] = False  # describing body models is slow and not what is fuzzed here
    arrays = {}
    for index in range(rng.randrange(0, 3)):
        dtype = rng.choice(list(wire.DTYPE_ITEMSIZE))
        shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 4)))
        arrays[f"a{index}"] = np.zeros(shape, dtype=dtype)
    return header, arrays


def mutate(frame: bytearray, rng: random.Random) -> bytes:
    for _ in range(rng.randrange(1, 4)):
        operation = rng.randrange(6)
        if operation == 0 and frame:  # flip a byte anywhere
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        elif operation == 1:  # rewrite a length field
            offset = rng.choice([8, 12])
            size = 4 if offset == 8 else 8
            frame[offset : offset + size] = rng.randrange(0, 2 ** (8 * size)).to_bytes(size, "little")
        elif operation == 2 and frame:  # truncate
            del frame[rng.randrange(len(frame)) :]
        elif operation == 3:  # insert junk
            position = rng.randrange(len(frame) + 1)
            frame[position:position] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif operation == 4 and len(frame) > 20:  # corrupt the JSON
            position = rng.randrange(20, len(frame))
            frame[position] = ord(rng.choice('{}[]",:\\NaI0e-'))
        else:  # small length change keeps the prefix plausible
            header_len = int.from_bytes(frame[8:12], "little")
            frame[8:12] = max(0, header_len + rng.randrange(-3, 4)).to_bytes(4, "little")
    return bytes(frame)


def drain_replies(sock: socket.socket, codes: list[str]) -> None:
    """Read until the server closes; every frame must be well formed; remember error codes."""
    while True:
        try:
            message = wire.recv_message(sock)
        except wire.ProtocolError as error:
            assert error.code == wire.CONNECTION_CLOSED, error
            return
        except (ConnectionResetError, BrokenPipeError):
            return
        assert message.kind in ("reply", "error", "event")
        if message.kind == "error":
            codes.append(message.header["code"])


def test_fuzzing_never_breaks_the_server(fresh_server):
    server = fresh_server
    rng = random.Random(20240601)
    info = server.info()
    codes: list[str] = []
    deadline = time.monotonic() + 30.0
    frames = 0

    def open_socket() -> socket.socket:
        sock = socket.create_connection((info.host, info.port), timeout=15)
        wire.tune_socket(sock)
        return sock

    # 1) junk from unauthenticated peers
    for _ in range(600):
        sock = open_socket()
        try:
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120))))
            sock.shutdown(socket.SHUT_WR)
            drain_replies(sock, codes)
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            sock.close()
        frames += 1
    # 2) mutated frames after a correct hello
    for request_id in range(1000):
        if time.monotonic() > deadline:
            break
        header, arrays = random_request(rng, request_id)
        frame = bytearray(b"".join(bytes(chunk) for chunk in wire.encode(header, arrays)))
        sock = open_socket()
        try:
            assert say_hello(sock, info.token).kind == "reply"
            sock.sendall(mutate(frame, rng))
            sock.shutdown(socket.SHUT_WR)
            drain_replies(sock, codes)
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            sock.close()
        frames += 1
    # 3) well-framed requests with random types, params and arrays, on long-lived connections
    sock = open_socket()
    assert say_hello(sock, info.token).kind == "reply"
    for request_id in range(1400):
        if time.monotonic() > deadline:
            break
        header, arrays = random_request(rng, request_id)
        wire.send_message(sock, header, arrays)
        frames += 1
        reply = wire.recv_message(sock)
        assert reply.kind in ("reply", "error"), reply.header
        if reply.kind == "error":
            codes.append(reply.header["code"])
            if reply.id is None and reply.header["code"] not in (wire.BAD_REQUEST,):
                sock.close()
                sock = open_socket()
                assert say_hello(sock, info.token).kind == "reply"
    sock.close()

    print(f"{frames} fuzz frames; error codes: {collections.Counter(codes)}")
    assert frames >= 2000
    assert wire.INTERNAL not in codes, "a fuzzed request caused an internal error: see the server log"
    assert {wire.BAD_REQUEST, wire.UNKNOWN_REQUEST, wire.BAD_FRAME, wire.BAD_HEADER, "not_found"} <= set(codes)
    assert_still_serving(server)
    assert "Traceback" not in server.log_text()


# ------------------------------------------------------------------ jobs: real training jobs on a tiny sample capture

# Small and quick: 64² training, one torch thread (the other core stays free for renders).
QUICK_TRAINING = {"resolution": 64, "threads": 1, "checkpoint_every": 5, "validate_every": 5}
ENDLESS = 1_000_000  # iterations of a job that only ends when cancelled, killed or shut down


def train_params(capture: Path, out: Path, **options) -> dict:
    return {"capture": str(capture), "out": str(out), **QUICK_TRAINING, **options}


def start_training(client, capture: Path, out: Path, **options) -> dict:
    return client.request("train_start", train_params(capture, out, **options)).result["job"]


def wait_for_step(client, job_id: str, step: int, *, preview: bool = False, timeout: float = 90.0) -> wire.Message:
    """Poll ``job_status`` until the running job has reported ``step`` (and a preview, if asked)."""
    deadline = time.monotonic() + timeout
    while True:
        status = client.request("job_status", {"job": job_id, "preview": preview})
        state = status.result["job"]
        assert state["status"] == "running", state
        if state["step"] >= step and (not preview or "preview" in status.arrays):
            return status
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def wait_for_log(server, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in server.log_text():
        assert time.monotonic() < deadline, f"{text!r} not in the server log"
        time.sleep(0.05)


def tiny_render_arrays(capture: Path, frames: int = 1) -> dict[str, np.ndarray]:
    """Held-out poses of the tiny capture and their cameras, as render arrays."""
    from backend.capture import SPLIT_TEST, read_tracking

    tracking = read_tracking(capture / "tracking.npz")
    rows = tracking.frames_of(SPLIT_TEST)[:frames]
    arrays = {key: value[rows] for key, value in tracking.motion.arrays().items() if key != "betas"}
    arrays["camera_K"] = tracking.camera.K[rows]
    arrays["camera_world_to_camera"] = tracking.camera.world_to_camera[rows]
    return arrays


def test_training_job_reports_progress_losses_eta_and_previews(server, tiny_sample_capture, tmp_path):
    out = tmp_path / "avatar"
    with server.client() as starter, server.client() as follower:
        job = start_training(starter, tiny_sample_capture, out, iterations=12, validate_every=6)
        assert job["kind"] == "train" and job["status"] == "running"
        events, previews = [], []
        for message in follower.stream("job_follow", {"job": job["id"]}):  # from another connection
            if message.kind == "event":
                assert message.header["event"] == "progress"
                events.append(message.data)
                if "preview" in message.arrays:
                    previews.append(as_array(message.arrays["preview"]))
            else:
                final = message.result["job"]
        status = starter.request("job_status", {"job": job["id"], "preview": True})
    assert final["status"] == "done" and final["step"] == 12 and final["total"] == 12 and final["exit_code"] == 0, final
    steps = [event["step"] for event in events]
    assert steps == sorted(steps) and steps[-1] >= 6
    reported = [event["losses"] for event in events if event["step"] and "rgb" in event["losses"]]
    assert reported and all(math.isfinite(losses["rgb"]) and math.isfinite(losses["total"]) for losses in reported)
    assert any(event["eta_seconds"] is not None for event in events)
    assert any("validation PSNR" in event["message"] for event in events)
    # Validation previews (ground truth | render at 64²) came along, and job_status returns the latest.
    assert previews and all(p.shape == (64, 128, 4) and p.dtype == np.uint8 for p in previews)
    assert as_array(status.arrays["preview"]).shape == (64, 128, 4)
    assert load_checkpoint(out / "checkpoints").step == 12


def test_renders_are_answered_during_training_and_cancel_leaves_a_resumable_checkpoint(
    server, tiny_sample_capture, tiny_trained_avatar, tmp_path
):
    out = tmp_path / "avatar"
    arrays = tiny_render_arrays(tiny_sample_capture)
    with server.client(timeout=120) as control, server.client(timeout=120) as renderer:
        avatar_id = renderer.request("load_avatar", {"path": str(tiny_trained_avatar)}).result["avatar_id"]
        job = start_training(control, tiny_sample_capture, out, iterations=ENDLESS)
        status = wait_for_step(control, job["id"], 3, preview=True)
        assert as_array(status.arrays["preview"]).shape == (64, 128, 4)
        for _ in range(5):  # a previously trained avatar renders while the job trains
            reply = renderer.request("render", {"avatar_id": avatar_id, "width": 64, "height": 64}, arrays)
            assert as_array(reply.arrays["rgba"])[..., 3].max() > 127  # the body is drawn
            assert control.request("job_status", {"job": job["id"]}).result["job"]["status"] == "running"
        listed = {entry["id"]: entry for entry in renderer.request("job_list").result["jobs"]}
        assert listed[job["id"]]["status"] == "running"

        cancel_started = time.monotonic()
        control.request("job_cancel", {"job": job["id"]})
        while not any("saved a checkpoint" in line for line in control.request("job_status", {"job": job["id"]}).result["job"]["log"]):
            assert time.monotonic() - cancel_started < 1.0, "the job did not checkpoint within 1 s of the cancel"
            time.sleep(0.02)
        cancelled = control.request("job_cancel", {"job": job["id"], "wait": True, "timeout": 10}).result["job"]
        # Stopped by itself (exit code 0), before the kill escalation at 3 s; the interpreter's own exit
        # (unloading torch) takes about half a second after the checkpoint.
        assert cancelled["status"] == "cancelled" and cancelled["exit_code"] == 0, cancelled
        assert time.monotonic() - cancel_started < 3.0

        # The checkpoint written on cancel is a valid avatar ...
        loaded = renderer.request("load_avatar", {"path": str(out)}).result
        saved = loaded["info"]["training_steps"]
        assert 3 <= cancelled["step"] <= saved < ENDLESS
        rendered = renderer.request("render", {"avatar_id": loaded["avatar_id"], "width": 64, "height": 64}, arrays)
        assert as_array(rendered.arrays["rgba"]).shape == (1, 64, 64, 4)

        # ... and training resumes from it.
        resumed = list(control.stream("train_start", train_params(tiny_sample_capture, out, iterations=saved + 4, resume=True, stream=True)))
    final = resumed[-1].result["job"]
    assert final["status"] == "done" and final["step"] == saved + 4, final
    resumed_steps = [message.data["step"] for message in resumed[:-1] if message.data["step"]]
    assert resumed_steps and min(resumed_steps) > saved
    assert load_checkpoint(out / "checkpoints").step == saved + 4


def test_streams_end_cleanly_when_clients_vanish_and_watchers_see_the_cancel(server, tiny_sample_capture, tmp_path):
    with server.client() as watcher, server.client() as control:
        stream = watcher.stream("train_start", train_params(tiny_sample_capture, tmp_path / "avatar", iterations=ENDLESS, stream=True))
        job_id = next(stream).data["id"]

        vanishing = server.client()  # follows, then disappears without a goodbye
        follow = vanishing.stream("job_follow", {"job": job_id})
        next(follow)
        vanishing._sock.shutdown(socket.SHUT_RDWR)
        vanishing._sock.close()

        abandoning = server.client()  # stops reading: the client library closes that connection only
        follow = abandoning.stream("job_follow", {"job": job_id})
        next(follow)
        follow.close()
        assert abandoning.closed
        with pytest.raises(wire.ProtocolError, match="closed"):
            abandoning.request("ping")

        state = wait_for_step(control, job_id, 1)
        wait_for_step(control, job_id, state.result["job"]["step"] + 3)  # the job trains on regardless
        wait_for_log(server, "went away")  # the follower's thread noticed and ended
        control.request("job_cancel", {"job": job_id})
        final = list(stream)[-1]
    assert final.kind == "reply" and final.result["job"]["status"] == "cancelled"
    assert_still_serving(server)


def test_failed_jobs_are_reported_in_one_line_and_the_server_carries_on(server, tiny_sample_capture, tiny_trained_avatar, tmp_path):
    with server.client() as client:
        # A real crash: the training process is killed mid-run.
        job = start_training(client, tiny_sample_capture, tmp_path / "killed", iterations=ENDLESS)
        wait_for_step(client, job["id"], 1)
        os.kill(job["pid"], signal.SIGKILL)
        final = client.request("job_follow", {"job": job["id"]}).result["job"]
        assert final["status"] == "failed" and final["exit_code"] == -signal.SIGKILL, final
        assert final["error"].startswith("killed by SIGKILL") and "\n" not in final["error"]
        # The job's own error (an avatar is already there) becomes the one-line reason.
        refused = client.request("train_start", train_params(tiny_sample_capture, tiny_trained_avatar, iterations=5, stream=True)).result["job"]
    assert refused["status"] == "failed" and refused["exit_code"] == 2, refused
    assert "already holds an avatar" in refused["error"] and "\n" not in refused["error"]
    assert str(tiny_trained_avatar) in refused["error"]
    log_text = server.log_text()
    assert f"job {final['id']} failed" in log_text and f"job {refused['id']} failed" in log_text
    assert_still_serving(server)


def test_job_requests_check_their_parameters(server, tiny_sample_capture, tmp_path):
    with server.client() as client:
        before = len(client.request("job_list").result["jobs"])
        cases = [
            ({"capture": str(tmp_path / "missing"), "out": str(tmp_path / "a")}, "params.capture", "is not an existing folder"),
            ({"capture": str(tiny_sample_capture), "out": "relative/avatar"}, "params.out", "must be an absolute path"),
            ({"capture": str(tiny_sample_capture), "out": str(tmp_path), "method": "ram"}, "params.method", "not one of anr"),
            ({"capture": str(tiny_sample_capture), "out": str(tmp_path), "preset": "tpu"}, "params.preset", "not one of cpu, gpu"),
            ({"capture": str(tiny_sample_capture), "out": str(tmp_path), "iterations": 0}, "params.iterations", "outside 1.."),
        ]
        for params, name, text in cases:
            with pytest.raises(wire.RemoteError) as caught:
                client.request("train_start", params)
            assert caught.value.code == wire.BAD_REQUEST and name in caught.value.message and text in caught.value.message
        assert len(client.request("job_list").result["jobs"]) == before  # nothing was started


# ------------------------------------------------------------------ shutdown


def test_sigterm_shuts_down_cleanly_and_stops_jobs(fresh_server, tiny_sample_capture, tmp_path):
    server = fresh_server
    out = tmp_path / "avatar"
    with server.client() as client:
        job = start_training(client, tiny_sample_capture, out, iterations=ENDLESS, validate_every=ENDLESS)
        wait_for_step(client, job["id"], 2)
    assert server.stop(timeout=20) == 0
    assert not server.connection_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(job["pid"], 0)
    assert 2 <= load_checkpoint(out / "checkpoints").step < ENDLESS  # the job checkpointed as it stopped
    log_text = server.log_text()
    assert "shutting down" in log_text and "stopped" in log_text and f"job {job['id']} cancelled" in log_text


def test_shutdown_request_stops_the_server(fresh_server):
    server = fresh_server
    port = server.info().port
    with server.client() as client:
        assert client.request("shutdown").result == {"stopping": True}
    assert server.process.wait(20) == 0
    assert not server.connection_file.exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ------------------------------------------------------------------ schema (in process)


def wire_array(value: np.ndarray) -> wire.WireArray:
    return wire.pack_array("x", np.ascontiguousarray(value))


def test_body_model_cache_keeps_the_most_recently_used():
    cache = BodyModelCache(capacity=2)
    loads = []

    def loader(name):
        return lambda: loads.append(name) or name

    assert cache.get(("a",), loader("a")) == "a" and cache.get(("b",), loader("b")) == "b"
    assert cache.get(("a",), loader("a2")) == "a"  # a hit, and now the most recent
    cache.get(("c",), loader("c"))  # evicts b
    assert len(cache) == 2 and loads == ["a", "b", "c"]
    assert cache.get(("a",), loader("a3")) == "a" and cache.get(("b",), loader("b2")) == "b2"
    assert loads == ["a", "b", "c", "b2"]


def test_schema_cleans_and_names_bad_values(tmp_path):
    schema = {
        "fps": Number(min=1, max=1000),
        "frames": Integer(min=0, default=0),
        "mode": String(choices=("fast", "best"), default="fast"),
        "loop": Boolean(default=False),
        "out": FilePath(default=None),
        "capture": FilePath(exists="dir", default=None),
        "weights": List(Number(), max_length=3, default=[]),
    }
    cleaned = validate_params(schema, {"fps": 29.97, "out": str(tmp_path / "x.mp4"), "capture": str(tmp_path), "weights": [1, 2.5]})
    assert cleaned == {"fps": 29.97, "frames": 0, "mode": "fast", "loop": False, "out": tmp_path / "x.mp4", "capture": tmp_path, "weights": [1.0, 2.5]}
    bad = [
        ({}, "params.fps: required"),
        ({"fps": True}, "params.fps: must be a number"),
        ({"fps": float("nan")}, "params.fps: must be finite"),
        ({"fps": 0.5}, "outside 1..1000"),
        ({"fps": 30, "frames": 2.0}, "params.frames: must be an integer"),
        ({"fps": 30, "mode": "slow"}, "not one of fast, best"),
        ({"fps": 30, "out": "relative/x.mp4"}, "must be an absolute path"),
        ({"fps": 30, "capture": str(tmp_path / "missing")}, "is not an existing folder"),
        ({"fps": 30, "weights": [1, "2"]}, "params.weights[1]: must be a number"),
        ({"fps": 30, "weights": [1, 2, 3, 4]}, "0..3 items"),
        ({"fps": 30, "extra": 1}, "unknown key(s) 'extra'"),
    ]
    for params, text in bad:
        with pytest.raises(BadRequest) as caught:
            validate_params(schema, params)
        assert text in str(caught.value), (params, caught.value)
        assert caught.value.code == "bad_request"


def test_array_schema_checks_dtype_shape_named_sizes_and_finiteness():
    schema = {
        "body_pose": Array(("float32",), ("T", 63)),
        "transl": Array(("float32", "float64"), ("T", 3)),
        "betas": Array(("float32",), (None,), required=False),
    }
    good = {"body_pose": wire_array(np.zeros((5, 63), np.float32)), "transl": wire_array(np.ones((5, 3)))}
    cleaned = validate_arrays(schema, good)
    assert cleaned["body_pose"].shape == (5, 63) and cleaned["transl"].dtype == np.float64 and "betas" not in cleaned
    nan_pose = np.zeros((5, 63), np.float32)
    nan_pose[2, 7] = np.nan
    bad = [
        ({"body_pose": good["body_pose"]}, "arrays.transl: required"),
        ({**good, "body_pose": wire_array(np.zeros((5, 63), np.float16))}, "dtype float16 not allowed"),
        ({**good, "body_pose": wire_array(np.zeros((5, 62), np.float32))}, "does not match (T, 63)"),
        ({**good, "transl": wire_array(np.zeros((4, 3)))}, "axis 0 (T) is 4 but body_pose has T=5"),
        ({**good, "transl": wire_array(np.zeros(3))}, "does not match (T, 3)"),
        ({**good, "body_pose": wire_array(nan_pose)}, "arrays.body_pose: contains NaN"),
        ({**good, "extra": wire_array(np.zeros(1))}, "unexpected 'extra'"),
    ]
    for arrays, text in bad:
        with pytest.raises(BadRequest) as caught:
            validate_arrays(schema, arrays)
        assert text in str(caught.value), (text, caught.value)
    assert set(validate_arrays(ANY_ARRAYS, {"a": wire_array(np.zeros(2))})) == {"a"}


def test_array_schema_accepts_alternative_shapes():
    schema = {
        "transl": Array(("float32",), ("B", 3), required=False),
        "camera_K": Array(("float32",), ("B", 3, 3), or_shapes=((3, 3),)),
    }
    shared = validate_arrays(schema, {"transl": wire_array(np.zeros((4, 3), np.float32)), "camera_K": wire_array(np.eye(3, dtype=np.float32))})
    assert shared["camera_K"].shape == (3, 3)
    per_frame = validate_arrays(schema, {"camera_K": wire_array(np.zeros((4, 3, 3), np.float32))})
    assert per_frame["camera_K"].shape == (4, 3, 3)
    bad = [
        ({"transl": wire_array(np.zeros((4, 3), np.float32)), "camera_K": wire_array(np.zeros((2, 3, 3), np.float32))}, "axis 0 (B) is 2 but transl has B=4"),
        ({"camera_K": wire_array(np.zeros((3, 4), np.float32))}, "arrays.camera_K: shape [3, 4] does not match (3, 3)"),
        ({"camera_K": wire_array(np.zeros(9, np.float32))}, "shape [9] does not match (B, 3, 3) or (3, 3)"),
    ]
    for arrays, text in bad:
        with pytest.raises(BadRequest) as caught:
            validate_arrays(schema, arrays)
        assert text in str(caught.value), (text, caught.value)


def test_a_broken_handler_module_is_reported_not_fatal(tmp_path, monkeypatch):
    package = tmp_path / "fake_handlers"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(
        "from backend.server.registry import handler\n@handler('fake_good_request')\ndef good(request):\n    return {'ok': True}\n"
    )
    (package / "broken.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "HANDLER_PACKAGE", "fake_handlers")
    monkeypatch.setattr(registry, "HANDLERS", {})
    monkeypatch.setattr(registry, "HANDLER_LOAD_ERRORS", {})
    registry.load_handler_modules()
    assert "fake_good_request" in registry.HANDLERS
    assert "ModuleNotFoundError" in registry.HANDLER_LOAD_ERRORS["fake_handlers.broken"]
    with pytest.raises(ValueError, match="already handled"):
        registry.register_handler("fake_good_request", lambda request: {}, params={}, arrays=None)


# ------------------------------------------------------------------ progress (in process)


def test_jsonl_progress_round_trips_through_parse_event(tmp_path):
    stream = io.StringIO()
    progress = JsonlProgress("t", stream=stream, preview_dir=tmp_path)
    progress.update(1, 4, losses={"l1": 0.5, "bad": float("nan")}, message="warming up")
    progress.update(2, 4, preview=np.full((8, 6, 3), 0.5, dtype=np.float32))
    progress.log("hello")
    progress.close()
    events = [parse_event(line) for line in stream.getvalue().splitlines()]
    first, second, logged, end = events
    assert isinstance(first, ProgressEvent) and (first.step, first.total, first.message) == (1, 4, "warming up")
    assert first.losses == {"l1": 0.5, "bad": None} and first.preview is None
    assert second.preview == str(tmp_path / "preview.png") and second.eta_seconds is not None
    from PIL import Image

    with Image.open(second.preview) as image:
        assert image.size == (6, 8) and np.asarray(image)[0, 0, 0] in (127, 128)
    assert logged == {"event": "log", "text": "hello"} and end == {"event": "end", "cancelled": False}
    for junk in ("", "not json", "[1]", '{"event": "progress", "step": "3"}', '{"event": "other"}', "{" * 5000):
        assert parse_event(junk) is None


def test_callback_and_log_progress(tmp_path):
    seen = []
    progress = CallbackProgress(lambda event, preview: seen.append((event.step, event.losses, preview is not None)))
    progress.update(3, 10, losses={"a": 1}, preview=np.zeros((2, 2, 3)))
    assert seen == [(3, {"a": 1.0}, True)] and not progress.cancelled()
    progress.cancel()
    assert progress.cancelled()
    lines = io.StringIO()
    log_progress = LogProgress("train", interval=3600, stream=lines)
    for step in range(1, 11):
        log_progress.update(step, 10, losses={"l": step / 10})
    printed = lines.getvalue().splitlines()
    assert printed[0].startswith("train: step 1/10 (10%) l=0.1") and printed[-1].startswith("train: step 10/10 (100%)")
    assert len(printed) == 2  # throttled: the first and the final step
    with pytest.raises(ValueError, match="progress kind 'loud'"):
        make_progress("loud")
    assert estimate_eta(5, 10, 10.0) == 10.0 and estimate_eta(0, 10, 1.0) is None and estimate_eta(5, None, 1.0) is None


def test_preview_must_be_an_image(tmp_path):
    progress = JsonlProgress(stream=io.StringIO(), preview_dir=tmp_path)
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\|4\)"):
        progress.update(1, 2, preview=np.zeros((3, 8, 8)))


def test_exit_with_parent_stops_when_stdin_closes(tmp_path):
    """The add-on starts the server with --exit-with-parent: when Blender dies its stdin closes."""
    state_dir = tmp_path / "state"
    command = [sys.executable, "-m", "backend", "serve", "--device", "cpu", "--state-dir", str(state_dir), "--exit-with-parent"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=REPOSITORY_ROOT, env=server_environment(tmp_path / "cache"),
    )
    try:
        deadline = time.monotonic() + 60
        while not (state_dir / "connection.json").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        assert process.poll() is None, "an open stdin keeps the server running"
        process.stdin.close()
        assert process.wait(20) == 0
        assert not (state_dir / "connection.json").exists()
        assert "parent process gone" in (state_dir / "server.log").read_text()
    finally:
        if process.poll() is None:
            process.kill()
