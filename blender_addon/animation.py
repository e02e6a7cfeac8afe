"""Bulk F-curve writing and reading for every action API from Blender 4.2 to 5.0.

Keys are written a whole curve at a time (``keyframe_points.add`` + ``foreach_set``), never
with ``keyframe_insert`` in a loop: that is 100x+ slower and degrades as curves grow.

Blender has had three ways to reach an action's F-curves; which one is used is decided by
feature detection, not by version number:

- ``channelbag`` (5.0+): slots; ``bpy_extras.anim_utils.action_ensure_channelbag_for_slot``.
- ``layered`` (4.4, 4.5): slots; ``action.layers[0].strips[0].channelbag(slot, ensure=True)``.
- ``legacy`` (4.2, 4.3): ``action.fcurves`` directly, no slots.
"""

from __future__ import annotations

import bpy
import numpy as np

ACTION_API_CHANNELBAG = "channelbag"
ACTION_API_LAYERED = "layered"
ACTION_API_LEGACY = "legacy"
ACTION_APIS = (ACTION_API_CHANNELBAG, ACTION_API_LAYERED, ACTION_API_LEGACY)

_INTERPOLATION_VALUES = {
    item.identifier: item.value for item in bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items
}


class AnimationError(RuntimeError):
    """Curves are missing or an action API is not available in this Blender."""


def choose_action_api(slots_take_id_type: bool, has_channelbag_helper: bool) -> str:
    """The action API for a Blender with these features.

    ``slots_take_id_type``: ``ActionSlots.new(id_type, name)`` exists (slotted actions proper,
    4.4+; 4.3's experimental ``new(for_id)`` does not count). ``has_channelbag_helper``:
    ``bpy_extras.anim_utils.action_ensure_channelbag_for_slot`` exists (5.0+).
    """
    if not slots_take_id_type:
        return ACTION_API_LEGACY
    return ACTION_API_CHANNELBAG if has_channelbag_helper else ACTION_API_LAYERED


def detect_action_api() -> str:
    """The action API of the running Blender."""
    from bpy_extras import anim_utils

    slots_type = getattr(bpy.types, "ActionSlots", None)
    slots_take_id_type = slots_type is not None and "id_type" in slots_type.bl_rna.functions["new"].parameters
    return choose_action_api(slots_take_id_type, hasattr(anim_utils, "action_ensure_channelbag_for_slot"))


def _has_action_slot(animation_data: bpy.types.AnimData) -> bool:
    return "action_slot" in animation_data.bl_rna.properties


