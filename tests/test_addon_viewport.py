"""Rendered frames into Blender images: values, row order, sizes, camera background."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon.viewport import FrameWriter, frame_pixels, show_behind_camera, show_in_image_editors  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module", autouse=True)
def blender():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)


def image_rows_top_first(image: bpy.types.Image) -> np.ndarray:
    width, height = image.size
    pixels = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, 4)[::-1]


def test_uint8_frame_lands_top_row_first_scaled_to_unit_range():
    frame = np.random.default_rng(0).integers(0, 256, (6, 10, 4), dtype=np.uint8)
    frame[0, 0] = (255, 0, 0, 255)  # top-left red
    image = FrameWriter("live uint8").write(frame)
    assert tuple(image.size) == (10, 6) and image.is_float
    assert image.colorspace_settings.name == "Non-Color"
    stored = image_rows_top_first(image)
    np.testing.assert_allclose(stored, frame / 255.0, atol=1e-7)
    np.testing.assert_array_equal(stored[0, 0], [1.0, 0.0, 0.0, 1.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_float_frames_are_stored_exactly(dtype):
    frame = np.random.default_rng(1).random((5, 7, 4)).astype(dtype)
    image = FrameWriter(f"live {np.dtype(dtype).name}").write(frame)
    np.testing.assert_array_equal(image_rows_top_first(image), frame.astype(np.float32))


def test_straight_alpha_is_premultiplied_on_request():
    frame = np.zeros((2, 2, 4), np.float32)
    frame[...] = (0.8, 0.6, 0.4, 0.5)
    image = FrameWriter("straight").write(frame, premultiplied=False)
    np.testing.assert_allclose(image_rows_top_first(image)[0, 0], [0.4, 0.3, 0.2, 0.5], atol=1e-7)


def test_writer_resizes_its_image_and_reuses_the_buffer():
    writer = FrameWriter("resized")
    first = writer.write(np.zeros((4, 4, 4), np.uint8))
    buffer = writer._buffer
    writer.write(np.full((4, 4, 4), 255, np.uint8))
    assert writer._buffer is buffer  # same size: no new allocation
    second = writer.write(np.full((3, 8, 4), 128, np.uint8))
    assert second == first and tuple(second.size) == (8, 3)
    np.testing.assert_allclose(image_rows_top_first(second), 128 / 255.0, atol=1e-7)
    assert len([image for image in bpy.data.images if image.name.startswith("resized")]) == 1


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match=r"\(height, width, 4\)"):
        frame_pixels(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8, float16 or float32"):
        frame_pixels(np.zeros((4, 4, 4), np.int32))


def test_image_shows_behind_camera_once_and_in_image_editors():
    camera_data = bpy.data.cameras.new("view")
    camera = bpy.data.objects.new("view", camera_data)
    image = FrameWriter("behind").write(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no active camera"):
        show_behind_camera(image)
    bpy.context.scene.camera = camera
    show_behind_camera(image, alpha=0.7)  # the active camera
    show_behind_camera(image, camera, alpha=0.9)
    assert camera_data.show_background_images and len(camera_data.background_images) == 1
    assert camera_data.background_images[0].image == image
    assert camera_data.background_images[0].alpha == pytest.approx(0.9)
    with pytest.raises(ValueError, match="camera"):
        show_behind_camera(image, bpy.data.objects.new("empty", None))
    screen = bpy.data.screens["UV Editing"]
    assert show_in_image_editors(image, screen) == 1
    editor = next(area for area in screen.areas if area.type == "IMAGE_EDITOR")
    assert editor.spaces.active.image == image
