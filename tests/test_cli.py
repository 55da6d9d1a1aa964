"""The dhm-data command line: demo end to end, build/status/verify/show, errors."""

import json
import os

import numpy as np
from click.testing import CliRunner

from dhm_data.cli import main


def test_help_lists_every_command():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in ("build", "demo", "fit-bfm", "show", "status", "synth", "verify"):
        assert cmd in r.output


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-n", "12", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert (out / "sample.png").stat().st_size > 10_000
    for ds in ("300wlp", "aflw2000", "ls3dw"):
        s = json.loads((out / "build" / ds / "build.json").read_text())
        assert s["rejected"] == 0 and sum(s["written"].values()) == (24 if ds == "300wlp" else 12)
    assert json.loads((out / "build" / "ls3dw" / "build.json").read_text())["fit"]["fitted"] == 12
    assert "NME balanced mean" in r.output
    # a rerun resumes: nothing is rebuilt
    shard = next((out / "build" / "aflw2000" / "test").glob("shard-*.h5"))
    before = shard.stat().st_mtime_ns
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-n", "12", "--jobs", "1"])
    assert r.exit_code == 0 and shard.stat().st_mtime_ns == before


def test_demo_as_the_readme_runs_it(tmp_path):
    """`dhm-data demo` with its defaults (two processes), as a new process:
    the command the README's quick start types.  It synthesises with OpenCV
    before its -j 2 builds fork their workers, which once hung forever."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "dhm_data", "demo", "--out", str(tmp_path / "demo"), "-n", "12"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "NME balanced mean" in r.stdout
    for ds, n in (("300wlp", 24), ("aflw2000", 12), ("ls3dw", 12)):
        assert sum(json.loads((tmp_path / "demo" / "build" / ds / "build.json").read_text())["written"].values()) == n


def test_build_status_verify_show(tmp_path, synthetic_tree):
    root = synthetic_tree("aflw2000", 8)
    out = tmp_path / "b"
    run = CliRunner().invoke
    r = run(main, ["build", "aflw2000", "--root", str(root), "--out", str(out), "--shard-size", "3", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "built aflw2000" in r.output and "test: 8" in r.output
    r = run(main, ["status", str(out)])
    assert "stage prepare: 3 of 3 units done" in r.output and "finished" in r.output
    shard1 = out / "test" / "shard-00001.h5"
    shard1.write_bytes(shard1.read_bytes())          # rewritten with the same bytes (a copy): still done
    assert "stage prepare: 3 of 3 units done" in run(main, ["status", str(out)]).output
    patched = bytearray(shard1.read_bytes())
    patched[len(patched) // 2] ^= 0x01               # other bytes, same size and time: no longer trusted
    st = shard1.stat()
    shard1.write_bytes(bytes(patched))
    os.utime(shard1, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = run(main, ["status", str(out)])
    assert "stage prepare: 2 of 3 units done; left: test/shard-00001, 3 samples" in r.output
    r = run(main, ["build", "aflw2000", "--root", str(root), "--out", str(out), "--shard-size", "3", "--quiet"])
    assert "stage prepare: 3 of 3 units done" in run(main, ["status", str(out)]).output
    r = run(main, ["verify", str(out)])
    assert r.exit_code == 0 and "ok: 3 shards, 8 samples" in r.output
    r = run(main, ["show", str(out), "-i", "7", "-o", str(tmp_path / "s.png")])
    assert r.exit_code == 0 and (tmp_path / "s.png").exists()
    r = run(main, ["show", str(out), "-i", "8", "-o", str(tmp_path / "s.png")])
    assert r.exit_code != 0 and "out of range" in r.output
    # a flipped byte in a shard: verify names the shard
    shard = sorted((out / "test").glob("shard-*.h5"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = run(main, ["verify", str(out)])
    assert r.exit_code != 0 and shard.name in r.output


def test_build_errors_are_clear(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["build", "300wlp", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "no such directory" in r.output and "300W_LP" in r.output
    r = run(main, ["build", "nope", "--root", str(tmp_path)])
    assert r.exit_code != 0 and "no pipeline named 'nope'" in r.output


def test_real_data_needs_bfm(tmp_path, aflw_samples_dir):
    r = CliRunner().invoke(main, ["build", "aflw2000", "--root", str(aflw_samples_dir), "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "--bfm is required for real data" in r.output


def test_build_after_fit_bfm_reuses_the_fits(tmp_path, synthetic_tree):
    root = synthetic_tree("ls3dw", 30)
    l3 = root / "LS3D-W" / "synthetic_landmarks_3d.npz"
    out = tmp_path / "ls"
    run = CliRunner().invoke
    r = run(main, ["fit-bfm", "ls3dw", "--root", str(root), "--out", str(out), "--landmarks-3d", str(l3),
                   "--regularisation", "0.01", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "fitted 30 samples" in r.output
    fits = sorted((out / "fits").rglob("shard-*.npz"))
    mtimes = [p.stat().st_mtime_ns for p in fits]
    r = run(main, ["build", "ls3dw", "--root", str(root), "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert [p.stat().st_mtime_ns for p in fits] == mtimes  # not refitted
    s = json.loads((out / "build.json").read_text())
    assert s["fit"]["with_3d_estimates"] == 30 and s["pipeline"]["fit"]["regularisation"] == 0.01
    assert s["label_sources"] == {"t7": 30}


def test_dhm_storage_option_changes_storage_not_values(tmp_path, synthetic_tree):
    from dhm_data.shards import read_columns

    root = synthetic_tree("aflw2000", 8)
    run = CliRunner().invoke
    for kind in ("u8q-lz4", "u8q-raw"):
        r = run(main, ["build", "aflw2000", "--root", str(root), "--out", str(tmp_path / kind), "--dhm-storage", kind, "--quiet"])
        assert r.exit_code == 0, r.output
    a = read_columns(tmp_path / "u8q-lz4" / "test" / "shard-00000.h5", ["dhm"])["dhm"]
    b = read_columns(tmp_path / "u8q-raw" / "test" / "shard-00000.h5", ["dhm"])["dhm"]
    np.testing.assert_array_equal(a, b)
    raw = (tmp_path / "u8q-raw" / "test" / "shard-00000.h5").stat().st_size
    lz4 = (tmp_path / "u8q-lz4" / "test" / "shard-00000.h5").stat().st_size
    assert raw > lz4 + 8 * 100_000  # the uncompressed DHMs take their full 150 KB each


def test_user_mistakes_are_clean_errors(tmp_path, synthetic_tree):
    root = synthetic_tree("aflw2000", 8)
    run = CliRunner().invoke

    def fails(args, text):
        r = run(main, args)
        assert r.exit_code != 0, r.output
        assert text in r.output, r.output
        assert "Traceback" not in r.output

    fails(["build", "aflw2000", "--root", str(root), "--jobs", "0"], "--jobs")
    fails(["build", "aflw2000", "--root", str(root), "--limit", "0"], "--limit")
    bad = tmp_path / "bad.toml"
    bad.write_text('[build]\nreader = "aflw2000"\nstages = ["prepare"]\nsplit = "random"\n'
                   '[crop]\nsize = 224\nmargin = 0.3\n[dhm]\nsigma = 1.0\n[shards]\nsize = 10\n')
    fails(["build", str(bad), "--root", str(root), "--out", str(tmp_path / "o")], "split 'random' is not a split rule")
    bad.write_text(bad.read_text().replace('"random"', '"test"') + 'compression = "gzip"\n')
    fails(["build", str(bad), "--root", str(root), "--out", str(tmp_path / "o")], "[shards] has unknown keys ['compression']")
    bad.write_text(bad.read_text().replace('compression = "gzip"\n', '') + '[reader]\nannotaton = "original"\n')
    fails(["build", str(bad), "--root", str(root), "--out", str(tmp_path / "o")], "[reader] unknown options ['annotaton']")
    fails(["build", "aflw2000", "--root", str(root), "--out", str(tmp_path / "o2"), "--backend", "ray"], "needs ray")
    fails(["show", str(tmp_path), "-o", str(tmp_path / "x.png")], "no shards")
