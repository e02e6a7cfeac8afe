"""Request ``body_template``: a body model's rest mesh, skeleton, skinning and blendshapes for the add-on.

Loaded models are kept (the 8 most recently used, keyed by family, resolved model folder and
gender/side), since loading SMPL-X takes seconds and every import needs one. The model
folders come from the add-on's preferences (``models``); a family left empty falls back to
``ModelFolders.resolve`` (environment, then the generated stand-in), as on the command line.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from backend.bodies import BodyModel, load_faceverse, load_mano, load_smplx
from backend.bodies.smplx_family import MANO_SIDES, SMPLX_GENDERS
from backend.paths import FAMILIES, ModelFolders
from backend.server.registry import Request, Result, handler
from backend.server.schema import Array, BadRequest, Field, FilePath, String


class ModelFolderChoice(Field):
    """``{"smplx": path, "mano": path, "faceverse": path}``; ``""`` or a missing family = the default.

    Cleans to a resolved :class:`ModelFolders` (explicit folders win over the environment).
    """

    def clean(self, where: str, value: Any) -> ModelFolders:
        if not isinstance(value, dict):
            raise BadRequest(f"{where}: must be an object mapping {', '.join(FAMILIES)} to folders")
        unknown = sorted(set(value) - set(FAMILIES))
        if unknown:
            raise BadRequest(f"{where}: unknown model famil{'y' if len(unknown) == 1 else 'ies'} {unknown}; expected {', '.join(FAMILIES)}")
        chosen: dict[str, Path | None] = {}
        for family in FAMILIES:
            folder = value.get(family) or ""
            if not isinstance(folder, str):
                raise BadRequest(f"{where}.{family}: must be a folder path or \"\", got {folder!r:.60}")
            chosen[family] = FilePath().clean(f"{where}.{family}", folder.strip()) if folder.strip() else None
        return ModelFolders.resolve(**chosen)


MODEL_FOLDERS = ModelFolderChoice(default=None, doc="model folder per family from the add-on preferences")


class BodyModelCache:
    """Loaded body models shared by all connections; each model is loaded once, even under
    concurrent requests. The least recently used model goes when more than ``capacity`` are held."""

    def __init__(self, capacity: int = 8) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple, BodyModel] = OrderedDict()
        self._loading: dict[tuple, threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def get(self, key: tuple, load: Callable[[], BodyModel]) -> BodyModel:
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # other keys keep loading in parallel
            with self._lock:
                model = self._models.get(key)
            if model is None:
                model = load()
                with self._lock:
                    self._models[key] = model
                    self._loading.pop(key, None)
                    while len(self._models) > self.capacity:
                        self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODEL_CACHE = BodyModelCache()


def cached_body_model(family: str, folders: ModelFolders | None = None, gender: str = "neutral", side: str = "right") -> BodyModel:
    """The server's shared instance of a body model (loaded on first use); raises ``ModelFileError``."""
    folders = folders or ModelFolders.resolve()
    folder = getattr(folders, family)
    folder = folder.resolve() if folder is not None else None  # one entry however the folder is spelt
    if family == "smplx":
        return MODEL_CACHE.get((family, folder, gender), lambda: load_smplx(folders, gender=gender))
    if family == "mano":
        return MODEL_CACHE.get((family, folder, side), lambda: load_mano(folders, side=side))
    if family == "faceverse":
        return MODEL_CACHE.get((family, folder), lambda: load_faceverse(folders))
    raise BadRequest(f"unknown body-model family {family!r}; expected one of {', '.join(FAMILIES)}")


def fit_betas(betas: np.ndarray | None, count: int) -> tuple[np.ndarray | None, int]:
    """Betas padded with zeros (exact) or cut to the model's ``count`` directions; returns (betas, dropped)."""
    if betas is None:
        return None, 0
    betas = np.asarray(betas, np.float32).reshape(-1)
    if betas.shape[0] >= count:
        return betas[:count].copy(), int(betas.shape[0] - count)
    return np.concatenate([betas, np.zeros(count - betas.shape[0], np.float32)]), 0


@handler(
    "body_template",
    params={
        "family": String(choices=FAMILIES),
        "gender": String(choices=SMPLX_GENDERS, default="neutral", doc="SMPL-X only"),
        "side": String(choices=MANO_SIDES, default="right", doc="MANO only"),
        "models": MODEL_FOLDERS,
    },
    arrays={"betas": Array(("float32", "float64"), (None,), required=False, doc="identity (SMPL betas / FaceVerse id)")},
)
def body_template(request: Request) -> Result:
    """Rest mesh, joints, skinning weights and shape/expression directions of a body model, with its names.

    ``betas`` longer than the model's shape directions are cut (``betas_dropped`` says how
    many values were ignored), shorter ones padded with zeros.
    """
    params = request.params
    family = params["family"]
    model = cached_body_model(family, params["models"], gender=params["gender"], side=params["side"])
    betas, dropped = fit_betas(request.arrays.get("betas"), len(model.shape_names))
    arrays = model.template(betas)
    data = {
        "family": model.family,
        "label": model.label,
        "is_standin": bool(model.is_standin),
        "source": str(model.source),
        "joint_names": list(model.joint_names),
        "shape_names": list(model.shape_names),
        "expression_names": list(model.expression_names),
        "betas_dropped": dropped,
    }
    if family == "smplx":
        data["gender"] = params["gender"]
    if family == "mano":
        data["side"] = params["side"]
    return Result(data, arrays)
