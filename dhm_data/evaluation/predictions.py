"""Prediction files: reading, matching rows to ground-truth images, and the pixel frame.

A prediction file is ``.npy`` (one array; its rows are the dataset's images in canonical
order, or the protocol's list in its order) or ``.npz`` (the array under its key, see
:data:`NPZ_KEYS`, and optionally ``names``: any order, matched by name; a name carrying
folders or an image suffix matches by its file name).  :func:`resolve_rows` says which
ground-truth image each row is; :func:`to_source_pixels` brings landmarks to 0-based
source pixels; :func:`decode_3ddfa` decodes 3DDFA-family parameters first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dhm_data.errors import PredictionError
from dhm_data.evaluation import tddfa
from dhm_data.evaluation.ground_truth import GroundTruth
from dhm_data.evaluation.lists import aflw2000_names, base_name, strip_suffix
from dhm_data.geometry import camera
from dhm_data.geometry.crop import apply_affine, invert_affine
from dhm_data.geometry.landmarks68 import ACCEPTED_SHAPES_TEXT, landmark_array

#: The array an ``.npz`` holds, per input kind (first key found wins).
NPZ_KEYS = {
    "landmarks": ("landmarks", "landmarks_3d"),
    "3ddfa-params": ("params", "param", "parameters"),
    "pose": ("poses", "pose"),
}
INPUTS = tuple(NPZ_KEYS)


@dataclass
class PredictionFile:
    """A prediction file as read: ``values`` as stored, ``names`` ``(N,)`` str or
    None (positional), ``kind`` one of :data:`INPUTS`."""

    path: Path
    values: np.ndarray
    names: np.ndarray | None
    kind: str = "landmarks"

    @property
    def landmarks(self) -> np.ndarray:
        return self.values


def read_predictions(path, kind: str = "landmarks") -> PredictionFile:
    """Read ``.npy`` (the array only) or ``.npz`` (the array of :data:`NPZ_KEYS` and
    optionally ``names``)."""
    path = Path(path)
    if not path.is_file():
        raise PredictionError(f"{path}: no such prediction file")
    keys_wanted = NPZ_KEYS[kind]
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                key = next((k for k in keys_wanted if k in keys), None)
                if key is None:
                    raise PredictionError(
                        f"{path}: no {' / '.join(repr(k) for k in keys_wanted)} array (found: "
                        f"{', '.join(keys) or 'nothing'}); expected {keys_wanted[0]!r} and optionally 'names' (N,)"
                        + (f"; {ACCEPTED_SHAPES_TEXT}" if kind == "landmarks" else ""))
                values = z[key]
                names = z["names"] if "names" in keys else None
        elif path.suffix == ".npy":
            values, names = np.load(path, allow_pickle=False), None
        else:
            raise PredictionError(f"{path}: unknown prediction format {path.suffix!r}; expected .npy or .npz")
    except PredictionError:
        raise
    except Exception as e:  # numpy raises several types on damaged / foreign files
        raise PredictionError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    if names is not None:
        names = np.asarray(names)
        if names.dtype.kind not in "US":
            raise PredictionError(f"{path}: 'names' has dtype {names.dtype}, expected strings")
        names = names.astype(str).ravel()
        n = len(values) if np.ndim(values) else 0
        if len(names) != n:
            what = "landmark sets" if kind == "landmarks" else "rows"
            raise PredictionError(f"{path}: {len(names)} names for {n} {what}")
    return PredictionFile(path, values, names, kind)


# ------------------------------------------------------------------ rows -> ground-truth images
def _lookup(gt: GroundTruth) -> dict:
    """name -> row: names, then aliases, then file names (each only where it names one row)."""
    lookup = {str(n): i for i, n in enumerate(gt.names)}
    extra = [] if gt.aliases is None else [(str(a), i) for i, a in enumerate(gt.aliases)]
    extra += [(base_name(str(n)), i) for i, n in enumerate(gt.names)]
    rows = {}
    for a, i in extra:
        rows.setdefault(a, set()).add(i)
    for a, i in extra:
        if len(rows[a]) == 1:
            lookup.setdefault(a, i)
    return lookup


def match_names(pred_names, gt: GroundTruth, what: str = "predictions") -> np.ndarray:
    """Ground-truth row of each name, ``(N,)`` int64.

    A name matches by itself, an alias, or its file name (folders and an image /
    label suffix dropped).  Unknown or repeated names raise :class:`PredictionError`
    saying which and how many."""
    lookup = _lookup(gt)
    idx = np.full(len(pred_names), -1, np.int64)
    unknown = []
    for j, n in enumerate(str(x) for x in pred_names):
        i = lookup.get(n, lookup.get(strip_suffix(n), lookup.get(base_name(n), -1)))
        if i < 0:
            unknown.append(n)
        idx[j] = i
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} names are not in the ground truth of {gt.dataset} "
                        f"(first: {', '.join(unknown[:5])})")
    uniq, cnt = np.unique(idx[idx >= 0], return_counts=True)
    if (cnt > 1).any():
        dup = uniq[cnt > 1]
        problems.append(f"{dup.size} ground-truth images are predicted more than once "
                        f"(first: {', '.join(str(gt.names[i]) for i in dup[:5])})")
    if problems:
        raise PredictionError(f"{what}: names do not match the ground truth: " + "; ".join(problems))
    return idx


def match_order(pred_names, gt: GroundTruth, what: str = "predictions") -> np.ndarray:
    """Index ``order`` such that ``pred[order]`` is in ground-truth order; every
    ground-truth image must be named once (raises :class:`PredictionError` otherwise)."""
    idx = match_names(pred_names, gt, what)
    missing = np.setdiff1d(np.arange(len(gt)), idx)
    if missing.size:
        raise PredictionError(f"{what}: names do not match the ground truth: {missing.size} of the {len(gt)} "
                              f"ground-truth images have no prediction (first: "
                              f"{', '.join(str(gt.names[i]) for i in missing[:5])})")
    order = np.empty(len(gt), np.int64)
    order[idx] = np.arange(len(idx))
    return order


def resolve_rows(n_rows: int, names, gt: GroundTruth, what: str, subset=None, subset_name: str = "") -> np.ndarray:
    """Ground-truth row of each of ``n_rows`` prediction rows.

    ``names`` given: by name.  Otherwise by position: ``n_rows`` equal to the ground
    truth's count, or to the count of ``subset`` (ground-truth rows of a protocol's
    list, in its order)."""
    if names is not None:
        if len(names) != n_rows:
            raise PredictionError(f"{what}: {len(names)} names for {n_rows} rows")
        return match_names(names, gt, what)
    if n_rows == len(gt):
        return np.arange(n_rows)
    if subset is not None and n_rows == len(subset):
        return np.asarray(subset, np.int64)
    diff = n_rows - len(gt)
    also = f" or the {len(subset)} of {subset_name}" if subset is not None else ""
    raise PredictionError(f"{what}: {n_rows} images, the ground truth has {len(gt)}{also} "
                          f"({abs(diff)} {'too many' if diff > 0 else 'missing'}); give names (an .npz 'names' "
                          "array or --names LIST) to evaluate a subset")


# ------------------------------------------------------------------ pixel frames
def to_source_pixels(points, gt: GroundTruth, what: str, one_based: bool = False,
                     crop_coords: bool = False) -> np.ndarray:
    """Landmarks ``(N, 68, D)`` (rows = ``gt``'s images) as 0-based source pixels.

    ``one_based``: 1 is subtracted from x and y.  ``crop_coords``: crop pixels of
    the build the ground truth came from, mapped back through each sample's
    ``crop_affine`` (after the 1-based correction, if any; z is left alone)."""
    lm = landmark_array(points, what, error=PredictionError)
    if one_based:
        lm = camera.one_based_to_zero_based(lm)
    if crop_coords:
        if gt.crop_affines is None:
            raise PredictionError(f"{what}: --crop-coords needs the ground truth from a build (--build DIR), whose "
                                  "recorded crop affines map crop pixels back to the image")
        lm = lm.copy()
        lm[..., :2] = np.stack([apply_affine(invert_affine(a), p[:, :2]) for a, p in zip(gt.crop_affines, lm)])
    return lm


def align_predictions(pf: PredictionFile, gt: GroundTruth, one_based: bool = False,
                      crop_coords: bool = False) -> np.ndarray:
    """Landmarks of ``pf`` as ``(N, 68, 2)`` 0-based source pixels in ground-truth
    order (every image predicted once)."""
    what = str(pf.path)
    lm = landmark_array(pf.values, what, dims=2, error=PredictionError)
    if pf.names is not None:
        lm = lm[match_order(pf.names, gt, what)]
    elif len(lm) != len(gt):
        diff = len(lm) - len(gt)
        raise PredictionError(f"{what}: {len(lm)} images, the ground truth has {len(gt)} "
                              f"({abs(diff)} {'too many' if diff > 0 else 'missing'})")
    return to_source_pixels(lm, gt, what, one_based, crop_coords)


def roi_boxes_for(names, boxes, path="--roi-box") -> np.ndarray:
    """The roi box of each AFLW2000-3D image ``names``, from ``boxes`` ``(2000, 4)`` in
    the sorted order of ``manifests/aflw2000-3d.names.txt`` (3DDFA's
    ``AFLW2000-3D_crop.roi_box.npy``)."""
    b = np.asarray(boxes)
    every = aflw2000_names()
    if b.shape != (len(every), 4) or b.dtype.kind not in "fiu":
        raise PredictionError(f"{path}: found shape {b.shape} dtype {b.dtype}, expected ({len(every)}, 4) numbers "
                              "[sx, sy, ex, ey], the rows of AFLW2000-3D_crop.roi_box.npy in sorted name order")
    row = {n: i for i, n in enumerate(every)}
    missing = [str(n) for n in names if base_name(str(n)) not in row]
    if missing:
        raise PredictionError(f"{path}: the roi boxes cover AFLW2000-3D only; {len(missing)} images are not in it "
                              f"(first: {', '.join(missing[:5])})")
    return b[[row[base_name(str(n))] for n in names]].astype(np.float64)


def decode_3ddfa(params, gt_names, model, stats, boxes) -> tuple[np.ndarray, dict]:
    """3DDFA-family parameters ``(N, 62)`` of the images ``gt_names`` -> ``(N, 68, 3)``
    landmarks in 0-based source pixels, and what was done (for the report)."""
    mean, std = stats
    rb = roi_boxes_for(gt_names, boxes)
    pts = tddfa.decode_to_image(params, mean, std, model, rb)
    clipped = tddfa.clipped_boxes(rb)
    info = {"decoding": "3DDFA reconstruct_vertex + benchmark_aflw2000 back-projection (1-based frame of "
                        "pt3d_68), then 1 subtracted from x and y", "clipped_roi_boxes": int(clipped.sum())}
    return camera.one_based_to_zero_based(pts), info
