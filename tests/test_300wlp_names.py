"""300W-LP sample names at full scale: the real release's name list (122,415
names, ../shared/reference/300w-lp-names), ``dhm-data synth 300wlp --names``,
the scan, the manifest check (the 35 mirrors the list lacks) and the split
rule (58,164 / 3,061 non-flipped samples, no source photo on both sides)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import reference_path

from dhm_data.build.manifests import assign_split, check_counts, exact_fill, load_manifest, missing_mirrors
from dhm_data.cli import main
from dhm_data.datasets import get_reader
from dhm_data.errors import SynthError
from dhm_data.synth.w300lp import plan_from_names, read_name_list


def _real_names() -> list[str]:
    return read_name_list(reference_path("300w-lp-names", "300W_LP_filename_filtered.txt"))


def _scan(root: Path):
    reader_cls = get_reader("300wlp")
    return reader_cls(reader_cls.locate(root)).items()


# ------------------------------------------------------------ the name list
def test_read_name_list_accepts_crlf_jpg_suffix_and_spaces(tmp_path):
    f = tmp_path / "names.txt"
    f.write_bytes(b"IBUG/IBUG_image_092 _01_0\r\nIBUG_Flip/IBUG_image_092 _01_0.jpg\r\n\r\nAFW/AFW_1_2_3\r\n")
    assert read_name_list(f) == ["IBUG/IBUG_image_092 _01_0", "IBUG_Flip/IBUG_image_092 _01_0", "AFW/AFW_1_2_3"]


@pytest.mark.parametrize("content, message", [
    ("IBUG/IBUG_image_001_1_0\nMENPO/x_0\n", r"names\.txt:2: 'MENPO/x_0' is not a 300W-LP sample name"),
    ("IBUG/IBUG_image_001_1_0\nIBUG/IBUG_image_001_1_0\n", r"names\.txt:2: .* listed twice \(first on line 1\)"),
    ("IBUG/no_step\n", r"names\.txt:1: 'IBUG/no_step' is not a 300W-LP sample name"),
    ("\n\n", r"names\.txt: the name list is empty"),
])
def test_read_name_list_refuses_what_is_not_a_name_list(tmp_path, content, message):
    f = tmp_path / "names.txt"
    f.write_text(content)
    with pytest.raises(SynthError, match=message):
        read_name_list(f)


def test_plan_from_names_groups_steps_of_one_photo():
    plans = plan_from_names(["HELEN/HELEN_5_1_2", "HELEN/HELEN_5_1_0", "HELEN_Flip/HELEN_5_1_1",
                             "AFW/AFW_7_1_0", "HELEN/HELEN_5_1_1"])
    assert [(p.subset, p.stem, p.steps, sorted(p.originals), sorted(p.flips)) for p in plans] == [
        ("AFW", "AFW_7_1", 1, [0], []),
        ("HELEN", "HELEN_5_1", 3, [0, 1, 2], [1]),
    ]


# ------------------------------------------------------------ the split rule
def test_exact_fill_hand_computed():
    assert exact_fill([5, 3, 4, 2], 6) == [2, 3]          # 5 and 3 cannot be completed; 4 + 2 can
    assert exact_fill([3, 5, 2], 7) == [1, 2]
    assert exact_fill([4, 4, 4], 8) == [0, 1]             # greedy's answer where greedy is exact
    assert exact_fill([8, 9, 10], 3) == []                # nothing fits: the largest sum below is 0
    assert exact_fill([8, 9, 10], 18) == [0, 2]           # 18 exactly (8 + 10), not greedy's 17


# ------------------------------------------------------------ synth --names
def test_synth_names_writes_exactly_the_listed_samples(tmp_path):
    names = ["IBUG/IBUG_image_092 _01_0", "IBUG/IBUG_image_092 _01_1", "IBUG_Flip/IBUG_image_092 _01_0",
             "AFW/AFW_134212_1_0", "AFW_Flip/AFW_134212_1_0", "AFW/AFW_134212_1_1", "AFW_Flip/AFW_134212_1_1",
             "LFPW/LFPW_image_train_0001_0", "HELEN/HELEN_232194_1_0", "HELEN_Flip/HELEN_232194_1_0"]
    listing = tmp_path / "names.txt"
    listing.write_text("\r\n".join(names) + "\r\n")
    out = tmp_path / "tree"
    r = CliRunner().invoke(main, ["synth", "300wlp", "--out", str(out), "--names", str(listing), "--quiet"])
    assert r.exit_code == 0, r.output
    items = _scan(out)
    assert sorted(it.name for it in items) == sorted(names)
    base = out / "300W_LP"
    assert (base / "landmarks" / "IBUG" / "IBUG_image_092 _01_1_pts.mat").is_file()
    assert not (base / "IBUG_Flip" / "IBUG_image_092 _01_1.jpg").exists()
    marker = json.loads((out / "SYNTHETIC.json").read_text())
    assert marker["from_name_list"] is True and marker["n"] == len(names)
    assert marker["counts"] == {"AFW": 2, "AFW_Flip": 2, "HELEN": 1, "HELEN_Flip": 1, "IBUG": 2, "IBUG_Flip": 1,
                                "LFPW": 1, "LFPW_Flip": 0}
    problems = check_counts(items, load_manifest("300wlp"), synthetic=marker)
    assert problems == ["2 mirrored samples are missing although their originals are present: "
                        "IBUG_Flip/IBUG_image_092 _01_1, LFPW_Flip/LFPW_image_train_0001_0"]
    # every written sample loads (labels, image header) through the reader
    reader_cls = get_reader("300wlp")
    reader = reader_cls(reader_cls.locate(out))
    for it in items:
        s = reader.load(it)
        assert s.landmarks_2d.shape == (68, 2)


def test_synth_names_refused_for_other_datasets(tmp_path):
    listing = tmp_path / "names.txt"
    listing.write_text("AFW/AFW_1_1_0\n")
    r = CliRunner().invoke(main, ["synth", "aflw2000", "--out", str(tmp_path / "t"), "--names", str(listing)])
    assert r.exit_code != 0 and "--names is only supported for 300wlp" in r.output


# ------------------------------------------------------------ the real list at full scale
@pytest.mark.reference
def test_real_name_list_facts():
    names = _real_names()
    assert len(names) == 122_415
    plans = plan_from_names(names)
    assert len(plans) == 3_837  # the 300-W source photos
    assert sum(len(p.originals) for p in plans) == 61_225
    assert sum(len(p.flips) for p in plans) == 61_190
    # no photo skips a step: every listed photo has k = 0 ... max(k)
    assert all(p.originals | p.flips == frozenset(range(p.steps)) for p in plans)


@pytest.mark.reference
@pytest.mark.slow
def test_real_name_list_scan_manifest_check_and_split(tmp_path):
    """A tree with the real list's 122,415 sample names (empty placeholder
    files: the scan reads names only): the scan finds exactly the list, the
    manifest check reports exactly the 35 mirrors the list lacks, and the
    split rule gives 58,164 / 3,061 originals with no photo on both sides."""
    names = _real_names()
    base = tmp_path / "300W_LP"
    made = set()
    for name in names:
        subset, stem = name.split("/")
        files = [base / subset / f"{stem}.jpg", base / subset / f"{stem}.mat"]
        if not subset.endswith("_Flip"):
            files.append(base / "landmarks" / subset / f"{stem}_pts.mat")
        for f in files:
            if f.parent not in made:
                f.parent.mkdir(parents=True, exist_ok=True)
                made.add(f.parent)
            os.close(os.open(f, os.O_CREAT | os.O_WRONLY, 0o644))
    items = _scan(tmp_path)
    assert sorted(it.name for it in items) == sorted(names)

    originals = {n for n in names if "_Flip/" not in n}
    mirrored = {n.replace("_Flip/", "/") for n in names if "_Flip/" in n}
    expected_missing = sorted(n.replace("/", "_Flip/", 1) for n in originals - mirrored)
    assert len(expected_missing) == 35
    assert missing_mirrors(items) == expected_missing
    problems = check_counts(items, load_manifest("300wlp"))
    assert problems[-1] == ("35 mirrored samples are missing although their originals are present: "
                            + ", ".join(expected_missing))
    assert sorted(problems[:-1]) == [
        "AFW_Flip: found 5202 samples, manifests/300wlp.json expects 5207",
        "HELEN_Flip: found 37651 samples, manifests/300wlp.json expects 37676",
        "IBUG_Flip: found 1784 samples, manifests/300wlp.json expects 1786",
        "LFPW_Flip: found 16553 samples, manifests/300wlp.json expects 16556",
    ]

    splits = assign_split(items, "300wlp-seed-paper", load_manifest("300wlp"))
    assert [sum(not it.flipped for it in splits[s]) for s in ("train", "val")] == [58_164, 3_061]
    train_photos = {it.source_id for it in splits["train"]}
    val_photos = {it.source_id for it in splits["val"]}
    assert not train_photos & val_photos
    assert len(train_photos) + len(val_photos) == 3_837


def test_synth_bytes_do_not_depend_on_jobs(tmp_path):
    """Photos rendered by 2 processes give the same files as one process."""
    from dhm_data.synth import synthesize

    trees = {}
    for jobs in (1, 2):
        out = synthesize("300wlp", tmp_path / f"j{jobs}", 40, seed=3, jobs=jobs)
        trees[jobs] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert trees[1].keys() == trees[2].keys() and len(trees[1]) > 200
    assert all(trees[1][k] == trees[2][k] for k in trees[1])
