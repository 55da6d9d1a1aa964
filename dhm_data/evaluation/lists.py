"""Image-name lists: the ones shipped in ``manifests/`` and the ones users give (``--names``).

A list is text, one image name a line; an image suffix (``.jpg``, ``.png``) is optional and
dropped, blank lines are skipped, lines starting with ``#`` are comments (the shipped lists
state their rule and count there).  Lists hold names only, never coordinates or angles.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np

from dhm_data.errors import EvaluationError, GroundTruthError, PredictionError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABEL_SUFFIXES = (".mat", ".t7")
#: AFLW2000-3D's 2,000 names in sorted order: the rows of the 3DDFA benchmark arrays
AFLW2000_NAMES = "aflw2000-3d.names.txt"
#: the head-pose filter: rule, count and list
POSE_FILTER = "aflw2000-3d-pose-1969.txt"
POSE_FILTER_LIMIT_DEG = 99.0
POSE_FILTER_COUNT = 1969


def strip_suffix(name: str) -> str:
    """``name`` without an image or label-file suffix."""
    low = name.lower()
    for s in IMAGE_SUFFIXES + LABEL_SUFFIXES:
        if low.endswith(s):
            return name[: -len(s)]
    return name


def base_name(name: str) -> str:
    """The file name of ``name`` without folders or suffix (``a/b/image00002.jpg`` -> ``image00002``)."""
    return strip_suffix(name.replace("\\", "/").rsplit("/", 1)[-1])


def parse_list(text: str) -> tuple[list[str], list[str]]:
    """``(names, comments)`` of a list's text."""
    names, comments = [], []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            comments.append(s[1:].strip())
        else:
            names.append(strip_suffix(s))
    return names, comments


def read_names_file(path) -> np.ndarray:
    """Names of a user's ``--names`` file, ``(N,)`` str; duplicates are refused."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PredictionError(f"{path}: cannot read the names list ({type(e).__name__}: {e}); expected a text "
                              "file, one image name a line (.jpg optional)") from e
    names, _ = parse_list(text)
    if not names:
        raise PredictionError(f"{path}: the names list is empty; expected one image name a line")
    uniq, cnt = np.unique(names, return_counts=True)
    if (cnt > 1).any():
        raise PredictionError(f"{path}: {int((cnt > 1).sum())} names appear more than once "
                              f"(first: {', '.join(uniq[cnt > 1][:5])})")
    return np.array(names)


def shipped_list(filename: str) -> tuple[list[str], list[str]]:
    """``(names, comments)`` of a list shipped in ``manifests/``."""
    res = importlib.resources.files("dhm_data.manifests") / filename
    try:
        return parse_list(res.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EvaluationError(f"manifests/{filename} is missing from the installation") from e


def aflw2000_names() -> np.ndarray:
    """AFLW2000-3D's 2,000 names in sorted order (``manifests/aflw2000-3d.names.txt``)."""
    names, _ = shipped_list(AFLW2000_NAMES)
    return np.array(names)


def pose_filter_rule(pose_para) -> np.ndarray:
    """``(N,)`` bool: faces whose pitch, yaw and roll (``Pose_Para[:, :3]``, radians)
    all lie within [-99, 99] degrees."""
    deg = np.degrees(np.asarray(pose_para, np.float64)[:, :3])
    return np.all(np.abs(deg) <= POSE_FILTER_LIMIT_DEG, axis=1)


def pose_filter(names, pose_para) -> np.ndarray:
    """``(N,)`` bool of the head-pose filter on ``names`` with their ``pose_para``.

    The rule is applied and checked against the shipped list: on the images
    the list covers (AFLW2000-3D names), a disagreement raises
    :class:`GroundTruthError` (the ground truth is not the public release)."""
    keep = pose_filter_rule(pose_para)
    listed, _ = shipped_list(POSE_FILTER)
    listed = set(listed)
    every = set(aflw2000_names())
    names = [str(n) for n in names]
    known = np.array([n in every for n in names])
    disagree = [n for n, k, kn in zip(names, keep, known) if kn and (n in listed) != bool(k)]
    if disagree:
        raise GroundTruthError(f"{len(disagree)} faces disagree between the [-99, 99] rule on this ground truth's "
                               f"Pose_Para and manifests/{POSE_FILTER} (first: {', '.join(disagree[:5])}); the "
                               "ground truth is not the public AFLW2000-3D release")
    return keep
