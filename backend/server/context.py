"""State shared by all connections of one server process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from backend.server.jobs import JobManager


@dataclass
class ServerContext:
    """Handed to every handler as ``request.server``.

    ``avatars`` maps avatar ids to :class:`backend.server.handlers.avatars.LoadedAvatar`
    (filled by ``load_avatar``); guard every access to the dict with ``avatars_lock``, since
    connections run in parallel threads (each avatar's own lock serialises its renders).
    """

    device: str
    state_dir: Path
    log_file: Path
    jobs: "JobManager"
    request_shutdown: Callable[[], None]
    started: float = field(default_factory=time.time)
    avatars: dict[str, Any] = field(default_factory=dict)
    avatars_lock: threading.Lock = field(default_factory=threading.Lock)
