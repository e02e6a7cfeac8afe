"""The diagnostic ``probe`` job kind (request ``probe_start``): checks the job machinery end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.server.jobs import job_kind
from backend.server.schema import Integer, Number


@job_kind(
    "probe",
    request="probe_start",
    params={
        "steps": Integer(min=1, max=100_000, default=100),
        "step_seconds": Number(min=0.0, max=5.0, default=0.05),
        "fail_at_step": Integer(min=1, default=None, doc="crash deliberately at this step (tests failure reporting)"),
        "preview_every": Integer(min=0, max=100_000, default=10),
    },
)
def probe_argv(params: dict[str, Any], job_dir: Path) -> list[str]:
    """Paced gradient descent with progress, previews and checkpoints (parameters read from job.json)."""
    return ["-m", "backend.server.probe_job"]
