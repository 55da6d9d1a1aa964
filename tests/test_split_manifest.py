import importlib.resources

import numpy as np
import pytest

from dhm_data.build.config import available_pipelines, load_pipeline
from dhm_data.build.manifests import assign_split, check_counts, load_manifest
from dhm_data.datasets.base import Item
from dhm_data.errors import PipelineError


def _items(n_photos, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_photos):
        k = int(rng.integers(1, steps + 1))
        for flipped in (False, True):
            for step in range(k):
                subset = "HELEN_Flip" if flipped else "HELEN"
                out.append(Item(f"{subset}/HELEN_{p}_1_{step}", subset, (), flipped, f"HELEN/HELEN_{p}_1"))
    return out


def test_300wlp_split_keeps_source_groups_together_and_hits_the_fraction():
    items = _items(2000)
    splits = assign_split(items, "300wlp-seed-paper", load_manifest("300wlp"))
    train, val = splits["train"], splits["val"]
    assert len(train) + len(val) == len(items)
    assert not {i.source_id for i in train} & {i.source_id for i in val}
    n_nonflip = sum(not i.flipped for i in items)
    n_val = sum(not i.flipped for i in val)
    assert n_val == round(3061 / 61225 * n_nonflip)
    # every flip follows its original
    assert sum(i.flipped for i in val) == n_val


def test_300wlp_split_is_a_fixed_rule():
    a = assign_split(_items(500), "300wlp-seed-paper", load_manifest("300wlp"))
    b = assign_split(list(reversed(_items(500))), "300wlp-seed-paper", load_manifest("300wlp"))
    assert {i.name for i in a["val"]} == {i.name for i in b["val"]}


def test_manifest_counts_are_the_published_ones():
    m = load_manifest("300wlp")
    assert sum(v for k, v in m["counts"].items() if not k.endswith("_Flip")) == 61225
    assert m["total"] == 122450 and m["split"]["train"] + m["split"]["val"] == 61225
    assert load_manifest("aflw2000")["yaw_bins"] == {"[0,30]": 1312, "(30,60]": 383, "(60,inf)": 305}


def test_count_check_reports_mismatches():
    items = [Item(f"AFLW2000/{i}", "AFLW2000", ()) for i in range(16)]
    problems = check_counts(items, load_manifest("aflw2000"))
    assert problems == ["AFLW2000: found 16 samples, manifests/aflw2000.json expects 2000"]
    assert check_counts(items, load_manifest("aflw2000"), {"counts": {"AFLW2000": 16}}) == []


def test_pipelines_ship_and_overrides_apply():
    assert {"300wlp", "aflw2000", "aflw2000-reannotated", "ls3dw"} <= set(available_pipelines())
    cfg = load_pipeline("300wlp", {"crop.size": 128, "dhm.sigma": None})
    assert cfg.crop_size == 128 and cfg.sigma == 1.0 and cfg.reader == "300wlp"
    assert cfg.to_dict()["crop"]["size"] == 128 and cfg.to_dict()["name"] == "300wlp"
    with pytest.raises(PipelineError, match="no pipeline named 'nope'"):
        load_pipeline("nope")
    with pytest.raises(PipelineError, match="sigma > 0"):
        load_pipeline("aflw2000", {"dhm.sigma": 0.0})


def test_pipeline_is_frozen_and_checked_before_any_work(tmp_path):
    import dataclasses

    cfg = load_pipeline("ls3dw")
    assert cfg.fit.jaw == "fixed" and cfg.fit.max_residual == 0.05 and cfg.has_fit_stage
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.crop_size = 8
    d = cfg.to_dict()
    d["crop"]["size"] = 8  # a copy: the pipeline is unchanged
    assert cfg.to_dict()["crop"]["size"] == 224
    new = cfg.with_fit_options({"jaw": "silhouette"})
    assert new.fit.jaw == "silhouette" and cfg.fit.jaw == "fixed"


@pytest.mark.parametrize("text, match", [
    ('[reader]\nlandmarks = "pts_9d"', r"\[reader\] option landmarks 'pts_9d': expected one of auto, pts_3d, pts_2d, pt2d"),
    ('[reader]\nfoo = 1', r"\[reader\] unknown options \['foo'\] for the 300wlp reader"),
    ('[fit]\njaw = "sideways"', r"\[fit\]"),
    ('[fit]\nmax_iterations = "ten"', r"\[fit\]: fitting option 'max_iterations' must be int"),
    ('[fit]\nsmoothness = 1', r"unknown fitting options \['smoothness'\]"),
    ('[extra]\na = 1', r"unknown sections \['extra'\]"),
])
def test_reader_and_fit_tables_are_checked_at_load(tmp_path, text, match):
    base = (importlib.resources.files("dhm_data.pipelines") / "300wlp.toml").read_text()
    base = base.replace('[reader]\nlandmarks = "auto"', "")
    p = tmp_path / "custom.toml"
    p.write_text(base + "\n" + text + "\n")
    with pytest.raises(PipelineError, match=match) as e:
        load_pipeline(str(p))
    assert str(p) in str(e.value)


def test_crop_size_must_be_an_integer():
    with pytest.raises(PipelineError, match=r"\[crop\] size must be an integer, found '224'"):
        load_pipeline("aflw2000", {"crop.size": "224"})
    with pytest.raises(PipelineError, match="dhm_storage must be u8q-lz4 or u8q-raw, found 'png'"):
        load_pipeline("aflw2000", {"shards.dhm_storage": "png"})
