"""Long work (training, baking, sample data) as child processes that the server watches.

A crash in a job cannot take the server down, and renders are never queued behind one.
Each job runs ``python -m backend --progress jsonl <subcommand> …`` in its own folder
(``STATE_DIR/jobs/<id>/``: ``job.json`` with the request, ``stderr.log``, previews and the
job's outputs) and reports JSON lines on stdout (see ``backend.progress``). Cancelling writes
``cancel`` to the child's stdin and closes it; the child checkpoints and exits, and is
terminated, then killed, if it has not exited after ``cancel_grace`` seconds.

A module that owns a kind of job registers it from ``backend/server/handlers/``::

    from backend.server.jobs import JobSetup, backend_argv, job_kind
    from backend.server.schema import FilePath, Integer

    @job_kind("train", request="train_start",
              params={"capture": FilePath(exists="dir"), "iterations": Integer(min=1)})
    def train_argv(setup: JobSetup) -> list[str]:
        return backend_argv("train", str(setup.params["capture"]), "--out", ...)

This also registers the request ``train_start`` (its params plus ``stream``: when true the
reply is preceded by ``progress`` events with the job's state and preview images). A kind that
declares ``arrays`` gets them in ``setup.arrays`` and writes what the child needs into
``setup.job_dir`` before returning the command line; an ``AvatarError`` raised there refuses
the request (and the job folder is removed).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from blender_addon import wire
from backend.progress import JOB_CONTROL_ENV, JOB_DIR_ENV, ProgressEvent, parse_event
from backend.server.registry import NO_ARRAYS, Request, RequestError, Result, register_handler
from backend.server.schema import Array, Boolean, Field

log = logging.getLogger("backend.server")

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # so ``-m backend`` resolves in the child
JOB_FILE = "job.json"
STDERR_FILE = "stderr.log"
RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
MAX_LINE = 64 << 10
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class JobSetup:
    """What a job kind's builder gets: the request's validated params and arrays, the job's own
    folder (its working directory, empty so far) and the server's device."""

    params: dict[str, Any]
    arrays: Mapping[str, np.ndarray]
    job_dir: Path
    device: str


BuildArgv = Callable[[JobSetup], list[str]]


@dataclass(frozen=True)
class JobKind:
    name: str
    request: str
    params: Mapping[str, Field]
    build_argv: BuildArgv
    doc: str = ""


JOB_KINDS: dict[str, JobKind] = {}


def backend_argv(subcommand: str, *arguments: str) -> list[str]:
    """Interpreter arguments for ``python -m backend --progress jsonl SUBCOMMAND …``."""
    return ["-m", "backend", "--progress", "jsonl", subcommand, *arguments]


def job_kind(
    name: str, *, request: str, params: Mapping[str, Field] | None = None, arrays: Mapping[str, Array] = NO_ARRAYS
) -> Callable[[BuildArgv], BuildArgv]:
    """Register a kind of job and the request that starts it (see the module docstring)."""

    def register(build_argv: BuildArgv) -> BuildArgv:
        declared = dict(params or {})
        if "stream" in declared:
            raise ValueError(f"job kind {name!r}: 'stream' is reserved for the start request")
        if name in JOB_KINDS and JOB_KINDS[name].build_argv is not build_argv:
            raise ValueError(f"job kind {name!r} is already registered")
        kind = JobKind(name, request, declared, build_argv, (build_argv.__doc__ or "").strip())
        JOB_KINDS[name] = kind

        def start(request: Request) -> Result:
            return _start_job(kind, request)

        start.__doc__ = f"Start a {name!r} job. {kind.doc}"
        start.__module__ = build_argv.__module__
        register_handler(
            request,
            start,
            params={**declared, "stream": Boolean(default=False, doc="stream progress events until the job ends")},
            arrays=arrays,
        )
        return build_argv

    return register


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclass
class Job:
    id: str
    kind: str
    job_dir: Path
    params: dict[str, Any]
    process: subprocess.Popen[bytes] = field(repr=False)
    status: str = RUNNING
    created: float = field(default_factory=time.time)
    finished: float | None = None
    exit_code: int | None = None
    error: str = ""
    progress: ProgressEvent | None = None
    preview_version: int = 0
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    cancel_requested: bool = False
    escalated: bool = False
    version: int = 0

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def snapshot(self) -> dict[str, Any]:
        """The job's state as JSON (what ``job_status`` and progress events carry)."""
        progress = self.progress
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "pid": self.process.pid,
            "params": self.params,
            "job_dir": str(self.job_dir),
            "created": self.created,
            "finished": self.finished,
            "exit_code": self.exit_code,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "step": progress.step if progress else 0,
            "total": progress.total if progress else None,
            "losses": dict(progress.losses) if progress else {},
            "eta_seconds": progress.eta_seconds if progress else None,
            "elapsed_seconds": progress.elapsed_seconds if progress else 0.0,
            "message": progress.message if progress else "",
            "preview": progress.preview if progress else None,
            "log": list(self.log_tail),
        }


