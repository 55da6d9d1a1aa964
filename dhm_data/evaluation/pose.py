"""Head pose: the conventions of the public code, and the MAE / geodesic figures of the tables.

Every prediction format (:data:`POSE_FORMATS`) is converted to two things in the 300W-LP /
AFLW2000-3D convention of :mod:`dhm_data.geometry.camera`: (pitch, yaw, roll) in radians,
and the rotation ``R = Rx(pitch)^T Ry(yaw)^T Rz(roll)^T``.  The ground truth is the first
three ``Pose_Para`` values of each face.  Pure numpy; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dhm_data.errors import EvaluationError, PredictionError
from dhm_data.evaluation import metrics as m
from dhm_data.evaluation.protocols import DEFINITIONS, QUIRKS, defined_by
from dhm_data.geometry import camera

#: The image axes of img2pose point y down and z away from the viewer; 300W-LP's
#: model frame points y up and z towards it: conjugating by this flips between them.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class PoseFormat:
    """One way the public code stores a head pose: ``shape`` per face, what it holds, where from."""

    name: str
    shape: tuple
    what: str
    source: str


POSE_FORMATS = {f.name: f for f in (
    PoseFormat("pose_para", (3,), "(N, 3) pitch, yaw, roll in radians, as Pose_Para[:3] ((N, 7) Pose_Para "
               "rows accepted, the first three used)", "300W-LP / AFLW2000-3D .mat files (Zhu et al. 2016, 3DDFA)"),
    PoseFormat("ypr-deg", (3,), "(N, 3) yaw, pitch, roll in degrees = Pose_Para[[1, 0, 2]] * 180 / pi",
               "natanielruiz/deep-head-pose: code/datasets.py (AFLW2000, cont_labels); shamangary/FSA-Net: "
               "data/type1/TYY_create_db_type1.py (cont_labels = [yaw, pitch, roll])"),
    PoseFormat("pyr-deg", (3,), "(N, 3) pitch, yaw, roll in degrees, the Pose_Para order",
               "vitoralbiero/img2pose: evaluation/jupyter_notebooks/aflw_2000_3d_evaluation.ipynb "
               "(pose_para_degrees)"),
    PoseFormat("matrix", (3, 3), "(N, 3, 3) rotations in the 300W-LP convention R = Rx(pitch)^T Ry(yaw)^T "
               "Rz(roll)^T (geometry.camera.rotation_from_angles)", "3DDFA's MATLAB code (Zhu et al. 2016)"),
    PoseFormat("6drepnet-matrix", (3, 3), "(N, 3, 3) R = Rz(roll) Ry(yaw) Rx(pitch) of right-handed elementary "
               "rotations, the transpose of 'matrix'", "thohemp/6DRepNet: sixdrepnet/utils.py (get_R), "
               "sixdrepnet/datasets.py (AFLW2000)"),
    PoseFormat("rotvec-img2pose", (3,), "(N, 3) rotation vectors (radians) as img2pose's dofs[:3]: "
               "Rodrigues(v) = F R F, R the 300W-LP matrix, F = diag(1, -1, -1); its notebook's convert_to_aflw "
               "gives the same angles", "vitoralbiero/img2pose: evaluation/jupyter_notebooks/"
               "aflw_2000_3d_evaluation.ipynb (convert_to_aflw)"),
)}
POSE_VARIANTS = {"plain": DEFINITIONS["pose.mae"], "6drepnet": QUIRKS["6drepnet.wrap"]}
ANGLES = ("yaw", "pitch", "roll")


def rodrigues(v) -> np.ndarray:
    """Rotation matrices ``(N, 3, 3)`` of rotation vectors ``(N, 3)`` (axis * angle, radians)."""
    v = np.asarray(v, np.float64)
    theta = np.linalg.norm(v, axis=-1)
    k = v / np.where(theta > 0, theta, 1.0)[..., None]
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    s, c = np.sin(theta)[..., None, None], np.cos(theta)[..., None, None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def _check_rotations(R: np.ndarray, what: str) -> None:
    ok = np.isfinite(R).all(axis=(1, 2))
    if not ok.any():
        return
    Rf = R[ok]
    off = np.abs(Rf @ np.swapaxes(Rf, 1, 2) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(Rf)
    bad = np.flatnonzero((off > 1e-3) | (np.abs(det - 1) > 1e-3))
    if bad.size:
        idx = np.flatnonzero(ok)[bad]
        raise PredictionError(f"{what}: {bad.size} of {len(R)} matrices are not rotations (R R^T != I or det != 1 "
                              f"beyond 1e-3; indices {', '.join(map(str, idx[:10]))})")


def as_pose_array(values, fmt: str, what: str = "poses") -> np.ndarray:
    """Check ``values`` against the shape of format ``fmt``; returns float64 ``(N, ...)``."""
    if fmt not in POSE_FORMATS:
        raise EvaluationError(f"unknown pose format {fmt!r}; known: {', '.join(POSE_FORMATS)}")
    a = np.asarray(values)
    if a.dtype.kind not in "fiu":
        raise PredictionError(f"{what}: expected a numeric array, found dtype {a.dtype}")
    shape = POSE_FORMATS[fmt].shape
    if fmt == "pose_para" and a.ndim == 2 and a.shape[1] == 7:
        a = a[:, :3]
    if a.ndim != 1 + len(shape) or a.shape[1:] != shape:
        accepted = "; ".join(f"{f.name}: {f.what}" for f in POSE_FORMATS.values())
        raise PredictionError(f"{what}: found {a.shape} for --pose-format {fmt} ({POSE_FORMATS[fmt].what}); "
                              f"accepted formats: {accepted}")
    return a.astype(np.float64)


def to_pose(values, fmt: str, what: str = "poses") -> tuple[np.ndarray, np.ndarray]:
    """Convert poses of format ``fmt`` to ``(angles, R)``: ``(N, 3)`` (pitch, yaw, roll)
    in radians (yaw in [-pi/2, pi/2] where decomposed from a matrix) and ``(N, 3, 3)``
    300W-LP rotations.  NaN rows stay NaN."""
    a = as_pose_array(values, fmt, what)
    if fmt in ("pose_para", "ypr-deg", "pyr-deg"):
        ang = {"pose_para": a, "ypr-deg": np.radians(a[:, [1, 0, 2]]), "pyr-deg": np.radians(a)}[fmt]
        return ang, camera.rotation_from_angles(ang[:, 0], ang[:, 1], ang[:, 2])
    if fmt == "rotvec-img2pose":
        R = _FLIP_YZ @ rodrigues(a) @ _FLIP_YZ
    else:
        _check_rotations(a, what)
        R = a if fmt == "matrix" else np.swapaxes(a, 1, 2)
    return camera.angles_from_rotation(R), R


def from_pose_para(pose_para, fmt: str) -> np.ndarray:
    """Write ``Pose_Para`` rows ``(N, >=3)`` in format ``fmt`` (the inverse of :func:`to_pose`)."""
    p = np.asarray(pose_para, np.float64)[:, :3]
    if fmt == "pose_para":
        return p.copy()
    if fmt == "ypr-deg":
        return np.degrees(p[:, [1, 0, 2]])
    if fmt == "pyr-deg":
        return np.degrees(p)
    R = camera.rotation_from_angles(p[:, 0], p[:, 1], p[:, 2])
    if fmt == "matrix":
        return R
    if fmt == "6drepnet-matrix":
        return np.swapaxes(R, 1, 2)
    if fmt == "rotvec-img2pose":
        M = _FLIP_YZ @ R @ _FLIP_YZ
        theta = np.arccos(np.clip((np.trace(M, axis1=1, axis2=2) - 1) / 2, -1, 1))
        w = np.stack([M[:, 2, 1] - M[:, 1, 2], M[:, 0, 2] - M[:, 2, 0], M[:, 1, 0] - M[:, 0, 1]], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(theta > 1e-12, theta / (2 * np.sin(theta)), 0.5)
        return w * scale[:, None]
    raise EvaluationError(f"unknown pose format {fmt!r}; known: {', '.join(POSE_FORMATS)}")


#: formats whose angles come from decomposing a rotation (two Euler triples per rotation)
MATRIX_FORMATS = ("matrix", "6drepnet-matrix", "rotvec-img2pose")


def _wrap(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def nearest_euler(angles, true) -> np.ndarray:
    """Of the two (pitch, yaw, roll) triples of each rotation, ``(p, y, r)`` and
    ``(p + pi, pi - y, r + pi)`` (wrapped to [-pi, pi)), the one nearest ``true``
    (sum of absolute differences); ``(N, 3)`` radians.  Both describe the same
    rotation: a prediction given as a matrix near |yaw| = 90 is not charged 180
    degrees for the decomposition's choice."""
    a = np.asarray(angles, np.float64)
    t = np.asarray(true, np.float64)
    alt = _wrap(np.stack([a[:, 0] + np.pi, np.pi - a[:, 1], a[:, 2] + np.pi], axis=1))
    use = np.abs(alt - t).sum(axis=1) < np.abs(a - t).sum(axis=1)
    return np.where(use[:, None], alt, a)


