"""dhm-eval for the 3DDFA family, head pose, 3D NME, named protocols and convention slips.

Real data: 2DASL's own 62-parameter output on AFLW2000-3D (../shared/reference), scored
by the command and by an independent plain computation written out here, loop by loop,
as cleardusk/3DDFA benchmark_aflw2000.py and XgTu/2DASL's 1,998-face script do it.
"""

import json
import math
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import reference_path

from dhm_data.cli.evaluate import main
from dhm_data.errors import EvaluationError, GroundTruthError, InputError, ModelFileError, PredictionError
from dhm_data.evaluation import checks, evaluation_report, load_ground_truth, nme_3d, pose
from dhm_data.evaluation.lists import POSE_FILTER, aflw2000_names, pose_filter_rule, shipped_list
from dhm_data.evaluation.protocols import DEFINITIONS, PROTOCOLS, QUIRKS
from dhm_data.evaluation.report import Prediction
from dhm_data.evaluation.tddfa import read_param_stats
from dhm_data.geometry import camera
from dhm_data.geometry.landmarks68 import ACCEPTED_SHAPES, landmark_array


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert (res.exit_code == 0) == ok, res.output
    return res


# ------------------------------------------------------------------ the real 2DASL output
@pytest.fixture(scope="module")
def ref():
    r = {k: reference_path(*p) for k, p in {
        "params": ("aflw2000-3d-predictions", "2dasl_params_1998.npy"),
        "list1998": ("aflw2000-3d-predictions", "AFLW1998-3D_crop.list"),
        "list2000": ("aflw2000-3d-predictions", "AFLW2000-3D_crop.list"),
        "stats": ("bfm-aux", "param_whitening.pkl"), "bfm": ("bfm68",), "gt": ("aflw2000-3d-gt",)}.items()}
    r["roi"] = r["gt"] / "AFLW2000-3D_crop.roi_box.npy"
    return r


def plain_2dasl(ref, option):
    """The 2DASL 1,998-face benchmark written out plainly (float32 where the script is)."""
    with open(ref["stats"], "rb") as f:
        meta = pickle.load(f)           # the real public file, in a test
    u = np.loadtxt(ref["bfm"] / "u_base.txt").reshape(-1, 1)
    w_shp = np.loadtxt(ref["bfm"] / "w_shp_base.txt")
    w_exp = np.loadtxt(ref["bfm"] / "w_exp_base.txt")
    names = ref["list2000"].read_text().split()
    fail = [names.index("image02139.jpg"), names.index("image03862.jpg")]
    assert fail == [1082 - 1, 1799 - 1]                # the script's fail_detect
    keep = [i for i in range(2000) if i not in fail]
    yaws = np.load(ref["gt"] / "AFLW2000-3D.pose.npy")[keep]
    gts = np.load(ref["gt"] / ("AFLW2000-3D.pts68.npy" if option == "ori" else
                               "AFLW2000-3D-Reannotated.pts68.npy"))[keep]
    boxes = np.load(ref["roi"])[keep]
    params = np.load(ref["params"])
    nmes = []
    for k in range(len(keep)):
        p = params[k] * meta["param_std"] + meta["param_mean"]
        m = p[:12].reshape(3, 4)
        v = m[:, :3] @ (u + w_shp @ p[12:52].reshape(-1, 1) + w_exp @ p[52:].reshape(-1, 1)).reshape(3, -1, order="F")
        v = v + m[:, 3:]
        v[1] = 120 + 1 - v[1]
        sx, sy, ex, ey = boxes[k]
        x = v[0] * (ex - sx) / 120 + sx
        y = v[1] * (ey - sy) / 120 + sy
        g = gts[k]
        d = math.sqrt((g[0].max() - g[0].min()) * (g[1].max() - g[1].min()))
        nmes.append(np.mean(np.sqrt((x - g[0]) ** 2 + (y - g[1]) ** 2)) / d)
    nmes = np.array(nmes, dtype=np.float32)
    a = np.abs(yaws)
    bins = [nmes[a <= 30], nmes[(a > 30) & (a <= 60)], nmes[a > 60]]
    means = [np.mean(b) * 100 for b in bins]
    return means, np.mean(means), np.std(means), nmes


