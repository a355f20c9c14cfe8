"""A pod's cold start by phase, logged once by the supervisor: R start-up, the bundle's
declared packages, the model, and until every worker is ready (issue 17: the simulator's
start-time model taken from a real deployment). Real R worker processes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rscore.r_scorer.errors import BundleError
from rscore.r_scorer.socket_files import COLD_START_NAME, read_cold_start
from rscore.r_scorer.supervisor import Supervisor

pytestmark = pytest.mark.real_r

SCORE_R = """
init <- function(model_dir) list(factor = 2)
score <- function(state, data) data$x * state$factor
"""


def bundle(tmp_path: Path, packages: list[str]) -> Path:
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "score.R").write_text(SCORE_R)
    (folder / "rscore.toml").write_text(f"packages = {packages!r}\n".replace("'", '"'))
    return folder


def test_start_up_is_timed_by_phase_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    socket_dir = tmp_path / "s"  # the sidecar's pool makes it; here, the test
    socket_dir.mkdir()
    (socket_dir / COLD_START_NAME).write_text('{"ready_s": 99.0}')  # a previous start's
    supervisor = Supervisor(bundle(tmp_path, ["jsonlite"]), socket_dir / "workers.sock", workers=2)
    with caplog.at_level(logging.INFO, logger="rscore.supervisor"):
        try:
            supervisor.start()
        finally:
            supervisor.stop(grace_s=5)
    assert len(supervisor.start_ups) == 2  # one per worker
    for start_up in supervisor.start_ups:
        assert set(start_up) == {"r_start_s", "packages_s", "model_s"}
        assert start_up["r_start_s"] > 0
        assert start_up["packages_s"] > 0  # jsonlite's namespace, loaded on its own
    cold = supervisor.cold_start
    assert set(cold) == {"r_start_s", "packages_s", "model_s", "ready_s"}
    slowest_worker = max(sum(s.values()) for s in supervisor.start_ups)
    assert cold["ready_s"] >= slowest_worker
    logged = [r for r in caplog.records if r.getMessage().startswith("cold start:")]
    assert len(logged) == 1
    assert logged[0].cold_start == cold  # type: ignore[attr-defined]
    assert "R start-up" in logged[0].getMessage()
    # And beside the socket, for the sidecar's rscore_scorer_cold_start_seconds.
    assert read_cold_start(socket_dir / COLD_START_NAME) == cold


def test_a_missing_package_is_still_named_by_the_load(tmp_path: Path) -> None:
    supervisor = Supervisor(
        bundle(tmp_path, ["notInstalledPkg"]), tmp_path / "s" / "workers.sock", workers=1
    )
    with pytest.raises(BundleError, match=r"'notInstalledPkg'.*not installed"):
        supervisor.start()
