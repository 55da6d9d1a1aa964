"""Synthetic datasets in the exact on-disk formats of the real ones.

``synthesize(dataset, out, n, seed)`` writes ``out/<dataset folder>/...`` in
the layout of docs/conventions.md sections 1-3 (``300wlp`` -> ``300W_LP/``,
``aflw2000`` -> ``AFLW2000/``, ``ls3dw`` -> ``LS3D-W/``), with faces drawn
from a morphable model's prior (by default the packaged SYNTHETIC model),
rendered by :mod:`dhm_data.synth.render`, plus ``out/SYNTHETIC.json`` (what
made the tree, so later commands can use that model when no ``--bfm`` is
given) and ``out/synthetic_truth.npz`` (the true parameters and 3D landmarks
of every image; an aid for tests and fitting benchmarks, not part of any real
format).

The tree is written into a temporary sibling folder and renamed into place at
the end, so an interrupted run leaves no half tree; a non-empty ``out`` is
refused unless ``force``.  Same arguments, same bytes.

Shared pieces live here: the parameter prior, contour landmark marching,
the MATLAB v5 writer (compressed elements, MATLAB's compact uint8 storage of
all-zero double arrays) and the JPEG encoder.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from dhm_data.errors import SynthError
from dhm_data.geometry import camera
from dhm_data.geometry.contour import march_jaw
from dhm_data.models.morphable import MorphableModel, fit_length
from dhm_data.models.synthetic import SYNTHETIC_MODEL_ID, load_synthetic_model
from dhm_data.synth.render import render_face

GENERATOR_VERSION = 1
#: command-line dataset name -> (module in dhm_data.synth, dataset folder)
DATASETS = {
    "300wlp": ("w300lp", "300W_LP"),
    "aflw2000": ("aflw2000", "AFLW2000"),
    "ls3dw": ("ls3dw", "LS3D-W"),
}
MARKER = "SYNTHETIC.json"
TRUTH = "synthetic_truth.npz"
JPEG_QUALITY = 92

__all__ = ["synthesize", "SynthError", "DATASETS", "MARKER", "TRUTH", "march_landmarks", "sample_face", "write_mat_v5"]


# ------------------------------------------------------------------ geometry
def march_landmarks(model: MorphableModel, shape: np.ndarray, pose_para: np.ndarray) -> np.ndarray:
    """Landmark vertex indices ``(68,)`` with the 17 jaw points marched to the
    visible silhouette for ``pose_para`` (the one rule,
    :func:`dhm_data.geometry.contour.march_jaw`, which the fitter uses too, so
    a fit reproduces these labels).  The inner 51 points keep their fixed
    vertex.  ``shape`` is the ``(V, 3)`` reconstructed shape; returns the
    fixed indices when the model has no contour candidates.
    """
    idx = np.asarray(model.landmark_indices, np.int64).copy()
    if model.contour_candidates is None:
        return idx
    _, R, _ = camera.pose_para_to_srt(pose_para)
    lines = [np.asarray(line, np.int64).ravel() for line in model.contour_candidates]
    k = march_jaw([(shape[line if line.size else idx[j:j + 1]] @ R[:2].T)[None] for j, line in enumerate(lines)])[0]
    for j, line in enumerate(lines):
        if line.size:  # an empty line keeps the fixed vertex
            idx[j] = line[k[j]]
    return idx


@dataclass
class Face:
    """One synthetic face: coefficients, pose and image size.

    ``shape_para`` ``(K,)`` and ``exp_para`` ``(E,)`` in the model's units,
    ``pose_para`` ``(7,)`` (300W-LP convention, float32-rounded as stored),
    ``size`` (h, w) pixels.
    """

    shape_para: np.ndarray
    exp_para: np.ndarray
    pose_para: np.ndarray
    size: tuple

    def shape(self, model: MorphableModel) -> np.ndarray:
        return model.reconstruct(self.shape_para, self.exp_para)


def f32(a) -> np.ndarray:
    """Round to float32 and back (what the real files store), float64."""
    return np.asarray(np.asarray(a, np.float32), np.float64)


def sample_yaw(rng: np.random.Generator) -> float:
    """AFLW2000-3D-like yaw (radians): |yaw| in [0,30] / (30,60] / (60,90]
    degrees with probabilities 0.656 / 0.19 / 0.154 (1312 / 383 / 305 of
    2000), uniform within a bin, random sign."""
    b = rng.choice(3, p=[0.656, 0.1915, 0.1525])
    lo, hi = [(0, 30), (30, 60), (60, 89.5)][b]
    return float(np.radians(rng.uniform(lo, hi)) * (1 if rng.random() < 0.5 else -1))


def sample_coefficients(model: MorphableModel, rng: np.random.Generator, neutral: bool = False):
    """Identity ``(K,)`` and expression ``(E,)`` from the model prior,
    float32-rounded; expression component 0 (jaw opening of the synthetic
    model) is clipped to [-0.3, 3] so lips never cross; ``neutral`` gives an
    all-zero expression."""
    a = f32(rng.standard_normal(model.n_identity) * model.identity_std)
    b = rng.standard_normal(model.n_expression) * model.expression_std * 0.8
    if model.n_expression:
        b[0] = np.clip(b[0], -0.3, 3.0)
    b = np.zeros(model.n_expression) if neutral else f32(b)
    return a, b


def place(model: MorphableModel, shape: np.ndarray, pitch, yaw, roll, s, centre_1based, size) -> np.ndarray:
    """``Pose_Para`` (7,) float32-rounded that puts the centroid of the
    landmarks at ``centre_1based`` (x, y, 1-based pixels), with the posed
    centroid of the mesh at depth 0."""
    h, w = size
    R = camera.rotation_from_angles(pitch, yaw, roll)
    lm = shape[model.landmark_indices[model.landmark_indices >= 0]]
    c = s * (R @ lm.mean(0))
    cz = s * (R @ shape.mean(0))[2]
    tx = centre_1based[0] - c[0]
    ty = h + 1 - centre_1based[1] - c[1]
    return f32([pitch, yaw, roll, tx, ty, -cz, s])


def sample_face(model: MorphableModel, rng: np.random.Generator, size=(450, 450), yaw=None, neutral=False) -> Face:
    """A face drawn from the prior, posed to fill a sensible part of the image:
    face width (jaw end to jaw end in the model) 38-55 % of the shorter image
    side, landmark centroid within ~3 % of the image centre, pitch ~ N(0, 10)
    and roll ~ N(0, 8) degrees (clipped at 30 / 25), yaw from
    :func:`sample_yaw` unless given."""
    h, w = size
    a, b = sample_coefficients(model, rng, neutral)
    S = model.reconstruct(a, b)
    yaw = sample_yaw(rng) if yaw is None else yaw
    pitch = float(np.radians(np.clip(rng.normal(0, 10), -30, 30)))
    roll = float(np.radians(np.clip(rng.normal(0, 8), -25, 25)))
    width = face_width(model, S)
    s = rng.uniform(0.38, 0.55) * min(h, w) / width
    centre = ((w + 1) / 2 + rng.normal(0, 0.03 * w), (h + 1) / 2 + rng.normal(0, 0.03 * h))
    return Face(a, b, place(model, S, pitch, yaw, roll, s, centre, size), (h, w))


def face_width(model: MorphableModel, shape: np.ndarray) -> float:
    li = model.landmark_indices
    return float(np.linalg.norm(shape[li[16]] - shape[li[0]])) if li[0] >= 0 and li[16] >= 0 else float(np.ptp(shape[:, 0]))


def project(model: MorphableModel, face: Face, marched: bool):
    """Posed landmarks ``(68, 3)`` (0-based pixels x, y; depth z), their
    vertex indices ``(68,)``, the posed mesh ``(V, 3)`` and the shape."""
    S = face.shape(model)
    verts = camera.model_to_image(S, face.pose_para, face.size[0])
    idx = march_landmarks(model, S, face.pose_para) if marched else np.asarray(model.landmark_indices, np.int64)
    return verts[idx], idx, verts, S


def draw(model: MorphableModel, face: Face, style, bg) -> np.ndarray:
    """Render ``face`` over ``bg`` (RGB uint8)."""
    _, _, verts, _ = project(model, face, marched=False)
    if model.triangles is None:
        raise SynthError(f"model {model.name!r} has no triangles; the synthetic writer needs a mesh to draw")
    return render_face(face.size[0], face.size[1], verts, model.triangles, model.landmark_indices, style, bg)


# ------------------------------------------------------------------ file I/O
def encode_jpeg(img_rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV failure
        raise SynthError("OpenCV could not encode a JPEG")
    return buf.tobytes()


_MAT_HEADER_TEXT = b"MATLAB 5.0 MAT-file, Platform: dhm-data SYNTHETIC, Created on: Thu Jan  1 00:00:00 1970"
_MX_DOUBLE_CLASS = 6
_MX_UINT8_CLASS = 9
_MI_COMPRESSED = 15


def mat_v5_bytes(variables: list) -> bytes:
    """Bytes of a MATLAB v5 .mat file as MATLAB writes them: a fixed header,
    then each variable as a zlib-compressed element, in the given order.

    ``variables``: list of ``(name, array)``.  An array given as uint8 zeros
    with name in the ``compact`` sense (see :func:`compact_zero`) is stored
    the way MATLAB stores an all-zero double array: data type uint8, class
    double (``loadmat`` returns uint8 by default, float64 with
    ``mat_dtype=True``).  Deterministic: no timestamps.
    """
    header = _MAT_HEADER_TEXT.ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0100) + b"IM"
    out = [header]
    for name, arr in variables:
        compact = isinstance(arr, _CompactZero)
        a = np.zeros(arr.shape, np.uint8) if compact else np.asarray(arr)
        buf = io.BytesIO()
        scipy.io.savemat(buf, {name: a}, do_compression=False, oned_as="column")
        elem = bytearray(buf.getvalue()[128:])
        if compact:
            if elem[16] != _MX_UINT8_CLASS:  # pragma: no cover - scipy layout change
                raise SynthError(f"unexpected MATLAB element layout while writing {name!r}")
            elem[16] = _MX_DOUBLE_CLASS
        z = zlib.compress(bytes(elem), 6)
        out.append(struct.pack("<II", _MI_COMPRESSED, len(z)) + z)
    return b"".join(out)


class _CompactZero:
    """Marker for an all-zero double array stored compactly (uint8) by MATLAB."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def compact_zero(shape) -> _CompactZero:
    """An all-zero double array of ``shape`` to be stored as MATLAB does (uint8 data)."""
    return _CompactZero(shape)


