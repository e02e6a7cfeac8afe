"""Trained avatars: the avatar folder format and loading an avatar for rendering.

    avatar = load_avatar("out/avatar")                 # validates avatar.json and the checkpoint
    avatar.info()                                      # method, steps, resolution, capture, body models
    rgba = avatar.render(poses, K, world_to_camera, 512)   # (B, 512, 512, 4) premultiplied RGBA
    for frame in avatar.render_sequence(poses, K, world_to_camera, (H, W)): ...

Writing files (PNG sequences, MP4) is :func:`backend.render.bake`.
"""

from __future__ import annotations

from backend.avatar.avatar import Avatar, load_avatar

__all__ = ["Avatar", "load_avatar"]
