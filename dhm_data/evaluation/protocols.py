"""The one source of the evaluation's words: every definition, every named protocol, every quirk.

The metric functions' docstrings (:func:`defined_by`), ``dhm-eval --help`` (:func:`protocol_help`)
and the JSON report (:func:`definitions`, :meth:`Protocol.describe`) all read this module, so
the three cannot drift apart.  Pure data; no I/O.

A :class:`Protocol` bundles everything one published evaluation script does: the image list,
the face filter, the normaliser, the bins, the means it prints, the AUC / failure variant,
the coordinate base and its quirks (reproduced under the protocol's name, never by default,
and each one named in the report).  docs/evaluation.md has one table per community.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dhm_data.errors import EvaluationError

#: |yaw| bin edges in degrees: [0, 30], (30, 60], (60, inf), and the bins' names
YAW_EDGES = (30.0, 60.0)
YAW_BIN_LABELS = ("[0,30]", "(30,60]", "(60,inf)")

#: Every definition the report and the help quote, by key.
DEFINITIONS = {
    "nme": "per image: mean over the 68 points of the 2D Euclidean error / sqrt(w*h) of the tight box of the 68 "
           "ground-truth points (x, y only; z ignored); a fraction (x100 = %)",
    "nme-3d.2dasl": "2DASL's 3D NME (evaluation/nme_for_alignment_68pts_3d.m): z of prediction and ground truth "
                    "each shifted so that its minimum is 0, mean 3D Euclidean point error / sqrt(w*h) of the 2D "
                    "ground-truth box; a fraction",
    "nme-3d.no-shift": "3D NME without the z shift: mean 3D Euclidean point error (x, y, z as given, z in the "
                       "pixel units of x and y) / sqrt(w*h) of the 2D ground-truth box; a fraction",
    "coordinates": "0-based pixels of the source image (top-left pixel centre = (0, 0))",
    "yaw_bins": "|yaw| in degrees from Pose_Para[1]: [0,30], (30,60], (60,inf); |yaw| > 90 falls in the last bin",
    "balanced_mean": "mean of the per-bin mean NMEs (the headline 'mean' of the AFLW2000-3D tables)",
    "balanced_std": "population std (ddof=0) of the per-bin mean NMEs, as 3DDFA benchmark_aflw2000.ana",
    "overall_mean": "mean NME over all images",
    "overall_std": "population std (ddof=0) of the per-image NMEs",
    "ced": "fraction of images with NME <= x",
    "failure_rate": "fraction of images with NME > threshold (strict); a row scored as a failure (--nan-as-failure) "
                    "counts as above every threshold",
    "auc.ls3dw": "Bulat & Tzimiropoulos 2017: axes = linspace(0,1,1000); c_i = mean(NME < axes_i) (strict); "
                 "AUC = mean of the first round(1000*threshold) c_i (70 for 7%)",
    "auc.menpofit": "menpofit area_under_curve_and_failure_rate: x = arange(0, t+step, step); c = mean(NME <= x); "
                    "AUC = scipy.integrate.simpson(c, x=x) / t",
    "pose.angles": "yaw, pitch, roll in degrees in the Pose_Para convention of 300W-LP / AFLW2000-3D "
                   "(R = Rx(pitch)^T Ry(yaw)^T Rz(roll)^T, camera.rotation_from_angles); predictions given as "
                   "matrices or rotation vectors are decomposed into the one of their two Euler triples, (p, y, r) or "
                   "(p + 180, 180 - y, r + 180), nearest the truth (the same rotation: no 180 degree charge for the "
                   "decomposition's choice near |yaw| = 90); the 6drepnet variant keeps yaw in [-90, 90] and wraps",
    "pose.mae": "per angle: mean over faces of |predicted - true| in degrees (no wrap-around); 'MAE' = mean of the "
                "yaw, pitch and roll MAEs, the figure of the head-pose tables",
    "pose.geodesic": "angle of R_pred R_true^T in degrees, arccos((trace - 1) / 2): mean and median over faces",
    "pose.filter-99": "AFLW2000-3D faces whose three Pose_Para angles (pitch, yaw, roll), in degrees, all lie "
                      "within [-99, 99]: 1,969 of the 2,000 (the head-pose benchmark of Hopenet, FSA-Net, "
                      "6DRepNet, img2pose)",
    "pose.bins": "the yaw bins of the landmark tables, by |true yaw|",
}

#: Named quirks of published scripts; reproduced only under the protocol that owns them.
QUIRKS = {
    "3ddfa.float32": "the per-image NMEs are cast to float32 before the means (np.array(nme_list, "
                     "dtype=np.float32)); changes figures below 1e-7",
    "3ddfa.clipped-roi-boxes": "54 of the 2,000 roi boxes of AFLW2000-3D_crop.roi_box.npy are clipped to the "
                               "image (benchmark/ImageROI.m) while the 120x120 crops were cut from the unclipped "
                               "square: the back-projection x (ex - sx) / 120 + sx uses the clipped box, as the "
                               "script does",
    "3ddfa.reannotated-offset": "the script compares its predictions, in the 1-based frame of pt3d_68, with the "
                                "0-based LS3D-W re-annotation as stored: every prediction sits (+1, +1) px off; "
                                "reproduced on aflw2000-reannotated",
    "6drepnet.wrap": "each angle error is min(|d|, |d + 360|, |d - 360|, |d + 180|, |d - 180|): an error of "
                     "180 degrees counts as 0, which can hide gross errors (sixdrepnet/test.py)",
    "3dfan.auc-axis": "the AUC curve is sampled at linspace(0, 1, 1000), a step of 1/999: the 70 samples of "
                      "'AUC@7%' span [0, 0.0691]",
    "dad3d.failure-below": "DAD-3DHeads' FailureRate(threshold=0.05, below=True) counts images with NME < 0.05, "
                           "the share *under* the threshold, averaged per batch; reported beside the failure "
                           "rate as 'dad3d_fr_below'",
}

ORIGINAL_GT_SOURCE = "cleardusk/3DDFA: benchmark_aflw2000.py"


@dataclass(frozen=True)
class Protocol:
    """Everything one published evaluation script does, by name.

    ``metric``: ``nme`` | ``nme-3d`` | ``pose``; ``input``: the prediction input it
    expects (``landmarks``, ``3ddfa-params`` or ``pose``); ``exclude``: image names it
    leaves out; ``face_filter``: a filter of :data:`DEFINITIONS` (``pose.filter-99``);
    ``headline``: the figure its tables print; ``quirks``: keys of :data:`QUIRKS`.
    """

    name: str
    title: str
    source: str
    metric: str
    input: str
    datasets: tuple
    images: str
    normaliser: str
    means: str
    headline: str
    coordinates: str
    exclude: tuple = ()
    face_filter: str | None = None
    yaw_bins: bool = True
    auc_variant: str = "ls3dw"
    threshold: float = 0.07
    failure_threshold: float | None = None
    pose_format: str | None = None
    pose_variant: str = "plain"
    nme_3d_variant: str = "2dasl"
    quirks: tuple = ()
    extra: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-ready: the name, the source and every choice, with the quirks spelled out."""
        d = {
            "name": self.name, "title": self.title, "source": self.source, "metric": self.metric,
            "input": self.input, "datasets": list(self.datasets), "images": self.images,
            "excluded_images": list(self.exclude), "face_filter": self.face_filter,
            "face_filter_definition": DEFINITIONS.get(self.face_filter) if self.face_filter else None,
            "normaliser": self.normaliser, "means_reported": self.means, "headline": self.headline,
            "coordinates": self.coordinates, "yaw_bins": self.yaw_bins,
        }
        if self.metric == "nme":
            d.update(auc_variant=self.auc_variant, threshold=self.threshold,
                     failure_threshold=self.failure_threshold or self.threshold)
        if self.metric == "pose":
            d.update(pose_format=self.pose_format, pose_variant=self.pose_variant)
        if self.metric == "nme-3d":
            d.update(nme_3d_variant=self.nme_3d_variant)
        d["quirks"] = [{"name": q, "what": QUIRKS[q]} for q in self.quirks]
        d.update(self.extra)
        return d


