"""Neural Avatar: a Blender add-on driving a local neural-rendering backend.

This module must stay importable without Blender: the backend does
``from blender_addon import wire`` for the shared wire protocol. So nothing here imports
``bpy`` at import time; ``register()`` imports the Blender-facing submodules lazily.
Only relative imports are used inside the package because Blender installs it under
another package name (``bl_ext.<repository>.neural_avatar`` as an extension).
"""

from __future__ import annotations

import importlib

bl_info = {
    "name": "Neural Avatar",
    "author": "The Neural Avatar authors",
    "version": (0, 1, 0),
    "blender": (4, 2, 0),
    "location": "3D View > Sidebar > Avatar",
    "description": "Photo-real, animatable avatars from a tracked monocular video (RAM-Avatar, ANR)",
    "category": "Animation",
}

# Registration order: property types before the classes that point at them; panels last.
# The backend session comes first so that it is stopped last, after its operators are gone.
_REGISTERED_MODULES = (
    "backend_process",
    "properties",
    "preferences",
    "operators",
    "avatar_operators",
    "job_monitor",
    "live",
    "engine",
    "panels",
)
_registered: list = []


def register() -> None:
    """Register every Blender class of the add-on (safe to call again after ``unregister``)."""
    if _registered:
        return
    try:
        for name in _REGISTERED_MODULES:
            module = importlib.import_module(f".{name}", __name__)
            module.register()
            _registered.append(module)
    except Exception:
        unregister()
        raise


def unregister() -> None:
    """Undo ``register`` in reverse order; a no-op when nothing is registered."""
    while _registered:
        _registered.pop().unregister()
