"""The request registry: request types, their declared parameters, and the functions that answer them.

Adding a request type = adding a module under ``backend/server/handlers/`` (imported at
server start) that calls into the owning package::

    from backend.server.registry import Request, Result, handler
    from backend.server.schema import Array, Number, String

    @handler("render", params={"avatar": String(), "fov": Number(min=1, max=170)},
             arrays={"body_pose": Array(("float32",), (63,))})
    def render(request: Request) -> Result:
        image = ...  # request.params, request.arrays (numpy), request.server (shared state)
        return Result({"frame": 0}, {"image": image})

A handler returns a JSON-able dict or a :class:`Result`; streaming handlers call
``request.send_event(...)`` before returning. Raise a ``backend.errors.AvatarError``
(its ``code`` and message reach the client) or :class:`RequestError` for failures; any
other exception is an ``internal`` error whose traceback goes only to the server log.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import traceback
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from backend.errors import AvatarError
from backend.server.schema import Array, Field

if TYPE_CHECKING:
    from backend.server.context import ServerContext

log = logging.getLogger("backend.server")


class RequestError(AvatarError):
    """A structured failure with its own code, e.g. ``not_found``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class ClientGone(Exception):
    """The client closed its connection (e.g. in the middle of a stream)."""


@dataclass
class Result:
    """A reply: JSON data plus optional arrays (numpy or any C-contiguous buffer)."""

    data: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    """What a handler receives: validated params, arrays as numpy, and the shared server state."""

    id: int | str
    type: str
    params: dict[str, Any]
    arrays: dict[str, np.ndarray]
    server: "ServerContext"
    _send_event: Callable[[str, Mapping[str, Any], Mapping[str, Any] | None], None]
    _after_reply: list[Callable[[], None]] = field(default_factory=list)

    def send_event(self, event: str, data: Mapping[str, Any] | None = None, arrays: Mapping[str, Any] | None = None) -> None:
        """Stream an event to the client before the reply; raises :class:`ClientGone` if it left."""
        self._send_event(event, data or {}, arrays)

    def after_reply(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the reply has been sent (e.g. shutting the server down)."""
        self._after_reply.append(action)


HandlerFunction = Callable[[Request], "dict[str, Any] | Result | None"]


@dataclass(frozen=True)
class Handler:
    name: str
    function: HandlerFunction
    params: Mapping[str, Field]
    arrays: Mapping[str, Array] | None
    doc: str


HANDLERS: dict[str, Handler] = {}
HANDLER_PACKAGE = "backend.server.handlers"
# Handler modules that failed to import: module name -> one-line reason (shown by ``info``).
HANDLER_LOAD_ERRORS: dict[str, str] = {}


NO_ARRAYS: Mapping[str, Array] = MappingProxyType({})


def handler(
    name: str, *, params: Mapping[str, Field] | None = None, arrays: Mapping[str, Array] | None = NO_ARRAYS
) -> Callable[[HandlerFunction], HandlerFunction]:
    """Register ``function`` as the answer to requests of type ``name``.

    ``arrays`` declares the binary arrays (default: none allowed; ``schema.ANY_ARRAYS``
    accepts any, for diagnostics).
    """

    def register(function: HandlerFunction) -> HandlerFunction:
        register_handler(name, function, params=params or {}, arrays=arrays)
        return function

    return register


def register_handler(
    name: str, function: HandlerFunction, *, params: Mapping[str, Field], arrays: Mapping[str, Array] | None
) -> None:
    if name in HANDLERS and HANDLERS[name].function is not function:
        raise ValueError(f"request type {name!r} is already handled by {HANDLERS[name].function.__module__}")
    HANDLERS[name] = Handler(name, function, dict(params), arrays, (function.__doc__ or "").strip())


def load_handler_modules() -> None:
    """Import every module of ``backend/server/handlers/`` (each registers its request types).

    A module that fails to import is logged with its traceback and skipped, so one broken
    feature does not take the whole server down; ``info`` lists it.
    """
    package = importlib.import_module(HANDLER_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__, prefix=HANDLER_PACKAGE + "."):
        try:
            importlib.import_module(module.name)
        except Exception as error:  # noqa: BLE001 - reported, and the rest of the server still works
            HANDLER_LOAD_ERRORS[module.name] = f"{type(error).__name__}: {error}"
            log.error("handler module %s failed to import:\n%s", module.name, traceback.format_exc())
