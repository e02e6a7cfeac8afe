"""Following a backend job (training, baking) for the panel: progress, losses, ETA, preview.

Interactive Blender: a ``bpy.app.timers`` callback asks ``job_status`` at most twice a second,
without waiting (the reply arrives through the client's drain timer); the panel draws the
monitor's last state. Background mode (``blender -b``): timers never fire, so
:meth:`JobMonitor.wait_steps` polls in a loop, printing one line per change, until the job ends.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Generator

import bpy
import numpy as np

from .backend_process import redraw_sidebars
from .client import BackendClient, BackendError, Ticket
from .viewport import FrameWriter

POLL_SECONDS = 0.5  # job_status at most at 2 Hz
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
TRAINING_PREVIEW_IMAGE = "Neural Avatar training preview"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


class JobMonitor:
    """The state of the one job of a kind this Blender session follows."""

    def __init__(self, title: str, preview_image: str | None = None) -> None:
        self.title = title
        self.state: dict[str, Any] = {}
        self.error = ""  # why following stopped early (connection lost, job unknown...)
        self.on_finished: Callable[[dict[str, Any]], None] | None = None
        self._preview = FrameWriter(preview_image) if preview_image else None
        self._client: BackendClient | None = None
        self._asking: Ticket | None = None
        self._poll_timer = self._poll  # one object: bpy.app.timers tells timers apart by identity

    # ---------------------------------------------------------------- state for the panel

    @property
    def job_id(self) -> str:
        return str(self.state.get("id", ""))

    @property
    def status(self) -> str:
        return str(self.state.get("status", ""))

    @property
    def running(self) -> bool:
        return self.status == RUNNING and not self.error

    @property
    def fraction(self) -> float:
        total = self.state.get("total") or 0
        return min(1.0, max(0.0, float(self.state.get("step", 0)) / total)) if total else 0.0

    def progress_text(self) -> str:
        step, total = self.state.get("step", 0), self.state.get("total")
        text = f"{step}/{total}" if total else f"{step}"
        if self.running:
            return f"{text} · ETA {format_seconds(self.state.get('eta_seconds'))}"
        return f"{text} · {self.status}"

    def losses_text(self, limit: int = 4) -> str:
        losses = self.state.get("losses") or {}
        return "  ".join(f"{name} {value:.4g}" for name, value in list(losses.items())[:limit] if isinstance(value, (int, float)))

    def summary_line(self) -> str:
        """One printable line: title, status, step, losses, ETA or error."""
        parts = [f"{self.title} {self.job_id}: {self.status}", self.progress_text()]
        losses = self.losses_text(limit=8)
        if losses:
            parts.append(losses)
        if self.state.get("message"):
            parts.append(str(self.state["message"]))
        if self.state.get("error"):
            parts.append(f"error: {self.state['error']}")
        return " | ".join(parts)

    @property
    def preview_image(self) -> bpy.types.Image | None:
        return bpy.data.images.get(self._preview.image_name) if self._preview else None

    # ---------------------------------------------------------------- following

    def follow(self, client: BackendClient, state: dict[str, Any], on_finished: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Start following the job whose state ``state`` is (as ``train_start`` / ``bake`` return it)."""
        self.stop()
        self._client, self.state, self.error, self.on_finished = client, dict(state), "", on_finished
        if not client.background and self.running:
            bpy.app.timers.register(self._poll_timer, first_interval=POLL_SECONDS, persistent=True)

    def update(self, result: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Take a ``job_status`` / ``job_cancel`` answer; calls ``on_finished`` once the job ended."""
        was_running = self.running
        self.state = dict(result.get("job") or {})
        preview = arrays.get("preview")
        if self._preview is not None and preview is not None and preview.ndim == 3 and preview.shape[2] == 4:
            image = self._preview.write(preview, premultiplied=False)  # PNG previews hold straight alpha
            if image.preview is not None:  # the panel's thumbnail, once it exists
                image.preview.reload()
        if was_running and not self.running and self.on_finished is not None:
            callback, self.on_finished = self.on_finished, None
            callback(self.state)

    def forget(self) -> None:
        """Drop the job (e.g. its backend is gone): the panel shows nothing."""
        self.stop()
        self.state, self.error, self.on_finished, self._client = {}, "", None, None

    def stop(self) -> None:
        """Stop polling (the job itself keeps running on the backend)."""
        if bpy.app.timers.is_registered(self._poll_timer):
            bpy.app.timers.unregister(self._poll_timer)
        self._asking = None

    def _status_params(self) -> dict[str, Any]:
        return {"job": self.job_id, "preview": self._preview is not None}

    def _poll(self) -> float | None:
        """Timer (main thread): ask for the job's state unless a question is still open."""
        client = self._client
        if client is None or client.closed:
            self.error = f"the backend connection closed; the {self.title.lower()} job's state is unknown"
            redraw_sidebars()
        if client is None or client.closed or not self.running:
            return None  # Blender drops the timer
        if self._asking is None or self._asking.done:
            self._asking = client.submit("job_status", self._status_params(), on_done=self._answered)
        return POLL_SECONDS

    def _answered(self, ticket: Ticket) -> None:
        try:
            reply = ticket.result()
        except BackendError as error:
            self.error = f"lost track of the {self.title.lower()} job: {error}"
            self.stop()
        else:
            if (reply.result.get("job") or {}).get("id") == self.job_id:  # not a late answer about an earlier job
                self.update(reply.result, reply.arrays)
        redraw_sidebars()

    def wait_steps(self, client: BackendClient, report: Callable[[str], None] = print) -> Generator[Ticket, None, dict[str, Any]]:
        """Step (background mode): poll until the job ends, reporting each change; returns the final state."""
        last = ""
        while self.running:
            time.sleep(POLL_SECONDS)
            asking = client.submit("job_status", self._status_params())
            yield asking
            reply = asking.result()
            self.update(reply.result, reply.arrays)
            line = self.summary_line()
            if line != last:
                report(line)
                last = line
        return self.state

    def cancel_steps(self, client: BackendClient) -> Generator[Ticket, None, dict[str, Any]]:
        """Step: ask the backend to stop the job (waits for it to stop in background mode)."""
        params: dict[str, Any] = {"job": self.job_id}
        if client.background:
            params.update(wait=True, timeout=30.0)
        cancelling = client.submit("job_cancel", params, timeout=60.0)
        yield cancelling
        reply = cancelling.result()
        self.update(reply.result, reply.arrays)
        return self.state


training = JobMonitor("Training", preview_image=TRAINING_PREVIEW_IMAGE)
baking = JobMonitor("Bake")


def register() -> None:
    pass


def unregister() -> None:
    for monitor in (training, baking):
        monitor.stop()
        monitor.forget()
