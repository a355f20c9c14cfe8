"""`python -m sidecar --socket-dir D [...]`: the pod's sidecar container."""

from rscore_cli.main import sidecar

sidecar()