# ------------------------------------------------------------------ errors
@defined_by("pose.mae")
def angle_errors(pred_deg, true_deg, variant: str = "plain") -> np.ndarray:
    """Absolute angle errors in degrees, elementwise; ``variant="6drepnet"`` takes
    6DRepNet's minimum over shifts of 0, +-180 and +-360 degrees (a quirk)."""
    d = np.asarray(pred_deg, np.float64) - np.asarray(true_deg, np.float64)
    if variant == "plain":
        return np.abs(d)
    if variant == "6drepnet":
        return np.min(np.abs(np.stack([d, d + 360, d - 360, d + 180, d - 180])), axis=0)
    raise EvaluationError(f"unknown pose variant {variant!r}; known: {', '.join(POSE_VARIANTS)}")


@defined_by("pose.geodesic")
def geodesic_deg(R_pred, R_true) -> np.ndarray:
    """Angle of ``R_pred R_true^T`` in degrees, ``(N,)``, for ``(N, 3, 3)`` rotations."""
    c = (np.einsum("...ij,...ij->...", np.asarray(R_pred, np.float64), np.asarray(R_true, np.float64)) - 1) / 2
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


@dataclass
class PoseReport:
    """Every figure of one head-pose evaluation, degrees.

    ``errors``: ``(N, 3)`` absolute yaw, pitch, roll errors (NaN for a failed row);
    ``geodesic``: ``(N,)``; ``mae``: ``{yaw, pitch, roll, mean}`` over the rows that
    did not fail; ``bins``: the same per |true yaw| bin.
    """

    label: str
    names: np.ndarray
    pose_format: str
    variant: str
    errors: np.ndarray
    geodesic: np.ndarray
    true_yaw_deg: np.ndarray
    protocol: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.names))

    @property
    def failed(self) -> np.ndarray:
        return ~np.isfinite(self.geodesic)

    @staticmethod
    def _figures(err: np.ndarray, geo: np.ndarray) -> dict:
        if len(geo) == 0:
            return {"count": 0, **{a: None for a in ANGLES}, "mean": None, "geodesic_mean": None,
                    "geodesic_median": None}
        mae = err.mean(axis=0)
        return {"count": int(len(geo)), **{a: float(v) for a, v in zip(ANGLES, mae)}, "mean": float(mae.mean()),
                "geodesic_mean": float(geo.mean()), "geodesic_median": float(np.median(geo))}

    @property
    def mae(self) -> dict:
        ok = ~self.failed
        return self._figures(self.errors[ok], self.geodesic[ok])

    @property
    def headline(self) -> tuple[str, float]:
        return "MAE", self.mae["mean"]

    def bins(self) -> list[dict]:
        idx = m.yaw_bin_index(self.true_yaw_deg)
        ok = ~self.failed
        return [dict(bin=lab, **self._figures(self.errors[(idx == k) & ok], self.geodesic[(idx == k) & ok]))
                for k, lab in enumerate(m.YAW_BIN_LABELS)]

    def to_dict(self, per_image: bool = False) -> dict:
        d = {"label": self.label, "metric": "pose", "units": "degrees", "n_images": self.n,
             "n_failed": int(self.failed.sum()), "failed": [str(n) for n in self.names[self.failed]],
             "pose_format": self.pose_format, "pose_format_definition": POSE_FORMATS[self.pose_format].what,
             "variant": self.variant, "variant_definition": POSE_VARIANTS[self.variant],
             "mae": self.mae, "headline": {"name": "MAE", "value": self.mae["mean"]},
             "yaw_bins": self.bins(), "protocol": self.protocol}
        if per_image:
            d["per_image"] = {"names": [str(n) for n in self.names], "yaw_pitch_roll_error": self.errors.tolist(),
                              "geodesic": self.geodesic.tolist()}
        return d


