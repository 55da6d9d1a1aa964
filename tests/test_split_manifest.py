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
    assert cfg["crop"]["size"] == 128 and cfg["dhm"]["sigma"] == 1.0 and cfg["build"]["reader"] == "300wlp"
    with pytest.raises(PipelineError, match="no pipeline named 'nope'"):
        load_pipeline("nope")
    with pytest.raises(PipelineError, match="sigma > 0"):
        load_pipeline("aflw2000", {"dhm.sigma": 0.0})
