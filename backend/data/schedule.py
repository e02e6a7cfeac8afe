"""Which frames each training step uses: a pure function of (seed, step).

Because nothing but the step number decides the data order, a resumed run continues with
exactly the frames the uninterrupted run would have used; no sampler state needs saving.

With keyframes (ANR's split optimisation), every ``keyframe_every``-th step (0, k, 2k, …) draws
from the keyframes and trains the texture too; the other steps draw from the remaining frames
and train the renderer only. Each pool is walked through in a fresh random order per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_POOL_KEYFRAMES, _POOL_OTHERS = 1, 2


@dataclass(frozen=True)
class FrameSchedule:
    frames: tuple[int, ...]  # training frames (capture indices)
    keyframes: tuple[int, ...] = ()  # subset of ``frames``; empty: no split optimisation
    batch_size: int = 1
    keyframe_every: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a frame schedule needs at least one training frame")
        if self.batch_size < 1 or self.keyframe_every < 1:
            raise ValueError(f"batch_size and keyframe_every must be positive, got {self.batch_size}, {self.keyframe_every}")
        missing = set(self.keyframes) - set(self.frames)
        if missing:
            raise ValueError(f"keyframes {sorted(missing)} are not training frames")

    @classmethod
    def build(cls, frames: Sequence[int], keyframes: Sequence[int] = (), **options) -> "FrameSchedule":
        return cls(tuple(int(f) for f in frames), tuple(int(f) for f in keyframes), **options)

    @property
    def others(self) -> tuple[int, ...]:
        chosen = set(self.keyframes)
        rest = tuple(f for f in self.frames if f not in chosen)
        return rest or self.frames  # every frame a keyframe: the renderer trains on all of them

    def is_keyframe_step(self, step: int) -> bool:
        return bool(self.keyframes) and step % self.keyframe_every == 0

    def _draw(self, pool: tuple[int, ...], pool_id: int, position: int) -> list[int]:
        """Entries [position, position + batch) of the pool's endless shuffled stream."""
        out = []
        for index in range(position, position + self.batch_size):
            epoch, offset = divmod(index, len(pool))
            order = np.random.default_rng([self.seed, pool_id, epoch]).permutation(len(pool))
            out.append(pool[int(order[offset])])
        return out

    def frames_for(self, step: int) -> tuple[list[int], bool]:
        """(frame indices, keyframe?) of training step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if not self.keyframes:
            return self._draw(self.frames, _POOL_OTHERS, step * self.batch_size), False
        keyframe_steps_before = -(-step // self.keyframe_every)
        if self.is_keyframe_step(step):
            return self._draw(self.keyframes, _POOL_KEYFRAMES, keyframe_steps_before * self.batch_size), True
        return self._draw(self.others, _POOL_OTHERS, (step - keyframe_steps_before) * self.batch_size), False