class Channels:
    """The F-curves animating one data-block (an object, a shape-key block, a camera...)."""

    def __init__(self, id_data: bpy.types.ID, action: bpy.types.Action, api: str, slot=None, channelbag=None):
        self.id_data = id_data
        self.action = action
        self.api = api
        self.slot = slot
        self._channelbag = channelbag  # None for legacy actions
        self._fcurves = action.fcurves if channelbag is None else channelbag.fcurves

    # -- creating and finding -------------------------------------------------------------

    @classmethod
    def create(cls, id_data: bpy.types.ID, action_name: str, api: str | None = None) -> "Channels":
        """A new action (and slot) assigned to ``id_data``; the caller tracks ``.action`` for undo."""
        api = api or detect_action_api()
        if api not in ACTION_APIS:
            raise ValueError(f"unknown action API {api!r}; expected one of {ACTION_APIS}")
        had_animation_data = id_data.animation_data is not None
        action = bpy.data.actions.new(action_name)
        try:
            if api == ACTION_API_LEGACY and not hasattr(action, "fcurves"):
                raise AnimationError(f"this Blender ({bpy.app.version_string}) has no legacy action.fcurves")
            animation_data = id_data.animation_data or id_data.animation_data_create()
            if api == ACTION_API_LEGACY:
                action.id_root = id_data.id_type
                animation_data.action = action
                return cls(id_data, action, api)
            slot = action.slots.new(id_type=id_data.id_type, name=id_data.name)
            if api == ACTION_API_CHANNELBAG:
                from bpy_extras import anim_utils

                channelbag = anim_utils.action_ensure_channelbag_for_slot(action, slot)
            else:
                layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
                strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
                channelbag = strip.channelbag(slot, ensure=True)
            animation_data.action = action
            animation_data.action_slot = slot
            return cls(id_data, action, api, slot, channelbag)
        except BaseException:
            bpy.data.actions.remove(action)
            if not had_animation_data:
                id_data.animation_data_clear()
            raise

    @classmethod
    def of(cls, id_data: bpy.types.ID) -> "Channels | None":
        """The channels of the action currently assigned to ``id_data``, or None."""
        animation_data = id_data.animation_data
        action = animation_data.action if animation_data else None
        if action is None:
            return None
        if not _has_action_slot(animation_data):
            return cls(id_data, action, ACTION_API_LEGACY)
        slot = animation_data.action_slot
        if slot is None:
            return None
        for layer in action.layers:
            for strip in layer.strips:
                channelbag = strip.channelbag(slot)
                if channelbag is not None:
                    return cls(id_data, action, detect_action_api(), slot, channelbag)
        return None

    def find(self, data_path: str, index: int = 0) -> bpy.types.FCurve | None:
        return self._fcurves.find(data_path, index=index)

    def __len__(self) -> int:
        return len(self._fcurves)

    def _group(self, name: str) -> bpy.types.ActionGroup:
        groups = self._channelbag.groups
        return groups.get(name) or groups.new(name)

    def _new_curve(self, data_path: str, index: int, group: str | None) -> bpy.types.FCurve:
        existing = self.find(data_path, index)
        if existing is not None:
            self._fcurves.remove(existing)
        if self.api == ACTION_API_LEGACY:
            return self._fcurves.new(data_path, index=index, action_group=group or "")
        curve = self._fcurves.new(data_path, index=index)
        if group:
            curve.group = self._group(group)
        return curve

    # -- writing and reading --------------------------------------------------------------

    def write(
        self,
        data_path: str,
        frames: np.ndarray,
        values: np.ndarray,
        group: str | None = None,
        interpolation: str = "LINEAR",
    ) -> list[bpy.types.FCurve]:
        """One curve per column of ``values`` (T, C) keyed at strictly increasing ``frames`` (T,);
        replaces existing curves."""
        frames = np.asarray(frames, dtype=np.float32).reshape(-1)
        values = np.asarray(values, dtype=np.float32)
        if values.ndim == 1:
            values = values[:, None]
        if values.shape[0] != frames.shape[0]:
            raise ValueError(f"{data_path}: {values.shape[0]} values for {frames.shape[0]} frames")
        if np.any(np.diff(frames) <= 0):
            raise ValueError(f"{data_path}: frames must be strictly increasing")
        count = frames.shape[0]
        coordinates = np.empty((count, 2), dtype=np.float32)
        coordinates[:, 0] = frames
        # uint8 matches Blender's storage of the enum, which takes foreach_set's fast raw path
        # (10x faster than int32 here).
        modes = np.full(count, _INTERPOLATION_VALUES[interpolation], dtype=np.uint8)
        curves = []
        for index in range(values.shape[1]):
            curve = self._new_curve(data_path, index, group)
            points = curve.keyframe_points
            points.add(count)
            coordinates[:, 1] = values[:, index]
            points.foreach_set("co", coordinates.ravel())
            points.foreach_set("interpolation", modes)
            # The keys are written in time order, so of FCurve.update() (sort + handles) only the
            # handle pass is needed; on its own it takes about half the time.
            points.handles_recalc()
            curves.append(curve)
        return curves

    def read(self, data_path: str, count: int, frames: np.ndarray) -> np.ndarray:
        """(T, count) values of ``data_path`` at ``frames``.

        Curves whose keys sit exactly on ``frames`` are read in bulk, giving back the stored
        values unchanged; edited curves (keys moved, added or removed) are evaluated per frame.
        """
        frames = np.asarray(frames, dtype=np.float32).reshape(-1)
        out = np.empty((frames.shape[0], count), dtype=np.float64)
        for index in range(count):
            curve = self.find(data_path, index)
            if curve is None:
                raise AnimationError(f"{self.id_data.name}: no F-curve for {data_path}[{index}]")
            points = curve.keyframe_points
            if len(points) == frames.shape[0]:
                coordinates = np.empty(2 * len(points), dtype=np.float32)
                points.foreach_get("co", coordinates)
                if np.array_equal(coordinates[0::2], frames):
                    out[:, index] = coordinates[1::2]
                    continue
            out[:, index] = [curve.evaluate(float(frame)) for frame in frames]
        return out

    def has(self, data_path: str) -> bool:
        return self.find(data_path, 0) is not None


def data_path_item(collection: str, name: str, attribute: str) -> str:
    """``collection["name"].attribute`` with the name escaped as Blender's data paths require."""
    return f'{collection}["{bpy.utils.escape_identifier(name)}"].{attribute}'


def custom_property_path(name: str) -> str:
    return f'["{bpy.utils.escape_identifier(name)}"]'


def frame_numbers(start: int, count: int) -> np.ndarray:
    return start + np.arange(count, dtype=np.float64)