def write_mat_v5(path: Path, variables: list) -> None:
    Path(path).write_bytes(mat_v5_bytes(variables))


def params_block(face: Face, rng: np.random.Generator, model: MorphableModel, compact_exp: bool) -> dict:
    """The 3DMM fields of a 300W-LP / AFLW2000-3D ``.mat``: ``Pose_Para``
    (1,7) float32, ``Shape_Para`` (199,1) float64, ``Exp_Para`` (29,1)
    float64 (compact uint8 zeros when ``compact_exp``), ``Illum_Para`` (1,10)
    float64, ``Color_Para`` (1,7) float32, ``Tex_Para`` (199,1) float64.
    Coefficients are zero-padded / truncated to 199 / 29 (the real sizes)."""
    shape = fit_length(face.shape_para, 199).reshape(199, 1)
    exp = compact_zero((29, 1)) if compact_exp else fit_length(face.exp_para, 29).reshape(29, 1)
    illum = np.concatenate([rng.uniform(0.6, 1.3, 3), rng.uniform(0.0, 1.2, 3), rng.uniform(-1.6, 1.6, 2), rng.uniform(0, 0.3, 1), rng.uniform(10, 40, 1)])
    colour = np.concatenate([rng.uniform(0.7, 1.5, 3), rng.uniform(-1.0, 0.2, 3), [1.0]])
    tex = rng.standard_normal(199) * 8000.0 * (np.arange(199) + 1.0) ** -0.5
    return {
        "Illum_Para": f32(illum).reshape(1, 10),
        "Color_Para": np.asarray(colour, np.float32).reshape(1, 7),
        "Tex_Para": f32(tex).reshape(199, 1),
        "Shape_Para": shape,
        "Exp_Para": exp,
        "Pose_Para": np.asarray(face.pose_para, np.float32).reshape(1, 7),
    }


