"""Shared fixtures: where the real data lives, and how its absence is handled.

Tests that need real slides or labelled tiles take the ``shared_data``
fixture. Where the folder is missing they skip with the reason, except under
``CI=true``, where a missing folder fails the test instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from histo_gedl.config import DATA_DIR_ENV, shared_data_dir


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = (
        f"real test data not found at {path}; set {DATA_DIR_ENV} to the folder "
        "that holds slides/, monuseg-train/, cpm15/ and dsb2018-histology/"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; skips (or fails in CI) when it is missing."""
    return _require(shared_data_dir())


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return _require(shared_data / "slides")


@pytest.fixture(scope="session")
def monuseg_dir(shared_data: Path) -> Path:
    return _require(shared_data / "monuseg-train")
