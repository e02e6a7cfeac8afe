"""Progress reporting and cancellation for long-running backend functions.

A long function takes a :class:`Progress` and calls ``update(step, total, losses=…,
message=…, preview=…)``, ``log(text)`` and checks ``cancelled()`` between steps (saving a
checkpoint and returning when it is true). Where the reports go is the caller's choice:

- ``tqdm``: a bar on a terminal; ``log``: a plain line every few seconds (``auto`` picks one);
- ``jsonl``: one JSON object per line on stdout, for server jobs (see :func:`parse_event`);
  preview images are written as PNG files into the job folder and referenced by path;
- :class:`CallbackProgress`: a plain callback, for in-process use;
- ``none``: silent.

Cancellation: Ctrl-C (SIGINT) asks politely the first time (a second one interrupts); server
jobs are also cancelled by a ``cancel`` line on stdin, or by stdin closing (the server went away).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

JOB_DIR_ENV = "NEURAL_AVATAR_JOB_DIR"  # where a jsonl child writes previews (set by the server)
JOB_CONTROL_ENV = "NEURAL_AVATAR_JOB_CONTROL"  # "stdin": a "cancel" line or EOF on stdin cancels
CANCEL_LINE = "cancel"
PREVIEW_NAME = "preview.png"
KINDS = ("auto", "tqdm", "jsonl", "log", "none")


@dataclass
class ProgressEvent:
    """One progress report, as written by the jsonl reporter and read back by the server."""

    step: int
    total: int | None = None
    losses: dict[str, float | None] = field(default_factory=dict)
    message: str = ""
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0
    preview: str | None = None  # path of the latest preview PNG

    def to_json(self) -> dict[str, Any]:
        return {"event": "progress", **asdict(self)}


def _finite_or_none(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None  # a diverged loss is reported, not a crash


def estimate_eta(step: int, total: int | None, elapsed: float, first_step: int = 0) -> float | None:
    """Seconds left at the average rate so far (None when unknown)."""
    done = step - first_step
    if not total or done <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - step) * elapsed / done)


def _preview_rgba(preview: Any):
    """An (H, W, 3|4) uint8 or [0, 1] float image (numpy or torch) as a uint8 numpy array."""
    import numpy as np

    if hasattr(preview, "detach"):  # torch tensor, without importing torch here
        preview = preview.detach().float().cpu().numpy()
    image = np.asarray(preview)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"preview image must have shape (H, W, 3|4), got {image.shape}")
    if image.dtype != np.uint8:
        image = (np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(image)


def write_preview_png(preview: Any, path: Path) -> Path:
    """Write a preview PNG atomically (the server may read it at any moment)."""
    from PIL import Image

    image = _preview_rgba(preview)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image, "RGBA" if image.shape[2] == 4 else "RGB").save(temp, format="PNG", compress_level=1)
    os.replace(temp, path)
    return path


class Progress:
    """Base reporter: tracks rate and cancellation; reports nothing (the ``none`` kind)."""

    def __init__(self, description: str = ""):
        self.description = description
        self._cancel = threading.Event()
        self._start = time.monotonic()
        self._first_step: int | None = None
        self._rate_origin = self._start

    def update(
        self,
        step: int,
        total: int | None = None,
        *,
        losses: dict[str, Any] | None = None,
        message: str = "",
        preview: Any = None,
    ) -> None:
        """Report that ``step`` of ``total`` is done; ``preview`` is an (H, W, 3|4) image."""
        if self._first_step is None:
            # The rate is measured from the first report on, so set-up time (data loading, a resumed
            # run's earlier steps) does not distort the estimate.
            self._first_step, self._rate_origin = step, time.monotonic()
        event = ProgressEvent(
            step=int(step),
            total=int(total) if total is not None else None,
            losses={str(k): _finite_or_none(v) for k, v in (losses or {}).items()},
            message=str(message),
            elapsed_seconds=time.monotonic() - self._start,
        )
        event.eta_seconds = estimate_eta(event.step, event.total, time.monotonic() - self._rate_origin, self._first_step)
        self._report(event, preview)

    def _report(self, event: ProgressEvent, preview: Any) -> None:
        pass

    def log(self, text: str) -> None:
        pass

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def close(self) -> None:
        pass

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format_event(description: str, event: ProgressEvent) -> str:
    parts = [f"{description}: " if description else "", f"step {event.step}"]
    if event.total:
        parts.append(f"/{event.total} ({100.0 * event.step / event.total:.0f}%)")
    for name, value in event.losses.items():
        parts.append(f" {name}={value:.4g}" if value is not None else f" {name}=nan")
    if event.eta_seconds is not None:
        parts.append(f" eta {event.eta_seconds:.0f}s")
    if event.message:
        parts.append(f" - {event.message}")
    return "".join(parts)


class LogProgress(Progress):
    """Plain lines on stderr, at most one every ``interval`` seconds (for logs and pipes)."""

    def __init__(self, description: str = "", interval: float = 5.0, stream: TextIO | None = None):
        super().__init__(description)
        self.interval = interval
        self._stream = stream or sys.stderr
        self._last = -math.inf

    def _report(self, event: ProgressEvent, preview: Any) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval or (event.total and event.step >= event.total):
            self._last = now
            print(_format_event(self.description, event), file=self._stream, flush=True)

    def log(self, text: str) -> None:
        print(text, file=self._stream, flush=True)


class TqdmProgress(Progress):
    """A tqdm bar with the losses as postfix."""

    def __init__(self, description: str = ""):
        super().__init__(description)
        from tqdm import tqdm

        self._bar = tqdm(desc=description or None, dynamic_ncols=True)

    def _report(self, event: ProgressEvent, preview: Any) -> None:
        if event.total is not None and self._bar.total != event.total:
            self._bar.total = event.total
        self._bar.n = event.step
        postfix = {k: (f"{v:.4g}" if v is not None else "nan") for k, v in event.losses.items()}
        if event.message:
            postfix["note"] = event.message
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def log(self, text: str) -> None:
        self._bar.write(text)

    def close(self) -> None:
        self._bar.close()


class JsonlProgress(Progress):
    """JSON lines for the server (see :func:`parse_event`); previews as PNG files in ``preview_dir``."""

    def __init__(self, description: str = "", *, stream: TextIO, preview_dir: Path, listen_stdin: bool = False):
        super().__init__(description)
        self._stream = stream
        self._lock = threading.Lock()
        self.preview_dir = preview_dir
        if listen_stdin:
            threading.Thread(target=self._watch_stdin, name="progress-stdin", daemon=True).start()

    def _watch_stdin(self) -> None:
        try:
            for line in sys.stdin:
                if line.strip() == CANCEL_LINE:
                    break
        except (OSError, ValueError):
            pass
        self.cancel()  # a cancel line, or EOF: the server asked us to stop or went away

    def _emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, separators=(",", ":"))
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def _report(self, event: ProgressEvent, preview: Any) -> None:
        if preview is not None:
            event.preview = str(write_preview_png(preview, self.preview_dir / PREVIEW_NAME))
        self._emit(event.to_json())

    def log(self, text: str) -> None:
        self._emit({"event": "log", "text": str(text)})

    def close(self) -> None:
        self._emit({"event": "end", "cancelled": self.cancelled()})


class CallbackProgress(Progress):
    """In-process reporting: ``on_update(event, preview)`` and ``on_log(text)``; cancel with ``cancel()``."""

    def __init__(
        self,
        on_update: Callable[[ProgressEvent, Any], None],
        on_log: Callable[[str], None] | None = None,
        description: str = "",
    ):
        super().__init__(description)
        self._on_update = on_update
        self._on_log = on_log

    def _report(self, event: ProgressEvent, preview: Any) -> None:
        self._on_update(event, preview)

    def log(self, text: str) -> None:
        if self._on_log is not None:
            self._on_log(text)


def parse_event(line: str) -> dict[str, Any] | ProgressEvent | None:
    """Read one line written by :class:`JsonlProgress`.

    Returns a :class:`ProgressEvent`, a ``{"event": "log"|"end", …}`` dict, or None for a
    line that is not a well-formed event (stray output is ignored, never trusted).
    """
    try:
        record = json.loads(line, parse_constant=lambda name: None)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    kind = record.get("event")
    if kind == "log" and isinstance(record.get("text"), str):
        return {"event": "log", "text": record["text"]}
    if kind == "end":
        return {"event": "end", "cancelled": bool(record.get("cancelled"))}
    if kind != "progress" or type(record.get("step")) is not int:
        return None
    total, losses, eta = record.get("total"), record.get("losses"), record.get("eta_seconds")
    preview = record.get("preview")
    return ProgressEvent(
        step=record["step"],
        total=total if type(total) is int else None,
        losses={str(k): (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in losses.items()}
        if isinstance(losses, dict)
        else {},
        message=str(record.get("message") or "")[:500],
        eta_seconds=float(eta) if isinstance(eta, (int, float)) and math.isfinite(eta) else None,
        elapsed_seconds=float(record["elapsed_seconds"]) if isinstance(record.get("elapsed_seconds"), (int, float)) else 0.0,
        preview=preview if isinstance(preview, str) else None,
    )


def _install_sigint(progress: Progress) -> None:
    """First Ctrl-C cancels politely (the function checkpoints and returns); the second interrupts."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if progress.cancelled():
            raise KeyboardInterrupt
        progress.cancel()
        progress.log("cancelling: finishing the current step and saving (Ctrl-C again to abort)")

    signal.signal(signal.SIGINT, on_sigint)


_events_stream: TextIO | None = None


def _claim_stdout_for_events() -> TextIO:
    """Keep the real stdout for events and send everything else printed (even by C code) to stderr."""
    global _events_stream
    if _events_stream is None:
        sys.stdout.flush()
        _events_stream = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
    return _events_stream


def make_progress(kind: str, description: str = "", *, preview_dir: Path | None = None) -> Progress:
    """The reporter for ``--progress KIND`` (auto = tqdm on a terminal, else plain log lines)."""
    if kind not in KINDS:
        raise ValueError(f"progress kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "auto":
        kind = "tqdm" if sys.stderr.isatty() else "log"
    progress: Progress
    if kind == "jsonl":
        folder = preview_dir or Path(os.environ.get(JOB_DIR_ENV) or tempfile.mkdtemp(prefix="neural-avatar-progress-"))
        progress = JsonlProgress(
            description,
            stream=_claim_stdout_for_events(),
            preview_dir=Path(folder),
            listen_stdin=os.environ.get(JOB_CONTROL_ENV) == "stdin",
        )
    elif kind == "tqdm":
        progress = TqdmProgress(description)
    elif kind == "log":
        progress = LogProgress(description)
    else:
        progress = Progress(description)
    _install_sigint(progress)
    return progress
