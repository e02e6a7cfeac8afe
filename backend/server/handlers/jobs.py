"""Requests about running jobs: status (with the preview image), list, follow, cancel."""

from __future__ import annotations

from backend.server.jobs import follow_job
from backend.server.registry import Request, Result, handler
from backend.server.schema import Boolean, Number, String

JOB_ID = String(max_length=128, doc="the id returned when the job was started")


@handler("job_status", params={"job": JOB_ID, "preview": Boolean(default=False, doc="attach the latest preview as RGBA uint8")})
def job_status(request: Request) -> Result:
    """A job's state: status, step/total, losses, ETA, message, error; optionally its preview image."""
    jobs = request.server.jobs
    job = jobs.get(request.params["job"])
    state, _, _ = jobs.snapshot(job)
    arrays = {}
    if request.params["preview"]:
        preview = jobs.load_preview(job)
        if preview is not None:
            arrays["preview"] = preview
    return Result({"job": state}, arrays)


@handler("job_list")
def job_list(request: Request) -> dict:
    """All jobs this server knows (running and recently finished), oldest first."""
    jobs = request.server.jobs
    return {"jobs": [jobs.snapshot(job)[0] for job in jobs.jobs()]}


@handler("job_follow", params={"job": JOB_ID})
def job_follow(request: Request) -> Result:
    """Stream a running job's progress events until it ends (e.g. after the add-on reconnected)."""
    return follow_job(request, request.server.jobs.get(request.params["job"]))


@handler(
    "job_cancel",
    params={
        "job": JOB_ID,
        "wait": Boolean(default=False, doc="reply only once the job has stopped"),
        "timeout": Number(min=0.0, max=60.0, default=10.0, doc="longest wait in seconds"),
    },
)
def job_cancel(request: Request) -> dict:
    """Ask a job to stop: it saves a checkpoint and exits (terminated/killed if it does not)."""
    jobs = request.server.jobs
    job = jobs.get(request.params["job"])
    jobs.cancel(job)
    if request.params["wait"]:
        jobs.wait_finished(job, request.params["timeout"])
    return {"job": jobs.snapshot(job)[0]}
