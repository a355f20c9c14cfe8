"""`rscore` starts every command (the sidecar too) from one module: it must not drag in
R, the simulator's numeric stack or the Kubernetes client before a command needs them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("rpy2", "numpy", "matplotlib", "tqdm", "kubernetes_asyncio", "yaml", "rscore.sim.engine")


def test_importing_the_cli_loads_no_heavy_module() -> None:
    probe = (
        f"import sys, rscore.cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
