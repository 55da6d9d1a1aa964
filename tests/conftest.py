"""Shared fixtures.  Real reference data lives in ../shared/reference beside the
repository; tests that need it skip with a reason where it is absent."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"


def reference_path(*parts) -> Path:
    """Path under ../shared/reference, or skip the test when it is missing."""
    p = REFERENCE.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real reference data not available: {p} is absent (it lives in ../shared beside the repository)")
    return p


@pytest.fixture
def bfm68_dir():
    return reference_path("bfm68")


@pytest.fixture
def aflw_samples_dir():
    return reference_path("aflw2000-3d-samples")


@pytest.fixture
def aflw_gt_dir():
    return reference_path("aflw2000-3d-gt")


@pytest.fixture
def lp_samples_dir():
    return reference_path("300w-lp-samples")


@pytest.fixture
def sfm_dir():
    return reference_path("sfm")


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory):
    """Factory: a synthetic raw dataset tree written once per session per
    (dataset, n, seed); returns the tree's root folder."""
    cache = {}

    def make(dataset: str, n: int, seed: int = 0) -> Path:
        key = (dataset, n, seed)
        if key not in cache:
            from dhm_data.synth import synthesize

            root = tmp_path_factory.mktemp(f"synth-{dataset}-{n}-{seed}")
            out = root / "tree"
            synthesize(dataset, out, n, seed=seed)
            cache[key] = out
        return cache[key]

    return make


def shard_contents(build_dir: Path) -> dict:
    """Every field of every shard of a build, by relative shard path."""
    from dhm_data.shards import read_columns

    out = {}
    for p in sorted(Path(build_dir).glob("*/shard-*.h5")):
        out[str(p.relative_to(build_dir))] = read_columns(p)
    return out


def assert_same_contents(a: dict, b: dict) -> None:
    import numpy as np

    assert sorted(a) == sorted(b)
    for shard in a:
        assert sorted(a[shard]) == sorted(b[shard]), shard
        for field in a[shard]:
            x, y = np.asarray(a[shard][field]), np.asarray(b[shard][field])
            assert x.shape == y.shape, (shard, field)
            if x.dtype.kind == "f":
                np.testing.assert_array_equal(x, y, err_msg=f"{shard}:{field}")
            else:
                assert (x == y).all(), (shard, field)