def evaluate_pose(pred, pose_para, *, pose_format: str, names=None, label: str = "poses", variant: str = "plain",
                  nan_as_failure: bool = False) -> PoseReport:
    """Score head poses ``pred`` (format ``pose_format``) against ``pose_para`` ``(N, >=3)``
    (pitch, yaw, roll in radians, the ground truth's ``Pose_Para``), same order.

    ``variant``: ``"plain"`` (default) or ``"6drepnet"`` (the wrap quirk, named in the
    report).  Rows holding NaN are refused unless ``nan_as_failure`` (then counted as
    failed and left out of the means)."""
    if variant not in POSE_VARIANTS:
        raise EvaluationError(f"unknown pose variant {variant!r}; known: {', '.join(POSE_VARIANTS)}")
    true = np.asarray(pose_para, np.float64)[:, :3]
    ang, R = to_pose(pred, pose_format, label)
    if len(ang) != len(true):
        diff = len(ang) - len(true)
        raise PredictionError(f"{label}: {len(ang)} poses, the ground truth has {len(true)} "
                              f"({abs(diff)} {'too many' if diff > 0 else 'missing'})")
    ok = np.isfinite(R).all(axis=(1, 2)) & np.isfinite(ang).all(axis=1)
    if not ok.all() and not nan_as_failure:
        idx = np.flatnonzero(~ok)
        raise PredictionError(f"{label}: {len(idx)} of {len(ok)} poses hold NaN/inf (indices "
                              f"{', '.join(map(str, idx[:10]))}); give --nan-as-failure to score them as failures")
    if pose_format in MATRIX_FORMATS and variant == "plain":
        ang = nearest_euler(ang, true)
    true_deg = np.degrees(true)
    err = np.full((len(true), 3), np.nan)
    geo = np.full(len(true), np.nan)
    order = [1, 0, 2]                                                   # yaw, pitch, roll
    err[ok] = angle_errors(np.degrees(ang[ok])[:, order], true_deg[ok][:, order], variant)
    geo[ok] = geodesic_deg(R[ok], camera.rotation_from_angles(true[ok, 0], true[ok, 1], true[ok, 2]))
    names = np.array([f"#{i:04d}" for i in range(len(true))]) if names is None else np.asarray(names, str)
    protocol = {"pose.angles": DEFINITIONS["pose.angles"], "pose.mae": DEFINITIONS["pose.mae"],
                "pose.geodesic": DEFINITIONS["pose.geodesic"], "pose.bins": DEFINITIONS["pose.bins"]}
    return PoseReport(label, names, pose_format, variant, err, geo, true_deg[:, 1], protocol)


def pose_table(reports) -> str:
    """Plain-text table of pose reports (degrees)."""
    cols = ["predictions", "yaw", "pitch", "roll", "MAE", "geodesic mean", "geodesic median", "failed"]
    rows = []
    for r in reports:
        f = r.mae
        cell = [r.label] + ["-" if f[k] is None else f"{f[k]:.3f}" for k in ("yaw", "pitch", "roll", "mean",
                                                                              "geodesic_mean", "geodesic_median")]
        rows.append(cell + [str(int(r.failed.sum()))])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])
