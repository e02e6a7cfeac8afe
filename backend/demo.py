"""The README's demo: stand-in body models, the sample capture and a contact sheet of it."""

from __future__ import annotations

from pathlib import Path

from backend.bodies import describe_models
from backend.capture.sample import SampleCaptureConfig, contact_sheet, generate_sample_capture
from backend.paths import ModelFolders
from backend.progress import Progress


def run_demo(out: Path, progress: Progress) -> dict[str, Path]:
    """Generate everything the demo shows into ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    print("Body models in use:\n" + describe_models(ModelFolders()))
    capture = generate_sample_capture(out / "sample_capture", SampleCaptureConfig(), progress=progress)
    sheet = contact_sheet(capture, out / "contact_sheet.png")
    print(f"Sample capture: {capture}\nContact sheet (frames above, masks below): {sheet}")
    return {"capture": capture, "contact_sheet": sheet}
