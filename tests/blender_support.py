"""Shared by the add-on tests that run inside the bpy module (import bpy only from here on)."""

from __future__ import annotations

import bpy
import pytest

import blender_addon


@pytest.fixture(scope="module", autouse=True)
def registered_addon():
    """An empty factory scene with the add-on registered, for one test module."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    blender_addon.register()
    yield
    blender_addon.unregister()
    bpy.ops.wm.read_factory_settings(use_empty=True)


def scene_counts() -> dict[str, object]:
    """What an operator that fails must leave exactly as it was."""
    scene = bpy.context.scene
    return {
        "objects": len(bpy.data.objects),
        "meshes": len(bpy.data.meshes),
        "armatures": len(bpy.data.armatures),
        "actions": len(bpy.data.actions),
        "cameras": len(bpy.data.cameras),
        "shape_keys": len(bpy.data.shape_keys),
        "fps": (scene.render.fps, scene.render.fps_base),
        "range": (scene.frame_start, scene.frame_end),
        "active": bpy.context.view_layer.objects.active,
    }