_TDDFA_COMMON = dict(
    metric="nme", input="3ddfa-params", datasets=("aflw2000", "aflw2000-reannotated"),
    normaliser="nme", yaw_bins=True, auc_variant="ls3dw", threshold=0.07,
    means="per-bin mean and std (ddof=0) of the NME, the mean and std (ddof=0) of the three bin means",
    headline="balanced mean (mean of the three bin means)",
    coordinates="predictions in the 1-based frame of pt3d_68 (y = 120 + 1 - y in the crop, then "
                "x (ex - sx) / 120 + sx); scored in 0-based pixels, which is the same for the original labels",
    quirks=("3ddfa.float32", "3ddfa.clipped-roi-boxes", "3ddfa.reannotated-offset"),
)

#: 2DASL's test script drops the two faces its landmark detector missed (fail_detect = [1082-1, 1799-1]).
TWO_DASL_EXCLUDED = ("image02139", "image03862")

PROTOCOLS = {p.name: p for p in (
    Protocol(name="3ddfa", title="3DDFA AFLW2000-3D benchmark (68-point 2D NME, yaw bins)",
             source="cleardusk/3DDFA: benchmark_aflw2000.py (calc_nme, ana), benchmark.py, utils/ddfa.py "
                    "(reconstruct_vertex); copied by SynergyNet and 2DASL",
             images="all 2,000 faces, in the order of AFLW2000-3D_crop.list / the roi boxes", **_TDDFA_COMMON),
    Protocol(name="2dasl-1998", title="2DASL AFLW2000-3D benchmark on 1,998 faces",
             source="XgTu/2DASL: test_codes/benchmark_0resnet50_4chls_FAN2d_18pts_1998.py (fail_detect), "
                    "test_codes/test.data/AFLW1998-3D_crop.list",
             images="1,998 faces: AFLW1998-3D_crop.list leaves out image02139 and image03862",
             exclude=TWO_DASL_EXCLUDED, **_TDDFA_COMMON),
    Protocol(name="hopenet", title="Hopenet / FSA-Net head pose on AFLW2000-3D (MAE of yaw, pitch, roll)",
             source="natanielruiz/deep-head-pose: code/test_hopenet.py, code/datasets.py (AFLW2000); "
                    "shamangary/FSA-Net: training_and_testing/FSANET_test.py",
             metric="pose", input="pose", datasets=("aflw2000",),
             images="the 1,969 faces of the [-99, 99] filter (manifests/aflw2000-3d-pose-1969.txt)",
             face_filter="pose.filter-99", normaliser="none (degrees)", yaw_bins=False,
             means="MAE of yaw, pitch and roll over faces, and their mean",
             headline="MAE (mean of the yaw, pitch and roll MAEs)",
             coordinates="angles in degrees, [yaw, pitch, roll] = Pose_Para[[1, 0, 2]] * 180 / pi",
             pose_format="ypr-deg", pose_variant="plain"),
    Protocol(name="6drepnet", title="6DRepNet head pose on AFLW2000-3D (wrapped MAE)",
             source="thohemp/6DRepNet: sixdrepnet/test.py, sixdrepnet/utils.py (get_R, "
                    "compute_euler_angles_from_rotation_matrices), sixdrepnet/create_filename_list.py",
             metric="pose", input="pose", datasets=("aflw2000",),
             images="the 1,969 faces of the [-99, 99] filter (files.txt of create_filename_list.py)",
             face_filter="pose.filter-99", normaliser="none (degrees)", yaw_bins=False,
             means="wrapped MAE of yaw, pitch and roll over faces, and their mean",
             headline="MAE (mean of the wrapped yaw, pitch and roll MAEs)",
             coordinates="R = Rz(roll) Ry(yaw) Rx(pitch), the transpose of the 300W-LP matrix; Euler angles "
                         "x = atan2(R21, R22), y = atan2(-R20, sqrt(R00^2 + R10^2)), z = atan2(R10, R00)",
             pose_format="6drepnet-matrix", pose_variant="6drepnet", quirks=("6drepnet.wrap",)),
    Protocol(name="3dfan", title="3D-FAN (Bulat & Tzimiropoulos 2017): NME by the box size, AUC at 7%",
             source="1adrianb/2D-and-3D-face-alignment: utils.lua (calcDistance, bounding_box, calculateMetrics)",
             metric="nme", input="landmarks",
             datasets=("aflw2000-reannotated", "aflw2000", "ls3dw-300w", "ls3dw-menpo", "ls3dw-300vw-a",
                       "ls3dw-300vw-b", "ls3dw-300vw-c"),
             images="every image of the set", normaliser="nme", yaw_bins=False, auc_variant="ls3dw",
             threshold=0.07, means="mean NME over images; AUC at 7% on the 1,000-sample axis",
             headline="AUC@7% (ls3dw)",
             coordinates="2D points in the pixel frame of the ground truth (the '3D' figures are 2D errors of "
                         "projections)", quirks=("3dfan.auc-axis",)),
    Protocol(name="dad3d", title="DAD-3DHeads: NME and failure rate at 0.05",
             source="PinataFarms/DAD-3DHeads: model_training/metrics/keypoints.py (keypoints_nme, FailureRate)",
             metric="nme", input="landmarks",
             datasets=("aflw2000", "aflw2000-reannotated", "ls3dw-300w", "ls3dw-menpo", "ls3dw-300vw-a",
                       "ls3dw-300vw-b", "ls3dw-300vw-c"),
             images="every image of the set",
             normaliser="nme (DAD-3DHeads normalises by sqrt(w*h) of its head box; these sets have none, the "
                        "68-point box is used)",
             yaw_bins=False, auc_variant="ls3dw", threshold=0.05, failure_threshold=0.05,
             means="mean NME over images; failure rate at 0.05",
             headline="failure rate at 0.05", coordinates="0-based pixels of the source image",
             quirks=("dad3d.failure-below",)),
)}


def get_protocol(name: str) -> Protocol:
    """The :class:`Protocol` called ``name``; the error lists the known ones."""
    if name not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def definitions(*keys: str) -> dict:
    """``{key: text}`` of :data:`DEFINITIONS` for the keys given (every key when none)."""
    return {k: DEFINITIONS[k] for k in (keys or DEFINITIONS)}


def defined_by(*keys: str):
    """Decorator: append the definitions ``keys`` to a function's docstring (the one source)."""
    def deco(fn):
        text = "\n".join(f"    {k}: {DEFINITIONS.get(k) or QUIRKS[k]}" for k in keys)
        fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n    Definition (dhm_data.evaluation.protocols):\n" + text + "\n"
        return fn
    return deco


def protocol_help() -> str:
    """One line per protocol for ``--help``: name, title and the source script."""
    return "; ".join(f"{p.name}: {p.title} [{p.source.split(':')[0]}]" for p in PROTOCOLS.values())
