"""Put rendered avatar frames (RGBA arrays from the backend) into Blender images.

The backend's frames are display-ready RGBA, top row first, as uint8 or float16/32 in
[0, 1], with premultiplied alpha (colour already multiplied by coverage, as a render over
black is), which is what Blender's float images hold. They go into a float image through
``pixels.foreach_set`` on a float32 buffer (a Python list would be ~100x slower), with rows
flipped (Blender stores them bottom to top). Straight-alpha frames can be premultiplied on
the way, at the cost of an extra pass (~2 ms at 512x512 here). The image's
colour space is Non-Color so Blender shows the pixels exactly as rendered instead of
applying the scene's view transform (AgX, Filmic...) a second time. The image is a regular
data-block: show it in any Image Editor, or behind the active camera's view.
"""

from __future__ import annotations

import bpy
import numpy as np

_UINT8_SCALE = np.float32(1.0 / 255.0)


def frame_pixels(rgba: np.ndarray, out: np.ndarray | None = None, premultiplied: bool = True) -> np.ndarray:
    """(H, W, 4) top-first uint8/float16/float32 -> (H, W, 4) float32 bottom-first, premultiplied,
    as Blender's float images hold them (``out`` is reused when it has the right shape)."""
    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"frame must be an (height, width, 4) RGBA array, got shape {rgba.shape}")
    if rgba.dtype not in (np.uint8, np.float16, np.float32):
        raise ValueError(f"frame must be uint8, float16 or float32, got {rgba.dtype}")
    if out is None or out.shape != rgba.shape:
        out = np.empty(rgba.shape, dtype=np.float32)
    flipped = rgba[::-1]
    if rgba.dtype == np.uint8:
        np.multiply(flipped, _UINT8_SCALE, out=out, casting="unsafe")
    else:
        out[...] = flipped
    if not premultiplied:
        out[..., :3] *= out[..., 3:]
    return out


class FrameWriter:
    """Writes frames into one image, reusing its float buffer between frames."""

    def __init__(self, image_name: str) -> None:
        self.image_name = image_name
        self._buffer: np.ndarray | None = None

    def image(self, width: int, height: int) -> bpy.types.Image:
        """The named image at this size (created, or resized in place)."""
        image = bpy.data.images.get(self.image_name)
        if image is None:
            image = bpy.data.images.new(self.image_name, width, height, alpha=True, float_buffer=True)
            image.colorspace_settings.name = "Non-Color"
        elif tuple(image.size) != (width, height):
            image.scale(width, height)
        return image

    def write(self, rgba: np.ndarray, premultiplied: bool = True) -> bpy.types.Image:
        """Show ``rgba`` (H, W, 4) in the image; returns the image."""
        self._buffer = frame_pixels(rgba, self._buffer, premultiplied)
        height, width = self._buffer.shape[:2]
        image = self.image(width, height)
        image.pixels.foreach_set(self._buffer.ravel())
        image.update()
        return image


def show_behind_camera(image: bpy.types.Image, camera: bpy.types.Object | None = None, alpha: float = 1.0) -> None:
    """Use ``image`` as the background of ``camera`` (default: the scene's active camera),
    reusing the camera's existing slot for it."""
    camera = camera or bpy.context.scene.camera
    if camera is None or camera.type != "CAMERA":
        raise ValueError("a camera object is needed to show the image behind (the scene has no active camera)")
    data = camera.data
    slot = next((bg for bg in data.background_images if bg.image == image), None)
    if slot is None:
        slot = data.background_images.new()
        slot.source = "IMAGE"
        slot.image = image
    slot.alpha = alpha
    slot.display_depth = "BACK"
    slot.frame_method = "FIT"
    data.show_background_images = True


def show_in_image_editors(image: bpy.types.Image, screen: bpy.types.Screen | None = None) -> int:
    """Display ``image`` in every Image Editor of ``screen`` (default: the current one); returns how many."""
    screen = screen or getattr(bpy.context, "screen", None)
    if screen is None:
        return 0
    count = 0
    for area in screen.areas:
        if area.type == "IMAGE_EDITOR":
            area.spaces.active.image = image
            area.tag_redraw()
            count += 1
    return count
