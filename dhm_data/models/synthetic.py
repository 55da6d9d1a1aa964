"""The SYNTHETIC face model shipped inside the package (not the Basel Face Model).

``load_synthetic_model()`` returns a :class:`~dhm_data.models.morphable.MorphableModel`
named ``"dhm-data SYNTHETIC face model (not BFM)"``: a 720-vertex face mesh
(1,349 triangles) in BFM-like units and axes (micrometres; x to the image
right of a frontal view, y up, z towards the camera; face width at the jaw
ends 148 mm), K = 199 identity and E = 29 expression components (the sizes of
300W-LP's ``Shape_Para`` / ``Exp_Para``) with decaying prior standard
deviations, all 68 iBUG landmarks mapped, and 17 jaw contour-candidate lines
for landmark marching.  It is generated deterministically by
``scripts/make_synthetic_model.py`` (designed from facial proportions; no real
model or dataset went into it) and stored in the compact model format of
:mod:`dhm_data.models.formats.compact` (float32 arrays, zip-compressed).

It exists so that the demo, the tests and the benchmarks run without the
user's BFM; numbers measured with it say nothing about real faces.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from dhm_data.errors import ModelFileError
from dhm_data.models.formats.compact import load
from dhm_data.models.morphable import MorphableModel

#: Name of the shipped model (also the value ``SYNTHETIC.json`` records).
SYNTHETIC_MODEL_NAME = "dhm-data SYNTHETIC face model (not BFM)"
#: Identifier written as ``"model"`` in the ``SYNTHETIC.json`` of synthetic trees.
SYNTHETIC_MODEL_ID = "dhm-data-synthetic"
ASSET_NAME = "synthetic_face_model.npz"

__all__ = ["load_synthetic_model", "synthetic_model_path", "SYNTHETIC_MODEL_NAME", "SYNTHETIC_MODEL_ID"]


def synthetic_model_path() -> Path:
    """Filesystem path of the packaged model file (``dhm_data/assets/``)."""
    ref = resources.files("dhm_data").joinpath("assets", ASSET_NAME)
    if not ref.is_file():
        raise ModelFileError(
            f"{ref}: the packaged synthetic model is missing (regenerate it with "
            "`python scripts/make_synthetic_model.py` from the repository root)"
        )
    return Path(str(ref))


@functools.lru_cache(maxsize=1)
def load_synthetic_model() -> MorphableModel:
    """The shipped synthetic model (cached; the arrays are shared, do not modify).

    Shapes: mean ``(720, 3)``, identity_basis ``(720, 3, 199)``,
    expression_basis ``(720, 3, 29)``, landmark_indices ``(68,)`` (all mapped),
    triangles ``(1349, 3)``, contour_candidates 17 int arrays; micrometres.
    """
    model = load(synthetic_model_path())
    if model.name != SYNTHETIC_MODEL_NAME:
        raise ModelFileError(
            f"{synthetic_model_path()}: key 'name' is {model.name!r}, expected {SYNTHETIC_MODEL_NAME!r}"
        )
    for a in (model.mean, model.identity_basis, model.expression_basis, model.identity_std, model.expression_std):
        a.setflags(write=False)
    return model
