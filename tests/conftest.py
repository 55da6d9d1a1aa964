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