#: the figures in docs/evaluation.md (% of sqrt(w*h); bins [0,30], (30,60], (60,inf))
PINNED = {
    "ori": ([2.6706, 3.6053, 4.6592], 3.6450, 0.8123, 3.1523),
    "re-script": ([2.4100, 2.8197, 3.9345], 3.0547, 0.6442, 2.7205),
    "re-0-based": ([2.1126, 2.5814, 3.8137], 2.8359, 0.7174, 2.4613),
}


def _figures(doc):
    r = doc["results"][0]
    return ([100 * b["mean_nme"] for b in r["yaw_bins"]], 100 * r["balanced_mean_nme"],
            100 * r["balanced_std_of_bin_means"], 100 * r["overall_mean_nme"])


@pytest.mark.reference
@pytest.mark.parametrize("dataset,option", [("aflw2000", "ori"), ("aflw2000-reannotated", "re")])
def test_2dasl_real_parameters_pinned_and_plain(ref, tmp_path, dataset, option):
    common = [ref["params"], "--dataset", dataset, "--root", ref["gt"], "--bfm", ref["bfm"], "--param-stats",
              ref["stats"], "--roi-box", ref["roi"]]
    run(common + ["--protocol", "2dasl-1998", "--json", tmp_path / "p.json"])
    run(common + ["--input", "3ddfa-params", "--names", ref["list1998"], "--json", tmp_path / "n.json"])
    proto, named = (json.loads((tmp_path / f).read_text()) for f in ("p.json", "n.json"))
    means, mean, std, nmes = plain_2dasl(ref, option)
    # the protocol reproduces the script, quirks included
    got = _figures(proto)
    np.testing.assert_allclose(got[0], means, atol=2e-5)
    assert got[1] == pytest.approx(mean, abs=2e-5) and got[2] == pytest.approx(std, abs=2e-5)
    assert [f"{x:.3f}" for x in got[0] + [got[1], got[2]]] == [f"{x:.3f}" for x in means + [mean, std]]
    key = "ori" if option == "ori" else "re-script"
    np.testing.assert_allclose(got[0], PINNED[key][0], atol=5e-5)
    assert got[1:] == pytest.approx(PINNED[key][1:], abs=5e-5)
    assert proto["images"]["evaluated"] == 1998
    assert proto["images"]["left_out"] == {"excluded by protocol 2dasl-1998": ["image02139", "image03862"]}
    assert proto["protocol"]["name"] == "2dasl-1998" and proto["ground_truth"]["yaw_bin_counts"] == {
        "[0,30]": 1311, "(30,60]": 383, "(60,inf)": 304}
    quirks = {q["name"] for q in proto["protocol"]["quirks"]}
    assert ("3ddfa.reannotated-offset" in quirks) == (option == "re")
    # item 1 without the protocol: the same on the original labels; on the re-annotation
    # without the script's (+1, +1) slip
    got = _figures(named)
    key = "ori" if option == "ori" else "re-0-based"
    np.testing.assert_allclose(got[0], PINNED[key][0], atol=5e-5)
    assert got[1:] == pytest.approx(PINNED[key][1:], abs=5e-5)
    assert named["images"]["left_out"] == {"not in the predictions": ["image02139", "image03862"]}
    assert named["protocol"]["name"] is None and named["warnings"] == []
    assert named["predictions"][0]["clipped_roi_boxes"] == 53      # 54 of the 2,000 boxes; one is a left-out face


@pytest.mark.reference
def test_3ddfa_protocol_needs_all_2000_or_names(ref, tmp_path):
    common = [ref["params"], "--dataset", "aflw2000", "--root", ref["gt"], "--bfm", ref["bfm"], "--param-stats",
              ref["stats"], "--roi-box", ref["roi"], "--protocol", "3ddfa"]
    res = run(common, ok=False)
    assert "1998 images, the ground truth has 2000" in res.output and "--names" in res.output
    res = run(common + ["--names", ref["list1998"], "--json", tmp_path / "r.json"])
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["protocol"]["name"] == "3ddfa" and doc["images"]["evaluated"] == 1998
    res = run(common[:-2] + ["--input", "3ddfa-params"], ok=False)       # no names: 1998 rows != 2000
    res = run([ref["params"], "--dataset", "aflw2000", "--root", ref["gt"], "--protocol", "3ddfa"], ok=False)
    assert "--input 3ddfa-params needs --bfm, --param-stats, --roi-box" in res.output


