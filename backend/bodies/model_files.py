"""Body-model files on disk: find them, read them safely, check them, convert and write them.

Real SMPL-X / MANO files are local files the user chose, but they are still read without
running code from them: ``.npz`` members go through ``np.load(allow_pickle=False)`` and
anything pickled (``.pkl`` files, object members of an ``.npz``) through
:class:`RestrictedUnpickler`, which builds only numpy arrays, scipy sparse matrices and
plain containers, and turns chumpy ``Ch`` objects (found in real MANO/SMPL ``.pkl``
files) into numpy arrays without importing chumpy.

Files that needed any of that are rewritten once as a clean ``.npz`` under
``cache_dir()/converted/`` (keyed by the source file's sha256), which is what ``smplx``
is then given. FaceVerse's pickled-dict ``.npy`` files go through the same unpickler. The module
also holds the atomic-write and stand-in bookkeeping helpers (generator name, version and sha256
in a ``<file>.standin.json`` sidecar) used by all the stand-in generators.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from backend.errors import ModelFileError
from backend.paths import MODEL_SOURCES, cache_dir

SMPLX_NUM_JOINTS = 55
MANO_NUM_JOINTS = 16
HAND_POSE_WIDTH = 45  # 15 joints x axis-angle

# ----------------------------------------------------------------------------- file names


def smplx_file_names(gender: str) -> tuple[str, ...]:
    """File names ``smplx.create`` uses for a gender, in the order we look for them."""
    tag = gender.upper()
    return (f"SMPLX_{tag}.npz", f"SMPLX_{tag}.pkl")


def mano_file_names(side: str) -> tuple[str, ...]:
    tag = "RIGHT" if side == "right" else "LEFT"
    return (f"MANO_{tag}.pkl", f"MANO_{tag}.npz")


def locate_model_file(path: str | Path, family: str, names: Iterable[str]) -> Path:
    """Resolve a user-given file or folder to the model file.

    A folder is searched for ``names`` directly and in its ``<family>/`` sub-folder (the
    layout ``smplx.create`` expects). Raises ModelFileError listing what was looked for.
    """
    path = Path(path).expanduser()
    hint = MODEL_SOURCES[family]
    if path.is_file():
        return path
    if not path.exists():
        raise ModelFileError(path, "does not exist", hint=hint)
    looked_for = []
    for folder in (path, path / family):
        for name in names:
            candidate = folder / name
            looked_for.append(str(candidate.relative_to(path)))
            if candidate.is_file():
                return candidate
    raise ModelFileError(path, f"no {family} model file in this folder; looked for {', '.join(looked_for)}", hint=hint)


# ----------------------------------------------------------------------------- safe unpickling


class _ChumpyArray:
    """Stands in for any chumpy object while unpickling; keeps the pickled state only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray | None:
        """The wrapped value for plain ``Ch`` objects (their ``x``); None for derived expressions."""
        if isinstance(self.state, dict) and isinstance(self.state.get("x"), np.ndarray):
            return self.state["x"]
        return None


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Every global a pickle of numpy arrays, sparse matrices and plain values refers to, and nothing else.

    Serves SMPL-family ``.pkl`` files, object members of ``.npz`` files and FaceVerse's pickled-dict ``.npy``.
    """
    import copyreg

    import scipy.sparse

    sample = np.zeros(1)
    # numpy's rebuild functions, taken from numpy itself so the module they live in (numpy.core in 1.x,
    # numpy._core in 2.x) does not matter; files written by either version name one of the two.
    reconstruct, scalar = sample.__reduce__()[0], np.float64(0).__reduce__()[0]
    frombuffer = sample.__reduce_ex__(5)[0]  # protocol-5 pickles of contiguous arrays
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = frombuffer
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = copyreg._reconstructor
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(text, "latin1"); it only encodes text.
    allowed[("_codecs", "encode")] = codecs.encode
    # Plain value types (Python 2 and 3 module names): sets, empty bytes, complex numbers and the like are
    # pickled as calls of their type; none of these can reach anything else.
    plain = (object, dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool)
    for module in ("__builtin__", "builtins"):
        for builtin in plain:
            allowed[(module, builtin.__name__)] = builtin
    # Real SMPL-family pickles store J_regressor as a sparse matrix; the module path changed over scipy versions.
    for kind in ("csc", "csr", "coo"):
        cls = getattr(scipy.sparse, f"{kind}_matrix")
        for module in (f"scipy.sparse.{kind}", f"scipy.sparse._{kind}", "scipy.sparse"):
            allowed[(module, f"{kind}_matrix")] = cls
    return allowed


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (``qualified_name``, e.g. ``posix.system``)."""

    def __init__(self, module: str, name: str):
        self.qualified_name = f"{module}.{name}"
        super().__init__(f"refusing to load {self.qualified_name} (only numpy/scipy data is allowed)")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays, scipy sparse matrices and plain containers.

    Any other global (``os.system``, ``builtins.eval``, ...) raises :class:`ForbiddenGlobal` before
    anything is called. chumpy classes map to :class:`_ChumpyArray` so chumpy is never imported.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyArray
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed in a model file")


