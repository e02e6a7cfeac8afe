"""All-or-nothing scene edits: record what an operation creates or changes, undo it on error.

Importers build many data-blocks (objects, meshes, armatures, actions, cameras) and touch
scene settings (frame rate, range, resolution). If anything fails half-way, the user must
get the scene back exactly as it was, not a half-built avatar.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import bpy

# bpy.data collection per ID type, for removing what was created.
_DATA_COLLECTIONS = {
    bpy.types.Object: "objects",
    bpy.types.Mesh: "meshes",
    bpy.types.Armature: "armatures",
    bpy.types.Action: "actions",
    bpy.types.Camera: "cameras",
    bpy.types.Image: "images",
    bpy.types.Collection: "collections",
}


class SceneChanges:
    """A log of created data-blocks and changed attributes that ``undo`` reverts in reverse order."""

    def __init__(self) -> None:
        self._created: list[tuple[str, bpy.types.ID]] = []  # (bpy.data collection, data-block)
        self._changed: list[tuple[Any, str, Any]] = []

    def created(self, datablock: Any) -> Any:
        """Remember a new data-block (returned unchanged, for chaining)."""
        for kind, collection in _DATA_COLLECTIONS.items():
            if isinstance(datablock, kind):
                self._created.append((collection, datablock))
                return datablock
        raise TypeError(f"cannot track {type(datablock).__name__} data-blocks for undo")

    def set(self, owner: Any, attribute: str, value: Any) -> None:
        """``setattr(owner, attribute, value)``, remembering the old value."""
        self._changed.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, value)

    def undo(self) -> None:
        for owner, attribute, old in reversed(self._changed):
            setattr(owner, attribute, old)
        for collection, datablock in reversed(self._created):
            # A data-block may already be gone (e.g. removed along with its owner).
            with contextlib.suppress(ReferenceError):
                getattr(bpy.data, collection).remove(datablock)
        self._changed.clear()
        self._created.clear()


@contextlib.contextmanager
def undo_on_error() -> Iterator[SceneChanges]:
    """``with undo_on_error() as changes: ...`` - everything logged in ``changes`` is undone if the block raises."""
    changes = SceneChanges()
    try:
        yield changes
    except BaseException:
        if bpy.context.mode != "OBJECT" and bpy.context.view_layer.objects.active is not None:
            bpy.ops.object.mode_set(mode="OBJECT")
        changes.undo()
        raise