def test_param_stats_restricted_unpickler_and_npz(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"param_mean": Evil()}, f)
    with pytest.raises(ModelFileError, match="refusing to load"):
        read_param_stats(tmp_path / "evil.pkl")
    mean, std = np.arange(62.0), np.ones(62)
    np.savez(tmp_path / "s.npz", param_mean=mean, param_std=std)
    np.testing.assert_array_equal(read_param_stats(tmp_path / "s.npz")[0], mean)
    with open(tmp_path / "v2.pkl", "wb") as f:
        pickle.dump({"mean": mean.astype(np.float32), "std": std.astype(np.float32)}, f)
    np.testing.assert_array_equal(read_param_stats(tmp_path / "v2.pkl")[1], std)
    np.savez(tmp_path / "bad.npz", mu=mean)
    with pytest.raises(ModelFileError, match="expected 'param_mean' and 'param_std'"):
        read_param_stats(tmp_path / "bad.npz")


# ------------------------------------------------------------------ head pose
@pytest.fixture(scope="module")
def pose_para():
    return np.load(reference_path("aflw2000-3d-gt", "AFLW2000-3D.pose_para.npy")).astype(np.float64)


@pytest.mark.reference
def test_pose_filter_count_rule_and_list(pose_para):
    keep = pose_filter_rule(pose_para)
    assert keep.sum() == 1969
    listed, comments = shipped_list(POSE_FILTER)
    assert listed == list(aflw2000_names()[keep]) and "count: 1969" in comments
    assert any("[-99, 99]" in c for c in comments)
    for name in listed:                                   # names only: no numbers beyond the image id
        assert name.startswith("image") and name[5:].isdigit()


def test_pose_hand_computed():
    true = np.radians([[10.0, 20.0, 30.0], [0.0, -45.0, 0.0]])           # pitch, yaw, roll
    pred_ypr = np.array([[22.0, 10.0, 27.0], [-40.0, 3.0, 0.0]])           # yaw, pitch, roll in degrees
    r = pose.evaluate_pose(pred_ypr, true, pose_format="ypr-deg")
    np.testing.assert_allclose(r.errors, [[2, 0, 3], [5, 3, 0]], atol=1e-12)
    assert r.mae["yaw"] == pytest.approx(3.5) and r.mae["pitch"] == pytest.approx(1.5)
    assert r.mae["roll"] == pytest.approx(1.5) and r.mae["mean"] == pytest.approx(6.5 / 3)
    # geodesic: a pure 5 degree yaw difference at zero pitch and roll is 5 degrees
    g = pose.geodesic_deg(camera.rotation_from_angles(0, np.radians(5), 0), camera.rotation_from_angles(0, 0, 0))
    assert g == pytest.approx(5.0, abs=1e-9)
    # 6DRepNet's wrap: a 180 degree error counts as 0, the plain variant keeps it
    assert pose.angle_errors(np.array([170.0]), np.array([-10.0]), "6drepnet") == pytest.approx(0.0)
    assert pose.angle_errors(np.array([170.0]), np.array([-10.0]), "plain") == pytest.approx(180.0)
    assert pose.angle_errors(np.array([-175.0]), np.array([179.0]), "6drepnet") == pytest.approx(6.0)


@pytest.mark.reference
@pytest.mark.parametrize("fmt", list(pose.POSE_FORMATS))
def test_pose_conventions_on_perturbed_real_pose_para(pose_para, fmt):
    keep = pose_filter_rule(pose_para)
    true = pose_para[keep, :3]
    rng = np.random.default_rng(3)
    noisy = true + np.radians(rng.normal(0, 4, true.shape))
    r = pose.evaluate_pose(pose.from_pose_para(noisy, fmt), true, pose_format=fmt)
    expected = np.abs(np.degrees(noisy - true))[:, [1, 0, 2]]
    np.testing.assert_allclose(r.errors, expected, atol=1e-7)
    R_t = camera.rotation_from_angles(*true.T)
    R_n = camera.rotation_from_angles(*noisy.T)
    np.testing.assert_allclose(r.geodesic, np.degrees(np.arccos(np.clip(
        (np.einsum("nij,nij->n", R_n, R_t) - 1) / 2, -1, 1))), atol=1e-7)


