"""Crash-safe training checkpoints: safetensors for tensors, JSON for everything else.

A checkpoint ``<name>`` in a folder is two files:

* ``<name>.safetensors``: the tensors (written first);
* ``<name>.json``: format version, step, config, the tensor file's size and sha256, and any
  JSON state (written last: a checkpoint exists only once its JSON does).

Each file is written to a temporary file in the same folder, flushed, fsynced and renamed
into place, so a crash at any moment leaves earlier checkpoints intact. ``latest.json`` and
``best.json`` are small pointer files (also written atomically) naming a checkpoint. Loading
checks the JSON, the size and the sha256 before safetensors reads the tensors; no pickle is
ever involved.

:func:`flatten_training_state` / :func:`restore_training_state` turn modules, optimizers,
GradScalers, LR schedulers and random-number generators into tensors + JSON and back, so a
resumed run continues bit for bit as if it had not stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backend.errors import CheckpointError

FORMAT = "neural-avatar-checkpoint"
FORMAT_VERSION = 1
POINTERS = ("latest", "best")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_AUTO_NAME = re.compile(r"^step-(\d+)$")
_CHUNK = 1 << 20


def checkpoint_name(step: int) -> str:
    """The automatic name of the checkpoint of ``step`` (sorts by step)."""
    return f"step-{step:09d}"


@dataclass
class Checkpoint:
    """A verified, loaded checkpoint."""

    path: Path  # its JSON file
    name: str
    step: int
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # every other JSON entry given to save_checkpoint


# --------------------------------------------------------------------------------------------
# Atomic files


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_path(final: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _publish(temporary: Path, final: Path) -> None:
    os.replace(temporary, final)
    _fsync_directory(final.parent)


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a fsynced temporary file in the same folder, then rename it into place."""
    temporary = _temporary_path(path)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        _publish(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=1, sort_keys=True)
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


@contextlib.contextmanager
def checkpoint_write_errors(path: Path):
    """Turn a failed write into a :class:`CheckpointError` naming ``path``, the file being written
    (the OS error would only name the temporary file)."""
    try:
        yield
    except (OSError, SafetensorError) as error:
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise CheckpointError(path, f"could not be written: {cause}") from error


def _digest(path: Path) -> tuple[int, str]:
    """(size, sha256) of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


def _write_tensor_file(path: Path, tensors: Mapping[str, torch.Tensor], header: dict[str, str]) -> tuple[int, str]:
    """safetensors file written atomically; returns the (size, sha256) of what reached the disk."""
    temporary = _temporary_path(path)
    try:
        save_file(_prepare_tensors(tensors), str(temporary), metadata=header)
        with open(temporary, "r+b") as handle:
            os.fsync(handle.fileno())
        size, sha = _digest(temporary)
        _publish(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return size, sha


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, and no two entries sharing memory (safetensors refuses shared storage)."""
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in tensors.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint tensors must map str to torch.Tensor; entry {key!r} is {type(value).__name__}")
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if tensor.numel() and pointer in seen:
            tensor = tensor.clone()
        elif tensor.numel():
            seen.add(pointer)
        prepared[key] = tensor
    return prepared


# --------------------------------------------------------------------------------------------
# Saving


def _check_name(name: str, where: Path) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in POINTERS:
        raise CheckpointError(where, f"invalid checkpoint name {name!r} (letters, digits, '.', '_', '-'; not {POINTERS})")
    return name