# --------------------------------------------------------------- the writer
def _writer(dataset: str):
    if dataset not in DATASETS:
        raise SynthError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return importlib.import_module(f"{__name__}.{DATASETS[dataset][0]}")


def synthesize(dataset: str, out, n: int, seed: int = 0, model: MorphableModel | None = None, force: bool = False,
               progress=None, names: list[str] | None = None, jobs: int = 1) -> Path:
    """Write a synthetic ``dataset`` (``300wlp``, ``aflw2000`` or ``ls3dw``)
    of ``n`` samples into ``out`` (see the dataset modules for what n counts
    and the layout); returns ``out``.  ``names`` (300wlp only; see
    :func:`dhm_data.synth.w300lp.read_name_list`): write exactly the samples
    it lists, e.g. the real release's names; ``n`` is then the number of
    names.  ``jobs`` (300wlp only): processes rendering photos in parallel
    (the bytes written do not depend on it).

    ``model`` defaults to the packaged SYNTHETIC model; another
    :class:`MorphableModel` with triangles may be given (the marker then
    records ``"model": "custom"`` and its name).  ``progress``: optional
    callable ``(done, total)``.  Raises :class:`SynthError` for bad arguments
    and when ``out`` exists, is not empty and ``force`` is False.
    """
    mod = _writer(dataset)
    if names is not None:
        if dataset != "300wlp":
            raise SynthError(f"a name list is only supported for 300wlp, not {dataset}")
        n = len(names)
    if int(jobs) < 1:
        raise SynthError(f"jobs must be at least 1, got {jobs}")
    extra = {} if dataset != "300wlp" else {"names": names, "jobs": int(jobs)}
    if int(n) < 1:
        raise SynthError(f"-n must be at least 1, got {n}")
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SynthError(f"{out}: folder is not empty; choose an empty or new folder, or pass --force to replace it")

    custom = model is not None
    model = load_synthetic_model() if model is None else model
    if not np.all(model.landmark_mask):
        missing = np.flatnonzero(~model.landmark_mask).tolist()
        raise SynthError(
            f"model {model.name!r} has no vertex for landmarks {missing}; synthetic labels need all 68 landmarks mapped"
        )
    if model.triangles is None:
        raise SynthError(f"model {model.name!r} has no triangles; the synthetic writer needs a mesh to draw")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.synth-tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        info = mod.write(tmp, int(n), int(seed), model, progress=progress, **extra)
        marker = {
            "synthetic": True,
            "generator": "dhm-data synth",
            "generator_version": GENERATOR_VERSION,
            "dataset": dataset,
            "folder": DATASETS[dataset][1],
            "seed": int(seed),
            "n": int(n),
            "from_name_list": names is not None,
            "model": "custom" if custom else SYNTHETIC_MODEL_ID,
            "model_name": model.name,
            "model_source": model.source,
            "counts": info["counts"],
            "notes": info.get("notes", {}),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        if out.exists():
            trash = out.parent / f".{out.name}.synth-old-{os.getpid()}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return out
