"""Bad inputs over every reader, the build and ``dhm-eval``: each gets a clear
message naming the file (and the key / what was expected) and leaves no
partial output.

Table-driven: each case damages one sample of a fresh copy of a synthetic tree.
For each dataset, one test checks every case through ``reader.load`` and one
build over the tree with all its damaged samples checks that exactly those
samples are rejected with the same message, listed in ``rejections.jsonl``,
absent from the shards, and that nothing temporary is left.  (Cases already in
test_datasets.py -- AFLW2000 .mat missing key, wrong shape, NaN, truncated
.mat, v7.3, missing image; a garbage / missing .t7 -- are not repeated.)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from dhm_data.datasets import get_reader
from dhm_data.errors import DatasetError


# ------------------------------------------------------------------ helpers
def _mat_vars(path) -> dict:
    return {k: v for k, v in sio.loadmat(path).items() if not k.startswith("__")}


def mat_edit(path, **changes):
    """Rewrite a .mat with keys changed (value None = key removed)."""
    m = _mat_vars(path)
    for k, v in changes.items():
        if v is None:
            del m[k]
        else:
            m[k] = v
    sio.savemat(path, m)


def write_v73(path):
    """A MATLAB v7.3 (HDF5) .mat holding the same variables."""
    import h5py

    m = _mat_vars(path)
    path.unlink()
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in m.items():
            f[k] = np.asarray(v).T
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")


def compact_zero_mat(path, key):
    """Store ``key`` as MATLAB stores an all-zero double array: uint8 data, double class."""
    from dhm_data.synth import compact_zero, write_mat_v5

    m = _mat_vars(path)
    write_mat_v5(path, [(k, compact_zero(v.shape) if k == key else v) for k, v in m.items()])


def t7_tensor(path, tensor_cls: bytes, storage_cls: bytes, dtype, array):
    """A Torch7 tensor file of any class (torch.save's binary layout)."""
    a = np.ascontiguousarray(array, dtype=dtype)

    def s(b):
        return struct.pack("<i", len(b)) + b

    out = [struct.pack("<ii", 4, 1), s(b"V 1"), s(tensor_cls), struct.pack("<i", a.ndim),
           struct.pack(f"<{a.ndim}q", *a.shape), struct.pack(f"<{a.ndim}q", *[x // a.itemsize for x in a.strides]),
           struct.pack("<q", 1), struct.pack("<ii", 4, 2), s(b"V 1"), s(storage_cls), struct.pack("<q", a.size),
           a.tobytes()]
    Path(path).write_bytes(b"".join(out))


def t7_table(path):
    """A Lua table saved with torch.save (type tag 3), e.g. {x = 1}."""
    Path(path).write_bytes(struct.pack("<ii", 3, 1) + struct.pack("<i", 1) + struct.pack("<i", 2)
                           + struct.pack("<i", 1) + b"x" + struct.pack("<i", 1) + struct.pack("<d", 1.0))


def truncate(path, keep=0.5):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


def symlink_loop(path):
    path = Path(path)
    path.unlink()
    os.symlink(path.name, path)           # points at itself


def no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp-" in p.name], "temporary files left behind"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _build(root, out, pipeline, strict=False):
    from dhm_data.build.flow import BuildRequest, run_build

    return run_build(BuildRequest(pipeline, root, out, None, progress=False, strict=strict), echo=lambda m: None)


def check_cases(pipeline, root: Path, cases: dict, tmp_path: Path):
    """Apply every case, check reader.load and one build over the damaged tree.

    ``cases``: {id: (item name, damage(item) -> None, regex or None = accepted,
    also-rejected names)}."""
    import re

    from dhm_data.shards import ShardReader

    reader = get_reader(pipeline)(root)
    items = {it.name: it for it in reader.items()}
    expected = {}
    for cid, (name, damage, pattern, also) in cases.items():
        damage(items[name])
        if pattern is not None:
            expected[name] = pattern
            for other in also:
                expected[other] = pattern
    def load_and_decode(item):
        """What the build does per sample before cropping: read the labels,
        then decode the image (a bad image is only found by decoding it)."""
        from dhm_data.formats.images import decode_rgb

        return decode_rgb(reader.load(item).image_path)

    for cid, (name, damage, pattern, also) in cases.items():
        if pattern is None:
            load_and_decode(items[name])  # accepted
            continue
        with pytest.raises(DatasetError) as e:
            load_and_decode(items[name])
        assert re.search(pattern, str(e.value)), (cid, str(e.value))
        # the message names the file it is about
        assert str(root) in str(e.value), (cid, str(e.value))

    out = tmp_path / f"build-{pipeline}"
    s = _build(root, out, pipeline)
    rej = [json.loads(line) for line in (out / "rejections.jsonl").read_text().splitlines()]
    assert {r["name"] for r in rej} == set(expected), rej
    for r in rej:
        assert re.search(expected[r["name"]], r["reason"]), r
    names = set()
    for p in sorted(out.glob("*/shard-*.h5")):
        with ShardReader(p) as r:   # a shard whose samples were all rejected holds no fields
            names |= set(r.read("name").tolist()) if r.n_samples else set()
    assert names == set(items) - set(expected)
    assert s["rejected"] == len(expected) and sum(s["written"].values()) == len(items) - len(expected)
    no_temporaries(out)
    no_temporaries(root)
    return reader, items


# ------------------------------------------------------------------ 300W-LP
def test_300wlp_bad_inputs(synthetic_tree, tmp_path):
    root = _copy(synthetic_tree("300wlp", 12), tmp_path / "tree") / "300W_LP"
    lm = root / "landmarks"
    cases = {
        "truncated JPEG": ("HELEN/HELEN_100000000_1_1", lambda it: truncate(it.paths[0], 0.6),
                           r"\.jpg: not a decodable image .*JPEG without its end-of-image marker: the file is truncated", []),
        "non-JPEG image": ("HELEN/HELEN_100000000_1_2", lambda it: it.paths[0].write_bytes(b"GIF89a not really"),
                           r"\.jpg: not a decodable image .*neither JPEG nor PNG", []),
        "empty image": ("HELEN_Flip/HELEN_100000000_1_0", lambda it: it.paths[0].write_bytes(b""),
                        r"\.jpg: not a decodable image \(0 bytes\): the file is empty", []),
        "image symlink loop": ("HELEN_Flip/HELEN_100000000_1_4", lambda it: symlink_loop(it.paths[0]),
                               r"\.jpg: image file symlink loop", []),
        "landmarks missing key": ("HELEN/HELEN_100000000_1_3",
                                  lambda it: mat_edit(lm / "HELEN/HELEN_100000000_1_3_pts.mat", pts_3d=None),
                                  r"_pts\.mat: key 'pts_3d' is missing \(present: pts_2d\)",
                                  ["HELEN_Flip/HELEN_100000000_1_3"]),
        "landmarks wrong shape": ("HELEN/HELEN_100104729_2_0",
                                  lambda it: mat_edit(lm / "HELEN/HELEN_100104729_2_0_pts.mat", pts_3d=np.zeros((68, 3))),
                                  r"'pts_3d' has shape \(68, 3\), expected \(68, 2\)", ["HELEN_Flip/HELEN_100104729_2_0"]),
        "Shape_Para wrong shape": ("HELEN/HELEN_100104729_2_1",
                                   lambda it: mat_edit(it.paths[1], Shape_Para=np.zeros((198, 1))),
                                   r"'Shape_Para' has shape \(198, 1\), expected \(199, 1\)",
                                   ["HELEN_Flip/HELEN_100104729_2_1"]),
        # a mirrored sample takes its parameters from its original's .mat: both are rejected
        "Pose_Para inf": ("IBUG/IBUG_image_001_1_0",
                          lambda it: mat_edit(it.paths[1], Pose_Para=np.array([[0, 0.1, 0, 1, 2, 3, np.inf]], np.float32)),
                          r"IBUG_image_001_1_0\.mat: 'Pose_Para' holds 1 NaN/inf values", ["IBUG_Flip/IBUG_image_001_1_0"]),
        "Exp_Para uint8-compacted zeros": ("AFW/AFW_1000000_1_0", lambda it: compact_zero_mat(it.paths[1], "Exp_Para"),
                                           None, []),
    }
    # fill in names that depend on the tree
    reader = get_reader("300wlp")(root)
    names = [it.name for it in reader.items()]
    lfpw = next(n for n in names if n.startswith("LFPW/"))
    cases["v7.3 (HDF5) .mat"] = (lfpw, lambda it: write_v73(it.paths[1]), r"MATLAB v7.3 \(HDF5\)",
                                 ["LFPW_Flip/" + lfpw.split("/")[1]])
    # a truncated .mat is called unreadable, not "key missing" (only some variables are read)
    cases["labels .mat truncated"] = ("LFPW/LFPW_image_test_0001_1", lambda it: truncate(it.paths[1], 0.5),
                                      r"LFPW_image_test_0001_1\.mat: cannot read as a MATLAB v5 \.mat file",
                                      ["LFPW_Flip/LFPW_image_test_0001_1"])
    flip_lm_own = (lm / "LFPW_Flip").is_dir()
    cases["landmarks .mat truncated"] = ("LFPW/LFPW_image_test_0001_2",
                                         lambda it: truncate(lm / "LFPW/LFPW_image_test_0001_2_pts.mat", 0.5),
                                         r"_pts\.mat: cannot read as a MATLAB v5 \.mat file",
                                         [] if flip_lm_own else ["LFPW_Flip/LFPW_image_test_0001_2"])
    reader, items = check_cases("300wlp", root, cases, tmp_path)
    # compacted zeros read as float64 zeros
    s = reader.load(items["AFW/AFW_1000000_1_0"])
    assert s.exp_para.dtype == np.float64 and s.exp_para.shape == (29,) and not s.exp_para.any()
    assert sio.loadmat(items["AFW/AFW_1000000_1_0"].paths[1])["Exp_Para"].dtype == np.uint8  # really compacted


def test_300wlp_pt2d_option_nan_and_rotated_without_landmarks(synthetic_tree, tmp_path):
    root = _copy(synthetic_tree("300wlp", 12), tmp_path / "tree") / "300W_LP"
    reader = get_reader("300wlp")(root, landmarks="pt2d")
    items = {it.name: it for it in reader.items()}
    pt2d = sio.loadmat(items["IBUG/IBUG_image_001_1_0"].paths[1])["pt2d"].copy()
    pt2d[1, 7] = np.nan
    mat_edit(items["IBUG/IBUG_image_001_1_0"].paths[1], pt2d=pt2d)
    with pytest.raises(DatasetError, match=r"IBUG_image_001_1_0\.mat: 'pt2d' holds 1 NaN/inf values"):
        reader.load(items["IBUG/IBUG_image_001_1_0"])
    # auto mode: a rotated sample whose landmarks file is gone cannot use its (unwarped) pt2d
    auto = get_reader("300wlp")(root)
    (root / "landmarks" / "HELEN" / "HELEN_100000000_1_2_pts.mat").unlink()
    with pytest.raises(DatasetError, match=r"rotated sample \(k=2\) and no landmarks/HELEN/HELEN_100000000_1_2_pts\.mat"):
        auto.load({it.name: it for it in auto.items()}["HELEN/HELEN_100000000_1_2"])


# ------------------------------------------------------------------ AFLW2000-3D
def test_aflw2000_bad_inputs(synthetic_tree, tmp_path):
    root = _copy(synthetic_tree("aflw2000", 8), tmp_path / "tree") / "AFLW2000"
    names = [it.name for it in get_reader("aflw2000")(root).items()]

    def mat_dir(it):
        it.paths[1].unlink()
        it.paths[1].mkdir()

    cases = {
        "truncated JPEG": (names[0], lambda it: truncate(it.paths[0], 0.3), r"the file is truncated", []),
        ".mat symlink loop": (names[1], lambda it: symlink_loop(it.paths[1]), r"\.mat: label file symlink loop", []),
        ".mat is a directory": (names[2], mat_dir, r"\.mat: label file is a directory, expected a file", []),
        "pt3d_68 transposed": (names[3], lambda it: mat_edit(it.paths[1], pt3d_68=np.zeros((68, 3))),
                               r"'pt3d_68' has shape \(68, 3\), expected \(3, 68\)", []),
        "Exp_Para uint8-compacted zeros": (names[4], lambda it: compact_zero_mat(it.paths[1], "Exp_Para"), None, []),
        "JPEG image under a PNG": (names[5], lambda it: None, None, []),
    }
    check_cases("aflw2000", root, cases, tmp_path)


# ------------------------------------------------------------------ LS3D-W
def test_ls3dw_bad_inputs(synthetic_tree, tmp_path):
    root = _copy(synthetic_tree("ls3dw", 30), tmp_path / "tree") / "LS3D-W"
    names = [it.name for it in get_reader("ls3dw")(root).items()]
    lm = np.zeros((68, 2))
    cases = {
        "LongTensor": (names[0], lambda it: t7_tensor(it.paths[1], b"torch.LongTensor", b"torch.LongStorage", "<i8", lm),
                       r"\.t7: .*expected torch\.FloatTensor or torch\.DoubleTensor, found 'torch\.LongTensor'", []),
        "ByteTensor": (names[1], lambda it: t7_tensor(it.paths[1], b"torch.ByteTensor", b"torch.ByteStorage", "u1", lm),
                       r"found 'torch\.ByteTensor'", []),
        "a Lua table": (names[2], lambda it: t7_table(it.paths[1]), r"found type tag 3 \(table\)", []),
        "68x3 tensor": (names[3], lambda it: t7_tensor(it.paths[1], b"torch.FloatTensor", b"torch.FloatStorage", "<f4",
                                                       np.zeros((68, 3))),
                        r"\.t7: landmark tensor has shape \(68, 3\), expected \(68, 2\)", []),
        "NaN": (names[4], lambda it: t7_tensor(it.paths[1], b"torch.FloatTensor", b"torch.FloatStorage", "<f4",
                                               np.where(np.arange(136).reshape(68, 2) == 7, np.nan, 50.0)),
                r"landmark tensor holds 1 NaN/inf values", []),
        "truncated .t7": (names[5], lambda it: truncate(it.paths[1], 0.7), r"truncated Torch7 file", []),
        ".t7 symlink loop": (names[6], lambda it: symlink_loop(it.paths[1]), r"\.t7: label file symlink loop", []),
        "truncated JPEG": (names[7], lambda it: truncate(it.paths[0], 0.5), r"the file is truncated", []),
        "DoubleTensor": (names[8], lambda it: t7_tensor(it.paths[1], b"torch.DoubleTensor", b"torch.DoubleStorage",
                                                        "<f8", get_reader("ls3dw")(root).load(it).landmarks_2d),
                         None, []),
    }
    # a directory symlink loop inside a subset is not followed (the listing is unchanged)
    os.symlink("..", root / "Menpo-3D" / "loop")
    assert [it.name for it in get_reader("ls3dw")(root).items()] == names
    check_cases("ls3dw", root, cases, tmp_path)


# ------------------------------------------------------------------ empty folders, roots
@pytest.mark.parametrize("pipeline,make,pattern", [
    ("300wlp", lambda r: (r / "300W_LP" / "AFW").mkdir(parents=True), r"300W_LP: no samples found"),
    ("ls3dw", lambda r: (r / "LS3D-W" / "Menpo-3D").mkdir(parents=True), r"LS3D-W: no samples found"),
    ("aflw2000", lambda r: (r / "AFLW2000").mkdir(parents=True), r"does not look like AFLW2000"),
    ("300wlp", lambda r: None, r"does not look like 300W_LP: expected it .* to contain AFW"),
    ("aflw2000", lambda r: os.symlink("AFLW2000", r / "AFLW2000"), r"tree: does not look like AFLW2000"),
])
def test_empty_or_looping_folders_fail_before_writing_anything(pipeline, make, pattern, tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    make(root)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=pattern):
        _build(root, out, pipeline)
    assert not out.exists()


def test_root_that_is_a_symlink_loop(tmp_path):
    os.symlink("loop", tmp_path / "loop")
    for pipeline in ("300wlp", "aflw2000", "ls3dw"):
        with pytest.raises(DatasetError, match=r"loop: symlink loop \(too many levels of symbolic links\)"):
            get_reader(pipeline)(tmp_path / "loop")


def test_strict_build_fails_and_names_the_rejections(synthetic_tree, tmp_path):
    from dhm_data.errors import BuildError

    root = _copy(synthetic_tree("aflw2000", 8), tmp_path / "tree") / "AFLW2000"
    it = get_reader("aflw2000")(root).items()[2]
    truncate(it.paths[0], 0.5)
    with pytest.raises(BuildError, match=r"--strict: 1 samples were rejected; see .*rejections\.jsonl"):
        _build(root, tmp_path / "out", "aflw2000", strict=True)
    assert it.name in (tmp_path / "out" / "rejections.jsonl").read_text()
    no_temporaries(tmp_path / "out")


# ------------------------------------------------------------------ dhm-eval
@pytest.fixture(scope="module")
def eval_tree(synthetic_tree):
    return synthetic_tree("aflw2000", 8)


def _gt(root):
    from dhm_data.evaluation.ground_truth import load_ground_truth

    return load_ground_truth("aflw2000", root=root)


def _eval(args):
    from click.testing import CliRunner

    from dhm_data.cli.evaluate import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _pred_cases(gt, d: Path) -> dict:
    """{file: expected message} of bad prediction files (not those of test_eval_cli.py)."""
    lm = gt.landmarks
    n = len(lm)
    np.save(d / "strings.npy", np.full((n, 68, 2), "x"))
    np.save(d / "complex.npy", lm.astype(np.complex128))
    np.save(d / "bool.npy", np.ones((n, 68, 2), bool))
    np.save(d / "objects.npy", np.array([lm[0]] * n + [None], dtype=object), allow_pickle=True)
    np.save(d / "flat.npy", lm.reshape(n, 136))
    np.save(d / "four.npy", np.concatenate([lm, lm], axis=2))
    np.save(d / "49.npy", lm[:, :49])
    np.save(d / "extra.npy", np.concatenate([lm, lm[:2]]))
    inf = lm.copy()
    inf[3, 10, 1] = np.inf
    np.save(d / "inf.npy", inf)
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "truncated.npy", lm)
    truncate(d / "truncated.npy", 0.5)
    np.savetxt(d / "text.txt", lm.reshape(n, -1))
    np.savez(d / "nolm.npz", points=lm)
    np.savez(d / "names_count.npz", landmarks=lm, names=np.array(gt.names[:-1]))
    np.savez(d / "names_dtype.npz", landmarks=lm, names=np.arange(n))
    return {
        "strings.npy": "expected a numeric array, found dtype <U1",
        "complex.npy": "expected a numeric array, found dtype complex128",
        "bool.npy": "expected a numeric array, found dtype bool",
        "objects.npy": "cannot be read (ValueError: Object arrays cannot be loaded when allow_pickle=False)",
        "flat.npy": "found (8, 136); accepted: (N, 68, 2), (N, 2, 68), (N, 68, 3), (N, 3, 68)",
        "four.npy": "found (8, 68, 4)",
        "49.npy": "found (8, 49, 2) (not 68 landmarks)",
        "extra.npy": "10 images, the ground truth has 8",
        "inf.npy": "1 of 8 images hold NaN/inf coordinates (indices 3)",
        "empty.npy": "cannot be read",
        "truncated.npy": "cannot be read",
        "text.txt": "unknown prediction format '.txt'; expected .npy or .npz",
        "nolm.npz": "no 'landmarks' / 'landmarks_3d' array (found: points)",
        "names_count.npz": "7 names for 8 landmark sets",
        "names_dtype.npz": "'names' has dtype int64, expected strings",
    }


def test_dhm_eval_bad_predictions_give_clear_messages_and_no_output(eval_tree, tmp_path):
    gt = _gt(eval_tree)
    preds = tmp_path / "preds"
    preds.mkdir()
    cases = _pred_cases(gt, preds)
    np.save(preds / "good.npy", gt.landmarks + 0.5)
    reports = tmp_path / "reports"
    outs = ["--json", reports / "r.json", "--per-image", reports / "e.csv", "--plot", reports / "c.png"]
    for f, msg in cases.items():
        # the bad file second: the good first one must not produce a partial report either
        r = _eval([preds / "good.npy", preds / f, "--dataset", "aflw2000", "--root", eval_tree] + outs)
        assert r.exit_code != 0, f
        assert msg in r.output, (f, r.output)
        assert f in r.output, (f, r.output)
        assert "Traceback" not in r.output
        assert not reports.exists() or not list(reports.iterdir()), f
    r = _eval([preds / "good.npy", "--dataset", "aflw2000", "--root", eval_tree] + outs)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in reports.iterdir()) == ["c.png", "e.csv", "r.json"]


def test_dhm_eval_bad_ground_truth_folders(eval_tree, tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, _gt(eval_tree).landmarks)
    empty = tmp_path / "empty"
    empty.mkdir()
    os.symlink("loop", tmp_path / "loop")
    bad = _copy(eval_tree, tmp_path / "bad") / "AFLW2000"
    victim = sorted(bad.glob("*.mat"))[3]
    mat_edit(victim, pt3d_68=None)
    empty_ls = tmp_path / "ls" / "LS3D-W" / "Menpo-3D"
    empty_ls.mkdir(parents=True)
    cases = [
        (["--dataset", "aflw2000", "--root", empty], "does not look like AFLW2000"),
        (["--dataset", "aflw2000", "--root", tmp_path / "loop"], "symlink loop"),
        (["--dataset", "aflw2000", "--root", bad], f"ground truth unreadable: {victim}: key 'pt3d_68' is missing"),
        (["--dataset", "ls3dw-menpo", "--root", tmp_path / "ls"], "no labelled images found"),
        (["--dataset", "aflw2000", "--build", empty], "no build.json; not a finished `dhm-data build` output"),
    ]
    for args, msg in cases:
        r = _eval([good, *args, "--json", tmp_path / "r.json"])
        assert r.exit_code != 0 and msg in r.output, (args, r.output)
        assert "Traceback" not in r.output
        assert not (tmp_path / "r.json").exists()