def test_pose_conventions_match_the_public_formulas():
    """6DRepNet's get_R and img2pose's convert_to_aflw (scipy) side by side."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(0)
    ang = np.radians(rng.uniform(-80, 80, (50, 3)))                      # pitch, yaw, roll

    def get_r(x, y, z):                                                 # sixdrepnet/utils.py get_R, right-handed
        rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
        ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
        return rz @ ry @ rx

    six = np.array([get_r(*a) for a in ang])
    np.testing.assert_allclose(pose.to_pose(six, "6drepnet-matrix")[0], ang, atol=1e-12)
    rv = pose.from_pose_para(ang, "rotvec-img2pose")
    for v, a in zip(rv, ang):
        e = Rotation.from_matrix(Rotation.from_rotvec(v).as_matrix().T).as_euler("xyz", degrees=True)
        np.testing.assert_allclose([e[0], -e[1], -e[2]], np.degrees(a), atol=1e-9)


@pytest.mark.reference
def test_dhm_eval_pose_protocols(aflw_gt_dir, pose_para, tmp_path):
    true = pose_para[:, :3]
    rng = np.random.default_rng(5)
    noisy = true + np.radians(rng.normal(0, 3, true.shape))
    np.save(tmp_path / "ypr.npy", pose.from_pose_para(noisy, "ypr-deg"))
    keep = pose_filter_rule(pose_para)
    np.save(tmp_path / "ypr1969.npy", pose.from_pose_para(noisy[keep], "ypr-deg"))
    np.save(tmp_path / "six.npy", pose.from_pose_para(noisy, "6drepnet-matrix"))
    base = ["--dataset", "aflw2000", "--root", aflw_gt_dir, "--metric", "pose"]
    run([tmp_path / "ypr.npy", *base, "--pose-format", "ypr-deg", "--json", tmp_path / "a.json"])
    run([tmp_path / "ypr.npy", *base, "--protocol", "hopenet", "--json", tmp_path / "h.json"])
    run([tmp_path / "ypr.npy", *base, "--pose-format", "ypr-deg", "--all-faces", "--json", tmp_path / "all.json"])
    run([tmp_path / "six.npy", *base, "--protocol", "6drepnet", "--json", tmp_path / "6.json"])
    a, h, al, six = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "h.json", "all.json", "6.json"))
    err = np.abs(np.degrees(noisy - true))[keep][:, [1, 0, 2]]
    assert a["images"]["evaluated"] == 1969 and al["images"]["evaluated"] == 2000
    assert len(a["images"]["left_out"][f"outside the [-99, 99] pose filter (manifests/{POSE_FILTER})"]) == 31
    ra = a["results"][0]
    assert [ra["mae"][k] for k in ("yaw", "pitch", "roll")] == pytest.approx(err.mean(axis=0), abs=1e-9)
    assert ra["mae"]["mean"] == pytest.approx(err.mean(), abs=1e-9) and ra["variant"] == "plain"
    assert h["results"][0]["mae"] == a["results"][0]["mae"] and h["protocol"]["name"] == "hopenet"
    assert six["results"][0]["variant"] == "6drepnet" and six["protocol"]["quirks"][0]["name"] == "6drepnet.wrap"
    # the wrap only ever lowers the figure (a face whose noisy yaw crossed 90 degrees is charged less)
    assert err.mean() - 0.01 < six["results"][0]["mae"]["mean"] <= err.mean() + 1e-9
    # 1,969 rows in the filter's order are accepted positionally
    run([tmp_path / "ypr1969.npy", *base, "--pose-format", "ypr-deg", "--json", tmp_path / "b.json"])
    assert json.loads((tmp_path / "b.json").read_text())["results"][0]["mae"] == ra["mae"]
    res = run([tmp_path / "ypr.npy", *base, "--protocol", "hopenet", "--all-faces"], ok=False)
    assert "--all-faces contradicts it" in res.output
    res = run([tmp_path / "six.npy", *base, "--protocol", "6drepnet", "--pose-variant", "plain"], ok=False)
    assert "fixes pose-variant = 6drepnet" in res.output


# ------------------------------------------------------------------ 3D NME
def test_nme_3d_hand_computed():
    g = np.zeros((1, 68, 3))
    g[0, :, 0] = np.arange(68) % 10                      # box 9 x 6 -> sqrt(54)
    g[0, :, 1] = np.arange(68) // 10
    g[0, :, 2] = 100 + np.arange(68) / 10
    p = g.copy()
    p[..., 2] += 50                                        # a depth offset only
    d = math.sqrt(54)
    assert nme_3d(p, g, "2dasl")[0] == pytest.approx(0.0, abs=1e-12)
    assert nme_3d(p, g, "no-shift")[0] == pytest.approx(50 / d, abs=1e-12)
    p[0, 0, 2] -= 68.0                                     # point 0 now 68 below where it was
    # 2dasl: the prediction's minimum is now point 0 (z 82): it lands on 0 like the truth's point 0,
    # every other point sits 68 higher than its truth
    assert nme_3d(p, g, "2dasl")[0] == pytest.approx(67 * 68 / 68 / d, abs=1e-9)


@pytest.mark.reference
def test_nme_3d_on_perturbed_real_pts68(aflw_gt_dir, tmp_path):
    pts = np.load(aflw_gt_dir / "AFLW2000-3D.pts68.npy").astype(np.float64)
    rng = np.random.default_rng(1)
    pred = pts + rng.normal(0, 1.0, pts.shape)
    pred[:, 2] += 40.0                                     # a depth offset, removed by the 2DASL shift
    np.save(tmp_path / "p.npy", pred)                      # (N, 3, 68), 1-based like pt3d_68
    base = ["--dataset", "aflw2000", "--root", aflw_gt_dir, "--metric", "nme-3d", "--one-based"]
    run([tmp_path / "p.npy", *base, "--json", tmp_path / "a.json"])
    run([tmp_path / "p.npy", *base, "--nme-3d-variant", "no-shift", "--json", tmp_path / "b.json"])
    a, b = (json.loads((tmp_path / f).read_text())["results"][0] for f in ("a.json", "b.json"))
    g = np.swapaxes(pts, 1, 2)
    q = np.swapaxes(pred, 1, 2)
    gs, qs = g.copy(), q.copy()
    gs[..., 2] -= gs[..., 2].min(axis=1, keepdims=True)
    qs[..., 2] -= qs[..., 2].min(axis=1, keepdims=True)
    d = np.sqrt(np.ptp(g[..., 0], axis=1) * np.ptp(g[..., 1], axis=1))
    plain = np.linalg.norm(qs - gs, axis=2).mean(axis=1) / d
    assert a["metric"] == "nme-3d (2dasl)" and "overall_mean_nme" not in a
    assert a["overall_mean_nme_3d"] == pytest.approx(plain.mean(), abs=1e-12)
    assert b["overall_mean_nme_3d"] > a["overall_mean_nme_3d"] + 0.05
    res = run([tmp_path / "p.npy", "--dataset", "aflw2000-reannotated", "--root", aflw_gt_dir, "--metric",
               "nme-3d"], ok=False)
    assert "no 3D landmarks" in res.output


# ------------------------------------------------------------------ convention slips
@pytest.mark.reference
def test_landmark_slips_raised_and_silent(aflw_gt_dir):
    gt = load_ground_truth("aflw2000", root=aflw_gt_dir)
    re = load_ground_truth("aflw2000-reannotated", root=aflw_gt_dir).landmarks  # a real, independent labelling
    assert checks.landmark_slips(re, gt.landmarks) == []
    one = checks.landmark_slips(re + 1.0, gt.landmarks)
    assert len(one) == 1 and "1-based pixels read as 0-based" in one[0]
    assert "0-based pixels read as 1-based" in checks.landmark_slips(re - 1.0, gt.landmarks, one_based=True)[0]
    sw = checks.landmark_slips(re[..., ::-1], gt.landmarks)
    assert any("x and y look swapped" in w for w in sw)
    # crop pixels: each face mapped into a 256 px crop around its box
    lo, hi = gt.landmarks.min(axis=1, keepdims=True), gt.landmarks.max(axis=1, keepdims=True)
    crop = (re - lo + 0.2 * (hi - lo)) * (256 / (1.4 * (hi - lo).max(axis=2, keepdims=True)))
    assert any("another pixel frame" in w for w in checks.landmark_slips(crop, gt.landmarks))


@pytest.mark.reference
def test_pose_slips_raised_and_silent(pose_para):
    true = pose_para[pose_filter_rule(pose_para), :3]
    noisy = true + np.radians(np.random.default_rng(2).normal(0, 3, true.shape))
    ypr = pose.from_pose_para(noisy, "ypr-deg")
    assert checks.pose_slips(ypr, "ypr-deg", true) == []
    assert "look like radians given as degrees" in checks.pose_slips(np.radians(ypr), "ypr-deg", true)[0]
    assert "look like degrees given as radians" in checks.pose_slips(np.degrees(noisy), "pose_para", true)[0]
    assert checks.pose_slips(noisy, "pose_para", true) == []
    rv = pose.from_pose_para(noisy, "rotvec-img2pose")
    assert checks.pose_slips(rv, "rotvec-img2pose", true) == []
    assert "rotation vectors look like degrees" in checks.pose_slips(np.degrees(rv), "rotvec-img2pose", true)[0]


@pytest.mark.reference
def test_warning_reaches_stderr_and_report(aflw_gt_dir, tmp_path):
    pts = np.load(aflw_gt_dir / "AFLW2000-3D.pts68.npy")
    np.save(tmp_path / "p.npy", pts + np.random.default_rng(0).normal(0, 1, pts.shape))   # 1-based, no flag
    res = CliRunner().invoke(main, [str(a) for a in (tmp_path / "p.npy", "--dataset", "aflw2000", "--root",
                                                     aflw_gt_dir, "--json", tmp_path / "r.json")])
    assert res.exit_code == 0 and "WARNING: p: predictions look like 1-based pixels" in res.output
    assert "1-based pixels read as 0-based" in json.loads((tmp_path / "r.json").read_text())["warnings"][0]
    run([tmp_path / "p.npy", "--dataset", "aflw2000", "--root", aflw_gt_dir, "--one-based", "--json",
         tmp_path / "ok.json"])
    assert json.loads((tmp_path / "ok.json").read_text())["warnings"] == []


@pytest.mark.reference
def test_nan_as_failure_counts(aflw_gt_dir, tmp_path):
    re = np.load(aflw_gt_dir / "AFLW2000-3D-Reannotated.pts68.npy").astype(np.float64)
    re[[3, 700]] = np.nan
    np.save(tmp_path / "p.npy", re)
    base = [tmp_path / "p.npy", "--dataset", "aflw2000", "--root", aflw_gt_dir]
    assert "--nan-as-failure" in run(base, ok=False).output
    run(base + ["--nan-as-failure", "--json", tmp_path / "r.json"])
    r = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert r["n_failed"] == 2 and r["failed"] == list(aflw2000_names()[[3, 700]])
    assert r["failure_rate"] >= 2 / 2000 and math.isfinite(r["overall_mean_nme"])


# ------------------------------------------------------------------ protocols, shapes, the library call
def test_protocol_words_come_from_one_source():
    assert {"3ddfa", "2dasl-1998", "hopenet", "6drepnet", "3dfan", "dad3d"} <= set(PROTOCOLS)
    for p in PROTOCOLS.values():
        d = p.describe()
        assert d["source"] and all(q["what"] == QUIRKS[q["name"]] for q in d["quirks"])
    from dhm_data.evaluation.metrics import auc_ls3dw, nme

    assert DEFINITIONS["nme"] in nme.__doc__ and DEFINITIONS["auc.ls3dw"] in auc_ls3dw.__doc__
    help_text = CliRunner().invoke(main, ["--help"], terminal_width=400).output
    for name in PROTOCOLS:
        assert name in help_text
    assert DEFINITIONS["nme"][:40] in " ".join(help_text.split())


def test_accepted_shapes_one_wording():
    a = np.random.default_rng(0).uniform(0, 100, (3, 68, 3))
    for layout in (a, np.swapaxes(a, 1, 2), a[..., :2], np.swapaxes(a[..., :2], 1, 2)):
        np.testing.assert_array_equal(landmark_array(layout, dims=2), a[..., :2])
    for bad in (a[:, :60], a.reshape(3, -1), a[0]):
        with pytest.raises(InputError) as e:
            landmark_array(bad, "x.npy")
        assert all(s in str(e.value) for s in ACCEPTED_SHAPES) and "x.npy" in str(e.value)
    with pytest.raises(PredictionError, match=r"without z.*\(N, 68, 3\), \(N, 3, 68\)"):
        landmark_array(a[..., :2], "y", dims=3, error=PredictionError)


def test_library_report_equals_the_command(synthetic_tree, tmp_path):
    root = synthetic_tree("aflw2000", 6) / "AFLW2000"
    gt = load_ground_truth("aflw2000", root=root)
    pred = gt.landmarks + np.random.default_rng(0).normal(0, 2, gt.landmarks.shape)
    np.save(tmp_path / "p.npy", pred)
    run([tmp_path / "p.npy", "--dataset", "aflw2000", "--root", root, "--protocol", "dad3d", "--json",
         tmp_path / "r.json"])
    cli = json.loads((tmp_path / "r.json").read_text())
    lib = evaluation_report(gt, Prediction("p", pred, source={"file": str(tmp_path / "p.npy"), "input": "landmarks",
                                                               "names": "positional", "one_based": False,
                                                               "crop_coords": False}), protocol="dad3d")
    assert json.loads(json.dumps(lib.document)) == cli
    r = cli["results"][0]
    assert r["threshold"] == 0.05 and "dad3d_fr_below" in r and r["yaw_bins"] is None
    assert r["dad3d_fr_below"] + r["failure_rate"] <= 1.0
    # a bare array from a training loop
    doc = evaluation_report(gt, pred).document
    assert doc["results"][0]["overall_mean_nme"] == pytest.approx(r["overall_mean_nme"], abs=1e-15)
    with pytest.raises(EvaluationError, match="fixes threshold = 0.05"):
        evaluation_report(gt, pred, protocol="dad3d", threshold=0.07)
    with pytest.raises(EvaluationError, match="defined on aflw2000"):
        evaluation_report(gt.__class__(**{**gt.__dict__, "dataset": "ls3dw-menpo"}), pred, protocol="3ddfa")


def test_names_file_and_folder_names(synthetic_tree, tmp_path):
    root = synthetic_tree("aflw2000", 6) / "AFLW2000"
    gt = load_ground_truth("aflw2000", root=root)
    pred = gt.landmarks + 0.5
    (tmp_path / "names.txt").write_text("\n".join(f"{n}.jpg" for n in gt.names[[4, 1, 2]]) + "\n")
    np.save(tmp_path / "p.npy", pred[[4, 1, 2]])
    run([tmp_path / "p.npy", "--dataset", "aflw2000", "--root", root, "--names", tmp_path / "names.txt", "--json",
         tmp_path / "r.json"])
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["images"]["evaluated"] == 3
    assert doc["images"]["left_out"]["not in the predictions"] == [str(n) for n in gt.names[[0, 3, 5]]]
    np.savez(tmp_path / "f.npz", landmarks=pred, names=np.array([f"/data/AFLW2000/{n}.jpg" for n in gt.names]))
    run([tmp_path / "f.npz", "--dataset", "aflw2000", "--root", root, "--json", tmp_path / "f.json"])
    assert json.loads((tmp_path / "f.json").read_text())["images"]["evaluated"] == 6
    with pytest.raises(GroundTruthError):
        from dhm_data.evaluation.lists import pose_filter

        names = aflw2000_names()[:2]
        pose_filter(names, np.radians([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) if names[1] != "image00004" else
                    np.radians([[0.0, 0.0, 0.0], [0.0, 120.0, 0.0]]))
