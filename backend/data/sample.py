"""The sample capture for a given configuration, generated once and reused (benchmarks, demo, tests).

Captures live in ``ROOT/sample-<key>/`` where the key hashes the configuration and the
generator's source files, so a changed generator never serves stale data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from backend.capture.sample import SampleCaptureConfig, generate_sample_capture
from backend.paths import cache_dir
from backend.progress import Progress

TRACKING = "tracking.npz"


def _generator_sources() -> list[Path]:
    import backend.capture.appearance as appearance
    import backend.capture.procedural as procedural
    import backend.capture.sample as sample

    return [Path(module.__file__) for module in (sample, procedural, appearance)]


def sample_capture_key(config: SampleCaptureConfig) -> str:
    digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode())
    for source in _generator_sources():
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def cached_sample_capture(
    config: SampleCaptureConfig = SampleCaptureConfig(), root: str | Path | None = None, progress: Progress | None = None
) -> Path:
    """Path of the sample capture for ``config`` under ``root`` (default: the cache folder), generated when missing."""
    folder = Path(root or cache_dir() / "sample-captures") / f"sample-{sample_capture_key(config)}"
    if not (folder / TRACKING).exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        generate_sample_capture(folder, config, progress=progress)  # written to a staging folder, then renamed
    return folder
