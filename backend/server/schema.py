"""Declared request parameters and their validation.

A handler declares its JSON parameters as ``{"name": Field}`` and its binary arrays as
``{"name": Array(...)}``; the connection checks every request against them before the
handler runs, so handlers see clean values (finite numbers, absolute paths, numpy arrays of
the declared dtype and shape) and bad input becomes a ``bad_request`` reply naming the value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from blender_addon.wire import WireArray
from backend.errors import AvatarError

_MISSING = object()


class BadRequest(AvatarError):
    """A request's parameters or arrays do not match what the handler declared."""

    code = "bad_request"


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_names(names: Sequence[Any], most: int = 8) -> str:
    """Names from the peer, quoted and bounded (a reply must never grow with the request)."""
    shown = ", ".join(_describe(name) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class Field:
    """One JSON parameter. ``default`` makes it optional (``None`` is a valid default)."""

    def __init__(self, *, default: Any = _MISSING, doc: str = ""):
        self.default = default
        self.doc = doc

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def clean(self, where: str, value: Any) -> Any:
        raise NotImplementedError


class Boolean(Field):
    def clean(self, where: str, value: Any) -> bool:
        if type(value) is not bool:
            raise BadRequest(f"{where}: must be true or false, got {_describe(value)}")
        return value


class Integer(Field):
    def __init__(self, *, min: int | None = None, max: int | None = None, **options: Any):
        super().__init__(**options)
        self.min, self.max = min, max

    def clean(self, where: str, value: Any) -> int:
        if type(value) is not int:
            raise BadRequest(f"{where}: must be an integer, got {_describe(value)}")
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            raise BadRequest(f"{where}: {value} is outside {self.min}..{self.max}")
        return value


class Number(Field):
    """A finite float (ints accepted)."""

    def __init__(self, *, min: float | None = None, max: float | None = None, **options: Any):
        super().__init__(**options)
        self.min, self.max = min, max

    def clean(self, where: str, value: Any) -> float:
        if type(value) not in (int, float):
            raise BadRequest(f"{where}: must be a number, got {_describe(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            raise BadRequest(f"{where}: {str(value)[:30]}... is too large") from None
        if not math.isfinite(number):
            raise BadRequest(f"{where}: must be finite, got {value}")
        if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
            raise BadRequest(f"{where}: {value} is outside {self.min}..{self.max}")
        return number


class String(Field):
    def __init__(self, *, choices: Sequence[str] | None = None, max_length: int = 1024, **options: Any):
        super().__init__(**options)
        self.choices = tuple(choices) if choices is not None else None
        self.max_length = max_length

    def clean(self, where: str, value: Any) -> str:
        if type(value) is not str:
            raise BadRequest(f"{where}: must be a string, got {_describe(value)}")
        if self.choices is not None and value not in self.choices:
            raise BadRequest(f"{where}: {_describe(value)} is not one of {', '.join(self.choices)}")
        if len(value) > self.max_length:
            raise BadRequest(f"{where}: longer than {self.max_length} characters")
        return value


class FilePath(Field):
    """An absolute path on the server's machine; ``exists`` = "file", "dir" or None (anything)."""

    def __init__(self, *, exists: str | None = None, **options: Any):
        super().__init__(**options)
        if exists not in (None, "file", "dir"):
            raise ValueError(f"exists must be None, 'file' or 'dir', not {exists!r}")
        self.exists = exists

    def clean(self, where: str, value: Any) -> Path:
        if type(value) is not str or not value or "\x00" in value or len(value) > 4096:
            raise BadRequest(f"{where}: must be a path string, got {_describe(value)}")
        try:
            os.fsencode(value)  # a name the file system can hold (no lone surrogates)
            path = Path(value).expanduser()
            if not path.is_absolute():
                raise BadRequest(f"{where}: {value!r} must be an absolute path (the server's working folder is not the client's)")
            path.exists()  # raises for names the file system refuses (too long, ...)
            if self.exists == "file" and not path.is_file():
                raise BadRequest(f"{where}: {path} is not an existing file")
            if self.exists == "dir" and not path.is_dir():
                raise BadRequest(f"{where}: {path} is not an existing folder")
        except (RuntimeError, OSError, ValueError) as error:  # ~nosuchuser, names too long, ...
            raise BadRequest(f"{where}: {_describe(value)} is not a usable path ({error})") from None
        return path


class List(Field):
    """A JSON list whose items all match ``item``; length bounds optional."""

    def __init__(self, item: Field, *, min_length: int = 0, max_length: int = 1024, **options: Any):
        super().__init__(**options)
        self.item, self.min_length, self.max_length = item, min_length, max_length

    def clean(self, where: str, value: Any) -> list[Any]:
        if type(value) is not list:
            raise BadRequest(f"{where}: must be a list, got {_describe(value)}")
        if not self.min_length <= len(value) <= self.max_length:
            raise BadRequest(f"{where}: must have {self.min_length}..{self.max_length} items, got {len(value)}")
        return [self.item.clean(f"{where}[{index}]", item) for index, item in enumerate(value)]


ShapePattern = tuple[int | str | None, ...]


@dataclass(frozen=True)
class Array:
    """A binary array: allowed dtypes and a shape pattern.

    Shape entries: an int (exact), None (any) or a name: the same name must have the same
    size in every array of the request (e.g. ``("T", 63)`` and ``("T", 3)``). ``or_shapes``
    lists further accepted patterns, e.g. ``(3, 3)`` for one camera shared by all T frames.
    """

    dtypes: tuple[str, ...]
    shape: ShapePattern
    required: bool = True
    finite: bool = True
    doc: str = ""
    or_shapes: tuple[ShapePattern, ...] = ()


ANY_ARRAYS: Mapping[str, Array] | None = None  # marker: accept any arrays unchecked (diagnostics only)


def as_numpy(array: WireArray) -> np.ndarray:
    """A zero-copy numpy view of a received array."""
    return np.frombuffer(array.data, dtype=np.dtype(array.dtype).newbyteorder("<")).reshape(array.shape)


def validate_params(schema: Mapping[str, Field], params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise BadRequest(f"params: must be an object, got {_describe(params)}")
    unknown = sorted(set(params) - set(schema))
    if unknown:
        raise BadRequest(f"params: unknown key(s) {_describe_names(unknown)}; expected {', '.join(schema) or 'none'}")
    cleaned: dict[str, Any] = {}
    for name, field in schema.items():
        if name in params:
            value = params[name]
            cleaned[name] = None if value is None and field.default is None else field.clean(f"params.{name}", value)
        elif field.required:
            raise BadRequest(f"params.{name}: required")
        else:
            cleaned[name] = field.default
    return cleaned


def validate_arrays(schema: Mapping[str, Array] | None, arrays: Mapping[str, WireArray]) -> dict[str, np.ndarray]:
    if schema is ANY_ARRAYS:
        return {name: as_numpy(array) for name, array in arrays.items()}
    unknown = sorted(set(arrays) - set(schema))
    if unknown:
        raise BadRequest(f"arrays: unexpected {_describe_names(unknown)}; expected {', '.join(schema) or 'none'}")
    sizes: dict[str, tuple[int, str]] = {}
    cleaned: dict[str, np.ndarray] = {}
    for name, spec in schema.items():
        if name not in arrays:
            if spec.required:
                raise BadRequest(f"arrays.{name}: required ({'|'.join(spec.dtypes)} {_shape_text(spec.shape)})")
            continue
        array = arrays[name]
        if array.dtype not in spec.dtypes:
            raise BadRequest(f"arrays.{name}: dtype {array.dtype} not allowed, expected {' or '.join(spec.dtypes)}")
        patterns = (spec.shape, *spec.or_shapes)
        problems = [_shape_problem(name, tuple(array.shape), pattern, sizes) for pattern in patterns]
        if all(problems):
            same_rank = [problem for problem, pattern in zip(problems, patterns) if len(pattern) == len(array.shape)]
            if len(same_rank) == 1:
                raise BadRequest(same_rank[0])
            raise BadRequest(
                f"arrays.{name}: shape {list(array.shape)} does not match {' or '.join(map(_shape_text, patterns))}"
            )
        matched = patterns[problems.index(None)]
        for size, want in zip(array.shape, matched):
            if isinstance(want, str):
                sizes.setdefault(want, (size, name))
        value = as_numpy(array)
        if spec.finite and value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
            raise BadRequest(f"arrays.{name}: contains NaN or infinite values")
        cleaned[name] = value
    return cleaned


def _shape_problem(
    name: str, shape: tuple[int, ...], pattern: ShapePattern, sizes: Mapping[str, tuple[int, str]]
) -> str | None:
    """Why ``shape`` does not fit ``pattern`` (given the named sizes seen so far), or None if it does."""
    mismatch = f"arrays.{name}: shape {list(shape)} does not match {_shape_text(pattern)}"
    if len(shape) != len(pattern):
        return mismatch
    seen = dict(sizes)
    for axis, (size, want) in enumerate(zip(shape, pattern)):
        if isinstance(want, int) and size != want:
            return mismatch
        if isinstance(want, str):
            known, where = seen.setdefault(want, (size, name))
            if known != size:
                return f"arrays.{name}: axis {axis} ({want}) is {size} but {where} has {want}={known}"
    return None


def _shape_text(shape: ShapePattern) -> str:
    return "(" + ", ".join("*" if size is None else str(size) for size in shape) + ")"
