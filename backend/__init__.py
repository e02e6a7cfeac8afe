"""Neural Avatar backend: body models, rasterizers, avatar networks, training, MDA and the local server.

Never imports bpy. Entry point: ``python -m backend`` (see backend.cli).
"""

__version__ = "0.1.0"