def restricted_load(stream: IO[bytes]) -> Any:
    """Unpickle with :class:`RestrictedUnpickler` (latin1 strings, as Python 2 era model files need)."""
    return RestrictedUnpickler(stream, encoding="latin1").load()


def read_npy_header(stream: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read a ``.npy`` header (format 1.0 or 2.0): (shape, fortran_order, dtype); the data follows.

    Raises ValueError for anything that is not such a header.
    """
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    raise ValueError(f".npy format version {version} is not supported")


# ----------------------------------------------------------------------------- reading


@dataclass
class ModelData:
    """The arrays of a model file, plus how they were read."""

    path: Path
    arrays: dict[str, Any]  # np.ndarray, or a scipy sparse matrix for J_regressor
    needs_conversion: bool  # pickled content, chumpy, sparse or object members: smplx must get a clean copy
    skipped: list[str] = field(default_factory=list)  # non-array entries left out (e.g. part2num dicts)

    def dense(self, key: str) -> np.ndarray:
        value = self.arrays[key]
        return np.asarray(value.toarray() if hasattr(value, "toarray") else value)


def _plain_value(value: Any) -> Any:
    """numpy arrays and sparse matrices pass; chumpy placeholders become arrays; anything else -> None."""
    if isinstance(value, _ChumpyArray):
        return value.to_array()
    if isinstance(value, np.ndarray):
        return value if value.dtype != object else None
    if hasattr(value, "toarray") and hasattr(value, "shape"):
        return value
    return None


def _load_model_pickle(stream: IO[bytes], path: Path, family: str, what: str) -> Any:
    """:func:`restricted_load` with every failure turned into a ModelFileError naming the file."""
    try:
        return restricted_load(stream)
    except ForbiddenGlobal as error:
        raise ModelFileError(path, f"unsafe {what}: {error}", hint=MODEL_SOURCES[family]) from None
    except Exception as error:
        # A damaged or hand-made stream fails in many ways: truncated data (EOFError), opcodes out of place
        # (UnpicklingError, IndexError), allowed globals given bad arguments (_codecs.encode('a', 'nope') ->
        # LookupError, dict(5) -> TypeError), ... Only the allow-list decides what is built; all else is a bad file.
        problem = f"truncated or corrupt {what} ({type(error).__name__}: {error})"
        raise ModelFileError(path, problem, hint=MODEL_SOURCES[family]) from None


def _read_pickle(path: Path, family: str) -> ModelData:
    with open(path, "rb") as stream:
        content = _load_model_pickle(stream, path, family, "pickle")
    if not isinstance(content, dict):
        raise ModelFileError(path, f"expected a pickled dict of arrays, found {type(content).__name__}", hint=MODEL_SOURCES[family])
    arrays, skipped = {}, []
    for key, value in content.items():
        plain = _plain_value(value)
        if plain is None:
            skipped.append(str(key))
        else:
            arrays[str(key)] = plain
    return ModelData(path, arrays, needs_conversion=True, skipped=skipped)


def _read_object_member(path: Path, family: str, member: str) -> Any:
    """Read an object-dtype ``.npy`` member of the npz ``path`` through the restricted unpickler."""
    with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
        read_npy_header(stream)
        return _load_model_pickle(stream, path, family, f"object member {member}")


def _read_npz(path: Path, family: str) -> ModelData:
    hint = MODEL_SOURCES[family]
    arrays: dict[str, Any] = {}
    skipped: list[str] = []
    needs_conversion = False
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            for key in keys:
                try:
                    arrays[key] = npz[key]
                except ValueError as error:
                    if "allow_pickle" not in str(error):
                        raise
                    needs_conversion = True  # smplx would unpickle this member; give it a clean copy instead
                    value = _plain_value(_read_object_member(path, family, f"{key}.npy"))
                    if value is None:
                        skipped.append(key)
                    else:
                        arrays[key] = value
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as error:
        raise ModelFileError(path, f"truncated or corrupt .npz ({type(error).__name__}: {error})", hint=hint) from None
    return ModelData(path, arrays, needs_conversion=needs_conversion, skipped=skipped)


def read_model_file(path: Path, family: str) -> ModelData:
    """Read a ``.npz`` or ``.pkl`` model file without executing anything from it."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        data = _read_npz(path, family)
    elif suffix == ".pkl":
        data = _read_pickle(path, family)
    else:
        raise ModelFileError(path, f"unsupported file type {suffix!r}; expected .npz or .pkl", hint=MODEL_SOURCES[family])
    if any(hasattr(value, "toarray") for value in data.arrays.values()):
        data.needs_conversion = True
    return data


# ----------------------------------------------------------------------------- validation


class _Checker:
    """Shape/key checks that raise ModelFileError naming the file, the key and what is wrong."""

    def __init__(self, data: ModelData, family: str):
        self.data = data
        self.hint = MODEL_SOURCES[family]

    def fail(self, problem: str) -> ModelFileError:
        return ModelFileError(self.data.path, problem, hint=self.hint)

    def get(self, key: str) -> Any:
        if key not in self.data.arrays:
            if key in self.data.skipped:
                raise self.fail(f"key {key!r} is not a numeric array")
            raise self.fail(f"missing key {key!r}")
        return self.data.arrays[key]

    def shape(self, key: str, expected: tuple[int | str, ...], sizes: dict[str, int]) -> tuple[int, ...]:
        """Check ``key`` against a pattern like (``"V"``, 3); letters bind to sizes on first sight."""
        value = self.get(key)
        shape = tuple(int(n) for n in value.shape)
        pattern = "(" + ", ".join(str(e) for e in expected) + ")"
        if len(shape) != len(expected):
            raise self.fail(f"{key} has shape {shape}, expected {pattern}")
        for actual, want in zip(shape, expected):
            if isinstance(want, str):
                bound = sizes.setdefault(want, actual)
                if bound != actual:
                    raise self.fail(f"{key} has shape {shape}, expected {pattern} with {want}={bound}")
            elif actual != want:
                raise self.fail(f"{key} has shape {shape}, expected {pattern}")
        dtype = getattr(value, "dtype", None)
        if dtype is None or dtype.kind not in "fiu":
            raise self.fail(f"{key} has dtype {dtype}, expected numbers")
        return shape

    def finite(self, *keys: str) -> None:
        for key in keys:
            value = self.data.dense(key)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise self.fail(f"{key} contains NaN or infinite values")

    def indices(self, key: str, upper: int, what: str) -> None:
        value = np.asarray(self.get(key))
        if value.size and (value.dtype.kind not in "iu" or value.min() < 0 or value.max() >= upper):
            raise self.fail(f"{key} must hold integer {what} indices in [0, {upper})")

    def kintree(self, joints: int) -> None:
        table = np.asarray(self.get("kintree_table")).astype(np.int64)
        parents = table[0].copy()
        parents[0] = -1
        bad = [j for j in range(1, joints) if not 0 <= parents[j] < j]
        if bad:
            raise self.fail(f"kintree_table gives joint {bad[0]} the parent {parents[bad[0]]}; parents must come first")


def validate_smplx(data: ModelData) -> dict[str, int]:
    """Check an SMPL-X model's keys and shapes; return the sizes (V, F, S, J, ...)."""
    check = _Checker(data, "smplx")
    sizes: dict[str, int] = {"J": SMPLX_NUM_JOINTS}
    check.shape("v_template", ("V", 3), sizes)
    check.shape("f", ("F", 3), sizes)
    check.shape("shapedirs", ("V", 3, "S"), sizes)
    if sizes["S"] < 20:
        raise check.fail(f"shapedirs has {sizes['S']} directions; SMPL-X files have 10 shape + 10 expression (20) or 300 + 100 (400)")
    check.shape("posedirs", ("V", 3, 9 * (SMPLX_NUM_JOINTS - 1)), sizes)
    check.shape("J_regressor", ("J", "V"), sizes)
    check.shape("weights", ("V", "J"), sizes)
    check.shape("kintree_table", (2, "J"), sizes)
    for side in "lr":
        check.shape(f"hands_components{side}", ("C", HAND_POSE_WIDTH), sizes)
        check.shape(f"hands_mean{side}", (HAND_POSE_WIDTH,), sizes)
    check.shape("lmk_faces_idx", ("L",), sizes)
    check.shape("lmk_bary_coords", ("L", 3), sizes)
    if "dynamic_lmk_faces_idx" in data.arrays or "dynamic_lmk_bary_coords" in data.arrays:
        check.shape("dynamic_lmk_faces_idx", ("Y", "K"), sizes)
        check.shape("dynamic_lmk_bary_coords", ("Y", "K", 3), sizes)
        check.indices("dynamic_lmk_faces_idx", sizes["F"], "face")
    if "vt" in data.arrays or "ft" in data.arrays:
        check.shape("vt", ("T", 2), sizes)
        check.shape("ft", ("F", 3), sizes)
        check.indices("ft", sizes["T"], "texture-coordinate")
    check.indices("f", sizes["V"], "vertex")
    check.indices("lmk_faces_idx", sizes["F"], "face")
    check.kintree(SMPLX_NUM_JOINTS)
    check.finite("v_template", "shapedirs", "posedirs", "J_regressor", "weights")
    return sizes


def validate_mano(data: ModelData) -> dict[str, int]:
    """Check a MANO model's keys and shapes; return the sizes."""
    check = _Checker(data, "mano")
    sizes: dict[str, int] = {"J": MANO_NUM_JOINTS}
    check.shape("v_template", ("V", 3), sizes)
    check.shape("f", ("F", 3), sizes)
    check.shape("shapedirs", ("V", 3, "S"), sizes)
    check.shape("posedirs", ("V", 3, 9 * (MANO_NUM_JOINTS - 1)), sizes)
    check.shape("J_regressor", ("J", "V"), sizes)
    check.shape("weights", ("V", "J"), sizes)
    check.shape("kintree_table", (2, "J"), sizes)
    check.shape("hands_components", ("C", HAND_POSE_WIDTH), sizes)
    check.shape("hands_mean", (HAND_POSE_WIDTH,), sizes)
    check.indices("f", sizes["V"], "vertex")
    check.kintree(MANO_NUM_JOINTS)
    check.finite("v_template", "shapedirs", "posedirs", "J_regressor", "weights")
    return sizes


# ----------------------------------------------------------------------------- writing


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temp file in the same folder, fsync, then rename over it.

    A crash or exception leaves either the old file or none, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise


_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # a fixed timestamp keeps generated files byte-identical


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray], compress: bool = True) -> None:
    """Atomically write an ``.npz`` readable by ``np.load``, byte-identical for identical arrays.

    (``np.savez`` stamps members with the current time, so two runs would differ.)
    """
    with atomic_writer(path) as stream:
        method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        with zipfile.ZipFile(stream, mode="w", compression=method, allowZip64=True) as archive:
            for key, value in arrays.items():
                value = np.asarray(value)
                if value.dtype == object:
                    raise TypeError(f"{key}: object arrays are not written (they would need pickle)")
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_ZIP_TIME)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, value, allow_pickle=False)
                archive.writestr(info, buffer.getvalue())


