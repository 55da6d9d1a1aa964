"""Ground truth and prediction files for ``dhm-eval`` (the I/O edge of the evaluation).

:func:`load_ground_truth` returns a :class:`GroundTruth` for a ``--dataset`` name from one of
three sources, all converted to **0-based pixels of the source image**:

(a) a folder of the 3DDFA benchmark arrays (``AFLW2000-3D.pts68.npy`` (2000, 3, 68)
    = ``pt3d_68``, 1-based; ``AFLW2000-3D-Reannotated.pts68.npy`` (2000, 2, 68), 0-based;
    ``AFLW2000-3D.pose.npy`` (2000,) signed yaw in degrees; optionally
    ``AFLW2000-3D.pose_para.npy`` (2000, 7), every file's ``Pose_Para``, for the pose
    metric), for ``aflw2000`` and ``aflw2000-reannotated``.  These arrays carry no file
    names: the rows are in sorted file-name order, named from the shipped list
    ``manifests/aflw2000-3d.names.txt``; the positions ``#0000`` ... ``#1999`` stay
    accepted as aliases.
(b) a raw dataset folder, read with the dataset readers of :mod:`dhm_data.datasets`:
    AFLW2000-3D ``image0xxxx.mat`` (``pt3d_68[:2]`` - 1, yaw = ``degrees(Pose_Para[1])``),
    LS3D-W ``.t7`` files (68x2, already 0-based) for ``ls3dw-*`` and for
    ``aflw2000-reannotated`` (either the AFLW2000 folder, with the re-annotation found beside
    it in ``LS3D-W/AFLW2000-3D-Reannotated``, yaw from its ``.mat`` files; or the LS3D-W
    folder, yaw only if ``aflw2000_root`` is given).  LS3D-W subsets have no yaw bins.
(c) a build directory (``dhm-data build``): the shard landmarks (crop pixels) mapped back
    to source pixels through each sample's recorded ``crop_affine``; the only source of
    ``300wlp-val``.  ``aflw2000`` / ``aflw2000-reannotated`` need a build of that pipeline
    (``aflw2000-reannotated`` also accepts an ``ls3dw`` build: its AFLW2000-3D-Reannotated
    subset, without yaw); ``ls3dw-*`` take their subset of an ``ls3dw`` build.  Yaw comes from
    the shards only where the 3DMM parameters are labels (not fitted).

Prediction files are read and put in ground-truth order by :mod:`dhm_data.evaluation.predictions`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dhm_data.build.layout import BuildLayout
from dhm_data.datasets import get_reader
from dhm_data.errors import DatasetError, GroundTruthError, ShardError
from dhm_data.evaluation.lists import aflw2000_names
from dhm_data.formats.files import path_problem
from dhm_data.geometry import camera
from dhm_data.geometry.crop import apply_affine, invert_affine
from dhm_data.shards import read_columns

#: --dataset name -> what it is; ``subset`` is the LS3D-W folder; ``build`` = (pipeline, split)
DATASETS = {
    "aflw2000": {"kind": "aflw2000", "yaw": True, "build": ("aflw2000", "test"),
                 "title": "AFLW2000-3D, original pt3d_68 labels"},
    "aflw2000-reannotated": {"kind": "aflw2000-reannotated", "yaw": True, "build": ("aflw2000-reannotated", "test"),
                             "subset": "AFLW2000-3D-Reannotated",
                             "title": "AFLW2000-3D, LS3D-W re-annotation"},
    "ls3dw-300w": {"kind": "ls3dw", "subset": "300W-Testset-3D", "build": ("ls3dw", "all"),
                   "title": "LS3D-W 300W-Testset-3D"},
    "ls3dw-menpo": {"kind": "ls3dw", "subset": "Menpo-3D", "build": ("ls3dw", "all"), "title": "LS3D-W Menpo-3D"},
    "ls3dw-300vw-a": {"kind": "ls3dw", "subset": "300VW-3D/CatA", "build": ("ls3dw", "all"),
                      "title": "LS3D-W 300VW-3D category A"},
    "ls3dw-300vw-b": {"kind": "ls3dw", "subset": "300VW-3D/CatB", "build": ("ls3dw", "all"),
                      "title": "LS3D-W 300VW-3D category B"},
    "ls3dw-300vw-c": {"kind": "ls3dw", "subset": "300VW-3D/CatC", "build": ("ls3dw", "all"),
                      "title": "LS3D-W 300VW-3D category C"},
    "300wlp-val": {"kind": "300wlp", "yaw": True, "build": ("300wlp", "val"),
                   "title": "300W-LP validation split of the seed paper"},
}

REFERENCE_FILES = {
    "aflw2000": "AFLW2000-3D.pts68.npy",
    "aflw2000-reannotated": "AFLW2000-3D-Reannotated.pts68.npy",
    "pose": "AFLW2000-3D.pose.npy",
    "pose_para": "AFLW2000-3D.pose_para.npy",
}


@dataclass
class GroundTruth:
    """Ground truth of one evaluation set.

    Attributes:
        dataset: the ``--dataset`` name.
        names: ``(N,)`` str, canonical order (sorted file names / build order).
        landmarks: ``(N, 68, 2)`` float64, 0-based pixels of the source image.
        yaw_deg: ``(N,)`` float64 signed yaw in degrees (Pose_Para), or None (no bins).
        source: human-readable description of where it came from.
        positional_names: True when ``names`` are positions (``#0000``), not file names.
        aliases: ``(N,)`` str second accepted name per image (LS3D-W: the path below the
            subset folder, e.g. ``image_00001``), or None.
        crop_affines: ``(N, 2, 3)`` float64 source -> crop affines (build only), or None.
        yaw_source: where the yaws came from, or None.
        pose_para: ``(N, 3)`` float64 pitch, yaw, roll in radians (``Pose_Para[:3]``), or
            None (the pose metric needs it).
        landmarks_3d: ``(N, 68, 3)`` float64, x, y as ``landmarks``, z the depth in pixels
            as in ``pt3d_68``, or None (the 3D NME needs it).
    """

    dataset: str
    names: np.ndarray
    landmarks: np.ndarray
    yaw_deg: np.ndarray | None
    source: str
    positional_names: bool = False
    aliases: np.ndarray | None = None
    crop_affines: np.ndarray | None = None
    yaw_source: str | None = None
    pose_para: np.ndarray | None = None
    landmarks_3d: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.names)

    def take(self, index) -> "GroundTruth":
        """The ground truth of the rows ``index`` (an int array), in that order."""
        idx = np.asarray(index, np.int64)

        def rows(a):
            return None if a is None else a[idx]

        return replace(self, names=self.names[idx], landmarks=self.landmarks[idx], yaw_deg=rows(self.yaw_deg),
                       aliases=rows(self.aliases), crop_affines=rows(self.crop_affines),
                       pose_para=rows(self.pose_para), landmarks_3d=rows(self.landmarks_3d))

    def describe(self) -> dict:
        return {
            "dataset": self.dataset,
            "title": DATASETS[self.dataset]["title"],
            "n_images": len(self),
            "source": self.source,
            "positional_names": self.positional_names,
            "yaw_source": self.yaw_source,
            "has_pose_para": self.pose_para is not None,
            "has_landmarks_3d": self.landmarks_3d is not None,
            "coordinates": "0-based pixels of the source image",
        }


def _check_dataset(dataset: str) -> dict:
    if dataset not in DATASETS:
        raise GroundTruthError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def load_ground_truth(dataset: str, root=None, build=None, aflw2000_root=None) -> GroundTruth:
    """Ground truth of ``dataset`` from ``root`` (reference-array folder or raw dataset
    folder) or ``build`` (a build directory); exactly one of the two."""
    spec = _check_dataset(dataset)
    if (root is None) == (build is None):
        raise GroundTruthError(f"{dataset}: give exactly one of --root (a raw dataset folder or the 3DDFA "
                               "benchmark arrays) or --build (a dhm-data build directory)")
    if build is not None:
        return from_build(dataset, build)
    root = Path(root).expanduser()
    if not root.exists():
        if os.path.islink(root):
            raise GroundTruthError(f"{root}: {path_problem(root)} (the --root of {dataset})")
        raise GroundTruthError(f"{root}: no such file or directory (the --root of {dataset})")
    if spec["kind"] == "300wlp":
        raise GroundTruthError(f"{dataset}: the seed-paper validation split exists only in a build; give --build "
                               "DIR of `dhm-data build 300wlp` (the split is in its split.json)")
    if spec["kind"] in ("aflw2000", "aflw2000-reannotated") and (root / REFERENCE_FILES["aflw2000"]).is_file():
        return from_reference_arrays(dataset, root)
    return from_raw(dataset, root, aflw2000_root=aflw2000_root)


# ------------------------------------------------------------------ (a) 3DDFA benchmark arrays
def _load_npy(path: Path, shape: tuple) -> np.ndarray:
    if not path.is_file():
        raise GroundTruthError(f"{path}: missing (expected a {shape} array of the 3DDFA AFLW2000-3D benchmark)")
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:
        raise GroundTruthError(f"{path}: cannot be read as .npy ({type(e).__name__}: {e})") from e
    if a.shape != shape:
        raise GroundTruthError(f"{path}: shape {a.shape}, expected {shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise GroundTruthError(f"{path}: holds {int(np.sum(~np.isfinite(a)))} NaN/inf values")
    return a


def from_reference_arrays(dataset: str, folder) -> GroundTruth:
    """(a) The 3DDFA benchmark arrays: 2,000 faces in sorted file-name order, named
    from ``manifests/aflw2000-3d.names.txt`` (positions ``#0000`` ... as aliases)."""
    folder = Path(folder)
    spec = _check_dataset(dataset)
    pose = _load_npy(folder / REFERENCE_FILES["pose"], (2000,))
    lm3 = None
    if spec["kind"] == "aflw2000":
        pts = _load_npy(folder / REFERENCE_FILES["aflw2000"], (2000, 3, 68))
        lm3 = camera.one_based_to_zero_based(np.swapaxes(pts, 1, 2))
        lm = np.ascontiguousarray(lm3[:, :, :2])
        what = f"{REFERENCE_FILES['aflw2000']} (pt3d_68 x, y, 1-based, converted to 0-based)"
    elif spec["kind"] == "aflw2000-reannotated":
        pts = _load_npy(folder / REFERENCE_FILES["aflw2000-reannotated"], (2000, 2, 68))
        lm = np.swapaxes(pts, 1, 2).copy()
        what = f"{REFERENCE_FILES['aflw2000-reannotated']} (LS3D-W re-annotation, 0-based)"
    else:
        raise GroundTruthError(f"{folder}: the 3DDFA benchmark arrays hold AFLW2000-3D only, not {dataset}")
    pose_para = None
    if (folder / REFERENCE_FILES["pose_para"]).is_file():
        pose_para = _load_npy(folder / REFERENCE_FILES["pose_para"], (2000, 7))[:, :3]
    positions = np.array([f"#{i:04d}" for i in range(len(lm))])
    return GroundTruth(dataset, aflw2000_names(), lm, pose, f"{folder}/{what}", aliases=positions,
                       yaw_source=f"{folder / REFERENCE_FILES['pose']} (Pose_Para yaw, degrees)",
                       pose_para=pose_para, landmarks_3d=lm3)


# ------------------------------------------------------------------ (b) raw datasets
def _reader(name: str, root, **options):
    try:
        return get_reader(name)(root, **options)
    except DatasetError as e:
        raise GroundTruthError(str(e)) from e


def _load_all(reader) -> list:
    items = reader.items()
    if not items:
        raise GroundTruthError(f"{reader.root}: no labelled images found. {reader.how_to_get}")
    try:
        return [reader.load(it) for it in items]
    except DatasetError as e:
        raise GroundTruthError(f"ground truth unreadable: {e}") from e


def _looks_like(name: str, root: Path) -> bool:
    try:
        get_reader(name).locate(root)
        return True
    except DatasetError:
        return False


def _aflw2000_raw(root, annotation: str = "original"):
    r = _reader("aflw2000", root, annotation=annotation)
    samples = _load_all(r)
    names = np.array([s.name for s in samples])
    lm = np.stack([s.landmarks_2d for s in samples]).astype(np.float64)
    yaw = np.array([s.extra["yaw_deg"] for s in samples], np.float64)
    return r, names, lm, yaw, samples


def from_raw(dataset: str, root, aflw2000_root=None) -> GroundTruth:
    """(b) A raw dataset folder (AFLW2000 ``.mat`` files or an LS3D-W ``.t7`` tree)."""
    spec = _check_dataset(dataset)
    root = Path(root).expanduser()
    kind = spec["kind"]
    if kind == "aflw2000":
        r, names, lm, yaw, samples = _aflw2000_raw(root)
        pose_para = np.stack([s.pose_para[:3] for s in samples]).astype(np.float64)
        lm3 = None
        if all(s.landmarks_3d is not None for s in samples):
            lm3 = np.stack([s.landmarks_3d for s in samples]).astype(np.float64)
        return GroundTruth(dataset, names, lm, yaw, f"{r.root} (.mat pt3d_68 x, y, 1-based, converted to 0-based)",
                           yaw_source=f"{r.root} (.mat Pose_Para[1], degrees)", pose_para=pose_para,
                           landmarks_3d=lm3)
    if kind == "aflw2000-reannotated" and _looks_like("aflw2000", root):
        r, names, lm, yaw, samples = _aflw2000_raw(root, annotation="reannotated")
        return GroundTruth(dataset, names, lm, yaw, f"{r.reannotated_dir} (.t7 LS3D-W re-annotation, 0-based)",
                           yaw_source=f"{r.root} (.mat Pose_Para[1], degrees)",
                           pose_para=np.stack([s.pose_para[:3] for s in samples]).astype(np.float64))
    if kind in ("ls3dw", "aflw2000-reannotated"):
        subset = spec["subset"]
        r = _reader("ls3dw", root, subsets=[subset])
        samples = _load_all(r)
        names = np.array([s.name for s in samples])
        aliases = np.array([s.name[len(subset) + 1:] if s.name.startswith(subset + "/") else s.name for s in samples])
        lm = np.stack([s.landmarks_2d for s in samples]).astype(np.float64)
        yaw = yaw_source = None
        if kind == "aflw2000-reannotated" and aflw2000_root is not None:
            ar, anames, _, ayaw, _ = _aflw2000_raw(aflw2000_root)
            by_name = dict(zip(anames, ayaw))
            missing = [a for a in aliases if a not in by_name]
            if missing:
                raise GroundTruthError(f"{ar.root}: {len(missing)} of the {len(aliases)} re-annotated images have no "
                                       f".mat there (first: {', '.join(missing[:5])}); cannot take their yaw")
            yaw = np.array([by_name[a] for a in aliases], np.float64)
            yaw_source = f"{ar.root} (.mat Pose_Para[1], degrees, matched by file name)"
        return GroundTruth(dataset, names, lm, yaw, f"{r.root / subset} (.t7, 0-based)", aliases=aliases,
                           yaw_source=yaw_source)
    raise GroundTruthError(f"{dataset}: no raw-folder reader; use --build")


# ------------------------------------------------------------------ (c) builds
def from_build(dataset: str, build) -> GroundTruth:
    """(c) A build directory: shard landmarks (crop pixels) mapped back to source
    pixels through the recorded ``crop_affine``; yaw from the shards where the 3DMM
    parameters are labels (not fitted)."""

    spec = _check_dataset(dataset)
    layout = BuildLayout(build)
    if not layout.root.is_dir():
        raise GroundTruthError(f"{layout.root}: no such build directory")
    if not layout.summary.is_file():
        raise GroundTruthError(f"{layout.root}: no build.json; not a finished `dhm-data build` output")
    summary = json.loads(layout.summary.read_text())
    cfg = summary.get("pipeline") or {}
    pipeline, split = spec["build"]
    found = cfg.get("name", "?")
    from_ls3dw = False
    annotation = (cfg.get("reader") or {}).get("annotation", "original")
    reader_name = (cfg.get("build") or {}).get("reader", summary.get("dataset"))
    ok = {
        "aflw2000": reader_name == "aflw2000" and annotation == "original",
        "aflw2000-reannotated": (reader_name == "aflw2000" and annotation == "reannotated") or reader_name == "ls3dw",
        "ls3dw": reader_name == "ls3dw",
        "300wlp": reader_name == "300wlp",
    }[spec["kind"]]
    if ok and spec["kind"] == "aflw2000-reannotated" and reader_name == "ls3dw":
        from_ls3dw, split = True, "all"
    if not ok:
        what = f"reader {reader_name!r}" + (f", annotation {annotation!r}" if reader_name == "aflw2000" else "")
        also = " (or of 'ls3dw', whose AFLW2000-3D-Reannotated subset is used)" if spec["kind"] == "aflw2000-reannotated" else ""
        raise GroundTruthError(f"{layout.root}: built with pipeline {found!r} ({what}); --dataset {dataset} needs a "
                               f"build of pipeline {pipeline!r}{also}")
    shards = layout.shards(split)
    if not shards:
        raise GroundTruthError(f"{layout.root}: no shards in split {split!r} (splits present: "
                               f"{', '.join(sorted(summary.get('written', {}))) or 'none'})")
    cols = {k: [] for k in ("landmarks_2d", "crop_affine", "yaw", "name", "subset", "label_source")}
    try:
        for p in shards:
            c = read_columns(p, list(cols))
            for k in cols:
                cols[k].append(c[k])
    except ShardError as e:
        raise GroundTruthError(f"ground truth unreadable: {e}") from e
    cols = {k: np.concatenate(v) for k, v in cols.items()}
    sel = np.ones(len(cols["name"]), bool)
    aliases = None
    if spec["kind"] == "ls3dw" or from_ls3dw:
        sel = cols["subset"] == spec["subset"]
        if not sel.any():
            raise GroundTruthError(f"{layout.root}: no sample of subset {spec['subset']!r} in split {split!r}")
    A = cols["crop_affine"][sel]
    crop_lm = cols["landmarks_2d"][sel].astype(np.float64)
    lm = np.stack([apply_affine(invert_affine(a), p) for a, p in zip(A, crop_lm)])
    names = cols["name"][sel].astype(str)
    if spec["kind"] == "ls3dw" or from_ls3dw:
        sub = spec["subset"] + "/"
        aliases = np.array([n[len(sub):] if n.startswith(sub) else n for n in names])
    yaw = yaw_source = None
    if spec.get("yaw") and np.all(cols["label_source"][sel] == "label"):
        yaw = cols["yaw"][sel].astype(np.float64)
        yaw_source = f"{layout.root} (shard field 'yaw' from the labelled Pose_Para, degrees, float32)"
    n_rej = summary.get("rejected", 0)
    src = (f"{layout.root}/{split} ({len(shards)} shards of pipeline {found!r}; crop landmarks mapped back to source "
           f"pixels through crop_affine{f'; the build rejected {n_rej} samples' if n_rej else ''})")
    return GroundTruth(dataset, names, lm, yaw, src, aliases=aliases, crop_affines=A.astype(np.float64),
                       yaw_source=yaw_source)
