"""``python -m backend bench stream``: frame transport over the server's socket, then rendering included.

Starts a real server process, then times ``ping`` requests that return an RGBA test frame
(request sent → all reply bytes in the client, decoded), for uint8 and float16 frames at
each resolution. For comparison, the same bytes go through a bare loopback socket between two
processes (8-byte request, raw reply, no framing, JSON or validation), so the protocol's own
overhead is visible. Also reports the server's CPU use while idle. Targets (loopback):
512² RGBA ≤ 5 ms, 1024² ≤ 20 ms median; idle ≈ 0 % CPU.

Rendering included: a real avatar (``--avatar DIR``, else one trained for a step on the cached
sample capture: the cost does not depend on the weights) renders one held-out pose per
``render`` request at 256² and 512², timed as a round trip, next to the server's own render time
(``render_ms``: posing, rasterizing, networks, conversion to the wire dtype) and ``Avatar.render``
called in this process. Transport = round trip − server render time. Goal: transport ≤ 10 % of
the round trip and ≤ 5 ms at 512².
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blender_addon import wire

TARGET_MS = {512: 5.0, 1024: 20.0}
DTYPES = (("uint8", 1), ("float16", 2))
WARMUP = 5
IDLE_SECONDS = 2.0
RENDER_SIZES = (256, 512)
RENDER_WARMUP = 2
TRANSPORT_SHARE_GOAL = 0.10
TRANSPORT_MS_GOAL_512 = 5.0


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


@dataclass
class RenderTiming:
    in_process: list[float] = field(default_factory=list)  # Avatar.render in this process (s)
    server: list[float] = field(default_factory=list)  # the server's render_ms (s)
    round_trip: list[float] = field(default_factory=list)  # request sent → reply decoded (s)


def _held_out_frame(size: int) -> dict[str, np.ndarray]:
    """One held-out pose of the sample capture and its camera for a ``size``² image, as render arrays."""
    from backend.bench.render import BENCH_CAPTURE
    from backend.capture import SPLIT_TEST, read_tracking
    from backend.data import scale_intrinsics
    from backend.data.sample import cached_sample_capture

    tracking = read_tracking(cached_sample_capture(BENCH_CAPTURE) / "tracking.npz")
    frame = tracking.frames_of(SPLIT_TEST)[:1]
    arrays = {key: value[frame] for key, value in tracking.motion.arrays().items() if key != "betas"}
    arrays["camera_K"] = scale_intrinsics(tracking.camera.K[frame], tracking.camera.image_size, (size, size))
    arrays["camera_world_to_camera"] = tracking.camera.world_to_camera[frame]
    return {key: np.ascontiguousarray(value) for key, value in arrays.items()}


def _time_renders(client: wire.Client, avatar_dir: Path, repeats: int) -> dict[tuple[int, str], RenderTiming]:
    from backend.avatar import load_avatar

    avatar = load_avatar(avatar_dir, "cpu")
    avatar_id = client.request("load_avatar", {"path": str(avatar_dir)}).result["avatar_id"]
    timings: dict[tuple[int, str], RenderTiming] = {}
    for size in RENDER_SIZES:
        arrays = _held_out_frame(size)
        poses = {key: value for key, value in arrays.items() if not key.startswith("camera_")}
        for dtype, _ in DTYPES:
            timing = timings[size, dtype] = RenderTiming()
            params = {"avatar_id": avatar_id, "width": size, "height": size, "dtype": dtype}
            for index in range(RENDER_WARMUP + repeats):  # alternate, so both see the same machine load
                start = time.perf_counter()
                avatar.render(poses, arrays["camera_K"], arrays["camera_world_to_camera"], size)
                in_process = time.perf_counter() - start
                start = time.perf_counter()
                reply = client.request("render", params, arrays)
                round_trip = time.perf_counter() - start
                if reply.arrays["rgba"].shape != (1, size, size, 4):
                    raise RuntimeError(f"unexpected frame shape {reply.arrays['rgba'].shape}")
                if index >= RENDER_WARMUP:
                    timing.in_process.append(in_process)
                    timing.round_trip.append(round_trip)
                    timing.server.append(reply.result["render_ms"] / 1e3)
    return timings


def _bench_avatar_dir(avatar: Path | None, temp: Path) -> Path:
    if avatar is not None:
        return avatar
    from backend.bench.render import _bench_avatar

    print("training a one-step avatar on the sample capture (the render cost does not depend on the weights)")
    return _bench_avatar("anr", temp)


def _print_render_table(timings: dict[tuple[int, str], RenderTiming]) -> None:
    print("\nrendering included: one held-out pose per request, ANR avatar on the CPU (median ms)")
    header = f"{'frame':>11} {'dtype':>8} {'in-process':>11} {'server':>8} {'round trip':>11} {'transport':>10} {'share':>7}"
    print(header)
    print("-" * len(header))
    shares, transport_512 = [], []
    for (size, dtype), timing in timings.items():
        trip = statistics.median(timing.round_trip)
        transport = statistics.median([t - s for t, s in zip(timing.round_trip, timing.server)])
        shares.append(transport / trip)
        if size == 512:
            transport_512.append(transport * 1e3)
        print(
            f"{size:>5}x{size:<5} {dtype:>8} {statistics.median(timing.in_process) * 1e3:11.1f} "
            f"{statistics.median(timing.server) * 1e3:8.1f} {trip * 1e3:11.1f} {transport * 1e3:10.2f} {shares[-1]:7.1%}"
        )
    print("(server: its render_ms - posing, rasterizing, networks, conversion to the wire dtype;\n"
          " transport = round trip - server: encoding, loopback TCP, decoding)")
    verdict = "met" if max(shares) <= TRANSPORT_SHARE_GOAL else "MISSED"
    print(f"goal transport <= {TRANSPORT_SHARE_GOAL:.0%} of the round trip: {verdict} (worst {max(shares):.1%})")
    if transport_512:
        verdict = "met" if max(transport_512) <= TRANSPORT_MS_GOAL_512 else "MISSED"
        print(f"goal transport <= {TRANSPORT_MS_GOAL_512:g} ms at 512x512: {verdict} (worst {max(transport_512):.2f} ms)")


def run(resolutions: list[int], repeats: int, avatar: Path | None = None) -> None:
    """Print the transport table (median and p90 over ``repeats`` frames after a warm-up), then the
    rendering-included table for ``avatar`` (an avatar folder; default: a one-step sample avatar)."""
    if repeats < 1 or not resolutions or min(resolutions) < 1 or max(resolutions) > 4096:
        raise ValueError("bench stream needs repeats >= 1 and resolutions in 1..4096")
    print(f"machine: {machine_description()}; load average {os.getloadavg()[0]:.2f} (other processes slow every figure down)")
    print(f"frames per measurement: {repeats} after {WARMUP} warm-up; RGBA, server->client; loopback TCP\n")
    with tempfile.TemporaryDirectory(prefix="neural-avatar-bench-") as temp:
        avatar_dir = _bench_avatar_dir(avatar, Path(temp))
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
                renders = _time_renders(client, avatar_dir, repeats)
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
    _print_render_table(renders)
