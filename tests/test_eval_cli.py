"""dhm-eval end to end: ground-truth sources (3DDFA arrays, raw folders, builds),
prediction files, outputs, and errors that leave nothing behind."""

import csv
import json
import shutil

import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from dhm_data.cli.evaluate import main
from dhm_data.errors import GroundTruthError
from dhm_data.evaluation import metrics as ev
from dhm_data.evaluation.ground_truth import load_ground_truth
from dhm_data.evaluation.predictions import PredictionFile, align_predictions, match_order


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code != 0, res.output
    return res


def real_arrays(d):
    pts = np.load(d / "AFLW2000-3D.pts68.npy")
    re = np.load(d / "AFLW2000-3D-Reannotated.pts68.npy")
    yaw = np.load(d / "AFLW2000-3D.pose.npy")
    return pts, re, yaw


# ------------------------------------------------------------------ (a) the 3DDFA arrays, real data
@pytest.mark.reference
def test_worked_example_reannotated_vs_original(aflw_gt_dir, tmp_path):
    """The README's worked example: the LS3D-W re-annotation scored against pt3d_68."""
    pts, re, yaw = real_arrays(aflw_gt_dir)
    np.save(tmp_path / "reannotated.npy", re)
    out = tmp_path / "out"
    res = run([tmp_path / "reannotated.npy", "--dataset", "aflw2000", "--root", aflw_gt_dir,
               "--json", out / "report.json", "--per-image", out / "errors.csv", "--plot", out / "ced.png"])
    assert "[0,30] 1,312 | (30,60] 383 | (60,inf) 305" in res.output
    assert "7 with |yaw| > 90" in res.output
    doc = json.loads((out / "report.json").read_text())
    assert doc["ground_truth"]["yaw_bin_counts"] == {"[0,30]": 1312, "(30,60]": 383, "(60,inf)": 305}
    assert doc["ground_truth"]["positional_names"] is False     # named from manifests/aflw2000-3d.names.txt
    # every figure equals the library on the arrays (pt3d_68 made 0-based)
    lib = ev.evaluate(re, np.swapaxes(pts[:, :2], 1, 2) - 1.0, yaw, label="reannotated")
    r = doc["results"][0]
    assert r["label"] == "reannotated" and r["auc_variant"] == "ls3dw"
    assert [b["mean_nme"] for b in r["yaw_bins"]] == pytest.approx([b.mean for b in lib.bins], abs=1e-12)
    assert [b["count"] for b in r["yaw_bins"]] == [1312, 383, 305]
    assert r["balanced_mean_nme"] == pytest.approx(lib.balanced_mean, abs=1e-12)
    assert r["overall_mean_nme"] == pytest.approx(lib.overall_mean, abs=1e-12)
    assert r["headline"]["name"] == "balanced mean"
    assert doc["protocol"]["auc_variant"] == "ls3dw" and "ddof=0" in doc["protocol"]["definitions"]["balanced_std"]
    assert doc["protocol"]["name"] is None and doc["images"]["left_out"] == {} and doc["warnings"] == []
    # the table prints the same figures in %
    row = [ln for ln in res.output.splitlines() if ln.startswith("reannotated")][0].split()
    assert row[1:4] == [f"{100 * b.mean:.2f}" for b in lib.bins]
    assert row[4] == f"{100 * lib.balanced_mean:.2f}" and row[6] == f"{100 * lib.overall_mean:.2f}"
    rows = list(csv.reader((out / "errors.csv").open()))
    assert rows[0] == ["name", "alias", "yaw_deg", "yaw_bin", "nme[reannotated]"]
    assert len(rows) == 2001 and rows[1][:2] == ["image00002", "#0000"] and rows[-1][1] == "#1999"
    np.testing.assert_allclose([float(x[4]) for x in rows[1:]], lib.nme, rtol=1e-9)
    png = (out / "ced.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    assert sorted(p.name for p in out.iterdir()) == ["ced.png", "errors.csv", "report.json"]


@pytest.mark.reference
def test_reannotated_dataset_from_arrays(aflw_gt_dir):
    pts, re, yaw = real_arrays(aflw_gt_dir)
    gt = load_ground_truth("aflw2000-reannotated", root=aflw_gt_dir)
    np.testing.assert_array_equal(gt.landmarks, np.swapaxes(re, 1, 2).astype(np.float64))
    np.testing.assert_array_equal(gt.yaw_deg, yaw.astype(np.float64))
    gt0 = load_ground_truth("aflw2000", root=aflw_gt_dir)
    np.testing.assert_array_equal(gt0.landmarks, np.swapaxes(pts[:, :2], 1, 2).astype(np.float64) - 1.0)
    with pytest.raises(GroundTruthError, match="does not look like LS3D-W"):
        load_ground_truth("ls3dw-menpo", root=aflw_gt_dir)


@pytest.mark.reference
def test_one_based_npz_by_name_and_comparison(aflw_gt_dir, tmp_path):
    pts, re, yaw = real_arrays(aflw_gt_dir)
    # pt3d_68 itself, (N, 3, 68), 1-based: with --one-based it is a perfect prediction
    np.save(tmp_path / "orig.npy", pts)
    res = run([tmp_path / "orig.npy", "--dataset", "aflw2000", "--root", aflw_gt_dir, "--one-based",
               "--json", tmp_path / "r.json"])
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["overall_mean_nme"] == 0.0
    assert "1-based, converted" in res.output
    run([tmp_path / "orig.npy", "--dataset", "aflw2000", "--root", aflw_gt_dir, "--json", tmp_path / "r0.json"])
    assert json.loads((tmp_path / "r0.json").read_text())["results"][0]["overall_mean_nme"] > 0.005
    # an .npz in shuffled order with positional names equals the .npy in order
    perm = np.random.default_rng(1).permutation(2000)
    names = np.array([f"#{i:04d}" for i in range(2000)])
    np.savez(tmp_path / "shuffled.npz", landmarks=np.swapaxes(re, 1, 2)[perm], names=names[perm])
    np.save(tmp_path / "re.npy", re)
    run([tmp_path / "re.npy", tmp_path / "shuffled.npz", "--dataset", "aflw2000", "--root", aflw_gt_dir,
         "--label", "npy", "--label", "npz", "--json", tmp_path / "c.json", "--auc-variant", "menpofit"])
    a, b = json.loads((tmp_path / "c.json").read_text())["results"]
    assert (a["label"], b["label"]) == ("npy", "npz")
    for k in ("balanced_mean_nme", "overall_mean_nme", "auc", "failure_rate", "seed_failure_rate"):
        assert a[k] == b[k]
    assert a["auc_variant"] == "menpofit" and "simpson" in a["auc_definition"]


@pytest.mark.reference
def test_errors_leave_no_output(aflw_gt_dir, tmp_path):
    pts, re, yaw = real_arrays(aflw_gt_dir)
    outs = ["--json", tmp_path / "r.json", "--per-image", tmp_path / "e.csv", "--plot", tmp_path / "c.png"]
    base = ["--dataset", "aflw2000", "--root", aflw_gt_dir] + outs
    np.save(tmp_path / "short.npy", re[:1999])
    np.save(tmp_path / "shape.npy", re[:, :, :60])
    nan = re.copy()
    nan[[5, 17, 1999], 0, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    names = np.array([f"#{i:04d}" for i in range(2000)], dtype="<U16")
    names[[10, 11]] = ["image99998", "image99999"]
    np.savez(tmp_path / "names.npz", landmarks=re, names=names)
    np.save(tmp_path / "good.npy", re)
    cases = {
        "short.npy": "1999 images, the ground truth has 2000 (1 missing)",
        "shape.npy": "found (2000, 2, 60)",
        "nan.npy": "3 of 2000 images hold NaN/inf coordinates (indices 5, 17, 1999)",
        "names.npz": "2 names are not in the ground truth of aflw2000 (first: image99998, image99999)",
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for f, msg in cases.items():
        # a bad file second: the good first file must not produce a report either
        res = run([tmp_path / "good.npy", tmp_path / f] + base, ok=False)
        assert msg in res.output, res.output
        assert f in res.output
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    res = run([tmp_path / "good.npy", "--dataset", "aflw2000"], ok=False)
    assert "--root" in res.output
    res = run([tmp_path / "good.npy", tmp_path / "good.npy", "--label", "x"] + base, ok=False)
    assert "2 prediction files" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_match_order_duplicates_and_suffixes():
    from dhm_data.evaluation.ground_truth import GroundTruth

    gt = GroundTruth("ls3dw-menpo", np.array(["Menpo-3D/a", "Menpo-3D/b", "Menpo-3D/c"]), np.zeros((3, 68, 2)),
                     None, "test", aliases=np.array(["a", "b", "c"]))
    np.testing.assert_array_equal(match_order(["c.jpg", "Menpo-3D/a", "b"], gt), [1, 2, 0])
    with pytest.raises(ev.PredictionError, match=r"1 ground-truth images are predicted more than once \(first: "
                                                 r"Menpo-3D/a\)"):
        match_order(["a", "a.png", "b"], gt)


# ------------------------------------------------------------------ (b) raw folders
def _mat_gt(folder):
    names, lm, yaw = [], [], []
    for p in sorted(folder.glob("image*.mat")):
        m = scipy.io.loadmat(p)
        names.append(p.stem)
        lm.append(m["pt3d_68"][:2].T.astype(np.float64) - 1.0)
        yaw.append(np.degrees(float(m["Pose_Para"][0, 1])))
    return np.array(names), np.array(lm), np.array(yaw)


def test_raw_aflw2000_synthetic(synthetic_tree, tmp_path):
    root = synthetic_tree("aflw2000", 6) / "AFLW2000"
    names, lm, yaw = _mat_gt(root)
    gt = load_ground_truth("aflw2000", root=root)
    assert list(gt.names) == list(names) and not gt.positional_names
    np.testing.assert_allclose(gt.landmarks, lm, atol=1e-12)
    np.testing.assert_allclose(gt.yaw_deg, yaw, atol=1e-9)
    # by name, in any order, with the file suffix
    rng = np.random.default_rng(0)
    pred = lm + rng.normal(0, 1, lm.shape)
    perm = rng.permutation(len(names))
    np.savez(tmp_path / "p.npz", landmarks=pred[perm], names=np.array([n + ".jpg" for n in names[perm]]))
    run([tmp_path / "p.npz", "--dataset", "aflw2000", "--root", root.parent, "--json", tmp_path / "r.json",
         "--per-image", tmp_path / "e.csv"])
    r = json.loads((tmp_path / "r.json").read_text())["results"][0]
    np.testing.assert_allclose(r["overall_mean_nme"], ev.nme(pred, lm).mean(), atol=1e-12)
    rows = list(csv.reader((tmp_path / "e.csv").open()))
    assert [x[0] for x in rows[1:]] == list(names)


@pytest.mark.reference
def test_raw_aflw2000_real_samples_agree_with_the_arrays(aflw_samples_dir, aflw_gt_dir):
    """The 16 real .mat files read as ground truth are rows of the benchmark arrays."""
    pts, re, yaw = real_arrays(aflw_gt_dir)
    ref = np.swapaxes(pts[:, :2], 1, 2).astype(np.float64) - 1.0
    gt = load_ground_truth("aflw2000", root=aflw_samples_dir)
    assert len(gt) == 16
    for lm, y in zip(gt.landmarks, gt.yaw_deg):
        row = np.flatnonzero(np.abs(ref - lm).max(axis=(1, 2)) < 1e-4)
        assert len(row) == 1
        assert y == pytest.approx(float(yaw[row[0]]), abs=1e-4)


def test_raw_ls3dw_subsets(synthetic_tree, tmp_path):
    from dhm_data.formats.t7 import read_t7

    root = synthetic_tree("ls3dw", 12) / "LS3D-W"
    for dataset, subset in [("ls3dw-menpo", "Menpo-3D"), ("ls3dw-300w", "300W-Testset-3D"),
                            ("ls3dw-300vw-a", "300VW-3D/CatA")]:
        gt = load_ground_truth(dataset, root=root)
        t7s = sorted((root / subset).rglob("*.t7"))
        assert len(gt) == len(t7s) > 0 and gt.yaw_deg is None
        np.testing.assert_allclose(gt.landmarks, [read_t7(p) for p in t7s], atol=0)
        assert all(n.startswith(subset + "/") for n in gt.names)
    gt = load_ground_truth("ls3dw-300vw-a", root=root)
    pred = gt.landmarks + 0.5
    np.savez(tmp_path / "p.npz", landmarks=pred[::-1], names=gt.aliases[::-1])
    res = run([tmp_path / "p.npz", "--dataset", "ls3dw-300vw-a", "--root", root, "--json", tmp_path / "r.json"])
    assert "yaw bins: none" in res.output
    r = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert r["yaw_bins"] is None and r["headline"]["name"] == "overall mean"
    assert r["overall_mean_nme"] == pytest.approx(ev.nme(pred, gt.landmarks).mean(), abs=1e-12)


def test_raw_reannotated_both_routes(synthetic_tree, tmp_path):
    """aflw2000-reannotated from the AFLW2000 folder (re-annotation found in LS3D-W
    beside it, yaw from the .mat) equals the route through the LS3D-W folder with
    --aflw2000-root."""
    from dhm_data.formats.t7 import write_t7

    src = synthetic_tree("aflw2000", 6)
    tree = tmp_path / "data"
    shutil.copytree(src / "AFLW2000", tree / "AFLW2000")
    names, lm, yaw = _mat_gt(tree / "AFLW2000")
    re_dir = tree / "LS3D-W" / "AFLW2000-3D-Reannotated"
    re_dir.mkdir(parents=True)
    shift = np.random.default_rng(2).normal(0, 1.5, lm.shape)
    for n, l, s in zip(names, lm, shift):
        shutil.copy(tree / "AFLW2000" / f"{n}.jpg", re_dir / f"{n}.jpg")
        write_t7(re_dir / f"{n}.t7", (l + s).astype(np.float32))
    a = load_ground_truth("aflw2000-reannotated", root=tree / "AFLW2000")
    b = load_ground_truth("aflw2000-reannotated", root=tree / "LS3D-W", aflw2000_root=tree / "AFLW2000")
    c = load_ground_truth("aflw2000-reannotated", root=tree / "LS3D-W")
    np.testing.assert_allclose(a.landmarks, (lm + shift).astype(np.float32), atol=0)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    np.testing.assert_allclose(a.yaw_deg, yaw, atol=1e-9)
    np.testing.assert_array_equal(a.yaw_deg, b.yaw_deg)
    assert c.yaw_deg is None
    (re_dir / f"{names[0]}.t7").rename(tmp_path / "moved.t7")
    (re_dir / f"{names[0]}.jpg").unlink()
    extra = tree / "LS3D-W" / "AFLW2000-3D-Reannotated" / "image99999.jpg"
    shutil.copy(tree / "AFLW2000" / f"{names[1]}.jpg", extra)
    write_t7(extra.with_suffix(".t7"), lm[1].astype(np.float32))
    with pytest.raises(GroundTruthError, match=r"1 of the 6 re-annotated images have no \.mat there \(first: image99999\)"):
        load_ground_truth("aflw2000-reannotated", root=tree / "LS3D-W", aflw2000_root=tree / "AFLW2000")


def test_300wlp_val_needs_a_build(tmp_path):
    with pytest.raises(GroundTruthError, match="only in a build"):
        load_ground_truth("300wlp-val", root=tmp_path)
    with pytest.raises(GroundTruthError, match="exactly one of"):
        load_ground_truth("aflw2000", root=tmp_path, build=tmp_path)


# ------------------------------------------------------------------ (c) builds
@pytest.fixture(scope="module")
def aflw_build(tmp_path_factory):
    from dhm_data.build.flow import BuildRequest, run_build
    from dhm_data.synth import synthesize

    base = tmp_path_factory.mktemp("evalbuild")
    synthesize("aflw2000", base / "tree", 6, seed=5)
    out = base / "build"
    run_build(BuildRequest("aflw2000", base / "tree", out, None, progress=False), echo=lambda m: None)
    return base / "tree" / "AFLW2000", out


def test_build_ground_truth_matches_raw(aflw_build, tmp_path):
    from dhm_data.shards import read_columns

    raw_root, build = aflw_build
    raw = load_ground_truth("aflw2000", root=raw_root)
    gt = load_ground_truth("aflw2000", build=build)
    assert list(gt.names) == list(raw.names)
    np.testing.assert_allclose(gt.landmarks, raw.landmarks, atol=1e-3)     # float32 crop pixels, mapped back
    np.testing.assert_allclose(gt.yaw_deg, raw.yaw_deg, atol=1e-4)          # float32 in the shards
    assert gt.crop_affines.shape == (6, 2, 3)
    # predictions in crop pixels, mapped back through the affines
    crop = read_columns(sorted((build / "test").glob("shard-*.h5"))[0], ["landmarks_2d"])["landmarks_2d"]
    pf = PredictionFile(tmp_path / "x.npy", crop.astype(np.float64), None)
    np.testing.assert_allclose(align_predictions(pf, gt, crop_coords=True), gt.landmarks, atol=1e-9)
    np.save(tmp_path / "crop.npy", crop + 1.0)
    run([tmp_path / "crop.npy", "--dataset", "aflw2000", "--build", build, "--crop-coords", "--one-based",
         "--json", tmp_path / "r.json"])
    r = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert r["overall_mean_nme"] < 1e-6
    # crop coordinates need a build
    np.save(tmp_path / "raw.npy", raw.landmarks)
    res = run([tmp_path / "raw.npy", "--dataset", "aflw2000", "--root", raw_root, "--crop-coords"], ok=False)
    assert "--crop-coords needs the ground truth from a build" in res.output


def test_build_of_the_wrong_dataset_is_refused(aflw_build):
    _, build = aflw_build
    with pytest.raises(GroundTruthError, match=r"pipeline 'aflw2000'.*needs a build of pipeline 'aflw2000-reannotated'"):
        load_ground_truth("aflw2000-reannotated", build=build)
    with pytest.raises(GroundTruthError, match="needs a build of pipeline '300wlp'"):
        load_ground_truth("300wlp-val", build=build)
    with pytest.raises(GroundTruthError, match="no build.json"):
        load_ground_truth("aflw2000", build=build / "test")


def test_ced_plot_has_one_curve_per_file():
    from dhm_data.evaluation.plots import ced_figure

    rng = np.random.default_rng(0)
    g = rng.uniform(0, 100, (50, 68, 2))
    reps = [ev.evaluate(g + rng.normal(0, s, g.shape), g, label=f"s{s}") for s in (1.0, 2.0, 3.0)]
    fig = ced_figure(reps, title="test")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 3 and all("AUC@7% =" in t and "[ls3dw]" in t for t in labels)
    assert labels[0].startswith("s1.0") and f"{reps[1].auc:.4f}" in labels[1]
    assert "NME (%)" in ax.get_xlabel() and "Images" in ax.get_ylabel()


def test_ls3dw_and_300wlp_builds(synthetic_tree, tmp_path):
    from dhm_data.build.flow import BuildRequest, run_build

    root = synthetic_tree("ls3dw", 12)
    run_build(BuildRequest("ls3dw", root, tmp_path / "ls3dw", None, progress=False), echo=lambda m: None)
    for dataset in ("ls3dw-300vw-a", "ls3dw-menpo", "aflw2000-reannotated"):
        raw = load_ground_truth(dataset, root=root / "LS3D-W")
        gt = load_ground_truth(dataset, build=tmp_path / "ls3dw")
        assert list(gt.names) == list(raw.names) and list(gt.aliases) == list(raw.aliases)
        np.testing.assert_allclose(gt.landmarks, raw.landmarks, atol=1e-3)
        assert gt.yaw_deg is None                      # fitted parameters: no yaw bins
    root = synthetic_tree("300wlp", 20)
    run_build(BuildRequest("300wlp", root, tmp_path / "lp", None, progress=False), echo=lambda m: None)
    split = json.loads((tmp_path / "lp" / "split.json").read_text())
    gt = load_ground_truth("300wlp-val", build=tmp_path / "lp")
    assert list(gt.names) == split["val"] and len(gt) > 0
    assert gt.yaw_deg is not None and np.all(np.isfinite(gt.yaw_deg))
    np.save(tmp_path / "p.npy", gt.landmarks + 0.25)
    res = run([tmp_path / "p.npy", "--dataset", "300wlp-val", "--build", tmp_path / "lp"])
    assert "300W-LP validation split" in res.output and "yaw bins (|yaw|, degrees)" in res.output
    with pytest.raises(GroundTruthError, match=r"reader '300wlp'\); --dataset ls3dw-menpo needs a build of pipeline 'ls3dw'"):
        load_ground_truth("ls3dw-menpo", build=tmp_path / "lp")