def _stderr_tail(path: Path, max_bytes: int = 8192) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - max_bytes))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def _failure_reason(exit_code: int, stderr_tail: list[str]) -> str:
    """One line for a failed job: the signal that killed it, else the last line it printed (its error)."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"killed by {name} (exit code {exit_code}); see {STDERR_FILE} in the job folder"
    reason = stderr_tail[-1].strip() if stderr_tail else ""
    return (reason or f"exited with code {exit_code}")[:300]


class JobManager:
    """Starts job children, follows their progress and answers for their state (thread-safe)."""

    def __init__(
        self,
        jobs_dir: Path,
        *,
        python: str = sys.executable,
        cancel_grace: float = 3.0,
        kill_grace: float = 2.0,
        keep_finished: int = 100,
    ):
        self.jobs_dir = jobs_dir
        self.python = python
        self.cancel_grace = cancel_grace
        self.kill_grace = kill_grace
        self.keep_finished = keep_finished
        self._jobs: dict[str, Job] = {}
        self._changed = threading.Condition()
        self._closed = False

    # ---------------------------------------------------------- starting

    def start(
        self, kind: JobKind, params: dict[str, Any], arrays: Mapping[str, np.ndarray] | None = None, device: str = "cpu"
    ) -> Job:
        self._refuse_if_closed()
        job_id = f"{kind.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir(parents=True, mode=0o700)
        try:
            argv = kind.build_argv(JobSetup(params, arrays or {}, job_dir, device))
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)  # a refused request leaves no job behind
            raise
        record = {"id": job_id, "kind": kind.name, "params": _jsonable(params), "argv": argv, "created": time.time()}
        (job_dir / JOB_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        env = dict(os.environ)
        env[JOB_DIR_ENV] = str(job_dir)
        env[JOB_CONTROL_ENV] = "stdin"
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH")]))
        # Own process group: a Ctrl-C meant for the server reaches jobs only through cancel().
        isolation: dict[str, Any] = (
            {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP} if os.name == "nt" else {"start_new_session": True}
        )
        with self._changed:
            self._refuse_if_closed()
            with (job_dir / STDERR_FILE).open("wb") as stderr:
                try:
                    process = subprocess.Popen(
                        [self.python, *argv],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=stderr,
                        cwd=job_dir,
                        env=env,
                        **isolation,
                    )
                except OSError as error:
                    raise RequestError("job_start", f"cannot start {kind.name} job with {self.python}: {error}") from None
            job = Job(job_id, kind.name, job_dir, record["params"], process)
            self._jobs[job_id] = job
            self._forget_old_jobs()
        log.info("job %s started: %s %s", job_id, self.python, " ".join(argv))
        threading.Thread(target=self._watch, args=(job,), name=f"job-{job_id}", daemon=True).start()
        return job

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise RequestError("shutting_down", "the server is shutting down; no new jobs")

    def _forget_old_jobs(self) -> None:
        finished = [job for job in self._jobs.values() if not job.running]
        for job in sorted(finished, key=lambda j: j.created)[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]

    # ---------------------------------------------------------- following

    def _touch(self, job: Job) -> None:
        job.version += 1
        self._changed.notify_all()

    def _watch(self, job: Job) -> None:
        stdout = job.process.stdout
        assert stdout is not None
        while True:
            raw = stdout.readline(MAX_LINE)
            if not raw:
                break
            event = parse_event(raw.decode("utf-8", "replace"))
            if event is None:
                log.debug("job %s: ignored output line %r", job.id, raw[:200])
                continue
            if isinstance(event, ProgressEvent):
                with self._changed:
                    job.progress = event
                    if event.preview:
                        job.preview_version += 1
                    self._touch(job)
            elif event["event"] == "log":
                log.info("job %s: %s", job.id, event["text"][:500])
                with self._changed:
                    job.log_tail.append(event["text"][:500])
                    self._touch(job)
        exit_code = job.process.wait()
        tail = _stderr_tail(job.job_dir / STDERR_FILE)
        with self._changed:
            cancelled = job.cancel_requested and (exit_code == 0 or job.escalated)
        status = CANCELLED if cancelled else DONE if exit_code == 0 else FAILED
        error = ""
        if status == FAILED:
            error = _failure_reason(exit_code, tail)
            log.error("job %s failed (exit code %s); stderr tail:\n%s", job.id, exit_code, "\n".join(tail[-30:]))
        else:
            log.info("job %s %s (exit code %s)", job.id, status, exit_code)
        with self._changed:  # published after logging, so a client told "failed" finds it in the log
            job.exit_code, job.finished, job.status, job.error = exit_code, time.time(), status, error
            self._touch(job)

    def wait_for_change(self, job: Job, seen_version: int, timeout: float | None = None) -> None:
        """Block until the job's state moves past ``seen_version`` (or it ended, or ``timeout``)."""
        with self._changed:
            self._changed.wait_for(lambda: job.version != seen_version or not job.running, timeout)

    def get(self, job_id: str) -> Job:
        with self._changed:
            job = self._jobs.get(job_id)
        if job is None:
            raise RequestError(wire.NOT_FOUND, f"no job {job_id!r} (finished jobs are kept for a while only)")
        return job

    def jobs(self) -> list[Job]:
        with self._changed:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def snapshot(self, job: Job) -> tuple[dict[str, Any], int, int]:
        """A consistent (state, version, preview_version) triple."""
        with self._changed:
            return job.snapshot(), job.version, job.preview_version

    def load_preview(self, job: Job) -> np.ndarray | None:
        """The latest preview as an (H, W, 4) uint8 array, if the job wrote one into its folder."""
        path_text = job.progress.preview if job.progress else None
        if not path_text:
            return None
        path = Path(path_text).resolve()
        if not path.is_relative_to(job.job_dir.resolve()):
            log.warning("job %s: preview %s is outside its folder; ignored", job.id, path)
            return None
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as image:
                return np.ascontiguousarray(np.asarray(image.convert("RGBA")))
        except (OSError, UnidentifiedImageError) as error:
            log.warning("job %s: cannot read preview %s: %s", job.id, path, error)
            return None

    # ---------------------------------------------------------- cancelling

    def cancel(self, job: Job) -> None:
        """Ask the job to stop (non-blocking); escalate to terminate/kill if it does not."""
        with self._changed:
            if not job.running or job.cancel_requested:
                return
            job.cancel_requested = True
            self._touch(job)
        log.info("job %s: cancel requested", job.id)
        stdin = job.process.stdin
        try:
            if stdin is not None:
                stdin.write(b"cancel\n")
                stdin.flush()
                stdin.close()
        except OSError:  # the child already exited
            pass
        threading.Thread(target=self._escalate, args=(job,), name=f"cancel-{job.id}", daemon=True).start()

    def _escalate(self, job: Job) -> None:
        try:
            job.process.wait(self.cancel_grace)
            return
        except subprocess.TimeoutExpired:
            pass
        log.warning("job %s did not stop within %.1f s of cancel; terminating", job.id, self.cancel_grace)
        with self._changed:
            job.escalated = True
        job.process.terminate()
        try:
            job.process.wait(self.kill_grace)
        except subprocess.TimeoutExpired:
            log.warning("job %s ignored terminate; killing", job.id)
            job.process.kill()

    def wait_finished(self, job: Job, timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not job.running, timeout)

    def shutdown(self) -> None:
        """Cancel every running job and wait (bounded) until they have exited."""
        with self._changed:
            self._closed = True
            running = [job for job in self._jobs.values() if job.running]
            self._changed.notify_all()
        for job in running:
            self.cancel(job)
        for job in running:
            self.wait_finished(job, self.cancel_grace + self.kill_grace + 1.0)


def follow_job(request: Request, job: Job) -> Result:
    """Stream ``progress`` events (with a ``preview`` array when it changed) until the job ends."""
    jobs = request.server.jobs
    seen_version, sent_preview = -1, 0
    while True:
        state, version, preview_version = jobs.snapshot(job)
        if state["status"] != RUNNING:
            break
        if version != seen_version:
            arrays = {}
            if preview_version != sent_preview:
                preview = jobs.load_preview(job)
                if preview is not None:
                    arrays["preview"] = preview
                sent_preview = preview_version
            request.send_event("progress", state, arrays)
            seen_version = version
        jobs.wait_for_change(job, seen_version)
    preview = jobs.load_preview(job) if preview_version != sent_preview else None
    return Result({"job": state}, {"preview": preview} if preview is not None else {})


def _start_job(kind: JobKind, request: Request) -> Result:
    params = dict(request.params)
    stream = params.pop("stream")
    job = request.server.jobs.start(kind, params, request.arrays, request.server.device)
    if stream:
        return follow_job(request, job)
    state, _, _ = request.server.jobs.snapshot(job)
    return Result({"job": state})
