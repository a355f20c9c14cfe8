"""Shared fixtures (bundles built by real R, once per test session) and the markers
that follow from them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Generator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build(script: Path, out: Path) -> Path:
    subprocess.run(["Rscript", str(script), str(out)], check=True, capture_output=True)
    return out


# Fixtures that run R: the bundles built with Rscript, and the modules' `serve` (the
# sidecar app with a supervisor of R workers behind it). A test that uses one is `real_r`
# without saying so; modules whose every test runs R say `pytestmark` themselves
# (markers: pyproject.toml; `make test-fast` deselects them).
R_FIXTURES = frozenset({"test_bundles", "example_bundles", "serve"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if R_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_r)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Hide pytest-asyncio's event loop policy from looptime in sync tests.

    looptime asks the policy for the loop of every test; in a sync test that creates a
    loop nobody closes, and its socket pair surfaces later, in whichever test the garbage
    collector happens to run, as an unclosed-socket warning (an error here). A sync test
    has no loop for looptime to patch anyway; pytest calls it with its own arguments
    only, so the policy's absence from `funcargs` changes nothing else. (An async test is
    known by its `asyncio` mark: pytest-asyncio wraps its function, so `obj` is no
    coroutine function.)
    """
    if pyfuncitem.get_closest_marker("asyncio") is not None:  # pytest-asyncio's own test
        return (yield)
    policy = pyfuncitem.funcargs.pop("event_loop_policy", None)
    try:
        return (yield)
    finally:
        if policy is not None:
            pyfuncitem.funcargs["event_loop_policy"] = policy


@pytest.fixture(scope="session")
def test_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/build_bundles.R's cases: bundle + request.json + expected.json."""
    return _build(ROOT / "tests" / "fixtures" / "build_bundles.R", tmp_path_factory.mktemp("tb"))


@pytest.fixture(scope="session")
def example_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundles of examples/, built afresh."""
    return _build(ROOT / "examples" / "build_examples.R", tmp_path_factory.mktemp("examples"))


@pytest.fixture(autouse=True, scope="session")
def _environment_free_of_embedded_r() -> None:
    """Keep subprocesses clean of what starting R in this process sets.

    Starting R in the test process (tests/test_rmodel.py) makes rpy2 set R_HOME and
    prepend /usr/lib/x86_64-linux-gnu to LD_LIBRARY_PATH; a Python started afterwards
    with that environment loads the wrong shared libraries (`import ssl` fails). rscore
    itself never starts a subprocess from a process that runs R.
    """
    snapshot = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(snapshot)


@pytest.fixture(autouse=True)
def _restore_environment(_environment_free_of_embedded_r: None) -> None:
    snapshot = dict(os.environ)
    yield
    if dict(os.environ) != snapshot:
        os.environ.clear()
        os.environ.update(snapshot)
