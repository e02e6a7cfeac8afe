"""Per-start tokens and the check of a connection's first message."""

from __future__ import annotations

import hmac
import secrets

from blender_addon import wire

AUTH_TIMEOUT_SECONDS = 10.0  # an unauthenticated connection must say hello within this time


def new_token() -> str:
    """A fresh random token (256 bits), written only to the owner-only connection file."""
    return secrets.token_urlsafe(32)


def check_hello(message: wire.Message, token: str) -> None:
    """Accept only ``hello`` carrying the right token; raise ProtocolError otherwise."""
    header = message.header
    if header.get("kind") != "request" or header.get("type") != "hello":
        raise wire.ProtocolError(wire.AUTH_REQUIRED, "the first message must be a 'hello' request carrying the token")
    params = header.get("params")
    offered = params.get("token") if isinstance(params, dict) else None
    if not isinstance(offered, str):
        raise wire.ProtocolError(wire.AUTH_REQUIRED, "'hello' must carry params.token (from the connection file)")
    # compare_digest on bytes: time does not depend on how much of the token matched.
    if not hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), token.encode("utf-8")):
        raise wire.ProtocolError(wire.AUTH_FAILED, "wrong token (the server was restarted? read the connection file again)")