def save_checkpoint(
    directory: str | Path,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    name: str | None = None,
    keep_last: int | None = 3,
    best: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write checkpoint ``name`` (default ``step-<step>``), point ``latest`` (and ``best``) at it.

    ``meta`` must hold ``step`` (int ≥ 0); ``config`` (a dict) is stored as such; every other entry
    must be JSON-serialisable and comes back in :attr:`Checkpoint.meta`. ``keep_last`` keeps that
    many automatically named checkpoints (plus the best one); ``None`` keeps all. Overwriting an
    existing name needs ``overwrite=True``; its old JSON is removed first, so a crash during the
    overwrite loses that one checkpoint (never leaves it inconsistent) and no other.
    Returns the path of the JSON file.
    """
    directory = Path(directory)
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"meta['step'] must be a non-negative int, got {step!r}")
    config = meta.get("config") or {}
    if not isinstance(config, Mapping):
        raise TypeError(f"meta['config'] must be a dict (e.g. ANRConfig.to_dict()), got {type(config).__name__}")
    config = dict(config)
    extra = {key: value for key, value in meta.items() if key not in ("step", "config")}
    name = _check_name(name or checkpoint_name(step), directory)
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 or None, got {keep_last}")
    # Fail on unserialisable meta before touching the disk.
    try:
        json.dumps({"config": config, "meta": extra})
    except (TypeError, ValueError) as error:
        raise TypeError(f"checkpoint config/meta must be JSON-serialisable: {error}") from None

    json_path = directory / f"{name}.json"
    tensor_path = directory / f"{name}.safetensors"
    with checkpoint_write_errors(json_path):
        directory.mkdir(parents=True, exist_ok=True)
        if json_path.exists():
            if not overwrite:
                raise CheckpointError(json_path, "a checkpoint of this name already exists (pass overwrite=True to replace it)")
            json_path.unlink()
            _fsync_directory(directory)

    with checkpoint_write_errors(tensor_path):
        size, sha = _write_tensor_file(tensor_path, tensors, {"format": FORMAT, "step": str(step), "name": name})
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "step": step,
        "config": config,
        "tensors": {"file": tensor_path.name, "size": size, "sha256": sha},
        "meta": extra,
    }
    with checkpoint_write_errors(json_path):
        write_json_atomic(json_path, record)
    _write_pointer(directory, "latest", name, step)
    if best:
        _write_pointer(directory, "best", name, step)
    if keep_last is not None:
        _prune(directory, keep_last, keep={name, _pointer_target(directory, "best")})
    return json_path


def _write_pointer(directory: Path, pointer: str, name: str, step: int) -> None:
    path = directory / f"{pointer}.json"
    with checkpoint_write_errors(path):
        write_json_atomic(path, {"name": name, "step": step})


def mark_best(directory: str | Path, name: str) -> None:
    """Point ``best`` at an existing checkpoint (verified first)."""
    checkpoint = load_checkpoint(directory, name)
    _write_pointer(Path(directory), "best", checkpoint.name, checkpoint.step)


def list_checkpoints(directory: str | Path) -> list[str]:
    """Names of the checkpoints (JSON + tensor file) in a folder, oldest step first (custom names before)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    names = [
        p.stem
        for p in directory.glob("*.json")
        if p.stem not in POINTERS and _NAME.match(p.stem) and p.with_suffix(".safetensors").exists()
    ]

    def order(name: str) -> tuple[int, str]:
        match = _AUTO_NAME.match(name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=order)


def _pointer_target(directory: Path, pointer: str) -> str | None:
    try:
        value = json.loads((directory / f"{pointer}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = value.get("name") if isinstance(value, dict) else None
    return name if isinstance(name, str) else None


def _prune(directory: Path, keep_last: int, keep: set[str | None]) -> None:
    automatic = [name for name in list_checkpoints(directory) if _AUTO_NAME.match(name)]
    for name in automatic[: max(0, len(automatic) - keep_last)]:
        if name in keep:
            continue
        # JSON first: a half-deleted checkpoint is an orphan tensor file, never a broken checkpoint.
        (directory / f"{name}.json").unlink(missing_ok=True)
        (directory / f"{name}.safetensors").unlink(missing_ok=True)
    # Tensor files whose JSON never got written (a save interrupted by a crash).
    for orphan in directory.glob("step-*.safetensors"):
        if not (directory / f"{orphan.stem}.json").exists():
            orphan.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Loading


def _read_record(json_path: Path) -> dict[str, Any]:
    try:
        text = json_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(json_path, "checkpoint JSON file is missing (an interrupted save, or deleted)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(json_path, f"cannot be read: {error}") from None
    try:
        record = json.loads(text)
    except ValueError as error:
        raise CheckpointError(json_path, f"is not valid JSON ({error})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(json_path, f"is not a {FORMAT} file")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            json_path, f"has format version {version!r}; this program reads up to {FORMAT_VERSION} (update it)"
        )
    tensors = record.get("tensors")
    if (
        not isinstance(tensors, dict)
        or not isinstance(tensors.get("file"), str)
        or not isinstance(tensors.get("size"), int)
        or not isinstance(tensors.get("sha256"), str)
        or not isinstance(record.get("step"), int)
        or not isinstance(record.get("config"), dict)
        or not isinstance(record.get("meta"), dict)
    ):
        raise CheckpointError(
            json_path, "is missing fields or has fields of the wrong type (step, config, tensors.file/size/sha256, meta)"
        )
    if isinstance(record["step"], bool) or record["step"] < 0:
        raise CheckpointError(json_path, f"records step {record['step']!r}; a step count is a non-negative integer")
    if tensors["file"] != f"{json_path.stem}.safetensors":
        raise CheckpointError(json_path, f"names tensor file {tensors['file']!r}, expected {json_path.stem}.safetensors")
    if "training_state" in record["meta"]:
        problem = _training_state_problem(record["meta"]["training_state"])
        if problem:
            raise CheckpointError(json_path, f"has a malformed training state: {problem}")
    return record


_STATE_GROUPS = ("optimizers", "scalers", "schedulers", "numpy_rngs")


def _training_state_problem(state: Any) -> str | None:
    """What is wrong with the layout :func:`flatten_training_state` writes, or None.

    Checks the structure only; whether the values fit the objects is found out while restoring.
    """
    if not isinstance(state, dict):
        return f"expected an object, got {type(state).__name__}"
    modules = state.get("modules", [])
    if not isinstance(modules, list) or not all(isinstance(name, str) for name in modules):
        return "'modules' must be a list of module names"
    for group in _STATE_GROUPS:
        saved = state.get(group, {})
        if not isinstance(saved, dict):
            return f"{group!r} must be an object, got {type(saved).__name__}"
        for name, value in saved.items():
            problem = _encoded_problem(value)
            if problem:
                return f"{group}.{name}: {problem}"
    if "global_rngs" in state:
        rngs = state["global_rngs"]
        if not isinstance(rngs, dict) or "python" not in rngs:
            return "'global_rngs' must be an object with a 'python' entry"
        count = rngs.get("cuda_devices", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return f"global_rngs.cuda_devices must be a non-negative integer, got {count!r}"
        return _encoded_problem(rngs["python"], "global_rngs.python")
    return None


def _encoded_problem(value: Any, where: str = "") -> str | None:
    """What in a value written by :func:`_encode` does not follow its grammar, or None."""
    prefix = f"{where}: " if where else ""
    if isinstance(value, list):
        items = value
    elif isinstance(value, dict):
        if len(value) != 1:
            return f"{prefix}unexpected object with keys {sorted(value)}"
        kind, content = next(iter(value.items()))
        if kind == "__tensor__":
            return None if isinstance(content, str) else f"{prefix}a tensor reference must be a name"
        if kind == "__tuple__" and isinstance(content, list):
            items = content
        elif kind == "__map__" and isinstance(content, list):
            if not all(isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int)) for pair in content):
                return f"{prefix}map entries must be [key, value] pairs"
            items = [pair[1] for pair in content]
        else:
            return f"{prefix}unexpected object {{{kind!r}: {type(content).__name__}}}"
    else:
        return None
    for item in items:
        problem = _encoded_problem(item, where)
        if problem:
            return problem
    return None


def load_checkpoint(directory: str | Path, name: str = "latest") -> Checkpoint:
    """Load and verify checkpoint ``name`` (or the one the ``latest`` / ``best`` pointer names).

    Raises :class:`~backend.errors.CheckpointError` naming the file when anything is missing,
    malformed, truncated or modified.
    """
    directory = Path(directory)
    if name in POINTERS:
        pointer = directory / f"{name}.json"
        if not pointer.exists():
            raise CheckpointError(directory, f"no checkpoint here ({pointer.name} is missing)")
        target = _pointer_target(directory, name)
        if target is None:
            raise CheckpointError(pointer, "is not a valid pointer file (expected {\"name\": ...})")
        name = target
    name = _check_name(name, directory)
    json_path = directory / f"{name}.json"
    record = _read_record(json_path)
    tensor_path = directory / record["tensors"]["file"]
    if not tensor_path.is_file():
        raise CheckpointError(tensor_path, f"tensor file is missing (named by {json_path.name})")
    size, sha = _digest(tensor_path)
    if size != record["tensors"]["size"]:
        raise CheckpointError(
            tensor_path, f"is {size} bytes but {json_path.name} records {record['tensors']['size']} (truncated or replaced)"
        )
    if sha != record["tensors"]["sha256"]:
        raise CheckpointError(
            tensor_path, f"contents do not match the sha256 recorded in {json_path.name} (corrupted or modified)"
        )
    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except Exception as error:  # noqa: BLE001 - the reader's own error types vary
        raise CheckpointError(tensor_path, f"is not a readable safetensors file ({error})") from None
    return Checkpoint(
        path=json_path, name=name, step=record["step"], config=record["config"], tensors=tensors, meta=record["meta"]
    )


# --------------------------------------------------------------------------------------------
# Training state ⇄ tensors + JSON


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested state → JSON, moving tensors into ``tensors`` under ``key``-derived names.

    Dicts become ``{"__map__": [[k, v], …]}`` so integer keys (optimizer state) survive; tuples
    become ``{"__tuple__": […]}``; tensors ``{"__tensor__": name}``.
    """
    if isinstance(value, torch.Tensor):
        tensors[key] = value
        return {"__tensor__": key}
    if isinstance(value, Mapping):
        for k in value:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"state at {key!r} has a key of type {type(k).__name__}; only str and int keys can be saved")
        return {"__map__": [[k, _encode(v, f"{key}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"state at {key!r} holds a {type(value).__name__}, which a checkpoint cannot store")


def _decode(value: Any, tensors: Mapping[str, torch.Tensor], source: Path) -> Any:
    if isinstance(value, dict):
        if "__tensor__" in value:
            try:
                return tensors[value["__tensor__"]]
            except KeyError:
                missing = value["__tensor__"]
                raise CheckpointError(source, f"JSON refers to tensor {missing!r}, which the tensor file lacks") from None
        if "__map__" in value:
            return {k: _decode(v, tensors, source) for k, v in value["__map__"]}
        if "__tuple__" in value:
            return tuple(_decode(v, tensors, source) for v in value["__tuple__"])
        raise CheckpointError(source, f"unexpected object in the training state: keys {sorted(value)}")
    if isinstance(value, list):
        return [_decode(v, tensors, source) for v in value]
    return value


def flatten_training_state(
    *,
    modules: Mapping[str, torch.nn.Module] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    scalers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    numpy_rngs: Mapping[str, np.random.Generator] | None = None,
    global_rngs: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything needed to resume, as ``(tensors, json_state)``.

    Save with ``save_checkpoint(dir, tensors, {"step": …, "config": …, "training_state": json_state})``.
    ``global_rngs`` includes torch's CPU (and CUDA) generators and Python's ``random``.
    """
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {"modules": [], "optimizers": {}, "scalers": {}, "schedulers": {}, "numpy_rngs": {}}
    for name, module in (modules or {}).items():
        for key, value in module.state_dict().items():
            tensors[f"module/{name}/{key}"] = value
        state["modules"].append(name)
    for group, objects in (("optimizers", optimizers), ("scalers", scalers), ("schedulers", schedulers)):
        for name, obj in (objects or {}).items():
            state[group][name] = _encode(obj.state_dict(), f"{group}/{name}", tensors)
    for name, generator in (numpy_rngs or {}).items():
        state["numpy_rngs"][name] = _encode(generator.bit_generator.state, f"numpy_rngs/{name}", tensors)
    if global_rngs:
        tensors["rng/torch_cpu"] = torch.get_rng_state()
        cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        for index, cuda_state in enumerate(cuda_states):
            tensors[f"rng/cuda/{index}"] = cuda_state
        python_state = _encode(random.getstate(), "rng/python", tensors)
        state["global_rngs"] = {"cuda_devices": len(cuda_states), "python": python_state}
    return tensors, state


def restore_training_state(
    checkpoint: Checkpoint,
    *,
    modules: Mapping[str, torch.nn.Module] | None = None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    scalers: Mapping[str, Any] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    numpy_rngs: Mapping[str, np.random.Generator] | None = None,
    global_rngs: bool = True,
    strict: bool = True,
) -> None:
    """Put the state saved by :func:`flatten_training_state` back into fresh objects (same names).

    Any problem (missing entries, values the objects refuse) raises :class:`CheckpointError`
    naming the checkpoint's JSON file.
    """
    try:
        _restore_training_state(
            checkpoint, modules=modules, optimizers=optimizers, scalers=scalers, schedulers=schedulers,
            numpy_rngs=numpy_rngs, global_rngs=global_rngs, strict=strict,
        )
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - a tampered value can fail inside torch, numpy or random in many ways
        raise CheckpointError(checkpoint.path, f"its training state cannot be restored ({type(error).__name__}: {error})") from None


def _restore_training_state(
    checkpoint: Checkpoint,
    *,
    modules: Mapping[str, torch.nn.Module] | None,
    optimizers: Mapping[str, torch.optim.Optimizer] | None,
    scalers: Mapping[str, Any] | None,
    schedulers: Mapping[str, Any] | None,
    numpy_rngs: Mapping[str, np.random.Generator] | None,
    global_rngs: bool,
    strict: bool,
) -> None:
    source = checkpoint.path
    state = checkpoint.meta.get("training_state")
    if not isinstance(state, dict):
        raise CheckpointError(source, "holds no training state (meta['training_state'] is missing)")
    tensors = checkpoint.tensors

    for name, module in (modules or {}).items():
        if name not in state.get("modules", []):
            raise CheckpointError(source, f"has no state for module {name!r} (it has {state.get('modules')})")
        prefix = f"module/{name}/"
        module_state = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        try:
            module.load_state_dict(module_state, strict=strict)
        except RuntimeError as error:
            raise CheckpointError(source, f"module {name!r} does not match this network: {error}") from None

    for group, objects in (("optimizers", optimizers), ("scalers", scalers), ("schedulers", schedulers)):
        for name, obj in (objects or {}).items():
            saved = state.get(group, {})
            if name not in saved:
                raise CheckpointError(source, f"has no state for {group[:-1]} {name!r} (it has {sorted(saved)})")
            try:
                obj.load_state_dict(_decode(saved[name], tensors, source))
            except (ValueError, KeyError, RuntimeError) as error:
                raise CheckpointError(source, f"{group[:-1]} {name!r} does not match: {error}") from None

    for name, generator in (numpy_rngs or {}).items():
        saved = state.get("numpy_rngs", {})
        if name not in saved:
            raise CheckpointError(source, f"has no state for numpy generator {name!r} (it has {sorted(saved)})")
        try:
            generator.bit_generator.state = _decode(saved[name], tensors, source)
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(source, f"numpy generator {name!r} cannot take the saved state: {error}") from None

    if global_rngs:
        rngs = state.get("global_rngs")
        if not isinstance(rngs, dict) or "rng/torch_cpu" not in tensors:
            raise CheckpointError(source, "holds no global RNG state (saved with global_rngs=False)")
        torch.set_rng_state(tensors["rng/torch_cpu"])
        count = rngs.get("cuda_devices", 0)
        if count and torch.cuda.is_available() and torch.cuda.device_count() == count:
            torch.cuda.set_rng_state_all([tensors[f"rng/cuda/{index}"] for index in range(count)])
        random.setstate(_decode(rngs["python"], tensors, source))
