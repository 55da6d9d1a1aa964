"""Model and labels must belong together.

A dataset's 3DMM labels (300W-LP / AFLW2000-3D ``Shape_Para``, ``Exp_Para``)
are coefficients of one model family with fixed lengths
(:attr:`DatasetReader.parameter_model`); multiplied into another model they
give garbage without any error (the 300W-LP labels in the Surrey Face Model
put the landmarks thousands of pixels off).  :func:`check_model_for_labels`
refuses such a model before any work; the prepare stage then checks each
sample's reconstruction against its 2D labels
(:func:`dhm_data.prepare.row.label_projection_error`), and
:func:`check_label_failures` stops a build where most samples fail.
:func:`parameters_record` says in ``build.json`` which model the stored
parameters belong to; :func:`check_mesh_model` refuses, for ``show --mesh``,
a model they do not belong to.
"""

from __future__ import annotations

from dhm_data.build.prepare_stage import LABEL_MISMATCH
from dhm_data.datasets.base import DatasetReader
from dhm_data.errors import BuildError, ModelFileError
from dhm_data.models.formats import FAMILIES, family_of_name, model_family
from dhm_data.models.morphable import MorphableModel
from dhm_data.models.synthetic import SYNTHETIC_MODEL_ID

_LANDMARK_SUFFIX = " [68 landmarks]"


def labels_model(reader: DatasetReader) -> tuple | None:
    """``(family, n_identity, n_expression)`` of the model the dataset's 3DMM
    labels belong to, or None when it has none.  A tree written by
    ``dhm-data synth`` holds coefficients of the model that drew it."""
    if reader.parameter_model is None:
        return None
    marker = reader.synthetic_marker()
    if marker is not None:
        if marker.get("model") == SYNTHETIC_MODEL_ID:
            return ("synthetic", None, None)
        return ("custom:" + str(marker.get("model_name", "")), None, None)
    return tuple(reader.parameter_model)


def check_model_for_labels(model: MorphableModel, reader: DatasetReader) -> None:
    """Refuse ``model`` for a dataset whose 3DMM labels belong to another
    family, or that has more identity / expression components than the labels
    (fewer is a truncation the labels support: the components are ordered)."""
    need = labels_model(reader)
    if need is None:
        return
    family, k, e = need
    name = model.name.removesuffix(_LANDMARK_SUFFIX)
    if family.startswith("custom:"):
        wanted = family[len("custom:"):]
        if name != wanted.removesuffix(_LANDMARK_SUFFIX):
            raise ModelFileError(f"{reader.root}: this synthetic tree's Shape_Para / Exp_Para are coefficients of "
                                 f"{wanted!r}, not of the given model {model.name!r}; give that model with --bfm")
        return
    have = model_family(model)
    if have != family:
        raise ModelFileError(
            f"{reader.root}: the {reader.name} labels (Shape_Para, Exp_Para) are coefficients of "
            f"{FAMILIES.get(family, family)}; the given model {model.name!r} is of family {have!r}: its components "
            f"mean something else, and every 3D landmark and DHM would be wrong. Give a model of family {family!r}"
            + (f" with at most {k} identity and {e} expression components" if k else ""))
    if k is not None and (model.n_identity > k or model.n_expression > e):
        raise ModelFileError(
            f"{reader.root}: the {reader.name} labels hold {k} identity and {e} expression coefficients; the given "
            f"model {model.name!r} has {model.n_identity} and {model.n_expression}: give a model of family "
            f"{family!r} with at most {k} and {e} components")


def parameters_record(reader: DatasetReader, model: MorphableModel, fitted: bool) -> dict:
    """What ``build.json`` says about the stored ``shape_para`` / ``exp_para``:
    fitted with ``model``, or labels of the dataset's model family."""
    if fitted:
        return {"source": "fitted", "family": model_family(model), "model": model.name.removesuffix(_LANDMARK_SUFFIX),
                "n_identity": model.n_identity, "n_expression": model.n_expression}
    need = labels_model(reader)
    family = need[0] if need else model_family(model)
    return {"source": "labels", "family": family, "model": model.name.removesuffix(_LANDMARK_SUFFIX),
            "n_identity": need[1] if need else None, "n_expression": need[2] if need else None}


def check_mesh_model(model: MorphableModel, summary: dict) -> None:
    """Refuse ``model`` for a mesh of a build's stored parameters when they
    belong to another model (``summary``: the build's ``build.json``; a build
    written before the record says so is judged by its dataset)."""
    rec = summary.get("parameters")
    if rec is None:  # an older build.json
        fitted = bool(summary.get("fit"))
        rec = {"source": "fitted" if fitted else "labels", "model": str(summary.get("model", "")),
               "family": family_of_name(str(summary.get("model", ""))) if fitted else
               ("bfm2009" if summary.get("dataset") in ("300wlp", "aflw2000") else None)}
    name = model.name.removesuffix(_LANDMARK_SUFFIX)
    if rec["source"] == "fitted" and rec.get("model") and name != rec["model"]:
        raise ModelFileError(f"--bfm {model.source}: this build's parameters were fitted with {rec['model']!r}; "
                             f"the given model is {model.name!r}. Give the model the build was fitted with")
    family = rec.get("family")
    if family and family.startswith("custom:"):
        family = family_of_name(family[len("custom:"):])
    if family and model_family(model) != family:
        raise ModelFileError(f"--bfm {model.source}: this build's shape / expression parameters are coefficients of "
                             f"{FAMILIES.get(family, family)}; the given model {model.name!r} is of family "
                             f"{model_family(model)!r}, and its mesh would be meaningless")


def check_label_failures(model: MorphableModel, scanned: int, rejections: list) -> None:
    """Stop a build where most samples were rejected because their labels do
    not project onto the 2D labels with ``model``: the model is wrong."""
    n = sum(1 for r in rejections if r.get("reason", "").startswith(LABEL_MISMATCH))
    if scanned and n > scanned / 2:
        raise BuildError(f"{n} of {scanned} samples were rejected because their labelled parameters, reconstructed "
                         f"with {model.name!r}, do not project onto their 2D labels: the labels need another model "
                         "(see rejections.jsonl); the shards hold only the samples that passed")
