"""The scorer as a container runs it: the supervisor is pid 1 of its own pid namespace.

A worker asks Linux to kill it when its supervisor dies and then checks that it was not
re-parented already. Checking "is my parent pid 1?" read a container's supervisor as a
dead one, so every worker exited before loading the bundle (found by `make pod-test`).
`unshare --pid` gives this test the same namespace without a container runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_r

SUPERVISE = """
import json, os, sys
from rscore.r_scorer.supervisor import Supervisor
supervisor = Supervisor(sys.argv[1], sys.argv[2], workers=1)
try:
    model = supervisor.start()
    print(json.dumps({"pid": os.getpid(), "model": model["name"]}))
finally:
    supervisor.stop(grace_s=5)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root for unshare --pid"
)
def test_workers_load_when_the_supervisor_is_pid_1(tmp_path: Path) -> None:
    bundle = tmp_path / "twice"
    bundle.mkdir()
    (bundle / "score.R").write_text(
        "init <- function(model_dir) list()\nscore <- function(state, data) data$x * 2\n"
    )
    result = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", SUPERVISE,
         str(bundle), str(tmp_path / "sock" / "workers.sock")],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {"pid": 1, "model": "twice"}
