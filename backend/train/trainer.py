"""The training loop, shared by every avatar method (see :mod:`backend.train.method`).

``train(capture, out, config)`` prepares the capture (frames, masks, cached geometry maps),
selects keyframes when the method uses split optimisation, writes ``avatar.json`` and runs
``method.train_step`` for the configured number of steps, with:

* periodic validation on held-out frames (PSNR; the best checkpoint is marked ``best``, never
  one whose renders hold NaN) and a preview image in the progress events;
* a stop with an :class:`~backend.errors.AvatarError` when a loss, or a state about to be
  saved, is not finite (the weights have diverged); the checkpoints saved before stay as they are;
* atomic checkpoints every ``checkpoint_every`` steps, at the end, and when cancelled;
* exact resume (``resume=True``): modules, optimizers, gradient scalers and the random
  generators come back from the latest checkpoint, and the frames of each step are a pure
  function of (seed, step), so the run continues bit for bit as if it had never stopped
  (only the iteration count may change; other settings must match ``avatar.json``);
* cancellation through ``progress.cancelled()`` (Ctrl-C, the server's cancel), checked before
  every step (the loop saves a checkpoint and returns) and while the capture is prepared (the
  run returns without writing anything).
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from backend.avatar.avatar import build_method
from backend.avatar.body import body_record, load_recorded_body
from backend.avatar.folder import (
    CHECKPOINTS,
    VALIDATION,
    AvatarRecord,
    CaptureRecord,
    read_record,
    record_path,
    validation_history,
    write_record,
)
from backend.bodies import load_smplx
from backend.bodies.base import BodyModel
from backend.capture.folder import CaptureFolder
from backend.capture.motion import SPLIT_TEST, SPLIT_TRAIN
from backend.data.dataset import CaptureData, PreparationCancelled
from backend.data.schedule import FrameSchedule
from backend.errors import AvatarError, CaptureFormatError, CheckpointError
from backend.features.geometry import BodyRasterizer
from backend.features.keyframes import keyframe_count, select_keyframes
from backend.metrics import psnr
from backend.paths import ModelFolders
from backend.progress import Progress, make_progress, write_preview_png
from backend.render.evaluate import mean_psnr
from backend.server.device import select_device
from backend.train.checkpoint import (
    flatten_training_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from backend.train.config import (
    TRAINING_PRESETS,
    TrainingConfig,
    available_threads,
    config_from_dict,
    config_to_dict,
)
from backend.train.method import Method, method_class

SAMPLE_CAPTURE_MARKER = "sample_capture.json"  # written by backend.capture.sample
REPORT_INTERVAL = 0.5  # seconds between progress events (validation events always go out)
VALIDATION_BATCH = 4
INITIAL_CHECKPOINT = "initial"  # name of the step-0 checkpoint of every new run


@dataclass
class TrainResult:
    avatar: Path
    step: int  # steps done in total (including earlier runs when resumed)
    start_step: int
    cancelled: bool
    seconds: float  # wall time of this run's training steps
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step of this run
    validation: list[dict[str, Any]] = field(default_factory=list)  # {"step", "psnr"} history
    losses: dict[str, float] = field(default_factory=dict)  # mean loss terms of the last report

    @property
    def best_psnr(self) -> float | None:
        values = [entry["psnr"] for entry in self.validation if not math.isnan(entry["psnr"])]
        return max(values) if values else None


def training_body(capture: CaptureFolder, folders: ModelFolders | None, device: torch.device) -> BodyModel:
    """SMPL-X for training on ``capture``: the sample capture is always rendered from the stand-in."""
    if (capture.path / SAMPLE_CAPTURE_MARKER).exists():
        folders = ModelFolders()
    return load_smplx(folders or ModelFolders.resolve(), gender=capture.tracking.motion.gender, device=device)


def _evenly_spaced(frames: np.ndarray, count: int) -> np.ndarray:
    if count <= 0 or len(frames) == 0:
        return frames[:0]
    if len(frames) <= count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


class _Run:
    """State of one training run (kept out of ``train``'s body to keep each part readable)."""

    def __init__(self, out: Path, config: TrainingConfig, record: AvatarRecord, method: Method, data: CaptureData, progress: Progress):
        self.out, self.config, self.record, self.method, self.data, self.progress = out, config, record, method, data, progress
        self.checkpoints = out / CHECKPOINTS
        self.validation: list[dict[str, Any]] = []
        self.best_psnr = -math.inf
        frames = data.test_frames if len(data.test_frames) else data.train_frames
        self.validation_frames = _evenly_spaced(frames, config.validation_frames)
        self.validation_split = "test" if len(data.test_frames) else "train"
        self.last_saved_step = -1

    # ------------------------------------------------------------------ checkpoints

    def save(self, step: int, best: bool = False, name: str | None = None) -> None:
        tensors, state = flatten_training_state(
            modules=self.method.modules(), optimizers=self.method.optimizers(), scalers=self.method.scalers()
        )
        # An update can turn weights NaN after a finite loss; such a state is never saved, so
        # the checkpoints on disk (and "latest") stay usable.
        not_finite = [key for key, value in tensors.items() if value.is_floating_point() and not bool(value.isfinite().all())]
        if not_finite:
            self.diverged(step, f"the weights hold NaN or infinite values ({', '.join(not_finite[:3])})")
        meta = {
            "step": step,
            "config": {"method": self.method.name},
            "training_state": state,
            "validation": self.validation,
            "best_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None,
        }
        save_checkpoint(
            self.checkpoints, tensors, meta, name=name, keep_last=self.config.keep_checkpoints, best=best, overwrite=True
        )
        self.last_saved_step = step

    def diverged(self, step: int, symptom: str) -> NoReturn:
        """Stop the run: the weights have diverged, and every later step would build on garbage."""
        raise AvatarError(
            f"{self.out}: training diverged at step {step}: {symptom}; stopped without saving, the last good "
            f"checkpoint is step {self.last_saved_step} (train again with a lower learning rate)"
        )

    def continue_from(self, resumed: "_Resumed") -> None:
        """Take over the validation history of the checkpoint a resumed run started from."""
        self.validation = list(resumed.validation)
        self.best_psnr = resumed.best_psnr
        self.last_saved_step = resumed.step

    # ------------------------------------------------------------------ validation

    def validate(self, step: int) -> tuple[float, np.ndarray] | None:
        """PSNR (dB) of the held-out frames (foreground over black) and a preview (truth | render)."""
        if len(self.validation_frames) == 0:
            return None
        self.method.train_mode(False)
        scores, preview = [], None
        try:
            for start in range(0, len(self.validation_frames), VALIDATION_BATCH):
                batch = self.data.batch(self.validation_frames[start : start + VALIDATION_BATCH])
                rendered = self.method.render(batch.maps, batch.identity)[:, :3].float()
                truth = (batch.images + 1) / 2 * batch.masks
                scores.append(psnr(rendered.clamp(0, 1), truth.clamp(0, 1)))
                if preview is None:
                    pair = torch.cat([truth[0], rendered[0]], dim=2).permute(1, 2, 0)
                    preview = pair.clamp(0, 1).cpu().numpy()
        finally:
            self.method.train_mode(True)
        value = mean_psnr(torch.cat(scores))  # NaN for a diverged model, so it never becomes the best
        self.validation.append({"step": step, "psnr": value, "split": self.validation_split})
        write_preview_png(preview, _preview_path(self.out))
        return value, preview


@dataclass
class _Resumed:
    """What a resumed run takes over from the checkpoint it continues (besides the method's state)."""

    step: int
    validation: list[dict[str, Any]]
    best_psnr: float  # −inf when no validation has been finite yet


def _restore_latest(checkpoints: Path, method: Method) -> _Resumed:
    """Load the latest checkpoint into ``method``: modules, optimizers, scalers and the random generators."""
    checkpoint = load_checkpoint(checkpoints, "latest")
    if checkpoint.config.get("method") != method.name:
        raise CheckpointError(checkpoint.path, f"is a {checkpoint.config.get('method')!r} checkpoint, the avatar is {method.name!r}")
    best = checkpoint.meta.get("best_psnr")
    if best is not None and (not isinstance(best, (int, float)) or isinstance(best, bool) or not math.isfinite(best)):
        raise CheckpointError(checkpoint.path, f"meta.best_psnr must be a finite number or null, got {best!r}")
    resumed = _Resumed(
        step=checkpoint.step, validation=validation_history(checkpoint), best_psnr=-math.inf if best is None else float(best)
    )
    restore_training_state(checkpoint, modules=method.modules(), optimizers=method.optimizers(), scalers=method.scalers())
    checkpoint.tensors.clear()  # the method holds what it needs; drop the rest before the data loads
    return resumed


# How this run uses the machine, not what it learns: a resumed run takes them from its caller.
RUN_ENVIRONMENT = ("threads", "device", "rasterizer", "cache_bytes")


def _requested_settings(config: TrainingConfig) -> dict[str, Any]:
    """The settings of ``config`` its caller evidently chose: those its preset does not give.

    The CLI fills every option left out with the preset's value, so a setting equal to the
    preset's (or the default preset itself) cannot be told from one left out and is not listed.
    The iteration count and the run environment are not settings here (they may change when resuming).
    """
    preset = TRAINING_PRESETS.get(config.preset, TrainingConfig())
    requested = {"preset": config.preset} if config.preset != TrainingConfig.preset else {}
    for item in fields(TrainingConfig):
        if item.name in ("iterations", *RUN_ENVIRONMENT):
            continue
        if getattr(config, item.name) != getattr(preset, item.name):
            requested[item.name] = getattr(config, item.name)
    return requested


def _check_resume_settings(record_file: Path, recorded: TrainingConfig, config: TrainingConfig | None) -> None:
    """Refuse to resume with settings other than the avatar's (only the iteration count may change)."""
    if config is None:
        return
    changes = [
        f"{name} {getattr(recorded, name)!r} → {value!r}"
        for name, value in _requested_settings(config).items()
        if getattr(recorded, name) != value
    ]
    if changes:
        raise CheckpointError(
            record_file,
            f"the avatar was trained with other settings ({', '.join(changes)}); only the iteration count may "
            "change when resuming (train a new avatar in another --out folder to use other settings)",
        )


def _check_losses_finite(losses: dict[str, torch.Tensor], step: int, run: _Run) -> None:
    """Stop the run when a loss term is NaN or infinite (one check per step: a single sync)."""
    values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
    if not bool(values.isfinite().all()):
        bad = ", ".join(f"{name}={float(value):g}" for name, value in losses.items() if not math.isfinite(float(value)))
        run.diverged(step, f"the loss is not finite ({bad})")


def _preview_path(out: Path) -> Path:
    folder = out / VALIDATION
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "preview.png"


def _new_record(
    capture: CaptureFolder, config: TrainingConfig, method_name: str, method_config: Any, body: BodyModel, resolution: tuple[int, int]
) -> AvatarRecord:
    tracking = capture.tracking
    return AvatarRecord(
        method=method_name,
        method_config=config_to_dict(method_config),
        training=config_to_dict(config),
        resolution=list(resolution),
        capture=CaptureRecord(
            path=str(capture.path.resolve()),
            num_frames=capture.num_frames,
            image_size=list(capture.image_size),
            train_frames=int(len(tracking.frames_of(SPLIT_TRAIN))),
            test_frames=int(len(tracking.frames_of(SPLIT_TEST))),
            fps=float(tracking.motion.fps),
        ),
        body=body_record(body, tracking.motion.betas, tracking.motion.gender),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def train(
    capture: str | Path,
    out: str | Path,
    config: TrainingConfig | None = None,
    *,
    method_config: Any = None,
    resume: bool = False,
    iterations: int | None = None,
    progress: Progress | None = None,
    folders: ModelFolders | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue training) the avatar in folder ``out`` on ``capture``.

    ``config`` defaults to the CPU preset; ``method_config`` to the method's preset of the same
    name. When resuming, both come from ``out/avatar.json`` and only ``iterations`` (the new
    total, recorded in ``avatar.json``) may change: a ``config`` asking for other settings raises
    :class:`CheckpointError` (its ``iterations`` and any setting equal to its preset's are not
    compared, see :func:`_requested_settings`; ``method_config`` is ignored).
    """
    out = Path(out)
    progress = progress or make_progress("none")
    capture_folder = CaptureFolder(capture)
    if resume:
        record = read_record(out)
        try:
            recorded = config_from_dict(TrainingConfig, record.training, "training")
        except ValueError as error:
            raise CheckpointError(record_path(out), str(error)) from None
        _check_resume_settings(record_path(out), recorded, config)
        environment = {name: getattr(config, name) for name in RUN_ENVIRONMENT} if config is not None else {}
        config = recorded.with_overrides(iterations=iterations, **environment)
    else:
        if record_path(out).exists():
            raise CheckpointError(record_path(out), "this folder already holds an avatar; pass --resume to continue it or choose another --out")
        config = (config or TrainingConfig()).with_overrides(iterations=iterations)
    torch.set_num_threads(config.threads or available_threads())
    device = torch.device(select_device(config.device))
    torch.manual_seed(config.seed)

    if resume:
        body = load_recorded_body(record.body, folders, device)
        method = build_method(record, record_path(out), body.rest_vertices(), device)
    else:
        body = training_body(capture_folder, folders, device)
        cls = method_class(config.method)
        method_config = method_config or cls.presets.get(config.preset) or cls.presets["cpu"]
        method = cls(method_config, body.rest_vertices(), device)

    method.setup_training(config)
    # Restored before the data is prepared: a damaged checkpoint fails at once, and a cancel
    # during preparation knows the step. Preparing the data draws no random numbers, so the
    # restored generators still continue exactly where the interrupted run stopped.
    resumed = _restore_latest(out / CHECKPOINTS, method) if resume else None
    start = resumed.step if resumed is not None else 0

    geometry = BodyRasterizer(
        body, capture_folder.tracking.motion.betas, method.needs, expand_offset=method.expand_offset, rasterizer=config.rasterizer
    )
    find_keyframes = method.keyframe_fraction > 0 and not resume
    progress.log(f"preparing {capture_folder.path} at resolution {config.resolution} for {method.name}")
    try:
        data = CaptureData(
            capture_folder, geometry, config.resolution, divisor=method.divisor, device=device,
            cache_bytes=config.cache_bytes, visibility=find_keyframes, cancelled=progress.cancelled,
        )
    except PreparationCancelled:
        progress.log("cancelled while preparing the capture; nothing was changed")
        return TrainResult(avatar=out, step=start, start_step=start, cancelled=True, seconds=0.0)
    if resume:
        trained_on = (record.capture.num_frames, list(record.capture.image_size), record.resolution)
        given = (capture_folder.num_frames, list(capture_folder.image_size), list(data.resolution))
        if trained_on != given:
            raise CheckpointError(
                record_path(out),
                "was trained on {} frames of {} at resolution {}; {} has {} frames of {} (resolution {})".format(
                    *trained_on, capture_folder.path, *given
                ),
            )
        keyframes = record.keyframes
        if config.iterations != recorded.iterations:
            record.training = config_to_dict(config)
            write_record(out, record)
    else:
        record = _new_record(capture_folder, config, method.name, method_config, body, data.resolution)
        keyframes = []
        if find_keyframes:
            assert data.visible_faces is not None
            count = keyframe_count(len(data.train_frames), method.keyframe_fraction)
            selection = select_keyframes(data.visible_faces, geometry.face_areas().cpu(), count)
            if not selection.frames:
                raise CaptureFormatError(
                    capture_folder.path / "tracking.npz", "no training frame shows the body; check the cameras and poses"
                )
            keyframes = [int(data.train_frames[row]) for row in selection.frames]
            record.keyframe_coverage = selection.coverage
            progress.log(f"{len(keyframes)} keyframes cover {selection.coverage:.1%} of the visible surface")
        record.keyframes = keyframes
        data.visible_faces = None

    run = _Run(out, config, record, method, data, progress)
    if resumed is not None:
        run.continue_from(resumed)
    schedule = FrameSchedule.build(
        data.train_frames, keyframes, batch_size=config.batch_size, keyframe_every=method.keyframe_every, seed=config.seed
    )
    if not resume:
        run.save(0, name=INITIAL_CHECKPOINT)  # the untrained avatar, kept for comparisons
        # Only now: a folder with avatar.json always has a checkpoint to resume, and one whose
        # first save failed holds no record, so training it again simply starts over.
        write_record(out, record)
        _report_validation(run, 0, progress, config.iterations)

    step_seconds: list[float] = []
    sums: dict[str, torch.Tensor] = {}
    count, last_report, reported = 0, time.monotonic(), {}
    step, cancelled = start, False
    begin = time.perf_counter()
    while step < config.iterations:
        if progress.cancelled():
            cancelled = True
            break
        tick = time.perf_counter()
        frames, keyframe = schedule.frames_for(step)
        losses = method.train_step(data.batch(frames, keyframe), step)
        step += 1
        _check_losses_finite(losses, step, run)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0) + value
        count += 1
        step_seconds.append(time.perf_counter() - tick)

        validate = step % config.validate_every == 0 or step == config.iterations
        if validate or time.monotonic() - last_report >= REPORT_INTERVAL:
            reported = {name: float(value) / count for name, value in sums.items()}
            sums, count, last_report = {}, 0, time.monotonic()
            if not validate:
                progress.update(step, config.iterations, losses=reported)
        if validate:
            best = _report_validation(run, step, progress, config.iterations, reported)
            if best or step % config.checkpoint_every == 0 or step == config.iterations:
                run.save(step, best=best)
        elif step % config.checkpoint_every == 0:
            run.save(step)
    seconds = time.perf_counter() - begin
    if run.last_saved_step != step:
        run.save(step)
    if cancelled:
        progress.log(f"cancelled at step {step}; saved a checkpoint (continue with --resume)")
    return TrainResult(
        avatar=out, step=step, start_step=start, cancelled=cancelled, seconds=seconds,
        step_seconds=step_seconds, validation=run.validation, losses=reported,
    )


def _report_validation(run: _Run, step: int, progress: Progress, total: int, losses: dict[str, float] | None = None) -> bool:
    """Validate, send a progress event with the preview; True when this is the best PSNR so far."""
    result = run.validate(step)
    if result is None:
        progress.update(step, total, losses=losses or {})
        return False
    value, preview = result
    best = value > run.best_psnr
    if best:
        run.best_psnr = value
    message = f"validation PSNR {value:.2f} dB on {len(run.validation_frames)} {run.validation_split} frames"
    progress.log(f"step {step}: {message}")
    progress.update(step, total, losses={**(losses or {}), "val_psnr": value}, message=message, preview=preview)
    return best
