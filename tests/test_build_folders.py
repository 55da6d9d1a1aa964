"""Copies and folders (issue 12, item 7), damaged-but-decodable JPEGs and
labels that do not fit the model (items 1 and 2), status / verify as library
functions (issue 11, item 7)."""

import json
import os
import shutil

import numpy as np
import pytest
import scipy.io as sio
from click.testing import CliRunner
from conftest import reference_path

from dhm_data.build.flow import BuildRequest, run_build
from dhm_data.build.state import build_status, verify_build
from dhm_data.cli import main
from dhm_data.errors import BuildError


def _build(root, out, pipeline="aflw2000", **kw):
    return run_build(BuildRequest(pipeline, root, out, progress=False, **kw), echo=lambda m: None)


def test_a_copied_build_and_dataset_are_still_done(tmp_path, synthetic_tree):
    root = synthetic_tree("aflw2000", 8)
    _build(root, tmp_path / "b", overrides={"shards.size": 3})
    # cp -r of the dataset and of the build: every file gets a new modification time
    shutil.copytree(root, tmp_path / "raw2")
    shutil.copytree(tmp_path / "b", tmp_path / "b2")
    for p in [*(tmp_path / "raw2").rglob("*"), *(tmp_path / "b2").rglob("*")]:
        if p.is_file():
            os.utime(p, ns=(1, p.stat().st_mtime_ns + 10**9))
    shutil.rmtree(tmp_path / "b")  # nothing may point back to the original folder
    # the copied build of the same dataset paths: all done, and the next build agrees
    shutil.rmtree(root)
    shutil.copytree(tmp_path / "raw2", root)
    st = build_status(tmp_path / "b2")
    assert st.stages["prepare"]["left"] == [] and st.finished
    shards = sorted((tmp_path / "b2" / "test").glob("shard-*.h5"))
    before = [p.stat().st_mtime_ns for p in shards]
    _build(root, tmp_path / "b2", overrides={"shards.size": 3})
    assert [p.stat().st_mtime_ns for p in shards] == before               # nothing redone
    # one input changed in content: status says which unit is left, and the build redoes exactly that one
    jpg = sorted(root.rglob("*.jpg"))[4]
    data = bytearray(jpg.read_bytes())
    data[-3] ^= 0x01
    jpg.write_bytes(bytes(data))
    st = build_status(tmp_path / "b2")
    assert st.stages["prepare"]["left"] == ["test/shard-00001"] and not st.finished
    _build(root, tmp_path / "b2", overrides={"shards.size": 3})
    after = [p.stat().st_mtime_ns for p in shards]
    assert [a == b for a, b in zip(after, before)] == [True, False, True]
    assert verify_build(tmp_path / "b2").ok


def test_another_pipelines_folder_is_refused_unless_forced(tmp_path, synthetic_tree):
    a = synthetic_tree("aflw2000", 6)
    w = synthetic_tree("300wlp", 4)
    out = tmp_path / "b"
    _build(a, out)
    with pytest.raises(BuildError, match=r"holds a build of pipeline 'aflw2000'; building '300wlp' here would delete"):
        _build(w, out, pipeline="300wlp")
    assert len(list((out / "test").glob("shard-*.h5"))) == 1               # the older shards are kept
    r = CliRunner().invoke(main, ["build", "300wlp", "--root", str(w), "--out", str(out), "--quiet"])
    assert r.exit_code != 0 and "--force" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build", "300wlp", "--root", str(w), "--out", str(out), "--quiet", "--force"])
    assert r.exit_code == 0, r.output
    assert not (out / "test").exists() or not list((out / "test").glob("shard-*.h5"))
    assert json.loads((out / "build.json").read_text())["pipeline"]["name"] == "300wlp"


def test_status_and_verify_are_library_functions(tmp_path, synthetic_tree):
    root = synthetic_tree("aflw2000", 5)
    with pytest.raises(BuildError, match="not a build folder"):
        build_status(tmp_path)
    with pytest.raises(BuildError, match="no build.json"):
        verify_build(tmp_path)
    _build(root, tmp_path / "b", overrides={"shards.size": 2})
    st = build_status(tmp_path / "b")
    assert st.splits == {"test": 5} and len(st.stages["prepare"]["done"]) == 3 and st.finished
    rep = verify_build(tmp_path / "b")
    assert rep.ok and rep.shards == 3 and rep.samples == {"test": 5}
    (tmp_path / "b" / "test" / "shard-00002.h5").unlink()
    rep = verify_build(tmp_path / "b")
    assert not rep.ok and any("shard-00002.h5: missing" in p for p in rep.problems)


def _real_copy(tmp_path, n=6):
    src = reference_path("aflw2000-3d-samples")
    dst = tmp_path / "AFLW2000"
    dst.mkdir()
    for jpg in sorted(src.glob("image*.jpg"))[:n]:
        shutil.copy(jpg, dst)
        shutil.copy(jpg.with_suffix(".mat"), dst)
    return dst


def test_a_corrupt_but_decodable_jpeg_is_a_warning_and_rejected_under_strict(tmp_path, capfd):
    root = _real_copy(tmp_path)
    bfm = reference_path("bfm68")
    jpg = sorted(root.glob("*.jpg"))[2]
    data = bytearray(jpg.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 2, len(data) - 10, 20):  # 20 flipped bytes in the entropy-coded data
        data[i] ^= 0xFF
    jpg.write_bytes(bytes(data))
    capfd.readouterr()
    s = _build(root, tmp_path / "b", bfm=bfm)
    err = capfd.readouterr().err
    assert "Corrupt JPEG" not in err                                       # nothing raw on the terminal
    assert s["written"] == {"test": 6} and s["rejected"] == 0
    (w,) = s["warnings"]
    assert w["name"] == jpg.stem and "image decoder: Corrupt JPEG data" in w["warning"]
    with pytest.raises(BuildError, match="--strict: 1 samples were rejected"):
        _build(root, tmp_path / "strict", bfm=bfm, strict=True, limit=6)  # --limit: no count check
    (line,) = (tmp_path / "strict" / "rejections.jsonl").read_text().splitlines()
    assert jpg.stem in line and "the image decoder reported damaged data" in line
    assert "Corrupt JPEG" not in capfd.readouterr().err


def test_labels_that_do_not_fit_the_model_are_rejected_and_most_failing_stops_the_build(tmp_path):
    root = _real_copy(tmp_path)
    bfm = reference_path("bfm68")
    mats = sorted(root.glob("*.mat"))
    for k, mat in enumerate(mats):
        if k == 0:
            continue  # one sample keeps its labels
        m = sio.loadmat(mat)
        m["Shape_Para"] = m["Shape_Para"] * 60.0  # coefficients of "another model"
        sio.savemat(mat, {key: v for key, v in m.items() if not key.startswith("__")})
    with pytest.raises(BuildError, match=r"5 of 6 samples were rejected .*BFM 2009 \+ 3DDFA expressions \[68-row subset\]"):
        _build(root, tmp_path / "b", bfm=bfm)
    lines = [json.loads(x) for x in (tmp_path / "b" / "rejections.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all("do not project onto the 2D labels" in r["reason"] for r in lines)
