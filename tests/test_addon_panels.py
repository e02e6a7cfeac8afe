"""Panels and preferences draw only real controls.

There is no UI region in background mode, so ``draw`` runs against a recording layout that
checks every property, operator and list it is given against Blender's RNA.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import panels, preferences  # noqa: E402
from blender_addon.bench_import import synthetic_motion, synthetic_template  # noqa: E402
from blender_addon.importing import ImportOptions, import_motion  # noqa: E402

pytestmark = pytest.mark.blender


class RecordingLayout:
    """Stands in for ``UILayout``; fails on unknown properties, operators and list types."""

    def __init__(self, log: list) -> None:
        self.log = log

    def _sub(self, *args, **kwargs) -> "RecordingLayout":
        return RecordingLayout(self.log)

    row = column = box = split = _sub

    def label(self, text: str = "", icon: str = "NONE") -> None:
        assert isinstance(text, str)
        self.log.append(("label", text))

    def prop(self, data, prop: str, **kwargs) -> None:
        assert prop in data.bl_rna.properties, f"{data!r} has no property {prop!r}"
        self.log.append(("prop", prop))

    def operator(self, idname: str, **kwargs):
        module, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()  # raises for unknown operators
        self.log.append(("operator", idname))

        class Properties:
            def __setattr__(self, key, value):
                assert key in rna.properties, f"{idname} has no property {key!r}"

        return Properties()

    def template_list(self, list_type, list_id, data, prop, active_data, active_prop, **kwargs) -> None:
        assert hasattr(bpy.types, list_type), list_type
        assert prop in data.bl_rna.properties and active_prop in active_data.bl_rna.properties
        self.log.append(("list", prop))


def draw(panel_class, context, owner=None) -> list:
    log: list = []

    class Self:
        layout = RecordingLayout(log)

        def __getattr__(self, name):
            return getattr(owner, name)

    panel_class.draw(Self(), context)
    return log


@pytest.fixture(scope="module", autouse=True)
def enabled_addon():
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("blender_addon", default_set=True, handle_error=None)
    yield
    addon_utils.disable("blender_addon", default_set=True, handle_error=None)
    bpy.ops.wm.read_factory_settings(use_empty=True)


def test_every_section_is_registered_in_the_avatar_tab():
    labels = [cls.bl_label for cls in panels.PANELS[1:]]
    assert labels == ["Backend", "Import", "Avatar", "Render & Live", "Retarget (MDA)", "Bake"]
    assert all(cls.bl_category == "Avatar" and cls.bl_space_type == "VIEW_3D" for cls in panels.PANELS)
    assert all(hasattr(bpy.types, cls.__name__) for cls in panels.CLASSES)


def test_backend_panel_shows_stand_ins_and_a_working_settings_button():
    prefs = preferences.addon_preferences(bpy.context)
    prefs.mano_folder = "/data/models/mano/"
    log = draw(panels.NEURAL_AVATAR_PT_backend, bpy.context)
    assert ("label", "SMPL-X: stand-in") in log and ("label", "MANO: mano") in log
    assert ("operator", "preferences.addon_show") in log
    prefs.mano_folder = ""


def test_preferences_draw_each_connection_mode():
    prefs = preferences.addon_preferences(bpy.context)
    for mode, expected in (("START", "backend_python"), ("FILE", "connection_file"), ("ADDRESS", "token")):
        prefs.connection = mode
        log = draw(preferences.NEURAL_AVATAR_AP_preferences, bpy.context, owner=prefs)
        assert ("prop", expected) in log
        assert sum(1 for entry in log if entry == ("label", "stand-in")) == 3


def test_avatar_panel_without_and_with_an_avatar():
    assert draw(panels.NEURAL_AVATAR_PT_avatar, bpy.context) == [("label", "Select an avatar")]
    arrays, names = synthetic_template(vertices=200, faces=300, shapes=1, expressions=2, parents=(-1, 0, 1), seed=2)
    motion = synthetic_motion(3, 2, 5, fps=25.0)
    import_motion(bpy.context, arrays, names, motion, ImportOptions(name="Panel", avatar_id="a1"))
    log = draw(panels.NEURAL_AVATAR_PT_avatar, bpy.context)
    assert ("operator", "neural_avatar.match_scene_rate") in log
    assert ("operator", "neural_avatar.remove_avatar") in log
    assert ("list", "key_blocks") in log
    assert any(kind == "label" and "25 fps" in text for kind, text in log)
    assert ("label", "Avatar ID: a1") in log
    key = bpy.data.objects["Panel body"].data.shape_keys
    cases = (
        (key.key_blocks[0], [("label", "Basis")]),
        (key.key_blocks[2], [("label", "expression_000"), ("prop", "value")]),
    )
    for item, expected in cases:
        rows: list = []
        list_class = panels.NEURAL_AVATAR_UL_shape_keys
        list_class.draw_item(None, bpy.context, RecordingLayout(rows), key, item, 0, None, "", 0)
        assert rows == expected
    # Sections waiting for the backend show no buttons at all.
    for section in (panels.NEURAL_AVATAR_PT_render, panels.NEURAL_AVATAR_PT_retarget, panels.NEURAL_AVATAR_PT_bake):
        assert all(kind == "label" for kind, _ in draw(section, bpy.context))
    assert draw(panels.NEURAL_AVATAR_PT_main, bpy.context) == [("label", "1 avatar in this scene")]
    np.testing.assert_equal(bpy.context.scene.render.fps, 25)
