"""Export a fitted face as a triangle mesh (.obj / .ply) with trimesh.

Only models that carry triangles (a full BFM, the Surrey model, the shipped
synthetic model) can be exported; the 68-row landmark subsets cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhm_data import atomic
from dhm_data.errors import MeshError
from dhm_data.geometry import camera
from dhm_data.models.morphable import MorphableModel, fit_length

__all__ = ["MeshError", "face_mesh", "export_mesh", "MESH_SUFFIXES"]

MESH_SUFFIXES = (".obj", ".ply")


def face_mesh(model: MorphableModel, shape_para=None, exp_para=None, pose_para=None, image_height=None):
    """The face as a ``trimesh.Trimesh``.

    ``shape_para`` / ``exp_para`` ``(K',)`` / ``(E',)`` in the model's units
    (``None`` = mean); a longer vector is truncated and a shorter one
    zero-padded to the model's size (300W-LP stores 199 identity values, a
    40-component model uses the first 40).  Without ``pose_para`` the vertices
    are in model coordinates and units; with ``pose_para`` ``(7,)`` and
    ``image_height`` they are posed into 0-based image pixels
    (:func:`dhm_data.geometry.camera.model_to_image`: x right, y down, z depth), and
    the triangle winding is reversed to undo the y flip's reflection, so
    normals still point out of the face.
    """
    import trimesh  # trimesh is needed only for mesh export (slow to import)

    if model.triangles is None or len(model.triangles) == 0:
        raise MeshError(
            f"model {model.name!r} has no triangles (a landmark-only model such as the 68-row BFM subset); "
            "export needs a full model file with its mesh (e.g. 01_MorphableModel.mat, BFM.mat, bfm_noneck_v3.pkl, the SFM)"
        )
    a = None if shape_para is None else fit_length(np.ravel(shape_para), model.n_identity)
    e = None if exp_para is None or model.n_expression == 0 else fit_length(np.ravel(exp_para), model.n_expression)
    V = model.reconstruct(a, e)
    F = np.asarray(model.triangles, np.int64)
    if pose_para is not None:
        if image_height is None:
            raise MeshError("posing the mesh needs image_height (Pose_Para's ty refers to the image height)")
        pose = np.asarray(pose_para, np.float64).ravel()
        if pose.shape != (7,) or not np.all(np.isfinite(pose)):
            raise MeshError(f"pose_para must be 7 finite values [pitch, yaw, roll, tx, ty, tz, s], got {pose_para!r}")
        V = camera.model_to_image(V, pose, image_height)
        F = F[:, ::-1]
    if not np.all(np.isfinite(V)):
        raise MeshError("the reconstructed face has non-finite vertices (NaN coefficients: was the fit flagged?)")
    return trimesh.Trimesh(vertices=V, faces=F, process=False)


def export_mesh(model: MorphableModel, shape_para, exp_para, path, pose_para=None, image_height=None) -> Path:
    """Write the face (see :func:`face_mesh`) to ``path``; the format follows
    the suffix, ``.obj`` or ``.ply``.  Written atomically.  Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshError(f"{path}: unsupported mesh format {suffix!r}; use one of {', '.join(MESH_SUFFIXES)}")
    mesh = face_mesh(model, shape_para, exp_para, pose_para, image_height)
    data = mesh.export(file_type=suffix[1:])
    atomic.write_bytes(path, data.encode() if isinstance(data, str) else data)
    return path
