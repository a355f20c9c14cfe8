"""Shared fixtures: bundles built by real R, once per test session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build(script: Path, out: Path) -> Path:
    subprocess.run(["Rscript", str(script), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def test_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/build_bundles.R's cases: bundle + request.json + expected.json."""
    return _build(ROOT / "tests" / "fixtures" / "build_bundles.R", tmp_path_factory.mktemp("tb"))


@pytest.fixture(scope="session")
def example_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundles of examples/, built afresh."""
    return _build(ROOT / "examples" / "build_examples.R", tmp_path_factory.mktemp("examples"))
