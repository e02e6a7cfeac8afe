"""``python -m backend bench stream``: frame transport over the server's socket, rendering excluded.

Starts a real server process, then times ``ping`` requests that return an RGBA test frame
(request sent → all reply bytes in the client, decoded), for uint8 and float16 frames at
each resolution. For comparison, the same bytes go through a bare loopback socket between two
processes (8-byte request, raw reply, no framing, JSON or validation), so the protocol's own
overhead is visible. Also reports the server's CPU use while idle. Targets (loopback):
512² RGBA ≤ 5 ms, 1024² ≤ 20 ms median; idle ≈ 0 % CPU.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blender_addon import wire

TARGET_MS = {512: 5.0, 1024: 20.0}
DTYPES = (("uint8", 1), ("float16", 2))
WARMUP = 5
IDLE_SECONDS = 2.0


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def _bare_server(port_sender, max_bytes: int) -> None:
    """The baseline peer: for each 8-byte size request, send that many raw bytes."""
    payload = bytes(max_bytes)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port_sender.send(listener.getsockname()[1])
        connection, _ = listener.accept()
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            request = bytearray(8)
            while True:
                view, received = memoryview(request), 0
                while received < 8:
                    count = connection.recv_into(view[received:])
                    if not count:
                        return
                    received += count
                (size,) = struct.unpack("<Q", request)
                if size == 0:
                    return
                connection.sendall(memoryview(payload)[:size])


def _time_bare(sizes: list[int], repeats: int) -> dict[int, list[float]]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_bare_server, args=(sender, max(sizes)), daemon=True)
    process.start()
    try:
        port = receiver.recv()
        timings: dict[int, list[float]] = {}
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for size in sizes:
                samples = []
                for index in range(WARMUP + repeats):
                    start = time.perf_counter()
                    sock.sendall(struct.pack("<Q", size))
                    buffer = bytearray(size)  # like the protocol: a fresh buffer per frame
                    view, received = memoryview(buffer), 0
                    while received < size:
                        received += sock.recv_into(view[received:])
                    if index >= WARMUP:
                        samples.append(time.perf_counter() - start)
                timings[size] = samples
            sock.sendall(struct.pack("<Q", 0))
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
    return timings


def _start_server(state_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "backend", "serve", "--port", "0", "--device", "cpu", "--state-dir", str(state_dir)]
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3


def run(resolutions: list[int], repeats: int) -> None:
    """Print the transport table (median and p90 over ``repeats`` frames after a warm-up)."""
    if repeats < 1 or not resolutions or min(resolutions) < 1 or max(resolutions) > 4096:
        raise ValueError("bench stream needs repeats >= 1 and resolutions in 1..4096")
    print(f"machine: {machine_description()}")
    print(f"frames per measurement: {repeats} after {WARMUP} warm-up; RGBA, server->client; loopback TCP\n")
    with tempfile.TemporaryDirectory(prefix="neural-avatar-bench-") as temp:
        state_dir = Path(temp) / "state"
        server = _start_server(state_dir)
        try:
            try:
                info = wire.wait_for_connection_file(state_dir / "connection.json", timeout=60)
            except wire.ProtocolError:
                server.kill()
                raise RuntimeError(f"the server did not start:\n{server.communicate()[1].decode(errors='replace')}") from None
            with wire.Client(info.host, info.port, info.token, timeout=60, client_name="bench stream") as client:
                protocol: dict[tuple[int, str], list[float]] = {}
                for side in resolutions:
                    for dtype, _ in DTYPES:
                        params = {"width": side, "height": side, "dtype": dtype}
                        samples = []
                        for index in range(WARMUP + repeats):
                            start = time.perf_counter()
                            reply = client.request("ping", params)
                            elapsed = time.perf_counter() - start
                            if reply.arrays["image"].shape != (side, side, 4):
                                raise RuntimeError(f"unexpected frame shape {reply.arrays['image'].shape}")
                            if index >= WARMUP:
                                samples.append(elapsed)
                        protocol[side, dtype] = samples
                before = _cpu_seconds(server.pid)
                time.sleep(IDLE_SECONDS)
                after = _cpu_seconds(server.pid)
                client.request("shutdown")
            server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()

    sizes = sorted({side * side * 4 * itemsize for side in resolutions for _, itemsize in DTYPES})
    bare = _time_bare(sizes, repeats)
    header = f"{'frame':>11} {'dtype':>8} {'MB':>6} {'median ms':>10} {'p90 ms':>8} {'MB/s':>8} {'frames/s':>9} {'bare ms':>8} {'overhead':>9}"
    print(header)
    print("-" * len(header))
    for side in resolutions:
        for dtype, itemsize in DTYPES:
            nbytes = side * side * 4 * itemsize
            median, p90 = _summary(protocol[side, dtype])
            bare_median, _ = _summary(bare[nbytes])
            print(
                f"{side:>5}x{side:<5} {dtype:>8} {nbytes / 1e6:6.2f} {median:10.3f} {p90:8.3f} "
                f"{nbytes / 1e6 / (median / 1e3):8.0f} {1e3 / median:9.1f} {bare_median:8.3f} {median - bare_median:+8.3f}ms"
            )
    print()
    for side, target in TARGET_MS.items():
        if side in resolutions:
            worst = max(_summary(protocol[side, dtype])[0] for dtype, _ in DTYPES)
            verdict = "met" if worst <= target else "MISSED"
            print(f"target {side}x{side} RGBA <= {target:g} ms median: {verdict} (slowest dtype {worst:.3f} ms)")
    if before is not None and after is not None:
        print(f"server CPU while idle: {100.0 * (after - before) / IDLE_SECONDS:.2f} % over {IDLE_SECONDS:g} s")
    else:
        print("server CPU while idle: not measured (needs Linux /proc)")
    print("rendering included: not measured yet (no avatar renderer in this build)")
