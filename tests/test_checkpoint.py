"""Checkpoints: round trip, every kind of damage detected, crash safety, retention, exact resume."""

from __future__ import annotations

import errno
import json
import os
import random

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from backend.errors import CheckpointError
from backend.train import checkpoint as ckpt
from backend.train.checkpoint import (
    flatten_training_state,
    list_checkpoints,
    load_checkpoint,
    mark_best,
    restore_training_state,
    save_checkpoint,
)


def sample_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "weights": torch.randn(4, 5, generator=g),
        "half": torch.randn(3, generator=g).to(torch.bfloat16),
        "bytes": torch.randint(0, 255, (7,), dtype=torch.uint8, generator=g),
        "index": torch.arange(6, dtype=torch.int64).view(2, 3),
        "scalar": torch.tensor(3.5),
    }


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_round_trip(tmp_path):
    tensors = sample_tensors()
    path = save_checkpoint(tmp_path, tensors, {"step": 42, "config": {"preset": "cpu", "size": 128}, "loss": 0.25})
    assert path == tmp_path / "step-000000042.json"
    record = json.loads(path.read_text())
    assert record["format_version"] == ckpt.FORMAT_VERSION and record["step"] == 42
    assert record["tensors"]["size"] == (tmp_path / "step-000000042.safetensors").stat().st_size
    assert len(record["tensors"]["sha256"]) == 64
    loaded = load_checkpoint(tmp_path)
    assert loaded.name == "step-000000042" and loaded.step == 42
    assert loaded.config == {"preset": "cpu", "size": 128} and loaded.meta == {"loss": 0.25}
    assert_same_tensors(loaded.tensors, tensors)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary files left


def test_shared_storage_tensors_are_saved(tmp_path):
    shared = torch.randn(4, 4)
    save_checkpoint(tmp_path, {"a": shared, "b": shared, "row": shared[0]}, {"step": 1})
    loaded = load_checkpoint(tmp_path)
    assert torch.equal(loaded.tensors["a"], shared) and torch.equal(loaded.tensors["row"], shared[0])


@pytest.fixture
def saved(tmp_path):
    save_checkpoint(tmp_path, sample_tensors(), {"step": 7})
    return tmp_path, tmp_path / "step-000000007.safetensors", tmp_path / "step-000000007.json"


def test_truncated_tensor_file(saved):
    folder, tensor_file, _ = saved
    data = tensor_file.read_bytes()
    tensor_file.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"step-000000007\.safetensors: is \d+ bytes but .* records \d+ \(truncated"):
        load_checkpoint(folder)


def test_flipped_byte(saved):
    folder, tensor_file, _ = saved
    data = bytearray(tensor_file.read_bytes())
    data[-3] ^= 0x01
    tensor_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"safetensors: contents do not match the sha256"):
        load_checkpoint(folder)


def test_missing_json(saved):
    folder, _, json_file = saved
    json_file.unlink()
    with pytest.raises(CheckpointError, match=r"step-000000007\.json: checkpoint JSON file is missing"):
        load_checkpoint(folder)


def test_json_naming_another_size(saved):
    folder, _, json_file = saved
    record = json.loads(json_file.read_text())
    record["tensors"]["size"] += 1
    json_file.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="truncated or replaced"):
        load_checkpoint(folder)