def converted_copy(data: ModelData) -> Path:
    """A clean ``.npz`` of ``data`` (dense numeric arrays only) in ``cache_dir()/converted/``.

    Keyed by the source file's sha256, so each distinct file is converted once.
    """
    target = cache_dir() / "converted" / f"{sha256_file(data.path)}.npz"
    if not target.exists():
        write_npz(target, {key: data.dense(key) for key in data.arrays}, compress=False)
    return target


# ----------------------------------------------------------------------------- stand-in bookkeeping


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".standin.json")


def standin_record(path: str | Path) -> dict[str, Any] | None:
    """The sidecar record of a generated stand-in file, if ``path`` is one and unchanged since."""
    path = Path(path)
    try:
        record = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not path.is_file() or record.get("sha256") != sha256_file(path):
        return None
    return record


def ensure_standin(path: Path, generator: str, version: int, generate: Callable[[Path], None]) -> Path:
    """Return ``path``, (re)generating it with ``generate(path)`` unless an up-to-date copy exists.

    The sidecar JSON next to the file records the generator name, its version and the file's
    sha256; a different version or a changed/half-written file triggers regeneration.
    ``generate`` must write atomically (e.g. with :func:`write_npz` / :func:`atomic_writer`).
    """
    record = standin_record(path)
    if record and record.get("generator") == generator and record.get("version") == version:
        return path
    generate(path)
    payload = {"generator": generator, "version": version, "sha256": sha256_file(path)}
    with atomic_writer(_sidecar(path)) as stream:
        stream.write((json.dumps(payload, indent=2) + "\n").encode())
    return path
