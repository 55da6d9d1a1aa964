"""Morphable-model loaders, one module per file format, behind one registry.

``load_model(path)`` takes a file or a directory holding one and detects the
format.  Each format module exposes ``FORMAT = ModelFormat(...)`` with a
``detect(path) -> bool`` that only looks at names / headers and a
``load(path) -> MorphableModel`` that raises :class:`ModelFileError` naming the
file and the missing or mis-shaped key.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dhm_data.errors import ModelFileError
from dhm_data.models.morphable import MorphableModel


@dataclass(frozen=True)
class ModelFormat:
    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], MorphableModel]


# Order matters: the first format whose detect() accepts the path wins.
_FORMAT_MODULES = [
    "compact",
    "bfm68_text",
    "bfm2009",
    "face3d",
    "tddfa_v2",
    "surrey",
]


def formats() -> list[ModelFormat]:
    """All registered formats (modules that are importable)."""
    out = []
    for mod in _FORMAT_MODULES:
        try:
            m = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as e:  # a format module not written yet
            if e.name == f"{__name__}.{mod}":
                continue
            raise
        out.append(m.FORMAT)
    return out


def detect_format(path) -> ModelFormat:
    """The format of ``path`` (a file, or a directory holding one model)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileError(f"{p}: no such file or directory (expected a morphable-model file or a folder holding one)")
    for fmt in formats():
        if fmt.detect(p):
            return fmt
    names = ", ".join(f"{f.name} ({f.description})" for f in formats())
    raise ModelFileError(f"{p}: not a morphable model this version can read; known formats: {names}")


#: model families whose coefficients mean the same thing (a dataset's 3DMM
#: labels belong to one): the Basel Face Model 2009 with the 3DDFA expression
#: components (300W-LP, AFLW2000-3D), the Surrey Face Model, the packaged
#: SYNTHETIC model
FAMILIES = {
    "bfm2009": "the Basel Face Model 2009 with the 3DDFA expression components (--bfm: 01_MorphableModel.mat "
               "+ the 3DDFA expression model, face3d's BFM.mat, 3DDFA_V2's bfm_noneck_v3.pkl or the 68-row subset)",
    "surrey": "the Surrey Face Model (eos)",
    "synthetic": "the packaged dhm-data SYNTHETIC face model",
}


def model_family(model: MorphableModel) -> str:
    """The family of ``model`` (a key of :data:`FAMILIES`): its loader
    records it in ``metadata["family"]``; a model saved before that (a
    compact cache) is known by its name; ``"unknown"`` otherwise."""
    family = (model.metadata or {}).get("family")
    return str(family) if family else family_of_name(model.name)


def family_of_name(name: str) -> str:
    """The family of a model known only by its name (a ``build.json``, an
    older compact file), ``"unknown"`` if the name does not say."""
    from dhm_data.models.synthetic import SYNTHETIC_MODEL_NAME  # the synthetic model is a compact file

    if name.startswith(SYNTHETIC_MODEL_NAME):
        return "synthetic"
    if name.startswith("BFM 2009"):
        return "bfm2009"
    if name.startswith("Surrey Face Model"):
        return "surrey"
    return "unknown"


def load_model(path) -> MorphableModel:
    """Load a morphable model from ``path``, detecting its format."""
    p = Path(path).expanduser()
    return detect_format(p).load(p)


def the_one_file(folder: Path, found: list, what: str, looks_like: str = "") -> Path:
    """The only entry of ``found`` (the files of ``folder`` that are a
    ``what``, e.g. ``"compact model file"``, recognised by ``looks_like``),
    or a :class:`ModelFileError` saying there is none or naming them all."""
    if not found:
        hint = f" ({looks_like})" if looks_like else ""
        raise ModelFileError(f"{folder}: no {what}{hint} in this folder")
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ModelFileError(f"{folder}: holds {len(found)} {what}s ({names}); pass one of them")
    return found[0]
