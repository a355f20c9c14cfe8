"""`python -m rscore.sidecar --socket-dir D [...]`: the pod's sidecar container."""

from rscore.cli.main import sidecar

sidecar()
