"""The "Neural Avatar" render engine: F12 and ``blender -b file.blend -a`` through Blender's own
output pipeline (file output, compositor, sequencer, frame ranges).

For each frame Blender asks for, every visible bound armature of the render depsgraph is read
as evaluated (pose, shape keys, camera: see :mod:`.pose_reading`) and rendered by the backend
with one synchronous ``render`` request each, on the render thread, through a connection of
its own (the session's worker and timers are left alone). Avatars are composited back to front
by the depth of their root joint (:func:`.avatar_render.composite`); nothing else of the scene
is drawn. Behind them: transparency when Film > Transparent is on, else the world's colour
(the Background node's colour and strength when its colour is not linked, else the world's
viewport colour). The backend's frames are display-referred sRGB; they are converted to scene
linear for the Combined pass, so the "Standard" view transform shows the avatar's own colours
(a warning says so when another view transform is set).

In background mode a backend that is not running is started (or connected) as the
preferences say; interactively the Backend panel must have started it.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import backend_process
from .avatar_render import bound_armatures, composite, frame_inputs, output_size, render_frames, run_blocking
from .client import NOT_RUNNING, BackendClient, BackendError

ENGINE_ID = "NEURAL_AVATAR"
# Property panels of Blender's own engines that apply to this one too (output size, frame range, film...).
_PANEL_EXCLUDE = {"VIEWLAYER_PT_filter", "VIEWLAYER_PT_layer_passes"}
_UINT8_SCALE = np.float32(1.0 / 255.0)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function undone (IEC 61966-2-1), for values in [0, 1]."""
    values = np.asarray(values, np.float32)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4).astype(np.float32)


def scene_linear(premultiplied: np.ndarray) -> np.ndarray:
    """Premultiplied display sRGB RGBA (H, W, 4) float32 → premultiplied scene-linear RGBA."""
    alpha = premultiplied[..., 3:4]
    straight = np.where(alpha > 1e-6, premultiplied[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    out = np.empty_like(premultiplied, dtype=np.float32)
    out[..., :3] = srgb_to_linear(np.clip(straight, 0.0, 1.0)) * alpha
    out[..., 3:] = alpha
    return out


def world_colour(scene: bpy.types.Scene) -> np.ndarray:
    """The scene-linear background colour (3,) of the scene's world (black without a world)."""
    world = scene.world
    if world is None:
        return np.zeros(3, np.float32)
    tree = world.node_tree
    if tree is not None:
        output = next((node for node in tree.nodes if node.type == "OUTPUT_WORLD" and node.is_active_output), None)
        surface = output.inputs["Surface"] if output is not None else None
        if surface is not None and surface.is_linked and surface.links[0].from_node.type == "BACKGROUND":
            background = surface.links[0].from_node
            colour, strength = background.inputs["Color"], background.inputs["Strength"]
            if not colour.is_linked and not strength.is_linked:
                return np.asarray(colour.default_value[:3], np.float32) * np.float32(strength.default_value)
    return np.asarray(world.color[:3], np.float32)


def render_pixels(layers: list[tuple[float, np.ndarray]], height: int, width: int, background: np.ndarray | None) -> np.ndarray:
    """Composited avatars as the Combined pass wants them: (H*W, 4) float32 scene linear, rows
    bottom-first; over an opaque ``background`` colour, or transparent when it is None."""
    frame = composite(layers) if layers else np.zeros((height, width, 4), np.float32)
    pixels = scene_linear(frame)[::-1]
    if background is not None:
        pixels[..., :3] += (1.0 - pixels[..., 3:4]) * background
        pixels[..., 3] = 1.0
    return np.ascontiguousarray(pixels).reshape(-1, 4)


def engine_client() -> BackendClient:
    """A synchronous client of its own for the render thread (the backend is started first in
    background mode when the preferences allow it)."""
    session = backend_process.session()
    if not session.connected and bpy.app.background:
        from .operators import backend_client

        run_blocking(backend_client(bpy.context))
    if not session.connected or session.info is None:
        raise BackendError("not_running", NOT_RUNNING)
    describe = session.process.describe_exit if session.process is not None else None
    return BackendClient(session.info, background=True, describe_loss=describe, client_name="blender-render")


class NeuralAvatarRenderEngine(bpy.types.RenderEngine):
    """Renders the bound avatars through the backend (see the module docstring)."""

    bl_idname = ENGINE_ID
    bl_label = "Neural Avatar"
    bl_use_preview = False
    bl_use_postprocess = True

    def render(self, depsgraph: bpy.types.Depsgraph) -> None:
        scene = depsgraph.scene
        width, height = output_size(scene.render)
        background = None if scene.render.film_transparent else world_colour(scene)
        result = self.begin_result(0, 0, width, height)
        try:
            layers = self._render_avatars(depsgraph, width, height)
            if layers is None:  # cancelled
                return
            result.layers[0].passes["Combined"].rect.foreach_set(render_pixels(layers, height, width, background).ravel())
        except BackendError as error:
            message = f"Neural Avatar: {error}"
            self.report({"ERROR"}, message)
            self.error_set(message)
        finally:
            self.end_result(result)

    def _render_avatars(self, depsgraph: bpy.types.Depsgraph, width: int, height: int) -> list[tuple[float, np.ndarray]] | None:
        scene = depsgraph.scene
        if scene.view_settings.view_transform != "Standard":
            self.report({"WARNING"}, f"Neural Avatar: view transform {scene.view_settings.view_transform!r} changes the avatar's colours; 'Standard' shows them as rendered")
        armatures = bound_armatures(depsgraph.objects)  # the render depsgraph holds the objects to render only
        if not armatures:
            self.report({"WARNING"}, "Neural Avatar: no visible armature is bound to a trained avatar; nothing to render")
            return []
        camera = scene.camera
        if self.camera_override is not None:
            camera = self.camera_override
        inputs = [frame_inputs(depsgraph, armature, width, height, camera) for armature in armatures]
        client = engine_client()
        layers = []
        try:
            for index, item in enumerate(inputs):
                if self.test_break():
                    return None
                self.update_stats("", f"Neural Avatar: rendering {item.armature_name} ({index + 1}/{len(inputs)})")
                frames = run_blocking(render_frames(client, [item], width, height))
                layers.append((item.depth, frames[0]))
                self.update_progress((index + 1) / len(inputs))
        finally:
            client.close()
        return layers


def _compatible_panels() -> list[type]:
    return [
        panel
        for panel in bpy.types.Panel.__subclasses__()
        if "BLENDER_RENDER" in getattr(panel, "COMPAT_ENGINES", ()) and panel.__name__ not in _PANEL_EXCLUDE
    ]


def register() -> None:
    bpy.utils.register_class(NeuralAvatarRenderEngine)
    for panel in _compatible_panels():
        panel.COMPAT_ENGINES.add(ENGINE_ID)


def unregister() -> None:
    for panel in bpy.types.Panel.__subclasses__():
        engines = getattr(panel, "COMPAT_ENGINES", None)
        if isinstance(engines, set):
            engines.discard(ENGINE_ID)
    bpy.utils.unregister_class(NeuralAvatarRenderEngine)