def test_bad_json_and_versions(saved):
    folder, _, json_file = saved
    original = json_file.read_text()
    json_file.write_text(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match=r"step-000000007\.json: is not valid JSON"):
        load_checkpoint(folder)
    record = json.loads(original)
    json_file.write_text(json.dumps({**record, "format_version": ckpt.FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="newer|update it"):
        load_checkpoint(folder)
    json_file.write_text(json.dumps({**record, "tensors": {**record["tensors"], "file": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="names tensor file"):
        load_checkpoint(folder)


def test_missing_tensor_file_and_empty_folder(saved, tmp_path_factory):
    folder, tensor_file, _ = saved
    tensor_file.unlink()
    with pytest.raises(CheckpointError, match="tensor file is missing"):
        load_checkpoint(folder)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(CheckpointError, match=r"no checkpoint here \(latest\.json is missing\)"):
        load_checkpoint(empty)


def test_crash_before_json_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = sample_tensors(1)
    save_checkpoint(tmp_path, first, {"step": 100})

    def crash(path, value):
        raise OSError("simulated power cut")

    monkeypatch.setattr(ckpt, "write_json_atomic", crash)
    with pytest.raises(CheckpointError, match=r"step-000000200\.json: could not be written: simulated power cut"):
        save_checkpoint(tmp_path, sample_tensors(2), {"step": 200})
    monkeypatch.undo()
    assert (tmp_path / "step-000000200.safetensors").exists()  # written, but never committed
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 100
    assert_same_tensors(loaded.tensors, first)
    assert list_checkpoints(tmp_path) == ["step-000000100"]
    with pytest.raises(CheckpointError, match="JSON file is missing"):
        load_checkpoint(tmp_path, "step-000000200")
    # The next save goes through and clears the orphan.
    save_checkpoint(tmp_path, sample_tensors(3), {"step": 300})
    assert not (tmp_path / "step-000000200.safetensors").exists()
    assert load_checkpoint(tmp_path).step == 300


def test_crash_while_writing_tensors_leaves_no_debris(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, sample_tensors(1), {"step": 1})

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", half_write)
    with pytest.raises(CheckpointError, match=r"step-000000002\.safetensors: could not be written: disk full"):
        save_checkpoint(tmp_path, sample_tensors(2), {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-000000001.json", "step-000000001.safetensors"]
    assert load_checkpoint(tmp_path).step == 1


@pytest.mark.parametrize(
    "failure, cause",
    [
        (lambda temporary: OSError(errno.EFBIG, os.strerror(errno.EFBIG), temporary), os.strerror(errno.EFBIG)),
        (lambda temporary: SafetensorError("Error while serializing: I/O error: File too large (os error 27)"), "File too large"),
    ],
)
def test_write_failures_name_the_checkpoint_and_the_cause(tmp_path, monkeypatch, failure, cause):
    save_checkpoint(tmp_path, sample_tensors(1), {"step": 1})

    def failing_write(tensors, filename, metadata=None):
        raise failure(filename)

    monkeypatch.setattr(ckpt, "save_file", failing_write)
    with pytest.raises(CheckpointError, match=cause) as error:
        save_checkpoint(tmp_path, sample_tensors(2), {"step": 2})
    assert error.value.path == tmp_path / "step-000000002.safetensors" and ".tmp" not in str(error.value)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 1  # the earlier checkpoint is intact
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_keep_last_and_best(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, sample_tensors(step), {"step": step}, keep_last=2, best=step == 2)
    assert list_checkpoints(tmp_path) == ["step-000000002", "step-000000004", "step-000000005"]
    assert load_checkpoint(tmp_path, "best").step == 2
    assert load_checkpoint(tmp_path, "latest").step == 5
    mark_best(tmp_path, "step-000000005")
    save_checkpoint(tmp_path, sample_tensors(6), {"step": 6}, keep_last=2)
    assert list_checkpoints(tmp_path) == ["step-000000005", "step-000000006"]
    tensor_files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert tensor_files == ["step-000000005.safetensors", "step-000000006.safetensors"]


def test_overwrite_needs_permission_and_bad_inputs(tmp_path):
    save_checkpoint(tmp_path, sample_tensors(), {"step": 3})
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(tmp_path, sample_tensors(9), {"step": 3})
    save_checkpoint(tmp_path, sample_tensors(9), {"step": 3}, overwrite=True)
    assert_same_tensors(load_checkpoint(tmp_path).tensors, sample_tensors(9))
    with pytest.raises(ValueError, match="step"):
        save_checkpoint(tmp_path, {}, {"config": {}})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, {}, {"step": 4, "callback": print})
    with pytest.raises(CheckpointError, match="invalid checkpoint name"):
        save_checkpoint(tmp_path, {}, {"step": 4}, name="../escape")
    with pytest.raises(TypeError, match="str to torch.Tensor"):
        save_checkpoint(tmp_path, {"x": np.zeros(3)}, {"step": 4})


# --------------------------------------------------------------------------------------------
# Exact resume


class TinyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
        self.norm = torch.nn.BatchNorm1d(6)  # running statistics are buffers, not parameters

    def forward(self, x):
        return self.net(self.norm(x))


def make_run(seed: int):
    torch.manual_seed(seed)
    model = TinyModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    data_rng = np.random.default_rng(seed)
    return model, optimizer, scheduler, scaler, data_rng


def train_steps(run, steps: int) -> None:
    model, optimizer, scheduler, scaler, data_rng = run
    model.train()
    for _ in range(steps):
        x = torch.from_numpy(data_rng.normal(size=(8, 6)).astype(np.float32))
        noise = torch.randn(8, 2)  # global torch RNG, like dropout
        target = x[:, :2] * 2 + 0.1 * noise + random.random()  # Python's random too
        loss = torch.nn.functional.mse_loss(model(x), target)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()


def objects(run):
    model, optimizer, scheduler, scaler, data_rng = run
    return dict(
        modules={"model": model},
        optimizers={"adam": optimizer},
        schedulers={"lr": scheduler},
        scalers={"amp": scaler},
        numpy_rngs={"data": data_rng},
    )


def test_resume_is_bit_identical(tmp_path):
    total, stop = 7, 3
    random.seed(5)
    uninterrupted = make_run(seed=0)
    train_steps(uninterrupted, total)
    expected = {k: v.clone() for k, v in uninterrupted[0].state_dict().items()}

    random.seed(5)
    first = make_run(seed=0)
    train_steps(first, stop)
    tensors, state = flatten_training_state(**objects(first))
    save_checkpoint(tmp_path, tensors, {"step": stop, "config": {}, "training_state": state})

    # Fresh objects, different initial weights and RNG states: everything must come from the file.
    random.seed(99)
    resumed = make_run(seed=123)
    restore_training_state(load_checkpoint(tmp_path), **objects(resumed))
    train_steps(resumed, total - stop)

    got = resumed[0].state_dict()
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{key} differs after resuming"
    assert resumed[1].state_dict()["param_groups"][0]["lr"] == uninterrupted[1].state_dict()["param_groups"][0]["lr"]
    assert resumed[3].get_scale() == uninterrupted[3].get_scale()


def test_resume_without_restoring_would_differ(tmp_path):
    """Guard for the test above: skipping the restore really changes the result."""
    random.seed(5)
    reference = make_run(seed=0)
    train_steps(reference, 4)
    random.seed(5)
    other = make_run(seed=0)
    train_steps(other, 2)
    fresh = make_run(seed=123)
    train_steps(fresh, 2)
    assert not torch.equal(fresh[0].net[0].weight, reference[0].net[0].weight)


def test_restore_errors_name_the_checkpoint(tmp_path):
    run = make_run(0)
    tensors, state = flatten_training_state(**objects(run))
    path = save_checkpoint(tmp_path, tensors, {"step": 0, "training_state": state})
    loaded = load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{path.name}: has no state for module 'critic'"):
        restore_training_state(loaded, modules={"critic": TinyModel()}, global_rngs=False)
    with pytest.raises(CheckpointError, match="module 'model' does not match"):
        restore_training_state(loaded, modules={"model": torch.nn.Linear(6, 2)}, global_rngs=False)
    wrong_optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointError, match="optimizer 'adam' does not match"):
        restore_training_state(loaded, optimizers={"adam": wrong_optimizer}, global_rngs=False)
    save_checkpoint(tmp_path, {}, {"step": 1})
    with pytest.raises(CheckpointError, match="holds no training state"):
        restore_training_state(load_checkpoint(tmp_path), modules={"model": TinyModel()})


def _tamper_python_rng(record):
    record["meta"]["training_state"]["global_rngs"]["python"] = {"__tuple__": [3, "x", None]}


def _tamper_map_entry(record):
    record["meta"]["training_state"]["global_rngs"]["python"] = {"__tuple__": [{"__map__": [[1, 2, 3]]}]}


def _tamper_modules(record):
    record["meta"]["training_state"]["modules"] = 5


def _tamper_step(record):
    record["step"] = -5


def _tamper_cuda_devices(record):
    record["meta"]["training_state"]["global_rngs"]["cuda_devices"] = "two"


@pytest.mark.parametrize("tamper", [_tamper_python_rng, _tamper_map_entry, _tamper_modules, _tamper_step, _tamper_cuda_devices])
def test_tampered_training_state_is_rejected(tmp_path, tamper):
    run = make_run(0)
    tensors, state = flatten_training_state(**objects(run))
    path = save_checkpoint(tmp_path, tensors, {"step": 3, "training_state": state})
    record = json.loads(path.read_text())
    tamper(record)
    path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as error:
        restore_training_state(load_checkpoint(tmp_path), **objects(make_run(1)))
    assert error.value.path == path
