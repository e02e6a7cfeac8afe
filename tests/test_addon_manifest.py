"""The add-on installs both ways: as an extension (manifest) and as a legacy add-on (bl_info)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import blender_addon

PACKAGE = Path(blender_addon.__file__).parent


def test_manifest_agrees_with_bl_info():
    manifest = tomllib.loads((PACKAGE / "blender_manifest.toml").read_text(encoding="utf-8"))
    assert manifest["id"] == "neural_avatar" and manifest["type"] == "add-on"
    assert tuple(int(part) for part in manifest["version"].split(".")) == blender_addon.bl_info["version"]
    minimum = tuple(int(part) for part in manifest["blender_version_min"].split("."))
    assert minimum == blender_addon.bl_info["blender"] == (4, 2, 0)
    assert set(manifest["permissions"]) == {"network", "files"}
    assert len(manifest["tagline"]) <= 64 and not manifest["tagline"].endswith(".")


def test_importing_the_package_does_not_import_bpy():
    code = "import sys, blender_addon, blender_addon.motion_math, blender_addon.motion_data; print('bpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.blender
def test_blenders_extension_validator_accepts_the_package():
    bpy = pytest.importorskip("bpy")
    validator = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
    if not validator.exists():
        pytest.skip("this bpy build ships no extension validator")
    out = subprocess.run(
        [sys.executable, str(validator), "validate", str(PACKAGE)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success" in out.stdout
