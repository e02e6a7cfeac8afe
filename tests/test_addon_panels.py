"""Panels and preferences draw only real controls.

There is no UI region in background mode, so ``draw`` runs against a recording layout that
checks every property, operator and list it is given against Blender's RNA.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import panels, preferences  # noqa: E402
from blender_addon.bench_import import synthetic_motion, synthetic_template  # noqa: E402
from blender_addon.client import Reply  # noqa: E402
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

    def progress(self, factor: float = 0.0, type: str = "BAR", text: str = "") -> None:
        assert 0.0 <= factor <= 1.0 and type in ("BAR", "RING")
        self.log.append(("progress", text))

    def template_icon(self, icon_value: int = 0, scale: float = 1.0) -> None:
        assert isinstance(icon_value, int)
        self.log.append(("icon", icon_value))

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
    sections = [cls.bl_label for cls in panels.PANELS if getattr(cls, "bl_parent_id", "") == "NEURAL_AVATAR_PT_main"]
    assert sections == ["Backend", "Import", "Avatar", "Render & Live", "Bake"]
    assert panels.NEURAL_AVATAR_PT_train.bl_parent_id == "NEURAL_AVATAR_PT_avatar"  # training lives in the Avatar section
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
    assert ("label", "Avatar ID: a1") not in log  # shown once bound to a trained avatar
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
    assert draw(panels.NEURAL_AVATAR_PT_main, bpy.context) == [("label", "1 avatar in this scene")]
    np.testing.assert_equal(bpy.context.scene.render.fps, 25)


def test_avatar_panel_binding_and_the_render_train_and_bake_sections():
    arrays, names = synthetic_template(vertices=200, faces=300, shapes=1, expressions=2, seed=4)  # 55 joints: SMPL-X-like
    import_motion(bpy.context, arrays, names, synthetic_motion(55, 2, 3), ImportOptions(name="Bindable"))
    log = draw(panels.NEURAL_AVATAR_PT_avatar, bpy.context)
    assert ("operator", "neural_avatar.load_avatar") in log and ("operator", "neural_avatar.unbind_avatar") not in log
    armature = bpy.data.objects["Bindable skeleton"]
    armature.neural_avatar.avatar_path = "/avatars/dancer"
    armature.neural_avatar.avatar_summary = "ANR, 600 steps, trained at 128x128"
    armature.neural_avatar.avatar_id = "avatar-0123"
    log = draw(panels.NEURAL_AVATAR_PT_avatar, bpy.context)
    assert ("label", "dancer") in log and ("label", "ANR, 600 steps, trained at 128x128") in log
    assert ("label", "Avatar ID: avatar-0123") in log
    assert ("operator", "neural_avatar.unbind_avatar") in log

    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 1280, 720, 100
    log = draw(panels.NEURAL_AVATAR_PT_render, bpy.context)
    assert ("operator", "neural_avatar.render_frame") in log and ("prop", "live_size") in log
    assert ("operator", "neural_avatar.live_mode") not in log  # live mode is for interactive Blender only
    assert ("prop", "engine") in log  # offered while another engine is set
    scene.render.engine = "NEURAL_AVATAR"
    assert ("label", "F12 / -a render with the Neural Avatar engine") in draw(panels.NEURAL_AVATAR_PT_render, bpy.context)

    log = draw(panels.NEURAL_AVATAR_PT_bake, bpy.context)
    assert ("operator", "neural_avatar.bake") in log and ("label", f"Frames {scene.frame_start}-{scene.frame_end} at 1280x720") in log
    log = draw(panels.NEURAL_AVATAR_PT_train, bpy.context)
    assert ("operator", "neural_avatar.train") in log and ("prop", "train_capture") in log and not any(k == "progress" for k, _ in log)

    from blender_addon import job_monitor

    monitor = job_monitor.training
    monitor.state = {"id": "train-1", "status": "running", "step": 30, "total": 120, "eta_seconds": 95.0, "losses": {"rgb": 0.0412, "mask": 0.109}}
    try:
        log = draw(panels.NEURAL_AVATAR_PT_train, bpy.context)
        assert ("progress", "Training: 30/120 · ETA 1m 35s") in log and ("label", "rgb 0.0412  mask 0.109") in log
        assert ("operator", "neural_avatar.cancel_job") in log and ("operator", "neural_avatar.train") not in log
        monitor.state = {**monitor.state, "status": "failed", "error": "capture has no masks"}
        log = draw(panels.NEURAL_AVATAR_PT_train, bpy.context)
        assert ("progress", "Training: 30/120 · failed") in log and ("label", "capture has no masks") in log
        assert ("operator", "neural_avatar.cancel_job") not in log
    finally:
        monitor.state = {}


def bound_smplx_avatar(name: str) -> bpy.types.Object:
    """A 55-joint (SMPL-X-like) avatar armature bound to a made-up folder, left active, and a scene camera."""
    arrays, names = synthetic_template(vertices=200, faces=300, shapes=1, expressions=2, seed=4)
    armature = import_motion(bpy.context, arrays, names, synthetic_motion(55, 2, 3), ImportOptions(name=name))
    armature.neural_avatar.avatar_path = f"/avatars/{name}"
    camera = bpy.data.objects.new(f"{name} camera", bpy.data.cameras.new(f"{name} camera"))
    bpy.context.scene.collection.objects.link(camera)
    bpy.context.scene.camera = camera
    return armature


def test_bind_and_bake_buttons_need_the_active_object_to_be_a_fitting_avatar():
    armature = bound_smplx_avatar("Polled")
    view_layer = bpy.context.view_layer
    view_layer.objects.active = bpy.context.scene.camera  # a bound avatar in the scene is not enough
    assert not bpy.ops.neural_avatar.load_avatar.poll() and not bpy.ops.neural_avatar.bake.poll()
    view_layer.objects.active = bpy.data.objects["Polled body"]  # any object of the avatar selects it
    assert bpy.ops.neural_avatar.load_avatar.poll() and bpy.ops.neural_avatar.bake.poll()
    armature.neural_avatar.avatar_path = ""
    assert bpy.ops.neural_avatar.load_avatar.poll() and not bpy.ops.neural_avatar.bake.poll()  # baking needs a binding
    assert ("operator", "neural_avatar.bake") in draw(panels.NEURAL_AVATAR_PT_bake, bpy.context)  # acts on the active avatar


class AnsweringClient:
    """Answers ``load_avatar`` at once, as the backend would (the training's auto-bind asks it)."""

    closed = False
    info = SimpleNamespace(host="127.0.0.1", port=1, token="t")

    def submit(self, kind, params, arrays=None, on_done=None):
        assert kind == "load_avatar"
        on_done(SimpleNamespace(result=lambda: Reply({"avatar_id": "avatar-7", "info": {}}, {})))


def test_training_binds_its_armature_after_a_rename_and_reports_one_deleted():
    from blender_addon import avatar_operators, job_monitor

    renamed = bound_smplx_avatar("Trainee")
    renamed.neural_avatar.avatar_path = ""
    finished = avatar_operators._bind_when_trained(renamed.session_uid, renamed.name, "/avatars/new", AnsweringClient())
    renamed.name = "Renamed while training"
    finished({"status": job_monitor.DONE})
    assert renamed.neural_avatar.avatar_path == "/avatars/new" and renamed.neural_avatar.avatar_id == "avatar-7"

    deleted = bound_smplx_avatar("Doomed")
    finished = avatar_operators._bind_when_trained(deleted.session_uid, deleted.name, "/avatars/new", AnsweringClient())
    bpy.data.objects.remove(deleted)
    monitor = job_monitor.training
    try:
        monitor.state = {"id": "train-2", "status": job_monitor.DONE, "step": 10, "total": 10}
        finished(monitor.state)
        assert "Doomed skeleton was deleted" in monitor.error
        log = draw(panels.NEURAL_AVATAR_PT_train, bpy.context)
        assert ("label", monitor.error[:120]) in log  # the panel shows why nothing was bound
    finally:
        monitor.forget()
